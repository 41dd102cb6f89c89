"""Where verify_linear's time goes (issue 5 planning): kernel durations from the PyTorch profiler
(full clocks) of F.linear (cuBLAS) and verify_linear's variants at one shape, weights cold, plus
the wall time per call of a 10-call CUDA graph, so a fixed per-call overhead outside the GEMM
kernel (memsets, gaps) shows as the difference.

    python benchmarks/probe_verify_linear.py [--shape o_proj] [--rows 128]
"""
import argparse
import itertools
import os
import sys
from collections import defaultdict

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jetspec_ext  # noqa: E402
from benchmarks.bench_verify_linear import SHAPES, VARIANTS, clear_variant, set_variant  # noqa: E402
from benchmarks.harness import cold_weight_copies, time_us  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="o_proj")
    ap.add_argument("--rows", type=int, default=128)
    args = ap.parse_args()
    name, N, K = next(s for s in SHAPES if s[0] == args.shape)
    ws = cold_weight_copies(N, K)
    x = torch.randn(args.rows, K, device="cuda").to(torch.bfloat16)
    fns = [("cublas", None)] + [(v[0], v[1:]) for v in VARIANTS]
    for col, var in fns:
        if var:
            set_variant(*var)
        else:
            clear_variant()
        it = itertools.cycle(ws)
        fn = (lambda: F.linear(x, next(it))) if var is None else (lambda: jetspec_ext.verify_linear(x, next(it)))
        graph_us = time_us(fn, 20, 100, None, True)
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                fn()
            torch.cuda.synchronize()
        per = defaultdict(lambda: [0.0, 0])
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                per[e.name][0] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
                per[e.name][1] += 1
        print(f"== {name} M{args.rows} {col}: graph {graph_us:.2f} us/call; device activity per call:")
        for k, (t, n) in sorted(per.items(), key=lambda kv: -kv[1][0]):
            print(f"   {t / 20:8.2f} us  {n / 20:4.1f}x  {k[:110]}")


if __name__ == "__main__":
    main()
