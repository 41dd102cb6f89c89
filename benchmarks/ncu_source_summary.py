"""Summary of an Nsight Compute source page (SASS), for finding where a kernel's warps stall:
per 1 KB block of code, the warp-stall samples (all, and those of the main reasons) and the warp
instructions executed; then the 25 instructions with the most samples. Input: the CSV of
`ncu -i REPORT --page source --csv --print-source sass` (scripts/gpu/ncu_source.sh writes it).
Offsets are from the function's first instruction, as in `cuobjdump -sass` of the same build.

    python benchmarks/ncu_source_summary.py src.csv"""
import collections
import csv
import sys

REASONS = ("stall_no_inst", "stall_long_sb", "stall_short_sb", "stall_wait", "stall_barrier", "stall_selected")


def main(path):
    rows = list(csv.reader(open(path)))
    hdr, data = rows[1], rows[2:]
    col = {h: hdr.index(h) for h in REASONS + ("Warp Stall Sampling (All Samples)", "Instructions Executed")}

    def num(r, h):
        v = r[col[h]].replace(",", "")
        return int(v) if v.isdigit() else 0

    base = int(data[0][0], 16)
    blocks = collections.defaultdict(lambda: collections.Counter())
    for r in data:
        b = blocks[(int(r[0], 16) - base) // 0x400]
        b["samples"] += num(r, "Warp Stall Sampling (All Samples)")
        b["executed"] += num(r, "Instructions Executed")
        for h in REASONS:
            b[h] += num(r, h)
    total = sum(b["samples"] for b in blocks.values())
    print(f"{len(data)} instructions, {total} samples")
    print(f"{'offset':>8} {'samples':>8} " + " ".join(f"{h[6:]:>9}" for h in REASONS) + f" {'executed':>10}")
    for k in sorted(blocks):
        b = blocks[k]
        if b["executed"]:
            print(f"{k * 0x400:#8x} {b['samples']:8d} " + " ".join(f"{b[h]:9d}" for h in REASONS) + f" {b['executed']:10d}")
    print("-- instructions with the most samples")
    for r in sorted(data, key=lambda r: -num(r, "Warp Stall Sampling (All Samples)"))[:25]:
        print(f"{int(r[0], 16) - base:#8x} {num(r, 'Warp Stall Sampling (All Samples)'):6d}  {r[1].strip()[:70]}")


if __name__ == "__main__":
    main(sys.argv[1])
