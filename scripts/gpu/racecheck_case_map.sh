#!/usr/bin/env bash
# Which tree_attention settings does compute-sanitizer racecheck not finish? One case of
# scripts/gpu/sanitize_ops.py (tree_attention_case: random inputs, output checked for NaN) per
# line of RCM_CASES, each run plainly and then under racecheck with a time limit, one table row each.
# Why: racecheck stalls on some warp-specialised (wgmma_ws_pp) cluster-merge cases. The fortieth
# session tied it to Q copied by TMA x clusters of 5-8; the forty-first found a case that stalls with
# Q by cp.async too (B1 N300 Hq16 Hkv2 D64 P70, 4 splits in clusters of 4: 38 clusters, two waves).
# This separates the suspects (cluster waves, head dim, G, split count, Q's copy). The forty-second
# session found that the same case stalls in one run and not the next: repeat runs (RCM_REPEAT).
#
# RCM_CASES: lines "B N Hq Hkv D P SPLITS CLUSTER Q_TMA" (CLUSTER: require | 0 | 1; SPLITS 0 = the
#            launcher's choice); default below. RCM_T: seconds per racecheck run (default 45).
# RCM_REPEAT: racecheck runs per case (default 1; the stalls come and go from run to run).
# RCM_IMPL (default wgmma_ws_pp). RCM_DEVICE=cpu: the CPU ops (checks this script, not the kernels).
# Usage on the GPU (after a build): bash scripts/gpu/racecheck_case_map.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
ROOT=$PWD
export PYTHONUNBUFFERED=1 PYTORCH_NO_CUDA_MEMORY_CACHING=1
# The checkout's jetspec_ext where it was built in place (the device: call.sh / gpu_suite.sh), else
# the installed one; the cases run from $OUT so that the unbuilt source tree is never imported.
ls jetspec_ext/_C*.so > /dev/null 2>&1 && export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
SAN=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
DEVICE=${RCM_DEVICE:-cuda}
# Default: the stalling case at 2 / 3 / 4 splits, without the cluster, with 8 clusters (one wave:
# N 60), at head dim 128, and the issue-4 shape at 4 splits (clusters of 4, Q by cp.async and TMA).
CASES=${RCM_CASES:-"1 300 16 2 64 70 4 require 0
1 300 16 2 64 70 3 require 0
1 300 16 2 64 70 2 require 0
1 300 16 2 64 70 4 0 0
1 60 16 2 64 70 4 require 0
1 300 16 2 128 70 4 require 0
1 128 32 8 128 1024 4 require 0
1 128 32 8 128 1024 4 require 1"}
REPEAT=${RCM_REPEAT:-1}
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || { echo "RCM_REPEAT must be a positive number, got '$REPEAT'"; exit 2; }
rows=()
i=0
while read -r B N Hq Hkv D P SPLITS CLUSTER QTMA; do
  [ -n "${B:-}" ] || continue
  i=$((i + 1))
  for v in "$B" "$N" "$Hq" "$Hkv" "$D" "$P" "$SPLITS" "$QTMA"; do
    [[ "$v" =~ ^[0-9]+$ ]] || { echo "RCM_CASES line $i: numbers expected, got '$v'"; exit 2; }
  done
  [[ "$CLUSTER" =~ ^(require|0|1)$ ]] || { echo "RCM_CASES line $i: CLUSTER must be require, 0 or 1"; exit 2; }
  py="import sys, torch; sys.path.insert(0, '$ROOT/scripts/gpu'); import sanitize_ops as s; s.DEV = '$DEVICE'
s.tree_attention_case($B, $N, $Hq, $Hkv, $D, [$P], torch.bfloat16, 'random'); print('case ok')
import os; sys.stdout.flush(); os._exit(0)"
  envs=(env JETSPEC_TREE_ATTN_IMPL="${RCM_IMPL:-wgmma_ws_pp}" JETSPEC_TREE_ATTN_CLUSTER="$CLUSTER"
        JETSPEC_TREE_ATTN_Q_TMA="$QTMA")
  [ "$SPLITS" = 0 ] || envs+=(JETSPEC_TREE_ATTN_SPLITS="$SPLITS")
  name="B$B N$N Hq$Hq Hkv$Hkv D$D P$P splits $SPLITS cluster $CLUSTER q_tma $QTMA"
  plain=$(cd "$OUT" && timeout 60 "${envs[@]}" python3 -c "$py" 2>&1 | tail -1)
  for rep in $(seq 1 "$REPEAT"); do  # racecheck's stalls come and go from run to run
    log="$OUT/rcm_$i.log"; [ "$REPEAT" = 1 ] || log="$OUT/rcm_${i}_$rep.log"
    t0=$(date +%s)
    (cd "$OUT" && timeout "${RCM_T:-45}" "${envs[@]}" "$SAN" --tool racecheck --racecheck-report all \
      --print-limit 5 python3 -c "$py") > "$log" 2>&1
    rc=$?
    dt=$(( $(date +%s) - t0 ))
    verdict="rc $rc"
    [ "$rc" = 0 ] && grep -q "^case ok" "$log" && verdict="finished, rc 0"
    [ "$rc" = 124 ] && verdict="NOT FINISHED in ${RCM_T:-45} s"
    summary=$(grep -Eo "RACECHECK SUMMARY: .*" "$log" | tail -1 || true)
    rows+=("$(printf '%-62s | %-8s | %-26s | %4s s | %s' "$name" "${plain:0:8}" "$verdict" "$dt" "${summary:--}")")
    echo "${rows[-1]}"
  done
done <<< "$CASES"
echo
printf '%-62s | %-8s | %-26s | %6s | %s\n' case plain racecheck time summary
for r in "${rows[@]}"; do echo "$r"; done
