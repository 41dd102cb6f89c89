"""Benchmark of jetspec::skinny_linear (decoding-shaped linear layers, issue 5), side by side with
PyTorch's F.linear (cuBLAS) on the same inputs.

Shapes: Qwen3-8B's projections (q|k|v fused 6144x4096, o 4096x4096, gate|up fused 24576x4096,
down 4096x12288, the draft head's context k|v 2048x4096, the LM head 151936x4096) at M = 1 (the
autoregressive step) and M = 16 (the draft head's block), bf16. Both are timed as 10 calls in one
CUDA graph ([graph], median of CUDA events), cycling through enough copies of the weight that the
10 calls read well over the 50 MB L2 (each call streams its weight from HBM, as in a decoding
step). ``floor_us`` = weight bytes / 4.3 TB/s.

    python benchmarks/bench_skinny_linear.py
"""
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
    ("head_kv", 2048, 4096), ("lm_head", 151936, 4096),
]


def main():
    if not (torch.cuda.is_available() and jetspec_ext.cuda_compiled()):
        print("bench_skinny_linear: needs a CUDA build and a GPU; skipped")
        return
    rows = []
    for name, N, K in SHAPES:
        wbytes = N * K * 2
        ws = cold_weight_copies(N, K)
        for M in (1, 4, 16):
            if name == "lm_head" and M == 16:
                continue
            x = torch.randn(M, K, device="cuda").to(torch.bfloat16)
            it_b = itertools.cycle(ws)
            cublas = time_us(lambda: F.linear(x, next(it_b)), 20, 200, None, True)
            row = {"bench": "skinny_linear", "shape": f"{name} M{M} N{N} K{K} bf16",
                   "floor_us": floor_us(wbytes), "cublas_us": cublas,
                   "cublas_TB/s": wbytes / (cublas * 1e-6) / 1e12, "device": torch.cuda.get_device_name()}
            # tilings of the kernel (JETSPEC_SKINNY_CFG) with the automatic K split, and the
            # default tiling without one (JETSPEC_SKINNY_KSPLIT=1)
            os.environ["JETSPEC_SKINNY_GEMV"] = "0"
            for cfg, ks in (("4x2", "0"), ("2x4", "0"), ("4x2", "1")):
                os.environ["JETSPEC_SKINNY_CFG"], os.environ["JETSPEC_SKINNY_KSPLIT"] = cfg, ks
                it_a = itertools.cycle(ws)
                row[f"cfg{cfg}{'_ks1' if ks == '1' else ''}_us"] = time_us(
                    lambda: jetspec_ext.skinny_linear(x, next(it_a)), 20, 200, None, True)
            for var in ("JETSPEC_SKINNY_CFG", "JETSPEC_SKINNY_KSPLIT", "JETSPEC_SKINNY_GEMV"):
                os.environ.pop(var, None)
            # the default path: M <= 4 the CUDA-core kernel (skinny_gemv.cuh), else 4x2 auto split
            it_a = itertools.cycle(ws)
            row["us"] = time_us(lambda: jetspec_ext.skinny_linear(x, next(it_a)), 20, 200, None, True)
            row["TB/s"] = wbytes / (row["us"] * 1e-6) / 1e12
            rows.append(row)
        del ws
    print_table(rows)


if __name__ == "__main__":
    main()
