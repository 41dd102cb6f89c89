#!/usr/bin/env bash
# Train the demo target's JetSpec heads (causal + bidirectional) end to end with `jetspec train`,
# and measure them.
#
#   bash scripts/demo/make_demo_head.sh [--total-minutes 7] [--device auto|cuda|cpu] [--out DIR]
#        [--build DIR] [--gen-seconds 150] [--gen-max-new-tokens 128] [--gen-batch-size 1024]
#        [--steps 2000] [--init-dir DIR] [--parallel-heads | --sequential-heads] [--eval-seconds 85] [--eval-num 50]
#        [--eval-max-new-tokens 128] [--policies accum[,ddtree]] [--max-prompts 0]
#        [--snippets-per-file 4] [--batch-size 64] [--anchors 32] [--max-len 384] [--lr 1e-3]
#        [--max-epochs 4] [--prompt-roots stdlib,site] [--tiny] [--regen-only] [--slot-diag N]
#        [-- extra jetspec-train args]
#
# Stages (each logs, each has a deadline; nothing new starts after its deadline, and results are
# written as they complete, so a late failure or the time cap loses nothing that is done):
#   1. prompts   scripts/demo/extract_prompts.py (background while torch is imported; 45 s cap): from
#                the interpreter's standard library and site-packages (--prompt-roots), two kinds:
#                "def" (function/method header + docstring, <= 700 characters) and "snippet"
#                (file-prefix snippets: --snippets-per-file cut points per file, after a def/class
#                header or a blank line, the last <= 600 characters); MBPP-like ones excluded;
#                ordered by a hash of the text so any prefix is a uniform subset. Held-out MBPP
#                eval prompts. Counts per kind in prompts_info.txt.
#   2. regen     jetspec train --regenerate-only: the demo target's greedy answers (--gen-max-new-
#                tokens, default 128 = the eval length) in BUILD/regen.jsonl, --gen-seconds of
#                generation at most (prompts answered in file order, longest first only within
#                chunks of 8 batches: a time cap leaves a uniform subset). Then (background, CPU)
#                $OUT/regen.jsonl.gz: the cache tagged with prompt kinds, capped at 15 MB (a prefix
#                = a uniform subset when larger), plus regen_stats.json (per kind: samples, answer
#                tokens, empty answers).
#   3. heads     --parallel-heads (default): the causal and the bidirectional head train AT THE SAME
#                TIME as two processes on the same device, same cached data, same seed, the same
#                fixed --steps (both stop at the same hard deadline if the device is slower than
#                planned); --max-epochs caps the passes over the data (the same cap for both). Logs
#                train_{causal,bidir}.log (progress printed every 20 s). --sequential-heads: causal
#                first, then bidirectional with the causal run's step count.
#                -> $OUT/demo_head.tar.gz (causal, the bundled kind) and demo_head_bidir.tar.gz
#   4. eval      scripts/demo/eval_demo_head.py: tau at budgets 16/64/128 for both heads (each
#                policy of --policies; ddtree = the topn tree policy), the causal head as a chain,
#                tokens/s vs the AR baseline (CUDA graphs on CUDA)
#                -> $OUT/demo_head_results.json + demo_head_results.md
# Default time line for --total-minutes 7 (H200; regeneration ~190 prompts/s at batch 512 x 256
# tokens was measured, so >= 380/s at 128 tokens; batch 1024 now): start-up + prompts ~15 s, regeneration ~10 s of
# loading + 150 s, heads from ~175 s to at most total - 10 - eval-seconds (= 325 s: ~10 s of loading
# each, then 2000 steps, which needs ~14.5 steps/s per process with the two sharing the GPU; one
# alone ran ~20 steps/s), eval 85 s (50 prompts: AR + 2 x 3 budgets + chain took 70 s), 10 s reserve.
# Slack flows forward: a stage that ends early lets the next one start early.
# --gen-seconds 0: no regeneration (and no export), train on BUILD/regen.jsonl as it is. --init-dir DIR: continue
# training from DIR/causal/head and DIR/bidir/head (e.g. an earlier run's heads) instead of fresh heads.
# --slot-diag N: after the eval, both heads' top-1 agreement per mask slot with all-MASK blocks (the
# decoding condition) over every anchor of the target's greedy answers to the first N held-out
# prompts (scripts/demo/diag_noise_reliance.py --noise 0, fp32, on the eval's device) ->
# $OUT/slot_accuracy.json; the last 30 s of the cap are kept for it (the heads stop 30 s earlier,
# the eval keeps its --eval-seconds; default 0: not run).
# --regen-only: stages 1-2 only (prompts, regeneration, the $OUT/regen.jsonl.gz export, waited
# for), e.g. a cache for scripts/gpu/demo_pairs.sh; regeneration then stops 60 s before the cap,
# which the export needs.
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
TOTAL_MINUTES=7
DEVICE=auto
OUT_DIR="${OUT:-build/demo_head/out}"
BUILD=build/demo_head
GEN_SECONDS=150
GEN_MAX_NEW=128
GEN_BATCH=1024
STEPS=2000
PARALLEL=1
EVAL_SECONDS=85
EVAL_NUM=50
EVAL_MAX_NEW=128
POLICIES=accum
MAX_PROMPTS=0
SNIPPETS=4
BATCH=64
ANCHORS=32
MAX_LEN=384
LR=1e-3
MAX_EPOCHS=4
PROMPT_ROOTS=stdlib,site
TINY=0
REGEN_ONLY=0
SLOT_DIAG=0
INIT_DIR=""
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --total-minutes) TOTAL_MINUTES="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    --out) OUT_DIR="$2"; shift 2 ;;
    --build) BUILD="$2"; shift 2 ;;
    --gen-seconds) GEN_SECONDS="$2"; GEN_SET=1; shift 2 ;;
    --gen-max-new-tokens) GEN_MAX_NEW="$2"; shift 2 ;;
    --gen-batch-size) GEN_BATCH="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --init-dir) INIT_DIR="$2"; shift 2 ;;
    --parallel-heads) PARALLEL=1; shift ;;
    --sequential-heads) PARALLEL=0; shift ;;
    --eval-seconds) EVAL_SECONDS="$2"; shift 2 ;;
    --eval-num) EVAL_NUM="$2"; shift 2 ;;
    --eval-max-new-tokens) EVAL_MAX_NEW="$2"; shift 2 ;;
    --policies) POLICIES="$2"; shift 2 ;;
    --max-prompts) MAX_PROMPTS="$2"; shift 2 ;;
    --snippets-per-file) SNIPPETS="$2"; shift 2 ;;
    --batch-size) BATCH="$2"; shift 2 ;;
    --anchors) ANCHORS="$2"; shift 2 ;;
    --max-len) MAX_LEN="$2"; shift 2 ;;
    --lr) LR="$2"; shift 2 ;;
    --max-epochs) MAX_EPOCHS="$2"; shift 2 ;;
    --prompt-roots) PROMPT_ROOTS="$2"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --regen-only) REGEN_ONLY=1; shift ;;
    --slot-diag) SLOT_DIAG="$2"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "make_demo_head.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ "$TINY" == 1 ]]; then
  MAX_PROMPTS=12; EVAL_NUM=2; EVAL_MAX_NEW=16; BATCH=3; ANCHORS=4; MAX_LEN=96; GEN_MAX_NEW=24; GEN_BATCH=4
  STEPS=6; EVAL_SECONDS=60; [[ -z "${GEN_SET:-}" ]] && GEN_SECONDS=40
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
# deadlines (unix seconds): the end of the whole run (minus a 10 s reserve), the heads' hard stop
T_END=$("$PY" -c "print(int($T_START + $TOTAL_MINUTES * 60 - 10))")
DIAG_RESERVE=0; [[ "$SLOT_DIAG" != 0 ]] && DIAG_RESERVE=30  # the slot diagnostic's time, after the eval
TRAIN_END=$(( T_END - DIAG_RESERVE - EVAL_SECONDS ))
now() { date +%s; }
hms() { date -d "@$1" +%T; }
RES="$OUT_DIR/demo_head_results.json"

