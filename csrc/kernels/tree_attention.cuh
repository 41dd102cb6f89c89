// Tree attention (torch-free): flash-decoding style split-KV attention with a bit-packed tree mask.
//
// Semantics (see docs/tree_attention.md): for batch row b with prefix length P = prefix_lens[b],
// query tree node i (of N) and query head h (KV head h / G, G = Hq / Hkv) attends to cache slots
// [0, P) (the prefix, always visible) and to slot P + j (tree node j) iff bit j of
// tree_mask[b, i] is set. out = softmax(scale * q k^T) v, lse = log-sum-exp of the scaled scores
// (natural log). A row that sees nothing gets out = 0, lse = -inf.
//
// Work decomposition:
//   * One CTA owns BM = 64 "query rows" of one (batch row, KV head): row r = node * G + g, so all
//     G query heads sharing a KV head are processed together and every K/V tile is loaded once per
//     CTA. 4 warps, each warp owns 16 rows (the M of one m16n8k16 MMA).
//   * The key range [0, P + N) is cut into BN = 64-key tiles; the tiles are divided among
//     `num_splits` CTAs along gridDim.y (flash-decoding). num_splits is a host choice from static
//     shapes only; the per-split tile ranges are computed on the device from prefix_lens, so the
//     launch is CUDA-graph capturable. A split whose range is empty writes lse = -inf partials.
//   * K/V tiles are copied with 16-byte cp.async into XOR-swizzled shared memory, double-buffered
//     (the copy of tile t+1 overlaps the maths of tile t).
//   * S = Q K^T and O += P V use mma.sync m16n8k16 (bf16/fp16 inputs, fp32 accumulate) fed by
//     ldmatrix (.trans for V). Online softmax in fp32 registers, exp2 with scale * log2(e).
//   * Mask bits are read only for tiles that reach past the prefix (key tile end > P).
//   * num_splits == 1: the split kernel writes out/lse directly. Otherwise it writes partials
//     (normalised O, natural-log lse, per split) and merge_kernel combines them in fp32.
#pragma once

#include <cuda.h>  // CUtensorMap (a type only: no driver library is linked)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

#include "grid_dependency.cuh"

#include "kernels/mma_sync.cuh"

#include "tree_attention_wgmma.cuh"

namespace jetspec {
namespace tree_attn {

// CTA shape: NWARPS (4 or 8) warps, each owning one m16 slab of query rows (BM = 16 * NWARPS);
// with wgmma every 4 warps form a warpgroup computing 64 rows. kBN keys per KV tile.
constexpr int kBN = 64;
__host__ __device__ constexpr int bm_of(int nwarps) { return 16 * nwarps; }
static_assert(kBN % 16 == 0, "KV tile must be a multiple of the MMA k (16)");

struct Params {
  // split_kernel_ws only: TMA descriptors of the K and V caches, 4-D (D, S, Hkv, B) with the
  // caches' strides, boxes of 64 head-dim columns x 64 keys in the 128-byte swizzle (the
  // kv_off_sw128 layout), encoded by the launcher (encode_kv_tensor_map). That kernel takes
  // Params as a __grid_constant__ parameter so that TMA can read them where they are.
  CUtensorMap tmap_k, tmap_v;
  // split_kernel_ws only, when q_tma: the same for q, 4-D (D, Hq, N, B) with q's strides, boxes
  // of 64 head-dim columns x G heads x 128 / G nodes (a CTA's 128 query rows; G divides 128).
  CUtensorMap tmap_q;
  int q_tma;
  const void* q;         // (B, N, Hq, D), last dim contiguous, strides q_sb/q_sn/q_sh (elements)
  const void* k;         // (B, Hkv, S, D), last dim contiguous
  const void* v;         // (B, Hkv, S, D), last dim contiguous
  const int32_t* prefix_lens;  // (B,)
  const int32_t* mask;   // (B, N, W) contiguous, W = ceil(N / 32)
  void* out;             // (B, N, Hq, D) contiguous
  float* lse;            // (B, Hq, N) contiguous
  // (splits, B * Hkv, rows, D), only when num_splits > 1 and not cluster_merge: each split's
  // normalised O, in fp32 from split_kernel / split_kernel_pipe, in the input dtype T from
  // split_kernel_ws (bounded by max |v|, so T's range holds it; half the bytes to write and to
  // read back in merge_kernel; measured faster there, slower in split_kernel_pipe at N = 1:
  // benchmarks/RESULTS.md).
  void* o_part;
  float* lse_part;       // (splits, B * Hkv, rows) fp32 (as o_part)
  int64_t q_sb, q_sn, q_sh;
  int64_t k_sb, k_sh, k_ss;
  int64_t v_sb, v_sh, v_ss;
  int B, N, Hq, Hkv, G, S, W;
  int rows;        // N * G query rows per (batch row, KV head)
  int num_splits;
  // split_kernel_ws only: 1 when the num_splits (2..8) CTAs of a row tile form one thread-block
  // cluster and merge their partials through distributed shared memory at the end of the kernel
  // (no o_part / lse_part, no merge_kernel); 0: partials in global memory, merge_kernel.
  int cluster_merge;
  float scale_log2;  // softmax scale * log2(e)
};

// ---------------------------------------------------------------------------------------------
// PTX helpers
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy global -> shared; src_bytes = 0 zero-fills the destination (no read).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1,
                                            uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t addr, uint32_t& r0, uint32_t& r1,
                                                  uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
// Four 8x8 b16 matrices to shared memory (sm_90): thread t holds row t / 4, columns 2 (t % 4)
// and 2 (t % 4) + 1 of each (the MMA accumulator layout) and gives the address of row t % 8 of
// matrix t / 8 (16 bytes).
__device__ __forceinline__ void stmatrix_x4(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0), "r"(r1),
               "r"(r2), "r"(r3)
               : "memory");
#endif
}

template <typename T>
struct TypeTraits;

template <>
struct TypeTraits<__nv_bfloat16> {
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low 16 bits) = lo
    return *reinterpret_cast<uint32_t*>(&v);
  }
  __device__ __forceinline__ static float2 unpack(uint32_t w) {  // inverse of pack (exact)
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w));
  }
  // D = A * B + D, A 16x16 row-major, B 16x8 "col" (i.e. stored n-major), fp32 accumulate.
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    mma_m16n8k16<__nv_bfloat16>(d, a, b0, b1);
  }
};

template <>
struct TypeTraits<__half> {
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  __device__ __forceinline__ static float2 unpack(uint32_t w) {
    return __half22float2(*reinterpret_cast<const __half2*>(&w));
  }
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    mma_m16n8k16<__half>(d, a, b0, b1);
  }
};

// Shared-memory tile of `rows` x D elements stored as 16-byte chunks (8 elements). Chunk c of row
// r lives at r * (D / 8) + (c ^ (r & 7)): the 8 rows one ldmatrix phase reads hit 8 different
// 16-byte bank groups (D / 8 >= 8 chunks per row, so the XOR stays inside the row).
template <int D>
__device__ __forceinline__ int swz(int row, int chunk) {
  static_assert(D % 64 == 0, "swizzle needs at least 8 chunks per row");
  return row * (D / 8) + (chunk ^ (row & 7));
}

// K/V tile layout of the wgmma path: D / 64 column blocks of [kBN rows x 128 bytes]; chunk c of
// row r sits in block c / 8 at position (c % 8) ^ (r % 8). With 1024-byte aligned blocks this is
// exactly the 128-byte-swizzle layout wgmma descriptors describe (K: K-major B operand of Q K^T;
// V: MN-major B operand of P V). Units: 16-byte chunks.
template <int D>
__device__ __forceinline__ int kv_off_sw128(int row, int chunk) {
  return (chunk >> 3) * (kBN * 8) + row * 8 + ((chunk & 7) ^ (row & 7));
}

// Q tile layout of split_kernel_ws: D / 64 column blocks of [kRows rows x 128 bytes], chunk c of
// row r in block c / 8 at position (c % 8) ^ (r % 8): what a TMA box of 64 columns x kRows rows
// writes in the 128-byte swizzle (kv_off_sw128 with kRows rows). At D = 64 it is swz<64>.
template <int D, int kRows>
__device__ __forceinline__ int q_off_sw128(int row, int chunk) {
  return (chunk >> 3) * (kRows * 8) + row * 8 + ((chunk & 7) ^ (row & 7));
}

// This warp's Q fragments (its 16 rows of the CTA's Q tile at `sq`: swz layout, or q_off_sw128
// with kRows rows when kRows > 0) for the A operand of Q K^T (mma.sync and wgmma alike): qf[ks]
// covers head-dim columns ks * 16 .. ks * 16 + 15.
template <int D, int kRows = 0>
__device__ __forceinline__ void load_q_fragments(uint32_t (&qf)[D / 16][4], const uint4* sq, int warp, int lane) {
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    const int r = warp * 16 + (lane & 15);
    const int c = ks * 2 + (lane >> 4);
    int off;
    if constexpr (kRows > 0)
      off = q_off_sw128<D, kRows>(r, c);
    else
      off = swz<D>(r, c);
    ldmatrix_x4(smem_u32(sq + off), qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3]);
  }
}
// wgmma shared-memory matrix descriptor, 128-byte swizzle.
__device__ __forceinline__ uint64_t make_desc_sw128(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) |
         ((uint64_t)((sbo & 0x3FFFF) >> 4) << 32) | ((uint64_t)1 << 62);
}
// The descriptor of the same layout `bytes` (a multiple of 16) further on: one 32-bit add to the
// start-address field (bits 0-13, address >> 4), which cannot carry out of it while the address
// stays inside shared memory (< 2^18 bytes). Building every k-step's descriptor from its address
// cost ~4 uniform instructions per wgmma, inside the ping-pong turn.
__device__ __forceinline__ uint64_t desc_advance(uint64_t desc, uint32_t bytes) {
  const uint32_t lo = (uint32_t)desc + (bytes >> 4);
  return ((desc >> 32) << 32) | lo;
}

