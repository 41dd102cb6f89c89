// Torch-free CUDA kernel of jetspec::skinny_linear: out (M, N) = x (M, K) @ w (N, K)^T for few
// rows (M <= 16: the autoregressive step, the draft head's block), bf16 or fp16 in, fp32
// accumulation, same dtype out.
//
// Why: at M = 1..16 a linear layer is a pure weight stream (each weight read once, used M
// times), and on the H200 cuBLAS ran the Qwen3-8B projections of a decoding step at 2.5-3.5 TB/s.
// STATUS (H200, 2026-11-29): this tensor-core kernel runs 5..16 rows (1..4 go to
// skinny_gemv.cuh). It is correct, but about as fast as cuBLAS at best (with the K split:
// o_proj M16 15.1 vs 13.6 us, down_proj M16 32.5 vs 29.1 us), so the decoder does not route
// through it. Each warp-wide load touches 8 weight rows x 64 bytes (the mma fragment layout);
// a cp.async ring keeping 64-112 KB in flight per SM with the same pattern was slower still
// (branch skinny-tune, commit aff686f), while skinny_gemv's 512-byte runs of one row reach
// 4.1-4.6 TB/s. A next version would stage whole-row runs through shared memory and ldmatrix.
//
// Layout: one CTA per 32 weight rows (4 n8 tiles), 8 warps splitting K (warp w takes the 32-wide
// k blocks w, w + 8, ...: the CTA reads 512 contiguous bytes of each of its rows per step). Per
// k block a thread loads 16 bytes of each of its 4 weight rows (row g = lane / 4 of each tile,
// k in [8t, 8t + 8), t = lane % 4) and 16 bytes of x rows g and g + 8, and issues two
// mma.sync.m16n8k16 per tile. The k order inside a block is permuted so both operands are those
// contiguous 16 bytes: mma k-step s takes the physical k 8t + 4s + {0, 1} as logical k 2t + {0, 1}
// and 8t + 4s + {2, 3} as logical 2t + 8 + {0, 1}, for A (x) and B (w) alike, so the dot
// products are unchanged. Rows of x past M are zero (their loads are skipped). The 8 warps'
// partial sums meet in shared memory; 256 threads add them in warp order and store (coalesced
// along N).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "kernels/mma_sync.cuh"