stamp "python $PY; repo $REPO; out $OUT_DIR; build $BUILD; device $DEVICE; cap $TOTAL_MINUTES min (end $(hms $T_END), heads stop by $(hms $TRAIN_END)); data $DATA"

# ---------------------------------------------------------------- 1. prompts (background)
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
stamp "1/4 prompts from ${ROOTS[*]} (background)"
"$PY" "$HERE/extract_prompts.py" --roots "${ROOTS[@]}" --mbpp "$MBPP" --train-out "$BUILD/train_prompts.jsonl" \
  --eval-out "$BUILD/eval_prompts.jsonl" --max-chars 700 --snippets-per-file "$SNIPPETS" --snippet-max-chars 600 \
  --max-seconds 45 ${MP[@]+"${MP[@]}"} ${MF[@]+"${MF[@]}"} > "$OUT_DIR/prompts_info.txt" 2>&1 &
P_PROMPTS=$!

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
wait "$P_PROMPTS"; rc=$?
cat "$OUT_DIR/prompts_info.txt"
[[ $rc == 0 && -s "$BUILD/train_prompts.jsonl" ]] || { echo "[make_demo_head] prompt extraction failed"; exit 1; }
stamp "prompts done"

COMMON=(--prompts "$BUILD/train_prompts.jsonl" --cache "$BUILD/regen.jsonl" --device "$DEVICE"
        --num-layers 3 --taps 1,3 --block-size 16 --batch-size "$BATCH" --anchors "$ANCHORS"
        --max-len "$MAX_LEN" --lr "$LR" --warmup 50 --gen-max-new-tokens "$GEN_MAX_NEW"
        --gen-batch-size "$GEN_BATCH" --save-every 200 --log-every 50 --save-dtype bfloat16 --seed 0
        --max-epochs "$MAX_EPOCHS")
