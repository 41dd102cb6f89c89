// Kernels of jetspec::tree_accept (torch-free; raw pointers). Semantics:
// jetspec_ext/reference/accept.py. Launch sequence (csrc/cuda/accept_cuda.cu):
//
//   [top-k / top-p only] filter_threshold_kernel: one block per tree node computes the score
//       threshold of the filtered distribution by radix select over the float keys.
//   choice_partial_kernel: the vocabulary of every node split over many blocks; each block
//       writes the best (value, token) of its chunk: greedy value = logit, sampling value =
//       logit / T + Gumbel noise (Gumbel-max trick) over the kept tokens.
//   walk_kernel: one block per batch row merges the chunks into the target's choice at every
//       node, validates the tree, marks the children the target would follow and walks them.
//
// Drawing at every node in parallel and then walking is exactly the sequential procedure,
// because every node has its own independent stream (csrc/kernels/rng.h).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <cfloat>

#include "kernels/rng.h"

namespace jetspec {
namespace accept {

constexpr int kThreads = 256;       // choice_partial_kernel block size
constexpr int kLoadsPerThread = 4;  // 16-byte loads in flight per thread
constexpr int kWalkThreads = 512;
constexpr int kFilterThreads = 1024;

// Largest Gumbel value our 24-bit uniforms can produce: u <= 1 - 2^-25 gives
// -log(-log(u)) <= 17.33. A token whose score is below the running best minus this can never
// win, so its noise need not be computed (exact, not an approximation).
constexpr float kMaxGumbel = 17.34f;

template <typename T>
__device__ __forceinline__ float load_as_float(T x);
template <>
__device__ __forceinline__ float load_as_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ float load_as_float<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float load_as_float<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

// Order-preserving map float -> uint32 (larger float, larger key).
__device__ __forceinline__ uint32_t float_key(float f) {
  uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_float(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// (value, index) with "larger value wins, lower index on ties".
__device__ __forceinline__ bool better(float v, int32_t i, float bv, int32_t bi) {
  return v > bv || (v == bv && i < bi);
}

__device__ __forceinline__ float gumbel_from_uniform(float u) { return -__logf(-__logf(u)); }

enum class Mode { kGreedy = 0, kSample = 1, kSampleFiltered = 2 };

// Grid (num_chunks, rows). Each block scans one chunk of one node's logits.
// thresholds: per-row score threshold (kSampleFiltered only).
template <typename T, int VEC, Mode MODE>
__global__ void __launch_bounds__(kThreads)
    choice_partial_kernel(const T* __restrict__ logits, int64_t V, int64_t chunk_len,
                          float temperature, const int64_t* __restrict__ rng_state,
                          const float* __restrict__ thresholds, float* __restrict__ part_val,
                          int32_t* __restrict__ part_idx) {
  const int64_t row = blockIdx.y;
  const int64_t chunk = blockIdx.x;
  const int64_t begin = chunk * chunk_len;
  const int64_t end = min(V, begin + chunk_len);
  const T* row_ptr = logits + row * V;
  const float inv_temperature = 1.0f / temperature;

  uint64_t base = 0;
  float thresh = -INFINITY;
  if constexpr (MODE != Mode::kGreedy) {
    base = rng_row_base(static_cast<uint64_t>(rng_state[0]), static_cast<uint64_t>(rng_state[1]),
                        static_cast<uint64_t>(row));
  }
  if constexpr (MODE == Mode::kSampleFiltered) thresh = thresholds[row];

  float best_v = -INFINITY;
  int32_t best_i = INT32_MAX;

  auto consider = [&](float x, int64_t i) {
    if constexpr (MODE == Mode::kGreedy) {
      if (better(x, static_cast<int32_t>(i), best_v, best_i)) {
        best_v = x;
        best_i = static_cast<int32_t>(i);
      }
    } else {
      // Cheap test first (the 0.01 margin covers the rounding of x * (1/T) vs x / T).
      if (x * inv_temperature + (kMaxGumbel + 0.01f) < best_v) return;  // cannot win
      const float s = __fdiv_rn(x, temperature);  // exactly the reference's logits / T
      if constexpr (MODE == Mode::kSampleFiltered) {
        if (!(s >= thresh)) return;
      }
      const float v = s + gumbel_from_uniform(rng_uniform(base, static_cast<uint64_t>(i)));
      if (better(v, static_cast<int32_t>(i), best_v, best_i)) {
        best_v = v;
        best_i = static_cast<int32_t>(i);
      }
    }
  };

  if constexpr (VEC > 1) {
    // 16-byte vector loads; the launcher guarantees V % VEC == 0 and 16-byte row alignment.
    struct alignas(16) Pack {
      T v[VEC];
    };
    const Pack* packs = reinterpret_cast<const Pack*>(row_ptr);
    const int64_t pb = begin / VEC, pe = end / VEC;
    for (int64_t p0 = pb + threadIdx.x; p0 < pe; p0 += int64_t(kThreads) * kLoadsPerThread) {
      Pack buf[kLoadsPerThread];
#pragma unroll
      for (int u = 0; u < kLoadsPerThread; ++u) {
        const int64_t p = p0 + int64_t(u) * kThreads;
        if (p < pe) buf[u] = packs[p];
      }
#pragma unroll
      for (int u = 0; u < kLoadsPerThread; ++u) {
        const int64_t p = p0 + int64_t(u) * kThreads;
        if (p < pe) {
#pragma unroll
          for (int e = 0; e < VEC; ++e) consider(load_as_float<T>(buf[u].v[e]), p * VEC + e);
        }
      }
    }
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads)
      consider(load_as_float<T>(row_ptr[i]), i);
  }

  // Block reduction: warp shuffles, then one value per warp through shared memory.
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, best_v, off);
    int32_t oi = __shfl_xor_sync(0xffffffffu, best_i, off);
    if (better(ov, oi, best_v, best_i)) {
      best_v = ov;
      best_i = oi;
    }
  }
  __shared__ float warp_v[kThreads / 32];
  __shared__ int32_t warp_i[kThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    warp_v[warp] = best_v;
    warp_i[warp] = best_i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w)
      if (better(warp_v[w], warp_i[w], best_v, best_i)) {
        best_v = warp_v[w];
        best_i = warp_i[w];
      }
    const int64_t out = row * gridDim.x + chunk;
    part_val[out] = best_v;
    // An all -inf / filtered-out chunk keeps INT32_MAX: the merge never prefers it over a real
    // token; a row with no finite value at all falls back to token 0 (torch.argmax's choice).
    part_idx[out] = best_i;
  }
}

