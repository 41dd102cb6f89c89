// Warp-specialized tree-attention split kernel (sm_90a): the default on sm_90 above 64 query rows
// per KV head (JETSPEC_TREE_ATTN_IMPL=wgmma_ws_pp selects it explicitly).
//
// Why: split_kernel_pipe (one or two warpgroups that copy their own K/V tiles) spends ~1.0-1.5 us
// per 64-key tile against ~0.56 us of tensor work on the H200 (benchmarks/RESULTS.md, ninth
// session): its warps issue ~120 copy instructions per tile and meet at a CTA barrier once per
// tile, so both warpgroups run their softmax at the same time while the tensor cores idle
// (docs/tree_attention_next.md, R2 and R3). Here:
//   * warpgroup 0 is a producer: its thread 0 copies Q by TMA (when G divides 128; otherwise its
//     128 threads copy Q with cp.async, signalled by cp.async.mbarrier.arrive.noinc: the arrive
//     fires when the thread's copies have landed) and every K/V tile into a ring of kWsStages
//     stages by TMA (tensor maps of q and the caches from the launcher; each stage's K and V
//     signalled on an mbarrier by their bytes), except V of the key range's last partial tile,
//     whose rows past the keys must be zeros (zero-filling cp.async by all 128, then a proxy
//     fence); it gives registers to the consumers (setmaxnreg 56) and, with the cluster merge,
//     takes some back at the end to merge a third of the rows' chunks (kMergeThreads);
//   * warpgroups 1 and 2 are consumers of 64 query rows each (setmaxnreg 224; the kernel starts
//     at 168 per thread, so 128 x (168 - 56) = 256 x (224 - 168) registers change hands). They wait on the
//     stage's mbarriers only (no CTA barrier in the loop), run the same maths and intra-warpgroup
//     pipelining as split_kernel_pipe (S(t+1) and P(t) V(t) in flight together, the softmax of
//     t+1 under the P V product), and release a stage (an mbarrier the producer waits on) once
//     their P V product of that stage is done;
//   * ping-pong: the two consumer warpgroups take turns issuing their wgmma groups (named
//     barriers 1 and 2, FlashAttention-3 style), so one warpgroup's softmax runs while the
//     other's products occupy the tensor cores. Measured on the H200 (eleventh session), the same
//     kernel without the turns was 2.5-5 % slower in all 10 issue-4 cells and was removed.
// Same inputs and outputs as split_kernel_pipe (128 query rows per CTA, one CTA per SM), but
// split s takes the interleaved key tiles s, s + ns, ... (split_tiles_interleaved), so the
// producer can copy K of its first tile before the prefix length lands; merge_kernel combines
// the splits (the merge does not depend on which tiles a split held). The per-tile maths (wgmma_qk,
// wgmma_pv, online_softmax, pack_probs) are split_kernel_pipe's, except that the row sums of P
// are taken on the tensor cores instead of in the softmax: at D 128 in the P V product itself
// (wgmma_pv_row_sums: m64n136k16, each V stage followed by a chunk of ones), at D 64 by
// wgmma_row_sums issued with it. Its epilogue stages O through shared memory and writes T
// partials (stage_rows / store_staged_rows; merge_kernel<D, T, T>).
#pragma once

#include "tree_attention.cuh"

namespace jetspec {
namespace tree_attn {

constexpr int kWsThreads = 384;   // producer warpgroup + 2 consumer warpgroups
constexpr int kWsRows = 128;      // query rows per CTA (64 per consumer warpgroup)
// K/V ring depth. The consumers hold two stages at a time (S(i+1) and P(i) V(i)), so 3 is the
// least that lets the producer run ahead. 4 and 6 stages measured no faster in any issue-4 cell
// on the H200 (twelfth session: the copies are not what the consumers wait for; Nsight Compute
// put their time in their own instruction chains and the ping-pong turns).
constexpr int kWsStages = 3;
// The cluster merge (p.cluster_merge, below): CTA `rank` of a cluster of ns splits owns rows
// [rank * R, rank * R + R) of the row tile, R = ceil(128 / ns) rounded up to a multiple of 4 (so
// that a share's lse values are a whole number of 16-byte units for the bulk copies), and
// receives those rows from the ns - 1 other CTAs: at most kClusterRecvRows rows.
constexpr int kMaxClusterSplits = 8;  // the portable cluster size
__host__ __device__ constexpr int cluster_rows_per(int ns) { return (((kWsRows + ns - 1) / ns) + 3) & ~3; }
constexpr int max_cluster_recv_rows(int ns = 2) {
  return ns > kMaxClusterSplits ? 0
         : ((ns - 1) * cluster_rows_per(ns) > max_cluster_recv_rows(ns + 1) ? (ns - 1) * cluster_rows_per(ns)
                                                                           : max_cluster_recv_rows(ns + 1));
}
constexpr int kClusterRecvRows = max_cluster_recv_rows();  // 120 (ns 6 and 7)
constexpr int kWsBarriers = 2 + 3 * kWsStages;  // Q full; K full, V full, K/V empty per stage; received
template <int D>
constexpr int ws_smem_bytes() {
  // Q tile + kWsStages stages of K and of V (rows x D 16-bit elements), the mbarriers (rounded up
  // to 16 bytes), the cluster merge's own lse (kWsRows fp32), received lse (kClusterRecvRows
  // fp32) and received rows (kClusterRecvRows x D 16-bit), 1 KB of slack to align the stages to
  // 1024 bytes (wgmma swizzle atoms), and the ones of the row sums: at D 128 a 64-column chunk
  // after each V stage (wgmma_pv_row_sums), at D 64 the ones tile (wgmma_row_sums).
  return (kWsRows + 2 * kWsStages * kBN) * D * 2 + (kWsBarriers * 8 + 15) / 16 * 16 + kWsRows * 4 +
         kClusterRecvRows * 4 + kClusterRecvRows * D * 2 + 1024 +
         (D == 128 ? kWsStages * kBN * 128 : kRowSumOnesBytes);
}
constexpr int kWsMaxSmem = 232448;  // shared memory an sm_90 block may have (227 KiB)
static_assert(ws_smem_bytes<128>() <= kWsMaxSmem, "the ring fits an sm_90 block");

// ---- mbarrier / register / named-barrier helpers (sm_90) -------------------------------------
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}
// Make the initialised barriers visible to every thread (and the async proxy) before use.
__device__ __forceinline__ void mbar_init_fence() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
// Wait until the phase of `bar` with parity `parity` has completed (a fresh barrier counts the
// phase before its first as completed with parity 1).
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred ready;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 ready, [%1], %2;\n"
        "selp.u32 %0, 1, 0, ready;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
#endif
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" ::"r"(bar) : "memory");
#endif
}
// Arrive on `bar` once every cp.async this thread issued so far has landed (counts towards the
// barrier's expected arrivals: .noinc).
__device__ __forceinline__ void cp_async_arrive_noinc(uint32_t bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
#endif
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// setmaxnreg: a warpgroup gives registers back to the CTA's pool (dec) or takes them (inc; waits
// until the pool has them). ptxas keeps the code after each within the new count.
// JETSPEC_TREE_ATTN_NO_SETMAXNREG (diagnostic builds only: setup.py with the environment variable
// of that name set to 1): both are no-ops, every warp keeps the launch's 168 registers (the
// consumers spill; 1.2-1.4x slower). Why: compute-sanitizer racecheck stalls now and then on the
// cluster-merge path, where the producers take registers back, with setmaxnreg (2 of 6 runs of the
// stall-prone cases) and never without it (0 of 18; forty-third session, benchmarks/RESULTS.md);
// the synchronisation is the same code either way, so racecheck runs on this build.
template <int kRegs>
__device__ __forceinline__ void warpgroup_dec_regs() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) && !defined(JETSPEC_TREE_ATTN_NO_SETMAXNREG)
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
#endif
}
template <int kRegs>
__device__ __forceinline__ void warpgroup_inc_regs() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) && !defined(JETSPEC_TREE_ATTN_NO_SETMAXNREG)
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
#endif
}
// Named barrier over the 256 consumer threads: sync (wait for the phase) or arrive (do not wait).
__device__ __forceinline__ void consumers_bar_sync(int id) {
  asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory");
}
__device__ __forceinline__ void consumers_bar_arrive(int id) {
  asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory");
}
// Named barrier over the 128 producer threads (id 4; ids 1-3 are the consumers').
__device__ __forceinline__ void producers_bar_sync() { asm volatile("bar.sync 4, 128;\n" ::: "memory"); }
// Named barrier over all 384 threads (id 3), where the cluster merge starts.
__device__ __forceinline__ void all_warps_bar_sync() { asm volatile("bar.sync 3, 384;\n" ::: "memory"); }

