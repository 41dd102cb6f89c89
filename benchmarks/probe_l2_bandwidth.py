"""Development probe: how many bytes per second L2 delivers to the SMs when every SM reads at once.

Why: the tree-attention timeline (benchmarks/RESULTS.md, nineteenth session) shows Q and K(0)
landing ~0.7-1.0 us after the CTA barrier, when ~96-128 CTAs each read ~48 KB at the same moment
(~5 MB in all), and the key-tile loop moving ~32 KB per CTA per tile at ~4.3-4.8 TB/s in all. If
that is what L2 can deliver, fewer bytes per CTA (TMA multicast of K/V between the CTAs that read
the same tiles, of Q between a row tile's splits) is the lever; if L2 delivers much more, it is not.

A small CUDA kernel (compiled here with torch.utils.cpp_extension.load_inline, not part of the
package) reads a buffer with 16-byte `ld.global.cg` loads (L2, not L1), 8 in flight per thread:
`ctas` CTAs of 512 threads, each a contiguous run of `per_cta` bytes starting at
(group * per_cta) mod buffer, where CTAs c share a group when c // share is equal (share = 1:
distinct runs; share = 8: eight CTAs read the same bytes at about the same time, as the row tiles
of one KV head read the same K/V tiles). Bytes read in all / time = the delivered bandwidth.
Buffers of a few MB stay in L2 between calls; 2 GB does not (HBM).

Usage on the H200: python benchmarks/probe_l2_bandwidth.py. Per call: harness.time_us over a
CUDA graph of 20 calls (median of 5 replays, over 20); also less the time of a call that reads
8 KB per CTA (launch gap and ramp). Not part of the test suite. (The nineteenth session's figures
came from b5f31d3, whose inline timing did the same with 3 replays.)
"""
import argparse
import os
import sys

import torch
from torch.utils.cpp_extension import load_inline

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.harness import time_us  # noqa: E402

CUDA_SRC = r"""
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

__global__ void __launch_bounds__(512) l2_read(const int4* __restrict__ buf, long long n16, long long per_cta16,
                                               int share, int4* __restrict__ sink) {
  const long long start = ((long long)(blockIdx.x / share) * per_cta16) % n16;
  unsigned acc = 0;
  constexpr int kUnroll = 8;
  // Each warp load instruction reads 512 contiguous bytes; 8 loads in flight per thread.
  for (long long base = 0; base < per_cta16; base += (long long)blockDim.x * kUnroll) {
    int4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const long long i = base + (long long)u * blockDim.x + threadIdx.x;
      long long j = start + (i < per_cta16 ? i : 0);
      if (j >= n16) j -= n16;
      asm volatile("ld.global.cg.v4.s32 {%0, %1, %2, %3}, [%4];"
                   : "=r"(v[u].x), "=r"(v[u].y), "=r"(v[u].z), "=r"(v[u].w)
                   : "l"(buf + j));
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) acc ^= (unsigned)(v[u].x ^ v[u].y ^ v[u].z ^ v[u].w);
  }
  if (acc == 0x9e3779b9u) sink[blockIdx.x] = make_int4(acc, 0, 0, 0);  // keeps the loads
}

void launch_l2_read(torch::Tensor buf, int64_t per_cta_bytes, int64_t ctas, int64_t share, torch::Tensor sink) {
  const long long n16 = buf.numel() * buf.element_size() / 16;
  l2_read<<<(unsigned)ctas, 512, 0, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const int4*>(buf.data_ptr()), n16, per_cta_bytes / 16, (int)share,
      reinterpret_cast<int4*>(sink.data_ptr()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
"""
CPP_SRC = "void launch_l2_read(torch::Tensor buf, int64_t per_cta_bytes, int64_t ctas, int64_t share, torch::Tensor sink);"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    ext = load_inline("jetspec_probe_l2", CPP_SRC, cuda_sources=CUDA_SRC, functions=["launch_l2_read"],
                      extra_cuda_cflags=["-O3", "-gencode=arch=compute_90a,code=sm_90a"], verbose=False)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{torch.cuda.get_device_name(0)}, {sms} SMs; 512 threads per CTA, 16-byte ld.global.cg, 8 in flight per thread")
    print(f"{'buffer':>8} {'ctas':>6} {'per CTA':>9} {'share':>5} {'MB read':>8} {'us':>8} {'TB/s':>6}")
    sink = torch.empty(4096 * 16, dtype=torch.uint8, device="cuda")
    cases = []
    for buf_mb in (4, 16, 32, 2048):
        for ctas_per_sm in (1, 4):
            for share in (1, 8):
                cases.append((buf_mb, sms * ctas_per_sm, 256 * 1024, share))
    # The tree-attention start: every CTA reads 48 KB once (Q + K(0)); 8 CTAs per KV head share K.
    cases += [(16, 128, 48 * 1024, 1), (16, 128, 48 * 1024, 8), (16, 96, 48 * 1024, 1)]
    def per_call_us(fn):
        # Back-to-back calls in one CUDA graph: each call's time includes the gap between kernels.
        return time_us(fn, warmup=3, iters=5, graph=True, graph_reps=args.reps)

    small = torch.zeros(1 << 20, dtype=torch.int32, device="cuda")
    empty_us = per_call_us(lambda: ext.launch_l2_read(small, 16 * 512, 128, 1, sink))
    print(f"a call of 128 CTAs reading 8 KB each (the fixed cost of a call here): {empty_us:.2f} us")
    for buf_mb, ctas, per_cta, share in cases:
        buf = torch.randint(0, 1 << 30, (buf_mb * (1 << 20) // 4,), dtype=torch.int32, device="cuda")
        us = per_call_us(lambda buf=buf: ext.launch_l2_read(buf, per_cta, ctas, share, sink))
        total = ctas * per_cta
        print(f"{buf_mb:>6}MB {ctas:>6} {per_cta // 1024:>7}KB {share:>5} {total / 2**20:>8.1f} {us:>8.2f} "
              f"{total / us / 1e6:>6.2f}  (less the fixed cost: {total / max(us - empty_us, 1e-3) / 1e6:.2f})")
        del buf


if __name__ == "__main__":
    main()