__device__ __forceinline__ void wgmma_fence() {
// wgmma group fences for the pipelined kernel. The wgmma kernels are only launched on sm_90a;
// on other targets (the sm_80 / PTX build) these compile to nothing so the file still builds.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define JETSPEC_WGMMA_COMMIT() asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory")
#define JETSPEC_WGMMA_WAIT(n) asm volatile("wgmma.wait_group.sync.aligned " #n ";\n" ::: "memory")
#else
#define JETSPEC_WGMMA_COMMIT() ((void)0)
#define JETSPEC_WGMMA_WAIT(n) ((void)0)
#endif

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit_and_wait() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#endif
}
// Make shared-memory writes of the generic proxy (cp.async) visible to wgmma (async proxy).
__device__ __forceinline__ void fence_proxy_async_smem() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Pin accumulator registers after wgmma.wait so that no read is scheduled before the wait.
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(r[i][e])::"memory");
}

// The keys and key tiles one split CTA covers. The prefix length is clamped so that no slot
// outside [0, S) is ever read even if the caller broke the contract prefix_len + N <= S (results
// are then meaningless but memory-safe). Keys [0, L) exist; this split takes key tiles
// [t_begin, t_end), empty when t_begin >= t_end (only possible when num_splits > 1).
// clamped_prefix_len is that clamp, shared by both split conventions below.
__device__ __forceinline__ int clamped_prefix_len(const Params& p, int plen_raw) {
  return max(0, min(plen_raw, p.S - p.N));
}
struct SplitRange {
  int plen, L, t_begin, t_end;
};
__device__ __forceinline__ SplitRange split_range(const Params& p, int b, int split) {
  SplitRange r;
  r.plen = clamped_prefix_len(p, p.prefix_lens[b]);
  r.L = r.plen + p.N;
  const int num_tiles = (r.L + kBN - 1) / kBN;
  const int tiles_per_split = (num_tiles + p.num_splits - 1) / p.num_splits;
  r.t_begin = split * tiles_per_split;
  r.t_end = min(num_tiles, r.t_begin + tiles_per_split);
  return r;
}
// split_kernel_ws's split convention: split s takes key tiles s, s + ns, s + 2 ns, ...
// (interleaved) instead of a contiguous range. Same tile counts per split (they differ by at
// most one); the few tree tiles at the end of the key range (the only ones that consult the
// mask) are spread over the splits instead of all landing in the last one; and a split's first
// tile is `split` whatever the prefix length, so its K copy can start before that length lands.
// Measured on the H200 (fourteenth session, benchmarks/RESULTS.md): interleaving alone was up to
// 0.6 us slower at prefix <= 4096 (6 us at P16384 N256); with the length loaded first and
// K(first) copied early, 0.4-0.7 us faster at prefix 1024 and 4096, 2-8 us slower at P16384 N256.
// `count` tiles from `first` with stride `stride`; empty when count == 0.
struct SplitTiles {
  int plen, L, first, count, stride;
};
// (plen_raw: prefix_lens[b], loaded by the caller as early as it may: the first K/V copies wait
// for it, so its latency should overlap the CTA's set-up and the Q copies.)
__device__ __forceinline__ SplitTiles split_tiles_interleaved(const Params& p, int plen_raw, int split) {
  SplitTiles r;
  r.plen = clamped_prefix_len(p, plen_raw);
  r.L = r.plen + p.N;
  const int num_tiles = (r.L + kBN - 1) / kBN;
  r.first = split;
  r.stride = p.num_splits;
  r.count = split < num_tiles ? (num_tiles - 1 - split) / p.num_splits + 1 : 0;
  return r;
}
// Rows of an empty split: lse = -inf partials, and O partials of zeros. merge_kernel loads every
// split's O before it knows which splits are empty (one round trip to L2) and drops an empty
// split's with a select on the weight, so the zeros are never used: they are written so that no
// kernel reads memory nobody wrote (compute-sanitizer initcheck reported each such load, and the
// flood of reports made its runs too slow to finish). Costs bm x D x sizeof(PartT) bytes of
// stores, in empty splits only (forced split counts, or short rows of a batch split for its
// longest row). PartT: the split kernel's partial type (float; T for split_kernel_ws).
template <int D, typename PartT>
__device__ __forceinline__ void write_empty_split(const Params& p, int split, int bh, int m_base, int bm,
                                                  int tid, int nthreads) {
  const int64_t row0 = ((int64_t)split * p.B * p.Hkv + bh) * p.rows + m_base;
  const int nrows = min(bm, p.rows - m_base);
  for (int r = tid; r < nrows; r += nthreads) p.lse_part[row0 + r] = -INFINITY;
  constexpr int kChunksPerRow = D * (int)sizeof(PartT) / 16;  // 16-byte stores (rows 16-aligned)
  uint4* o = reinterpret_cast<uint4*>(static_cast<PartT*>(p.o_part) + row0 * D);
  for (int i = tid; i < nrows * kChunksPerRow; i += nthreads) o[i] = make_uint4(0u, 0u, 0u, 0u);
}

template <int D, int NWARPS>
constexpr int smem_bytes() {
  // 2 stages of K + 2 stages of V + the Q tile, all (rows x D) 16-bit elements, plus 1 KB of
  // slack to align the K/V stages to 1024 bytes (wgmma swizzle atoms).
  return (bm_of(NWARPS) + 4 * kBN) * D * 2 + 1024;
}

// 2^x on the special-function unit (ex2.approx.ftz: relative error ~2^-22, 2^-inf = 0, results
// below 2^-126 flush to 0). exp2f adds a range check and two multiplies per call for denormal
// results, 3 of the ~15 instructions per score in the consumers' per-tile loop.
__device__ __forceinline__ float fast_exp2(float x) {
#if defined(JETSPEC_TREE_ATTN_TIMELINE) && defined(JETSPEC_TREE_ATTN_DIAG_NO_EXP)
  return fmaf(x, 0x1p-20f, 1.f);  // diagnostic build (setup.py): the MUFU's cost taken away; WRONG results
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

// The running max of a row moves only when a tile's max exceeds it by more than this (base 2):
// the probabilities exp2(s - m_run) then stay <= 2^8, far from fp32 / bf16 / fp16 overflow
// (fp16 P: 65504), and the rescale of O (64 multiplies per thread per tile at D = 128) is
// skipped on most tiles (warp-uniform: see rescale_o). Softmax is invariant to the base,
// and m_run goes into the lse with the sum taken against it, so the results are the same maths.
constexpr float kMaxSlack = 8.f;
// max of two floats that is NaN when either is (fmaxf returns the other operand). The split
// merges take the max of the splits' lse with it, so that a row whose scores hold a NaN (a NaN in
// its query, or in a key it sees) comes out NaN, as from the reference, instead of the merge
// dropping the NaN split's weight (out 0 or the other splits' result, lse -inf).
__device__ __forceinline__ float nan_max(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float y;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(y) : "f"(a), "f"(b));
  return y;
#else
  return (a != a || b != b) ? a + b : fmaxf(a, b);
#endif
}

// A thread's max of its 16 scores of row half h (s[i][2h], s[i][2h + 1]) as a pairwise tree (depth
// 4 instead of a 16-long dependent chain: with two consumer warps per scheduler little else hides
// the latency).
__device__ __forceinline__ float thread_row_max(const float (&s)[kBN / 8][4], int h) {
  constexpr int NT_S = kBN / 8;
  float part[NT_S];
#pragma unroll
  for (int i = 0; i < NT_S; ++i) part[i] = fmaxf(s[i][2 * h], s[i][2 * h + 1]);
#pragma unroll
  for (int w = NT_S / 2; w > 0; w /= 2)
#pragma unroll
    for (int i = 0; i < w; ++i) part[i] = fmaxf(part[i], part[i + w]);
  return part[0];
}
// The lazy max's test, max of a thread's 16 scores of row half h, as a signed-integer max of
// their bit patterns with 3-input VIMNMX3 (sm_90: 8 instructions instead of thread_row_max's 15).
// Non-negative floats order like their bit patterns as signed integers, and every negative
// float's pattern is a negative integer, so the result is the true max whenever that is >= +0
// (-inf, a masked score, never wins then); otherwise it is some negative score, and the caller
// must not rely on it (softmax_update: only when m_run + kMaxSlack >= 0). A NaN score (a pattern
// above +inf's) can win and hide the row's other scores from the test; such a row's output is NaN
// whichever path it takes (its exponential is NaN), as with the fmaxf test before. (Keys past L,
// whose scores may be NaN, are masked to -inf before this test.)
__device__ __forceinline__ float thread_row_max_if_nonneg(const float (&s)[kBN / 8][4], int h) {
  static_assert(kBN / 8 == 8, "16 scores per row half");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  auto b = [&](int i, int e) { return __float_as_int(s[i][2 * h + e]); };
  const int a0 = __vimax3_s32(b(0, 0), b(0, 1), b(1, 0));
  const int a1 = __vimax3_s32(b(1, 1), b(2, 0), b(2, 1));
  const int a2 = __vimax3_s32(b(3, 0), b(3, 1), b(4, 0));
  const int a3 = __vimax3_s32(b(4, 1), b(5, 0), b(5, 1));
  const int a4 = __vimax3_s32(b(6, 0), b(6, 1), b(7, 0));
  return __int_as_float(max(__vimax3_s32(a0, a1, a2), __vimax3_s32(a3, a4, b(7, 1))));
#else
  return thread_row_max(s, h);
#endif
}
// The probabilities exp2(s * scale - base) of row half h, left in s, and (kRowSums) their sum
// (this thread's 16, as a pairwise tree; 0 without kRowSums: the caller sums on the tensor cores,
// wgmma_row_sums).
template <bool kRowSums = true>
__device__ __forceinline__ float exp_row_sum(float (&s)[kBN / 8][4], int h, float scale, float base) {
  constexpr int NT_S = kBN / 8;
  float part[NT_S];
#pragma unroll
  for (int i = 0; i < NT_S; ++i) {
    s[i][2 * h] = fast_exp2(fmaf(s[i][2 * h], scale, -base));
    s[i][2 * h + 1] = fast_exp2(fmaf(s[i][2 * h + 1], scale, -base));
    part[i] = s[i][2 * h] + s[i][2 * h + 1];
  }
  if constexpr (kRowSums) {
#pragma unroll
    for (int w = NT_S / 2; w > 0; w /= 2)
#pragma unroll
      for (int i = 0; i < w; ++i) part[i] += part[i + w];
    return part[0];
  } else {
    return 0.f;
  }
}