// ---- phase timeline (diagnostic builds only) --------------------------------------------------
// Built with JETSPEC_TREE_ATTN_TIMELINE=1 (setup.py adds -DJETSPEC_TREE_ATTN_TIMELINE), the kernel
// records per CTA (linear CTA index < kTimelineCtas) the SM clock at its phases, the global timer
// at entry and exit, and its SM; jetspec::_tree_attention_timeline reads them back
// (benchmarks/probe_ta_timeline.py). Why: a call at prefix 1024 spends ~5.5 us of the split
// kernel's time outside the key-tile loop (RESULTS, thirteenth session), and only a per-phase
// timeline says where. Default builds compile none of it.
#ifdef JETSPEC_TREE_ATTN_TIMELINE
constexpr int kTimelineCtas = 1024;
constexpr int kTimelineIterSlot = 21;  // first of the per-iteration slots (below)
constexpr int kTimelineIters = 16;
constexpr int kTimelineScoresSlot = kTimelineIterSlot + kTimelineIters;  // 37 + i (below)
constexpr int kTimelineTurnSlot = kTimelineScoresSlot + kTimelineIters;  // 53 + i (below)
constexpr int kTimelineWg1ScoresSlot = kTimelineTurnSlot + kTimelineIters;  // 69 + i (below)
constexpr int kTimelinePvSlot = kTimelineWg1ScoresSlot + kTimelineIters;  // 85 + i (below)
constexpr int kTimelineReadySlot = kTimelinePvSlot + kTimelineIters;  // 101 + i (below)
constexpr int kTimelinePackedSlot = kTimelineReadySlot + kTimelineIters;  // 117 + i (below)
constexpr int kTimelineIssueSlot = kTimelinePackedSlot + kTimelineIters;  // 133 + i (below)
constexpr int kTimelineSlots = kTimelineIssueSlot + kTimelineIters;
// Slots: 0 globaltimer at entry, 1 clock at entry, 2 after the CTA barrier, 3 producer: prefix
// length known, 4 producer: first K/V tile's copies issued, 5 consumer 0: Q landed, 6: K(0)
// landed, 7: softmax(0) done, 8: last P V done, 9: epilogue done, 10 globaltimer at consumer 0's
// exit, 11 SM id, 12 consumer 1 (warpgroup 2): epilogue done, 13 producer: last copy issued,
// 14 consumer 0: partials staged in shared memory (its stores follow), 15 / 16 the last consumer
// thread: the prefix length known / the same word loaded again through L2 (ld.global.cg): is
// the first global load's ~1 us (fourteenth session) the miss or the path?; with the cluster
// merge (p.cluster_merge), consumer 0: 17 the other CTAs' shares received, 18 its share merged
// and stored, and inside the merge (cluster_merge_share_n) 19 its item's loads landed, 20 its
// maths done and stores issued (is the merge's time in the loads, the maths or the stores?);
// 21 + i (i < kTimelineIters), consumer 0: the key-tile loop's iteration i done up to the
// softmax of the split's tile i + 1 (which iterations cost what: tree tiles against prefix
// tiles, the first ones against the rest; P1024 N256's iterations took ~0.95 us against ~0.80 at
// P4096 N64, nineteenth session: the clock, twentieth session, which found tree tiles +0.26-0.42
// us each); 37 + i, consumer 0: the scores of that tile landed in registers (the wait for
// S(i + 1) done), so an iteration splits into the wait for its products and its softmax (is a
// tree tile's extra time in the masking softmax or before it?); 53 + i, consumer 0: its turn to
// issue S(i + 1) and P(i) V(i) taken (the named barrier passed), and 69 + i, consumer 1's first
// thread (warpgroup 2): its scores of the same tile landed. Why: without any softmax an iteration
// runs at the tensor pipe's rate, and with it each warpgroup's scores wait ~430 ns, about the
// other warpgroup's products (twenty-first session): are the two warpgroups in turns, or in phase?
// (Twenty-second session: in turns; ~280 ns from the turn to the scores, ~240 ns from the
// softmax's end to the turn.) 85 + i, consumer 0: P(i) V(i) landed (the wait after the softmax),
// and 101 + i: its K / V waits of iteration i passed, just before the turn barrier; so the
// softmax-to-turn time splits into the wait for P V, the release / rescale / packing of P and
// the next K / V waits, and the turn barrier itself. 117 + i, consumer 0: P(i + 1) packed (the
// release / rescale / pack of iteration i done), which separates that ALU work (~220 ns with
// the K / V waits, twenty-fifth session) from the waits for the next tiles' copies. 133 + i,
// producer thread 0: the split's tile i may be copied (its stage's empty barrier passed, just
// before the copies are issued). Why: the consumers still wait ~190 ns per iteration for copies
// issued about an iteration earlier (twenty-sixth session); with the issue time beside consumer
// 0's release of the stage (P V landed, 85 + i - 3) and its wait for the tile (101 + i - 1), the
// wait splits into the producer issuing late (after consumer 1's release) and the copy's flight.
__device__ unsigned long long g_ws_timeline[kTimelineCtas][kTimelineSlots];
__device__ __forceinline__ unsigned long long timeline_clock() {
  unsigned long long c;
  asm volatile("mov.u64 %0, %%clock64;" : "=l"(c)::"memory");
  return c;
}
__device__ __forceinline__ unsigned long long timeline_globaltimer() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)::"memory");
  return t;
}
// This CTA's slot, or nullptr past the first kTimelineCtas CTAs.
__device__ __forceinline__ unsigned long long* timeline_slot(int slot) {
  const unsigned cta = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  return cta < kTimelineCtas ? &g_ws_timeline[cta][slot] : nullptr;
}
__device__ __forceinline__ void timeline_mark(int slot, unsigned long long v) {
  if (unsigned long long* d = timeline_slot(slot)) *d = v;
}
// A volatile store of v (kept, and it waits for v when v is a load's result).
__device__ __forceinline__ void timeline_touch(int slot, int v) {
  if (unsigned long long* d = timeline_slot(slot)) *reinterpret_cast<volatile unsigned long long*>(d) = (unsigned)v;
}
#define JETSPEC_TL_CLOCK(cond, slot) \
  do {                               \
    if (cond) ::jetspec::tree_attn::timeline_mark(slot, ::jetspec::tree_attn::timeline_clock()); \
  } while (0)
