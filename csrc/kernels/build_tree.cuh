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
// Each list's head key (orderable score << 32 | ~tiebreak) sits in shared memory; one round =
// warp-wide argmax over <= D*W keys (redux.sync), then O(W) shared-memory updates.
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
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
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
#pragma unroll
  for (int j = 0; j < K; ++j) {
    tv[j] = -INFINITY;
    ti[j] = 0x7fffffff;
  }
  auto insert = [&](float x, int id) { topk_insert<K>(tv, ti, x, id); };
  auto consume_scalar = [&](int id) {
    const float x = scale_logit(to_float(rp[id]), inv_t, scale);
    if (x > m) {
      s = s * exp_rel(m, x);
      m = x;
    }
    s += exp_rel(x, m);
    insert(x, id);
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
// before any use) and kept as raw 16-byte vectors (16 registers for 16-bit logits, so 4 blocks
// fit per SM). Missing elements of a partial tile read as -inf. The fast path costs about six
// instructions per logit (the old per-thread top-K insertion sort cost ~33 and made the kernel
// issue-bound):
//   pass 1: thread maximum m_t of the raw logits (the temperature scaling is monotone, so the
//           scaled maximum is the scaled raw maximum, exactly);
//   pass 2: sum of exp(x - m_t) with ex2.approx (the sum only feeds logS; see the header note);
//   filter: tau_w = the W-th largest thread maximum of warp w (bitonic sort over the lanes). W
//           distinct elements of the tile reach tau_w, so the tile's W-th best is >= tau =
//           max_w tau_w and every element of the tile's top-W is >= tau. Only threads whose
//           maximum reaches tau look at their elements; those >= tau (typically a few W per
//           tile) are appended to shared memory and ranked by counting larger keys (keys
//           (ord(x), ~id) are unique); ranks < W are written out in order.
// Exact path (the streaming kernel's per-element rules: NaN -> -inf, exp_rel, top-K insertion),
// taken by the whole block when a thread sees a NaN logit (the fast sum turns NaN) or a +inf
// maximum, or when more than kCandCap elements reach tau (massive ties, e.g. constant logits).
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
#pragma unroll
  for (int j = 0; j < K; ++j) {
    tv[j] = -INFINITY;
    ti[j] = 0x7fffffff;
  }
  for (int i = 0; i < kTileEPT; ++i) {
    const int id = tile_id<T>(lo, threadIdx.x, i);
    if (id >= hi) continue;
    const float x = scale_logit(to_float(rp[id]), inv_t, scale);
    if (x > m) {
      s = s * exp_rel(m, x);
      m = x;
    }
    s += exp_rel(x, m);
    topk_insert<K>(tv, ti, x, id);
  }
  block_finish<K>(m, s, tv, ti, rec, part_ms, part_keys);
}

template <typename T, int K>
__global__ void __launch_bounds__(kStatsThreads, 4)  // <= 64 registers: 4 blocks (32 warps) per SM
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
#pragma unroll
  for (int u = 0; u < VPT; ++u) {
    const int id0 = lo + (u * kStatsThreads + tid) * VEC;
    if (aligned && id0 + VEC <= hi) {
      raw[u] = __ldg(reinterpret_cast<const uint4*>(rp + id0));
    } else {  // unaligned row or the end of the row: scalar loads, -inf beyond it
      T* e = reinterpret_cast<T*>(&raw[u]);
#pragma unroll
      for (int j = 0; j < VEC; ++j) e[j] = id0 + j < hi ? rp[id0 + j] : from_float<T>(-INFINITY);
    }
  }
  // Pass 1: thread maximum (fmaxf skips NaN).
  float mraw = -INFINITY;
#pragma unroll
  for (int u = 0; u < VPT; ++u)