[[ "$TINY" == 1 ]] && COMMON+=(--warmup 2 --log-every 1)

# ---------------------------------------------------------------- 2. regeneration
# generation stops after --gen-seconds (counted once the model and prompts are loaded), and in any
# case so that the heads keep at least 60 s (tiny: 10 s) before their deadline
MIN_TRAIN=60; [[ "$TINY" == 1 ]] && MIN_TRAIN=10
GEN_END_BY=$(( TRAIN_END - MIN_TRAIN ))
if [[ "$REGEN_ONLY" == 1 ]]; then
  [[ "$GEN_SECONDS" == 0 ]] && { echo "make_demo_head.sh: --regen-only needs --gen-seconds > 0" >&2; exit 2; }
  GEN_END_BY=$(( T_END - 60 ))  # no heads, no eval: only the export follows
fi
stamp "2/4 regenerate: ${GEN_SECONDS} s of generation at most (and not past $(hms $GEN_END_BY)), max_new_tokens $GEN_MAX_NEW, batch $GEN_BATCH"
T_GEN=$(now)
regen() {  # extra args (e.g. a smaller batch); the cache is resumable
  TOKENIZERS_PARALLELISM=true "$PY" -m jetspec_ext.cli train "${COMMON[@]}" --out "$BUILD/regen_stage" --regenerate-only \
    --gen-minutes "$("$PY" -c "print(max(0.01, ($GEN_SECONDS - ($(now) - $T_GEN)) / 60))")" --gen-end-by "$GEN_END_BY" \
    "$@" ${EXTRA[@]+"${EXTRA[@]}"}
}
rm -f "$BUILD/regen_stage/summary.json"
P_EXPORT=""
if [[ "$GEN_SECONDS" == 0 ]]; then
  stamp "regeneration skipped (--gen-seconds 0): training on the existing cache $BUILD/regen.jsonl"
else
  regen; rc=$?
  stamp "regeneration exit $rc"
  if [[ $rc != 0 ]] && (( $(now) < GEN_END_BY - 30 )); then
    stamp "regeneration failed: once more with batch $(( GEN_BATCH / 2 )) (the cache keeps what was answered)"
    regen --gen-batch-size $(( GEN_BATCH / 2 )); stamp "regeneration exit $?"
  fi
  cp "$BUILD/regen_stage/summary.json" "$OUT_DIR/regen_summary.json" 2>/dev/null || true
  # the new cache, gzipped and kind-tagged, for a later CPU analysis (background, one core)
  TOKENIZERS_PARALLELISM=false nice -n 10 "$PY" "$HERE/export_regen.py" --cache "$BUILD/regen.jsonl" \
    --prompts "$BUILD/train_prompts.jsonl" --max-len "$MAX_LEN" --max-new-tokens "$GEN_MAX_NEW" \
    --out "$OUT_DIR/regen.jsonl.gz" --max-mb 15 --stats-out "$OUT_DIR/regen_stats.json" > "$OUT_DIR/export_regen.log" 2>&1 &
  P_EXPORT=$!
fi
N_SAMPLES=$("$PY" -c "import json; print(json.load(open('$BUILD/regen_stage/summary.json'))['regenerate']['samples'])" 2>/dev/null \
            || cat "$BUILD/regen.jsonl" 2>/dev/null | wc -l)
