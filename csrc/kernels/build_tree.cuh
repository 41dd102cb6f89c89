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

namespace jetspec {
namespace build_tree_kernels {

constexpr int kMaxDepth = 32;
constexpr int kMaxWidth = 16;
constexpr int kMaxBudget = 1024;
constexpr int kMaxSplits = 32;
constexpr int kStatsThreads = 256;
constexpr int kExpandThreads = 512;
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
  constexpr int NWARP = kStatsThreads / 32;
  const int split = blockIdx.x;
  const int64_t row = blockIdx.y;
  const T* rp = logits + row * static_cast<int64_t>(V);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

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
  auto insert = [&](float x, int id) {
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
  };
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
    const int64_t rec = row * S + split;
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
// Kernel 2: merge + expansion + outputs; one block per batch row.
// ---------------------------------------------------------------------------------------------
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
  int count;
};

__device__ __forceinline__ unsigned long long make_key(float score, int tiebreak) {
  return (static_cast<unsigned long long>(ord_key(score)) << 32) |
         static_cast<uint32_t>(~static_cast<uint32_t>(tiebreak));
}

// Warp-wide argmax over the list keys (all lanes get the result). Returns the winning list, or
// -1 if every list is empty; `tiebreak` = the winner's node (accum) or parent (topn) index.
__device__ __forceinline__ int lists_argmax(const ExpandSmem& sm, int nl, int lane, int& tiebreak) {
  constexpr int JMAX = kMaxDepth * kMaxWidth / 32;
  unsigned long long best = 0ull;
  int bq = -1;
#pragma unroll
  for (int j = 0; j < JMAX; ++j) {  // predicated loads, issued back to back
    const int q = lane + 32 * j;
    const unsigned long long k = q < nl ? sm.key[q] : 0ull;
    if (k > best) {
      best = k;
      bq = q;
    }
  }
  uint32_t mh, ml;
  const int wl = warp_argmax(static_cast<uint32_t>(best >> 32), static_cast<uint32_t>(best), mh, ml);
  const int q = __shfl_sync(kFull, bq, wl);
  tiebreak = static_cast<int>(~ml);
  return mh == 0u ? -1 : q;
}

// The warp runs converged: every lane computes the round's values from broadcast shared-memory
// reads, then designated lanes store them; __syncwarp() separates reads from writes.
__device__ __forceinline__ void expand_accum(ExpandSmem& sm, int D, int W, int N, int lane) {
  const int nl = (D - 1) * W;  // lists of node depth 1..D-1
  for (int q = lane; q < nl; q += 32) {
    sm.ptr[q] = -1;
    sm.key[q] = 0ull;
  }
  for (int t = lane; t <= D; t += 32) sm.tail[t] = -1;
  __syncwarp();
  int count = 1, nexp = 0;
  while (count < N) {
    int p = 0, pq = -1;
    if (nexp > 0) {
      pq = lists_argmax(sm, nl, lane, p);
      if (pq < 0) break;
    }
    const int pd = sm.dep[p];
    const float pA = sm.A[p];
    const int e_old = pq >= 0 ? sm.ptr[pq] : -1;
    const int nx = e_old >= 0 ? sm.link[e_old] : -1;  // next expansion of depth pd - 1
    const int nx_node = 1 + nx * W + (pq >= 0 ? pq % W : 0);
    const float nx_score = nx >= 0 ? sm.score[nx_node] : 0.0f;
    const int tl = sm.tail[pd];
    const int nch = min(W, N - count);
    const int base = count, e = nexp;
    float my_score = 0.0f;
    if (lane < nch) my_score = __fsub_rn(__fadd_rn(pA, sm.e[pd * W + lane]), sm.C[pd + 1]);
    const float my_a = lane < nch ? __fadd_rn(pA, sm.e[pd * W + lane]) : 0.0f;
    const int my_q = pd * W + lane;
    const bool new_list = pd + 1 < D && lane < W;
    const int my_ptr = new_list ? sm.ptr[my_q] : 0;
    __syncwarp();
    if (lane < nch) {
      const int i = base + lane;
      sm.par[i] = static_cast<int16_t>(p);
      sm.dep[i] = static_cast<uint8_t>(pd + 1);
      sm.rank[i] = static_cast<uint8_t>(lane);
      sm.A[i] = my_a;
      sm.score[i] = my_score;
      sm.fc[i] = -1;
      sm.ns[i] = static_cast<int16_t>(lane + 1 < nch ? i + 1 : -1);
      // The new child heads its list (node depth pd + 1) if that list ran dry.
      if (new_list && my_ptr < 0) {
        sm.ptr[my_q] = static_cast<int16_t>(e);
        sm.key[my_q] = make_key(my_score, i);
      }
    } else if (new_list && my_ptr < 0) {  // partial last expansion: the loop ends anyway
      sm.ptr[my_q] = static_cast<int16_t>(e);
      sm.key[my_q] = 0ull;
    }
    if (lane == 31) {
      sm.fc[p] = static_cast<int16_t>(base);
      sm.link[e] = -1;
      if (tl >= 0) sm.link[tl] = static_cast<int16_t>(e);
      sm.tail[pd] = static_cast<int16_t>(e);
    }
    if (lane == 30 && pq >= 0) {  // advance the popped list (its next node already exists)
      sm.ptr[pq] = static_cast<int16_t>(nx);
      sm.key[pq] = nx >= 0 ? make_key(nx_score, nx_node) : 0ull;
    }
    count += nch;
    ++nexp;
    __syncwarp();
  }
  if (lane == 0) sm.count = count;
}

__device__ __forceinline__ float topn_score(const ExpandSmem& sm, int p, int d, int r, int W) {
  return __fsub_rn(__fadd_rn(sm.A[p], sm.e[(d - 1) * W + r]), sm.C[d]);
}

__device__ __forceinline__ void expand_topn(ExpandSmem& sm, int D, int W, int N, int lane) {
  const int nl = D * W;  // lists (d, r), d = 1..D: candidates (p, r) over depth d-1 nodes p
  for (int q = lane; q < nl; q += 32) {
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
  int count = 1;
  while (count < N) {
    int p;
    const int q = lists_argmax(sm, nl, lane, p);
    if (q < 0) break;
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
  if (tid == 0) {
    sm.C[0] = 0.0f;
    for (int d = 0; d < D; ++d) sm.C[d + 1] = __fadd_rn(sm.C[d], sm.logS[d]);
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
  // 2. Best-first expansion (warp 0).
  if (warp == 0 && N > 1) {
    if (policy == 0)
      expand_accum(sm, D, W, N, lane);
    else
      expand_topn(sm, D, W, N, lane);
  }
  __syncthreads();
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
}

}  // namespace build_tree_kernels
}  // namespace jetspec
