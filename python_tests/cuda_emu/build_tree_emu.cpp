// Host emulation of the build_tree CUDA kernels (csrc/kernels/build_tree.cuh) for GPU-less CI:
// one std::thread per CUDA thread, barriers for warp collectives and __syncthreads, blocks run
// one after another. Used by python_tests/test_build_tree.py::test_cuda_kernels_emulated.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <barrier>
#include <thread>
#include <vector>
#include <cstring>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>


thread_local int emu_tid;
static dim3 emu_block, emu_bdim;
static std::vector<std::unique_ptr<std::barrier<>>> emu_warp_bar;
static std::unique_ptr<std::barrier<>> emu_block_bar;
static uint64_t emu_buf[64][32];

#undef threadIdx
#undef blockIdx
#define threadIdx (dim3(emu_tid, 0, 0))
#define blockIdx (emu_block)
#undef __global__
#undef __device__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

static inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
static inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
static inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
static inline uint32_t emu_f2u(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
static inline float emu_u2f(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
#define __float_as_uint emu_f2u
#define __uint_as_float emu_u2f
template <typename T> static inline T emu_ldg(const T* p) { return *p; }
#define __ldg emu_ldg
static inline int emu_ffs(unsigned x) { return __builtin_ffs(x); }
#define __ffs emu_ffs
static inline void emu_syncwarp() { emu_warp_bar[emu_tid / 32]->arrive_and_wait(); }
#define __syncwarp(...) emu_syncwarp()
static inline void emu_syncthreads() { emu_block_bar->arrive_and_wait(); }
#define __syncthreads emu_syncthreads
template <typename T> static inline T emu_exchange(T v, int src_lane_fn_xor, bool is_xor) {
  int w = emu_tid / 32, lane = emu_tid % 32;
  uint64_t bits = 0; std::memcpy(&bits, &v, sizeof(T));
  emu_buf[w][lane] = bits;
  emu_syncwarp();
  int src = is_xor ? (lane ^ src_lane_fn_xor) : src_lane_fn_xor;
  uint64_t got = emu_buf[w][src];
  emu_syncwarp();
  T r; std::memcpy(&r, &got, sizeof(T)); return r;
}
template <typename T> static inline T emu_shfl_xor(unsigned, T v, int off) { return emu_exchange(v, off, true); }
template <typename T> static inline T emu_shfl(unsigned, T v, int src) { return emu_exchange(v, src, false); }
#define __shfl_xor_sync emu_shfl_xor
#define __shfl_sync emu_shfl
template <typename T> static inline T emu_shfl_up(unsigned, T v, int off) {
  int lane = emu_tid % 32;
  T got = emu_exchange(v, lane >= off ? lane - off : lane, false);
  return got;
}
#define __shfl_up_sync emu_shfl_up
static inline int emu_atomic_add(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
#define atomicAdd emu_atomic_add
static inline float emu_expf(float x) { return std::exp(x); }
#define __expf emu_expf
static inline unsigned emu_reduce_max(unsigned, unsigned v) {
  int w = emu_tid / 32, lane = emu_tid % 32;
  emu_buf[w][lane] = v; emu_syncwarp();
  unsigned m = 0; for (int i = 0; i < 32; ++i) m = std::max<unsigned>(m, (unsigned)emu_buf[w][i]);
  emu_syncwarp(); return m;
}
#define __reduce_max_sync emu_reduce_max
static inline unsigned emu_ballot(unsigned, bool p) {
  int w = emu_tid / 32, lane = emu_tid % 32;
  emu_buf[w][lane] = p; emu_syncwarp();
  unsigned b = 0; for (int i = 0; i < 32; ++i) if (emu_buf[w][i]) b |= 1u << i;
  emu_syncwarp(); return b;
}
#define __ballot_sync emu_ballot
using std::min; using std::max; using std::isnan; using std::isfinite;

#include "kernels/build_tree.cuh"

template <typename F>
void emu_launch(dim3 grid, int threads, F kernel) {
  emu_bdim = dim3(threads, 1, 1);
  for (unsigned y = 0; y < grid.y; ++y)
    for (unsigned x = 0; x < grid.x; ++x) {
      emu_block = dim3(x, y, 0);
      emu_warp_bar.clear();
      for (int w = 0; w < threads / 32; ++w) emu_warp_bar.emplace_back(new std::barrier<>(32));
      emu_block_bar.reset(new std::barrier<>(threads));
      std::vector<std::thread> ts;
      for (int t = 0; t < threads; ++t) ts.emplace_back([&, t] { emu_tid = t; kernel(); });
      for (auto& t : ts) t.join();
    }
}

namespace k = jetspec::build_tree_kernels;

// Entry point called from Python via ctypes. dtype: 0 f32, 1 f16, 2 bf16.
template <typename T, int K>
void run(const void* logits, const int64_t* roots, int B, int D, int V, int W, int N, int policy,
         float inv_t, int scale, int S, int tiled, int64_t* tok, int32_t* par, int32_t* dep, float* sc,
         int32_t* mask, int32_t* num, int32_t* fc, int32_t* ns) {
  const int rows = B * D;
  std::vector<float2> ms(rows * S);
  std::vector<uint2> keys(rows * S * K);
  if (tiled)
    emu_launch(dim3(S, rows), k::kStatsThreads, [&] {
      k::build_tree_stats_tile_kernel<T, K>((const T*)logits, V, S, W, inv_t, scale != 0, ms.data(), keys.data());
    });
  else
    emu_launch(dim3(S, rows), k::kStatsThreads, [&] {
      k::build_tree_stats_kernel<T, K>((const T*)logits, V, S, inv_t, scale != 0, ms.data(), keys.data());
    });
  emu_launch(dim3(B, 1), k::kExpandThreads, [&] {
    k::build_tree_expand_kernel<K>(ms.data(), keys.data(), roots, D, S, W, N, policy, tok, par, dep, sc,
                                   mask, num, fc, ns);
  });
}

extern "C" void emu_build_tree(int dtype, const void* logits, const int64_t* roots, int B, int D,
                               int V, int W, int N, int policy, float inv_t, int scale, int S, int tiled,
                               int64_t* tok, int32_t* par, int32_t* dep, float* sc, int32_t* mask,
                               int32_t* num, int32_t* fc, int32_t* ns) {
#define CALL(T) \
  if (W <= 8) run<T, 8>(logits, roots, B, D, V, W, N, policy, inv_t, scale, S, tiled, tok, par, dep, sc, mask, num, fc, ns); \
  else run<T, 16>(logits, roots, B, D, V, W, N, policy, inv_t, scale, S, tiled, tok, par, dep, sc, mask, num, fc, ns);
  if (dtype == 0) { CALL(float) } else if (dtype == 1) { CALL(__half) } else { CALL(__nv_bfloat16) }
}
