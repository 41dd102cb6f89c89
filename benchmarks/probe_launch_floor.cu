// What a kernel boundary costs inside a CUDA graph on this GPU (a development probe, not part of
// the package). Why: at prefix 1024 tree_attention is a split kernel plus a merge kernel, and the
// issue-4 allowances there (5.4-13.6 us) are close to what the two cost with no key tiles at all
// (fourteenth session: the split kernel's CTAs live ~5.1 us of a 10.0 us call at P1024 N64, every
// first global load after the grid-dependency wait takes ~1 us). This probe separates the parts:
//   chain    K kernels that do nothing but the grid-dependency wait: us per kernel, plain and
//            with programmatic dependent launch (PDL), for three grid shapes;
//   handoff  pairs of kernels where the second reads what the first wrote (4 MB: the split
//            kernel's partials at P1024 N64), like split -> merge;
//   latency  one dependent global load per CTA right after the wait (clock64 around it), first
//            and second touch of the same word, plain and through L2 only (ld.global.cg).
//   skeleton split_kernel_ws's launch and data movement with no key tile: the start's copies
//            (Q and K(0), 48 KB per CTA by bulk copy), then the real cluster epilogue (stage,
//            push, merge, store: the package's own functions) on made-up O rows; what the fixed
//            part F of a call costs before any attention maths (fifty-ninth session).
//   skeleton64 the same for the key-split form's 64-row CTAs with a cluster merge.
//   nvcc -std=c++17 -O3 -arch=sm_90a -Icsrc benchmarks/probe_launch_floor.cu -o /tmp/plf && /tmp/plf
// The device side uses the package's torch-free kernels/grid_dependency.cuh; the host launch is
// written out here because jetspec::launch_kernel (csrc/cuda_utils.cuh) needs ATen.
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <vector>
#include <algorithm>

#include "kernels/grid_dependency.cuh"
#include "kernels/tree_attention_ws.cuh"  // ws_smem_bytes: the real launch's shared memory

using jetspec::signal_dependents_may_launch;
using jetspec::wait_for_previous_grid;

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
  printf("CUDA %s at line %d\n", cudaGetErrorString(e_), __LINE__); std::exit(1); } } while (0)

__global__ void empty_kernel() {
  wait_for_previous_grid();
  signal_dependents_may_launch();
}

// Reads n 16-byte words of src and writes them to dst (grid-stride): the split -> merge handoff.
__global__ void copy_kernel(const int4* __restrict__ src, int4* __restrict__ dst, long n) {
  wait_for_previous_grid();
  signal_dependents_may_launch();
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
    dst[i] = src[i];
}

// One thread per CTA: clock64 around a first load of *p, a second load of it, and a load of it
// through L2 only. The stores of the loaded values make each clock read wait for its load.
__global__ void latency_kernel(const int* p, volatile long long* out, volatile int* sink) {
  wait_for_previous_grid();
  signal_dependents_may_launch();
  if (threadIdx.x != 0) return;
  const long long t0 = clock64();
  const int a = p[blockIdx.x & 7];
  *sink = a;
  const long long t1 = clock64();
  const int b = p[(blockIdx.x & 7) + 8];  // another word of the same 128-byte line
  *sink = b;
  const long long t2 = clock64();
  int c;
  asm volatile("ld.global.cg.s32 %0, [%1];" : "=r"(c) : "l"(p + (blockIdx.x & 7)) : "memory");
  *sink = c;
  const long long t3 = clock64();
  out[blockIdx.x * 3 + 0] = t1 - t0;
  out[blockIdx.x * 3 + 1] = t2 - t1;
  out[blockIdx.x * 3 + 2] = t3 - t2;
}

// An empty kernel that also meets its cluster at the end (arrive.release / wait.acquire, as
// split_kernel_ws's cluster merge does before its pushes): what the cluster barrier adds.
__global__ void empty_cluster_sync_kernel() {
  wait_for_previous_grid();
  signal_dependents_may_launch();
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}

