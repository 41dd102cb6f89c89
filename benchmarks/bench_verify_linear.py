"""Benchmark of jetspec::verify_linear (tree-verification-shaped linear layers, issue 5), side by
side with PyTorch's F.linear (cuBLAS) on the same inputs.

Shapes: Qwen3-8B's projections (q|k|v fused 6144x4096, o 4096x4096, gate|up fused 24576x4096,
down 4096x12288, the LM head 151936x4096; the draft head's context k|v 2048x4096 and fc
4096x20480) at M = 16 (the draft head's block), 32, 64, 128 and
256 rows (the tree's tokens), bf16. Every variant of the kernel (tile configuration x schedule,
chosen with JETSPEC_VERIFY_CFG / JETSPEC_VERIFY_SCHED / JETSPEC_VERIFY_SPLITS) is timed as 10
calls in one CUDA graph ([graph], median of CUDA events), cycling through enough weight copies
that each call streams its weight from HBM. ``floor_us`` = max(weight bytes / 4.3 TB/s,
FLOPs / 790 TFLOP/s). ``err`` columns: max |variant - fp32 reference| / max |F.linear - fp32
reference| on the first call (a broken variant shows at once; tests check it properly).
For N <= 4096 also ``residual_us`` (``verify_linear(x, w, residual)``, default configuration: the
residual added in the epilogue up to 128 rows) beside ``cublas_add_us`` (``residual + F.linear``).

    python benchmarks/bench_verify_linear.py [--rows 16,32,64,128,256] [--shapes qkv,o_proj,...]
"""
import argparse
import itertools
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jetspec_ext  # noqa: E402
from benchmarks.harness import cold_weight_copies, floor_us, print_table, time_us  # noqa: E402

SHAPES = [  # name, N, K
    ("qkv", 6144, 4096), ("o_proj", 4096, 4096), ("gate_up", 24576, 4096), ("down", 4096, 12288),
    ("lm_head", 151936, 4096),
    # the draft head's other few-row shapes (block of 16 rows): context k|v and fc (5 taps)
    ("kv", 2048, 4096), ("fc", 4096, 20480),
]
VARIANTS = [  # column, JETSPEC_VERIFY_CFG, JETSPEC_VERIFY_SCHED, JETSPEC_VERIFY_SPLITS
    ("t128_sk", "t128", "streamk", None), ("t128_dp", "t128", "dp", None),
    ("t128_heur", "t128", "heuristic", None), ("t128_split2", "t128", "splitk", "2"),
    ("t128_split4", "t128", "splitk", "4"), ("t256_sk", "t256", "streamk", None),
    ("t128c2_sk", "t128c2", "streamk", None), ("p64c2", "p64c2", "dp", None),
    # transposed few-row configurations (W rows fill the tile; M <= 16)
    ("s64", "s64", "dp", None), ("s128_sk", "s128", "streamk", None),
    ("s128_split2", "s128", "splitk", "2"), ("s128_split4", "s128", "splitk", "4"),
    ("s128_dp", "s128", "dp", None),
]
ENV = ("JETSPEC_VERIFY_CFG", "JETSPEC_VERIFY_SCHED", "JETSPEC_VERIFY_SPLITS")


def set_variant(cfg, sched, splits):
    """Select a kernel variant for the next verify_linear calls (the launcher reads these)."""
    os.environ["JETSPEC_VERIFY_CFG"], os.environ["JETSPEC_VERIFY_SCHED"] = cfg, sched
    if splits:
        os.environ["JETSPEC_VERIFY_SPLITS"] = splits
    else:
        os.environ.pop("JETSPEC_VERIFY_SPLITS", None)


def clear_variant():
    for var in ENV:
        os.environ.pop(var, None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="16,32,64,128,256")
    ap.add_argument("--shapes", default=",".join(s[0] for s in SHAPES))
    ap.add_argument("--variants", default=",".join(v[0] for v in VARIANTS))
    ap.add_argument("--residual-cfgs", default="",
                    help="configurations timed with the residual (N <= 4096), comma separated; "
                         "'' (default) = the launcher's default choice, column residual_us; "
                         "a name gives column residual_<name>_us")
    args = ap.parse_args()
    if not (torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
            "jetspec::verify_linear", "CUDA")):
        print("bench_verify_linear: needs a CUDA build with CUTLASS and a GPU; skipped")
        return
    rows_list = [int(r) for r in args.rows.split(",")]
    shapes = [s for s in SHAPES if s[0] in args.shapes.split(",")]
    variants = [v for v in VARIANTS if v[0] in args.variants.split(",")]
    rows = []
    for name, N, K in shapes:
        wbytes = N * K * 2
        ws = cold_weight_copies(N, K)
        for M in rows_list:
            x = torch.randn(M, K, device="cuda").to(torch.bfloat16)
            exact = x.float() @ ws[0].float().t()
            torch_err = (F.linear(x, ws[0]).float() - exact).abs().max().item()
            it_b = itertools.cycle(ws)
            cublas = time_us(lambda: F.linear(x, next(it_b)), 20, 100, None, True)
            row = {"bench": "verify_linear", "shape": f"{name} M{M} N{N} K{K} bf16",
                   "floor_us": floor_us(wbytes + 2 * M * (N + K), 2 * M * N * K), "cublas_us": cublas}
            best = None
            for col, cfg, sched, splits in variants:
                set_variant(cfg, sched, splits)
                try:
                    err = (jetspec_ext.verify_linear(x, ws[0]).float() - exact).abs().max().item()
                    it_a = itertools.cycle(ws)
                    t = time_us(lambda: jetspec_ext.verify_linear(x, next(it_a)), 20, 100, None, True)
                except RuntimeError as e:
                    print(f"{name} M{M} {col}: {str(e).splitlines()[0]}")
                    continue
                row[f"{col}_us"] = t
                row[f"{col}_err"] = err / max(torch_err, 1e-6)
                if best is None or t < best[1]:
                    best = (col, t)
            clear_variant()
            if N <= 4096:  # the shapes the decoder routes with a residual (o_proj, down_proj)
                # residual connection: the default configuration with the add in its epilogue
                # (p64c2r up to 128 rows) against cuBLAS followed by PyTorch's add
                res = torch.randn(M, N, device="cuda").to(torch.bfloat16)
                for cfg in args.residual_cfgs.split(","):
                    if cfg:
                        set_variant(cfg, "dp", None)
                    it_r = itertools.cycle(ws)
                    row[f"residual_{cfg}_us" if cfg else "residual_us"] = time_us(
                        lambda: jetspec_ext.verify_linear(x, next(it_r), res), 20, 100, None, True)
                    clear_variant()
                it_c = itertools.cycle(ws)
                row["cublas_add_us"] = time_us(lambda: res + F.linear(x, next(it_c)), 20, 100, None, True)
            if best:
                row["best"], row["us"] = best
                row["best_vs_cublas"] = cublas / best[1]
                row["TB/s"] = wbytes / (best[1] * 1e-6) / 1e12
            rows.append(row)
            print(row, flush=True)
        del ws
    print_table(rows)


if __name__ == "__main__":
    main()
