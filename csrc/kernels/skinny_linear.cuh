// Torch-free CUDA kernel of jetspec::skinny_linear: out (M, N) = x (M, K) @ w (N, K)^T for few
// rows (M <= 16: the autoregressive step, the draft head's block), bf16 or fp16 in, fp32
// accumulation, same dtype out.
//
// Why: at M = 1..16 a linear layer is a pure weight stream (each weight read once, used M
// times). On the H200 cuBLAS ran the Qwen3-8B projections of a decoding step at 2.5-3.3 TB/s
// (o_proj and down_proj with a separate split-K reduce kernel; benchmarks/RESULTS.md). Reaching
// the 4.3 TB/s of HBM needs about 50 KB of weight bytes in flight per SM, continuously.
// History: the first version (loads into registers, no pipelining across k blocks) lost to
// cuBLAS at every shape: each warp waited one full memory latency per k block.
//
// Layout: one CTA per 8 * kTiles weight rows (kTiles n8 tiles) and one K range (blockIdx.y of
// KS; KS > 1 when there are too few row tiles to fill the GPU). Its 8 warps take the 32-wide k
// blocks w, w + 8, ... of the range: together 512 contiguous bytes of each row per step. Per k
// block a thread needs 16 bytes of each of its kTiles weight rows (row g = lane / 4 of each
// tile, k in [8t, 8t + 8), t = lane % 4) and 16 bytes of x rows g and g + 8. Those bytes go
// through a per-thread ring of kStages stages in shared memory filled by cp.async: every thread
// only ever reads back what it copied itself, so the ring needs no barrier, only
// cp.async.wait_group, and kStages - 1 k blocks of every warp are in flight at all times.
// Each k block feeds two mma.sync.m16n8k16 per tile. The k order inside a block is permuted so
// both operands are those contiguous 16 bytes: mma k-step s takes the physical k 8t + 4s + {0, 1}
// as logical k 2t + {0, 1} and 8t + 4s + {2, 3} as logical 2t + 8 + {0, 1}, for A (x) and B (w)
// alike, so the dot products are unchanged. Rows of x past M are zeroed by a select (their loads
// read row 0). The 8 warps' partial sums meet in shared memory (the drained ring); threads add
// them in warp order and store (coalesced along N), or, with KS > 1, store fp32 partials that
// the last CTA of the row tile adds in split order (deterministic).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace jetspec {
namespace skinny {

constexpr int kMaxRows = 16;                // M limit (one m16 tile)
constexpr int kWarps = 8;                   // k-block interleave inside a CTA
constexpr int kThreads = kWarps * 32;
constexpr int kKBlock = 32;                 // K must be a multiple of this
constexpr int kRingBytes = 112 * 1024;      // target size of the cp.async ring per CTA

// 16-byte chunks per thread and stage: kTiles weight rows + 1 or 2 rows of x.
constexpr int chunks_of(int tiles, bool two_x) { return tiles + (two_x ? 2 : 1); }
constexpr int stages_of(int tiles, bool two_x) {
  const int s = kRingBytes / (chunks_of(tiles, two_x) * kThreads * 16);
  return s < 3 ? 3 : (s > 8 ? 8 : s);
}
constexpr int red_bytes(int tiles) { return kWarps * kMaxRows * (8 * tiles + 1) * 4; }
constexpr int smem_bytes(int tiles, bool two_x) {
  const int ring = stages_of(tiles, two_x) * chunks_of(tiles, two_x) * kThreads * 16;
  return ring > red_bytes(tiles) ? ring : red_bytes(tiles);
}

template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

// volatile: keeps each MMA (which consumes the ring slot's registers) before the cp.async that
// refills that slot in program order.
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                 uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void cp_async16(uint4* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) {
  return __float2half_rn(x);
}

// grid (ceil(N / (8 * kTiles)), KS), kThreads threads, smem_bytes(kTiles, kTwoX) dynamic shared
// memory. x (M, K) and w (N, K) row-major, 16-byte aligned rows; K % kKBlock == 0;
// 1 <= M <= kMaxRows (kTwoX iff M > 8); 1 <= KS <= K / kKBlock. out (M, N) row-major.
// KS > 1: each CTA writes its fp32 partial to part (KS, M, N); the last CTA of a row tile to
// finish (counters[blockIdx.x], zero at rest, reset by that CTA: graph-replay safe) adds the KS
// partials in split order and stores the output.
template <typename T, int kTiles, bool kTwoX>
__global__ void __launch_bounds__(kThreads) skinny_linear_kernel(const T* __restrict__ x,
                                                                 const T* __restrict__ w,
                                                                 T* __restrict__ out, int M, int N,
                                                                 int K, float* __restrict__ part,
                                                                 int* __restrict__ counters) {
  constexpr int kRowsPerCta = 8 * kTiles;
  constexpr int kChunks = chunks_of(kTiles, kTwoX);
  constexpr int kStages = stages_of(kTiles, kTwoX);
  extern __shared__ uint4 ring[];  // [kStages][kChunks][kThreads]; after the loop: red
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n_base = blockIdx.x * kRowsPerCta;
  const int KS = gridDim.y, ks = blockIdx.y;
  const int kb_lo = static_cast<int>(static_cast<int64_t>(K / kKBlock) * ks / KS);
  const int kb_hi = static_cast<int>(static_cast<int64_t>(K / kKBlock) * (ks + 1) / KS);
  const int first = kb_lo + warp;
  const int n_iter = first < kb_hi ? (kb_hi - first + kWarps - 1) / kWarps : 0;

  // This thread's weight rows (clamped: rows past N read row N-1, their sums are never stored).
  const T* wrow[kTiles];
#pragma unroll
  for (int j = 0; j < kTiles; ++j)
    wrow[j] = w + static_cast<int64_t>(min(n_base + j * 8 + g, N - 1)) * K + 8 * t;
  const bool has_x0 = g < M, has_x1 = kTwoX && g + 8 < M;
  const T* x0 = x + static_cast<int64_t>(has_x0 ? g : 0) * K + 8 * t;
  const T* x1 = x + static_cast<int64_t>(has_x1 ? g + 8 : 0) * K + 8 * t;

  uint4* my = ring + threadIdx.x;  // slot (stage, chunk) at my[(stage * kChunks + chunk) * kThreads]
  auto issue = [&](int i, int stage) {  // k block i of this warp into `stage`; always commits
    if (i < n_iter) {
      const int64_t off = static_cast<int64_t>(first + i * kWarps) * kKBlock;
      uint4* s = my + stage * kChunks * kThreads;
#pragma unroll
      for (int j = 0; j < kTiles; ++j) cp_async16(s + j * kThreads, wrow[j] + off);
      cp_async16(s + kTiles * kThreads, x0 + off);
      if (kTwoX) cp_async16(s + (kTiles + 1) * kThreads, x1 + off);
    }
    cp_async_commit();
  };

  float acc[kTiles][4];
#pragma unroll
  for (int j = 0; j < kTiles; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) issue(s, s);
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  int stage = 0, refill = kStages - 1;
  for (int i = 0; i < n_iter; ++i) {
    issue(i + kStages - 1, refill);  // refills the slot consumed in iteration i - 1
    cp_async_wait<kStages - 1>();    // k block i has landed (only this thread's own bytes)
    const uint4* s = my + stage * kChunks * kThreads;
    uint4 xv0 = s[kTiles * kThreads];
    uint4 xv1 = kTwoX ? s[(kTiles + 1) * kThreads] : zero;
    if (!has_x0) xv0 = zero;
    if (!has_x1) xv1 = zero;
    uint4 wv[kTiles];
#pragma unroll
    for (int j = 0; j < kTiles; ++j) wv[j] = s[j * kThreads];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint32_t a[4] = {word(xv0, 2 * h), word(xv1, 2 * h), word(xv0, 2 * h + 1), word(xv1, 2 * h + 1)};
#pragma unroll
      for (int j = 0; j < kTiles; ++j) mma16816<T>(acc[j], a, word(wv[j], 2 * h), word(wv[j], 2 * h + 1));
    }
    stage = stage + 1 == kStages ? 0 : stage + 1;
    refill = refill + 1 == kStages ? 0 : refill + 1;
  }
  cp_async_wait<0>();
  __syncthreads();  // every thread is done with the ring: reuse it for the cross-warp sums
  float(*red)[kMaxRows][kRowsPerCta + 1] = reinterpret_cast<float(*)[kMaxRows][kRowsPerCta + 1]>(ring);
  // acc[j]: c0, c1 at (row g, cols 2t, 2t + 1) of tile j; c2, c3 at row g + 8.
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
    const int n = j * 8 + 2 * t;
    red[warp][g][n] = acc[j][0];
    red[warp][g][n + 1] = acc[j][1];
    red[warp][g + 8][n] = acc[j][2];
    red[warp][g + 8][n + 1] = acc[j][3];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < M * kRowsPerCta; i += kThreads) {
    const int m = i / kRowsPerCta, n = i - m * kRowsPerCta;
    if (n_base + n >= N) continue;
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
