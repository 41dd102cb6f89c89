"""A/B of a per-call launcher setting of tree_attention on the issue-4 cells, in one process.

Times the ten cells of benchmarks/bench_tree_attention.py (Qwen3-8B heads, bf16, the same inputs)
with an environment variable the launcher reads on every call set to each of the given values,
interleaved (round r: every value once per cell, the order rotated per round, so no value is
favoured by its position), CUDA-graph timings (10 calls per graph), and prints per cell the
median of the rounds per value and the difference to the first value. A development probe (not
part of the suite); the launcher reads e.g. JETSPEC_TREE_ATTN_Q_MULTICAST, JETSPEC_TREE_ATTN_Q_TMA,
JETSPEC_TREE_ATTN_CLUSTER per call, so one build times both sides.

  python3 benchmarks/probe_ta_env_ab.py --env JETSPEC_TREE_ATTN_Q_MULTICAST --values 1,0 [--rounds 3]
      [--cells B:P:N,...] [--heads HQ:HKV:DH (default 32:8:128, Qwen3-8B)]
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jetspec_ext  # noqa: E402
from benchmarks.bench_tree_attention import HKV, HQ, DH, ISSUE4_CELLS as CELLS, make_inputs  # noqa: E402
from benchmarks.harness import time_us  # noqa: E402


def parse_cells(text):
    """'B:P:N,...' -> [(B, P, N), ...]; '' -> the ten issue-4 cells."""
    if not text:
        return list(CELLS)
    cells = []
    for item in text.split(","):
        parts = item.split(":")
        cell = tuple(int(x) for x in parts) if len(parts) == 3 and all(x.isdigit() for x in parts) else None
        if cell is None or cell[0] < 1 or cell[2] < 1:
            raise SystemExit(f"probe_ta_env_ab: cell {item!r} is not B:P:N (B, N >= 1, P >= 0)")
        cells.append(cell)
    return cells


def parse_heads(text):
    """'HQ:HKV:DH' -> (HQ, HKV, DH): HKV divides HQ, DH 64 or 128 (what the CUDA kernel takes)."""
    parts = text.split(":")
    if len(parts) != 3 or not all(x.isdigit() for x in parts):
        raise SystemExit(f"probe_ta_env_ab: --heads {text!r} is not HQ:HKV:DH")
    hq, hkv, dh = (int(x) for x in parts)
    if hkv < 1 or hq % hkv or dh not in (64, 128):
        raise SystemExit(f"probe_ta_env_ab: --heads {text!r}: HKV must divide HQ and DH be 64 or 128")
    return hq, hkv, dh


def round_order(values, r):
    """The values' order in round r: rotated by r, so over len(values) rounds each value takes
    every position once."""
    k = r % len(values)
    return values[k:] + values[:k]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", required=True, help="the launcher's environment variable to vary")
    ap.add_argument("--values", required=True, help="comma-separated values; 'unset' removes the variable")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cells", default="", help="B:P:N,... (default: the ten issue-4 cells)")
    ap.add_argument("--heads", default=f"{HQ}:{HKV}:{DH}", help="HQ:HKV:DH (default: Qwen3-8B's)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("probe_ta_env_ab: needs a CUDA GPU")
    values = args.values.split(",")
    if len(values) < 2:
        raise SystemExit("probe_ta_env_ab: give at least two values")
    cells = parse_cells(args.cells)
    heads = parse_heads(args.heads)
    saved = os.environ.get(args.env)

    def set_value(v):
        if v == "unset":
            os.environ.pop(args.env, None)
        else:
            os.environ[args.env] = v

    print(f"heads Hq {heads[0]} Hkv {heads[1]} Dh {heads[2]}, bf16, cache sized to the keys; "
          f"median us of {args.rounds} interleaved rounds (CUDA graphs of 10 calls)", flush=True)
    print(f"{'cell':<18}" + "".join(f"{args.env.split('_')[-1] + '=' + v:>16}" for v in values)
          + "".join(f"{'d(' + v + ')':>10}" for v in values[1:]), flush=True)
    try:
        for B, P, N in cells:
            inputs = make_inputs(B, P, N, "cuda", torch.bfloat16, heads)
            samples = {v: [] for v in values}
            for r in range(args.rounds):
                for v in round_order(values, r):
                    set_value(v)
                    samples[v].append(time_us(lambda: jetspec_ext.tree_attention(*inputs), warmup=10, iters=100,
                                              graph=True))
            med = {v: statistics.median(s) for v, s in samples.items()}
            print(f"{f'B{B} P{P} N{N}':<18}" + "".join(f"{med[v]:>16.2f}" for v in values)
                  + "".join(f"{med[v] - med[values[0]]:>+10.2f}" for v in values[1:]), flush=True)
    finally:
        set_value("unset" if saved is None else saved)


if __name__ == "__main__":
    main()
