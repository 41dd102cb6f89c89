// Torch-free decode-shaped kernel of jetspec::tree_attention: few query rows per KV head
// (rows = N * G <= kDecMaxRows, e.g. autoregressive decoding N = 1, or a small draft block).
//
// Why: the tensor-core kernels tile 64-128 query rows; with 4 rows per KV head (N = 1, GQA 4)
// they spend their time on fixed costs (9.4 us at prefix 1024 on the H200, split + merge
// launches, against ~1 us to read the KV once). STATUS: opt-in (JETSPEC_TREE_ATTN_IMPL=decode);
// measured slower than the tensor-core path so far (15.6 us at prefix 1024): each 64-key tile
// runs QK, softmax and PV as latency-bound phases (~3 us a tile with one split). Next steps: more
// keys in flight per CTA (several tiles' loads before use), warp-level softmax without the two
// block barriers per tile. Every CTA owns one (batch row, KV head, key range) split:
//   QK: thread t takes key t % 64 of a 64-key tile and rows t / 64, t / 64 + 2, ... (its key row
//       read once with 16-byte loads, q from shared memory in fp32, pre-scaled by scale*log2 e);
//   softmax: one warp per row (online max / sum in shared memory, exp2);
//   PV: thread t owns VD consecutive dims of every row for one key group (16- or 8-byte V loads);
//       the key groups are summed once at the end.
// Splits (a static count from the host, key ranges from prefix_lens on the device) fill the SMs
// at batch 1; the LAST CTA of each (batch row, KV head) to finish merges the partials (global
// counter, reset by that CTA: graph-replay safe), so the op is a single launch. When no counter
// buffer is given, the partials are merged by merge_kernel instead.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "kernels/mma_sync.cuh"

