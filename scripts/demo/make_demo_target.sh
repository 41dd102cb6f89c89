#!/usr/bin/env bash
# Build the demo target end to end: corpus -> tokenizer -> Qwen3 target, then pack the result.
#
#   bash scripts/demo/make_demo_target.sh [--minutes 4] [--total-minutes 7.5] [--out DIR]
#        [--build DIR] [--max-bytes 300M] [--tok-bytes 32M] [--vocab 8192] [-- extra train args]
#
# --minutes        training time budget (the loop; tokenization and export come on top)
# --total-minutes  wall-clock cap for the whole script: the training budget is cut so the
#                  script ends by then (60 s are kept for the final eval, export and tar)
# --out            where the results go (default $OUT if set, else build/demo/out):
#                  demo_target.tar.gz (target/: weights bf16 + tokenizer + configs + demo_info.json)
#                  train_log.jsonl, corpus_manifest.json, licences.json, make_demo_target.log
# --build          scratch directory (corpus, tokenizer, checkpoints; default build/demo)
# Install the result:  tar -xzf demo_target.tar.gz -C jetspec_ext/demo_models/
# Needs python with torch, transformers, tokenizers, numpy ($PYTHON picks the interpreter).
set -euo pipefail
T_START=$(date +%s)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# interpreter: $PYTHON, else the first of python / python3 that imports torch
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for c in python python3; do
    if command -v "$c" >/dev/null && "$c" -c "import torch" 2>/dev/null; then PY="$(command -v "$c")"; break; fi
  done
fi
[[ -n "$PY" ]] || { echo "make_demo_target.sh: no python with torch found; set PYTHON" >&2; exit 1; }
MINUTES=4
TOTAL_MINUTES=7.5
OUT_DIR="${OUT:-build/demo/out}"
BUILD=build/demo
MAX_BYTES=300M
TOK_BYTES=32M
VOCAB=8192
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --minutes) MINUTES="$2"; shift 2 ;;
    --total-minutes) TOTAL_MINUTES="$2"; shift 2 ;;
    --out) OUT_DIR="$2"; shift 2 ;;
    --build) BUILD="$2"; shift 2 ;;
    --max-bytes) MAX_BYTES="$2"; shift 2 ;;
    --tok-bytes) TOK_BYTES="$2"; shift 2 ;;
    --vocab) VOCAB="$2"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "make_demo_target.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT_DIR" "$BUILD"
LOG="$OUT_DIR/make_demo_target.log"
exec > >(tee -a "$LOG") 2>&1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=true PYTHONUNBUFFERED=1
stamp() { echo "[make_demo_target] $(( $(date +%s) - T_START )) s: $*"; }

stamp "python $PY; out $OUT_DIR; build $BUILD; minutes $MINUTES (cap $TOTAL_MINUTES total)"
"$PY" - <<'EOF'
import os, torch, transformers, tokenizers
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"[make_demo_target] torch {torch.__version__}, transformers {transformers.__version__}, "
      f"tokenizers {tokenizers.__version__}, cores {os.cpu_count()}, GPU {gpu}")
EOF

stamp "1/3 corpus"
"$PY" "$HERE/build_corpus.py" --out "$BUILD/corpus" --max-bytes "$MAX_BYTES"
cp "$BUILD/corpus/manifest.json" "$OUT_DIR/corpus_manifest.json"
cp "$BUILD/corpus/licences.json" "$OUT_DIR/licences.json"

stamp "2/3 tokenizer"
"$PY" "$HERE/train_tokenizer.py" --corpus "$BUILD/corpus" --out "$BUILD/tokenizer" \
  --vocab-size "$VOCAB" --max-bytes "$TOK_BYTES"

# Training budget: --minutes, cut by train_target.py (--end-by) so the whole script ends within
# --total-minutes whatever the tokenization of the corpus costs (20 s kept for packing).
END_BY=$("$PY" -c "print($T_START + $TOTAL_MINUTES * 60 - 20)")
stamp "3/3 target: tokenize, then train for up to $MINUTES min (ending by $(date -d @${END_BY%.*} +%T))"
rm -f "$BUILD/target/train_log.jsonl"
"$PY" "$HERE/train_target.py" --corpus "$BUILD/corpus" --tokenizer "$BUILD/tokenizer" \
  --out "$BUILD/target" --preset demo --minutes "$MINUTES" --end-by "$END_BY" ${EXTRA[@]+"${EXTRA[@]}"}

rm -rf "$BUILD/pack" && mkdir -p "$BUILD/pack" && cp -r "$BUILD/target/final" "$BUILD/pack/target"
tar -C "$BUILD/pack" -czf "$OUT_DIR/demo_target.tar.gz" target
cp "$BUILD/target/train_log.jsonl" "$OUT_DIR/train_log.jsonl"
ls -la "$BUILD/pack/target"
stamp "done: $OUT_DIR/demo_target.tar.gz ($(du -h "$OUT_DIR/demo_target.tar.gz" | cut -f1)); install with: tar -xzf demo_target.tar.gz -C jetspec_ext/demo_models/"
