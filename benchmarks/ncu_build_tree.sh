#!/usr/bin/env bash
# Nsight Compute profile of build_tree's two kernels (stats + expand) on the benchmark shape, with
# per-SASS-instruction stall samples (the hot spots printed last). Needs the extension built.
#   OUT=/tmp/x bash benchmarks/ncu_build_tree.sh [batch] [policy]
set -uo pipefail
cd "$(dirname "$0")/.."
B=${1:-1}; POL=${2:-accum}
OUTDIR="$(realpath -m "${OUT:-benchmarks/out}")"; mkdir -p "$OUTDIR"
REP="$OUTDIR/bt_B${B}_${POL}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
ncu --set full --import-source yes -k regex:build_tree --launch-skip 4 --launch-count 2 \
    -f -o "$REP" python3 benchmarks/profile_build_tree.py --batch "$B" --policy "$POL" \
    > "$REP.ncu.log" 2>&1 || { tail -20 "$REP.ncu.log"; exit 1; }
ncu -i "$REP.ncu-rep" --page details --csv > "$REP.details.csv" 2>&1
python3 - "$REP.details.csv" <<'PY'
import csv, sys
keep = ("Duration", "Elapsed Cycles", "SM Frequency", "Memory Throughput", "DRAM Throughput",
        "Registers Per Thread", "Achieved Occupancy", "Theoretical Occupancy", "Issue Slots Busy",
        "Issued Warp Per Scheduler", "No Eligible", "Warp Cycles Per Issued Instruction",
        "Executed Instructions", "Block Limit Registers", "Compute (SM) Throughput")
for r in csv.DictReader(open(sys.argv[1])):
    if r.get("Metric Name") in keep:
        print(f"{r['Kernel Name'][:40]:40s} {r['Metric Name']:38s} {r['Metric Value']:>12s} {r['Metric Unit']}")
PY
for K in stats expand; do
  ncu -i "$REP.ncu-rep" -k regex:$K --page source --csv --print-source sass > "$REP.$K.sass.csv" 2>&1
  python3 - "$REP.$K.sass.csv" "$K" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
hi = next((i for i, r in enumerate(rows) if any("Warp Stall Sampling (All" in c for c in r)), None)
if hi is None:
    print("no source table for", sys.argv[2]); print("\n".join(",".join(r) for r in rows[:5])); sys.exit()
h = rows[hi]; body = [r for r in rows[hi + 1:] if len(r) == len(h)]
ci = next(i for i, c in enumerate(h) if "Warp Stall Sampling (All" in c)
src = next(i for i, c in enumerate(h) if c == "Source")
addr = next((i for i, c in enumerate(h) if c == "Address"), 0)
ex = next((i for i, c in enumerate(h) if c == "Instructions Executed"), None)
def num(s):
    try: return float(s.replace(",", ""))
    except ValueError: return 0.0
tot = sum(num(r[ci]) for r in body) or 1
print(f"== {sys.argv[2]}: {len(body)} SASS lines, {tot:.0f} stall samples; top 45")
for r in sorted(body, key=lambda r: -num(r[ci]))[:45]:
    print(f"{num(r[ci]) / tot * 100:5.1f}% {r[addr]:>6s} x{r[ex] if ex is not None else '':>8s}  {r[src][:90]}")
PY
done
