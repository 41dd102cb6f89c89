#!/usr/bin/env bash
# A/B of two tree_attention kernel headers in one device call (same machine, same process order):
# builds with the old header (.carry/old_ta.cuh, e.g. `git show REV:csrc/kernels/tree_attention.cuh`)
# and keeps that .so, rebuilds with the working tree's header, runs the CUDA tree_attention tests
# on it (AB_TESTS=0: not), then times `probe_decode_attention.py --cells` with the new, old, new, old .so in place.
# Leaves the new .so in place. Usage on the H200: bash scripts/gpu/ab_tree_attention.sh
set -u
export PYTHONPATH=$PWD
[ -f .carry/old_ta.cuh ] || { echo "no .carry/old_ta.cuh (carry it)"; exit 1; }
cp csrc/kernels/tree_attention.cuh /tmp/new_ta.cuh
cp .carry/old_ta.cuh csrc/kernels/tree_attention.cuh
STEPS="" bash scripts/gpu/call.sh > /tmp/b1.log 2>&1 || { tail -20 /tmp/b1.log; exit 1; }
cp jetspec_ext/_C.abi3.so /tmp/old.so
cp /tmp/new_ta.cuh csrc/kernels/tree_attention.cuh; touch csrc/kernels/tree_attention.cuh
steps=tests; [ "${AB_TESTS:-1}" = 0 ] && steps=""
T_TESTS=290 STEPS="$steps" TEST1='test_tree_attention.py -k cuda' bash scripts/gpu/call.sh 2>&1 | grep -v "^\[" | tail -20
cp jetspec_ext/_C.abi3.so /tmp/new.so
for v in new old new old; do cp /tmp/$v.so jetspec_ext/_C.abi3.so; echo "== $v"; timeout 60 python3 benchmarks/probe_decode_attention.py --cells; done 2>&1 | tee $OUT/ab_cells.log
cp /tmp/new.so jetspec_ext/_C.abi3.so
cp /tmp/out/*.log $OUT/ 2>/dev/null; true
