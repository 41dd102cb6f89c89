#!/usr/bin/env bash
# Nsight Compute of verify_linear (CUTLASS GEMM) beside cuBLAS at one shape (default o_proj,
# 128 rows): duration, throughput, stall reasons. Needs the extension built.
#   OUT=/tmp/x bash benchmarks/ncu_verify_linear.sh [N] [K] [M]
set -uo pipefail
cd "$(dirname "$0")/.."
N=${1:-4096}; K=${2:-4096}; M=${3:-128}
OUTDIR="$(realpath -m "${OUT:-benchmarks/out}")"; mkdir -p "$OUTDIR"
REP="$OUTDIR/vl_N${N}_K${K}_M${M}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
cat > "$OUTDIR/vl_driver.py" <<PY
import os, torch, torch.nn.functional as F, jetspec_ext
x = torch.randn($M, $K, device="cuda").to(torch.bfloat16)
w = torch.randn($N, $K, device="cuda").to(torch.bfloat16)
for _ in range(3): F.linear(x, w)
for sched, splits in (("dp", "1"), ("splitk", "4"), ("streamk", "1")):
    os.environ["JETSPEC_VERIFY_SCHED"], os.environ["JETSPEC_VERIFY_SPLITS"] = sched, splits
    for _ in range(3): jetspec_ext.verify_linear(x, w)
torch.cuda.synchronize()
PY
ncu --set full --launch-skip 0 --launch-count 40 -f -o "$REP" python3 "$OUTDIR/vl_driver.py" > "$REP.ncu.log" 2>&1 || { tail -20 "$REP.ncu.log"; exit 1; }
ncu -i "$REP.ncu-rep" --page details --csv > "$REP.details.csv" 2>&1
python3 - "$REP.details.csv" <<'PY'
import csv, sys
keep = ("Duration", "DRAM Throughput", "L2 Cache Throughput", "Registers Per Thread", "Grid Size",
        "Block Size", "Dynamic Shared Memory Per Block", "Issue Slots Busy", "No Eligible",
        "Warp Cycles Per Issued Instruction", "Achieved Occupancy", "Cluster Size")
seen = {}
for r in csv.DictReader(open(sys.argv[1])):
    if r.get("Metric Name") in keep:
        key = (r["ID"], r["Kernel Name"][:60])
        seen.setdefault(key, []).append(f"{r['Metric Name']}={r['Metric Value']}{r['Metric Unit']}")
for (i, k), v in seen.items():
    print(f"[{i}] {k}: " + "; ".join(v))
PY
ncu -i "$REP.ncu-rep" --page raw --csv --metrics smsp__pcsamp_warps_issue_stalled_long_scoreboard,smsp__pcsamp_warps_issue_stalled_barrier,smsp__pcsamp_warps_issue_stalled_wait,smsp__pcsamp_warps_issue_stalled_membar,smsp__pcsamp_warps_issue_stalled_sleeping,smsp__pcsamp_warps_issue_stalled_math_pipe_throttle 2>/dev/null | cut -c1-400 | head -30
