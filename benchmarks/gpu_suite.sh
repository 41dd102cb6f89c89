#!/usr/bin/env bash
# The GPU suite: build for sm_90a, run the pytest suite on the GPU, run every benchmark, print a
# short table last. Run on the H200 machine from the repo root:
#   bash benchmarks/gpu_suite.sh            (writes logs and JSON to ${OUT:-benchmarks/out}; with OUT
#                                            set, more than 8 files end packed into $OUT/logs.tgz)
# Env: SUITE_TESTS=0 skips pytest; SUITE_BENCH="accept attention" limits the benchmarks
# (substrings of benchmarks/bench_*.py); PYTEST_ARGS: pytest arguments (split on spaces) for one
# process instead of the default two (see below);
# PYTEST_K is passed as one -k expression (may contain spaces). SUITE_BUILD_ONLY=1 stops after
# the build (scripts/gpu/call.sh uses it). SUITE_SAN=1 adds the compute-sanitizer runs after pytest;
# SUITE_STRESS=0 skips the tree-attention stress run (SUITE_STRESS_ITERS launches per case).
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="$(realpath -m "${OUT:-benchmarks/out}")"
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export PATH="$CUDA_HOME/bin:$PATH"
export JETSPEC_CUDA_ARCHS="${JETSPEC_CUDA_ARCHS:-90a}"
export MAX_JOBS="${MAX_JOBS:-16}"
# CUTLASS headers for verify_linear: the nvidia-cutlass wheel's include folder, copied to
# .carry/cutlass/include by the caller (the H200 image has no CUTLASS).
if [ -z "${JETSPEC_CUTLASS_INCLUDE:-}" ] && [ -f .carry/cutlass/include/cutlass/cutlass.h ]; then
  export JETSPEC_CUTLASS_INCLUDE="$PWD/.carry/cutlass/include"
