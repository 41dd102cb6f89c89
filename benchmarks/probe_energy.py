"""Energy per call of the verify round's linear layers (issue 5), under sustained replay.

Why: ``bench_decoder.py --clocks`` (eighteenth session) found the budget-128 and budget-256
rounds held by the H200's software power cap (700 W) in every sample, with the SM clock at
1755-1875 MHz against 1980 MHz for the AR step, which is not capped. A capped round's time is set
by its energy, so a kernel that is a little slower at full clock but spends less energy per call
can make the round faster. This probe gives, per Qwen3-8B projection shape and implementation,
the time per call, SM clock, board power and the board energy per call (power x time, idle power
included) while one CUDA graph of 10 calls (cycling weight copies, so weights stream from HBM) is
replayed for ~1.2 s.

    python benchmarks/probe_energy.py [--rows 128] [--shapes qkv,o_proj,gate_up,down,lm_head]
                                      [--impls cublas,p64c2,t128_sk,t128c2_sk]

Implementations: ``cublas`` = F.linear; the others are jetspec::verify_linear configurations
(JETSPEC_VERIFY_CFG / _SCHED), as in bench_verify_linear.py. Rows (M) 1 runs F.linear and
jetspec's skinny_linear (the AR step's kernel) only.
"""
import argparse
import itertools
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jetspec_ext  # noqa: E402
from benchmarks.bench_verify_linear import SHAPES, VARIANTS, clear_variant, set_variant  # noqa: E402
from benchmarks.harness import GpuSampler, capture_graph, cold_weight_copies, floor_us, print_table  # noqa: E402


def sustained(fn, seconds: float, reps: int = 10):
    """Capture ``reps`` calls of fn in one graph, replay it for ~``seconds`` while sampling the
    GPU; returns (us per call, sampler summary dict)."""
    g = capture_graph(fn, reps)
    for _ in range(20):
        g.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    g.replay()
    torch.cuda.synchronize()
    per_replay = max(time.perf_counter() - t0, 1e-6)
    n = max(50, int(seconds / per_replay))
    with GpuSampler() as sampler:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            g.replay()
        end.record()
        torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (n * reps), sampler.summary()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="128")
    ap.add_argument("--shapes", default=",".join(s[0] for s in SHAPES))
    ap.add_argument("--impls", default="cublas,p64c2,t128_sk,t128c2_sk")
    ap.add_argument("--seconds", type=float, default=1.2)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("probe_energy: needs a GPU; skipped")
        return
    variants = {v[0]: v[1:] for v in VARIANTS}
    impls = args.impls.split(",")
    for impl in impls:
        if impl not in ("cublas", "skinny") and impl not in variants:
            raise SystemExit(f"probe_energy: unknown implementation {impl!r} "
                             f"(cublas, skinny, {', '.join(variants)})")
    rows = []
    for name, N, K in [s for s in SHAPES if s[0] in args.shapes.split(",")]:
        ws = cold_weight_copies(N, K)
        for M in [int(r) for r in args.rows.split(",")]:
            x = torch.randn(M, K, device="cuda").to(torch.bfloat16)
            fl = floor_us(N * K * 2 + 2 * M * (N + K), 2 * M * N * K)
            for impl in (["cublas", "skinny"] if M == 1 else impls):
                it = itertools.cycle(ws)
                if impl == "cublas":
                    fn = lambda: F.linear(x, next(it))  # noqa: E731
                elif impl == "skinny":
                    fn = lambda: jetspec_ext.skinny_linear(x, next(it))  # noqa: E731
                else:
                    set_variant(*variants[impl])
                    fn = lambda: jetspec_ext.verify_linear(x, next(it))  # noqa: E731
                try:
                    us, gsum = sustained(fn, args.seconds)
                except RuntimeError as e:
                    print(f"{name} M{M} {impl}: {str(e).splitlines()[0]}")
                    continue
                finally:
                    clear_variant()
                row = {"shape": f"{name} M{M}", "impl": impl, "floor_us": fl, "us": us,
                       "sm_mhz": gsum["sm_mhz"], "power_w": gsum["power_w"], "pcap": gsum["pcap"],
                       "uJ_per_call": gsum["power_w"] * us}
                rows.append(row)
                print(row, flush=True)
        del ws
    print_table(rows)
    print("uJ_per_call = median board power x time per call (idle power included); pcap = share of "
          "samples with the software power cap active.")


if __name__ == "__main__":
    main()