if [[ "$REGEN_ONLY" == 1 ]]; then
  stamp "--regen-only: waiting for the cache export"
  wait "$P_EXPORT"; rc=$?
  cat "$OUT_DIR/export_regen.log"
  [[ $rc == 0 && -s "$OUT_DIR/regen.jsonl.gz" ]] || { stamp "cache export failed (exit $rc)"; exit 1; }
  stamp "done: $OUT_DIR/regen.jsonl.gz ($N_SAMPLES regenerated samples; the export is capped at 15 MB)"
  exit 0
fi

# ---------------------------------------------------------------- 3. heads
pack() {  # pack BUILD/$1/head as $OUT/$2 (directory "head" inside, drop-in for jetspec_ext/demo_models/)
  if [[ -f "$BUILD/$1/head/config.json" ]]; then
    rm -rf "$BUILD/pack_$1" && mkdir -p "$BUILD/pack_$1" && cp -r "$BUILD/$1/head" "$BUILD/pack_$1/head"
    cp "$BUILD/$1/summary.json" "$BUILD/pack_$1/head/train_summary.json" 2>/dev/null || true
    tar -C "$BUILD/pack_$1" -czf "$OUT_DIR/$2" head && stamp "packed $OUT_DIR/$2 ($(du -h "$OUT_DIR/$2" | cut -f1))"
    cp "$BUILD/$1/train_log.jsonl" "$OUT_DIR/train_log_$1.jsonl" 2>/dev/null || true
  fi
}
train_one() {  # name attention steps end_by
  local init=()  # --init-dir: continue from INIT_DIR/{causal,bidir}/head (a fresh head otherwise)
  [[ -n "$INIT_DIR" ]] && init=(--init-head "$INIT_DIR/$1/head")
  TOKENIZERS_PARALLELISM=true "$PY" -m jetspec_ext.cli train "${COMMON[@]}" --out "$BUILD/$1" --attention "$2" \
    --gen-minutes 0 --steps "$3" --end-by "$4" ${init[@]+"${init[@]}"} ${EXTRA[@]+"${EXTRA[@]}"} > "$OUT_DIR/train_$1.log" 2>&1
}
progress() {  # the last step line of each training log
  for n in causal bidir; do
    [[ -f "$OUT_DIR/train_$n.log" ]] && l=$(grep -E "step [0-9]+/|train done|Error|error" "$OUT_DIR/train_$n.log" | tail -1) \
      && [[ -n "$l" ]] && stamp "  $n: ${l#\[jetspec train\] }"
  done
}
rm -rf "$BUILD/causal" "$BUILD/bidir"  # fresh heads (the cache is kept)
if [[ "$N_SAMPLES" -le 0 ]]; then
  stamp "3/4 skipped: no regenerated samples"
elif (( $(now) > TRAIN_END - 20 )); then
  stamp "3/4 skipped: past the heads' deadline"
else
  PASSES=$("$PY" -c "print(round($STEPS * $BATCH / $N_SAMPLES, 2))")
  if [[ "$PARALLEL" == 1 ]]; then
    stamp "3/4 heads in parallel: causal + bidirectional, $STEPS steps each x $BATCH sequences over $N_SAMPLES regenerated samples (~$PASSES passes; max-epochs $MAX_EPOCHS), hard stop $(hms $TRAIN_END) ($(( TRAIN_END - $(now) )) s: needs $("$PY" -c "print(round($STEPS / max(1, $TRAIN_END - $(now) - 10), 1))") steps/s each)"
    train_one causal causal "$STEPS" "$TRAIN_END" & P_C=$!
    train_one bidir bidirectional "$STEPS" "$TRAIN_END" & P_B=$!
    last=$(now)
    while kill -0 "$P_C" 2>/dev/null || kill -0 "$P_B" 2>/dev/null; do
      sleep 2
      if (( $(now) - last >= 20 )); then progress; last=$(now); fi
    done
    wait "$P_C"; rc_c=$?; wait "$P_B"; rc_b=$?
    stamp "heads exit: causal $rc_c, bidirectional $rc_b"
    pack causal demo_head.tar.gz
    pack bidir demo_head_bidir.tar.gz
  else
    MID=$(( ( $(now) + TRAIN_END ) / 2 ))
    stamp "3/4 causal head: $STEPS steps x $BATCH sequences over $N_SAMPLES samples (~$PASSES passes), hard stop $(hms $MID)"
    train_one causal causal "$STEPS" "$MID"; stamp "causal exit $?"
    pack causal demo_head.tar.gz
    S=$("$PY" -c "import json; print(json.load(open('$BUILD/causal/summary.json'))['train']['steps'])" 2>/dev/null || echo 0)
    if [[ "$S" -gt 0 ]] && (( $(now) < TRAIN_END - 20 )); then
      stamp "3/4 bidirectional head: $S steps, same data and seed, hard stop $(hms $TRAIN_END)"
      train_one bidir bidirectional "$S" "$TRAIN_END"; stamp "bidirectional exit $?"
      pack bidir demo_head_bidir.tar.gz
    fi
  fi
  progress