#pragma unroll
    for (int j = 0; j < VEC; ++j) mraw = fmaxf(mraw, vec_elem<T>(raw[u], j));
  const float m = scale ? __fmul_rn(mraw, inv_t) : mraw;
  // Pass 2: sum of exp(x - m) = 2^(x * c - m * log2 e), c = log2 e (times 1/T when scaling).
  float s = 0.0f;
  bool need_exact = false;
  if (isfinite(m)) {
    constexpr float kLog2e = 1.4426950408889634f;
    const float c = scale ? inv_t * kLog2e : kLog2e;
    const float mb = -m * kLog2e;
#pragma unroll
    for (int u = 0; u < VPT; ++u)
#pragma unroll
      for (int j = 0; j < VEC; ++j) s += fast_exp2(fmaf(vec_elem<T>(raw[u], j), c, mb));
    need_exact = isnan(s);  // a NaN logit
  } else if (m > 0.0f) {
    need_exact = true;  // +inf maximum
  } else {  // every logit -inf (or missing) or NaN: exp_rel's x == m rule, 1 per -inf logit
#pragma unroll
    for (int u = 0; u < VPT; ++u) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        need_exact |= isnan(vec_elem<T>(raw[u], j));
        s += lo + (u * kStatsThreads + tid) * VEC + j < hi ? 1.0f : 0.0f;
      }
    }
  }

  // tau_w: W-th largest thread maximum of the warp (a thread whose logits are all -inf counts
  // as a -inf element: tau is then -inf and every logit is a candidate, still exact).
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
  const bool warp_exact = __ballot_sync(kFull, need_exact) != 0u;
  __shared__ uint32_t sh_tau[NWARP];
  __shared__ int sh_exact[NWARP];
  __shared__ int sh_count;
  __shared__ unsigned long long sh_cand[kCandCap];
  if (lane == 0) {
    sh_tau[warp] = tau_w;
    sh_exact[warp] = warp_exact;
  }
  if (tid == 0) sh_count = 0;
  __syncthreads();
  uint32_t tau = sh_tau[0];
  int exact = sh_exact[0];
#pragma unroll
  for (int w = 1; w < NWARP; ++w) {
    tau = max(tau, sh_tau[w]);
    exact |= sh_exact[w];
  }
  if (exact) {  // uniform over the block
    stats_tile_exact<T, K>(rp, lo, hi, inv_t, scale, rec, part_ms, part_keys);
    return;
  }
  const float tau_f = ord_val(tau);

  // Append the candidates (x >= tau_f): only threads whose maximum reaches tau have any.
  if (m >= tau_f) {
#pragma unroll
    for (int u = 0; u < VPT; ++u) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        float x = vec_elem<T>(raw[u], j);
        if (scale) x = __fmul_rn(x, inv_t);
        const int id = lo + (u * kStatsThreads + tid) * VEC + j;
        if (x >= tau_f && id < hi) {
          const int pos = atomicAdd(&sh_count, 1);
          if (pos < kCandCap)
            sh_cand[pos] = (static_cast<unsigned long long>(ord_key(x)) << 32) |
                           static_cast<uint32_t>(~static_cast<uint32_t>(id));
        }
      }
    }
  }
  __syncthreads();
  const int c = sh_count;
  if (c > kCandCap) {  // uniform
    stats_tile_exact<T, K>(rp, lo, hi, inv_t, scale, rec, part_ms, part_keys);
    return;
  }
  // Rank by counting (unique keys); ranks < W are the tile's top-W in order.
  for (int t = tid; t < c; t += kStatsThreads) {
    const unsigned long long key = sh_cand[t];
    int rank = 0;
#pragma unroll 8
    for (int j = 0; j < c; ++j) rank += sh_cand[j] > key ? 1 : 0;
    if (rank < W)
      part_keys[rec * K + rank] =
          make_uint2(static_cast<uint32_t>(key >> 32), static_cast<uint32_t>(key));
  }
  if (tid < K && tid >= min(c, W))
    part_keys[rec * K + tid] = make_uint2(ord_key(-INFINITY), ~0x7fffffffu);
  // (max, sum) of the tile.
  float bm = m, bs = s;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float om = __shfl_xor_sync(kFull, bm, off);
    const float os = __shfl_xor_sync(kFull, bs, off);
    merge_ms(bm, bs, om, os);
  }
  __shared__ float sh_m[NWARP], sh_s[NWARP];
  if (lane == 0) {
    sh_m[warp] = bm;
    sh_s[warp] = bs;
  }
  __syncthreads();
  if (tid == 0) {
    float tm = sh_m[0], ts = sh_s[0];
#pragma unroll
    for (int w = 1; w < NWARP; ++w) merge_ms(tm, ts, sh_m[w], sh_s[w]);
    part_ms[rec] = make_float2(tm, ts);
  }
}