// ---- skeleton: split_kernel_ws without its key tiles -----------------------------------------
// The same launch (grid row tiles x NS x 8 KV heads, clusters of the NS splits, 384 threads, one
// CTA per SM by its shared memory, PDL), the same start (Q 32 KB and K(0) 16 KB into shared
// memory by one thread's bulk copies, every thread waiting for them), and the same cluster
// epilogue (cluster_stage_rows, cluster_push_shares, cluster_merge_share_n: the package's code),
// on O rows made up from the loaded K so that the epilogue waits for the start. LOAD / EPI switch
// the two parts. What is left of the real kernel is its attention maths: S(0), softmax(0), the
// key tiles and the last P V, and the prefix-length load.
namespace ta = jetspec::tree_attn;
__device__ __forceinline__ void bulk_copy_global_to_shared(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}
// EPI: 0 none; 1 stage the rows (consumers), fence, CTA barrier; 2 + the cluster wait; 3 + the
// pushes and the wait for the received shares; 4 + the merge and its stores (the whole epilogue);
// 5 = 1 + every staged row stored to global memory by the CTA itself (the partials' write of the
// merge_kernel path, in T), no cluster; 6: no staging, every consumer thread sends its fragment
// rows that other CTAs own straight from registers with st.async (the row bytes of the pushes of
// 3, not the lse)
// and all wait for their received shares (the exchange of the fragment-exchange form); 7: the
// exchange through L2, no cluster: 1 + the rows other CTAs own written to global memory, a
// per-row-tile arrival counter (atomicAdd, then an acquire spin until all NS splits of this call
// arrived: every CTA is resident at these launches, 1 per SM and 96 in all), the own share read back from the
// NS - 1 others (ld.global.cg) and stored (no weights: the data movement only); 8: 6 + the
// staged form's merge and store (cluster_merge_share_n) with the own rows not staged (a floor).
__device__ __forceinline__ void st_async_v4(uint32_t dst, uint4 v, uint32_t bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, [%5];\n" ::"r"(dst),
               "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w), "r"(bar)
               : "memory");
}
__device__ __forceinline__ unsigned ld_acquire_gpu(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
// The skeletons' common start: the two mbarriers initialised, the grid-dependency wait, a CTA
// barrier, and (cluster launches) the arrival every CTA's later cluster wait pairs with.
__device__ __forceinline__ void skeleton_prologue(uint32_t load_full, uint32_t recv_full, bool cluster) {
  if (threadIdx.x == 0) {
    ta::mbar_init(load_full, 1);
    ta::mbar_init(recv_full, 1);
    ta::mbar_init_fence();
  }
  wait_for_previous_grid();
  signal_dependents_may_launch();
  __syncthreads();
  if (cluster) ta::cluster_arrive_relaxed();
}
// Made-up O fragments (finite) from a word of the loaded K, so that what follows waits for the start.
template <int D>
__device__ __forceinline__ void made_up_o(uint32_t word, float (&o)[D / 8][4]) {
#pragma unroll
  for (int i = 0; i < D / 8; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) o[i][j] = (float)((word >> (i + j)) & 255u);
}
template <bool LOAD, int EPI, int NS>
__global__ void __launch_bounds__(384, 1) skeleton_kernel(const __grid_constant__ ta::Params p, const uint4* __restrict__ src) {
  using T = __nv_bfloat16;
  constexpr int D = 128, CH = D / 8;
  constexpr bool kCluster = (EPI >= 2 && EPI <= 4) || EPI == 6 || EPI == 8;
  extern __shared__ __align__(1024) uint4 smem_raw[];
  uint4* smem = smem_raw + ((1024 - (ta::smem_u32(smem_raw) & 1023)) & 1023) / 16;
  uint4* sQ = smem;                   // 128 rows (32 KB); the staged O rows after the start
  uint4* sK = sQ + ta::kWsRows * CH;  // 64 keys (16 KB)
  const uint32_t bar0 = ta::smem_u32(sK + ta::kBN * CH);
  const uint32_t load_full = bar0, recv_full = bar0 + 8;
  float* s_lse = reinterpret_cast<float*>(sK + ta::kBN * CH + 1);
  float* recv_lse = s_lse + ta::kWsRows;
  uint4* recv_o = reinterpret_cast<uint4*>(recv_lse + ta::kClusterRecvRows);
  const int tid = threadIdx.x, split = blockIdx.y, kvh = blockIdx.z, m_base = blockIdx.x * ta::kWsRows;
  skeleton_prologue(load_full, recv_full, kCluster);
  // The start's copies are written out in each skeleton, addresses computed inside thread 0's
  // branch: a shared helper taking the source pointers (computed by every thread) timed the
  // start 0.06-0.12 us slower on the H200 (fifty-ninth session, RESULTS item 5).
  if (LOAD) {
    if (tid == 0) {
      ta::mbar_arrive_expect_tx(load_full, (ta::kWsRows + ta::kBN) * D * 2);
      bulk_copy_global_to_shared(ta::smem_u32(sQ), src + (size_t)(kvh * gridDim.x + blockIdx.x) * ta::kWsRows * CH,
                                 ta::kWsRows * D * 2, load_full);
      bulk_copy_global_to_shared(ta::smem_u32(sK), src + (1 << 16) + (size_t)(kvh * gridDim.y + split) * ta::kBN * CH,
                                 ta::kBN * D * 2, load_full);
    }
    ta::mbar_wait(load_full, 0);
  }
  if (EPI == 0) return;
  if (EPI == 6 || EPI == 8) {
    constexpr int R = ta::cluster_rows_per(NS);
    ta::cluster_wait();  // every CTA's receive barrier is initialised
    if (tid == 0) ta::mbar_arrive_expect_tx(recv_full, (uint32_t)((NS - 1) * ta::cluster_share(NS, split).count * D * 2));
    if (tid >= 128) {
      const int ctid = tid - 128, warp = ctid >> 5, lane = ctid & 31, gid = lane >> 2, tig = lane & 3;
      const uint4 kw = sK[ctid];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = warp * 16 + gid + 8 * h, owner = r / R;
        if (owner == split) continue;
        const int slot = ta::cluster_slot(split, owner);
        const uint32_t dst = ta::cluster_map(ta::smem_u32(recv_o + (slot * R + (r - owner * R)) * CH + tig * 4), owner);
        const uint32_t bar = ta::cluster_map(recv_full, owner);
#pragma unroll
        for (int q = 0; q < 4; ++q) st_async_v4(dst + q * 16, make_uint4(kw.x + q, kw.y, kw.z, kw.w + h), bar);
      }
    }
    ta::mbar_wait(recv_full, 0);
    if (EPI == 8) {  // the merge and store of the staged form, its own rows read where Q was (not staged: a floor)
      const int mtid = tid >= 128 ? tid - 128 : tid + 256;
      ta::cluster_merge_share_n<D, T, NS>(p, split, sQ, s_lse, recv_o, recv_lse, 0, kvh, m_base, mtid);
    }
    return;
  }
  if (tid >= 128) {  // the consumers: made-up O rows (finite, from the loaded K), staged as the kernel does
    const int ctid = tid - 128, warp = ctid >> 5, lane = ctid & 31;
    const uint4 kw = sK[ctid];
    float o[D / 8][4];
    made_up_o<D>(kw.x, o);
    float l_run[2] = {1.f, 1.f};
    const float m_run[2] = {0.f, 0.f};
    ta::cluster_stage_rows<D, T>(o, l_run, m_run, sQ, s_lse, warp * 16, lane);
    ta::fence_proxy_async_smem();
  }
  ta::all_warps_bar_sync();
  if (EPI == 5) {  // own rows to global memory (16-byte stores, whole rows per 16 threads)
    uint4* dst = static_cast<uint4*>(p.o_part) + ((size_t)(split * gridDim.z + kvh) * gridDim.x + blockIdx.x) * ta::kWsRows * CH;
    for (int i = tid; i < ta::kWsRows * CH; i += 384) dst[i] = sQ[i];
    return;
  }
  if (EPI == 7) {
    constexpr int R = ta::cluster_rows_per(NS);
    const size_t tile = (size_t)kvh * gridDim.x + blockIdx.x;
    uint4* slots = static_cast<uint4*>(p.o_part) + tile * NS * ta::kWsRows * CH;  // [split][row][chunk]
    for (int i = tid; i < ta::kWsRows * CH; i += 384)
      if ((i / CH) / R != split) slots[split * ta::kWsRows * CH + i] = sQ[i];
    __threadfence();
    ta::all_warps_bar_sync();
    unsigned* count = reinterpret_cast<unsigned*>(p.lse_part) + tile;
    if (tid == 0) {
      const unsigned target = (atomicAdd(count, 1u) / NS + 1) * NS;
      while (ld_acquire_gpu(count) < target) {
      }
    }
    ta::all_warps_bar_sync();
    const ta::ClusterShare sh = ta::cluster_share(NS, split);
    uint4* out = static_cast<uint4*>(p.out) + tile * ta::kWsRows * CH;
    for (int i = tid; i < sh.count * CH; i += 384) {
      const int r = sh.first + i / CH;
      uint4 acc = sQ[r * CH + i % CH];
#pragma unroll
      for (int j = 0; j < NS; ++j) {
        if (j == split) continue;
        const uint4 v = __ldcg(slots + (size_t)j * ta::kWsRows * CH + r * CH + i % CH);
        acc.x ^= v.x; acc.y ^= v.y; acc.z ^= v.z; acc.w ^= v.w;
      }
      out[r * CH + i % CH] = acc;
    }
    return;
  }
  if (EPI == 1) return;
  ta::cluster_wait();
  if (EPI == 2) return;
  const bool lead = tid == 128;
  if (lead) {
    ta::mbar_arrive_expect_tx(recv_full, ta::cluster_recv_bytes<D>(NS, split));
    ta::cluster_push_shares<D>(NS, split, sQ, s_lse, recv_o, recv_lse, recv_full);
  }
  ta::mbar_wait(recv_full, 0);
  if (EPI == 4) {
    const int mtid = tid >= 128 ? tid - 128 : tid + 256;
    ta::cluster_merge_share_n<D, T, NS>(p, split, sQ, s_lse, recv_o, recv_lse, 0, kvh, m_base, mtid);
  }
  if (lead) ta::bulk_wait_read();
}


