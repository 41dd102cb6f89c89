#!/usr/bin/env bash
# A/B of two versions of the tree_attention kernels in one device call (same machine, same
# process order): builds with the old sources and keeps that .so, rebuilds with the working tree,
# runs the CUDA tree_attention tests on it (AB_TESTS=0: not), then times
# `probe_decode_attention.py --cells` with the new, old, new, old .so in place. The old sources:
# .carry/old_csrc, a whole csrc/ tree (`git archive REV csrc | tar -x --strip-components=1
# -C .carry/old_csrc`). (Earlier sessions carried only tree_attention.cuh as .carry/old_ta.cuh.)
# Further whole csrc trees carried as .carry/alt_csrc, .carry/alt2_csrc, ... and named in
# AB_ALTS (e.g. AB_ALTS="alt alt2") are built and timed too (new, old, alt, alt2, new, old, alt,
# alt2); the CUDA tests run on the new one only (AB_TEST_ALTS=1: on each alt too, ~50-70 s
# each). Each build is ~50-90 s of device time. (Only the named ones: a warm machine keeps the
# .carry folders of earlier calls, and the seventeenth session lost ~100 s building two stale
# ones.)
# AB_PROBE="--cells --context": the probe modes timed per version (default --cells).
# AB_T_TESTS: the CUDA tests' time limit in s (default 290; they take ~50-70 s on main, so e.g.
# 150 bounds what a stalled test costs: a test of next/k-empty stalled the whole 290 s).
# AB_DEC_ARGS="--modes compile --budgets 128,256" also runs bench_decoder.py with those arguments
# for each version in the same order (the decoder rows of each tree; inductor's cache makes the
# runs after the first ~20 s each); AB_CELLS=0 skips the attention cells.
# Leaves the new .so in place. Usage on the H200: bash scripts/gpu/ab_tree_attention.sh
set -u
export PYTHONPATH=$PWD
export PACK_OUT=0  # the inner call.sh runs leave $OUT alone; packed once at the end (pack_out.sh)
csrc_hash() { bash scripts/csrc_hash.sh --tree; }
echo "new: csrc content hash $(csrc_hash)" | tee -a "${OUT:-/tmp}/ab_versions.log"
rm -rf /tmp/new_csrc && cp -r csrc /tmp/new_csrc
[ -d .carry/old_csrc ] || { echo "no .carry/old_csrc (carry it)"; exit 1; }
rm -rf csrc && cp -r .carry/old_csrc csrc
echo "old: csrc content hash $(csrc_hash)" | tee -a "${OUT:-/tmp}/ab_versions.log"
STEPS="" bash scripts/gpu/call.sh > /tmp/b1.log 2>&1 || { tail -20 /tmp/b1.log; exit 1; }
cp jetspec_ext/_C.abi3.so /tmp/old.so
alts=""
for a in ${AB_ALTS:-}; do  # optional further versions (.carry/alt_csrc, .carry/alt2_csrc, ...)
  d=.carry/${a}_csrc
  [ -d "$d" ] || { echo "AB_ALTS names $a, but there is no $d (carry it)"; exit 1; }
  rm -rf csrc && cp -r "$d" csrc && find csrc -name '*.cu*' -exec touch {} +
  echo "$a: csrc content hash $(csrc_hash)" | tee -a "${OUT:-/tmp}/ab_versions.log"
  STEPS="" bash scripts/gpu/call.sh > /tmp/b_$a.log 2>&1 || { tail -20 /tmp/b_$a.log; exit 1; }
  if [ "${AB_TEST_ALTS:-0}" = 1 ]; then  # the CUDA tests on this version too (its log: $OUT/$a/)
    mkdir -p "${OUT:-/tmp/out}/$a"
    OUT="${OUT:-/tmp/out}/$a" REBUILD=0 T_TESTS=${AB_T_TESTS:-290} STEPS=tests TEST1="${AB_TEST1:-test_tree_attention.py -k cuda}" \
      bash scripts/gpu/call.sh 2>&1 | grep -E "^pytest|passed|failed" | sed "s/^/$a: /"
  fi
  cp jetspec_ext/_C.abi3.so /tmp/$a.so
  alts="$alts $a"
done
versions="new old$alts new old$alts"
rm -rf csrc && cp -r /tmp/new_csrc csrc && find csrc -name '*.cu*' -exec touch {} +
steps=tests; [ "${AB_TESTS:-1}" = 0 ] && steps=""
T_TESTS=${AB_T_TESTS:-290} STEPS="$steps" TEST1="${AB_TEST1:-test_tree_attention.py -k cuda}" bash scripts/gpu/call.sh 2>&1 | grep -v "^\[" | tail -20
cp jetspec_ext/_C.abi3.so /tmp/new.so
if [ "${AB_CELLS:-1}" != 0 ]; then
  for v in $versions; do
    cp /tmp/$v.so jetspec_ext/_C.abi3.so; echo "== $v"
    for mode in ${AB_PROBE:---cells}; do timeout 90 python3 benchmarks/probe_decode_attention.py $mode; done
  done 2>&1 | tee $OUT/ab_cells.log
fi
if [ -n "${AB_DEC_ARGS:-}" ]; then
  for v in $versions; do
    cp /tmp/$v.so jetspec_ext/_C.abi3.so; echo "== $v"
    JETSPEC_DATA=$PWD/.carry/data PYTHONUNBUFFERED=1 timeout 150 python3 benchmarks/bench_decoder.py $AB_DEC_ARGS 2>&1 | grep -E "^compile |^\[compile\] (AR|round)"
  done 2>&1 | tee $OUT/ab_dec.log
fi
cp /tmp/new.so jetspec_ext/_C.abi3.so
cp /tmp/out/*.log $OUT/ 2>/dev/null
bash scripts/gpu/pack_out.sh; true