// Online-softmax update of a thread's two rows for one key tile of masked scores s, which times
// `scale` (> 0; 1 when s is already scaled) are base-2 logits: new running max m_run (lazy,
// kMaxSlack) and sum l_run (per-thread partial, quad-reduced at the end), the rescale factor
// alpha of O (exactly 1 when m_run did not move), and the probabilities left in s. Without
// kRowSums, l_run is left alone (the caller sums P on the tensor cores and rescales those sums
// with O).
template <bool kRowSums = true>
__device__ __forceinline__ void softmax_update_moving(float (&s)[kBN / 8][4], float (&m_run)[2], float (&l_run)[2],
                                                      float (&alpha)[2], float scale = 1.f) {
#if defined(JETSPEC_TREE_ATTN_TIMELINE) && defined(JETSPEC_TREE_ATTN_DIAG_NO_SOFTMAX)
  // Diagnostic build (setup.py): no softmax update, the scores are the probabilities; WRONG results.
  alpha[0] = alpha[1] = 1.f;
  if (m_run[0] == -INFINITY) m_run[0] = m_run[1] = 0.f, l_run[0] = l_run[1] = 1.f;
#else
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float mx = thread_row_max(s, h);
    // The 4 threads of a quad hold the same row.
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    mx *= scale;  // (scale > 0: the max of the scaled scores)
    // (-inf > -inf + 8 is false: a row that has seen nothing yet keeps m = -inf.)
    const float m_new = mx > m_run[h] + kMaxSlack ? mx : m_run[h];
    // Rows that have seen nothing yet keep m = -inf; use 0 as the exponent base so that
    // exp2(-inf - base) = 0 instead of NaN.
    const float base = (m_new == -INFINITY) ? 0.f : m_new;
    alpha[h] = m_new == m_run[h] ? 1.f : fast_exp2(m_run[h] - base);
    m_run[h] = m_new;
    if constexpr (kRowSums)
      l_run[h] = l_run[h] * alpha[h] + exp_row_sum(s, h, scale, base);
    else
      exp_row_sum<false>(s, h, scale, base);
  }
#endif
}
// softmax_update, the same results bit for bit, without the quad shuffles on most tiles. The
// lazy max (kMaxSlack) leaves every row's m_run where it is on most tiles, and whether it does
// needs no row max: it holds for the warp exactly when every thread's own scores stay within
// m_run + kMaxSlack (a row's max is the max of its quad's). So the common path is a max over the
// thread's 16 scores per row, one warp vote, and the exponentials against m_run; a warp where some
// row's max moves, or some row has seen no key yet (m_run = -inf: every CTA's first tile), or
// some row's m_run + kMaxSlack is negative (thread_row_max_if_nonneg's limit), takes
// softmax_update_moving (shuffles, the new max, alpha).
template <bool kRowSums = true>
__device__ __forceinline__ void softmax_update(float (&s)[kBN / 8][4], float (&m_run)[2], float (&l_run)[2],
                                               float (&alpha)[2], float scale = 1.f) {
#if defined(JETSPEC_TREE_ATTN_TIMELINE) && defined(JETSPEC_TREE_ATTN_DIAG_NO_SOFTMAX)
  softmax_update_moving<kRowSums>(s, m_run, l_run, alpha, scale);  // the diagnostic build's no-op update
#else
  bool kept = true;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    // (m_run = -inf, a row that has seen no key yet, fails the second test too.)
    const float limit = m_run[h] + kMaxSlack;
    kept &= !(thread_row_max_if_nonneg(s, h) * scale > limit) & (limit >= 0.f);  // (& : no branch)
  }
  if (!__all_sync(0xffffffffu, kept)) {
    softmax_update_moving<kRowSums>(s, m_run, l_run, alpha, scale);
    return;
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    alpha[h] = 1.f;
    if constexpr (kRowSums)
      l_run[h] += exp_row_sum(s, h, scale, m_run[h]);
    else
      exp_row_sum<false>(s, h, scale, m_run[h]);
  }
#endif
}
// O *= alpha per row (rows gid and gid + 8 of the accumulator fragment).
template <int NT_O>
__device__ __forceinline__ void scale_o(float (&o)[NT_O][4], const float (&alpha)[2]) {
#pragma unroll
  for (int k = 0; k < NT_O; ++k) {
    o[k][0] *= alpha[0];
    o[k][1] *= alpha[0];
    o[k][2] *= alpha[1];
    o[k][3] *= alpha[1];
  }
}
// scale_o of O and of its row sums kept on the tensor cores (wgmma_row_sums), skipped when no
// row of the warp moved its max (alpha exactly 1: most tiles, kMaxSlack; a warp-uniform branch,
// decided by a vote). split_kernel_ws's form; see below for split_kernel_pipe's.
template <int NT_O>
__device__ __forceinline__ void rescale_o(float (&o)[NT_O][4], float (&l_sum)[1][4], const float (&alpha)[2]) {
  if (!__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) return;
  scale_o(o, alpha);
  scale_o(l_sum, alpha);
}
// Whether a warp must rescale O (scale_o) after a tile: some row of the warp moved its max
// (alpha != 1; most tiles keep it, kMaxSlack). A warp vote, for a warp-uniform branch. It also
// asks whether a row sum is NaN (rescaling such a row changes nothing: it is NaN already) only to
// make the vote depend on the softmax's last result: the callers put the wait for the P V product
// after the branch on it. (In one basic block with the softmax, ptxas hoisted that wait above the
// softmax's max and exponentials, so the softmax of tile i + 1 no longer ran under P(i) V(i).
// Measured on the H200, twenty-first session: split_kernel_pipe 7 % faster per tile (P1024 N1,
// one split: 17.4-17.6 vs 18.8 us); split_kernel_ws, whose other warpgroup's products fill the
// tensor pipe meanwhile, no faster (P1024 N256 14.17 vs 14.03-14.10 us), so it keeps rescale_o.)
__device__ __forceinline__ bool rescale_needed_after_sums(const float (&alpha)[2], const float (&l_run)[2]) {
  const bool nan_sum = (l_run[0] != l_run[0]) | (l_run[1] != l_run[1]);
  return __any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f || nan_sum);
}
// A row's running sum is spread over the 4 threads of its quad (tig): add them up.
__device__ __forceinline__ void quad_sum_row_sums(float (&l_run)[2]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l_run[h] += __shfl_xor_sync(0xffffffffu, l_run[h], 1);
    l_run[h] += __shfl_xor_sync(0xffffffffu, l_run[h], 2);
  }
}

// Online-softmax state of a thread's two query rows (rows gid and gid + 8 of its warp's 16) and
// the epilogue that writes them: shared by every split kernel.
// Quad-reduce the row sums, normalise O and write either out/lse (one split) or the fp32 partials.
template <int D, typename T>
__device__ __forceinline__ void write_rows(const Params& p, const float (&o)[D / 8][4], float (&l_run)[2],
                                           const float (&m_run)[2], int row0, int split, int bh, int b, int kvh,
                                           int tig) {
  constexpr int NT_O = D / 8;
  quad_sum_row_sums(l_run);
  constexpr float kLn2 = 0.6931471805599453f;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int grow = row0 + h * 8;
    if (grow >= p.rows) continue;
    const float l = l_run[h];
    // l is 0 (the row saw no key), > 0, or NaN (a NaN score): NaN goes on into out and lse.
    const float inv = l != 0.f ? 1.f / l : 0.f;
    const float lse_v = l != 0.f ? (m_run[h] + __log2f(l)) * kLn2 : -INFINITY;
    const int n = grow / p.G;
    const int hq = kvh * p.G + (grow - n * p.G);
    if (p.num_splits == 1) {
      T* orow = static_cast<T*>(p.out) + (((int64_t)b * p.N + n) * p.Hq + hq) * D;
#pragma unroll
      for (int i = 0; i < NT_O; ++i) {
        const uint32_t v = TypeTraits<T>::pack(o[i][2 * h] * inv, o[i][2 * h + 1] * inv);
        *reinterpret_cast<uint32_t*>(orow + i * 8 + tig * 2) = v;
      }
      if (tig == 0) p.lse[((int64_t)b * p.Hq + hq) * p.N + n] = lse_v;
    } else {
      const int64_t prow = ((int64_t)split * p.B * p.Hkv + bh) * p.rows + grow;
      float* orow = static_cast<float*>(p.o_part) + prow * D;
#pragma unroll
      for (int i = 0; i < NT_O; ++i)
        *reinterpret_cast<float2*>(orow + i * 8 + tig * 2) =
            make_float2(o[i][2 * h] * inv, o[i][2 * h + 1] * inv);
      if (tig == 0) p.lse_part[prow] = lse_v;
    }
  }
}

