// Torch-free CUDA kernel of jetspec::skinny_linear for 1..4 rows of x (the autoregressive step):
// out (M, N) = x (M, K) @ w (N, K)^T on CUDA cores, fp32 accumulation.
//
// Why a second kernel: the tensor-core kernel (skinny_linear.cuh) gives each mma.sync lane 16
// bytes of 8 different weight rows, so every warp-wide load touches 8 rows x 64 bytes; on the H200
// that pattern stayed at 2.2-3.4 TB/s however many bytes were in flight (a cp.async ring of
// 64-112 KB per SM was slower still). Here every warp-wide load reads 512 contiguous bytes of one
// weight row, and a CTA's 8 warps together read its 4 rows (4 x K contiguous elements) in one
// pass, so HBM sees long sequential runs. With M <= 4 the multiply-adds (8 M per 16 bytes) are
// far below the CUDA cores' rate, so no tensor cores are needed.
//
// Layout: CTA = 8 warps x kGemvRowsPerCta (4) weight rows. Row k is cut into 256-element chunks
// (512 bytes); warp w takes chunks w, w + 8, ... of all 4 rows, lane l the 8 elements
// [256 c + 8 l, +8) of each. kU chunks per warp are loaded (4 kU weight + M kU x loads of 16 bytes,
// all issued before any use) per iteration; occupancy (2-4 CTAs per SM) hides the rest. Lane
// sums meet by warp shuffles, warps' sums in shared memory, added in warp order (deterministic).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "kernels/mma_sync.cuh"

namespace jetspec {
namespace skinny {

constexpr int kGemvMaxRows = 4;       // M limit of this path
constexpr int kGemvWarps = 8;
constexpr int kGemvThreads = kGemvWarps * 32;
constexpr int kGemvRowsPerCta = 4;    // weight rows (outputs) per CTA
constexpr int kGemvChunk = 256;       // elements per warp-wide 512-byte read of one row
constexpr int kGemvU = 2;             // chunks per warp in flight per iteration

template <typename T>
__device__ __forceinline__ float2 pair_to_f2(uint32_t v);
template <>
__device__ __forceinline__ float2 pair_to_f2<__nv_bfloat16>(uint32_t v) {  // exact: bf16 = top half of fp32
  return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xffff0000u));
}
template <>
__device__ __forceinline__ float2 pair_to_f2<__half>(uint32_t v) {
  __half2 h;
  memcpy(&h, &v, 4);
  return __half22float2(h);
}

// grid ceil(N / kGemvRowsPerCta), kGemvThreads threads. x (kM, K), w (N, K), out (kM, N), all
// row-major with 16-byte aligned rows; K % 8 == 0.
template <typename T, int kM>
__global__ void __launch_bounds__(kGemvThreads, 2) skinny_gemv_kernel(const T* __restrict__ x,
                                                                      const T* __restrict__ w,
                                                                      T* __restrict__ out, int N, int K) {
  constexpr int R = kGemvRowsPerCta;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n0 = blockIdx.x * R;
  const int nchunks = (K + kGemvChunk - 1) / kGemvChunk;
  const T* wrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) wrow[r] = w + static_cast<int64_t>(min(n0 + r, N - 1)) * K;  // clamped

  float acc[kM][R];
#pragma unroll
  for (int m = 0; m < kM; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = 0.f;

  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  for (int c0 = warp; c0 < nchunks; c0 += kGemvWarps * kGemvU) {
    uint4 wv[kGemvU][R], xv[kGemvU][kM];
    bool ok[kGemvU];
    // All loads first (addresses clamped in range, values zeroed afterwards: no branches between
    // the loads, so all of them are in flight together).
#pragma unroll
    for (int u = 0; u < kGemvU; ++u) {
      const int k = (c0 + u * kGemvWarps) * kGemvChunk + 8 * lane;
      ok[u] = k < K;  // also false for chunks past the last one
      const int kk = ok[u] ? k : 0;
#pragma unroll
      for (int r = 0; r < R; ++r) wv[u][r] = ld_stream(wrow[r] + kk);
#pragma unroll
      for (int m = 0; m < kM; ++m) xv[u][m] = __ldg(reinterpret_cast<const uint4*>(x + static_cast<int64_t>(m) * K + kk));
    }
#pragma unroll
    for (int u = 0; u < kGemvU; ++u) {
      if (!ok[u]) {
#pragma unroll
        for (int m = 0; m < kM; ++m) xv[u][m] = zero;
      }
#pragma unroll
      for (int m = 0; m < kM; ++m) {
        const uint32_t xw[4] = {xv[u][m].x, xv[u][m].y, xv[u][m].z, xv[u][m].w};
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const uint32_t ww[4] = {wv[u][r].x, wv[u][r].y, wv[u][r].z, wv[u][r].w};
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const float2 a = pair_to_f2<T>(xw[i]), b = pair_to_f2<T>(ww[i]);
            acc[m][r] = fmaf(a.x, b.x, acc[m][r]);
            acc[m][r] = fmaf(a.y, b.y, acc[m][r]);
          }
        }
      }
    }
  }
  __shared__ float red[kGemvWarps][kM * R];
#pragma unroll
  for (int m = 0; m < kM; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float v = acc[m][r];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0) red[warp][m * R + r] = v;
    }
  __syncthreads();
  if (threadIdx.x < kM * R) {
    const int m = threadIdx.x / R, r = threadIdx.x - (threadIdx.x / R) * R;
    if (n0 + r < N) {
      float s = 0.f;
#pragma unroll
      for (int ww = 0; ww < kGemvWarps; ++ww) s += red[ww][threadIdx.x];
      out[static_cast<int64_t>(m) * N + n0 + r] = from_f32<T>(s);
    }
  }
}

}  // namespace skinny
}  // namespace jetspec