// ---- skeleton64: the key-split form's 64-row CTAs, with a cluster merge ----------------------
// The forty-fifth session's key-split form (docs/patches/key_split.patch) gives a CTA 64 query
// rows whose two consumer warpgroups take alternate key tiles; it had no cluster merge. This is
// the data movement such a form would have with one (fifty-ninth session), for its floor:
// LEVEL 0 the launch; 1 + the start (Q 16 KB and each warpgroup's first K tile, 2 x 16 KB);
// 2 + the hand-over (warpgroup 1's fp32 O, m and l through shared memory in the patch's
// per-thread layout, warpgroup 0 adds them in); 3 + the exchange (warpgroup 0's threads send
// the rows other CTAs own with st.async, 16 bytes per instruction, and stage their own) and the
// merge and store of this CTA's share on all 384 threads (own row + NS - 1 received, unpacked,
// summed, packed, stored); 4 = 3 without the hand-over. Made-up values; no lse exchanged (a floor).
constexpr int kSk64Rows = 64;
template <int NS, int LEVEL>
__global__ void __launch_bounds__(384, 1) skeleton64_kernel(const __grid_constant__ ta::Params p, const uint4* __restrict__ src) {
  constexpr int D = 128, CH = D / 8;
  constexpr int R = ((kSk64Rows + NS - 1) / NS + 3) & ~3;  // rows per share (as cluster_rows_per)
  extern __shared__ __align__(1024) uint4 smem_raw[];
  uint4* smem = smem_raw + ((1024 - (ta::smem_u32(smem_raw) & 1023)) & 1023) / 16;
  uint4* sQ = smem;                    // 64 rows (16 KB); later this CTA's own rows, staged
  uint4* sK = sQ + kSk64Rows * CH;     // two 64-key tiles (32 KB)
  float4* hand = reinterpret_cast<float4*>(sK + 2 * ta::kBN * CH);  // 17 x 128 float4 (34 KB)
  uint4* recv_o = reinterpret_cast<uint4*>(hand + 17 * 128);        // (NS - 1) x R rows
  const uint32_t bar0 = ta::smem_u32(recv_o + (NS - 1) * R * CH);
  const uint32_t load_full = bar0, recv_full = bar0 + 8;
  const int tid = threadIdx.x, split = blockIdx.y, kvh = blockIdx.z;
  skeleton_prologue(load_full, recv_full, LEVEL >= 3);
  if (LEVEL == 0) return;
  if (tid == 0) {
    ta::mbar_arrive_expect_tx(load_full, (kSk64Rows + 2 * ta::kBN) * D * 2);
    bulk_copy_global_to_shared(ta::smem_u32(sQ), src + (size_t)(kvh * gridDim.x + blockIdx.x) * kSk64Rows * CH,
                               kSk64Rows * D * 2, load_full);
    bulk_copy_global_to_shared(ta::smem_u32(sK), src + (1 << 16) + (size_t)(kvh * gridDim.y + split) * 2 * ta::kBN * CH,
                               2 * ta::kBN * D * 2, load_full);
  }
  ta::mbar_wait(load_full, 0);
  if (LEVEL == 1) return;
  const int ctid = tid - 128, cw = ctid >> 7, t = ctid & 127;
  float o[D / 8][4];
  float m = 0.f, l = 1.f;
  if (tid >= 128) {
    const uint4 kw = sK[ctid];
    made_up_o<D>(kw.x, o);
    m = (float)(kw.y & 15u);
  }
  if (LEVEL == 2 || LEVEL == 3) {  // the hand-over between the consumer warpgroups
    if (tid >= 128) {
      if (cw == 1) {
#pragma unroll
        for (int k = 0; k < D / 8; ++k) hand[k * 128 + t] = make_float4(o[k][0], o[k][1], o[k][2], o[k][3]);
        hand[16 * 128 + t] = make_float4(m, m, l, l);
        asm volatile("bar.arrive 5, 256;\n" ::: "memory");
      } else {
        asm volatile("bar.sync 5, 256;\n" ::: "memory");
        const float4 ml = hand[16 * 128 + t];
        const float mm = fmaxf(m, ml.x);
        const float wo = exp2f(m - mm), wx = exp2f(ml.x - mm);
        l = l * wo + ml.z * wx;
#pragma unroll
        for (int k = 0; k < D / 8; ++k) {
          const float4 x = hand[k * 128 + t];
          o[k][0] = o[k][0] * wo + x.x * wx;
          o[k][1] = o[k][1] * wo + x.y * wx;
          o[k][2] = o[k][2] * wo + x.z * wx;
          o[k][3] = o[k][3] * wo + x.w * wx;
        }
      }
    }
    if (LEVEL == 2) return;
  }
  ta::cluster_wait();  // every CTA's receive barrier is initialised
  const int own_count = max(0, min(R, kSk64Rows - split * R));
  if (tid == 0) ta::mbar_arrive_expect_tx(recv_full, (uint32_t)((NS - 1) * own_count * D * 2));
  if (tid >= 128 && cw == 0) {  // warpgroup 0: 4 warps x 16 rows; 2 rows per thread
    const int warp = t >> 5, lane = t & 31, gid = lane >> 2, tig = lane & 3;
    const float inv = 1.f / l;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = warp * 16 + gid + 8 * h, owner = r / R;
      uint4 v[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        v[q].x = ta::TypeTraits<__nv_bfloat16>::pack(o[4 * q][2 * h] * inv, o[4 * q][2 * h + 1] * inv);
        v[q].y = ta::TypeTraits<__nv_bfloat16>::pack(o[4 * q + 1][2 * h] * inv, o[4 * q + 1][2 * h + 1] * inv);
        v[q].z = ta::TypeTraits<__nv_bfloat16>::pack(o[4 * q + 2][2 * h] * inv, o[4 * q + 2][2 * h + 1] * inv);
        v[q].w = ta::TypeTraits<__nv_bfloat16>::pack(o[4 * q + 3][2 * h] * inv, o[4 * q + 3][2 * h + 1] * inv);
      }
      if (owner == split) {
#pragma unroll
        for (int q = 0; q < 4; ++q) sQ[r * CH + tig * 4 + q] = v[q];
      } else {
        const int slot = ta::cluster_slot(split, owner);
        const uint32_t dst = ta::cluster_map(ta::smem_u32(recv_o + (slot * R + (r - owner * R)) * CH + tig * 4), owner);
        const uint32_t bar = ta::cluster_map(recv_full, owner);
#pragma unroll
        for (int q = 0; q < 4; ++q) st_async_v4(dst + q * 16, v[q], bar);
      }
    }
  }
  ta::mbar_wait(recv_full, 0);
  __syncthreads();  // the own rows staged by warpgroup 0
  uint4* out = static_cast<uint4*>(p.out) + ((size_t)kvh * gridDim.x + blockIdx.x) * kSk64Rows * CH;
  for (int i = tid; i < own_count * CH; i += 384) {
    const int k = i / CH, c = i - k * CH, r = split * R + k;
    const uint4 own = sQ[r * CH + c];
    float acc[8];
    const uint32_t w0[4] = {own.x, own.y, own.z, own.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float2 f = ta::TypeTraits<__nv_bfloat16>::unpack(w0[e]);
      acc[2 * e] = f.x;
      acc[2 * e + 1] = f.y;
    }
#pragma unroll
    for (int s = 0; s < NS - 1; ++s) {
      const uint4 v = recv_o[(s * R + k) * CH + c];
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float2 f = ta::TypeTraits<__nv_bfloat16>::unpack(w[e]);
        acc[2 * e] += 0.5f * f.x;
        acc[2 * e + 1] += 0.5f * f.y;
      }
    }
    uint4 pk;
    pk.x = ta::TypeTraits<__nv_bfloat16>::pack(acc[0], acc[1]);
    pk.y = ta::TypeTraits<__nv_bfloat16>::pack(acc[2], acc[3]);
    pk.z = ta::TypeTraits<__nv_bfloat16>::pack(acc[4], acc[5]);
    pk.w = ta::TypeTraits<__nv_bfloat16>::pack(acc[6], acc[7]);
    out[r * CH + c] = pk;
  }
}