// A warp's 16 rows of O (accumulator fragments; rows gid and gid + 8 scaled by inv[0] / inv[1])
// as T into `stage`, those 16 rows of a swz-layout tile. On sm_90 with stmatrix: 8 instructions
// at D = 128 instead of 32 four-byte stores and their addresses (the staging had taken 0.7-1.0
// us per CTA, several times its instruction count; with stmatrix P4096 N128 22.84 -> 22.64 us
// and P16384 N256 ~130 -> ~124 on the H200, seventeenth session). Elsewhere (never launched
// there: split_kernel_ws is sm_90 only) the four-byte stores.
template <int D, typename T>
__device__ __forceinline__ void stage_fragments(const float (&o)[D / 8][4], const float (&inv)[2], uint4* stage,
                                                int lane) {
  constexpr int NT_O = D / 8;
  auto pk = [&](int i, int h) { return TypeTraits<T>::pack(o[i][2 * h] * inv[h], o[i][2 * h + 1] * inv[h]); };
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // One instruction per two column groups i, i + 1: matrices (i, rows 0-7), (i, rows 8-15),
  // (i + 1, rows 0-7), (i + 1, rows 8-15); lane L addresses row L % 8 of matrix L / 8.
  const int m = lane >> 3;
  const int r = (lane & 7) + 8 * (m & 1);
  const int dc = m >> 1;
#pragma unroll
  for (int i = 0; i < NT_O; i += 2)
    stmatrix_x4(smem_u32(stage + swz<D>(r, i + dc)), pk(i, 0), pk(i, 1), pk(i + 1, 0), pk(i + 1, 1));
#else
  const int gid = lane >> 2, tig = lane & 3;
  uint32_t* stage_w = reinterpret_cast<uint32_t*>(stage);
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int i = 0; i < NT_O; ++i) stage_w[swz<D>(gid + 8 * h, i) * 4 + tig] = pk(i, h);
#endif
}

// write_rows for split_kernel_ws: the same quantities, but O partials in T instead of fp32, and O
// (out or partials) staged through `stage`, the warp's own 16 rows of the Q tile in shared memory
// (swz layout; free once the warp holds its Q fragments in registers). Why: the MMA fragment
// layout gives a thread 2 adjacent elements per 8 columns, so direct stores write 4 bytes per
// lane, half a 32-byte sector per row and instruction (measured 1.5-1.8 us slower with T
// partials); read back as 16-byte chunks they leave as whole sectors (at D = 128 a warp stores
// two 256-byte rows per instruction). Measured: benchmarks/RESULTS.md, thirteenth session.
// Two halves (the timeline build marks the clock between them): stage_rows normalises O, writes
// the lse and the staged rows; store_staged_rows reads them back and stores them.
template <int D, typename T>
__device__ __forceinline__ void stage_rows(const Params& p, const float (&o)[D / 8][4], float (&l_run)[2],
                                           const float (&m_run)[2], uint4* stage, int warp_row0, int lane,
                                           int split, int bh, int b, int kvh) {
  const int gid = lane >> 2, tig = lane & 3;
  quad_sum_row_sums(l_run);
  constexpr float kLn2 = 0.6931471805599453f;
  // (l != 0: a NaN sum goes on into the partials and lse, as in write_rows.)
  const float inv[2] = {l_run[0] != 0.f ? 1.f / l_run[0] : 0.f, l_run[1] != 0.f ? 1.f / l_run[1] : 0.f};
  stage_fragments<D, T>(o, inv, stage, lane);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = gid + h * 8;  // row within the warp's 16
    const int grow = warp_row0 + r;
    const float l = l_run[h];
    if (tig == 0 && grow < p.rows) {
      const float lse_v = l != 0.f ? (m_run[h] + __log2f(l)) * kLn2 : -INFINITY;
      if (p.num_splits == 1) {
        const int n = grow / p.G;
        const int hq = kvh * p.G + (grow - n * p.G);
        p.lse[((int64_t)b * p.Hq + hq) * p.N + n] = lse_v;
      } else {
        p.lse_part[((int64_t)split * p.B * p.Hkv + bh) * p.rows + grow] = lse_v;
      }
    }
  }
  __syncwarp();
}
template <int D, typename T>
__device__ __forceinline__ void store_staged_rows(const Params& p, const uint4* stage, int warp_row0, int lane,
                                                  int split, int bh, int b, int kvh) {
  constexpr int CH = D / 8;             // 16-byte chunks per row
  constexpr int kRowsPerPass = 32 / CH;  // rows a warp stores per instruction
  // Read back row r = pass * kRowsPerPass + lane / CH, chunk c = lane % CH, and store 16 bytes.
  const int c = lane % CH;
  int r = lane / CH;
  int grow = warp_row0 + r;
  if (p.num_splits == 1) {
    // Query row grow is (node n, head kvh * G + g); rows step by kRowsPerPass.
    int n = grow / p.G, g = grow - n * p.G;
    const int dn = kRowsPerPass / p.G, dg = kRowsPerPass - dn * p.G;
    T* out = static_cast<T*>(p.out) + ((int64_t)b * p.N * p.Hq + (int64_t)kvh * p.G) * D + c * 8;
#pragma unroll
    for (int pass = 0; pass < 16 / kRowsPerPass; ++pass, r += kRowsPerPass, grow += kRowsPerPass) {
      if (grow < p.rows)
        *reinterpret_cast<uint4*>(out + ((int64_t)n * p.Hq + g) * D) = stage[swz<D>(r, c)];
      n += dn;
      g += dg;
      if (g >= p.G) {
        g -= p.G;
        ++n;
      }
    }
  } else {
    T* part = static_cast<T*>(p.o_part) + ((int64_t)split * p.B * p.Hkv + bh) * p.rows * D + c * 8;
#pragma unroll
    for (int pass = 0; pass < 16 / kRowsPerPass; ++pass, r += kRowsPerPass, grow += kRowsPerPass)
      if (grow < p.rows) *reinterpret_cast<uint4*>(part + (int64_t)grow * D) = stage[swz<D>(r, c)];
  }
}

// ---------------------------------------------------------------------------------------------
// Split kernel with mma.sync m16n8k16 (any sm_80+; the default off sm_90).
// grid = (ceil(rows / BM), num_splits, B * Hkv), block = 32 * NWARPS threads, each warp 16 rows.
// (Non-pipelined wgmma variants of this kernel were slower than split_kernel_pipe on the H200 and
// failed at head dim 64; they were removed in the tenth session.)
// ---------------------------------------------------------------------------------------------
template <int D, typename T, int NWARPS>
__global__ void __launch_bounds__(NWARPS * 32, NWARPS == 4 ? 2 : 1) split_kernel(const Params p) {
  static_assert(NWARPS == 4 || NWARPS == 8, "4 or 8 warps (1 or 2 warpgroups)");
  constexpr int kBM = bm_of(NWARPS);     // query rows per CTA
  constexpr int kThreads = NWARPS * 32;
  static_assert(D == 64 || D == 128, "head dim 64 or 128");
  constexpr int CH = D / 8;             // 16-byte chunks per row
  constexpr int KSTEPS = D / 16;        // MMA k-steps over the head dim (S = Q K^T)
  constexpr int NT_S = kBN / 8;         // n8 tiles of S per warp (keys)
  constexpr int NT_O = D / 8;           // n8 tiles of O per warp (head dim)
  constexpr int PV_KSTEPS = kBN / 16;   // MMA k-steps over the keys (O += P V)
  static_assert((kBN * CH) % kThreads == 0 && (kBM * CH) % kThreads == 0,
                "tile copies split evenly over the threads");
  wait_for_previous_grid();  // programmatic launch: nothing global is touched before this
  signal_dependents_may_launch();

  extern __shared__ __align__(1024) uint4 smem_raw[];
  // Align to 1024 bytes (wgmma 128-byte swizzle atoms must start on 1 KB boundaries).
  uint4* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023) / 16;
  uint4* sK = smem;                 // 2 stages * kBN * CH chunks (each stage a multiple of 1 KB)
  uint4* sV = sK + 2 * kBN * CH;    // 2 stages * kBN * CH
  uint4* sQ = sV + 2 * kBN * CH;    // kBM * CH
  static_assert((kBN * CH * 16) % 1024 == 0, "K/V stages must keep 1 KB alignment");

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int gid = lane >> 2;   // "groupID" of the MMA fragment layouts: row within 8
  const int tig = lane & 3;    // thread in group: column pair within 8
  const int row_tile = blockIdx.x;
  const int split = blockIdx.y;
  const int bh = blockIdx.z;   // b * Hkv + kv head
  const int b = bh / p.Hkv;
  const int kvh = bh - b * p.Hkv;
  const int m_base = row_tile * kBM;

  const SplitRange range = split_range(p, b, split);
  const int plen = range.plen, L = range.L, t_begin = range.t_begin, t_end = range.t_end;
  if (t_begin >= t_end) {
    write_empty_split<D, float>(p, split, bh, m_base, kBM, tid, kThreads);
    return;
  }

  const T* qg = static_cast<const T*>(p.q);
  const T* kg = static_cast<const T*>(p.k) + b * p.k_sb + kvh * p.k_sh;
  const T* vg = static_cast<const T*>(p.v) + b * p.v_sb + kvh * p.v_sh;

  // ---- Q tile: rows (node, head-in-group) -> smem, zero-filled past the last row -------------
#pragma unroll
  for (int i = 0; i < kBM * CH / kThreads; ++i) {
    const int idx = tid + i * kThreads;
    const int r = idx / CH, c = idx % CH;
    const int grow = m_base + r;
    const bool ok = grow < p.rows;
    const int n = ok ? grow / p.G : 0;
    const int g = ok ? grow - n * p.G : 0;
    const T* src = qg + b * p.q_sb + n * p.q_sn + (int64_t)(kvh * p.G + g) * p.q_sh + c * 8;
    cp_async_16(smem_u32(sQ + swz<D>(r, c)), ok ? src : qg, ok ? 16 : 0);
  }
  cp_async_commit();

  auto load_kv = [&](int tile, int stage) {
    const int key0 = tile * kBN;
    uint4* dk = sK + stage * kBN * CH;
    uint4* dv = sV + stage * kBN * CH;
#pragma unroll
    for (int i = 0; i < kBN * CH / kThreads; ++i) {
      const int idx = tid + i * kThreads;
      const int r = idx / CH, c = idx % CH;
      const int key = key0 + r;
      const bool ok = key < L;  // keys past L are zero-filled (never read from memory)
      const int64_t kk = ok ? key : 0;
      const int off = swz<D>(r, c);
      cp_async_16(smem_u32(dk + off), kg + kk * p.k_ss + c * 8, ok ? 16 : 0);
      cp_async_16(smem_u32(dv + off), vg + kk * p.v_ss + c * 8, ok ? 16 : 0);
    }
  };

  load_kv(t_begin, 0);
  cp_async_commit();

  // Per-thread state: this thread holds rows (warp*16 + gid) [half 0] and (+8) [half 1].
  uint32_t qf[KSTEPS][4];
  float o[NT_O][4];
