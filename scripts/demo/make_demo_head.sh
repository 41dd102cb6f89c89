#!/usr/bin/env bash
# Train the demo target's JetSpec head end to end with `jetspec train`, and measure it.
#
#   bash scripts/demo/make_demo_head.sh [--total-minutes 9.5] [--device auto|cuda|cpu] [--out DIR]
#        [--build DIR] [--eval-num 50] [--eval-max-new-tokens 128] [--max-prompts 0]
#        [--batch-size 64] [--anchors 32] [--max-len 384] [--gen-max-new-tokens 256]
#        [--gen-batch-size 512] [--lr 1e-3] [--max-epochs 4] [--prompt-roots stdlib,site] [--tiny]
#        [-- extra jetspec-train args]
#
# Stages (each logs, each has a deadline derived from --total-minutes; results are written as they
# complete, so a late failure loses nothing that is done):
#   1. prompts   scripts/demo/extract_prompts.py: function signature + docstring prompts from the
#                interpreter's standard library and (default) site-packages (--prompt-roots stdlib
#                for the stdlib only; MBPP-like ones excluded); held-out MBPP eval prompts in the
#                same form. Why site-packages: the first demo head (stdlib only, 4864 prompts)
#                overfit: 0.70 top-1 at depth 15 on its training batches, tau 1.86 on MBPP.
#   2. causal    jetspec train: regenerate responses with the demo target (cached in
#                BUILD/regen.jsonl, time-capped), then train the causal head for a time budget
#                (the step count is calibrated from the measured speed) -> $OUT/demo_head.tar.gz
#   3. bidir     jetspec train --attention bidirectional: same data, same seed, same step count
#   4. eval      scripts/demo/eval_demo_head.py: tau at budgets 16/64/128 for both heads, the
#                causal head as a chain, tokens/s vs the AR baseline (CUDA graphs on CUDA)
#                -> $OUT/demo_head_results.json + demo_head_results.md
# Budget split of the total (minus ~45 s of interpreter start-ups and packing): regeneration
# 16 %, causal training 28 %, bidirectional training the same step count (cap 33 %), eval the rest (23 %).
# --tiny: seconds-long settings for a CPU smoke test (few prompts, few steps, 2 eval prompts).
# Data: $JETSPEC_DATA/mbpp_test.jsonl (default ../shared/data relative to the repo root).
# Needs jetspec_ext importable from the repo root (built in place, or installed) with torch and
# transformers; $PYTHON picks the interpreter. Install the head: tar -xzf demo_head.tar.gz -C jetspec_ext/demo_models/
set -uo pipefail
T_START=$(date +%s)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for c in python python3; do
    if command -v "$c" >/dev/null && "$c" -c "import torch" 2>/dev/null; then PY="$(command -v "$c")"; break; fi
  done
fi
[[ -n "$PY" ]] || { echo "make_demo_head.sh: no python with torch found; set PYTHON" >&2; exit 1; }
TOTAL_MINUTES=9.5
DEVICE=auto
OUT_DIR="${OUT:-build/demo_head/out}"
BUILD=build/demo_head
EVAL_NUM=50
EVAL_MAX_NEW=128
MAX_PROMPTS=0
BATCH=64
ANCHORS=32
MAX_LEN=384
GEN_MAX_NEW=256
GEN_BATCH=512
LR=1e-3
MAX_EPOCHS=4
PROMPT_ROOTS=stdlib,site
TINY=0
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --total-minutes) TOTAL_MINUTES="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    --out) OUT_DIR="$2"; shift 2 ;;
    --build) BUILD="$2"; shift 2 ;;
    --eval-num) EVAL_NUM="$2"; shift 2 ;;
    --eval-max-new-tokens) EVAL_MAX_NEW="$2"; shift 2 ;;
    --max-prompts) MAX_PROMPTS="$2"; shift 2 ;;
    --batch-size) BATCH="$2"; shift 2 ;;
    --anchors) ANCHORS="$2"; shift 2 ;;
    --max-len) MAX_LEN="$2"; shift 2 ;;
    --gen-max-new-tokens) GEN_MAX_NEW="$2"; shift 2 ;;
    --gen-batch-size) GEN_BATCH="$2"; shift 2 ;;
    --lr) LR="$2"; shift 2 ;;
    --max-epochs) MAX_EPOCHS="$2"; shift 2 ;;
    --prompt-roots) PROMPT_ROOTS="$2"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "make_demo_head.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ "$TINY" == 1 ]]; then
  MAX_PROMPTS=6; EVAL_NUM=2; EVAL_MAX_NEW=16; BATCH=3; ANCHORS=4; MAX_LEN=96; GEN_MAX_NEW=24; GEN_BATCH=8
