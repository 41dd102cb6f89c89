"""Summary of an Nsight Compute source page (SASS), for finding where a kernel's warps stall:
per kernel and 1 KB block of code, the warp-stall samples (all, and those of the main reasons)
and the warp instructions executed; then the 25 instructions with the most samples. Input: the
CSV of `ncu -i REPORT --page source --csv --print-source sass` (benchmarks/ncu_tree_attention.sh
writes it as *.sass.csv and runs this). Offsets are from the function's first instruction, as in
`cuobjdump -sass` of the same build. (Sixteenth session: it located the cluster merge's cost in
split_kernel_ws and the producer's instruction-fetch stalls.)

    python benchmarks/ncu_source_summary.py src.csv"""
import collections
import csv
import sys

REASONS = ("stall_no_inst", "stall_long_sb", "stall_short_sb", "stall_wait", "stall_barrier", "stall_selected")


def sections(path):
    """(kernel name, header, rows) per kernel of the page: a "Kernel Name" line, then a header."""
    rows = [r for r in csv.reader(open(path)) if r]
    out = []
    for i, r in enumerate(rows):
        if r[0] == "Kernel Name" and i + 1 < len(rows):
            out.append((r[1] if len(r) > 1 else "?", rows[i + 1], []))
        elif out and r is not out[-1][1]:
            out[-1][2].append(r)
    return out


def main(path):
    for name, hdr, data in sections(path):
        if data:
            print(f"== {name}")
            summarise(hdr, data)


def summarise(hdr, data):
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
