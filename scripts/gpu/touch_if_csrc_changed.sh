#!/usr/bin/env bash
# Run from the repository root before a build on the device: when build/ holds objects of other
# sources than csrc/ now has (the hash recorded by the last build, build/csrc_hash_of_last_build,
# differs from HASH or is missing), touch every file under csrc/ so that ninja rebuilds them.
# Why: ninja goes by modification times, and a tree copied onto a warm machine keeps older ones
# than the objects a previous call built there: after a call had built a negative control's
# csrc, the next call's build said "no work to do" and ran the control's objects (fifty-seventh
# session, third call). benchmarks/gpu_suite.sh calls this, then records HASH after its build:
#   bash scripts/gpu/touch_if_csrc_changed.sh HASH   ...build...   echo HASH > build/csrc_hash_of_last_build
set -euo pipefail
hash=${1:?usage: touch_if_csrc_changed.sh CSRC_HASH}
stamp=build/csrc_hash_of_last_build
[ -d build ] || exit 0
last=$(cat "$stamp" 2>/dev/null || echo unrecorded)
if [ "$last" != "$hash" ]; then
  find csrc -type f -exec touch {} +
  echo "csrc $hash differs from the last build here ($last): every source touched, full rebuild"
fi