#pragma unroll
  for (int i = 0; i < NT_O; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY};
  float l_run[2] = {0.f, 0.f};

  // Tree nodes of this thread's two rows (clamped for rows past the end: never written).
  int node[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int grow = m_base + warp * 16 + gid + h * 8;
    node[h] = min(grow / p.G, p.N - 1);
  }
  const int32_t* mrow0 = p.mask + ((int64_t)b * p.N + node[0]) * p.W;
  const int32_t* mrow1 = p.mask + ((int64_t)b * p.N + node[1]) * p.W;

  for (int t = t_begin; t < t_end; ++t) {
    const int stage = (t - t_begin) & 1;
    if (t + 1 < t_end) {
      load_kv(t + 1, stage ^ 1);
      cp_async_commit();
      cp_async_wait<1>();  // everything but the tile just issued has landed (Q, tile t)
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    if (t == t_begin) {
      // Q fragments (A operand, 16 rows x 16 dims per k-step) stay in registers for all tiles.
      load_q_fragments<D>(qf, sQ, warp, lane);
    }

    const uint4* tk = sK + stage * kBN * CH;
    const uint4* tv = sV + stage * kBN * CH;

    // ---- visibility of this tile ----------------------------------------------------------------
    // Tiles that reach past the prefix (into the tree, or past the last key) consult the mask
    // bits; prefix tiles are fully visible. Bit (i * 4 + e) of vis_bits = element s[i][e].
    const int key0 = t * kBN;
    const bool masked_tile = key0 + kBN > plen;  // uniform over the CTA
    uint32_t vis_bits = 0xffffffffu;
    if (masked_tile) {
      // Tree indices j = key - plen of this tile lie in [jb, jb + kBN): at most 3 mask words.
      const int jb = key0 - plen;
      const int wlo = max(jb, 0) >> 5;
      uint32_t w0[3], w1[3];
#pragma unroll
      for (int k = 0; k < 3; ++k) {
        const bool ok = wlo + k < p.W;
        w0[k] = ok ? (uint32_t)__ldg(mrow0 + wlo + k) : 0u;
        w1[k] = ok ? (uint32_t)__ldg(mrow1 + wlo + k) : 0u;
      }
      vis_bits = 0u;
#pragma unroll
      for (int i = 0; i < NT_S; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = key0 + i * 8 + tig * 2 + (e & 1);
          bool vis;
          if (key < plen) {
            vis = true;
          } else if (key >= L) {
            vis = false;
          } else {
            const int j = key - plen;
            const int wi = (j >> 5) - wlo;  // 0, 1 or 2
            const uint32_t word =
                (e < 2) ? (wi == 0 ? w0[0] : (wi == 1 ? w0[1] : w0[2]))
                        : (wi == 0 ? w1[0] : (wi == 1 ? w1[1] : w1[2]));
            vis = (word >> (j & 31)) & 1u;
          }
          vis_bits |= (vis ? 1u : 0u) << (i * 4 + e);
        }
      // The threads together cover every (row, key) of the tile: skip the tile when no row of
      // this CTA sees any of its keys (e.g. tree nodes after all of this CTA's nodes). No thread
      // reads this stage after the barrier, so the next copy into it needs no further barrier.
      if (!__syncthreads_or(vis_bits != 0u)) continue;
    }

    // ---- S = Q K^T (16 rows x kBN keys per warp) ----------------------------------------------
    float s[NT_S][4];
#pragma unroll
    for (int i = 0; i < NT_S; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
#pragma unroll
      for (int np = 0; np < NT_S / 2; ++np) {
        // Matrices: (keys np*16+0..7, dims ks*16+0..7), (same keys, dims +8..15),
        //           (keys np*16+8..15, dims ks*16+0..7), (same keys, dims +8..15).
        const int key = np * 16 + ((lane >> 4) << 3) + (lane & 7);
        const int c = ks * 2 + ((lane >> 3) & 1);
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4(smem_u32(tk + swz<D>(key, c)), b0, b1, b2, b3);
        TypeTraits<T>::mma(s[2 * np], qf[ks], b0, b1);
        TypeTraits<T>::mma(s[2 * np + 1], qf[ks], b2, b3);
      }
    }

    // ---- scale, mask ---------------------------------------------------------------------------
#pragma unroll
    for (int i = 0; i < NT_S; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[i][e] *= p.scale_log2;
    if (masked_tile) {
#pragma unroll
      for (int i = 0; i < NT_S; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (!((vis_bits >> (i * 4 + e)) & 1u)) s[i][e] = -INFINITY;
    }

    // ---- online softmax (fp32, base 2) ---------------------------------------------------------
    float alpha[2];
    softmax_update_moving(s, m_run, l_run, alpha);  // (split_kernel: as measured)
    scale_o(o, alpha);

    // ---- O += P V ------------------------------------------------------------------------------
#pragma unroll
    for (int ks = 0; ks < PV_KSTEPS; ++ks) {
      // The accumulator layout of S tiles 2ks, 2ks+1 is exactly the A layout of a 16x16 k-step.
      uint32_t a[4];
      a[0] = TypeTraits<T>::pack(s[2 * ks][0], s[2 * ks][1]);
      a[1] = TypeTraits<T>::pack(s[2 * ks][2], s[2 * ks][3]);
      a[2] = TypeTraits<T>::pack(s[2 * ks + 1][0], s[2 * ks + 1][1]);
      a[3] = TypeTraits<T>::pack(s[2 * ks + 1][2], s[2 * ks + 1][3]);
#pragma unroll
      for (int dp = 0; dp < NT_O / 2; ++dp) {
        // Matrices (transposed): (keys ks*16+0..7, dims dp*16+0..7), (keys +8..15, same dims),
        //                        (keys ks*16+0..7, dims +8..15), (keys +8..15, dims +8..15).
        const int key = ks * 16 + (((lane >> 3) & 1) << 3) + (lane & 7);
        const int c = dp * 2 + (lane >> 4);
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4_trans(smem_u32(tv + swz<D>(key, c)), b0, b1, b2, b3);
        TypeTraits<T>::mma(o[2 * dp], a, b0, b1);
        TypeTraits<T>::mma(o[2 * dp + 1], a, b2, b3);
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

  write_rows<D, T>(p, o, l_run, m_run, m_base + warp * 16 + gid, split, bh, b, kvh, tig);
}

// ---------------------------------------------------------------------------------------------
// Tile copies (cp.async) shared by split_kernel_pipe and split_kernel_ws. kThreads copying threads:
// thread tid takes chunk c_chunk = tid % CH of rows r0 = tid / CH, r0 + kThreads / CH, ... of
// every tile (the caller computes r0 and c_chunk once).
// ---------------------------------------------------------------------------------------------
// The CTA's kBM query rows [m_base, m_base + kBM) of (batch row b, KV head kvh) into sQ
// (q_off_sw128<D, kBM> layout, the one the TMA path of split_kernel_ws writes); rows past p.rows
// are zero-filled. split_kernel_ws uses it when G does not divide 128 (no TMA box holds the
// rows) or JETSPEC_TREE_ATTN_Q_TMA=0. A row's (query node, head) pair comes from one division
// by G, then steps (why: per-row divisions by G and 64-bit index maths made the Q copy
// the costliest part of the prologue in the per-instruction stall samples, before any data is in
// flight).
template <int D, typename T, int kBM, int kThreads>
__device__ __forceinline__ void copy_q_tile(const Params& p, const T* qg, uint4* sQ, int b, int kvh, int m_base,
                                            int r0, int c_chunk) {
  constexpr int CH = D / 8;
  constexpr int kRowStep = kThreads / CH;  // rows between a thread's consecutive copies
  static_assert(kThreads % CH == 0 && kBM % kRowStep == 0, "a thread copies the same chunk column of every row");
  const int grow0 = m_base + r0;
  int n = grow0 / p.G, g = grow0 - n * p.G;
  const int dn = kRowStep / p.G, dg = kRowStep - dn * p.G;
  const T* qbase = qg + b * p.q_sb + (int64_t)kvh * p.G * p.q_sh + c_chunk * 8;
  if (dg == 0 && kRowStep % 8 == 0) {
    // G divides the row step (G = 1, 2, 4, 8 at D = 128): every row this thread copies has the
    // same head g and the next node dn on, and the same swizzle phase (row & 7): one source
    // pointer stepped by dn nodes and a constant shared-memory stride, ~4 instructions per copy
    // instead of ~25 (two 64-bit products each); this runs once per CTA, on its critical path.
    const T* src = qbase + (int64_t)n * p.q_sn + (int64_t)g * p.q_sh;
    const int64_t step = (int64_t)dn * p.q_sn;
    const uint32_t d0 = smem_u32(sQ + q_off_sw128<D, kBM>(r0, c_chunk));
#pragma unroll
    for (int i = 0; i < kBM / kRowStep; ++i) {
      const bool ok = m_base + r0 + i * kRowStep < p.rows;
      cp_async_16(d0 + i * kRowStep * 8 * 16, ok ? src : qg, ok ? 16 : 0);  // 8 chunks per row of a block
      src += step;
    }
    return;
  }
#pragma unroll
  for (int i = 0; i < kBM / kRowStep; ++i) {
    const int r = r0 + i * kRowStep;
    const bool ok = m_base + r < p.rows;
    const T* src = qbase + (int64_t)n * p.q_sn + (int64_t)g * p.q_sh;
    cp_async_16(smem_u32(sQ + q_off_sw128<D, kBM>(r, c_chunk)), ok ? src : qg, ok ? 16 : 0);
    n += dn;
    g += dg;
    if (g >= p.G) {
      g -= p.G;
      ++n;
    }
  }
}
// One tile of K or V (kBN keys from `tile * kBN` of the cache rows at `src_base`, `stride`
// elements apart) into `dst` (kv_off_sw128 layout); keys at or past L are zero-filled, never
// read. (Stepping one pointer per tile, like Q, measured slower in the main loop on the H200:
// +2 us at 18 tiles per CTA.)
template <int D, typename T, int kThreads>
__device__ __forceinline__ void copy_kv_tile(const T* src_base, int64_t stride, uint4* dst, int tile, int L, int r0,
                                             int c_chunk) {
  constexpr int CH = D / 8;
  constexpr int kRowStep = kThreads / CH;
  static_assert(kThreads % CH == 0 && kBN % kRowStep == 0, "copies split evenly over the threads");
  const int key0 = tile * kBN;
#pragma unroll
  for (int i = 0; i < kBN / kRowStep; ++i) {
    const int r = r0 + i * kRowStep;
    const int key = key0 + r;
    const bool ok = key < L;
    const int64_t kk = ok ? key : 0;
    cp_async_16(smem_u32(dst + kv_off_sw128<D>(r, c_chunk)), src_base + kk * stride + c_chunk * 8, ok ? 16 : 0);
  }
}

// ---------------------------------------------------------------------------------------------
// One wgmma warpgroup's per-tile maths (64 query rows; each thread holds rows gid and gid + 8 of
// its warp's 16), shared by split_kernel_pipe and split_kernel_ws.
// ---------------------------------------------------------------------------------------------
// S = Q K^T of the K tile at `sk` (kv_off_sw128 layout), issued asynchronously (the caller
// fences, commits and waits).
template <int D, typename T>
__device__ __forceinline__ void wgmma_qk(float (&s)[kBN / 8][4], const uint32_t (&qf)[D / 16][4], const uint4* sk) {
  constexpr int KSTEPS = D / 16;
  const uint64_t desc0 = make_desc_sw128(smem_u32(sk), 16, 1024);
#pragma unroll
  for (int ks = 0; ks < KSTEPS; ++ks) {
    const uint64_t desc = desc_advance(desc0, (ks >> 2) * (kBN * 128) + (ks & 3) * 32);
    wgmma_m64n64k16_kmajor<T>(&s[0][0], qf[ks], desc, ks > 0);
  }
}
// O += P V of the V tile at `sv`, issued asynchronously.
template <int D, typename T>
__device__ __forceinline__ void wgmma_pv(float (&o)[D / 8][4], const uint32_t (&pa)[kBN / 16][4], const uint4* sv) {
  constexpr int PV_KSTEPS = kBN / 16;
  const uint64_t desc0 = make_desc_sw128(smem_u32(sv), kBN * 128, 1024);
#pragma unroll
  for (int ks = 0; ks < PV_KSTEPS; ++ks) {
    const uint64_t desc = desc_advance(desc0, ks * 16 * 128);
    if constexpr (D == 128)
      wgmma_m64n128k16_nmajor<T>(&o[0][0], pa[ks], desc, 1);
    else
      wgmma_m64n64k16_nmajor<T>(&o[0][0], pa[ks], desc, 1);
  }
}
// Row sums of P on the tensor cores (split_kernel_ws at D 64; D 128 folds them into the P V
// product, wgmma_pv_row_sums below): l += P 1, as a 64 x 8 product with a B tile of ones (every
// column of l then holds the row's sum: l[0] for row gid, l[2] for row gid + 8), issued with the
// P V product and rescaled with O. It replaces the softmax's 30 FADDs per thread per tile (the
// softmax, not the tensor pipe, bounds the tile loop) with 4 small wgmmas, and sums the same
// rounded P that multiplies V. `ones` is the shared-memory address of kRowSumOnesBytes bytes of
// T(1): a no-swizzle descriptor whose strides stay inside them (any element read is a one).
constexpr int kRowSumOnesBytes = 512;
__device__ __forceinline__ uint64_t row_sum_ones_desc(uint32_t ones) {
  return (uint64_t)((ones & 0x3FFFF) >> 4) | ((uint64_t)(128 >> 4) << 16) | ((uint64_t)(256 >> 4) << 32);
}
template <typename T>
__device__ __forceinline__ void wgmma_row_sums(float (&l)[1][4], const uint32_t (&pa)[kBN / 16][4], uint64_t ones_desc) {
#pragma unroll
  for (int ks = 0; ks < kBN / 16; ++ks) wgmma_m64n8k16<T>(&l[0][0], pa[ks], ones_desc);
}
// D 128: O += P V and l += P 1 in one m64n136k16 product per k-step; `sv` is a V tile followed by
// a 64-column chunk of ones at kBN * 128 bytes per 64 columns (the descriptor's leading offset),
// so columns 128..135 of B are ones and l gets the same layout as wgmma_row_sums'.
template <typename T>
__device__ __forceinline__ void wgmma_pv_row_sums(float (&o)[16][4], float (&l)[1][4], const uint32_t (&pa)[kBN / 16][4],
                                                  const uint4* sv) {
  const uint64_t desc0 = make_desc_sw128(smem_u32(sv), kBN * 128, 1024);
#pragma unroll
  for (int ks = 0; ks < kBN / 16; ++ks)
    wgmma_m64n136k16_nmajor<T>(&o[0][0], &l[0][0], pa[ks], desc_advance(desc0, ks * 16 * 128));
}
// The 16-bit pattern of T(1), two per word, for filling the ones tile (constants: building it with
// TypeTraits<T>::pack(1.f, 1.f) costs a conversion per CTA, which nvcc does not fold).
template <typename T>
constexpr uint32_t kOnesPair = 0x3F803F80u;  // bf16 1.0
template <>
constexpr uint32_t kOnesPair<__half> = 0x3C003C00u;  // fp16 1.0
// Visibility of a key tile (keys key0 .. key0 + 63) for one query row: bit b set iff key key0 + b
// is visible. jb = key0 - plen (negative when the tile starts inside the prefix, > -64), w = the
// row's tree-mask words wlo = max(jb, 0) / 32 .. wlo + 2 (0 past the row's last word), n_valid
// = L - key0 (keys at or past L are invisible).
__device__ __forceinline__ uint64_t tile_visibility(const uint32_t (&w)[3], int jb, int n_valid) {
  const int sh = max(jb, 0) & 31;  // the tile's first tree index within word wlo
  const uint64_t lo = ((uint64_t)w[1] << 32) | w[0];
  uint64_t v = sh ? (lo >> sh) | ((uint64_t)w[2] << (64 - sh)) : lo;  // tree indices from max(jb, 0)
  if (jb < 0) v = (v << -jb) | ((1ull << -jb) - 1);  // the first -jb keys are prefix: visible
  if (n_valid < 64) v &= n_valid > 0 ? (1ull << n_valid) - 1 : 0ull;
  return v;
}
// Scale, mask (tiles reaching past the prefix: bits of the rows' tree-mask words mrow0 / mrow1),
// online-softmax update of m_run / l_run for key tile t; returns the rescale factor of O in
// alpha and leaves the probabilities in s. A positive scale goes into the exponent's FFMA (one
// instruction per score fewer); a zero or negative one (allowed: only finiteness is required;
// the max of the scaled scores is then not the scaled max) is applied first. kRowSums: see
// softmax_update_moving.
template <bool kRowSums = true>
__device__ __forceinline__ void online_softmax(float (&s)[kBN / 8][4], const Params& p, int t, int plen, int L,
                                               const int32_t* mrow0, const int32_t* mrow1, int tig,
                                               float (&m_run)[2], float (&l_run)[2], float (&alpha)[2]) {
  constexpr int NT_S = kBN / 8;
  const int key0 = t * kBN;
  float scale = p.scale_log2;
  if (!(scale > 0.f)) {
#pragma unroll
    for (int i = 0; i < NT_S; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[i][e] *= scale;
    scale = 1.f;
  }
  bool tree = key0 + kBN > plen;  // the tile reaches past the prefix: mask bits
#if defined(JETSPEC_TREE_ATTN_TIMELINE) && defined(JETSPEC_TREE_ATTN_DIAG_NO_MASK)
  tree = false;  // diagnostic build (setup.py): tree tiles unmasked; WRONG results
#endif
  // (The bit tests below cost ~160 ns per tile at P1024 N256: running them on every tile, with
  // all-visible words on prefix tiles, made every cell ~10 % slower; twenty-second session.)
  if (tree) {
    const int jb = key0 - plen;
    const int wlo = max(jb, 0) >> 5;
    // Word wlo + k of a row's mask (0 past the row's last word).
    auto mask_word = [&](const int32_t* mrow, int k) -> uint32_t {
      const bool ok = wlo + k < p.W;
#if defined(JETSPEC_TREE_ATTN_TIMELINE) && defined(JETSPEC_TREE_ATTN_DIAG_NO_MASK_LOAD)
      return ok ? ~(uint32_t)(uintptr_t)(mrow + wlo + k) : 0u;  // diagnostic build (setup.py): not loaded; WRONG results
#else
      return ok ? (uint32_t)__ldg(mrow + wlo + k) : 0u;
#endif
    };
    uint32_t w0[3], w1[3];
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      w0[k] = mask_word(mrow0, k);
      w1[k] = mask_word(mrow1, k);
    }
    // Each row's visibility of the tile's 64 keys as one 64-bit word (bit b: key key0 + b),
    // then one bit test per score. (Per score, comparing against plen and L and picking the
    // mask word took ~20 instructions, ~670 per tree tile per thread: 1.7x a whole prefix tile.)
    // The thread's columns are 8 i + 2 tig + {0, 1}: shift each row's word by 2 tig once, as two
    // 32-bit halves pinned by an empty asm, so that each score is one test of a constant bit and
    // a select. (Left to itself, nvcc shifted each tested constant by 2 tig as a 64-bit value
    // and tested both halves: ~217 instructions per tree tile against ~120; fiftieth session.)
    uint32_t vw[2][2];  // [row half][low / high 32 bits]
    if (jb >= 0 && (jb & 31) == 0 && L - key0 >= kBN) {
      // The common tree tile (prefix length a multiple of 32, all 64 keys tree keys): the
      // visibility is the row's words wlo and wlo + 1 as they are (both inside the row, as
      // jb + 64 <= N <= 32 W). tile_visibility's general case costs ~55 SASS instructions more
      // per tree tile and a third word per row (P1024 N256 -0.17 us on the H200, fifty-first
      // session).
      const uint32_t sh = (uint32_t)tig * 2;
      vw[0][0] = __funnelshift_r(w0[0], w0[1], sh);
      vw[0][1] = w0[1] >> sh;
      vw[1][0] = __funnelshift_r(w1[0], w1[1], sh);
      vw[1][1] = w1[1] >> sh;
    } else {
      w0[2] = mask_word(mrow0, 2);
      w1[2] = mask_word(mrow1, 2);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint64_t v = tile_visibility(h == 0 ? w0 : w1, jb, L - key0) >> (tig * 2);
        vw[h][0] = (uint32_t)v;
        vw[h][1] = (uint32_t)(v >> 32);
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) asm("" : "+r"(vw[h][0]), "+r"(vw[h][1]));
#pragma unroll
    for (int i = 0; i < NT_S; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const bool vis = (vw[e >> 1][i >> 2] >> ((i & 3) * 8 + (e & 1))) & 1u;
        if (!vis) s[i][e] = -INFINITY;
      }
  }
  softmax_update<kRowSums>(s, m_run, l_run, alpha, scale);
}
// The probabilities in the A-operand register layout of the P V product.
template <typename T>
__device__ __forceinline__ void pack_probs(const float (&s)[kBN / 8][4], uint32_t (&pa)[kBN / 16][4]) {
  constexpr int PV_KSTEPS = kBN / 16;
#pragma unroll
  for (int ks = 0; ks < PV_KSTEPS; ++ks) {
    pa[ks][0] = TypeTraits<T>::pack(s[2 * ks][0], s[2 * ks][1]);
    pa[ks][1] = TypeTraits<T>::pack(s[2 * ks][2], s[2 * ks][3]);
    pa[ks][2] = TypeTraits<T>::pack(s[2 * ks + 1][0], s[2 * ks + 1][1]);
    pa[ks][3] = TypeTraits<T>::pack(s[2 * ks + 1][2], s[2 * ks + 1][3]);
  }
}

// ---------------------------------------------------------------------------------------------
// Pipelined wgmma split kernel (sm_90a): NWARPS = 4 (one warpgroup, 64 rows per CTA, 2 CTAs per
// SM; the launcher's choice at <= 64 rows per KV head) or 8 (two warpgroups of 64 rows each
// sharing every K/V tile, 1 CTA per SM; no longer launched: split_kernel_ws was faster in every
// issue-4 cell, eleventh session).
// Same maths as split_kernel, but the softmax of tile t+1 overlaps the P V
// product of tile t on the tensor cores (FlashAttention-3 style intra-warpgroup pipelining):
//   issue S(t+1) = Q K(t+1)^T; issue O += P(t) V(t); wait S(t+1); softmax(t+1) -> P(t+1), alpha;
//   wait P V; O *= alpha.
// K is prefetched one tile ahead of V (separate cp.async groups) so K(t+1) and V(t) are both
// resident. No tile skipping here (masked tiles are computed and masked).
// ---------------------------------------------------------------------------------------------
template <int D, typename T, int NWARPS>
__global__ void __launch_bounds__(NWARPS * 32, NWARPS == 4 ? 2 : 1) split_kernel_pipe(const Params p) {
  static_assert(NWARPS == 4 || NWARPS == 8, "1 or 2 warpgroups (sharing every K/V tile)");
  constexpr int kBM = bm_of(NWARPS);
  constexpr int kThreads = NWARPS * 32;
  static_assert((kBN * (D / 8)) % kThreads == 0 && (kBM * (D / 8)) % kThreads == 0,
                "tile copies split evenly over the threads");
  static_assert(D == 64 || D == 128, "head dim 64 or 128");
  static_assert(kBN == 64, "S tile is m64n64");
  constexpr int CH = D / 8;
  constexpr int KSTEPS = D / 16;
  constexpr int NT_S = kBN / 8;
  constexpr int NT_O = D / 8;
  constexpr int PV_KSTEPS = kBN / 16;

  extern __shared__ __align__(1024) uint4 smem_raw[];
  uint4* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023) / 16;
  uint4* sK = smem;                 // 2 stages * kBN * CH
  uint4* sV = sK + 2 * kBN * CH;    // 2 stages * kBN * CH
  uint4* sQ = sV + 2 * kBN * CH;    // kBM * CH
  static_assert((kBN * CH * 16) % 1024 == 0, "K/V stages must keep 1 KB alignment");

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int gid = lane >> 2;
  const int tig = lane & 3;
  const int split = blockIdx.y;
  const int bh = blockIdx.z;
  const int b = bh / p.Hkv;
  const int kvh = bh - b * p.Hkv;
  const int m_base = blockIdx.x * kBM;

  wait_for_previous_grid();  // programmatic launch: nothing global is touched before this
  signal_dependents_may_launch();
  const T* qg = static_cast<const T*>(p.q);
  const T* kg = static_cast<const T*>(p.k) + b * p.k_sb + kvh * p.k_sh;
  const T* vg = static_cast<const T*>(p.v) + b * p.v_sb + kvh * p.v_sh;

  // Q's copies are issued before the prefix length is read: they do not depend on it, so that
  // load's latency overlaps them. (The same maths as copy_q_tile, which split_kernel_ws calls;
  // kept inline because as a call this kernel's machine code changed, and this form is the one
  // measured and GPU-tested. Switch after an A/B.)
  constexpr int kRowStep = kThreads / CH;  // rows between a thread's consecutive copies
  static_assert(kThreads % CH == 0, "a thread copies the same chunk column of every row");
  const int c_chunk = tid % CH;
  const int r0 = tid / CH;
  {
    const int grow0 = m_base + r0;
    int n = grow0 / p.G, g = grow0 - n * p.G;
    const int dn = kRowStep / p.G, dg = kRowStep - dn * p.G;
    const T* qbase = qg + b * p.q_sb + (int64_t)kvh * p.G * p.q_sh + c_chunk * 8;
#pragma unroll
    for (int i = 0; i < kBM / kRowStep; ++i) {
      const int r = r0 + i * kRowStep;
      const bool ok = m_base + r < p.rows;
      const T* src = qbase + (int64_t)n * p.q_sn + (int64_t)g * p.q_sh;
      cp_async_16(smem_u32(sQ + swz<D>(r, c_chunk)), ok ? src : qg, ok ? 16 : 0);
      n += dn;
      g += dg;
      if (g >= p.G) {
        g -= p.G;
        ++n;
      }
    }
  }
  const SplitRange range = split_range(p, b, split);
  const int plen = range.plen, L = range.L, t_begin = range.t_begin, t_end = range.t_end;
  if (t_begin >= t_end) {
    write_empty_split<D, float>(p, split, bh, m_base, kBM, tid, kThreads);
    cp_async_commit();  // Q's copies (issued above) must land before the CTA exits
    cp_async_wait<0>();
    return;
  }
  const int n_tiles = t_end - t_begin;

  auto load_tile = [&](const T* src_base, int64_t stride, uint4* dst, int tile) {
    copy_kv_tile<D, T, kThreads>(src_base, stride, dst, tile, L, r0, c_chunk);
  };
  // cp.async groups: {Q, K0}, {V0}, {K1 or nothing}.
  load_tile(kg, p.k_ss, sK, t_begin);
  cp_async_commit();
  load_tile(vg, p.v_ss, sV, t_begin);
  cp_async_commit();
  if (n_tiles > 1) load_tile(kg, p.k_ss, sK + kBN * CH, t_begin + 1);
  cp_async_commit();

  uint32_t qf[KSTEPS][4];
  float o[NT_O][4];
#pragma unroll
  for (int i = 0; i < NT_O; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY};
  float l_run[2] = {0.f, 0.f};
  int node[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) node[h] = min((m_base + warp * 16 + gid + h * 8) / p.G, p.N - 1);
  const int32_t* mrow0 = p.mask + ((int64_t)b * p.N + node[0]) * p.W;
  const int32_t* mrow1 = p.mask + ((int64_t)b * p.N + node[1]) * p.W;

  auto issue_s = [&](float (&s)[NT_S][4], int stage) { wgmma_qk<D, T>(s, qf, sK + stage * kBN * CH); };
  auto issue_pv = [&](const uint32_t (&pa)[PV_KSTEPS][4], int stage) { wgmma_pv<D, T>(o, pa, sV + stage * kBN * CH); };
  auto softmax = [&](float (&s)[NT_S][4], int t, float (&alpha)[2]) {
    online_softmax(s, p, t, plen, L, mrow0, mrow1, tig, m_run, l_run, alpha);
  };
  auto pack_p = [&](const float (&s)[NT_S][4], uint32_t (&pa)[PV_KSTEPS][4]) { pack_probs<T>(s, pa); };

  // ---- prologue: S(0), softmax(0) ------------------------------------------------------------
  cp_async_wait<2>();  // {Q, K0} landed; V0 and K1 may still be in flight
  fence_proxy_async_smem();
  __syncthreads();
  load_q_fragments<D>(qf, sQ, warp, lane);
  float s[NT_S][4];
#pragma unroll
  for (int i = 0; i < NT_S; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
  uint32_t pa[PV_KSTEPS][4];
  float alpha[2];
  wgmma_fence();
  issue_s(s, 0);
  wgmma_commit_and_wait();
  fence_regs(s);
  softmax(s, t_begin, alpha);  // O = 0: alpha not needed
  pack_p(s, pa);

  // ---- main loop ------------------------------------------------------------------------------
  // Iterations 0 .. n_tiles-2 always have a next tile (uniform wgmma group structure, which
  // ptxas needs to keep the two products in flight); the last P V is peeled off below.
  for (int i = 0; i + 1 < n_tiles; ++i) {
    const int t = t_begin + i;
    // Pending copies: V(i), K(i+1). After this barrier: V buffer (i+1)&1 (held V(i-1), read by
    // the P V product completed last iteration) and K buffer i&1 (held K(i), read by S(i),
    // completed last iteration) are free.
    cp_async_wait<0>();
    fence_proxy_async_smem();
    __syncthreads();
    load_tile(vg, p.v_ss, sV + ((i + 1) & 1) * kBN * CH, t + 1);
    cp_async_commit();
    if (i + 2 < n_tiles) load_tile(kg, p.k_ss, sK + (i & 1) * kBN * CH, t + 2);
    cp_async_commit();

    wgmma_fence();
    issue_s(s, (i + 1) & 1);
    JETSPEC_WGMMA_COMMIT();
    issue_pv(pa, i & 1);
    JETSPEC_WGMMA_COMMIT();
    JETSPEC_WGMMA_WAIT(1);  // S(i+1) done
    fence_regs(s);
    softmax(s, t + 1, alpha);
    // P V done: the wait after the branch on the row sums (rescale_needed_after_sums).
    if (rescale_needed_after_sums(alpha, l_run)) {
      JETSPEC_WGMMA_WAIT(0);
      fence_regs(o);
      scale_o(o, alpha);
    }
    JETSPEC_WGMMA_WAIT(0);
    fence_regs(o);
    pack_p(s, pa);
  }
  {
    // Last tile: O += P V only.
    cp_async_wait<0>();
    fence_proxy_async_smem();
    __syncthreads();
    wgmma_fence();
    issue_pv(pa, (n_tiles - 1) & 1);
    wgmma_commit_and_wait();
    fence_regs(o);
  }

  write_rows<D, T>(p, o, l_run, m_run, m_base + warp * 16 + gid, split, bh, b, kvh, tig);
}

// ---------------------------------------------------------------------------------------------
// Merge kernel: one warp per (batch row, KV head, query row); grid = ceil(B*Hkv*rows / 4) x 128.
// out = sum_s w_s o_s / sum_s w_s with w_s = exp(lse_s - max lse); lse = max + log(sum w).
// Splits with lse_s = -inf (empty, or nothing visible) get w_s = 0 and are dropped.
// ---------------------------------------------------------------------------------------------
// VEC (2 or 4) consecutive partials (fp32, or T converted to fp32) of one lane: one load.
template <int VEC, typename PartT>
__device__ __forceinline__ void load_part_vec(float (&d)[VEC], const PartT* src) {
  static_assert(VEC == 2 || VEC == 4, "2 or 4 elements per lane");
  if constexpr (std::is_same<PartT, float>::value) {
    if constexpr (VEC == 4) {
      const float4 v = *reinterpret_cast<const float4*>(src);
      d[0] = v.x, d[1] = v.y, d[2] = v.z, d[3] = v.w;
    } else {
      const float2 v = *reinterpret_cast<const float2*>(src);
      d[0] = v.x, d[1] = v.y;
    }
  } else {
    uint32_t w[VEC / 2];
    if constexpr (VEC == 4) {
      const uint2 v = *reinterpret_cast<const uint2*>(src);
      w[0] = v.x, w[1] = v.y;
    } else {
      w[0] = *reinterpret_cast<const uint32_t*>(src);
    }
#pragma unroll
    for (int i = 0; i < VEC / 2; ++i) {
      const float2 f = TypeTraits<PartT>::unpack(w[i]);
      d[2 * i] = f.x, d[2 * i + 1] = f.y;
    }
  }
}

// Register cap (ptxas, sm_90a, no spills): D = 128 at 64 registers (8 CTAs per SM: the 1024 CTAs
// of Hkv 8 x N 128 x G 4 fit one wave on 132 SMs; uncapped it took 70, 7 CTAs per SM), D = 64 at
// 48 (10 CTAs per SM; 12 spilled).
template <int D, typename T, typename PartT>
__global__ void __launch_bounds__(128, D == 64 ? 10 : 8) merge_kernel(const Params p) {
  static_assert(std::is_same<PartT, float>::value || std::is_same<PartT, T>::value, "fp32 or T partials");
  constexpr int VEC = D / 32;  // elements per lane (2 or 4)
  constexpr int kGroup = 8;    // O partials (splits) loaded per round trip
  const int64_t total = (int64_t)p.B * p.Hkv * p.rows;
  const int64_t wid = (int64_t)blockIdx.x * 4 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  wait_for_previous_grid();  // programmatic launch: the split kernel's partials are complete
  // Let the next programmatically launched kernel be scheduled now (in the decoder's budget-128
  // round: o_proj, verify_linear's p64c2r, whose CTAs fit beside these smem-free ones and run
  // their prologue); it still waits for this grid to complete before touching memory. Measured
  // in the decoder (fourteenth session): rounds 0.01-0.02 ms (budget 128) and 0.03-0.11 ms (256)
  // faster than without, about the run-to-run spread.
  signal_dependents_may_launch();
  if (wid >= total) return;
  const int bh = (int)(wid / p.rows);
  const int grow = (int)(wid - (int64_t)bh * p.rows);
  const int b = bh / p.Hkv, kvh = bh - b * p.Hkv;
  const int n = grow / p.G;
  const int hq = kvh * p.G + (grow - n * p.G);
  const int64_t split_stride = (int64_t)p.B * p.Hkv * p.rows;
  const int ns = p.num_splits;
  const float* lse_src = p.lse_part + wid;
  const PartT* o_src = static_cast<const PartT*>(p.o_part) + wid * D + lane * VEC;
  const int64_t o_stride = split_stride * D;

  // Latency-bound (a few KB per warp), so the common case (ns <= 32) makes ONE round trip to L2:
  // lane l loads the lse of split l and, before any lse is used, every lane loads its VEC floats
  // of the first min(ns, 8) O partials. They are loaded unconditionally: an empty split's
  // (lse = -inf) O is zeros (write_empty_split), dropped by a select on w != 0 all the same,
  // never by a multiply (0 * NaN = NaN would matter if it ever held anything else). The select
  // keeps a NaN weight (a split whose lse is NaN makes mx NaN, nan_max), so such a row comes out
  // NaN. Splits 8.. follow in groups of 8 loads in flight; ns > 32 reloads the lse of splits 32..
  // (max first, then the weights of each 32-split chunk).
  const float ls = lane < ns ? lse_src[lane * split_stride] : -INFINITY;
  float v[kGroup][VEC];
#pragma unroll
  for (int j = 0; j < kGroup; ++j) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[j][i] = 0.f;
    if (j < ns) load_part_vec<VEC, PartT>(v[j], o_src + j * o_stride);
  }
  float mx = ls;
  for (int s = lane + 32; s < ns; s += 32) mx = nan_max(mx, lse_src[s * split_stride]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) mx = nan_max(mx, __shfl_xor_sync(0xffffffffu, mx, off));

  float acc[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) acc[i] = 0.f;
  float wsum = 0.f;
  if (mx != -INFINITY) {  // warp-uniform
    // w of split c + lane for the current 32-split chunk c (lanes past ns: -inf -> 0).
    float w_chunk = ls == -INFINITY ? 0.f : __expf(ls - mx);
    wsum = w_chunk;
    for (int s0 = 0;;) {
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        const float w = __shfl_sync(0xffffffffu, w_chunk, (s0 + j) & 31);  // 0 past ns
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[i] += w != 0.f ? w * v[j][i] : 0.f;  // (NaN w kept)
      }
      s0 += kGroup;
      if (s0 >= ns) break;
#pragma unroll
      for (int j = 0; j < kGroup; ++j)
        if (s0 + j < ns) load_part_vec<VEC, PartT>(v[j], o_src + (s0 + j) * o_stride);
      if ((s0 & 31) == 0) {  // next 32-split chunk (ns > 32 only): its weights
        const float l = s0 + lane < ns ? lse_src[(s0 + lane) * split_stride] : -INFINITY;
        w_chunk = l == -INFINITY ? 0.f : __expf(l - mx);
        wsum += w_chunk;
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) wsum += __shfl_xor_sync(0xffffffffu, wsum, off);
  }
  const float inv = wsum != 0.f ? 1.f / wsum : 0.f;  // wsum 0 (no keys), >= 1 or NaN (nan_max)
  T* dst = static_cast<T*>(p.out) + (((int64_t)b * p.N + n) * p.Hq + hq) * D + lane * VEC;
  if constexpr (VEC == 4) {
    uint2 o;
    o.x = TypeTraits<T>::pack(acc[0] * inv, acc[1] * inv);
    o.y = TypeTraits<T>::pack(acc[2] * inv, acc[3] * inv);
    *reinterpret_cast<uint2*>(dst) = o;
  } else {
    *reinterpret_cast<uint32_t*>(dst) = TypeTraits<T>::pack(acc[0] * inv, acc[1] * inv);
  }
  if (lane == 0)
    p.lse[((int64_t)b * p.Hq + hq) * p.N + n] = wsum != 0.f ? mx + __logf(wsum) : -INFINITY;
}

}  // namespace tree_attn
}  // namespace jetspec
