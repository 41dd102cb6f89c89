#!/usr/bin/env bash
# The SASS of one translation unit, compiled from the working tree (WT) or from git revision REV's
# csrc, with the last local build's flags (build/temp.*/build.ninja: build once with
# JETSPEC_CUDA_ARCHS=90a python setup.py build_ext --inplace), plus any extra nvcc flags (e.g.
# -DJETSPEC_TREE_ATTN_TIMELINE). Why: to read what ptxas made of a kernel without a GPU (where a
# wait landed, which loads a wgmma waits for), e.g. the twenty-first session's finding that the
# wait for P V was hoisted above the softmax. Read the control bits with scripts/sass_ctrl.py.
#
# Usage: scripts/sass_dump.sh REV|WT OUT.sass [TU] [extra nvcc flags...]
#   TU default csrc/cuda/tree_attention_cuda.cu. Needs cuobjdump ($CUOBJDUMP, else on PATH, else
#   /usr/local/cuda/bin/cuobjdump; see scripts/sass_diff.sh for the pip wheel that has it).
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?REV or WT}; OUTF=$(realpath -m "${2:?output file}")
TU=${3:-csrc/cuda/tree_attention_cuda.cu}
shift $(( $# > 3 ? 3 : $# ))
NINJA=$(ls build/temp.*/build.ninja 2>/dev/null | head -1 || true)
[ -n "$NINJA" ] || { echo "no build/temp.*/build.ninja: build once with python setup.py build_ext --inplace" >&2; exit 2; }
CUOBJDUMP=${CUOBJDUMP:-$(command -v cuobjdump || echo /usr/local/cuda/bin/cuobjdump)}
[ -x "$CUOBJDUMP" ] || { echo "no cuobjdump (set CUOBJDUMP)" >&2; exit 2; }
NVCC=$(sed -n 's/^nvcc = //p' "$NINJA")
CFLAGS=$(sed -n 's/^cuda_cflags = //p' "$NINJA")
POST=$(sed -n 's/^cuda_post_cflags = //p' "$NINJA")
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
if [ "$REV" = WT ]; then cp -r csrc "$TMP/csrc"; else git archive "$REV" csrc | tar -x -C "$TMP"; fi
flags=${CFLAGS//-I$PWD\/csrc/-I$TMP\/csrc}
eval "$NVCC" $flags -cubin "$TMP/$TU" -o "$TMP/x.cubin" $POST "$@" >/dev/null
"$CUOBJDUMP" -sass "$TMP/x.cubin" > "$OUTF"
echo "$OUTF: $(grep -c 'Function :' "$OUTF") functions"