fi
# The H200 image sets CC/CXX to /opt/gcc, a wrapper that links libstdc++ statically: the
# extension then carries a second libstdc++ and crashes (SIGSEGV in std::ostream) whenever a
# TORCH_CHECK message is formatted. The system compiler links the shared libstdc++ torch uses.
if [ -x /usr/bin/g++ ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
export JETSPEC_BENCH_JSON="$OUTDIR/bench.jsonl"
rm -f "$JETSPEC_BENCH_JSON"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader || true
# The device's copy of the working tree carries stale git metadata (its `git log` named an older
# commit in every call of the seventeenth session), so the sources are named by content
# (`bash scripts/csrc_hash.sh REV` gives a commit's value).
CSRC_HASH=$(bash scripts/csrc_hash.sh --tree)
echo "csrc content hash $CSRC_HASH" \
  "(git metadata here, possibly stale: $(git log -1 --format=%h 2>/dev/null))"
# A warm machine may hold objects of other sources with newer times (scripts/gpu/touch_if_csrc_changed.sh).
bash scripts/gpu/touch_if_csrc_changed.sh "$CSRC_HASH"

t0=$(date +%s)
if ! python3 setup.py build_ext --inplace > "$OUTDIR/build.log" 2>&1; then
  grep -E "error|Error" "$OUTDIR/build.log" | head -40
  echo "BUILD FAILED"; exit 1
fi
mkdir -p build && echo "$CSRC_HASH" > build/csrc_hash_of_last_build
echo "build: $(( $(date +%s) - t0 )) s"
grep -h "jetspec_ext: CUTLASS" "$OUTDIR/build.log" || true
# ptxas's spill reports (-Xptxas=-warn-spills); ninja's command lines, which carry that flag, left out
grep -vE '^\[[0-9]+/[0-9]+\] ' "$OUTDIR/build.log" | grep -E "spill|stack frame" | grep -v " 0 bytes spill" \
  | sort | uniq | head -20 || true
[ "${SUITE_BUILD_ONLY:-0}" = "1" ] && exit 0
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The tests' data (tokenizer, prompts): ../shared/data here, a carried copy on the device.
if [ -z "${JETSPEC_DATA:-}" ] && [ ! -d ../shared/data ] && [ -d .carry/data ]; then
  export JETSPEC_DATA="$PWD/.carry/data"
fi

# Without PYTEST_ARGS the suite runs in two pytest processes: the op files, then every other file,
# so that each group's time shows on its own. (A single process over all files ended early with
# exit 1 and no summary on the H200, forty-fourth and forty-fifth sessions: a stress-script watchdog
# left armed by a test killed it 60 s later; fixed in scripts/gpu/stress_tree_attention.py.)
KERNEL_TEST_FILES="test_tree_attention.py test_verify_linear.py test_skinny_linear.py test_build_tree.py
  test_tree_accept.py test_commit_kv.py test_registry.py test_test_support.py"
run_pytest() {  # run_pytest LOGNAME ARGS...
  local log="$OUTDIR/$1.log" t0 rc; shift; t0=$(date +%s)
  (cd python_tests && python3 -m pytest -v --no-header -p no:cacheprovider "$@" ${PYTEST_K:+-k "$PYTEST_K"} \
     > "$log" 2>&1)
  rc=$?
  grep -E "FAILED|ERROR|Fatal|passed|failed" "$log" | tail -n 30
  echo "pytest $(basename "$log" .log) exit $rc ($(( $(date +%s) - t0 )) s)"
}
if [ "${SUITE_TESTS:-1}" = "1" ]; then
  if [ -n "${PYTEST_ARGS:-}" ]; then
    run_pytest pytest $PYTEST_ARGS
  else
    run_pytest pytest_kernels $KERNEL_TEST_FILES
    run_pytest pytest_rest $(for f in $KERNEL_TEST_FILES; do printf -- '--ignore=%s ' "$f"; done) .
  fi
fi

# Hang / determinism stress of the tree-attention kernels (scripts/gpu/stress_tree_attention.py:
# every kernel path launched SUITE_STRESS_ITERS times per case under a watchdog, outputs compared
# bit for bit; python-bound, ~25 us a launch, so ~10 s at the default). SUITE_STRESS=0 skips it.
if [ "${SUITE_STRESS:-1}" = "1" ]; then
  timeout 300 python3 scripts/gpu/stress_tree_attention.py --iters "${SUITE_STRESS_ITERS:-20000}" 2>&1 \
    | tee "$OUTDIR/stress.log" | tail -n 3
fi

# compute-sanitizer over every kernel variant (off by default: ~8 minutes; scripts/gpu/sanitize.sh).
if [ "${SUITE_SAN:-0}" = "1" ]; then
  OUT="$OUTDIR" bash scripts/gpu/sanitize.sh 2>&1 | tail -n 12
fi

# Benchmarks: all of them, or those named in SUITE_BENCH, in the order named there.
if [ -n "${SUITE_BENCH:-}" ]; then
  files=""; for s in $SUITE_BENCH; do files="$files $(ls benchmarks/bench_*"$s"*.py 2>/dev/null)"; done
else
  files=$(ls benchmarks/bench_*.py)
fi
for f in $files; do
  name=$(basename "$f" .py)
  echo "== $name"
  timeout "${SUITE_BENCH_TIMEOUT:-300}" python3 "$f" 2>&1 | tee "$OUTDIR/$name.log" | tail -n 40
done
echo "== summary (median us; floor = roofline at 4.3 TB/s / 790 TFLOP/s)"
python3 - "$JETSPEC_BENCH_JSON" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])] if __import__("os").path.exists(sys.argv[1]) else []
for r in rows:
    if "bench" not in r or "us" not in r:
        continue  # rows of other shapes (e.g. the decoder's) are printed by their benchmark
    extra = " ".join(f"{k}={v:.1f}" for k, v in r.items() if k.endswith("_us") and k != "floor_us")
    print(f"{r['bench'][:38]:38s} {r['shape'][:34]:34s} {r['us']:9.1f} floor {r['floor_us']:7.1f} {extra}")
PY
# The device returns at most 8 files from $OUT: pack them when there are more (scripts/gpu/pack_out.sh;
# silent, so that the table above stays the last thing printed).
if [ -n "${OUT:-}" ]; then OUT="$OUTDIR" bash scripts/gpu/pack_out.sh > /dev/null; fi
