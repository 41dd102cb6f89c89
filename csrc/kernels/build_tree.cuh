// Torch-free CUDA kernels of jetspec::build_tree (raw pointers only).
//
// Two launches per call:
//   1. build_tree_stats_kernel<T, K>: grid (S, B*D). Each block streams one slice of one logits
//      row (16-byte loads) once and keeps the running max, the sum of exp relative to it and the
//      block's top-K (scaled logit, token id) candidates (ties: lower id). It writes one partial
//      record per (row, slice).
//   2. build_tree_expand_kernel<K>: one block per batch row. Warps merge the S partials of each
//      depth (logsumexp in double, top-W by warp-wide argmax), then warp 0 runs the best-first
//      expansion with the candidate set in shared memory (see below), then the whole block writes
//      the outputs (ancestor mask: one thread per node walks its <= 33 ancestors).
//
// Exactness: every float operation that decides the tree (x * inv_t, x - max, A + e, A - C,
// C + logS) uses the IEEE round-to-nearest intrinsics, so it is bit-identical to the CPU op and
// the reference. Only logS (the log of the softmax normaliser) is summed in a different order,
// which can move C by an ulp; trees then differ only where two cumulative scores of different
// depths are within that ulp (a genuine near-tie).
//
// Expansion without a heap. Both policies pop nodes in non-increasing score order, so the
// candidates form a few sorted lists that can be consumed front to back:
//   accum: list (d, r) = the rank-r children of the depth-(d-1) nodes in expansion order
//          (d = 1..D-1). Its head is the only unexpanded node of the list that can be the best.
//   topn:  list (d, r) = the candidates (p, r) over the depth-(d-1) nodes p in creation order
//          (d = 1..D); (p, r) is available once (p, r-1) is popped (childCount[p] == r).
// topn keeps each list's head key (orderable score << 32 | ~tiebreak) in shared memory; one
// round = warp-wide argmax over <= D*W keys (redux.sync), then O(W) shared-memory updates.
// accum keeps one lane per depth with the heads of its W lists in registers (only the corners of
// the per-depth staircase are live keys); one round = two redux.sync, a few broadcast loads and
// two 64-bit max per lane, fully converged (see expand_accum).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace jetspec {
namespace build_tree_kernels {

constexpr int kMaxDepth = 32;
constexpr int kMaxWidth = 16;
constexpr int kMaxBudget = 1024;
constexpr int kMaxSplits = 32;
constexpr int kMaxLists = kMaxDepth * kMaxWidth;  // candidate lists of the expansion
constexpr int kStatsThreads = 256;
constexpr int kExpandThreads = 1024;  // 32 warps: the merge handles every depth row at once
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Order-preserving map float -> uint32 (larger float -> larger uint; -inf -> 0x007fffff > 0).
__device__ __forceinline__ uint32_t ord_key(float f) {
  const uint32_t u = __float_as_uint(f);
  // negative: ~u; otherwise u | 0x80000000 (two instructions: SHF + LOP3)
  return u ^ (static_cast<uint32_t>(static_cast<int32_t>(u) >> 31) | 0x80000000u);
}
__device__ __forceinline__ float ord_val(uint32_t o) {
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

// exp(x - m) with the rule x == m -> 1 (defines +-inf maxima without NaN).
__device__ __forceinline__ float exp_rel(float x, float m) {
  return x == m ? 1.0f : expf(__fsub_rn(x, m));
}
// e(x) = x - m with x == m -> 0.
__device__ __forceinline__ float e_rel(float x, float m) { return x == m ? 0.0f : __fsub_rn(x, m); }

__device__ __forceinline__ float scale_logit(float f, float inv_t, bool scale) {
  if (scale) f = __fmul_rn(f, inv_t);
  return isnan(f) ? -INFINITY : f;
}

// (x1, i1) ranks before (x2, i2): larger value, then lower token id.
__device__ __forceinline__ bool ranks_before(float x1, int i1, float x2, int i2) {
  return x1 > x2 || (x1 == x2 && i1 < i2);
}

__device__ __forceinline__ void merge_ms(float& m, float& s, float om, float os) {
  const float nm = fmaxf(m, om);
  s = s * exp_rel(m, nm) + os * exp_rel(om, nm);
  m = nm;
}

// Warp-wide argmax of 64-bit keys given as (hi, lo); returns the winning lane (lowest on equal
// keys) and the key. All 32 lanes must call it.
__device__ __forceinline__ int warp_argmax(uint32_t hi, uint32_t lo, uint32_t& mh, uint32_t& ml) {
  mh = __reduce_max_sync(kFull, hi);
  ml = __reduce_max_sync(kFull, hi == mh ? lo : 0u);
  const unsigned ball = __ballot_sync(kFull, hi == mh && lo == ml);
  return __ffs(ball) - 1;
}

// Pop the head of a sorted register list (static indexing only).
template <int K>
__device__ __forceinline__ void pop_front(uint32_t (&h)[K], uint32_t (&l)[K]) {
#pragma unroll
  for (int j = 0; j + 1 < K; ++j) {
    h[j] = h[j + 1];
    l[j] = l[j + 1];
  }
  h[K - 1] = 0u;
  l[K - 1] = 0u;
}

// Insert (x, id) into a sorted register top-K list (static indexing only).
template <int K>
__device__ __forceinline__ void topk_insert(float (&tv)[K], int (&ti)[K], float x, int id) {
  if (ranks_before(x, id, tv[K - 1], ti[K - 1])) {
    tv[K - 1] = x;
    ti[K - 1] = id;
#pragma unroll
    for (int j = K - 1; j > 0; --j) {
      if (ranks_before(tv[j], ti[j], tv[j - 1], ti[j - 1])) {
        const float a = tv[j];
        tv[j] = tv[j - 1];
        tv[j - 1] = a;
        const int b = ti[j];
        ti[j] = ti[j - 1];
        ti[j - 1] = b;
      }
    }
  }
}

// The exact per-logit rules shared by the streaming kernel and the tiled kernel's exact path:
// running (max, sum exp) with exp_rel, and the sorted top-K insertion.
template <int K>
__device__ __forceinline__ void topk_init(float (&tv)[K], int (&ti)[K]) {
#pragma unroll
  for (int j = 0; j < K; ++j) {
    tv[j] = -INFINITY;
    ti[j] = 0x7fffffff;
  }
}
template <int K>
__device__ __forceinline__ void consume_exact(float x, int id, float& m, float& s, float (&tv)[K],
                                              int (&ti)[K]) {
  if (x > m) {
    s = s * exp_rel(m, x);
    m = x;
  }
  s += exp_rel(x, m);
  topk_insert<K>(tv, ti, x, id);
}

// Block epilogue shared by the stats kernels: reduce the threads' (max, sum) and merge their sorted
// top-K lists (tv, ti) into the block's top-K; thread 0 / warp 0 write record `rec`.
template <int K>
__device__ __forceinline__ void block_finish(float m, float s, const float (&tv)[K],
                                             const int (&ti)[K], int64_t rec,
                                             float2* __restrict__ part_ms,
                                             uint2* __restrict__ part_keys) {
  constexpr int NWARP = kStatsThreads / 32;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // Block reduction of (max, sum).
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float om = __shfl_xor_sync(kFull, m, off);
    const float os = __shfl_xor_sync(kFull, s, off);
    merge_ms(m, s, om, os);
  }
  __shared__ float sh_m[NWARP], sh_s[NWARP];
  __shared__ uint32_t sh_h[NWARP][K], sh_l[NWARP][K];
  if (lane == 0) {
    sh_m[warp] = m;
    sh_s[warp] = s;
  }
  // Warp top-K: K rounds of argmax over the lanes' list heads.
  uint32_t h[K], l[K];
#pragma unroll
  for (int j = 0; j < K; ++j) {
    h[j] = ord_key(tv[j]);
    l[j] = ~static_cast<uint32_t>(ti[j]);
  }
#pragma unroll
  for (int r = 0; r < K; ++r) {
    uint32_t mh, ml;
    const int wl = warp_argmax(h[0], l[0], mh, ml);
    if (lane == wl) pop_front<K>(h, l);
    if (lane == 0) {
      sh_h[warp][r] = mh;
      sh_l[warp][r] = ml;
    }
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int j = 0; j < K; ++j) {
      h[j] = lane < NWARP ? sh_h[lane][j] : 0u;
      l[j] = lane < NWARP ? sh_l[lane][j] : 0u;
    }
#pragma unroll
    for (int r = 0; r < K; ++r) {
      uint32_t mh, ml;
      const int wl = warp_argmax(h[0], l[0], mh, ml);
      if (lane == wl) pop_front<K>(h, l);
      if (lane == 0) part_keys[rec * K + r] = make_uint2(mh, ml);
    }
    if (lane == 0) {
      float bm = sh_m[0], bs = sh_s[0];
#pragma unroll
      for (int w = 1; w < NWARP; ++w) merge_ms(bm, bs, sh_m[w], sh_s[w]);
      part_ms[rec] = make_float2(bm, bs);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Kernel 1: per (row, slice) running max, sum of exp and top-K.
// part_ms[row*S + split] = (max, sum exp(x - max)); part_keys[(row*S + split)*K + j] =
// (ord_key(x), ~id) of the slice's j-th best token (padding: (ord_key(-inf), ~INT_MAX)).
// ---------------------------------------------------------------------------------------------
template <typename T, int K>
__global__ void __launch_bounds__(kStatsThreads)
    build_tree_stats_kernel(const T* __restrict__ logits, int V, int S, float inv_t, bool scale,
                            float2* __restrict__ part_ms, uint2* __restrict__ part_keys) {
  constexpr int VEC = 16 / sizeof(T);
  const int split = blockIdx.x;
  const int64_t row = blockIdx.y;
  const T* rp = logits + row * static_cast<int64_t>(V);
  const int tid = threadIdx.x;

  // Aligned body of 16-byte vectors, plus a scalar head (split 0) and tail (last split).
  const uintptr_t addr = reinterpret_cast<uintptr_t>(rp);
  int head = static_cast<int>(((16u - (addr & 15u)) & 15u) / sizeof(T));
  if (head > V) head = V;
  const int nvec = (V - head) / VEC;
  const int tail0 = head + nvec * VEC;
  const int v0 = static_cast<int>(static_cast<int64_t>(nvec) * split / S);
  const int v1 = static_cast<int>(static_cast<int64_t>(nvec) * (split + 1) / S);

  float m = -INFINITY, s = 0.0f;
  float tv[K];
  int ti[K];
  topk_init<K>(tv, ti);
  auto insert = [&](float x, int id) { topk_insert<K>(tv, ti, x, id); };
  auto consume_scalar = [&](int id) {
    consume_exact<K>(scale_logit(to_float(rp[id]), inv_t, scale), id, m, s, tv, ti);
  };
  auto consume_vec = [&](const uint4& raw, int vidx) {
    const T* e = reinterpret_cast<const T*>(&raw);
    float xs[VEC];
    float vmax = -INFINITY;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      xs[j] = scale_logit(to_float(e[j]), inv_t, scale);
      vmax = fmaxf(vmax, xs[j]);
    }
    if (vmax > m) {
      s = s * exp_rel(m, vmax);
      m = vmax;
    }
    const int id0 = head + vidx * VEC;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      s += exp_rel(xs[j], m);
      insert(xs[j], id0 + j);
    }
  };

  const uint4* vp = reinterpret_cast<const uint4*>(rp + head);
  // U predicated loads in flight per thread before any is consumed (a slice is often only a few
  // vectors per thread, so the remainder must not be loaded one latency at a time).
  constexpr int U = 4;
  for (int v = v0 + tid; v < v1; v += U * kStatsThreads) {
    uint4 raw[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (v + u * kStatsThreads < v1) raw[u] = __ldg(vp + v + u * kStatsThreads);
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (v + u * kStatsThreads < v1) consume_vec(raw[u], v + u * kStatsThreads);
  }
  if (split == 0 && tid < head) consume_scalar(tid);
  if (split == S - 1 && tid < V - tail0) consume_scalar(tail0 + tid);

  block_finish<K>(m, s, tv, ti, row * S + split, part_ms, part_keys);
}

// ---------------------------------------------------------------------------------------------
// Kernel 1 (tiled, V <= kTileElems * kMaxSplits): block (split, row) owns the kTileElems logits
// [split * kTileElems, ...) of one row, 32 per thread, all loaded at once (every load in flight
// before any use) and kept as raw 16-byte vectors (16 registers for 16-bit logits; <= 48
// registers in all, so 5 blocks fit per SM). Missing elements of a partial tile read as -inf.
//   max:    thread maximum m_t of the raw logits (16-bit: packed max.bf16x2 / max.f16x2; the
//           temperature scaling is monotone, so the scaled maximum is the scaled raw maximum);
//   filter: tau_w = the W-th largest thread maximum of warp w (bitonic sort over the lanes; lane
//           0 then holds the warp maximum). W distinct elements of the tile reach tau_w, so the
//           tile's W-th best is >= tau = max_w tau_w and every element of the tile's top-W is
//           >= tau. Barrier 1 agrees tau and the block maximum M;
//   sum:    one pass: sum of exp(x - M) with ex2.approx (the sum only feeds logS; see the header
//           note) and one bit per logit that may reach tau (raw x >= a raw threshold at or below
//           every raw logit whose scaled value reaches tau, so a temperature costs no multiply
//           here); the few set bits are re-read (L1), tested exactly, appended to shared memory
//           (typically a few W per tile) and, after barrier 2, ranked by counting larger keys
//           (keys (ord(x), ~id) are unique); ranks < W are written out in order, with (M, sum).
// Why this shape: the kernel is bound by each block's serial latency, not by DRAM (5.8 waves of
// blocks at batch 8); Nsight Compute and A/B timings on the H200 drove the earlier version's
// (max, sum) merge chain, third barrier and branchy candidate loop out (batch-8 kernel 37.9 ->
// 23.7 us, benchmarks/RESULTS.md).
// Exact path (the streaming kernel's per-element rules: NaN -> -inf, exp_rel, top-K insertion),
// taken by the whole block when the block maximum is not finite, a thread's sum is NaN (a NaN
// logit), or more than kCandCap elements reach tau (massive ties, e.g. constant logits).
// ---------------------------------------------------------------------------------------------
// The exact path is rare: keep it out of line so the fast path's registers are not sized for it.
#if defined(__CUDACC__)
#define JETSPEC_BT_NOINLINE __noinline__
#else
#define JETSPEC_BT_NOINLINE
#endif
constexpr int kTileElems = 8192;
constexpr int kCandCap = 1024;
constexpr int kTileEPT = kTileElems / kStatsThreads;  // 32 logits per thread

__device__ __forceinline__ float fast_exp2(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return exp2f(x);
#endif
}

template <typename T>
__device__ __forceinline__ T from_float(float x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else if constexpr (std::is_same_v<T, __half>) return __float2half(x);
  else return __float2bfloat16(x);
}

template <typename T>
__device__ __forceinline__ float vec_elem(const uint4& raw, int j) {
  return to_float(reinterpret_cast<const T*>(&raw)[j]);
}

// Logit i (0..kTileEPT) of thread tid in a tile starting at lo (16-byte vectors strided by the
// block, so each load instruction of the block reads one contiguous 4 KB run).
template <typename T>
__device__ __forceinline__ int tile_id(int lo, int tid, int i) {
  constexpr int VEC = 16 / sizeof(T);
  return lo + ((i / VEC) * kStatsThreads + tid) * VEC + i % VEC;
}

// The exact path over the thread's logits of the tile (re-read from L2), then the block merge.
template <typename T, int K>
__device__ JETSPEC_BT_NOINLINE void stats_tile_exact(const T* __restrict__ rp, int lo, int hi, float inv_t,
                                              bool scale, int64_t rec, float2* __restrict__ part_ms,
                                              uint2* __restrict__ part_keys) {
  float m = -INFINITY, s = 0.0f;
  float tv[K];
  int ti[K];
  topk_init<K>(tv, ti);
  for (int i = 0; i < kTileEPT; ++i) {
    const int id = tile_id<T>(lo, threadIdx.x, i);
    if (id < hi) consume_exact<K>(scale_logit(to_float(rp[id]), inv_t, scale), id, m, s, tv, ti);
  }
  block_finish<K>(m, s, tv, ti, rec, part_ms, part_keys);
}

// Maximum of a thread's logits (NaN skipped, like fmaxf): 16-bit types as packed pairs (one
// max.bf16x2 / max.f16x2 per two logits instead of two conversions and two fmaxf).
template <typename T, int VPT>
__device__ __forceinline__ float thread_max(const uint4 (&raw)[VPT]) {
  if constexpr (std::is_same_v<T, float>) {
    float m = -INFINITY;
#pragma unroll
    for (int u = 0; u < VPT; ++u)
#pragma unroll
      for (int j = 0; j < 4; ++j) m = fmaxf(m, vec_elem<T>(raw[u], j));
    return m;
  } else {
    using T2 = std::conditional_t<std::is_same_v<T, __half>, __half2, __nv_bfloat162>;
    const T ninf = from_float<T>(-INFINITY);
    T2 acc;
    acc.x = ninf;
    acc.y = ninf;
#pragma unroll
    for (int u = 0; u < VPT; ++u) {
      const T2* p = reinterpret_cast<const T2*>(&raw[u]);
#pragma unroll
      for (int j = 0; j < 4; ++j) acc = __hmax2(acc, p[j]);
    }
    return fmaxf(to_float(acc.x), to_float(acc.y));
  }
}

// A raw threshold r with: round(x * inv_t) >= tau  implies  x >= r (inv_t > 0). The margins
// (1e-6 relative, far above the rounding of one product and one quotient) only let a few more
// logits reach the exact test. -inf when tau is -inf or the bound is not a finite number.
__device__ __forceinline__ float raw_threshold_below(float tau, float inv_t) {
  const float t = tau - (fabsf(tau) * 1e-6f + 1e-30f);
  float r = t / inv_t;
  r -= fabsf(r) * 1e-6f;
  return isfinite(r) ? r : -INFINITY;
}

// The tiled stats kernel (kernel 1 above). Numerics: the sum runs relative to the block maximum
// (terms below 2^-126 of it flush to zero); non-finite maxima and NaN logits take the exact path.
template <typename T, int K>
__global__ void __launch_bounds__(kStatsThreads, 5)  // <= 48 registers: 5 blocks (40 warps) per SM
    build_tree_stats_tile_kernel(const T* __restrict__ logits, int V, int S, int W, float inv_t,
                                 bool scale, float2* __restrict__ part_ms,
                                 uint2* __restrict__ part_keys) {
  constexpr int VEC = 16 / sizeof(T);
  constexpr int VPT = kTileEPT / VEC;  // 16-byte vectors per thread
  constexpr int NWARP = kStatsThreads / 32;
  static_assert(kTileEPT % VEC == 0, "tile must be whole vectors per thread");
  const int split = blockIdx.x;
  const int64_t row = blockIdx.y;
  const int64_t rec = row * S + split;
  const T* rp = logits + row * static_cast<int64_t>(V);
  const int lo = split * kTileElems;
  const int hi = min(V, lo + kTileElems);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const bool aligned = (reinterpret_cast<uintptr_t>(rp) & 15u) == 0;

  uint4 raw[VPT];
  const bool whole = aligned && hi - lo == kTileElems;  // uniform: no per-vector bounds checks
#pragma unroll
  for (int u = 0; u < VPT; ++u) {
    const int id0 = lo + (u * kStatsThreads + tid) * VEC;
    if (whole || (aligned && id0 + VEC <= hi)) {
      raw[u] = __ldg(reinterpret_cast<const uint4*>(rp + id0));
    } else {  // unaligned row or the end of the row: scalar loads, -inf beyond it
      T* e = reinterpret_cast<T*>(&raw[u]);
#pragma unroll
      for (int j = 0; j < VEC; ++j) e[j] = id0 + j < hi ? rp[id0 + j] : from_float<T>(-INFINITY);
    }
  }
  // Thread maximum (NaN skipped), scaled like every logit (x * inv_t is monotone).
  const float mraw = thread_max<T, VPT>(raw);
  const float m = scale ? __fmul_rn(mraw, inv_t) : mraw;

  // Warp: sort the thread maxima (descending): lane W-1 holds tau_w (the W-th largest), lane 0
  // the warp maximum.
  uint32_t v = ord_key(m);
#pragma unroll
  for (int k = 2; k <= 32; k <<= 1) {
#pragma unroll
    for (int j = k >> 1; j > 0; j >>= 1) {
      const uint32_t o = __shfl_xor_sync(kFull, v, j);
      const bool asc = (lane & k) == 0, lower = (lane & j) == 0;
      v = (asc != lower) ? min(v, o) : max(v, o);  // descending overall
    }
  }
  const uint32_t tau_w = __shfl_sync(kFull, v, W - 1);
  __shared__ uint32_t sh_tau[NWARP], sh_max[NWARP];
  __shared__ float sh_s[NWARP];
  __shared__ int sh_count, sh_exact;
  __shared__ unsigned long long sh_cand[kCandCap];
  if (lane == 0) {
    sh_tau[warp] = tau_w;
    sh_max[warp] = v;
  }
  if (tid == 0) {
    sh_count = 0;
    sh_exact = 0;
  }
  __syncthreads();  // barrier 1: tau and the block maximum
  uint32_t tau = sh_tau[0], mkey = sh_max[0];
#pragma unroll
  for (int w = 1; w < NWARP; ++w) {
    tau = max(tau, sh_tau[w]);
    mkey = max(mkey, sh_max[w]);
  }
  const float M = ord_val(mkey);
  if (!isfinite(M)) {  // uniform: a +inf maximum, or no finite logit in the tile
    stats_tile_exact<T, K>(rp, lo, hi, inv_t, scale, rec, part_ms, part_keys);
    return;
  }
  const float tau_f = ord_val(tau);

  // One pass: the sum of exp(x - M) = 2^(x * c - M * log2 e), c = log2 e (times 1/T when
  // scaling), and a bit per logit that may be a candidate (raw x >= r_lo, a threshold at or below
  // every raw logit whose scaled value reaches tau; the exact test is made when appending).
  constexpr float kLog2e = 1.4426950408889634f;
  const float c = scale ? inv_t * kLog2e : kLog2e;
  const float mb = -M * kLog2e;
  const float r_lo = scale ? raw_threshold_below(tau_f, inv_t) : tau_f;
  float s = 0.0f;
  uint32_t cmask = 0u;
#pragma unroll
  for (int u = 0; u < VPT; ++u)
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float x = vec_elem<T>(raw[u], j);
      s += fast_exp2(fmaf(x, c, mb));
      cmask |= x >= r_lo ? 1u << (u * VEC + j) : 0u;
    }
  // Append the candidates (scaled x >= tau_f), re-read from L1 by the few threads that have any.
  while (cmask != 0u) {
    const int b = __ffs(cmask) - 1;
    cmask &= cmask - 1u;
    const int id = lo + ((b / VEC) * kStatsThreads + tid) * VEC + b % VEC;
    if (id >= hi) continue;
    float x = to_float(rp[id]);
    if (scale) x = __fmul_rn(x, inv_t);
    if (x >= tau_f) {
      const int pos = atomicAdd(&sh_count, 1);
      if (pos < kCandCap)
        sh_cand[pos] = (static_cast<unsigned long long>(ord_key(x)) << 32) |
                       static_cast<uint32_t>(~static_cast<uint32_t>(id));
    }
  }
  // Warp sum; a NaN logit turns it NaN (then the whole block takes the exact path). The append
  // loop above diverges: reconverge first, or the shuffles compile to a collective loop.
  __syncwarp();
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(kFull, s, off);
  if (lane == 0) {
    sh_s[warp] = s;
    if (isnan(s)) sh_exact = 1;
  }
  __syncthreads();  // barrier 2: candidates, warp sums
  const int cnt = sh_count;
  if (sh_exact || cnt > kCandCap) {  // uniform
    stats_tile_exact<T, K>(rp, lo, hi, inv_t, scale, rec, part_ms, part_keys);
    return;
  }
  // Rank by counting (unique keys); ranks < W are the tile's top-W in order.
  for (int t = tid; t < cnt; t += kStatsThreads) {
    const unsigned long long key = sh_cand[t];
    int rank = 0;
#pragma unroll 8
    for (int j = 0; j < cnt; ++j) rank += sh_cand[j] > key ? 1 : 0;
    if (rank < W)
      part_keys[rec * K + rank] =
          make_uint2(static_cast<uint32_t>(key >> 32), static_cast<uint32_t>(key));
  }
  if (tid < K && tid >= min(cnt, W))
    part_keys[rec * K + tid] = make_uint2(ord_key(-INFINITY), ~0x7fffffffu);
  if (tid == 0) {
    float ts = sh_s[0];
#pragma unroll
    for (int w = 1; w < NWARP; ++w) ts += sh_s[w];
    part_ms[rec] = make_float2(M, ts);
  }
}

// ---------------------------------------------------------------------------------------------
// Kernel 2: merge + expansion + outputs; one block per batch row.
// ---------------------------------------------------------------------------------------------
// accum: the parent (slot) that follows a parent in its depth's list, with its cumulative A (one
// 8-byte load advances a rank).
struct alignas(8) NextParent {
  int e;
  float a;
};

// Phase timestamps for benchmarks/probe_build_tree.cu only (never defined in the extension).
#ifdef JETSPEC_BT_PROBE
__device__ long long g_bt_probe[8];
#define JETSPEC_BT_STAMP(i) \
  if (threadIdx.x == 0 && blockIdx.x == 0) g_bt_probe[i] = clock64()
#else
#define JETSPEC_BT_STAMP(i)
#endif

struct ExpandSmem {
  // per-depth tables (row j = depth j + 1, stride kMaxWidth: [(d - 1) * kMaxWidth + r])
  int32_t tok[kMaxDepth * kMaxWidth];
  float e[kMaxDepth * kMaxWidth];
  float logS[kMaxDepth];
  float C[kMaxDepth + 1];
  // nodes
  float A[kMaxBudget];  // topn: per node; accum: per expansion (A of the expanded node)
  float score[kMaxBudget];
  int16_t par[kMaxBudget];
  int16_t fc[kMaxBudget];
  int16_t ns[kMaxBudget];
  int16_t link[kMaxBudget];  // accum: node expanded as expansion e; topn: next node, same depth
  int16_t last[kMaxBudget];  // topn: last created child
  uint8_t dep[kMaxBudget];
  uint8_t rank[kMaxBudget];
  uint8_t cnt[kMaxBudget];  // accum: depth of the node expanded as expansion e; topn: children
  // candidate lists
  unsigned long long key[kMaxDepth * kMaxWidth];
  int16_t ptr[kMaxDepth * kMaxWidth];
  int16_t tail[kMaxDepth + 1];
  // accum: staircase [depth * kMaxWidth + rank] and per-depth parent lists (see expand_accum)
  int32_t aprev[(kMaxDepth + 1) * kMaxWidth];
  NextParent nxt[kMaxBudget + kMaxDepth];
  int count;
};

__device__ __forceinline__ unsigned long long make_key(float score, int tiebreak) {
  return (static_cast<unsigned long long>(ord_key(score)) << 32) |
         static_cast<uint32_t>(~static_cast<uint32_t>(tiebreak));
}

// Lane-local best of the lists a lane owns (q = lane + 32 j): the warp's argmax over the lanes'
// bests is then one warp_argmax, and after a pop only the lanes whose lists changed refresh theirs.
struct LaneBest {
  unsigned long long key = 0ull;
  int q = -1;
};

__device__ __forceinline__ void rescan_lane(const ExpandSmem& sm, int nl, int lane, LaneBest& lb) {
  // All kMaxLists / 32 keys loaded back to back (unused slots hold 0), then a tree argmax: the
  // rescan sits on every pop's critical path, so no load waits for a compare.
  constexpr int J = kMaxLists / 32;
  unsigned long long k[J];
  int q[J];
#pragma unroll
  for (int j = 0; j < J; ++j) {
    k[j] = sm.key[lane + 32 * j];
    q[j] = lane + 32 * j;
  }
  static_assert(J == 16, "tree levels below assume 16 keys per lane");
  auto level = [&](auto w) {  // keys are unique (the tiebreak is a node index); 0 = empty
#pragma unroll
    for (int j = 0; j < decltype(w)::value; ++j) {
      if (k[j + decltype(w)::value] > k[j]) {
        k[j] = k[j + decltype(w)::value];
        q[j] = q[j + decltype(w)::value];
      }
    }
  };
  level(std::integral_constant<int, 8>{});
  level(std::integral_constant<int, 4>{});
  level(std::integral_constant<int, 2>{});
  level(std::integral_constant<int, 1>{});
  lb.key = k[0];
  lb.q = k[0] ? q[0] : -1;
  (void)nl;
}

// accum, one lane per candidate depth. Lane d (1 <= d <= D-1) owns the depth-d candidates: the
// rank-r children (r < W) of the depth-(d-1) expansions. Parents of a depth join a linked list in
// expansion order (sm.nxt, by slot: expansion e sits at slot kMaxDepth + e, the head sentinel of
// depth d at slot d, so slots order like expansions with the sentinel first). A parent's rank r-1
// child never has a lower key than its rank r child, so each rank consumes the list front to
// back: prev[d][r] (sm.aprev[d * kMaxWidth + r]) is the slot of the last parent whose rank-r
// child has been popped (initially the sentinel) and the rank-r candidate is nxt[prev[d][r]]
// (none at the end of the list). Exhausted ranks are lazy: a new parent only links itself behind
// the tail and every rank that had run dry sees it as its candidate. The pointers form a
// staircase (prev[r-1] >= prev[r]) and only its corners can be the depth's best: rank r's
// candidate c with r == 0 or prev[r-1] >= c. Corner keys sit in the lane's registers (0 = not a
// corner); a pop changes at most three keys: the winner lane's ranks r (advances) and r+1
// (unblocked when it waited for the popped node's parent) and the child lane's rank 0 (the new
// parent is the worst of its depth, so only an exhausted rank 0 gains a candidate).
// Keys: hi = ord(score), lo = ~f with f = (e << 9) | (d << 4) | r for the rank-r child of
// expansion e at depth d. All children of an expansion share d and node index 1 + e * W + r
// orders like (e, r) (r < W), so this is the order of the ~node tie-break. After the warp argmax
// every lane decodes the popped candidate from f, and u = f & 511 = d * 16 + r indexes both the
// e table (row stride kMaxWidth: e(d, r) = sm.e[u - 16]) and the staircase (sm.aprev[u]), so all
// loads of a round are broadcasts from one base address. The whole warp runs every step (no
// divergent sections): uniform loads, predicated stores and register selects. Only the winner
// lane writes aprev (its own depth's row) and only the child lane its depth's nxt entries.
constexpr int kEndSlot = 0x7fffffff;

// Scheduling hints (no instructions): PIN keeps a value's computation before this point (the
// compiler would sink it past the next branch), LAUNDER stops the compiler from re-reading a
// special register (lane id) inside the loop.
#if defined(__CUDA_ARCH__)
#define JETSPEC_BT_PIN(x) asm volatile("" ::"l"(x))
#define JETSPEC_BT_LAUNDER(x) asm volatile("" : "+r"(x))
#else
#define JETSPEC_BT_PIN(x) (void)(x)
#define JETSPEC_BT_LAUNDER(x) (void)(x)
#endif

__device__ __forceinline__ unsigned long long max_u64(unsigned long long a, unsigned long long b) {
  return a > b ? a : b;
}

__device__ __forceinline__ unsigned long long accum_key(float score, uint32_t f) {
  return (static_cast<unsigned long long>(ord_key(score)) << 32) | static_cast<uint32_t>(~f);
}

template <int WK>
__device__ __forceinline__ unsigned long long lane_best(unsigned long long (&kk)[WK]) {  // clobbers
#pragma unroll
  for (int w = WK / 2; w > 0; w /= 2) {
#pragma unroll
    for (int j = 0; j < w; ++j) kk[j] = kk[j + w] > kk[j] ? kk[j + w] : kk[j];
  }
  return kk[0];
}

// Per-block state of expand_accum that does not depend on the expansion (set by all threads before
// the warp starts): the staircase at its sentinels, empty parent lists, fc = -1 (no children).
__device__ __forceinline__ void expand_accum_init(ExpandSmem& sm, int W, int N, int tid, int nthr) {
  for (int q = tid; q < (kMaxDepth + 1) * kMaxWidth; q += nthr)
    sm.aprev[q] = (q & (kMaxWidth - 1)) < W ? q / kMaxWidth : -1;
  for (int q = tid; q < kMaxBudget + kMaxDepth; q += nthr) sm.nxt[q] = NextParent{kEndSlot, 0.0f};
  for (int i = tid; i < N; i += nthr) sm.fc[i] = -1;
}

template <int WK, int R>
__device__ __forceinline__ void set_ranks(unsigned long long (&k)[WK], bool wa,
                                          unsigned long long va, bool wb,
                                          unsigned long long vb) {
  if constexpr (R < WK) k[R] = wa ? va : k[R];
  if constexpr (R + 1 < WK) k[R + 1] = wb ? vb : k[R + 1];
}

// k[r] = va where wa, k[r + 1] = vb where wb, for the warp-uniform rank r: a uniform branch to
// one of WK short select blocks instead of 2 * WK predicated selects.
template <int WK>
__device__ __forceinline__ void update_ranks(unsigned long long (&k)[WK], int r, bool wa,
                                             unsigned long long va, bool wb,
                                             unsigned long long vb) {
  switch (r) {
    case 0: set_ranks<WK, 0>(k, wa, va, wb, vb); break;
    case 1: set_ranks<WK, 1>(k, wa, va, wb, vb); break;
    case 2: set_ranks<WK, 2>(k, wa, va, wb, vb); break;
    case 3: set_ranks<WK, 3>(k, wa, va, wb, vb); break;
    case 4: set_ranks<WK, 4>(k, wa, va, wb, vb); break;
    case 5: set_ranks<WK, 5>(k, wa, va, wb, vb); break;
    case 6: set_ranks<WK, 6>(k, wa, va, wb, vb); break;
    case 7: set_ranks<WK, 7>(k, wa, va, wb, vb); break;
    case 8: set_ranks<WK, 8>(k, wa, va, wb, vb); break;
    case 9: set_ranks<WK, 9>(k, wa, va, wb, vb); break;
    case 10: set_ranks<WK, 10>(k, wa, va, wb, vb); break;
    case 11: set_ranks<WK, 11>(k, wa, va, wb, vb); break;
    case 12: set_ranks<WK, 12>(k, wa, va, wb, vb); break;
    case 13: set_ranks<WK, 13>(k, wa, va, wb, vb); break;
    case 14: set_ranks<WK, 14>(k, wa, va, wb, vb); break;
    default: set_ranks<WK, 15>(k, wa, va, wb, vb); break;
  }
}

// Round structure (one pop): two redux.sync (hi word, then lo word among the lanes at the
// maximum) -> decode -> broadcast loads -> the <= 3 new keys -> this lane's new best -> next
// round. Register work that does not depend on the pop runs in the shadow of the two reduxes:
// the previous pop's key writes into k[] (a uniform switch on its rank) and t0, this lane's best
// over k[] without its current best leaf (what remains if this lane wins). After the pop the new
// best is then max(t0 or bk, new keys): two 64-bit max instead of a select chain and a full tree.
template <int WK>
__device__ __forceinline__ void expand_accum(ExpandSmem& sm_in, int D, int W, int N, int lane) {
  static_assert(WK == 8 || WK == 16, "rank registers");
  JETSPEC_BT_LAUNDER(lane);
#if defined(__CUDA_ARCH__)
  // The shared-window base in a register (otherwise re-derived from SR_CgaCtaId every round).
  uint32_t sbase = static_cast<uint32_t>(__cvta_generic_to_shared(&sm_in));
  JETSPEC_BT_LAUNDER(sbase);
  ExpandSmem& sm = *static_cast<ExpandSmem*>(__cvta_shared_to_generic(sbase));
#else
  ExpandSmem& sm = sm_in;
#endif
  const bool has_depth = lane >= 1 && lane < D;
  const float Cd = has_depth ? sm.C[lane] : 0.0f;
  unsigned long long k[WK];
#pragma unroll
  for (int j = 0; j < WK; ++j) k[j] = 0ull;
  int tail = lane;       // slot of the last parent of this lane's depth (the sentinel: none)
  bool r0x = has_depth;  // rank 0 has no candidate (prev[0] == tail)

  // Expansion 0: the root (depth 0, A = 0); its children are nodes 1..W, parents of lane 1.
  if (lane == 0) {
    sm.A[0] = 0.0f;
    sm.link[0] = 0;
    sm.cnt[0] = 0;
  }
  if (lane == 1 && has_depth) {
    sm.nxt[1] = NextParent{kMaxDepth, 0.0f};
    tail = kMaxDepth;
    r0x = false;
    k[0] = accum_key(__fsub_rn(__fadd_rn(0.0f, sm.e[0]), Cd), 1u << 4);
  }
  unsigned long long bk = k[0];
  // Lanes read what other lanes stored (sm.A / link / cnt / nxt / aprev). The redux.sync and
  // shuffle intrinsics converge the warp but do not order shared memory between its lanes (CUDA
  // memory model; compute-sanitizer racecheck reports these as warp-level RAW / WAR hazards), so
  // a __syncwarp separates each round's stores from the next round's loads (and the set-up above
  // from the first round's), and one more its loads from its own stores (step 3).
  __syncwarp();
  // The previous pop's key writes, applied in the next round (see above).
  int ur = 0;
  bool uwa = false, uwb = false, uwc = false;
  unsigned long long uva = 0ull, uvb = 0ull, uvc = 0ull;
  // Every expansion but the last creates W nodes: 1 + (nexp - 1) * W + min(W, ...) nodes.
  const int max_exp = (N - 1 + W - 1) / W;
  int nexp = 1;
  while (nexp < max_exp) {
    // 1. The node to expand: the warp's best key; (e1, dp, r) decoded from its tie-break.
    const uint32_t bh = static_cast<uint32_t>(bk >> 32), bl = static_cast<uint32_t>(bk);
    const uint32_t mh = __reduce_max_sync(kFull, bh);
    update_ranks<WK>(k, ur, uwa, uva, uwb, uvb);
    k[0] = uwc ? uvc : k[0];
    const uint32_t ml = __reduce_max_sync(kFull, bh == mh ? bl : 0u);
    // t0: clear the hi word of the best leaf (its rank is in the tie-break). If nothing else is
    // left, t0 = (0, lo): below every real key (hi >= ord(-inf) > 0), so it never wins a round
    // that has a candidate, and a round whose maximum hi is 0 ends the expansion.
    unsigned long long t0;
    {
      // bit j of zm: leaf j is this lane's best (its rank is in the tie-break); a mask test, not
      // a dynamic index (which the compiler may turn into a local-memory array)
      const uint32_t zm = 1u << (~bl & 15u);
      auto leaf = [&](int j) { return (zm >> j) & 1u ? (k[j] & 0xffffffffull) : k[j]; };
      unsigned long long kk[WK / 2];  // first tree level fused with the masking (registers)
#pragma unroll
      for (int j = 0; j < WK / 2; ++j) kk[j] = max_u64(leaf(j), leaf(j + WK / 2));
      t0 = lane_best<WK / 2>(kk);
    }
    JETSPEC_BT_PIN(t0);   // computed here, in the shadow of the second redux
    if (mh == 0u) break;  // nothing left to expand
    const uint32_t f = ~ml;
    const int u = static_cast<int>(f & 511u);  // dp * 16 + r
    const int r = u & (kMaxWidth - 1), dp = u >> 4;
    const int e1 = static_cast<int>(f >> 9);
    const int e = nexp;
    // 2. Broadcast loads (every lane computes every value; only the owners' are used).
    const NextParent nx = sm.nxt[kMaxDepth + e1];  // the parent after e1 at depth dp - 1
    const float pa = sm.A[e1];
    const float er = sm.e[u - kMaxWidth], er1 = sm.e[u - kMaxWidth + 1];  // e(dp, r), e(dp, r+1)
    const float ec0 = sm.e[u & ~(kMaxWidth - 1)];                           // e(dp + 1, 0)
    const int pvm = sm.aprev[u - 1], pvr = sm.aprev[u], pvp = sm.aprev[u + 1];
    const float Ap = __fadd_rn(pa, er);  // A of the popped node
    const bool winner = lane == dp;
    const bool child = lane == dp + 1 && has_depth;
    // Winner: rank r advances to nx (a corner if rank r - 1 has consumed it); rank r + 1 becomes
    // a corner if its candidate is e1 too (it waited for (e1, r); its key was 0). Keys are
    // computed unconditionally and masked (selects, no divergent branch).
    const bool ca = nx.e != kEndSlot && (r == 0 || pvm >= nx.e);
    const unsigned long long va =
        (0ull - static_cast<unsigned long long>(ca)) &
        accum_key(__fsub_rn(__fadd_rn(nx.a, er), Cd),
                  (static_cast<uint32_t>(nx.e - kMaxDepth) << 9) | static_cast<uint32_t>(u));
    const bool cb = winner && r + 1 < W && pvp == pvr;
    const unsigned long long vb =
        (0ull - static_cast<unsigned long long>(cb)) &
        accum_key(__fsub_rn(__fadd_rn(pa, er1), Cd), f + 1u);
    // Child: p joins the parents of depth dp + 1; an exhausted rank 0 (key 0) gets it.
    const bool cc = child && r0x;
    const unsigned long long vc =
        accum_key(__fsub_rn(__fadd_rn(Ap, ec0), Cd),
                  (static_cast<uint32_t>(e) << 9) | static_cast<uint32_t>((u & ~15) + 16));
    // All lanes' loads above before any lane's stores below: the winner's store to sm.aprev[u]
    // overwrites the slot every lane has just read (pvr; racecheck's warp-level WAR hazard).
    __syncwarp();
    // 3. Stores (predicated). Node records are derived from (link, cnt, A) after the loop.
    if (winner) sm.aprev[u] = kMaxDepth + e1;
    if (child) sm.nxt[tail] = NextParent{kMaxDepth + e, Ap};
    if (lane == 0) {
      sm.A[e] = Ap;
      sm.link[e] = static_cast<int16_t>(1 + e1 * W + r);
      sm.cnt[e] = static_cast<uint8_t>(dp);
    }
    // 4. This lane's new best; the key writes into k[] wait for the next round.
    const unsigned long long vn = winner ? max_u64(va, vb) : (cc ? vc : 0ull);
    bk = max_u64(winner ? t0 : bk, vn);
    ur = r;
    uwa = winner;
    uva = va;
    uwb = cb;
    uvb = vb;
    uwc = cc;
    uvc = vc;
    if (child) tail = kMaxDepth + e;
    if (winner && r == 0) r0x = nx.e == kEndSlot;
    if (child) r0x = false;
    ++nexp;
    __syncwarp();  // this round's stores before the next round's loads (see above)
  }
  if (lane == 0) sm.count = min(N, 1 + nexp * W);
}

// accum node records from the expansions: node i > 0 is the rank (i-1) % W child of expansion
// (i-1) / W; same formulas as the per-node writes of topn / the CPU op.
__device__ __forceinline__ void accum_records(ExpandSmem& sm, int W, int n, int tid, int nthr) {
  const int nexp = (n - 1 + W - 1) / W;
  for (int e = tid; e < nexp; e += nthr) sm.fc[sm.link[e]] = static_cast<int16_t>(1 + e * W);
  for (int i = 1 + tid; i < n; i += nthr) {
    const int e = (i - 1) / W, rk = (i - 1) - e * W;
    const int dp = sm.cnt[e];
    sm.par[i] = sm.link[e];
    sm.dep[i] = static_cast<uint8_t>(dp + 1);
    sm.rank[i] = static_cast<uint8_t>(rk);
    sm.score[i] = __fsub_rn(__fadd_rn(sm.A[e], sm.e[dp * kMaxWidth + rk]), sm.C[dp + 1]);
    sm.ns[i] = static_cast<int16_t>(rk + 1 < W && i + 1 < n ? i + 1 : -1);
  }
}

__device__ __forceinline__ float topn_score(const ExpandSmem& sm, int p, int d, int r, int W) {
  return __fsub_rn(__fadd_rn(sm.A[p], sm.e[(d - 1) * kMaxWidth + r]), sm.C[d]);
}

__device__ __forceinline__ void expand_topn(ExpandSmem& sm, int D, int W, int N, int lane) {
  const int nl = D * W;  // lists (d, r), d = 1..D: candidates (p, r) over depth d-1 nodes p
  for (int q = lane; q < kMaxLists; q += 32) {  // every slot: rescan_lane reads them all
    sm.ptr[q] = static_cast<int16_t>(q < W ? 0 : -1);
    sm.key[q] = q == 0 ? make_key(topn_score(sm, 0, 1, 0, W), 0) : 0ull;
  }
  for (int t = lane; t <= D; t += 32) sm.tail[t] = static_cast<int16_t>(t == 0 ? 0 : -1);
  if (lane == 0) {
    sm.cnt[0] = 0;
    sm.link[0] = -1;
    sm.last[0] = -1;
  }
  __syncwarp();
  LaneBest lb;
  rescan_lane(sm, nl, lane, lb);
  int count = 1;
  while (count < N) {
    uint32_t mh, ml;
    const int wl = warp_argmax(static_cast<uint32_t>(lb.key >> 32), static_cast<uint32_t>(lb.key),
                               mh, ml);
    if (mh == 0u) break;  // no candidate left
    const int q = __shfl_sync(kFull, lb.q, wl);
    const int p = static_cast<int>(~ml);  // topn keys break ties by the parent index
    const int d = q / W + 1, r = q % W;
    const int i = count;
    const float Cd = sm.C[d];
    const float pA = sm.A[p];
    const float a = __fadd_rn(pA, sm.e[(d - 1) * kMaxWidth + r]);
    const float sc = __fsub_rn(a, Cd);
    const int nx = sm.link[p];  // next depth-(d-1) node
    const int lastp = sm.last[p];
    const int tl = sm.tail[d];
    // List (d, r) advances to nx, available once nx's rank r-1 child exists.
    const unsigned long long key_q =
        (nx >= 0 && sm.cnt[nx] == r)
            ? make_key(__fsub_rn(__fadd_rn(sm.A[nx], sm.e[(d - 1) * kMaxWidth + r]), Cd), nx)
            : 0ull;
    // (p, r + 1) becomes available.
    const bool sib = r + 1 < W && sm.ptr[q + 1] == p;
    const unsigned long long key_s =
        sib ? make_key(__fsub_rn(__fadd_rn(pA, sm.e[(d - 1) * kMaxWidth + r + 1]), Cd), p) : 0ull;
    // The new node heads the depth-(d+1) lists that ran dry (only rank 0 is available).
    const bool new_list = d < D && lane < W;
    const int my_q = d * W + lane;
    const int my_ptr = new_list ? sm.ptr[my_q] : 0;
    const unsigned long long key_c =
        (new_list && lane == 0) ? make_key(__fsub_rn(__fadd_rn(a, sm.e[d * kMaxWidth]), sm.C[d + 1]), i)
                                : 0ull;
    __syncwarp();
    if (new_list && my_ptr < 0) {
      sm.ptr[my_q] = static_cast<int16_t>(i);
      sm.key[my_q] = key_c;
    }
    if (lane == 31) {
      sm.par[i] = static_cast<int16_t>(p);
      sm.dep[i] = static_cast<uint8_t>(d);
      sm.rank[i] = static_cast<uint8_t>(r);
      sm.A[i] = a;
      sm.score[i] = sc;
      sm.fc[i] = -1;
      sm.ns[i] = -1;
      sm.cnt[i] = 0;
      sm.link[i] = -1;
      sm.last[i] = -1;
      if (r == 0)
        sm.fc[p] = static_cast<int16_t>(i);
      else
        sm.ns[lastp] = static_cast<int16_t>(i);
      sm.last[p] = static_cast<int16_t>(i);
      sm.cnt[p] = static_cast<uint8_t>(r + 1);
      if (tl >= 0) sm.link[tl] = static_cast<int16_t>(i);
      sm.tail[d] = static_cast<int16_t>(i);
    }
    if (lane == 30) {
      sm.ptr[q] = static_cast<int16_t>(nx);
      sm.key[q] = key_q;
    }
    if (lane == 29 && sib) sm.key[q + 1] = key_s;
    ++count;
    __syncwarp();
    // Refresh: list q's key went down (its owner rescans); lists q + 1 (sibling) and d * W (a
    // new rank-0 head) can only have gone up. Only one parent heads an available candidate of
    // a list, so keys stay unique.
    if (lane == (q & 31)) {
      rescan_lane(sm, nl, lane, lb);
    } else {
      if (sib && lane == ((q + 1) & 31) && key_s > lb.key) {
        lb.key = key_s;
        lb.q = q + 1;
      }
      if (d < D && lane == ((d * W) & 31)) {
        const unsigned long long k = sm.key[d * W];
        if (k > lb.key) {
          lb.key = k;
          lb.q = d * W;
        }
      }
    }
  }
  if (lane == 0) sm.count = count;
}

template <int K>
__global__ void __launch_bounds__(kExpandThreads)
    build_tree_expand_kernel(const float2* __restrict__ part_ms,
                             const uint2* __restrict__ part_keys, const int64_t* __restrict__ roots,
                             int D, int S, int W, int N, int policy,
                             int64_t* __restrict__ out_tok, int32_t* __restrict__ out_par,
                             int32_t* __restrict__ out_dep, float* __restrict__ out_score,
                             int32_t* __restrict__ out_mask, int32_t* __restrict__ out_num,
                             int32_t* __restrict__ out_fc, int32_t* __restrict__ out_ns) {
  __shared__ ExpandSmem sm;
  const int b = blockIdx.x;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  constexpr int NWARP = kExpandThreads / 32;
  JETSPEC_BT_STAMP(0);

  // 1. Merge the S slices of each depth row.
  for (int d = warp; d < D; d += NWARP) {
    const int64_t row = static_cast<int64_t>(b) * D + d;
    float m = -INFINITY, s = 0.0f;
    uint32_t h[K], l[K];
    if (lane < S) {
      const float2 ms = part_ms[row * S + lane];
      m = ms.x;
      s = ms.y;
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const uint2 k = part_keys[(row * S + lane) * K + j];
        h[j] = k.x;
        l[j] = k.y;
      }
    } else {
#pragma unroll
      for (int j = 0; j < K; ++j) h[j] = l[j] = 0u;
    }
    float M = m;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) M = fmaxf(M, __shfl_xor_sync(kFull, M, off));
    double ds = lane < S ? static_cast<double>(s) * static_cast<double>(exp_rel(m, M)) : 0.0;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) ds += __shfl_xor_sync(kFull, ds, off);
    for (int r = 0; r < W; ++r) {
      uint32_t mh, ml;
      const int wl = warp_argmax(h[0], l[0], mh, ml);
      if (lane == wl) pop_front<K>(h, l);
      if (lane == 0) {
        sm.tok[d * kMaxWidth + r] = static_cast<int32_t>(~ml);
        sm.e[d * kMaxWidth + r] = e_rel(ord_val(mh), M);
      }
    }
    if (lane == 0) sm.logS[d] = static_cast<float>(log(ds));
  }
  __syncthreads();
  JETSPEC_BT_STAMP(1);
  if (tid == 0) {
    sm.C[0] = 0.0f;
    float c = 0.0f;  // running sum in a register (no store-to-load chain through smem)
    for (int d = 0; d < D; ++d) sm.C[d + 1] = c = __fadd_rn(c, sm.logS[d]);
    sm.A[0] = 0.0f;
    sm.score[0] = 0.0f;
    sm.par[0] = -1;
    sm.dep[0] = 0;
    sm.rank[0] = 0;
    sm.fc[0] = -1;
    sm.ns[0] = -1;
    sm.count = 1;
  }
  if (policy == 0) expand_accum_init(sm, W, N, tid, kExpandThreads);
  __syncthreads();
  JETSPEC_BT_STAMP(2);
  // 2. Best-first expansion (warp 0).
  if (warp == 0 && N > 1) {
    if (policy == 0)
      expand_accum<K>(sm, D, W, N, lane);
    else
      expand_topn(sm, D, W, N, lane);
  }
  __syncthreads();
  JETSPEC_BT_STAMP(3);
  const int n = sm.count;
  if (policy == 0 && n > 1) {  // accum: node records from the expansions
    accum_records(sm, W, n, tid, kExpandThreads);
    __syncthreads();
  }
  // 3. Outputs.
  const int NW = (N + 31) / 32;
  const int64_t root = roots[b];
  const int64_t o = static_cast<int64_t>(b) * N;
  if (tid == 0) out_num[b] = n;
  for (int i = tid; i < N; i += kExpandThreads) {
    uint32_t* mrow = reinterpret_cast<uint32_t*>(out_mask + (o + i) * NW);
    if (i < n) {
      const int dd = sm.dep[i];
      out_tok[o + i] = i == 0 ? root : static_cast<int64_t>(sm.tok[(dd - 1) * kMaxWidth + sm.rank[i]]);
      out_par[o + i] = sm.par[i];
      out_dep[o + i] = dd;
      out_score[o + i] = sm.score[i];
      out_fc[o + i] = sm.fc[i];
      out_ns[o + i] = sm.ns[i];
      // Ancestors have strictly decreasing indices: fill words from high to low.
      int cw = NW - 1;
      uint32_t acc = 0u;
      for (int j = i; j >= 0; j = sm.par[j]) {
        const int jw = j >> 5;
        while (cw > jw) {
          mrow[cw--] = acc;
          acc = 0u;
        }
        acc |= 1u << (j & 31);
      }
      mrow[cw--] = acc;
      for (; cw >= 0; --cw) mrow[cw] = 0u;
    } else {
      out_tok[o + i] = root;
      out_par[o + i] = -1;
      out_dep[o + i] = 0;
      out_score[o + i] = -INFINITY;
      out_fc[o + i] = -1;
      out_ns[o + i] = -1;
      for (int w = 0; w < NW; ++w) mrow[w] = w == (i >> 5) ? (1u << (i & 31)) : 0u;
    }
  }
#ifdef JETSPEC_BT_PROBE
  __syncthreads();
  JETSPEC_BT_STAMP(4);
#endif
}

}  // namespace build_tree_kernels
}  // namespace jetspec
