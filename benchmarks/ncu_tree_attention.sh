#!/usr/bin/env bash
# Nsight Compute profile of tree_attention's split + merge kernels on one cell (default: the
# budget-128 round's cell, batch 1, prefix 1024, 128 tree nodes, Qwen3-8B heads): headline
# metrics and warp stall reasons, for planning kernel work (issue 4). Needs the extension built.
#   OUT=/tmp/x bash benchmarks/ncu_tree_attention.sh [prefix] [nodes]
set -uo pipefail
cd "$(dirname "$0")/.."
P=${1:-1024}; N=${2:-128}
OUTDIR="$(realpath -m "${OUT:-benchmarks/out}")"; mkdir -p "$OUTDIR"
REP="$OUTDIR/ta_P${P}_N${N}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
cat > "$OUTDIR/ta_driver.py" <<PY
import torch, jetspec_ext
torch.manual_seed(0)
P, N, Hq, Hkv, D = $P, $N, 32, 8, 128
S = P + N + 64
q = torch.randn(1, N, Hq, D, device="cuda", dtype=torch.bfloat16)
k = torch.randn(1, Hkv, S, D, device="cuda", dtype=torch.bfloat16)
v = torch.randn(1, Hkv, S, D, device="cuda", dtype=torch.bfloat16)
pl = torch.tensor([P], dtype=torch.int32, device="cuda")
mask = torch.full((1, N, (N + 31) // 32), -1, dtype=torch.int32, device="cuda")
for _ in range(12):  # the default path may be the split kernel alone (cluster merge): skip 8, profile 2
    jetspec_ext.tree_attention(q, k, v, pl, mask)
torch.cuda.synchronize()
PY
ncu --set full --metrics sm__pipe_tensor_op_hgmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_issued.avg.per_cycle_active,smsp__issue_active.avg.pct_of_peak_sustained_active -k regex:"split_kernel|merge_kernel" --launch-skip 8 --launch-count 2 \
    -f -o "$REP" python3 "$OUTDIR/ta_driver.py" > "$REP.ncu.log" 2>&1 || { tail -20 "$REP.ncu.log"; exit 1; }
ncu -i "$REP.ncu-rep" --page details --csv > "$REP.details.csv" 2>&1
python3 - "$REP.details.csv" <<'PY'
import csv, sys
keep = ("Duration", "Elapsed Cycles", "SM Frequency", "Memory Throughput", "DRAM Throughput",
        "L2 Cache Throughput", "Registers Per Thread", "Achieved Occupancy", "Theoretical Occupancy",
        "Issue Slots Busy", "Issued Warp Per Scheduler", "No Eligible", "Warp Cycles Per Issued Instruction",
        "Executed Instructions", "Compute (SM) Throughput", "Grid Size", "Block Size",
        "Dynamic Shared Memory Per Block", "Waves Per SM", "Issued Ipc Active", "Mem Pipes Busy")
for r in csv.DictReader(open(sys.argv[1])):
    if r.get("Metric Name") in keep:
        print(f"{r['Kernel Name'][:40]:40s} {r['Metric Name']:38s} {r['Metric Value']:>12s} {r['Metric Unit']}")
PY
# warp stall reasons (raw metrics) of both kernels
ncu -i "$REP.ncu-rep" --page raw --csv > "$REP.raw.csv" 2>&1
python3 - "$REP.raw.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
hdr = rows[0]
for r in rows[2:]:
    name = r[hdr.index("Kernel Name")][:40] if "Kernel Name" in hdr else "?"
    stalls = []
    for i, h in enumerate(hdr):
        if h.startswith("smsp__average_warp_latency_issue_stalled_") or h.startswith("smsp__pcsamp_warps_issue_stalled_"):
            try:
                stalls.append((float(r[i].replace(",", "")), h))
            except ValueError:
                pass
    for i, h in enumerate(hdr):  # tensor pipe and issue activity (the --metrics requested above)
        if h.startswith(("sm__pipe_tensor_type_hmma_hgmma", "sm__inst_issued.avg.per_cycle_active",
                         "smsp__issue_active.avg.pct")) and ".avg." in h:
            print(f"   {name}: {h} = {r[i]}")
    stalls.sort(reverse=True)
    print(f"-- {name}: top stall counters")
    for val, h in stalls[:10]:
        print(f"   {val:14.1f}  {h}")
PY
# Per-instruction warp-stall samples (SASS), top 30: attributes the `wait` / `barrier` /
# `no_instructions` stalls to instructions (HGMMA waits, DEPBAR of cp.async, BAR.SYNC, MUFU, ...).
# Best effort: the source page's column names differ between Nsight Compute versions.
ncu -i "$REP.ncu-rep" --page source --print-source sass --csv > "$REP.sass.csv" 2>/dev/null || true
python3 - "$REP.sass.csv" <<'PY' || true
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if r]
hdr_i = next((i for i, r in enumerate(rows) if any("Source" in c for c in r)), None)
if hdr_i is None:
    print("no SASS source page (ncu version?)"); sys.exit(0)
hdr = rows[hdr_i]
src = next(i for i, c in enumerate(hdr) if "Source" in c)
samp = [i for i, c in enumerate(hdr) if "Sampling" in c and "Not" not in c]
if not samp:
    print("no stall-sampling column:", hdr[:12]); sys.exit(0)
def val(r, i):
    try: return float(r[i].replace(",", ""))
    except (ValueError, IndexError): return 0.0
addr = hdr.index("Address") if "Address" in hdr else None
seen, body = set(), []
for r in rows[hdr_i + 1:]:  # each instruction once (the listing can repeat per launch)
    key = (r[addr] if addr is not None and addr < len(r) else None, r[src] if src < len(r) else "")
    if key not in seen:
        seen.add(key)
        body.append(r)
top = sorted(body, key=lambda r: -val(r, samp[0]))[:30]
print(f"-- top instructions by {hdr[samp[0]]} (all kernels in the report)")
for r in top:
    print(f"   {val(r, samp[0]):10.0f}  {r[src][:90]}")
PY
# Per kernel and 1 KB block of code: samples by reason and instructions executed (where in the
# kernel the time goes: prologue, key-tile loop, epilogue / merge, producer).
python3 benchmarks/ncu_source_summary.py "$REP.sass.csv" > "$REP.sass_blocks.txt" 2>&1 || true
head -${NCU_BLOCK_LINES:-80} "$REP.sass_blocks.txt"
