"""Development probe (issue 5): cuBLAS formulations of the verify forward's linear layers.

The budget-128 round runs Qwen3-8B's projections at M = 128 rows (the tree) and the draft head's
at M = 16; measured on the H200, all linear layers at 128 tokens took 4.89 ms against 4.13 ms at
one token, while the weight stream alone needs about 3.8 ms. This times, on the same inputs and
with the weight cycling through copies that exceed L2 ([graph], µs per call):
  linear      F.linear(x, W)                           (what the decoder calls)
  wxt         (W @ x.T).T, made contiguous             (same GEMM, operands swapped)
  lt          F.linear with torch's cuBLASLt backend   (torch.backends.cuda.preferred_blas_library)
  pad{M}      F.linear on x padded to M rows           (tile quantization check)
Not part of the suite.

    python benchmarks/probe_verify_gemm.py
"""
import itertools
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.harness import cold_weight_copies, floor_us, time_us  # noqa: E402

SHAPES = [("qkv", 6144, 4096), ("o_proj", 4096, 4096), ("gate_up", 24576, 4096), ("down", 4096, 12288),
          ("lm_head", 151936, 4096), ("head_fc", 4096, 20480)]


def main():
    if not torch.cuda.is_available():
        print("probe_verify_gemm: needs a GPU")
        return
    print(f"{'shape':28s} {'floor':>8s} {'linear':>8s} {'wxt':>8s} {'lt':>8s} {'pad':>14s}")
    for name, N, K in SHAPES:
        wbytes = N * K * 2
        ws = cold_weight_copies(N, K)
        for M in (16, 128, 144):
            if name == "lm_head" and M == 144:
                continue
            x = torch.randn(M, K, device="cuda").to(torch.bfloat16)
            res = {}
            it = itertools.cycle(ws)
            res["linear"] = time_us(lambda: F.linear(x, next(it)), 10, 100, None, True)
            it = itertools.cycle(ws)
            res["wxt"] = time_us(lambda: (next(it) @ x.t()).t().contiguous(), 10, 100, None, True)
            try:
                prev = torch.backends.cuda.preferred_blas_library()
                torch.backends.cuda.preferred_blas_library("cublaslt")
                it = itertools.cycle(ws)
                res["lt"] = time_us(lambda: F.linear(x, next(it)), 10, 100, None, True)
                torch.backends.cuda.preferred_blas_library(prev)
            except Exception as e:  # noqa: BLE001
                res["lt"] = float("nan")
                print(f"cublaslt: {type(e).__name__}: {e}")
            pad_m = 128 if M < 128 else 256
            xp = torch.randn(pad_m, K, device="cuda").to(torch.bfloat16)
            it = itertools.cycle(ws)
            res["pad"] = time_us(lambda: F.linear(xp, next(it)), 10, 100, None, True)
            print(f"{name} M{M} N{N} K{K}".ljust(28) + f" {floor_us(wbytes):8.2f} {res['linear']:8.2f} "
                  f"{res['wxt']:8.2f} {res['lt']:8.2f}   pad{pad_m}={res['pad']:.2f}", flush=True)
        del ws


if __name__ == "__main__":
    main()