#else
#define JETSPEC_TL_CLOCK(cond, slot) \
  do {                               \
  } while (0)
#endif

// ---- the splits' merge inside a thread-block cluster (p.cluster_merge) -----------------------
// Why: at prefix 1024 the split partials in global memory (4 MB at N 64, as many bytes as the K/V
// the splits read) and merge_kernel, a second launch, cost 4-6 us of a 10-20 us call (timeline:
// CTA lifetimes against the call, fourteenth and fifteenth sessions). With the num_splits CTAs
// of a row tile launched as one cluster (grid.y = cluster.y = num_splits <= 8, so a CTA's
// cluster rank is its split), each CTA stages its normalised O rows (T) and log2-domain lse in
// its own shared memory, pushes each other CTA's share of them into that CTA's receive buffer
// with bulk copies (cp.async.bulk shared::cta -> shared::cluster, counted on the receiver's
// mbarrier), and merges its own share from local shared memory. A first version pulled the rows
// with ld.shared::cluster instead: 6.2 us for 64 rows x 2 splits per CTA on the H200 (fifteenth
// session; distributed shared memory is slow for many small loads).
__device__ __forceinline__ void cluster_arrive_relaxed() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.relaxed;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire;\n" ::: "memory");
#endif
}
// The shared-memory address `addr` (of this CTA) in CTA `rank` of the cluster.
__device__ __forceinline__ uint32_t cluster_map(uint32_t addr, int rank) {
  uint32_t r = addr;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(addr), "r"(rank));
#endif
  return r;
}
// Expect `bytes` of asynchronous copies on `bar` (and arrive once).
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1;\n}\n" ::"r"(bar),
               "r"(bytes)
               : "memory");
#endif
}
// Copy `bytes` (a multiple of 16, both addresses 16-byte aligned) of this CTA's shared memory to
// `dst` in another CTA of the cluster; completes `bytes` of transactions on that CTA's `bar`.
__device__ __forceinline__ void bulk_copy_to_cluster(uint32_t dst, uint32_t src, uint32_t bytes, uint32_t bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.shared::cluster.shared::cta.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
      "r"(src), "r"(bytes), "r"(bar)
      : "memory");
#endif
}
__device__ __forceinline__ void bulk_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}
// Wait until the bulk copies this thread committed have finished reading their sources.
__device__ __forceinline__ void bulk_wait_read() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
#endif
}

// Rows of the row tile CTA `rank` owns: [rank * R, rank * R + count).
struct ClusterShare {
  int first, count;
};
__device__ __forceinline__ ClusterShare cluster_share(int ns, int rank) {
  const int R = cluster_rows_per(ns);
  const int first = rank * R;
  return {first, max(0, min(R, kWsRows - first))};
}
// Slot of sender `from` in receiver `to`'s buffer (the other ns - 1 CTAs in rank order).
__device__ __forceinline__ int cluster_slot(int from, int to) { return from < to ? from : from - 1; }

// Bytes CTA `rank` receives: its share's rows (T) and lse (fp32) from each of the other CTAs.
template <int D>
__device__ __forceinline__ uint32_t cluster_recv_bytes(int ns, int rank) {
  return (uint32_t)((ns - 1) * cluster_share(ns, rank).count * (D * 2 + 4));
}

// A consumer warp's 16 rows (warp_row0..+15 of the CTA's 128): normalised O in T into `stage`
// (the Q tile's layout, swz) and the log2-domain lse (m + log2 l; -inf for a row that saw no key)
// into s_lse.
template <int D, typename T>
__device__ __forceinline__ void cluster_stage_rows(const float (&o)[D / 8][4], float (&l_run)[2],
                                                   const float (&m_run)[2], uint4* stage, float* s_lse,
                                                   int warp_row0, int lane) {
  constexpr int CH = D / 8;
  const int gid = lane >> 2, tig = lane & 3;
  quad_sum_row_sums(l_run);
  const float inv[2] = {l_run[0] != 0.f ? 1.f / l_run[0] : 0.f, l_run[1] != 0.f ? 1.f / l_run[1] : 0.f};
  stage_fragments<D, T>(o, inv, stage + warp_row0 * CH, lane);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = warp_row0 + gid + h * 8;
    const float l = l_run[h];
    if (tig == 0) s_lse[r] = l != 0.f ? m_run[h] + __log2f(l) : -INFINITY;  // (NaN l: NaN, see nan_max)
  }
}

// One thread: push every other CTA's share of this CTA's staged rows and lse into its receive
// buffer (after the staging is complete and fenced for the async proxy).
template <int D>
__device__ __forceinline__ void cluster_push_shares(int ns, int rank, const uint4* stage, const float* s_lse,
                                                    const uint4* recv_o, const float* recv_lse, uint32_t recv_bar) {
  constexpr int CH = D / 8;
  const int R = cluster_rows_per(ns);
  for (int to = 0; to < ns; ++to) {
    if (to == rank) continue;
    const ClusterShare sh = cluster_share(ns, to);
    const int slot = cluster_slot(rank, to);
    const uint32_t bar = cluster_map(recv_bar, to);
    bulk_copy_to_cluster(cluster_map(smem_u32(recv_o + slot * R * CH), to), smem_u32(stage + sh.first * CH),
                         (uint32_t)(sh.count * D * 2), bar);
    bulk_copy_to_cluster(cluster_map(smem_u32(recv_lse + slot * R), to), smem_u32(s_lse + sh.first),
                         (uint32_t)(sh.count * 4), bar);
  }
  bulk_commit();
}