fi
DATA="${JETSPEC_DATA:-$REPO/../shared/data}"
mkdir -p "$OUT_DIR" "$BUILD"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"; BUILD="$(cd "$BUILD" && pwd)"
LOG="$OUT_DIR/make_demo_head.log"
exec > >(tee -a "$LOG") 2>&1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO"
stamp() { echo "[make_demo_head] $(( $(date +%s) - T_START )) s: $*"; }
# deadline (unix time) at a fraction of the usable budget (total minus a 45 s reserve)
at() { "$PY" -c "print(int($T_START + ($TOTAL_MINUTES * 60 - 45) * $1))"; }
left_min() { "$PY" -c "import time; print(max(0.05, ($1 - time.time()) / 60))"; }
RES="$OUT_DIR/demo_head_results.json"

stamp "python $PY; repo $REPO; out $OUT_DIR; build $BUILD; device $DEVICE; cap $TOTAL_MINUTES min; data $DATA"
if ! "$PY" -c "import jetspec_ext" 2>/dev/null; then
  # Not built: a CPU-only in-place build is quick; the ops then run their pure-PyTorch references
  # on CUDA (tau is exact, tokens/s is not representative). Build with CUDA beforehand for speed.
  stamp "WARNING: jetspec_ext does not import; building the CPU-only extension in place (tokens/s will not be representative)"
  JETSPEC_FORCE_CPU=1 MAX_JOBS="$(nproc)" "$PY" setup.py build_ext --inplace -q > "$OUT_DIR/build_ext.log" 2>&1 \
    || { tail -30 "$OUT_DIR/build_ext.log"; echo "[make_demo_head] build failed"; exit 1; }
fi
"$PY" - <<'EOF' || { echo "[make_demo_head] cannot import jetspec_ext (build it in place first)"; exit 1; }
import os, torch, transformers, jetspec_ext
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"[make_demo_head] torch {torch.__version__}, transformers {transformers.__version__}, cores {os.cpu_count()}, "
      f"GPU {gpu}, jetspec CUDA kernels {jetspec_ext.cuda_compiled()}")
EOF

