// Kernels of jetspec::commit_kv (torch-free). Semantics: jetspec_ext/reference/commit.py.
//
// Why loads-then-stores is safe: path node j has index a_j >= j and the a_j increase, so the
// source slot a_k of any later step k > j is > j: a destination slot j is never the source of
// a later step. A block therefore loads a chunk of steps into registers, synchronises, stores
// them, and moves on; no staging buffer in global memory is needed.
#pragma once
#include <stdint.h>

namespace jetspec {
namespace commit {

constexpr int kThreads = 128;
constexpr int kVecPerThread = 8;  // 16-byte vectors held in registers per thread per chunk

// Row status shared by both kernels, computed by one full warp (lanes check path entries in
// parallel): true when row b's path is valid and fits in the cache.
__device__ __forceinline__ bool row_ok_warp(const int32_t* accepted, const int32_t* accept_len,
                                            const int32_t* prefix_lens, int b, int P, int64_t S) {
  const int n = accept_len[b];
  const int64_t p = prefix_lens[b];
  if (n <= 0 || n > P || p < 0) return false;
  bool bad = false;
  for (int j = threadIdx.x % 32; j < n; j += 32) {
    const int32_t a = accepted[int64_t(b) * P + j];
    bad |= a < j || (j == 0 && a != 0) || p + a >= S;  // the path starts at the root
  }
  return !__any_sync(0xffffffffu, bad);
}

// Grid: (C * H, B). Block: one (cache, row, head). Each slot row is Dh elements =
// `vecs_per_slot` 16-byte vectors.
__global__ void __launch_bounds__(kThreads)
    move_kernel(uint4* __restrict__ cache, int C, int B, int H, int64_t S, int vecs_per_slot,
                const int32_t* __restrict__ prefix_lens, const int32_t* __restrict__ accepted,
                const int32_t* __restrict__ accept_len, int P) {
  const int b = blockIdx.y;
  const int ch = blockIdx.x;  // c * H + h
  __shared__ bool ok;
  if (threadIdx.x < 32) {
    const bool r = row_ok_warp(accepted, accept_len, prefix_lens, b, P, S);
    if (threadIdx.x == 0) ok = r;
  }
  __syncthreads();
  if (!ok) return;
  const int n = accept_len[b];
  const int64_t p = prefix_lens[b];
  const int c = ch / H, h = ch % H;
  uint4* head = cache + ((int64_t(c) * B + b) * H + h) * S * vecs_per_slot;
  const int32_t* path = accepted + int64_t(b) * P;
  // Step j = 0 is the root, already in place. Work items: (step j >= 1, vector v).
  const int items = (n - 1) * vecs_per_slot;
  const int per_chunk = kThreads * kVecPerThread;
  for (int base = 0; base < items; base += per_chunk) {
    uint4 buf[kVecPerThread];
#pragma unroll
    for (int u = 0; u < kVecPerThread; ++u) {
      const int it = base + u * kThreads + threadIdx.x;
      if (it < items) {
        const int j = 1 + it / vecs_per_slot, v = it % vecs_per_slot;
        buf[u] = head[(p + path[j]) * vecs_per_slot + v];
      }
    }
    __syncthreads();  // every load of this chunk before any store of it
#pragma unroll
    for (int u = 0; u < kVecPerThread; ++u) {
      const int it = base + u * kThreads + threadIdx.x;
      if (it < items) {
        const int j = 1 + it / vecs_per_slot, v = it % vecs_per_slot;
        head[(p + j) * vecs_per_slot + v] = buf[u];
      }
    }
  }
}

// Runs after move_kernel (stream order): advance prefix_lens, or flag an invalid row with -1.
// One warp per row.
__global__ void advance_kernel(int32_t* __restrict__ prefix_lens,
                               const int32_t* __restrict__ accepted,
                               const int32_t* __restrict__ accept_len, int B, int P, int64_t S) {
  const int b = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (b >= B) return;
  const int n = accept_len[b];
  if (n <= 0) return;  // nothing accepted (or an acceptance already flagged): leave as is
  const bool ok = row_ok_warp(accepted, accept_len, prefix_lens, b, P, S);
  if (threadIdx.x % 32 == 0) prefix_lens[b] = ok ? prefix_lens[b] + n : -1;
}

}  // namespace commit
}  // namespace jetspec