// ---------------------------------------------------------------------------------------------
// Kernel 2: merge + expansion + outputs; one block per batch row.
// ---------------------------------------------------------------------------------------------
// accum: the parent that follows an expansion at its depth, with its cumulative A (one 8-byte
// load advances a rank pointer).
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
  // per-depth tables (row j = depth j + 1)
  int32_t tok[kMaxDepth * kMaxWidth];
  float e[kMaxDepth * kMaxWidth];
  float logS[kMaxDepth];
  float C[kMaxDepth + 1];
  // nodes
  float A[kMaxBudget];
  float score[kMaxBudget];
  int16_t par[kMaxBudget];
  int16_t fc[kMaxBudget];
  int16_t ns[kMaxBudget];
  int16_t link[kMaxBudget];  // accum: next expansion at the same depth; topn: next node, same depth
  int16_t last[kMaxBudget];  // topn: last created child
  uint8_t dep[kMaxBudget];
  uint8_t rank[kMaxBudget];
  uint8_t cnt[kMaxBudget];  // topn: children created
  // candidate lists
  unsigned long long key[kMaxDepth * kMaxWidth];
  int16_t ptr[kMaxDepth * kMaxWidth];
  int16_t tail[kMaxDepth + 1];
  // accum: per-lane rank pointers [rank * 32 + lane] and parent links (see expand_accum)
  int16_t aptr[kMaxWidth * 32];
  float apa[kMaxWidth * 32];
  NextParent nxt[kMaxBudget];
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
// children of the depth-(d-1) expansions. For rank r, aptr[r] is the next parent (expansion
// index, in expansion order) whose rank-r child is unexpanded (kEndPtr: none) and apa[r] its
// cumulative A; parents come in expansion order through the nxt links. A parent's rank r-1 child
// is always expanded before its rank r child (never a lower key), so the pointers form a
// staircase (aptr[r-1] >= aptr[r]) and only its corners (aptr[r] < aptr[r-1]) can be the depth's
// best: their keys sit in the lane's registers k[r] (0 = not a corner). A pop changes at most
// three keys: the winner lane's ranks r and r+1 and the child lane's rank 0 (the new parent is
// the worst of its depth, so only an exhausted rank 0 gains a candidate). Each round is then
// one warp argmax, a few shared loads and one register argmax per lane, with no rescan of
// shared-memory lists and no division on the critical path. Lanes touch only their own rows of
// aptr / apa / nxt, so no __syncwarp is needed between rounds. Node of (expansion e, rank r) =
// 1 + e * W + r (its creation index: the tie-break).
constexpr int kEndPtr = 0x7fff;

template <int WK>
__device__ __forceinline__ void lane_argmax(const unsigned long long (&k)[WK], unsigned long long& bk,
                                            int& br) {
  unsigned long long kk[WK];
  int ii[WK];
#pragma unroll
  for (int j = 0; j < WK; ++j) {
    kk[j] = k[j];
    ii[j] = j;
  }
#pragma unroll
  for (int w = WK / 2; w > 0; w /= 2) {
#pragma unroll
    for (int j = 0; j < w; ++j) {
      if (kk[j + w] > kk[j]) {  // keys are unique unless 0
        kk[j] = kk[j + w];
        ii[j] = ii[j + w];
      }
    }
  }
  bk = kk[0];
  br = ii[0];
}