// Score threshold of the filtered distribution of one node (one block per node).
// Top-k: the largest key t with count(key >= t) >= k (the k-th largest score).
// Top-p: then the largest key t >= that with mass(key >= t) >= top_p * mass(kept).
// Masses are exp(s - max) in 2^-40 fixed point so the sums are exact integers (deterministic
// whatever the order of the atomics; error <= V * 2^-40 of the total).
template <typename T>
__global__ void __launch_bounds__(kFilterThreads)
    filter_threshold_kernel(const T* __restrict__ logits, int64_t V, float temperature,
                            int64_t top_k, double top_p, float* __restrict__ thresholds) {
  const int64_t row = blockIdx.x;
  const T* row_ptr = logits + row * V;
  __shared__ unsigned long long hist[256];
  __shared__ float red_f[kFilterThreads / 32];
  __shared__ uint32_t sh_prefix;
  __shared__ unsigned long long sh_above;

  auto score = [&](int64_t i) { return __fdiv_rn(load_as_float<T>(row_ptr[i]), temperature); };

  // Row maximum (for the masses).
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < V; i += kFilterThreads) m = fmaxf(m, score(i));
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  if (threadIdx.x % 32 == 0) red_f[threadIdx.x / 32] = m;
  __syncthreads();
  m = red_f[0];
  for (int w = 1; w < kFilterThreads / 32; ++w) m = fmaxf(m, red_f[w]);
  __syncthreads();

  uint32_t floor_key = 0;  // keys below are filtered out
  // Radix select: 4 passes of 8 bits from the top. `use_mass` picks count or mass histograms.
  auto radix_select = [&](bool use_mass, unsigned long long target) -> uint32_t {
    uint32_t prefix = 0, prefix_mask = 0;
    unsigned long long above = 0;  // count/mass of keys > current prefix range
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = threadIdx.x; b < 256; b += kFilterThreads) hist[b] = 0;
      __syncthreads();
      for (int64_t i = threadIdx.x; i < V; i += kFilterThreads) {
        const float s = score(i);
        const uint32_t k = float_key(s);
        if (k < floor_key || (k & prefix_mask) != prefix) continue;
        const unsigned long long w =
            use_mass ? static_cast<unsigned long long>(__expf(s - m) * 1099511627776.0f) : 1ull;
        atomicAdd(&hist[(k >> shift) & 0xffu], w);
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
      __syncthreads();
    }
    return prefix;
  };

  if (top_k > 0 && top_k < V) floor_key = radix_select(false, static_cast<unsigned long long>(top_k));
  if (top_p < 1.0) {
    // Total kept mass.
    __shared__ unsigned long long total;
    if (threadIdx.x == 0) total = 0;
    __syncthreads();
    unsigned long long local = 0;
    for (int64_t i = threadIdx.x; i < V; i += kFilterThreads) {
      const float s = score(i);
      if (float_key(s) >= floor_key)
        local += static_cast<unsigned long long>(__expf(s - m) * 1099511627776.0f);
    }
    atomicAdd(&total, local);
    __syncthreads();
    unsigned long long target = static_cast<unsigned long long>(top_p * static_cast<double>(total));
    if (target == 0) target = 1;
    floor_key = radix_select(true, target);
  }
  if (threadIdx.x == 0) thresholds[row] = floor_key == 0 ? -INFINITY : key_float(floor_key);
}