namespace jetspec {
namespace skinny {

constexpr int kMaxRows = 16;                // M limit (one m16 tile)
constexpr int kWarps = 8;                   // K splits per CTA
constexpr int kThreads = kWarps * 32;
constexpr int kKBlock = 32;                 // K must be a multiple of this
// Tiling configurations (n8 tiles per warp x k blocks per warp in flight); the launcher picks one.
// kTilesN * 8 weight rows (outputs) per CTA.

__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// grid (ceil(N / (8 * kTilesN)), KS), kThreads threads. x (M, K) and w (N, K) row-major,
// 16-byte aligned rows; K % kKBlock == 0; 1 <= M <= kMaxRows; 1 <= KS <= K / kKBlock. out (M, N)
// row-major. KS > 1 splits K over the CTAs of blockIdx.y as well (more bytes in flight when N is
// small): each writes its fp32 partial to part (KS, M, N); the last CTA of a row tile to finish
// (counters[blockIdx.x], zero at rest, reset by that CTA: graph-replay safe) adds the KS partials
// in split order (deterministic) and stores the output.
template <typename T, int kTilesN, int kUnroll>
__global__ void __launch_bounds__(kThreads) skinny_linear_kernel(const T* __restrict__ x,
                                                                 const T* __restrict__ w,
                                                                 T* __restrict__ out, int M, int N,
                                                                 int K, float* __restrict__ part,
                                                                 int* __restrict__ counters) {
  constexpr int kRowsPerCta = 8 * kTilesN;
  __shared__ float red[kWarps][kMaxRows][kRowsPerCta + 1];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n_base = blockIdx.x * kRowsPerCta;
  const int KS = gridDim.y, ks = blockIdx.y;
  const int kb_lo = static_cast<int>(static_cast<int64_t>(K / kKBlock) * ks / KS);
  const int kblocks = static_cast<int>(static_cast<int64_t>(K / kKBlock) * (ks + 1) / KS);  // end

  // This thread's weight rows (clamped: rows past N read row N-1, their sums are never stored).
  const T* wrow[kTilesN];
#pragma unroll
  for (int j = 0; j < kTilesN; ++j)
    wrow[j] = w + static_cast<int64_t>(min(n_base + j * 8 + g, N - 1)) * K + 8 * t;
  const bool has_x0 = g < M, has_x1 = g + 8 < M;
  const T* x0 = x + static_cast<int64_t>(has_x0 ? g : 0) * K + 8 * t;
  const T* x1 = x + static_cast<int64_t>(has_x1 ? g + 8 : 0) * K + 8 * t;

  float acc[kTilesN][4];
#pragma unroll
  for (int j = 0; j < kTilesN; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;

  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  for (int kb0 = kb_lo + warp; kb0 < kblocks; kb0 += kWarps * kUnroll) {
    uint4 wv[kUnroll][kTilesN], xv0[kUnroll], xv1[kUnroll];
    // Every load issued unconditionally (a block past K reads the last block again, a row of x
    // past M reads row 0) and zeroed by a select afterwards: no branches between the loads, so
    // all kUnroll x (kTilesN + 2) of them are in flight together.
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int kb = kb0 + u * kWarps;
      const int64_t off = static_cast<int64_t>(min(kb, kblocks - 1)) * kKBlock;
#pragma unroll
      for (int j = 0; j < kTilesN; ++j) wv[u][j] = ld_stream(wrow[j] + off);
      xv0[u] = __ldg(reinterpret_cast<const uint4*>(x0 + off));
      xv1[u] = __ldg(reinterpret_cast<const uint4*>(x1 + off));
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const bool in = kb0 + u * kWarps < kblocks;  // uniform over the warp
      if (!in || !has_x0) xv0[u] = zero;
      if (!in || !has_x1) xv1[u] = zero;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        const uint32_t a[4] = {word(xv0[u], 2 * s), word(xv1[u], 2 * s), word(xv0[u], 2 * s + 1),
                               word(xv1[u], 2 * s + 1)};
#pragma unroll
        for (int j = 0; j < kTilesN; ++j)
          mma_m16n8k16<T>(acc[j], a, word(wv[u][j], 2 * s), word(wv[u][j], 2 * s + 1));
      }
    }
  }
  // acc[j]: c0, c1 at (row g, cols 2t, 2t + 1) of tile j; c2, c3 at row g + 8.
#pragma unroll
  for (int j = 0; j < kTilesN; ++j) {
    const int n = j * 8 + 2 * t;
    red[warp][g][n] = acc[j][0];
    red[warp][g][n + 1] = acc[j][1];
    red[warp][g + 8][n] = acc[j][2];
    red[warp][g + 8][n + 1] = acc[j][3];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kMaxRows * kRowsPerCta; i += kThreads) {
    const int m = i / kRowsPerCta, n = i - m * kRowsPerCta;
    if (m >= M || n_base + n >= N) continue;
    float sum = 0.f;
#pragma unroll
    for (int ww = 0; ww < kWarps; ++ww) sum += red[ww][m][n];
    if (KS == 1)
      out[static_cast<int64_t>(m) * N + n_base + n] = from_f32<T>(sum);
    else
      part[(static_cast<int64_t>(ks) * M + m) * N + n_base + n] = sum;
  }
  if (KS == 1) return;
  __shared__ int s_last;
  __threadfence();  // this CTA's partial is visible device-wide before it counts itself done
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(&counters[blockIdx.x], 1) == KS - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  for (int i = threadIdx.x; i < M * kRowsPerCta; i += kThreads) {
    const int m = i / kRowsPerCta, n = i - m * kRowsPerCta;
    if (n_base + n >= N) continue;
    float sum = 0.f;
    for (int s2 = 0; s2 < KS; ++s2) sum += __ldcg(part + (static_cast<int64_t>(s2) * M + m) * N + n_base + n);
    out[static_cast<int64_t>(m) * N + n_base + n] = from_f32<T>(sum);
  }
  if (threadIdx.x == 0) counters[blockIdx.x] = 0;
}

}  // namespace skinny
}  // namespace jetspec