template <int WK>
__device__ __forceinline__ void expand_accum(ExpandSmem& sm, int D, int W, int N, int lane) {
  static_assert(WK == 8 || WK == 16, "rank registers");
  const bool has_depth = lane >= 1 && lane < D;
  const float Cd = has_depth ? sm.C[lane] : 0.0f;
  const int erow = has_depth ? (lane - 1) * W : 0;  // sm.e row of depth `lane`
#pragma unroll
  for (int j = 0; j < WK; ++j) sm.aptr[j * 32 + lane] = static_cast<int16_t>(kEndPtr);
  unsigned long long k[WK];
#pragma unroll
  for (int j = 0; j < WK; ++j) k[j] = 0ull;
  unsigned long long bkey = 0ull;  // this lane's best key, its rank and its A
  int br = 0;
  float ba = 0.0f;
  int tail = -1;  // last parent (expansion) of this lane's depth
  int count = 1, nexp = 0;
  while (count < N) {
    // 1. The node to expand: the root first, then the best key of the warp.
    int p = 0, dp = 0;
    float Ap = 0.0f;
    if (nexp > 0) {
      uint32_t mh, ml;
      const int wl = warp_argmax(static_cast<uint32_t>(bkey >> 32), static_cast<uint32_t>(bkey),
                                 mh, ml);
      if (mh == 0u) break;  // nothing left to expand
      p = static_cast<int>(~ml);
      dp = wl;  // the winning lane is the popped node's depth
      Ap = __shfl_sync(kFull, ba, wl);
    }
    const int nch = min(W, N - count), base = count, e = nexp;
    int ra = -1, rb = -1;  // ranks whose key changes in this lane, and their new keys
    unsigned long long va = 0ull, vb = 0ull;
    // 2. Winner: rank br's pointer moves past e1 (p's parent) to the next parent of the depth.
    if (nexp > 0 && lane == dp) {
      const int r = br;
      const int e1 = sm.aptr[r * 32 + lane];
      const float a1 = sm.apa[r * 32 + lane];
      const int prev = r > 0 ? static_cast<int>(sm.aptr[(r - 1) * 32 + lane]) : kEndPtr + 1;
      const int nextr = r + 1 < W ? static_cast<int>(sm.aptr[(r + 1) * 32 + lane]) : -1;
      const NextParent L = sm.nxt[e1];
      const int e2 = L.e;
      const float a2 = L.a;
      sm.aptr[r * 32 + lane] = static_cast<int16_t>(e2);
      sm.apa[r * 32 + lane] = a2;
      ra = r;
      if (e2 != kEndPtr && prev > e2)
        va = make_key(__fsub_rn(__fadd_rn(a2, sm.e[erow + r]), Cd), 1 + e2 * W + r);
      if (nextr == e1) {  // (e1, r + 1) was blocked by (e1, r): now a corner
        rb = r + 1;
        vb = make_key(__fsub_rn(__fadd_rn(a1, sm.e[erow + r + 1]), Cd), 1 + e1 * W + r + 1);
      }
    }
    // 3. Child lane (depth dp + 1, if its nodes can still be expanded): p joins its parents.
    if (lane == dp + 1 && lane < D) {
      sm.nxt[e] = NextParent{kEndPtr, 0.0f};
      if (tail >= 0) sm.nxt[tail] = NextParent{e, Ap};
      tail = e;
      // The exhausted ranks (a prefix of the staircase) now point at p; rank 0 is a corner.
      const bool r0_exhausted = sm.aptr[lane] == kEndPtr;
#pragma unroll
      for (int j = 0; j < WK; ++j) {
        if (j < W && sm.aptr[j * 32 + lane] == kEndPtr) {
          sm.aptr[j * 32 + lane] = static_cast<int16_t>(e);
          sm.apa[j * 32 + lane] = Ap;
        }
      }
      if (r0_exhausted) {
        ra = 0;
        va = make_key(__fsub_rn(__fadd_rn(Ap, sm.e[erow]), Cd), 1 + e * W);
      }
    }
    // 4. The new nodes (read back by the output phase after __syncthreads).
    if (lane < nch) {
      const int i = base + lane;
      sm.par[i] = static_cast<int16_t>(p);
      sm.dep[i] = static_cast<uint8_t>(dp + 1);
      sm.rank[i] = static_cast<uint8_t>(lane);
      sm.score[i] = __fsub_rn(__fadd_rn(Ap, sm.e[dp * W + lane]), sm.C[dp + 1]);
      sm.fc[i] = -1;
      sm.ns[i] = static_cast<int16_t>(lane + 1 < nch ? i + 1 : -1);
    }
    if (lane == 31) sm.fc[p] = static_cast<int16_t>(base);
    count += nch;
    ++nexp;
    // 5. Refresh this lane's best (and the A of its best, broadcast if it wins).
    if (ra >= 0) {
#pragma unroll
      for (int j = 0; j < WK; ++j) {
        if (j == ra) k[j] = va;
        if (j == rb) k[j] = vb;
      }
      lane_argmax<WK>(k, bkey, br);
      ba = bkey ? __fadd_rn(sm.apa[br * 32 + lane], sm.e[erow + br]) : 0.0f;
    }
  }
  if (lane == 0) sm.count = count;
}