fi
"$PY" - "$BUILD" "$OUT_DIR/training_summaries.json" <<'EOF'
import json, os, sys
b, out = sys.argv[1], sys.argv[2]
r = {}
for k in ("regen_stage", "causal", "bidir"):
    p = os.path.join(b, k, "summary.json")
    if os.path.isfile(p):
        r[k] = json.load(open(p))
for k in ("causal", "bidir"):
    t = (r.get(k) or {}).get("train")
    if t:
        print(f"[make_demo_head] {k}: {t['steps']} steps (stopped early: {t['stopped_early']}) in {t['seconds']} s, "
              f"{t['sequences']} sequences, {t.get('passes')} passes, loss {t['loss_first_mean']:.3f} -> {t['loss_last_mean']:.3f}")
json.dump(r, open(out, "w"), indent=1)
EOF

# ---------------------------------------------------------------- 4. eval
HEADS=()
[[ -f "$BUILD/causal/head/config.json" ]] && HEADS+=(--causal "$BUILD/causal/head")
[[ -f "$BUILD/bidir/head/config.json" ]] && HEADS+=(--bidir "$BUILD/bidir/head")
BUDGETS=16,64,128
EVAL_END=$(( T_END - DIAG_RESERVE - 8 ))  # a configuration takes ~8 s on the H200
if [[ ${#HEADS[@]} -gt 0 && -s "$BUILD/eval_prompts.jsonl" ]] && (( $(now) < EVAL_END - 10 )); then
  stamp "4/4 eval: ${EVAL_NUM} MBPP prompts, budgets $BUDGETS, policies $POLICIES, device $DEVICE (nothing new starts after $(hms $EVAL_END))"
  "$PY" "$HERE/eval_demo_head.py" "${HEADS[@]}" --prompts "$BUILD/eval_prompts.jsonl" --num "$EVAL_NUM" \
    --budgets "$BUDGETS" --policies "$POLICIES" --max-new-tokens "$EVAL_MAX_NEW" --device "$DEVICE" --end-by "$EVAL_END" \
    --out "$RES" --table "$OUT_DIR/demo_head_results.md" --extra "$OUT_DIR/training_summaries.json"
  stamp "eval exit $?"
else
  stamp "4/4 eval skipped (no head, no eval prompts, or past the deadline)"
fi
if [[ "$SLOT_DIAG" != 0 && ${#HEADS[@]} == 4 && -s "$BUILD/eval_prompts.jsonl" ]] && (( $(now) < T_END - 5 )); then
  stamp "slot diagnostic: ${SLOT_DIAG} held-out prompts, all-MASK blocks, both heads (stops by $(hms $T_END))"
  timeout $(( T_END - $(now) )) "$PY" "$HERE/diag_noise_reliance.py" --head "causal=$BUILD/causal/head" \
    --head "bidir=$BUILD/bidir/head" --prompts "$BUILD/eval_prompts.jsonl" --num "$SLOT_DIAG" --noise 0 \
    --device "$DEVICE" \
    --cache-dir "$BUILD/slot_diag" --out "$OUT_DIR/slot_accuracy.json" > "$OUT_DIR/slot_diag.log" 2>&1
  stamp "slot diagnostic exit $? ($(tail -1 "$OUT_DIR/slot_diag.log" | cut -c1-100))"
fi
if [[ -n "$P_EXPORT" ]]; then
  if kill -0 "$P_EXPORT" 2>/dev/null; then stamp "waiting for the cache export"; fi
  wait "$P_EXPORT"; cat "$OUT_DIR/export_regen.log"
fi
[[ -f "$OUT_DIR/demo_head_results.md" ]] && cat "$OUT_DIR/demo_head_results.md"
stamp "done: $OUT_DIR (demo_head.tar.gz, demo_head_bidir.tar.gz, demo_head_results.json/.md, regen.jsonl.gz, logs). Install: tar -xzf demo_head.tar.gz -C jetspec_ext/demo_models/"