# ---------------------------------------------------------------- 1. prompts
stamp "1/4 prompts"
MP=(); [[ "$MAX_PROMPTS" != 0 ]] && MP=(--max-prompts "$MAX_PROMPTS")
MF=(); [[ "$TINY" == 1 ]] && MF=(--max-files 40)
[[ "$TINY" == 1 ]] && PROMPT_ROOTS=stdlib
# stdlib -> sysconfig's stdlib path, site -> purelib (site-packages); a walk of the stdlib skips
# its own site-packages, so no file is read twice
mapfile -t ROOTS < <("$PY" -c "
import sysconfig, sys
p = sysconfig.get_paths()
for r in sys.argv[1].split(','):
    print({'stdlib': p['stdlib'], 'site': p['purelib']}.get(r, r))" "$PROMPT_ROOTS")
MBPP="$DATA/mbpp_test.jsonl"
[[ -f "$MBPP" ]] || echo "[make_demo_head] WARNING: $MBPP not found: no eval prompts, no MBPP exclusion"
"$PY" "$HERE/extract_prompts.py" --roots "${ROOTS[@]}" --mbpp "$MBPP" --train-out "$BUILD/train_prompts.jsonl" \
  --eval-out "$BUILD/eval_prompts.jsonl" ${MP[@]+"${MP[@]}"} ${MF[@]+"${MF[@]}"} | tee "$OUT_DIR/prompts_info.txt" \
  || { echo "[make_demo_head] prompt extraction failed"; exit 1; }

COMMON=(--prompts "$BUILD/train_prompts.jsonl" --cache "$BUILD/regen.jsonl" --device "$DEVICE"
        --num-layers 3 --taps 1,3 --block-size 16 --batch-size "$BATCH" --anchors "$ANCHORS"
        --max-len "$MAX_LEN" --lr "$LR" --warmup 50 --gen-max-new-tokens "$GEN_MAX_NEW"
        --gen-batch-size "$GEN_BATCH" --save-every 200 --log-every 50 --save-dtype bfloat16 --seed 0
        --max-epochs "$MAX_EPOCHS")
[[ "$TINY" == 1 ]] && COMMON+=(--warmup 2 --log-every 1)

# ---------------------------------------------------------------- 2. causal head (+ regeneration)
GEN_END=$(at 0.16)
CAUSAL_END=$(at 0.44)
if [[ "$TINY" == 1 ]]; then CAUSAL_STEPS=(--steps 6); else CAUSAL_STEPS=(--minutes "$("$PY" -c "print(round(($CAUSAL_END - $GEN_END) / 60, 3))")"); fi
stamp "2/4 regenerate (until $(date -d @$GEN_END +%T)) + causal head (${CAUSAL_STEPS[*]}, hard stop $(date -d @$CAUSAL_END +%T))"
"$PY" -m jetspec_ext.cli train "${COMMON[@]}" --out "$BUILD/causal" --attention causal \
  --gen-minutes "$(left_min "$GEN_END")" "${CAUSAL_STEPS[@]}" --end-by "$CAUSAL_END" ${EXTRA[@]+"${EXTRA[@]}"}
rc_causal=$?
stamp "causal training exit $rc_causal"
if [[ -f "$BUILD/causal/head/config.json" ]]; then
  rm -rf "$BUILD/pack" && mkdir -p "$BUILD/pack" && cp -r "$BUILD/causal/head" "$BUILD/pack/head"
  cp "$BUILD/causal/summary.json" "$BUILD/pack/head/train_summary.json" 2>/dev/null || true
  tar -C "$BUILD/pack" -czf "$OUT_DIR/demo_head.tar.gz" head && stamp "packed $OUT_DIR/demo_head.tar.gz ($(du -h "$OUT_DIR/demo_head.tar.gz" | cut -f1))"
  cp "$BUILD/causal/train_log.jsonl" "$OUT_DIR/train_log_causal.jsonl" 2>/dev/null || true
fi
STEPS=$("$PY" -c "import json; print(json.load(open('$BUILD/causal/summary.json'))['train']['steps'])" 2>/dev/null || echo "")

# ---------------------------------------------------------------- 3. bidirectional head
BIDIR_END=$(at 0.77)
if [[ -n "$STEPS" && "$STEPS" -gt 0 ]]; then
  stamp "3/4 bidirectional head: $STEPS steps, same data and seed (hard stop $(date -d @$BIDIR_END +%T))"
  "$PY" -m jetspec_ext.cli train "${COMMON[@]}" --out "$BUILD/bidir" --attention bidirectional \
    --gen-minutes 0 --steps "$STEPS" --end-by "$BIDIR_END" ${EXTRA[@]+"${EXTRA[@]}"}
  stamp "bidirectional training exit $?"
  cp "$BUILD/bidir/train_log.jsonl" "$OUT_DIR/train_log_bidir.jsonl" 2>/dev/null || true
else
  stamp "3/4 skipped: no causal step count"
fi
"$PY" - "$BUILD" "$OUT_DIR/training_summaries.json" <<'EOF'
import json, os, sys
b, out = sys.argv[1], sys.argv[2]
r = {}
for k in ("causal", "bidir"):
    p = os.path.join(b, k, "summary.json")
    if os.path.isfile(p):
        r[k] = json.load(open(p))
json.dump(r, open(out, "w"), indent=1)
EOF

# ---------------------------------------------------------------- 4. eval
EVAL_END=$(at 1.0)
HEADS=()
[[ -f "$BUILD/causal/head/config.json" ]] && HEADS+=(--causal "$BUILD/causal/head")
[[ -f "$BUILD/bidir/head/config.json" ]] && HEADS+=(--bidir "$BUILD/bidir/head")
BUDGETS=16,64,128
if [[ ${#HEADS[@]} -gt 0 && -s "$BUILD/eval_prompts.jsonl" ]]; then
  stamp "4/4 eval: ${EVAL_NUM} MBPP prompts, budgets $BUDGETS, device $DEVICE (nothing new starts after $(date -d @$EVAL_END +%T))"
  "$PY" "$HERE/eval_demo_head.py" "${HEADS[@]}" --prompts "$BUILD/eval_prompts.jsonl" --num "$EVAL_NUM" \
    --budgets "$BUDGETS" --max-new-tokens "$EVAL_MAX_NEW" --device "$DEVICE" --end-by "$EVAL_END" \
    --out "$RES" --table "$OUT_DIR/demo_head_results.md" --extra "$OUT_DIR/training_summaries.json"
  stamp "eval exit $?"
else
  stamp "4/4 eval skipped (no head or no eval prompts)"
fi
[[ -f "$OUT_DIR/demo_head_results.md" ]] && cat "$OUT_DIR/demo_head_results.md"
stamp "done: $OUT_DIR (demo_head.tar.gz, demo_head_results.json/.md, logs). Install: tar -xzf demo_head.tar.gz -C jetspec_ext/demo_models/"
