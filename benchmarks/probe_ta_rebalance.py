"""A/B of split_kernel_ws's tile rebalancing (JETSPEC_TREE_ATTN_REBALANCE=1 against 0, plain
interleaving, the default) on the issue's tree-attention cells, Qwen3-8B shapes (Hq 32, Hkv 8, Dh 128,
bf16), the default split count. Per cell and setting: CUDA-graph time (10 calls per replay), the
median of --rounds interleaved rounds (one round: each setting once, so neither is favoured by its
position), and whether the outputs of both settings match the fp32 reference within the
FlashAttention rule's bound (max error <= 2 x the bf16 maths' error + 1e-4).

The setting is read when the op is launched, i.e. when a graph is captured: each setting gets its
own capture. Run from the repo root (CUDA build, sm_90):
    python benchmarks/probe_ta_rebalance.py [--cells 1024x64,1024x128] [--rounds 5]
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jetspec_ext  # noqa: E402
from benchmarks.bench_tree_attention import DH, HKV, HQ, make_inputs  # noqa: E402
from benchmarks.harness import floor_us, time_us  # noqa: E402
from jetspec_ext.reference.attention import tree_attention as ref_tree_attention  # noqa: E402

SETTINGS = ("1", "0")


def parse_cells(text):
    cells = []
    for item in text.split(","):
        b, _, rest = item.partition(":") if ":" in item else ("1", "", item)
        p, n = rest.split("x")
        cells.append((int(b), int(p), int(n)))
    return cells


def run_with(setting, fn):
    os.environ["JETSPEC_TREE_ATTN_REBALANCE"] = setting
    try:
        return fn()
    finally:
        os.environ.pop("JETSPEC_TREE_ATTN_REBALANCE", None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", default="1024x64,1024x128,1024x256,4096x64,4096x128,4096x256,"
                    "16384x64,16384x128,16384x256,8:4096x64",
                    help="comma-separated [B:]PxN cells (default: the issue's ten)")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if not (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9):
        sys.exit("probe_ta_rebalance.py needs an sm_90 GPU (split_kernel_ws)")
    if not jetspec_ext.cuda_compiled():
        sys.exit("jetspec_ext was built without its CUDA sources")
    print("| cell | floor us | rebalance=1 us | rebalance=0 us | 1 / 0 | max error 1 / 0 / bound |")
    print("|---|---|---|---|---|---|")
    for B, P, N in parse_cells(a.cells):
        q, k, v, plens, mask = make_inputs(B, P, N, "cuda", torch.bfloat16)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would move the reference too much
        try:
            ref32, _ = ref_tree_attention(q.float(), k.float(), v.float(), plens, mask)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        low, _ = ref_tree_attention(q, k, v, plens, mask, p_dtype=q.dtype)
        bound = 2 * (low.float() - ref32).abs().max().item() + 1e-4
        errs = {}
        for st in SETTINGS:
            out = run_with(st, lambda: jetspec_ext.tree_attention(q, k, v, plens, mask)[0])
            torch.cuda.synchronize()
            errs[st] = (out.float() - ref32).abs().max().item()
        times = {st: [] for st in SETTINGS}
        for _ in range(a.rounds):
            for st in SETTINGS:
                times[st].append(run_with(st, lambda: time_us(
                    lambda: jetspec_ext.tree_attention(q, k, v, plens, mask), graph=True)))
        med = {st: statistics.median(t) for st, t in times.items()}
        L = P + N
        bytes_moved = B * (2 * HKV * L * DH * 2 + 2 * N * HQ * DH * 2)
        flops = B * 4 * HQ * N * L * DH
        fl = floor_us(bytes_moved, flops)
        ok = all(e <= bound for e in errs.values())
        print(f"| B{B} P{P} N{N} | {fl:.2f} | {med['1']:.2f} | {med['0']:.2f} | {med['1'] / med['0']:.3f} | "
              f"{errs['1']:.2e} / {errs['0']:.2e} / {bound:.2e}{'' if ok else ' FAIL'} |", flush=True)


if __name__ == "__main__":
    main()