namespace jetspec {
namespace tree_attn {

constexpr int kDecThreads = 128;
constexpr int kDecTK = 64;       // keys per tile
constexpr int kDecMaxRows = 16;  // query rows per (batch row, KV head)
constexpr int kDecMaxSplits = 32;  // the in-kernel merge keeps one weight per split and row

// RP = rows rounded up to 4, 8 or 16 (a template parameter: loops over rows are exact).
// PV layout: thread t owns VD consecutive dims (one 16- or 8-byte V load per key) of all RP rows
// for the keys t / (D / VD) + KG i of each tile; the KG key groups are summed once at the end.
template <int D, int RP>
struct DecodeShape {
  static constexpr int VD = RP <= 8 ? 8 : 4;   // dims per thread in PV (accumulators RP * VD)
  static constexpr int DC = D / VD;            // dim chunks
  static constexpr int KG = kDecThreads / DC;  // key groups
  static_assert(kDecThreads % DC == 0, "dim chunks must divide the CTA");
};

template <int D, int RP>
struct DecodeSmem {
  alignas(16) float q[RP][D];        // q * scale * log2(e)
  float s[RP][kDecTK + 1];           // scores, then probabilities, of the current tile
  float m[RP];                       // running max (log2 units)
  float l[RP];                       // running sum
  float alpha[RP];                   // rescale of the accumulators for the current tile
  alignas(16) float red[DecodeShape<D, RP>::KG][RP][D];  // PV key-group partial sums
};

__device__ __forceinline__ void unpack8(const uint4& raw, float (&f)[8], __nv_bfloat16) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}
__device__ __forceinline__ void unpack8(const uint4& raw, float (&f)[8], __half) {
  const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __half22float2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
// grid (num_splits, B * Hkv), kDecThreads threads; p.rows <= RP. counters: (B * Hkv,) int32,
// zero at rest, or nullptr (then num_splits > 1 leaves the partials to merge_kernel).
template <int D, typename T, int RP>
__global__ void __launch_bounds__(kDecThreads)
    decode_kernel(const Params p, int* __restrict__ counters) {
  using Sh = DecodeShape<D, RP>;
  constexpr int VD = Sh::VD, DC = Sh::DC, KG = Sh::KG;
  constexpr int QK_ROWS = RP / 2;  // dot products per thread per key (two row groups)
  static_assert(kDecThreads == 2 * kDecTK, "QK mapping: two row groups of 64 keys");
  static_assert(D % 8 == 0, "head dim 64 or 128");
  __shared__ DecodeSmem<D, RP> sm;
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
  const int split = blockIdx.x, bh = blockIdx.y;
  const int b = bh / p.Hkv, h = bh - b * p.Hkv;
  const int rows = p.rows, G = p.G;
  const int P = p.prefix_lens[b];
  const int L = P + p.N;  // keys [0, L): the prefix, then the tree
  const int per = (L + p.num_splits - 1) / p.num_splits;
  const int k0 = min(L, split * per), k1 = min(L, k0 + per);

  // q rows (row r = n * G + g: query token n, head h * G + g), fp32, pre-scaled; rows >= p.rows
  // are zero (their scores are never used).
  for (int i = t; i < RP * (D / 8); i += kDecThreads) {
    const int r = i / (D / 8), c = i - r * (D / 8);
    float f[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (r < rows) {
      const int n = r / G, hq = h * G + (r - n * G);
      const T* src = static_cast<const T*>(p.q) + b * p.q_sb + n * p.q_sn + hq * p.q_sh + c * 8;
      unpack8(*reinterpret_cast<const uint4*>(src), f, T{});
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) sm.q[r][c * 8 + e] = f[e] * p.scale_log2;
  }
  if (t < RP) {
    sm.m[t] = -INFINITY;
    sm.l[t] = 0.f;
  }
  float acc[RP][VD];
#pragma unroll
  for (int r = 0; r < RP; ++r)
#pragma unroll
    for (int e = 0; e < VD; ++e) acc[r][e] = 0.f;
  const int dc = t % DC, kg = t / DC;
  const T* kbase = static_cast<const T*>(p.k) + b * p.k_sb + h * p.k_sh;
  const T* vbase = static_cast<const T*>(p.v) + b * p.v_sb + h * p.v_sh + dc * VD;
  const int32_t* mrow = p.mask + (int64_t)b * p.N * p.W;
  __syncthreads();

  for (int kt = k0; kt < k1; kt += kDecTK) {
    // QK of key kt + (t % 64) with rows t / 64 + 2 i.
    {
      const int j = t % kDecTK, r0 = t / kDecTK;
      const int key = kt + j;
      float dot[QK_ROWS];
#pragma unroll
      for (int i = 0; i < QK_ROWS; ++i) dot[i] = 0.f;
      if (key < k1) {
        const T* kp = kbase + (int64_t)key * p.k_ss;
        uint4 raw[D / 8];
#pragma unroll
        for (int c = 0; c < D / 8; ++c) raw[c] = __ldg(reinterpret_cast<const uint4*>(kp + c * 8));
#pragma unroll
        for (int c = 0; c < D / 8; ++c) {
          float f[8];
          unpack8(raw[c], f, T{});
#pragma unroll
          for (int i = 0; i < QK_ROWS; ++i) {  // q as two 16-byte broadcast shared loads
            const float4 qa = *reinterpret_cast<const float4*>(&sm.q[r0 + 2 * i][c * 8]);
            const float4 qb = *reinterpret_cast<const float4*>(&sm.q[r0 + 2 * i][c * 8 + 4]);
            dot[i] = fmaf(f[0], qa.x, dot[i]);
            dot[i] = fmaf(f[1], qa.y, dot[i]);
            dot[i] = fmaf(f[2], qa.z, dot[i]);
            dot[i] = fmaf(f[3], qa.w, dot[i]);
            dot[i] = fmaf(f[4], qb.x, dot[i]);
            dot[i] = fmaf(f[5], qb.y, dot[i]);
            dot[i] = fmaf(f[6], qb.z, dot[i]);
            dot[i] = fmaf(f[7], qb.w, dot[i]);
          }
        }
      }
#pragma unroll
      for (int i = 0; i < QK_ROWS; ++i) {
        const int r = r0 + 2 * i;
        bool vis = key < k1 && r < rows;
        if (vis && key >= P) {  // a tree key: bit (key - P) of query node n's mask row
          const int ti = key - P, n = r / G;
          vis = (mrow[(int64_t)n * p.W + (ti >> 5)] >> (ti & 31)) & 1;
        }
        sm.s[r][j] = vis ? dot[i] : (r < rows ? -INFINITY : 0.f);  // padding rows: p = 0
      }
    }
    __syncthreads();
    // Online softmax, one warp per row.
    for (int r = warp; r < rows; r += kDecThreads / 32) {
      const float s0 = sm.s[r][lane], s1 = sm.s[r][lane + 32];
      float mx = fmaxf(s0, s1);
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float m_old = sm.m[r];
      const float m_new = fmaxf(m_old, mx);
      const float p0 = m_new == -INFINITY ? 0.f : exp2f(s0 - m_new);
      const float p1 = m_new == -INFINITY ? 0.f : exp2f(s1 - m_new);
      sm.s[r][lane] = p0;
      sm.s[r][lane + 32] = p1;
      float sum = p0 + p1;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      if (lane == 0) {
        const float a = m_old == -INFINITY ? 0.f : exp2f(m_old - m_new);
        sm.alpha[r] = a;
        sm.l[r] = sm.l[r] * a + sum;
        sm.m[r] = m_new;
      }
    }
    __syncthreads();
    // PV: dims [dc * VD, +VD) of every row, keys kg, kg + KG, ... of the tile.
#pragma unroll
    for (int r = 0; r < RP; ++r) {
      const float a = r < rows ? sm.alpha[r] : 0.f;
#pragma unroll
      for (int e = 0; e < VD; ++e) acc[r][e] *= a;
    }
    const int nk = min(kDecTK, k1 - kt);
#pragma unroll 4
    for (int j = kg; j < nk; j += KG) {
      float v[VD];
      const T* vp = vbase + (int64_t)(kt + j) * p.v_ss;
      if constexpr (VD == 8) {
        float f[8];
        unpack8(__ldg(reinterpret_cast<const uint4*>(vp)), f, T{});
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = f[e];
      } else {
        const uint2 raw = __ldg(reinterpret_cast<const uint2*>(vp));
        const uint4 raw4 = make_uint4(raw.x, raw.y, 0u, 0u);
        float f[8];
        unpack8(raw4, f, T{});
#pragma unroll
        for (int e = 0; e < VD; ++e) v[e] = f[e];
      }
#pragma unroll
      for (int r = 0; r < RP; ++r) {
        const float pr = sm.s[r][j];  // padding rows (>= p.rows) hold 0
#pragma unroll
        for (int e = 0; e < VD; ++e) acc[r][e] = fmaf(pr, v[e], acc[r][e]);
      }
    }
    __syncthreads();  // the next tile overwrites sm.s
  }
  // Sum the key groups: sm.red[kg][r][d], then thread i owns (row, dim) pairs.
#pragma unroll
  for (int r = 0; r < RP; ++r)
#pragma unroll
    for (int e = 0; e < VD; ++e) sm.red[kg][r][dc * VD + e] = acc[r][e];
  __syncthreads();

  // This split's result: O normalised by its own sum, natural-log lse (-inf: no visible key).
  const int64_t bh_rows = (int64_t)bh * rows;
  const int64_t split_stride = (int64_t)p.B * p.Hkv * rows;
  constexpr float kLn2 = 0.6931471805599453f;
  for (int i = t; i < rows * D; i += kDecThreads) {
    const int r = i / D, d = i - r * D;
    float o = 0.f;
#pragma unroll
    for (int g = 0; g < KG; ++g) o += sm.red[g][r][d];
    const float l = sm.l[r];
    o = l > 0.f ? o / l : 0.f;
    const float lse = l > 0.f ? (sm.m[r] + log2f(l)) * kLn2 : -INFINITY;
    if (p.num_splits == 1) {
      const int n = r / G, hq = h * G + (r - n * G);
      static_cast<T*>(p.out)[(((int64_t)b * p.N + n) * p.Hq + hq) * D + d] = from_f32<T>(o);
      if (d == 0) p.lse[((int64_t)b * p.Hq + hq) * p.N + n] = lse;
    } else {
      p.o_part[((int64_t)split * split_stride + bh_rows + r) * D + d] = o;
      if (d == 0) p.lse_part[split * split_stride + bh_rows + r] = lse;
    }
  }
  if (p.num_splits == 1 || counters == nullptr) return;
  // The last CTA of this (batch row, KV head) merges, with the tensor-core kernels' in-launch
  // merge (one row tile per (batch row, KV head)); the PV partial sums are dead by now, their
  // shared memory holds the merge weights.
  static_assert(sizeof(sm.red) >= (kDecMaxSplits + 1) * RP * sizeof(float), "merge scratch");
  merge_tile_if_last<D, T, kDecThreads>(p, counters, bh, bh, 0, rows, &sm.red[0][0][0]);
}

}  // namespace tree_attn
}  // namespace jetspec
