"""Effective SM clock of the GPU while small kernels run (diagnostic, not a benchmark of ours).

A one-program Triton kernel runs a chain of N dependent fp32 FMAs (4-cycle latency each on
Hopper), so cycles = 4 N and clock = 4 N / time. Measured three ways: right after idling, inside
a CUDA graph replayed back to back (like the op benchmarks), and right after a few hundred ms of
large matmuls. Prints MHz; a value far below the boost clock means latency-bound microbenchmarks
run at a reduced clock.

    python benchmarks/clock_probe.py
"""
import time

import torch
import triton
import triton.language as tl


@triton.jit
def fma_chain(out_ptr, n, a, b):
    x = tl.load(out_ptr)
    for _ in range(n):
        x = x * a + b
    tl.store(out_ptr, x)


def main():
    if not torch.cuda.is_available():
        print("clock_probe: n/a (no GPU)")
        return
    buf = torch.ones(1, device="cuda")
    n = 200_000
    run = lambda: fma_chain[(1,)](buf, n, 0.999999, 1e-7, num_warps=1)  # noqa: E731
    run()
    torch.cuda.synchronize()

    def timed(reps=5):
        s, e = torch.cuda.Event(True), torch.cuda.Event(True)
        s.record()
        for _ in range(reps):
            run()
        e.record()
        torch.cuda.synchronize()
        return s.elapsed_time(e) / reps * 1e-3

    time.sleep(1.0)
    t_idle = timed(1)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t0 = time.time()
    while time.time() - t0 < 0.5:
        a @ a
    t_busy = timed(1)
    t_loop = timed(20)
    for name, t in (("after idle", t_idle), ("after matmuls", t_busy), ("back to back", t_loop)):
        print(f"clock_probe {name:14s}: {n} dependent FMAs in {t * 1e6:8.1f} us -> "
              f"{4 * n / t / 1e6:6.0f} MHz effective (4-cycle FMA latency)")


if __name__ == "__main__":
    main()