// skeleton_kernel<LOAD, EPI, NS> by its run-time arguments.
using SkeletonKernel = void (*)(ta::Params, const uint4*);
template <int NS>
static SkeletonKernel skeleton_pick(bool load, int epi) {
  static const SkeletonKernel plain[9] = {
      skeleton_kernel<false, 0, NS>, skeleton_kernel<false, 1, NS>, skeleton_kernel<false, 2, NS>,
      skeleton_kernel<false, 3, NS>, skeleton_kernel<false, 4, NS>, skeleton_kernel<false, 5, NS>,
      skeleton_kernel<false, 6, NS>, skeleton_kernel<false, 7, NS>, skeleton_kernel<false, 8, NS>};
  static const SkeletonKernel loaded[9] = {
      skeleton_kernel<true, 0, NS>, skeleton_kernel<true, 1, NS>, skeleton_kernel<true, 2, NS>,
      skeleton_kernel<true, 3, NS>, skeleton_kernel<true, 4, NS>, skeleton_kernel<true, 5, NS>,
      skeleton_kernel<true, 6, NS>, skeleton_kernel<true, 7, NS>, skeleton_kernel<true, 8, NS>};
  return (load ? loaded : plain)[epi];
}

template <typename... Args>
static void launch_ex(bool pdl, dim3 grid, dim3 block, int smem, int cluster_y, cudaStream_t s, void (*k)(Args...),
                      Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[2];
  int n = 0;
  if (pdl) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  if (cluster_y > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = 1;
    attr[n].val.clusterDim.y = cluster_y;
    attr[n].val.clusterDim.z = 1;
    ++n;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  CK(cudaLaunchKernelEx(&cfg, k, args...));
}
template <typename... Args>
static void launch(bool pdl, dim3 grid, dim3 block, cudaStream_t s, void (*k)(Args...), Args... args) {
  launch_ex(pdl, grid, block, 0, 1, s, k, args...);
}

// Captures body() (which enqueues `kernels` launches) into a graph, replays it; median us per kernel.
template <typename F>
static double time_graph(cudaStream_t s, int kernels, F body) {
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  body();
  CK(cudaStreamEndCapture(s, &g));
  CK(cudaGraphInstantiate(&ge, g, 0));
  for (int i = 0; i < 20; ++i) CK(cudaGraphLaunch(ge, s));  // warm-up
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int r = 0; r < 30; ++r) {
    CK(cudaEventRecord(e0, s));
    CK(cudaGraphLaunch(ge, s));
    CK(cudaEventRecord(e1, s));
    CK(cudaEventSynchronize(e1));
    float t;
    CK(cudaEventElapsedTime(&t, e0, e1));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  CK(cudaGraphExecDestroy(ge));
  CK(cudaGraphDestroy(g));
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  return ms[ms.size() / 2] * 1e3 / kernels;
}

int main() {
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  int dev = 0, sms = 0, clock_khz = 0;
  CK(cudaGetDevice(&dev));
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  CK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, dev));
  printf("probe_launch_floor: %d SMs\n", sms);

  const int K = 40;  // kernels per graph
  struct Shape { const char* name; dim3 grid, block; };
  const Shape shapes[] = {{"1 CTA x 128", dim3(1), dim3(128)},
                          {"128 CTAs x 384 (split_kernel_ws)", dim3(128), dim3(384)},
                          {"512 CTAs x 128 (merge_kernel, P1024 N64)", dim3(512), dim3(128)}};
  printf("-- chain: %d empty kernels per graph, us per kernel\n", K);
  for (const Shape& sh : shapes)
    for (int pdl = 0; pdl < 2; ++pdl) {
      const double us = time_graph(s, K, [&] { for (int i = 0; i < K; ++i) launch(pdl, sh.grid, sh.block, s, empty_kernel); });
      printf("   %-44s %-5s %7.2f\n", sh.name, pdl ? "PDL" : "plain", us);
    }

  // The launch shapes of split_kernel_ws at P1024 (grid row tiles x splits x KV heads, 384
  // threads, its ~184 KB of dynamic shared memory: one CTA per SM), with and without the cluster
  // of its splits, and with a cluster barrier at the end: what the boundary of the real launch
  // costs before any work (fifty-fifth session).
  const int ws_smem = jetspec::tree_attn::ws_smem_bytes<128>();  // 188480 B at D 128
  CK(cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, ws_smem));
  CK(cudaFuncSetAttribute(empty_cluster_sync_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, ws_smem));
  struct WsShape { const char* name; dim3 grid; int cluster_y; bool sync; int smem; };
  const WsShape ws_shapes[] = {
      {"N64: 2 x 6 x 8, 184 KB, no cluster", dim3(2, 6, 8), 1, false, ws_smem},
      {"N64: 2 x 6 x 8, 184 KB, cluster 6", dim3(2, 6, 8), 6, false, ws_smem},
      {"N64: 2 x 6 x 8, 184 KB, cluster 6 + barrier", dim3(2, 6, 8), 6, true, ws_smem},
      {"N128: 4 x 3 x 8, 184 KB, no cluster", dim3(4, 3, 8), 1, false, ws_smem},
      {"N128: 4 x 3 x 8, 184 KB, cluster 3", dim3(4, 3, 8), 3, false, ws_smem},
      {"N128: 4 x 3 x 8, 184 KB, cluster 3 + barrier", dim3(4, 3, 8), 3, true, ws_smem},
      {"P4096 N64: 2 x 8 x 8, 184 KB, no cluster", dim3(2, 8, 8), 1, false, ws_smem},
      {"N64: 2 x 6 x 8, no smem, no cluster", dim3(2, 6, 8), 1, false, 0}};
  printf("-- chain: %d empty kernels per graph launched like split_kernel_ws at P1024, us per kernel\n", K);
  for (const WsShape& sh : ws_shapes)
    for (int pdl = 0; pdl < 2; ++pdl) {
      const double us = time_graph(s, K, [&] {
        for (int i = 0; i < K; ++i)
          launch_ex(pdl, sh.grid, dim3(384), sh.smem, sh.cluster_y, s, sh.sync ? empty_cluster_sync_kernel : empty_kernel);
      });
      printf("   %-44s %-5s %7.2f\n", sh.name, pdl ? "PDL" : "plain", us);
    }


  // Skeleton (fifty-ninth session): split_kernel_ws's launch, start copies and cluster epilogue
  // with no key tile, at the P1024 N64 (6 splits) and N128 (3 splits) launches, PDL.
  {
    uint4* src = nullptr;
    CK(cudaMalloc(&src, 4 << 20));
    CK(cudaMemset(src, 0, 4 << 20));
    struct Sk { const char* name; int N, row_tiles, ns; };
    const Sk cells[] = {{"N64: 2 x 6 x 8, cluster 6", 64, 2, 6}, {"N128: 4 x 3 x 8, cluster 3", 128, 4, 3}};
    struct Var { const char* name; bool load; int epi; };
    const Var vars[] = {{"launch only", false, 0},
                        {"start: Q and K(0) landed", true, 0},
                        {"stage (+ fence, CTA barrier)", false, 1},
                        {"stage + cluster wait", false, 2},
                        {"stage + wait + push / receive", false, 3},
                        {"epilogue: + merge and store", false, 4},
                        {"start + epilogue", true, 4},
                        {"stage + own rows to global (no cluster)", false, 5},
                        {"exchange by st.async, no stage", false, 6},
                        {"stage + exchange through L2 + store", false, 7},
                        {"st.async exchange + merge and store", false, 8},
                        {"start + st.async exchange + merge, store", true, 8},
                        {"start + stage + L2 exchange + store", true, 7}};
    printf("-- skeleton: %d calls per graph launched like split_kernel_ws (PDL), no key tile, us per call\n", K);
    for (const Sk& c : cells) {
      ta::Params p;
      memset(&p, 0, sizeof(p));
      p.B = 1; p.N = c.N; p.Hq = 32; p.Hkv = 8; p.G = 4; p.rows = c.N * 4; p.num_splits = c.ns; p.cluster_merge = 1;
      CK(cudaMalloc(&p.out, (size_t)c.N * 32 * 128 * 2));
      CK(cudaMalloc(&p.lse, (size_t)c.N * 32 * 4));
      CK(cudaMalloc(&p.o_part, (size_t)c.ns * 8 * c.row_tiles * 128 * 128 * 2));
      CK(cudaMalloc(&p.lse_part, 8 * c.row_tiles * sizeof(unsigned)));  // EPI 7's arrival counters
      CK(cudaMemset(p.lse_part, 0, 8 * c.row_tiles * sizeof(unsigned)));
      for (const Var& v : vars) {
        const SkeletonKernel k = c.ns == 6 ? skeleton_pick<6>(v.load, v.epi) : skeleton_pick<3>(v.load, v.epi);
        const int cluster = (v.epi >= 2 && v.epi <= 4) || v.epi == 6 || v.epi == 8 ? c.ns : 1;
        CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, ws_smem));
        const double us = time_graph(s, K, [&] {
          for (int i = 0; i < K; ++i)
            launch_ex(true, dim3(c.row_tiles, c.ns, 8), dim3(384), ws_smem, cluster, s, k, p, (const uint4*)src);
        });
        CK(cudaStreamSynchronize(s));
        CK(cudaGetLastError());
        printf("   %-28s %-42s %7.2f\n", c.name, v.name, us);
      }
      CK(cudaFree(p.out));
      CK(cudaFree(p.lse));
      CK(cudaFree(p.o_part));
      CK(cudaFree(p.lse_part));
    }
    printf("   (the real calls' fixed part F: 5.27 us at N64 / 6 splits, 5.04 at N128 / 3 splits, fifty-fourth session)\n");
    CK(cudaFree(src));
  }

  // Skeleton of the key-split form's 64-row CTAs with a cluster merge (fifty-ninth session), at
  // P1024 N64: 4 row tiles of 64 x 3 splits x 8 KV heads (96 CTAs, clusters of 3).
  {
    uint4* src = nullptr;
    CK(cudaMalloc(&src, 4 << 20));
    CK(cudaMemset(src, 0, 4 << 20));
    ta::Params p;
    memset(&p, 0, sizeof(p));
    p.B = 1; p.N = 64; p.Hq = 32; p.Hkv = 8; p.G = 4; p.rows = 256; p.num_splits = 3;
    CK(cudaMalloc(&p.out, (size_t)64 * 32 * 128 * 2));
    const char* names[5] = {"launch only", "start: Q and both K(0) landed", "start + hand-over",
                            "start + hand-over + exchange + merge, store", "start + exchange + merge, store"};
    const SkeletonKernel ks[5] = {skeleton64_kernel<3, 0>, skeleton64_kernel<3, 1>, skeleton64_kernel<3, 2>,
                                  skeleton64_kernel<3, 3>, skeleton64_kernel<3, 4>};
    printf("-- skeleton64: the key-split form's 64-row CTAs with a cluster merge, 4 x 3 x 8, clusters of 3 (PDL), us per call\n");
    for (int v = 0; v < 5; ++v) {
      CK(cudaFuncSetAttribute(ks[v], cudaFuncAttributeMaxDynamicSharedMemorySize, ws_smem));
      const double us = time_graph(s, K, [&] {
        for (int i = 0; i < K; ++i) launch_ex(true, dim3(4, 3, 8), dim3(384), ws_smem, v >= 3 ? 3 : 1, s, ks[v], p, (const uint4*)src);
      });
      CK(cudaStreamSynchronize(s));
      CK(cudaGetLastError());
      printf("   %-50s %7.2f\n", names[v], us);
    }
    CK(cudaFree(p.out));
    CK(cudaFree(src));
  }

  const long words = (4l << 20) / 16;  // 4 MB
  int4 *a = nullptr, *b = nullptr;
  CK(cudaMalloc(&a, words * 16));
  CK(cudaMalloc(&b, words * 16));
  CK(cudaMemset(a, 0, words * 16));
  printf("-- handoff: 4 MB written by one kernel, read (and written) by the next, us per kernel\n");
  for (const Shape& sh : shapes) {
    if (sh.grid.x == 1) continue;
    for (int pdl = 0; pdl < 2; ++pdl) {
      const double us = time_graph(s, K, [&] {
        for (int i = 0; i < K; ++i) launch(pdl, sh.grid, sh.block, s, copy_kernel, (const int4*)(i & 1 ? b : a), (i & 1 ? a : b), words);
      });
      printf("   %-44s %-5s %7.2f   (floor 8 MB / 4.3 TB/s = %.2f)\n", sh.name, pdl ? "PDL" : "plain", us, 8.0e6 / 4.3e12 * 1e6);
    }
  }

  int* word = nullptr;
  int* sink = nullptr;
  long long* out = nullptr;
  const int ctas = 128;
  CK(cudaMalloc(&word, 64 * sizeof(int)));
  CK(cudaMemset(word, 0, 64 * sizeof(int)));
  CK(cudaMalloc(&sink, sizeof(int)));
  CK(cudaMalloc(&out, ctas * 3 * sizeof(long long)));
  printf("-- latency: one thread per CTA (128 CTAs), after a 4 MB copy kernel, cycles (p10 / p50 / p90)\n");
  for (int pdl = 0; pdl < 2; ++pdl) {
    CK(cudaMemset(out, 0, ctas * 3 * sizeof(long long)));
    for (int r = 0; r < 5; ++r) {  // the last repetition's values are read
      launch(false, dim3(512), dim3(128), s, copy_kernel, (const int4*)a, b, words);
      launch(pdl, dim3(ctas), dim3(128), s, latency_kernel, (const int*)word, (volatile long long*)out, (volatile int*)sink);
    }
    CK(cudaStreamSynchronize(s));
    std::vector<long long> h(ctas * 3);
    CK(cudaMemcpy(h.data(), out, h.size() * sizeof(long long), cudaMemcpyDeviceToHost));
    const char* what[3] = {"first load", "second load (same line)", "ld.global.cg (L2)"};
    for (int j = 0; j < 3; ++j) {
      std::vector<long long> v;
      for (int c = 0; c < ctas; ++c) v.push_back(h[c * 3 + j]);
      std::sort(v.begin(), v.end());
      printf("   %-5s %-26s %6lld / %6lld / %6lld\n", pdl ? "PDL" : "plain", what[j], v[ctas / 10], v[ctas / 2], v[ctas * 9 / 10]);
    }
  }
  printf("   (cycles at the SM clock; nominal %.2f GHz: divide by it for ns)\n", clock_khz / 1e6);
  CK(cudaFree(a));
  CK(cudaFree(b));
  CK(cudaFree(word));
  CK(cudaFree(sink));
  CK(cudaFree(out));
  return 0;
}