__device__ __forceinline__ float topn_score(const ExpandSmem& sm, int p, int d, int r, int W) {
  return __fsub_rn(__fadd_rn(sm.A[p], sm.e[(d - 1) * W + r]), sm.C[d]);
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
    const float a = __fadd_rn(pA, sm.e[(d - 1) * W + r]);
    const float sc = __fsub_rn(a, Cd);
    const int nx = sm.link[p];  // next depth-(d-1) node
    const int lastp = sm.last[p];
    const int tl = sm.tail[d];
    // List (d, r) advances to nx, available once nx's rank r-1 child exists.
    const unsigned long long key_q =
        (nx >= 0 && sm.cnt[nx] == r)
            ? make_key(__fsub_rn(__fadd_rn(sm.A[nx], sm.e[(d - 1) * W + r]), Cd), nx)
            : 0ull;
    // (p, r + 1) becomes available.
    const bool sib = r + 1 < W && sm.ptr[q + 1] == p;
    const unsigned long long key_s =
        sib ? make_key(__fsub_rn(__fadd_rn(pA, sm.e[(d - 1) * W + r + 1]), Cd), p) : 0ull;
    // The new node heads the depth-(d+1) lists that ran dry (only rank 0 is available).
    const bool new_list = d < D && lane < W;
    const int my_q = d * W + lane;
    const int my_ptr = new_list ? sm.ptr[my_q] : 0;
    const unsigned long long key_c =
        (new_list && lane == 0) ? make_key(__fsub_rn(__fadd_rn(a, sm.e[d * W]), sm.C[d + 1]), i)
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
        sm.tok[d * W + r] = static_cast<int32_t>(~ml);
        sm.e[d * W + r] = e_rel(ord_val(mh), M);
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
  // 3. Outputs.
  const int n = sm.count;
  const int NW = (N + 31) / 32;
  const int64_t root = roots[b];
  const int64_t o = static_cast<int64_t>(b) * N;
  if (tid == 0) out_num[b] = n;
  for (int i = tid; i < N; i += kExpandThreads) {
    uint32_t* mrow = reinterpret_cast<uint32_t*>(out_mask + (o + i) * NW);
    if (i < n) {
      const int dd = sm.dep[i];
      out_tok[o + i] = i == 0 ? root : static_cast<int64_t>(sm.tok[(dd - 1) * W + sm.rank[i]]);
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