// After the receive barrier completed: this CTA's share of the rows, combined over the cluster's
// NS splits from local shared memory and written to out / lse. `tid` in 0..kMergeThreads - 1
// (all 384 threads of the CTA: the producer warpgroup joins, see below).
// A thread takes one row and CPI of its 16-byte chunks, kGroups apart: its only item (CPI is the
// least power of two <= 4 with R x CH / CPI <= kMergeThreads items). Chunks kGroups apart, so that the
// kGroups threads of a row store adjacent chunks in each store instruction (whole 32-byte
// sectors; CPI consecutive chunks per thread wrote half sectors, 64 bytes apart: P1024 N256 15.98
// -> 14.82 us on the H200, seventeenth session). Compiled per split count, so that every load of
// the item (NS lse values, NS x CPI chunks) is issued before any is used and no code is spent
// on splits that do not exist. Why: the merge is issue-bound (8 warps, 2 per
// scheduler, little to overlap), and the earlier form for any ns <= 8 (one loop unrolled over 8
// splits x 4 chunks, each guarded by a branch) executed ~780 instructions per warp and took
// 2.2-2.8 us on the H200 for every split count (timeline build and Nsight Compute source
// counters, sixteenth session). Its time follows its code length per thread: ~640 straight-line
// instructions per thread at 6 splits when only the 256 consumers took items (2 chunks each),
// two thirds of its warp-stall samples "no instructions" (Nsight Compute, eighteenth session);
// with the producer warpgroup's 128 threads too, a thread takes 1 chunk at 6 and 7 splits and 2
// instead of 4 at 3 splits. Measured on the H200 (eighteenth session, graph-timed cells): P1024
// N128 (3 splits) 10.51 vs 10.61 us, N256 14.35 vs 14.43, N64 (6 splits) unchanged at 7.86: in
// warm back-to-back calls the merge's code is not refetched the way the profiler's flushed runs
// suggested.
constexpr int kMergeThreads = 384;
// Registers per thread (setmaxnreg) of the producer and consumer warpgroups in the key-tile loop,
// and of both during the merge. The launch gives 168 to every thread (__launch_bounds__(384, 1)):
// the producers' 128 x (168 - 56) go to the consumers' 256 x (224 - 168), and at the merge both
// meet at 168 again, so the CTA's pool balances at every step and no setmaxnreg.inc waits for
// registers that never come.
constexpr int kProducerRegs = 56;
constexpr int kConsumerRegs = 224;
constexpr int kMergeRegs = 168;
static_assert(128 * (kMergeRegs - kProducerRegs) == 256 * (kConsumerRegs - kMergeRegs), "the register pool balances");
template <int D, int NS>
__host__ __device__ constexpr int cluster_chunks_per_item() {
  return cluster_rows_per(NS) * (D / 8) <= kMergeThreads ? 1 : cluster_rows_per(NS) * (D / 16) <= kMergeThreads ? 2 : 4;
}
// The item's loads: this CTA's own row first, then the NS - 1 received copies of it, slot s at a
// compile-time offset from one base (each an LDS with an immediate offset; the split order of
// the sum does not matter). No select drops the weight-0 splits' words: a staged row is finite
// wherever the V rows the split read are (a row that saw no key stages 0 x O = 0, an empty split
// stages zeros: see the consumers), so a weight of 0 adds 0. Against the
// earlier form (per-split addresses, own row at its split's place, a select per word; 360-504
// SASS instructions per split count, now 279-382) on the H200: -0.18 to -0.29 us in every
// cluster-merged cell, e.g. P1024 N64 / N128 / N256 7.29 / 9.56 / 12.85 against 7.48 / 9.76 /
// 13.14 (fifty-sixth session, benchmarks/RESULTS.md).
template <int D, typename T, int NS>
__device__ __forceinline__ void cluster_merge_share_n(const Params& p, int rank, const uint4* stage, const float* s_lse,
                                                      const uint4* recv_o, const float* recv_lse, int b, int kvh,
                                                      int m_base, int tid) {
  constexpr int CH = D / 8;  // 16-byte chunks (8 elements) per row
  constexpr int R = cluster_rows_per(NS);
  constexpr int CPI = cluster_chunks_per_item<D, NS>();
  constexpr int kGroups = CH / CPI;  // items per row
  static_assert(R * kGroups <= kMergeThreads, "one item per thread");
  constexpr float kLn2 = 0.6931471805599453f;
  const ClusterShare sh = cluster_share(NS, rank);
  const int count = min(sh.count, p.rows - m_base - sh.first);  // rows past p.rows are padding
  if (tid >= count * kGroups) return;
  const int k = tid / kGroups;  // row within the share (and within each received slot)
  const int g = tid - k * kGroups;
  const int r = sh.first + k;   // row within the row tile
  const int sw = r & 7;         // chunk c of row r sits at c ^ sw (swz), in the copies too
  float l[NS];
  uint4 v[NS][CPI];
  l[0] = s_lse[r];
  const float* rl = recv_lse + k;
  const uint4* ro = recv_o + k * CH;
#pragma unroll
  for (int q = 0; q < CPI; ++q) v[0][q] = stage[r * CH + ((q * kGroups + g) ^ sw)];
#pragma unroll
  for (int s = 0; s < NS - 1; ++s) {
    l[s + 1] = rl[s * R];
#pragma unroll
    for (int q = 0; q < CPI; ++q) v[s + 1][q] = ro[s * R * CH + ((q * kGroups + g) ^ sw)];
  }
#ifdef JETSPEC_TREE_ATTN_TIMELINE
  if (tid == 0) {  // a store of every loaded word folded together: waits for all the loads
    uint32_t all = 0;
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      all ^= __float_as_uint(l[j]);
#pragma unroll
      for (int q = 0; q < CPI; ++q) all ^= v[j][q].x ^ v[j][q].y ^ v[j][q].z ^ v[j][q].w;
    }
    timeline_touch(19, (int)all);
    timeline_mark(19, timeline_clock());
  }
#endif
  float mx = l[0];
#pragma unroll
  for (int j = 1; j < NS; ++j) mx = nan_max(mx, l[j]);  // a NaN split makes the row NaN
  float w[NS];
  float wsum = 0.f;
#pragma unroll
  for (int j = 0; j < NS; ++j) {
    w[j] = mx == -INFINITY ? 0.f : fast_exp2(l[j] - mx);  // -inf (no keys, empty split) -> 0
    wsum += w[j];
  }
  // wsum is 0 (no keys), NaN (a NaN split), or in [1, NS] (the largest weight is exactly 1): the
  // fast reciprocal is within 2 ulp there.
  const float inv = wsum != 0.f ? __fdividef(1.f, wsum) : 0.f;
  const int grow = m_base + r;
  const int n = grow / p.G;
  const int hq = kvh * p.G + (grow - n * p.G);
  T* out_row = static_cast<T*>(p.out) + (((int64_t)b * p.N + n) * p.Hq + hq) * D;
#pragma unroll
  for (int q = 0; q < CPI; ++q) {
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      const uint32_t words[4] = {v[j][q].x, v[j][q].y, v[j][q].z, v[j][q].w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float2 f = TypeTraits<T>::unpack(words[e]);
        acc[2 * e] += w[j] * f.x;
        acc[2 * e + 1] += w[j] * f.y;
      }
    }
    uint4 packed;
    packed.x = TypeTraits<T>::pack(acc[0] * inv, acc[1] * inv);
    packed.y = TypeTraits<T>::pack(acc[2] * inv, acc[3] * inv);
    packed.z = TypeTraits<T>::pack(acc[4] * inv, acc[5] * inv);
    packed.w = TypeTraits<T>::pack(acc[6] * inv, acc[7] * inv);
    *reinterpret_cast<uint4*>(out_row + (q * kGroups + g) * 8) = packed;
  }
  JETSPEC_TL_CLOCK(tid == 0, 20);
  if (g == 0) p.lse[((int64_t)b * p.Hq + hq) * p.N + n] = wsum != 0.f ? (mx + __log2f(wsum)) * kLn2 : -INFINITY;
}
// cluster_merge_share_n for the launch's split count (2..kMaxClusterSplits).
template <int D, typename T>
__device__ __forceinline__ void cluster_merge_share(const Params& p, int rank, const uint4* stage, const float* s_lse,
                                                    const uint4* recv_o, const float* recv_lse, int b, int kvh,
                                                    int m_base, int tid) {
  static_assert(kMaxClusterSplits == 8, "one case per cluster size");
  switch (p.num_splits) {
    case 2: cluster_merge_share_n<D, T, 2>(p, rank, stage, s_lse, recv_o, recv_lse, b, kvh, m_base, tid); break;
    case 3: cluster_merge_share_n<D, T, 3>(p, rank, stage, s_lse, recv_o, recv_lse, b, kvh, m_base, tid); break;
    case 4: cluster_merge_share_n<D, T, 4>(p, rank, stage, s_lse, recv_o, recv_lse, b, kvh, m_base, tid); break;
    case 5: cluster_merge_share_n<D, T, 5>(p, rank, stage, s_lse, recv_o, recv_lse, b, kvh, m_base, tid); break;
    case 6: cluster_merge_share_n<D, T, 6>(p, rank, stage, s_lse, recv_o, recv_lse, b, kvh, m_base, tid); break;
    case 7: cluster_merge_share_n<D, T, 7>(p, rank, stage, s_lse, recv_o, recv_lse, b, kvh, m_base, tid); break;
    default: cluster_merge_share_n<D, T, 8>(p, rank, stage, s_lse, recv_o, recv_lse, b, kvh, m_base, tid); break;
  }
}

