// Kernels of jetspec::tree_accept (torch-free; raw pointers). Semantics:
// jetspec_ext/reference/accept.py. Launch sequence (csrc/cuda/accept_cuda.cu):
//
//   greedy:   chunk_argmax_kernel -> merge_argmax_kernel -> walk_kernel
//   sampling: [filter_threshold_kernel, top-k / top-p only] -> chunk_softmax_kernel
//             -> walk_kernel
//
// chunk_* kernels split every node's vocabulary over many blocks (one read of the logits with
// 16-byte loads). Greedy keeps each chunk's (max, first argmax). Sampling uses inverse-CDF
// sampling: each chunk keeps (max, sum of exp) of its kept scores. The last block to finish a
// node (an atomic ticket per node) merges that node's chunks into its choice: greedy, the
// argmax; sampling, it picks the chunk holding u * Z (u: the node's uniform) and rescans that
// one chunk in token order to find the token. One exp per logit, no per-logit random numbers.
// walk_kernel validates the tree, marks the children the target follows and walks them.
//
// Sampling at every node in parallel and then walking is exactly the sequential procedure,
// because every node has its own independent uniform (csrc/kernels/rng.h).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "kernels/rng.h"

namespace jetspec {
namespace accept {

constexpr int kThreads = 256;       // chunk kernels' block size
constexpr int kLoadsPerThread = 4;  // 16-byte loads in flight per thread
constexpr int kWalkThreads = 512;
constexpr int kFilterThreads = 512;

template <typename T>
struct VecTraits;
template <>
struct VecTraits<float> {
  static constexpr int kVec = 4;
};
template <>
struct VecTraits<__half> {
  static constexpr int kVec = 8;
};
template <>
struct VecTraits<__nv_bfloat16> {
  static constexpr int kVec = 8;
};

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {  // one 16-byte vector (or one element when VEC == 1)
  T v[VEC];
};

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

// Maximum of a pack (packed half2 / bfloat162 maxima where available: fewer instructions).
template <int VEC>
__device__ __forceinline__ float pack_max(const Pack<float, VEC>& p) {
  float m = p.v[0];
#pragma unroll
  for (int e = 1; e < VEC; ++e) m = fmaxf(m, p.v[e]);
  return m;
}
template <int VEC>
__device__ __forceinline__ float pack_max(const Pack<__nv_bfloat16, VEC>& p) {
  if constexpr (VEC == 1) return to_f(p.v[0]);  // a lone element is not 4-byte aligned
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(p.v);
  __nv_bfloat162 m = h[0];
#pragma unroll
  for (int e = 1; e < VEC / 2; ++e) m = __hmax2(m, h[e]);
  return fmaxf(__low2float(m), __high2float(m));
}
template <int VEC>
__device__ __forceinline__ float pack_max(const Pack<__half, VEC>& p) {
  if constexpr (VEC == 1) return to_f(p.v[0]);  // a lone element is not 4-byte aligned
  const __half2* h = reinterpret_cast<const __half2*>(p.v);
  __half2 m = h[0];
#pragma unroll
  for (int e = 1; e < VEC / 2; ++e) m = __hmax2(m, h[e]);
  return fmaxf(__low2float(m), __high2float(m));
}

// (value, index) with "larger value wins, lower index on ties".
__device__ __forceinline__ bool better(float v, int32_t i, float bv, int32_t bi) {
  return v > bv || (v == bv && i < bi);
}

// Order-preserving map float -> uint32 (larger float, larger key).
__device__ __forceinline__ uint32_t float_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_float(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// 2^x with the special-function unit (relative error ~2^-22; ex2(-inf) = 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
constexpr float kLog2e = 1.4426950408889634f;

// True in every thread of the block that finishes a node last (atomic ticket per node), after
// a fence, so that block can read all the node's chunk partials. Resets nothing: the launcher
// hands in zeroed tickets each call.
__device__ __forceinline__ bool last_block_of_row(int* tickets, int64_t row, int num_chunks) {
  __shared__ bool last;
  __syncthreads();  // this block's partial is written (by thread 0) before the ticket
  if (threadIdx.x == 0) {
    __threadfence();
    last = atomicAdd(&tickets[row], 1) == num_chunks - 1;
    if (last) __threadfence();
  }
  __syncthreads();
  return last;
}

// Calls f(pack, first_index) for every 16-byte pack of [begin, end) handled by this thread,
// with kLoadsPerThread loads in flight. begin/end multiples of VEC.
template <typename T, int VEC, typename F>
__device__ __forceinline__ void for_each_pack(const T* row, int64_t begin, int64_t end, F&& f) {
  using P = Pack<T, VEC>;
  const P* packs = reinterpret_cast<const P*>(row);
  const int64_t pb = begin / VEC, pe = end / VEC;
  for (int64_t p0 = pb + threadIdx.x; p0 < pe; p0 += int64_t(kThreads) * kLoadsPerThread) {
    P buf[kLoadsPerThread];
#pragma unroll
    for (int u = 0; u < kLoadsPerThread; ++u) {
      const int64_t p = p0 + int64_t(u) * kThreads;
      if (p < pe) buf[u] = packs[p];
    }
#pragma unroll
    for (int u = 0; u < kLoadsPerThread; ++u) {
      const int64_t p = p0 + int64_t(u) * kThreads;
      if (p < pe) f(buf[u], p * VEC);
    }
  }
}

// Block-wide "better" reduction of (value, index); result valid in thread 0.
template <int THREADS>
__device__ __forceinline__ void block_best(float& v, int32_t& i) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, off);
    const int32_t oi = __shfl_xor_sync(0xffffffffu, i, off);
    if (better(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
  __shared__ float sv[THREADS / 32];
  __shared__ int32_t si[THREADS / 32];
  if (threadIdx.x % 32 == 0) {
    sv[threadIdx.x / 32] = v;
    si[threadIdx.x / 32] = i;
  }
  __syncthreads();
  if (threadIdx.x == 0)
    for (int w = 1; w < THREADS / 32; ++w)
      if (better(sv[w], si[w], v, i)) {
        v = sv[w];
        i = si[w];
      }
}

// Greedy. Grid (num_chunks, rows). Each block writes its chunk's max and first argmax.
// VEC == 1: scalar fallback when V is not a multiple of the vector width.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    chunk_argmax_kernel(const T* __restrict__ logits, int64_t V, int64_t chunk_len,
                        float* __restrict__ part_val, int32_t* __restrict__ part_idx) {
  const int64_t row = blockIdx.y, chunk = blockIdx.x;
  const int64_t begin = chunk * chunk_len, end = min(V, begin + chunk_len);
  const T* row_ptr = logits + row * V;
  float best_v = -INFINITY;
  int32_t best_i = INT32_MAX;
  if constexpr (VEC > 1) {
    // Indices a thread visits increase, so a later equal value never replaces the best:
    // a pack only matters if its max is strictly larger (or it holds the first -inf of a
    // row that is entirely -inf, handled by the INT32_MAX test).
    for_each_pack<T, VEC>(row_ptr, begin, end, [&](const Pack<T, VEC>& p, int64_t i0) {
      const float m = pack_max<VEC>(p);
      if (m > best_v || (m == best_v && best_i == INT32_MAX)) {
#pragma unroll
        for (int e = 0; e < VEC; ++e)
          if (to_f(p.v[e]) == m) {
            best_v = m;
            best_i = static_cast<int32_t>(i0 + e);
            break;
          }
      }
    });
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
      const float x = to_f(row_ptr[i]);
      if (x > best_v || (x == best_v && best_i == INT32_MAX)) {
        best_v = x;
        best_i = static_cast<int32_t>(i);
      }
    }
  }
  block_best<kThreads>(best_v, best_i);
  if (threadIdx.x == 0) {
    part_val[row * gridDim.x + chunk] = best_v;
    part_idx[row * gridDim.x + chunk] = best_i;  // INT32_MAX: empty (NaN-only) chunk
  }
}

// Greedy merge: one warp per node, lanes over the node's chunks. Writes choice[row].
constexpr int kMergeThreads = 256;
__global__ void __launch_bounds__(kMergeThreads)
    merge_argmax_kernel(const float* __restrict__ part_val, const int32_t* __restrict__ part_idx,
                        int64_t rows, int num_chunks, int64_t* __restrict__ choice) {
  const int64_t row = int64_t(blockIdx.x) * (kMergeThreads / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  float bv = -INFINITY;
  int32_t bi = INT32_MAX;
  for (int c = lane; c < num_chunks; c += 32) {
    const float v = part_val[row * num_chunks + c];
    const int32_t i = part_idx[row * num_chunks + c];
    if (better(v, i, bv, bi)) {
      bv = v;
      bi = i;
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
    const int32_t oi = __shfl_xor_sync(0xffffffffu, bi, off);
    if (better(ov, oi, bv, bi)) {
      bv = ov;
      bi = oi;
    }
  }
  if (lane == 0) choice[row] = bi == INT32_MAX ? 0 : bi;  // INT32_MAX: an all-NaN row
}

// Sampling. Grid (num_chunks, rows). Scores s = x * (1/T); kept: s >= threshold (FILTERED)
// or all. Each block writes its chunk's (max, sum of 2^(t - max)) in log2 units t = s * log2 e;
// the node's last block then draws the node's token by inverse CDF (select_in_chunk).
template <typename T, int VEC, bool FILTERED>
__global__ void __launch_bounds__(kThreads)
    chunk_softmax_kernel(const T* __restrict__ logits, int64_t V, int64_t chunk_len,
                         float inv_t, const float* __restrict__ thresholds,
                         float* __restrict__ part_max, float* __restrict__ part_sum,
                         int* __restrict__ tickets, const int64_t* __restrict__ rng_state,
                         int64_t* __restrict__ choice) {
  const int64_t row = blockIdx.y, chunk = blockIdx.x;
  const int64_t begin = chunk * chunk_len, end = min(V, begin + chunk_len);
  const T* row_ptr = logits + row * V;
  const float thresh = FILTERED ? thresholds[row] : -INFINITY;
  const float k2 = inv_t * kLog2e;
  float m2 = -INFINITY, s = 0.f;  // running max (log2 units) and sum of 2^(t - m2)
  if constexpr (VEC > 1) {
    for_each_pack<T, VEC>(row_ptr, begin, end, [&](const Pack<T, VEC>& p, int64_t) {
      const float pm = pack_max<VEC>(p);
      if (pm == -INFINITY) return;  // nothing to add (also keeps m2 finite below)
      if constexpr (FILTERED) {
        if (!(pm * inv_t >= thresh)) return;  // no kept token in this pack
      }
      const float pm2 = pm * k2;
      if (pm2 > m2) {
        s *= fast_exp2(m2 - pm2);
        m2 = pm2;
      }
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const float x = to_f(p.v[e]);
        const float w = fast_exp2(fmaf(x, k2, -m2));
        if constexpr (FILTERED) {
          s += (x * inv_t >= thresh) ? w : 0.f;
        } else {
          s += w;
        }
      }
    });
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
      const float x = to_f(row_ptr[i]);
      if (x == -INFINITY || !(x * inv_t >= thresh)) continue;
      const float t = x * k2;
      if (t > m2) {
        s *= fast_exp2(m2 - t);
        m2 = t;
      }
      s += fast_exp2(fmaf(x, k2, -m2));
    }
  }
  // Block merge of (m2, s).
  auto merge = [](float& m, float& acc, float om, float os) {
    const float nm = fmaxf(m, om);
    if (nm == -INFINITY) return;
    acc = (m == -INFINITY ? 0.f : acc * fast_exp2(m - nm)) +
          (om == -INFINITY ? 0.f : os * fast_exp2(om - nm));
    m = nm;
  };
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
    merge(m2, s, __shfl_xor_sync(0xffffffffu, m2, off), __shfl_xor_sync(0xffffffffu, s, off));
  __shared__ float sm[kThreads / 32], ss[kThreads / 32];
  if (threadIdx.x % 32 == 0) {
    sm[threadIdx.x / 32] = m2;
    ss[threadIdx.x / 32] = s;
  }
  __syncthreads();
  const int num_chunks = gridDim.x;
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w) merge(m2, s, sm[w], ss[w]);
    part_max[row * num_chunks + chunk] = m2;
    part_sum[row * num_chunks + chunk] = s;
  }
  if (!last_block_of_row(tickets, row, num_chunks)) return;

  // ---- the node's last block: pick the chunk holding u * Z, then the token inside it ----
  __shared__ int sh_chunk;
  __shared__ float sh_m2, sh_resid, warp_tot[kThreads / 32];
  __shared__ int64_t sh_found;
  if (threadIdx.x == 0) {
    const float* pm = part_max + row * num_chunks;
    const float* ps = part_sum + row * num_chunks;
    float M2 = -INFINITY;
    for (int c = 0; c < num_chunks; ++c) M2 = fmaxf(M2, __ldcg(pm + c));
    float Z = 0.f;
    for (int c = 0; c < num_chunks; ++c) {
      const float mc = __ldcg(pm + c);
      if (mc != -INFINITY) Z += __ldcg(ps + c) * fast_exp2(mc - M2);
    }
    const uint64_t base = rng_row_base(static_cast<uint64_t>(rng_state[0]),
                                       static_cast<uint64_t>(rng_state[1]),
                                       static_cast<uint64_t>(row));
    const float target = rng_uniform(base, 0) * Z;
    float cum = 0.f;
    int chosen = -1;
    for (int c = 0; c < num_chunks; ++c) {
      const float mc = __ldcg(pm + c);
      if (mc == -INFINITY) continue;
      const float w = __ldcg(ps + c) * fast_exp2(mc - M2);
      chosen = c;
      if (cum + w > target) break;
      cum += w;
    }
    sh_chunk = chosen;  // -1 only if nothing is kept (an all -inf row): token 0
    sh_m2 = M2;
    sh_resid = target - cum;
    sh_found = -1;
  }
  __syncthreads();
  const int c = sh_chunk;
  if (c < 0) {
    if (threadIdx.x == 0) choice[row] = 0;
    return;
  }
  const float M2 = sh_m2;
  float resid = sh_resid;
  const int64_t cb = c * chunk_len, ce = min(V, cb + chunk_len);
  constexpr int kPer = 8;  // contiguous tokens per thread per tile
  int64_t last_kept = -1;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t t0 = cb; t0 < ce; t0 += int64_t(kThreads) * kPer) {
    const int64_t i0 = t0 + int64_t(threadIdx.x) * kPer;
    float w[kPer];
    float local = 0.f;
#pragma unroll
    for (int e = 0; e < kPer; ++e) {
      const int64_t i = i0 + e;
      w[e] = 0.f;
      if (i < ce) {
        const float x = to_f(row_ptr[i]);
        if (x != -INFINITY && x * inv_t >= thresh) {
          w[e] = fast_exp2(fmaf(x, k2, -M2));
          last_kept = i;
        }
      }
      local += w[e];
    }
    float incl = local;  // inclusive scan over the block (warp shuffles, then warp totals)
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const float o = __shfl_up_sync(0xffffffffu, incl, off);
      if (lane >= off) incl += o;
    }
    if (lane == 31) warp_tot[warp] = incl;
    __syncthreads();
    float warp_off = 0.f, tile_tot = 0.f;
    for (int k = 0; k < kThreads / 32; ++k) {
      if (k < warp) warp_off += warp_tot[k];
      tile_tot += warp_tot[k];
    }
    const float excl = warp_off + incl - local;
    if (local > 0.f && excl <= resid && resid < excl + local) {
      float acc = excl;
#pragma unroll
      for (int e = 0; e < kPer; ++e) {
        if (w[e] > 0.f) {
          acc += w[e];
          if (resid < acc) {
            sh_found = i0 + e;  // exactly one thread's interval holds resid
            break;
          }
        }
      }
    }
    __syncthreads();
    if (sh_found >= 0) break;
    resid -= tile_tot;
    __syncthreads();  // warp_tot is reused by the next tile
  }
  // Rounding can leave resid just past the chunk's total: take the chunk's last kept token.
  if (sh_found < 0) {
    __shared__ unsigned long long lk;
    if (threadIdx.x == 0) lk = 0;
    __syncthreads();
    if (last_kept >= 0) atomicMax(&lk, static_cast<unsigned long long>(last_kept) + 1ull);
    __syncthreads();
    if (threadIdx.x == 0) choice[row] = lk > 0 ? static_cast<int64_t>(lk - 1) : 0;
  } else if (threadIdx.x == 0) {
    choice[row] = sh_found;
  }
}