// One block per batch row. Merges the chunk partials into each node's choice, validates the
// tree (parents in [-1, i), root parent -1, depth <= max_depth), finds for every node the
// lowest-index child the target would follow, walks from the root and writes the outputs.
// Invalid rows get accept_len = next_token = -1 and accepted_nodes all -1.
// Shared memory (dynamic): N * (int64 choice + 4 x int32).
__global__ void __launch_bounds__(kWalkThreads)
    walk_kernel(const float* __restrict__ part_val, const int32_t* __restrict__ part_idx,
                int num_chunks, const int64_t* __restrict__ node_tokens,
                const int32_t* __restrict__ parents, int N, int max_depth,
                int32_t* __restrict__ accepted, int32_t* __restrict__ accept_len,
                int64_t* __restrict__ next_token, int64_t* __restrict__ rng_state_to_advance) {
  extern __shared__ unsigned char smem_raw[];
  int64_t* choice = reinterpret_cast<int64_t*>(smem_raw);
  int32_t* next_child = reinterpret_cast<int32_t*>(choice + N);
  int32_t* depth = next_child + N;
  int32_t* anc = depth + N;
  int32_t* depth2 = anc + N;
  __shared__ int bad;

  const int b = blockIdx.x;
  const int32_t* par = parents + int64_t(b) * N;
  const int64_t* tok = node_tokens + int64_t(b) * N;
  if (threadIdx.x == 0) bad = 0;

  for (int n = threadIdx.x; n < N; n += kWalkThreads) {
    const int64_t r = int64_t(b) * N + n;
    float bv = -INFINITY;
    int32_t bi = INT32_MAX;
    for (int c = 0; c < num_chunks; ++c) {
      const float v = part_val[r * num_chunks + c];
      const int32_t i = part_idx[r * num_chunks + c];
      if (better(v, i, bv, bi)) {
        bv = v;
        bi = i;
      }
    }
    choice[n] = bi == INT32_MAX ? 0 : bi;
    next_child[n] = INT32_MAX;
    const int32_t p = par[n];
    anc[n] = p;
    depth[n] = p >= 0 ? 1 : 0;
  }
  __syncthreads();
  for (int n = threadIdx.x; n < N; n += kWalkThreads) {
    const int32_t p = par[n];
    if ((n == 0 && p != -1) || p < -1 || p >= n) bad = 1;  // benign race: all write 1
  }
  __syncthreads();
  if (!bad) {
    // Depths by pointer jumping (log2 N rounds), double-buffered through depth2.
    for (int len = 1; len < N; len *= 2) {
      for (int n = threadIdx.x; n < N; n += kWalkThreads) {
        const int32_t a = anc[n];
        depth2[n] = depth[n] + (a >= 0 ? depth[a] : 0);
      }
      __syncthreads();
      for (int n = threadIdx.x; n < N; n += kWalkThreads) {
        const int32_t a = anc[n];
        depth[n] = depth2[n];
        depth2[n] = a >= 0 ? anc[a] : -1;  // reuse as the next ancestor buffer
      }
      __syncthreads();
      for (int n = threadIdx.x; n < N; n += kWalkThreads) anc[n] = depth2[n];
      __syncthreads();
    }
    for (int n = threadIdx.x; n < N; n += kWalkThreads) {
      if (depth[n] > max_depth) bad = 1;
      const int32_t p = par[n];
      if (n > 0 && p >= 0 && tok[n] == choice[p]) atomicMin(&next_child[p], n);
    }
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
        acc_row[len++] = v;  // depth <= max_depth was validated, so len <= max_depth + 1
      }
      accept_len[b] = len;
      next_token[b] = choice[v];
    }
    for (int j = len; j <= max_depth; ++j) acc_row[j] = -1;
    // All reads of rng_state happened in the previous launch; advance the offset once.
    if (b == 0 && rng_state_to_advance != nullptr) rng_state_to_advance[1] += 1;
  }
}

}  // namespace accept
}  // namespace jetspec
