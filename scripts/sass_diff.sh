#!/usr/bin/env bash
# Does a csrc edit change the machine code? Compiles one translation unit to a cubin twice, from the
# working tree and from the csrc of git revision REV, with the flags of the last local build
# (build/temp.*/build.ninja: run `python setup.py build_ext --inplace` once first, with
# JETSPEC_CUDA_ARCHS=90a for the sm_90a kernels), and compares `cuobjdump -sass` with addresses
# and encodings stripped. Exit 0 and "SASS identical", or 1 and a diff summary.
#
# Why: edits made when no GPU time is left (comments, renames, host-side refactors) land only if
# the kernels they touch compile to the same SASS as the code that ran (docs/roadmap.md).
#
# Usage: scripts/sass_diff.sh [REV] [TU] [extra nvcc flags...]
#   REV  default HEAD; TU default csrc/cuda/tree_attention_cuda.cu; e.g.
#   scripts/sass_diff.sh main csrc/cuda/tree_attention_cuda.cu -DJETSPEC_TREE_ATTN_TIMELINE
# Needs cuobjdump: $CUOBJDUMP, else on PATH, else /usr/local/cuda/bin/cuobjdump (the local pip
# index has the nvidia-cuda-cuobjdump wheel when the CUDA install lacks it: pip download --no-deps,
# unzip, nvidia/cu13/bin/cuobjdump).
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:-HEAD}
TU=${2:-csrc/cuda/tree_attention_cuda.cu}
shift $(( $# > 2 ? 2 : $# ))
EXTRA=("$@")
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
for v in new old; do  # the working tree, then REV (scripts/sass_dump.sh compiles either)
  src=$([ $v = new ] && echo WT || echo "$REV")
  scripts/sass_dump.sh "$src" "$TMP/$v.raw" "$TU" "${EXTRA[@]}" >/dev/null
  sed 's@/\*[0-9a-f]*\*/@@; s@/\* 0x[0-9a-f]* \*/@@' "$TMP/$v.raw" > "$TMP/$v.sass"
done
if cmp -s "$TMP/new.sass" "$TMP/old.sass"; then
  echo "SASS identical: $TU, working tree vs $REV ($(grep -c 'Function :' "$TMP/new.sass") functions)"
else
  echo "SASS differs: $TU, working tree vs $REV"
  diff <(grep 'Function :' "$TMP/old.sass") <(grep 'Function :' "$TMP/new.sass") || true
  diff "$TMP/old.sass" "$TMP/new.sass" | grep -c '^[<>]' | sed 's/^/changed lines: /'
  exit 1
fi