// Score threshold of the filtered distribution of one node (one block per node), scores
// s = x * (1/T). Top-k: the largest key t with count(key >= t) >= k (the k-th largest score).
// Top-p: then the largest key t above that with mass(key >= t) >= top_p * mass(kept).
// Radix select over the order-preserving 32-bit keys, 4 passes of 8 bits. Histograms are
// warp-aggregated (__match_any_sync + __reduce_add_sync) so equal bins cost one atomic per
// warp; masses are exp(s - max) in 2^-40 fixed point, so sums are exact integers
// (deterministic; error <= V * 2^-40 of the total).
template <typename T, int VEC>
__global__ void __launch_bounds__(kFilterThreads)
    filter_threshold_kernel(const T* __restrict__ logits, int64_t V, float inv_t, int64_t top_k,
                            double top_p, float* __restrict__ thresholds) {
  using P = Pack<T, VEC>;
  const int64_t row = blockIdx.x;
  const T* row_ptr = logits + row * V;
  const P* packs = reinterpret_cast<const P*>(row_ptr);
  const int64_t npacks = V / VEC;  // the launcher guarantees V % VEC == 0
  __shared__ unsigned long long hist[256];
  __shared__ float red[kFilterThreads / 32];
  __shared__ uint32_t sh_prefix;
  __shared__ unsigned long long sh_above, sh_total;
  const int lane = threadIdx.x % 32;
  constexpr float kFixed = 1099511627776.0f;  // 2^40

  // Warp-uniform trip count so the warp intrinsics below always see full warps.
  const int64_t stride = kFilterThreads;
  const int64_t trips = (npacks + stride - 1) / stride;

  float m = -INFINITY;
  for (int64_t t = 0; t < trips; ++t) {
    const int64_t p = t * stride + threadIdx.x;
    if (p < npacks) m = fmaxf(m, pack_max<VEC>(packs[p]) * inv_t);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  if (lane == 0) red[threadIdx.x / 32] = m;
  __syncthreads();
  m = red[0];
  for (int w = 1; w < kFilterThreads / 32; ++w) m = fmaxf(m, red[w]);

  uint32_t floor_key = 0;
  auto radix_select = [&](bool use_mass, unsigned long long target) -> uint32_t {
    uint32_t prefix = 0, prefix_mask = 0;
    unsigned long long above = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
      __syncthreads();
      for (int b = threadIdx.x; b < 256; b += kFilterThreads) hist[b] = 0;
      __syncthreads();
      for (int64_t t = 0; t < trips; ++t) {
        const int64_t p = t * stride + threadIdx.x;
        P pk;
        if (p < npacks) pk = packs[p];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          bool counts = false;
          int bin = 0;
          unsigned long long w = 1ull;
          if (p < npacks) {
            const float sc = to_f(pk.v[e]) * inv_t;
            const uint32_t k = float_key(sc);
            counts = k >= floor_key && (k & prefix_mask) == prefix;
            bin = static_cast<int>((k >> shift) & 0xffu);
            if (use_mass && counts) w = static_cast<unsigned long long>(__expf(sc - m) * kFixed);
          }
          // Only lanes that count take part in the aggregation (non-counting lanes would
          // each form a group of their own and serialise the warp).
          const unsigned counting = __ballot_sync(0xffffffffu, counts);
          if (counts) {
            const unsigned grp = __match_any_sync(counting, bin);
            const bool leader = lane == __ffs(grp) - 1;
            if (!use_mass) {
              if (leader) atomicAdd(&hist[bin], static_cast<unsigned long long>(__popc(grp)));
            } else {
              const uint32_t shi = __reduce_add_sync(grp, static_cast<uint32_t>(w >> 20));
              const uint32_t slo = __reduce_add_sync(grp, static_cast<uint32_t>(w & 0xfffffu));
              if (leader)
                atomicAdd(&hist[bin], (static_cast<unsigned long long>(shi) << 20) + slo);
            }
          }
        }
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        unsigned long long cum = above;
        int b = 255;
        for (; b > 0; --b) {
          if (cum + hist[b] >= target) break;
          cum += hist[b];
        }
        sh_prefix = prefix | (static_cast<uint32_t>(b) << shift);
        sh_above = cum;
      }
      __syncthreads();
      prefix = sh_prefix;
      above = sh_above;
      prefix_mask |= 0xffu << shift;
    }
    return prefix;
  };

  if (top_k > 0 && top_k < V) floor_key = radix_select(false, static_cast<unsigned long long>(top_k));
  if (top_p < 1.0) {
    if (threadIdx.x == 0) sh_total = 0;
    __syncthreads();
    unsigned long long local = 0;
    for (int64_t t = 0; t < trips; ++t) {
      const int64_t p = t * stride + threadIdx.x;
      if (p >= npacks) continue;
      const P pk = packs[p];
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const float sc = to_f(pk.v[e]) * inv_t;
        if (float_key(sc) >= floor_key)
          local += static_cast<unsigned long long>(__expf(sc - m) * kFixed);
      }
    }
    atomicAdd(&sh_total, local);
    __syncthreads();
    unsigned long long target =
        static_cast<unsigned long long>(top_p * static_cast<double>(sh_total));
    if (target == 0) target = 1;
    floor_key = radix_select(true, target);
  }
  if (threadIdx.x == 0) thresholds[row] = floor_key == 0 ? -INFINITY : key_float(floor_key);
}