// One TMA box of a K or V cache: head-dim columns [col0, col0 + 64) of keys [key0, key0 + 64) of
// KV head `kvh`, batch row `b`, into `dst` (1024-byte aligned) in the 128-byte swizzle, its
// bytes completing on `bar` (keys past the cache arrive as zeros and still count).
__device__ __forceinline__ void tma_load_box(uint32_t dst, const CUtensorMap* map, int col0, int key0, int kvh, int b,
                                             uint32_t bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(col0), "r"(key0), "r"(kvh), "r"(b), "r"(bar)
      : "memory");
#endif
}
// Fetch a TMA descriptor (a __grid_constant__ kernel parameter) into the SM's descriptor cache
// ahead of its first copy. Why: a CTA's first TMA copy otherwise fetches its 128-byte descriptor
// from memory first, a round trip on the path to Q and K(0) (which land ~0.7 / ~0.95 us after the
// CTA barrier, timeline); the descriptors do not depend on the previous kernel's writes, so this
// runs before the grid-dependency wait, under it (CUTLASS's producers do the same).
__device__ __forceinline__ void prefetch_tensormap(const CUtensorMap* map) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
#endif
}
// A whole K or V tile (kBN keys from tile * kBN) by TMA into `dst`, in the kv_off_sw128 layout
// (D / 64 boxes of 64 columns, 8 KB apart), signalled on `bar` (expected bytes and the one
// arrival of its phase, by the calling thread).
template <int D, typename T>
__device__ __forceinline__ void tma_load_kv_tile(const CUtensorMap* map, uint4* dst, int tile, int kvh, int b,
                                                 uint32_t bar) {
  static_assert(D % 64 == 0, "boxes of 64 head-dim columns");
  mbar_arrive_expect_tx(bar, (uint32_t)(kBN * D * sizeof(T)));
#pragma unroll
  for (int c = 0; c < D / 64; ++c) tma_load_box(smem_u32(dst + c * kBN * 8), map, c * 64, tile * kBN, kvh, b, bar);
}

// The CTA's Q tile by TMA (p.q_tma: G divides kRows): query rows [node0 * G, node0 * G + kRows) of
// KV head kvh = heads [head0, head0 + G) of nodes [node0, node0 + kRows / G), batch row b, into
// `dst` in the q_off_sw128<D, kRows> layout (D / 64 boxes, kRows x 128 bytes apart), signalled on
// `bar` (expected bytes and its one arrival). Nodes past N arrive as zeros (and still count).
// Why: Q and K(0), the two things S(0) waits for, landed ~0.8-1.0 and ~1.0-1.3 us after the CTA
// barrier at every issue-4 cell (timeline, eighteenth session) while the 128 producer threads
// issued 16 cp.async each. By TMA, the cells are 0.1-0.25 us faster on the H200 (P1024 N64 /
// N128 / N256 7.72 / 10.27 / 14.10 against 7.87 / 10.50 / 14.34; issuing K(0) before the cp.async
// copies alone gained nothing; nineteenth session, benchmarks/RESULTS.md). Both still land late
// (Q ~0.73 us, K(0) ~0.95 us at P1024 N64), and not for L2's bandwidth: 128 CTAs reading 48 KB
// each from L2 at once take ~0.5 us beyond a call's fixed cost, and L2 delivers 9-15 TB/s to
// all SMs (benchmarks/probe_l2_bandwidth.py, nineteenth session); the loop moves 4.3-4.8.
template <int D, typename T, int kRows>
__device__ __forceinline__ void tma_load_q_tile(const CUtensorMap* map, uint4* dst, int head0, int node0, int b,
                                                uint32_t bar) {
  static_assert(D % 64 == 0, "boxes of 64 head-dim columns");
  mbar_arrive_expect_tx(bar, (uint32_t)(kRows * D * sizeof(T)));
#pragma unroll
  for (int c = 0; c < D / 64; ++c) tma_load_box(smem_u32(dst + c * kRows * 8), map, c * 64, head0, node0, b, bar);
}

// ---------------------------------------------------------------------------------------------
// grid = (ceil(rows / 128), num_splits, B * Hkv), block = 384 threads, ws_smem_bytes<D>() bytes.
// One 64-key tile per consumer iteration. (Two tiles per iteration, S over 128 keys as in
// FlashAttention-3, measured slower on the H200 in every issue-4 cell but one, twelfth session.)
// ---------------------------------------------------------------------------------------------
template <int D, typename T>
__global__ void __launch_bounds__(kWsThreads, 1) split_kernel_ws(const __grid_constant__ Params p) {
  static_assert(D == 64 || D == 128, "head dim 64 or 128");
  static_assert(kBN == 64, "S tile is m64n64");
  static_assert(kWsStages >= 3, "the consumers hold two stages; the producer needs a third");
  constexpr int kStages = kWsStages;
  constexpr int kBM = kWsRows;
  constexpr int CH = D / 8;               // 16-byte chunks per row
  constexpr int KSTEPS = D / 16;
  constexpr int NT_S = kBN / 8;           // 8-key column groups of S
  constexpr int NT_O = D / 8;
  constexpr int PV_KSTEPS = kBN / 16;
  constexpr int kStage = kBN * CH;        // chunks of one K or V tile
  // D 128: each V stage is followed by a 64-column chunk of ones (8 KB; the stage stride is then
  // kVStage), so that one m64n136k16 product per k-step gives O and the row sums of P together
  // (wgmma_pv_row_sums). Against the four m64n8k16 products of wgmma_row_sums per tile, this took
  // 0.1-0.4 us off the issue-4 cells and 4-9 us off P16384 N256 on the H200 (fifty-first
  // session, benchmarks/RESULTS.md), for 24 KB more shared memory (still one CTA per SM).
  constexpr bool kOnesInV = D == 128;
  constexpr int kVStage = kStage + (kOnesInV ? kBN * 8 : 0);
  constexpr int kProducers = 128;
  extern __shared__ __align__(1024) uint4 smem_raw[];
  uint4* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023) / 16;
  uint4* sK = smem;                        // kStages * kStage chunks
  uint4* sV = sK + kStages * kStage;       // kStages * kVStage
  uint4* sQ = sV + kStages * kVStage;      // kBM * CH
  const uint32_t bar0 = smem_u32(sQ + kBM * CH);  // kWsBarriers x 8 bytes
  const uint32_t q_full = bar0;
  auto k_full = [&](int s) { return bar0 + 8u * (1 + s); };
  auto v_full = [&](int s) { return bar0 + 8u * (1 + kStages + s); };
  auto kv_empty = [&](int s) { return bar0 + 8u * (1 + 2 * kStages + s); };
  const uint32_t recv_full = bar0 + 8u * (1 + 3 * kStages);  // cluster merge: the others' shares landed
  // Cluster merge (p.cluster_merge): own lse, received lse and received rows after the barriers;
  // the own rows are staged in the Q tile (read into registers in the prologue, then free).
  float* const s_lse = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(sQ + kBM * CH) +
                                                (kWsBarriers * 8 + 15) / 16 * 16);  // kBM
  float* const recv_lse = s_lse + kBM;                                     // kClusterRecvRows
  uint4* const recv_o = reinterpret_cast<uint4*>(recv_lse + kClusterRecvRows);  // kClusterRecvRows x CH
  uint4* const s_ones = recv_o + kClusterRecvRows * CH;  // D 64: kRowSumOnesBytes of T(1) (wgmma_row_sums)
  // Ring position of a tile: its stage and the phase parity of the stage's barriers. Stepped per
  // tile (a modulo by kStages per wait cost ~8 uniform instructions in the consumers' loop).
  struct RingPos {
    int stage = 0;
    uint32_t parity = 0;
    __device__ __forceinline__ void advance() {
      if (++stage == kStages) {
        stage = 0;
        parity ^= 1u;
      }
    }
  };

  const int tid = threadIdx.x;
  const int split = blockIdx.y;
  const int bh = blockIdx.z;
  const int b = bh / p.Hkv;
  const int kvh = bh - b * p.Hkv;
  const int m_base = blockIdx.x * kBM;
