#!/usr/bin/env bash
# Negative control of a csrc change on the device, in one call: build CONTROL_CSRC (a csrc tree
# without the change, e.g. `git archive HEAD~1 csrc | tar -x --strip-components=1 -C
# .carry/old_csrc`, carried) in place of csrc/, run the tests that must FAIL there, then put the
# checkout's csrc back, rebuild and run them again (they must pass). Both swaps keep the copied
# files' old modification times (cp -p, then dated 2020), the case in which ninja alone would
# link the other tree's objects; benchmarks/gpu_suite.sh must rebuild anyway
# (scripts/gpu/touch_if_csrc_changed.sh), and the csrc hash it prints names what was built.
# Usage (repo root, on the GPU): bash scripts/gpu/negative_control.sh CONTROL_CSRC 'pytest args'
# (the pytest args run in python_tests/). Exit 0 only when the control fails and the checkout
# passes.
set -uo pipefail
control=${1:?usage: negative_control.sh CONTROL_CSRC 'pytest args'}
tests=${2:?usage: negative_control.sh CONTROL_CSRC 'pytest args'}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
put_csrc() { rm -rf csrc && mkdir csrc && cp -rp "$1/." csrc/; }  # csrc/ := a copy of tree $1
saved=$(mktemp -d)
cp -rp csrc/. "$saved/"
trap 'put_csrc "$saved"; rm -rf "$saved"' EXIT  # the checkout's csrc back even when interrupted
build_and_test() {  # $1: label; prints the hash built, the build time and pytest's summary
  find csrc -type f -exec touch -d 2020-01-01 {} +
  SUITE_BUILD_ONLY=1 bash benchmarks/gpu_suite.sh > "$OUT/negctl_build_$1.log" 2>&1 \
    || { echo "$1: build failed"; tail -20 "$OUT/negctl_build_$1.log"; return 2; }
  grep -hE "csrc content hash|csrc .* differs|^build:" "$OUT/negctl_build_$1.log" | sed "s/^/$1: /"
  (cd python_tests && eval python3 -m pytest -q -p no:cacheprovider "$tests") > "$OUT/negctl_pytest_$1.log" 2>&1
  local rc=$?
  grep -E "^FAILED|^ERROR|passed|failed" "$OUT/negctl_pytest_$1.log" | cut -c1-200 | sed "s/^/$1: /" | tail -20
  return $rc
}
put_csrc "$control"
build_and_test control; control_rc=$?
put_csrc "$saved"
build_and_test checkout; checkout_rc=$?
echo "negative control: control pytest rc $control_rc (must be 1), checkout pytest rc $checkout_rc (must be 0)"
[ "$control_rc" = 1 ] && [ "$checkout_rc" = 0 ]