// One block per batch row. Reads each node's choice, validates the tree (parents in [-1, i), root parent -1,
// depth <= max_depth), finds for every node the lowest-index child the target follows, walks
// from the root and writes the outputs. Invalid rows: accept_len = next_token = -1,
// accepted_nodes all -1. Dynamic shared memory: N * (8 + 5 * 4) bytes.
__global__ void __launch_bounds__(kWalkThreads)
    walk_kernel(const int64_t* __restrict__ node_choice, const int64_t* __restrict__ node_tokens, const int32_t* __restrict__ parents,
                int N, int max_depth, int32_t* __restrict__ accepted,
                int32_t* __restrict__ accept_len, int64_t* __restrict__ next_token,
                int64_t* __restrict__ rng_state_to_advance) {
  extern __shared__ unsigned char smem_raw[];
  int64_t* choice = reinterpret_cast<int64_t*>(smem_raw);
  int32_t* next_child = reinterpret_cast<int32_t*>(choice + N);
  int32_t* depth = next_child + N;
  int32_t* anc = depth + N;
  int32_t* tmp = anc + N;
  int32_t* tmp2 = tmp + N;
  __shared__ int bad;

  const int b = blockIdx.x;
  const int32_t* par = parents + int64_t(b) * N;
  const int64_t* tok = node_tokens + int64_t(b) * N;
  if (threadIdx.x == 0) bad = 0;
  __syncthreads();

  for (int n = threadIdx.x; n < N; n += kWalkThreads) choice[n] = node_choice[int64_t(b) * N + n];
  for (int n = threadIdx.x; n < N; n += kWalkThreads) {
    next_child[n] = INT32_MAX;
    const int32_t p = par[n];
    if ((n == 0 && p != -1) || p < -1 || p >= n) bad = 1;  // all writers store 1
    anc[n] = (p >= 0 && p < n) ? p : -1;
    depth[n] = anc[n] >= 0 ? 1 : 0;
  }
  __syncthreads();
  // Depths by pointer jumping: invariant depth[n] = hops from n to anc[n] (or to its root).
  // Double-buffered: (depth, anc) -> (depth2, anc2) and back, one barrier per round.
  int32_t* d_in = depth;
  int32_t* a_in = anc;
  int32_t* d_out = tmp;
  int32_t* a_out = tmp2;
  for (int len = 1; len < N; len *= 2) {
    for (int n = threadIdx.x; n < N; n += kWalkThreads) {
      const int32_t a = a_in[n];
      d_out[n] = d_in[n] + (a >= 0 ? d_in[a] : 0);
      a_out[n] = a >= 0 ? a_in[a] : -1;
    }
    __syncthreads();
    int32_t* t = d_in; d_in = d_out; d_out = t;
    t = a_in; a_in = a_out; a_out = t;
  }
  depth = d_in;
  for (int n = threadIdx.x; n < N; n += kWalkThreads) {
    if (depth[n] > max_depth) bad = 1;
    const int32_t p = par[n];
    if (n > 0 && p >= 0 && p < n && tok[n] == choice[p]) atomicMin(&next_child[p], n);
  }
  __syncthreads();

  int32_t* acc_row = accepted + int64_t(b) * (max_depth + 1);
  if (threadIdx.x == 0) {
    int len = 0;
    if (bad) {
      accept_len[b] = -1;
      next_token[b] = -1;
    } else {
      int v = 0;
      acc_row[len++] = 0;
      while (next_child[v] != INT32_MAX) {
        v = next_child[v];
        acc_row[len++] = v;  // depths were validated: len <= max_depth + 1
      }
      accept_len[b] = len;
      next_token[b] = choice[v];
    }
    for (int j = len; j <= max_depth; ++j) acc_row[j] = -1;
    // Every read of rng_state happened in earlier launches; advance the offset once.
    if (b == 0 && rng_state_to_advance != nullptr) rng_state_to_advance[1] += 1;
  }
}

}  // namespace accept
}  // namespace jetspec
