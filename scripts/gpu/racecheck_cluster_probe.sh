#!/usr/bin/env bash
# Does compute-sanitizer racecheck stall on thread-block clusters of 5+ CTAs by itself? Builds
# scripts/gpu/racecheck_cluster_probe.cu (no torch) and runs its modes (0: cluster barriers
# only; 1: tree_attention's cluster-merge push, cp.async.bulk into the other CTAs' shared memory;
# 2 / 3: the pushed buffer first loaded by a bulk copy / by TMA, as the kernel's Q tile is)
# for cluster sizes 2..8 plainly, then under racecheck (and synccheck) with a time limit each.
# Usage on the GPU: bash scripts/gpu/racecheck_cluster_probe.sh   (RCP_SIZES, RCP_MODES, RCP_T, RCP_CLUSTERS)
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
SAN=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
BIN=/tmp/racecheck_cluster_probe
"${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" -O2 -arch=sm_90a -I csrc -o "$BIN" scripts/gpu/racecheck_cluster_probe.cu || exit 2
CL=${RCP_CLUSTERS:-8}
echo "-- plain"
for cs in 2 3 4 5 6 7 8; do for m in ${RCP_MODES:-0 1 2 3}; do timeout 20 "$BIN" $m $cs $CL; echo "   rc $?"; done; done
for tool in racecheck synccheck; do
  echo "-- $tool (limit ${RCP_T:-25} s per run)"
  for cs in ${RCP_SIZES:-2 4 5 8}; do for m in ${RCP_MODES:-0 1 2 3}; do
    t0=$(date +%s%N)
    log="$OUT/rcp_${tool}_m${m}_c${cs}.log"
    timeout "${RCP_T:-25}" "$SAN" --tool $tool --error-exitcode 9 --print-limit 5 "$BIN" $m $cs $CL > "$log" 2>&1
    rc=$?
    printf '%s mode %d cluster %d: rc %d, %d ms, %s\n' $tool $m $cs $rc $(( ($(date +%s%N) - t0) / 1000000 )) \
      "$(grep -E 'SUMMARY|: ok|WRONG' "$log" | tr '\n' ' ' | cut -c1-120)"
  done; done
done