#ifdef JETSPEC_TREE_ATTN_TIMELINE
  if (tid == 0) {
    unsigned smid;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
    timeline_mark(0, timeline_globaltimer());
    timeline_mark(1, timeline_clock());
    timeline_mark(11, smid);
  }
#endif

  // The ones of the row sums: D 128, the chunk after each V stage (the TMA copies never write
  // it); D 64, the ones tile (generic-proxy stores, fenced into the async proxy that wgmma reads
  // through; the CTA barrier below orders them before every consumer's first product).
  if constexpr (kOnesInV) {
#pragma unroll
    for (int i = tid; i < kStages * kBN * 8; i += kWsThreads) {
      const int st = i / (kBN * 8);
      sV[st * kVStage + kStage + (i - st * kBN * 8)] = make_uint4(kOnesPair<T>, kOnesPair<T>, kOnesPair<T>, kOnesPair<T>);
    }
    fence_proxy_async_smem();
  } else if (tid < kRowSumOnesBytes / 16) {
    s_ones[tid] = make_uint4(kOnesPair<T>, kOnesPair<T>, kOnesPair<T>, kOnesPair<T>);
    fence_proxy_async_smem();
  }
  if (tid == 0) {
    if (p.q_tma) prefetch_tensormap(&p.tmap_q);
    prefetch_tensormap(&p.tmap_k);
    prefetch_tensormap(&p.tmap_v);
    mbar_init(q_full, p.q_tma ? 1 : kProducers);  // one TMA arrival, or one per producer thread's cp.async
    for (int s = 0; s < kStages; ++s) {
      mbar_init(k_full(s), 1);  // one arrival (with the TMA bytes) per phase
      mbar_init(v_full(s), 1);
      mbar_init(kv_empty(s), 8);  // one arrival per consumer warp
    }
    mbar_init(recv_full, 1);
    mbar_init_fence();
  }
  wait_for_previous_grid();  // programmatic launch: nothing global is touched before this
  signal_dependents_may_launch();
  const int plen_raw = p.prefix_lens[b];  // first: the V copies (and K past the first tile) wait for it
  __syncthreads();  // the barriers are initialised; the last CTA-wide barrier of the kernel
  // Cluster merge: this CTA's receive barrier is initialised (the other CTAs wait for this arrival
  // before pushing into it; every thread arrives here and waits once before it exits). Relaxed:
  // fence.mbarrier_init above orders the initialisation; a release here compiled to a GPU-wide
  // memory barrier that would hold every thread until its loads so far (the prefix length) land.
  if (p.cluster_merge) cluster_arrive_relaxed();
  JETSPEC_TL_CLOCK(tid == 0, 2);

  const T* qg = static_cast<const T*>(p.q);
  const T* vg = static_cast<const T*>(p.v) + b * p.v_sb + kvh * p.v_sh;
  // The timeline's exit marks (diagnostic builds only): consumer 0 (epilogue done, exit time)
  // and the first thread of consumer warpgroup 1.
  auto mark_exit = [&]() {
#ifdef JETSPEC_TREE_ATTN_TIMELINE
    if (tid == kProducers) {
      timeline_mark(9, timeline_clock());
      timeline_mark(10, timeline_globaltimer());
    }
    JETSPEC_TL_CLOCK(tid == kProducers + 128, 12);
#endif
  };

  if (tid < kProducers) {
    // ======================================= producer =========================================
    warpgroup_dec_regs<kProducerRegs>();
    const int c_chunk = tid % CH;
    const int r0 = tid / CH;
    // Q and K of the split's first tile, the two things S(0) waits for, are issued first, while
    // the prefix length (loaded above) is in flight, both by TMA from thread 0 (one expect-tx
    // arrival per tile and barrier). TMA writes through the async proxy that wgmma reads K and V
    // with: the consumers need no proxy fence. K(0) needs no prefix length: with interleaved
    // splits it is tile `split` whatever the length. K rows at or past L only make scores that
    // the softmax masks with a select (so even NaN there is harmless; keys past the cache arrive
    // as zeros); V, whose rows past L must be zeros, waits for the length. Q falls back to
    // cp.async by all 128 threads when G does not divide 128 (no box holds the CTA's rows).
    const bool k0_early = split * kBN < p.S;  // (CTA-uniform)
    if (tid == 0) {
      if (p.q_tma) tma_load_q_tile<D, T, kBM>(&p.tmap_q, sQ, kvh * p.G, m_base / p.G, b, q_full);
      if (k0_early) tma_load_kv_tile<D, T>(&p.tmap_k, sK, split, kvh, b, k_full(0));  // stage 0: free
    }
    if (!p.q_tma) {
      copy_q_tile<D, T, kBM, kProducers>(p, qg, sQ, b, kvh, m_base, r0, c_chunk);
      cp_async_arrive_noinc(q_full);
    }
    const SplitTiles range = split_tiles_interleaved(p, plen_raw, split);
    const int L = range.L;
#ifdef JETSPEC_TREE_ATTN_TIMELINE
    if (tid == 0) {
      asm volatile("" ::"r"(L));  // the prefix length has landed
      timeline_mark(3, timeline_clock());
    }
#endif
    if (range.count == 0) {  // empty split: the consumers never wait; let our copies land first
      mbar_wait(q_full, 0);
      // The cluster merge's bulk push (async proxy) reads these sQ rows; cp.async wrote them
      // through the generic proxy. (Their values are dropped: this split's lse is -inf.)
      if (!p.q_tma) fence_proxy_async_smem();
      if (k0_early) mbar_wait(k_full(0), 0);
    } else {
      // V of the key range's last tile, when L is not a multiple of kBN, is the one tile TMA cannot
      // copy: its rows past L must read as zeros (their P is 0, but 0 * NaN is NaN) and those rows
      // lie inside the cache. All 128 producer threads copy it with zero-filling cp.async, wait for
      // their copies, fence them into the async proxy and meet at a barrier; then one arrival.
      const int last_tile = range.first + (range.count - 1) * range.stride;
      const bool v_last_zeroed = (last_tile + 1) * kBN > L;  // this split holds that tile (CTA-uniform)
      RingPos pos;
      int tile = range.first;
      // Every producer thread waits for each stage in ring order (a wait for a phase two ahead of
      // the barrier's would pass at once); thread 0 issues the copies.
      for (int i = 0; i < range.count; ++i, pos.advance(), tile += range.stride) {
        const int st = pos.stage;
        mbar_wait(kv_empty(st), pos.parity ^ 1);  // both consumers done with the stage
#ifdef JETSPEC_TREE_ATTN_TIMELINE
        JETSPEC_TL_CLOCK(tid == 0 && i < kTimelineIters, kTimelineIssueSlot + i);
#endif
        const bool last = i + 1 == range.count;
        if (tid == 0) {
          if (!(i == 0 && k0_early)) tma_load_kv_tile<D, T>(&p.tmap_k, sK + st * kStage, tile, kvh, b, k_full(st));
          if (!(last && v_last_zeroed)) tma_load_kv_tile<D, T>(&p.tmap_v, sV + st * kVStage, tile, kvh, b, v_full(st));
        }
        if (last && v_last_zeroed) {
          copy_kv_tile<D, T, kProducers>(vg, p.v_ss, sV + st * kVStage, tile, L, r0, c_chunk);
          cp_async_wait_all();
          fence_proxy_async_smem();  // cp.async (generic proxy) data -> wgmma (async proxy)
          producers_bar_sync();
          if (tid == 0) mbar_arrive(v_full(st));
        }
        JETSPEC_TL_CLOCK(tid == 0 && i == 0, 4);
      }
      JETSPEC_TL_CLOCK(tid == 0, 13);
      cp_async_wait_all();  // do not leave with copies in flight (the consumers wait for their arrivals)
    }
    if (!p.cluster_merge) return;
    // The cluster merge below runs on all 384 threads: take back registers the consumers release
    // once their O is staged (kProducerRegs -> kMergeRegs; waits for them).
    warpgroup_inc_regs<kMergeRegs>();
  } else {
    // ========================================= consumers ==========================================
    warpgroup_inc_regs<kConsumerRegs>();
    const int ctid = tid - kProducers;  // 0..255
    const int warp = ctid >> 5;         // 0..7: rows warp * 16 .. +15 of the CTA's 128
    const int cw = warp >> 2;           // consumer warpgroup 0 / 1
    const int lane = ctid & 31;
    const int gid = lane >> 2;
    const int tig = lane & 3;

    const SplitTiles range = split_tiles_interleaved(p, plen_raw, split);
    const int plen = range.plen, L = range.L, stride = range.stride;
#ifdef JETSPEC_TREE_ATTN_TIMELINE
    if (ctid == 255) {  // a thread off the critical path (its warp waits for K(0) next)
      timeline_touch(15, L);  // waits for the prefix length (L depends on it)
      timeline_mark(15, timeline_clock());
      int again;
      asm volatile("ld.global.cg.s32 %0, [%1];" : "=r"(again) : "l"(p.prefix_lens + b) : "memory");
      timeline_touch(16, again);  // a store of the loaded value: waits for it
      timeline_mark(16, timeline_clock());
    }
#endif
    // Both branches below leave this CTA's rows staged for the cluster merge at the end of the
    // kernel, or return after storing them (merge_kernel path), so that the merge, the largest
    // code of the epilogue, is emitted once.
    if (range.count == 0) {
      if (!p.cluster_merge) {
        write_empty_split<D, T>(p, split, bh, m_base, kBM, ctid, 256);
        return;
      }
      for (int r = ctid; r < kBM; r += 256) s_lse[r] = -INFINITY;  // no rows: lse -inf (weight 0)
      // The merge multiplies every staged row by its weight (0 here) without a select, so this
      // split stages zeros, not the Q bytes the tile holds (a NaN in Q would reach other rows);
      // after Q landed (its copies write these bytes). The fence below hands them to the pushes.
      mbar_wait(q_full, 0);
      for (int i = ctid; i < kBM * CH; i += 256) sQ[i] = make_uint4(0u, 0u, 0u, 0u);
    } else {
      const int n_tiles = range.count;

      uint32_t qf[KSTEPS][4];
      float o[NT_O][4];
#pragma unroll
      for (int i = 0; i < NT_O; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
      float m_run[2] = {-INFINITY, -INFINITY};
      float l_run[2] = {0.f, 0.f};  // (set from l_sum after the loop)
      float l_sum[1][4] = {{0.f, 0.f, 0.f, 0.f}};  // row sums of P, on the tensor cores
      const uint64_t ones_desc = row_sum_ones_desc(smem_u32(s_ones));
      int node[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) node[h] = min((m_base + warp * 16 + gid + h * 8) / p.G, p.N - 1);
      const int32_t* mrow0 = p.mask + ((int64_t)b * p.N + node[0]) * p.W;
      const int32_t* mrow1 = p.mask + ((int64_t)b * p.N + node[1]) * p.W;

      auto softmax = [&](float (&s)[NT_S][4], int t, float (&alpha)[2]) {
        online_softmax<false>(s, p, t, plen, L, mrow0, mrow1, tig, m_run, l_run, alpha);
      };
      // Ping-pong turns: warpgroup cw issues its wgmma groups between waiting on named barrier
      // 1 + cw and arriving on the other's. Every warpgroup issues n_tiles + 1 groups (S(0), then
      // S(i+1) with P(i) V(i), then the last P V); warpgroup 0 goes first, so warpgroup 1 arrives
      // once up front and skips its arrival after its last group (the counts of both barriers match).
      int turns_left = n_tiles + 1;
      auto take_turn = [&]() { consumers_bar_sync(1 + cw); };
      auto end_turn = [&]() {
        --turns_left;
        if (cw == 0 || turns_left > 0) consumers_bar_arrive(2 - cw);
      };
      if (cw == 1) consumers_bar_arrive(1);
      // Release tile i's stage to the producer: this warp's products reading it are complete.
      auto release = [&](int st) {
        __syncwarp();
        if (lane == 0) mbar_arrive(kv_empty(st));
      };

      // ---- prologue: Q fragments, S(0), softmax(0) ---------------------------------------------------
      mbar_wait(q_full, 0);
      JETSPEC_TL_CLOCK(ctid == 0, 5);
      // (The epilogue stages O in sQ in another layout, each warp over bytes that held other
      // warps' Q here, with no CTA barrier. Ordered by the turn barriers, not by wgmma (whose
      // .sync waits for its own warp only): a warpgroup's first bar.sync follows all its warps'
      // Q loads; warpgroup 1's first turn follows warpgroup 0's first arrive, and warpgroup 0
      // (at least two turns) cannot take its second before warpgroup 1's first end-of-turn arrive.)
      load_q_fragments<D, kBM>(qf, sQ, warp, lane);
      float s[NT_S][4];
#pragma unroll
      for (int i = 0; i < NT_S; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
      uint32_t pa[PV_KSTEPS][4];
      float alpha[2];
      // O += P V of the tile in `stage` and l_sum += P 1 (kOnesInV: both in one product).
      auto pv_and_row_sums = [&](int stage) {
        if constexpr (kOnesInV) {
          wgmma_pv_row_sums<T>(o, l_sum, pa, sV + stage * kVStage);
        } else {
          wgmma_pv<D, T>(o, pa, sV + stage * kVStage);
          wgmma_row_sums<T>(l_sum, pa, ones_desc);
        }
      };
      mbar_wait(k_full(0), 0);  // (K and V arrive through the async proxy: no proxy fence here)
      JETSPEC_TL_CLOCK(ctid == 0, 6);
      take_turn();
      wgmma_fence();
      wgmma_qk<D, T>(s, qf, sK);
      JETSPEC_WGMMA_COMMIT();
      end_turn();
      JETSPEC_WGMMA_WAIT(0);
      fence_regs(s);
      int tile_next = range.first;  // the tile whose scores the next softmax sees
      softmax(s, tile_next, alpha);  // O = 0: alpha not needed
      pack_probs<T>(s, pa);
      JETSPEC_TL_CLOCK(ctid == 0, 7);

      // ---- main loop: S(i+1) and P(i) V(i) in flight, softmax(i+1) under the P V product ---------
      RingPos cur;  // tile i
      for (int i = 0; i + 1 < n_tiles; ++i) {
        RingPos nxt = cur;  // tile i + 1
        nxt.advance();
        mbar_wait(k_full(nxt.stage), nxt.parity);
        mbar_wait(v_full(cur.stage), cur.parity);
#ifdef JETSPEC_TREE_ATTN_TIMELINE
        JETSPEC_TL_CLOCK(ctid == 0 && i < kTimelineIters, kTimelineReadySlot + i);
#endif
        take_turn();
#ifdef JETSPEC_TREE_ATTN_TIMELINE
        JETSPEC_TL_CLOCK(ctid == 0 && i < kTimelineIters, kTimelineTurnSlot + i);
#endif
        wgmma_fence();
        wgmma_qk<D, T>(s, qf, sK + nxt.stage * kStage);
        JETSPEC_WGMMA_COMMIT();
        pv_and_row_sums(cur.stage);
        JETSPEC_WGMMA_COMMIT();
        end_turn();
        JETSPEC_WGMMA_WAIT(1);  // S(i+1) done
        fence_regs(s);
#ifdef JETSPEC_TREE_ATTN_TIMELINE
        JETSPEC_TL_CLOCK(ctid == 0 && i < kTimelineIters, kTimelineScoresSlot + i);
        JETSPEC_TL_CLOCK(ctid == 128 && i < kTimelineIters, kTimelineWg1ScoresSlot + i);
#endif
        tile_next += stride;
        softmax(s, tile_next, alpha);
#ifdef JETSPEC_TREE_ATTN_TIMELINE
        JETSPEC_TL_CLOCK(ctid == 0 && i < kTimelineIters, kTimelineIterSlot + i);
#endif
        JETSPEC_WGMMA_WAIT(0);  // P(i) V(i) done: stage i is free
        fence_regs(o);
        fence_regs(l_sum);
#ifdef JETSPEC_TREE_ATTN_TIMELINE
        JETSPEC_TL_CLOCK(ctid == 0 && i < kTimelineIters, kTimelinePvSlot + i);
#endif
        release(cur.stage);
        rescale_o(o, l_sum, alpha);  // skipped on most tiles (kMaxSlack)
        pack_probs<T>(s, pa);
#ifdef JETSPEC_TREE_ATTN_TIMELINE
        JETSPEC_TL_CLOCK(ctid == 0 && i < kTimelineIters, kTimelinePackedSlot + i);
#endif
        cur = nxt;
      }
      {  // last tile (cur): O += P V only
        mbar_wait(v_full(cur.stage), cur.parity);
        take_turn();
        wgmma_fence();
        pv_and_row_sums(cur.stage);
        JETSPEC_WGMMA_COMMIT();
        end_turn();
        JETSPEC_WGMMA_WAIT(0);
        fence_regs(o);
        fence_regs(l_sum);
      }
      // Every column of l_sum holds its row's sum; the epilogue adds a row's four quad partials.
      l_run[0] = tig == 0 ? l_sum[0][0] : 0.f;
      l_run[1] = tig == 0 ? l_sum[0][2] : 0.f;
      JETSPEC_TL_CLOCK(ctid == 0, 8);

      if (!p.cluster_merge) {
        stage_rows<D, T>(p, o, l_run, m_run, sQ + warp * 16 * CH, m_base + warp * 16, lane, split, bh, b, kvh);
        JETSPEC_TL_CLOCK(ctid == 0, 14);
        store_staged_rows<D, T>(p, sQ + warp * 16 * CH, m_base + warp * 16, lane, split, bh, b, kvh);
        mark_exit();
        return;
      }
      cluster_stage_rows<D, T>(o, l_run, m_run, sQ, s_lse, warp * 16, lane);
      JETSPEC_TL_CLOCK(ctid == 0, 14);
    }
    fence_proxy_async_smem();  // the staged rows (generic proxy) -> the bulk copies (async proxy)
    warpgroup_dec_regs<kMergeRegs>();  // O is staged: registers back to the pool, for the producers
  }
  // Cluster merge, after the rows are staged: push the other CTAs' shares, merge this CTA's own,
  // on all 384 threads (the producers' copies are done; one code path for both roles).
  const bool lead = tid == kProducers;  // consumer 0: pushes the shares, timeline marks
  all_warps_bar_sync();      // every consumer warp staged its rows
  cluster_wait();            // every CTA of the cluster initialised its receive barrier
  if (lead) {
    // This CTA's expected bytes (the one arrival of its receive barrier). Other CTAs' copies may
    // complete on it before this: the transaction count may go below zero meanwhile.
    mbar_arrive_expect_tx(recv_full, cluster_recv_bytes<D>(p.num_splits, split));
    cluster_push_shares<D>(p.num_splits, split, sQ, s_lse, recv_o, recv_lse, recv_full);
  }
  mbar_wait(recv_full, 0);   // the other CTAs' shares of this CTA's rows have landed
  JETSPEC_TL_CLOCK(lead, 17);
  // Merge thread index: consumers 0..255 (as before), then the producers 256..383.
  const int mtid = tid >= kProducers ? tid - kProducers : tid + (kMergeThreads - kProducers);
  cluster_merge_share<D, T>(p, split, sQ, s_lse, recv_o, recv_lse, b, kvh, m_base, mtid);
  JETSPEC_TL_CLOCK(lead, 18);
  if (lead) bulk_wait_read();  // the outgoing copies read the staged rows before this CTA exits
  mark_exit();
}

}  // namespace tree_attn
}  // namespace jetspec
