// Warp-specialized tree-attention split kernel (sm_90a): the default on sm_90 above 64 query rows
// per KV head (JETSPEC_TREE_ATTN_IMPL=wgmma_ws_pp selects it explicitly; wgmma_ws2 is its opt-in,
// EXPERIMENTAL two-tiles-per-iteration form, see split_kernel_ws's KT).
//
// Why: split_kernel_pipe (one or two warpgroups that copy their own K/V tiles) spends ~1.0-1.5 us
// per 64-key tile against ~0.56 us of tensor work on the H200 (benchmarks/RESULTS.md, ninth
// session): its warps issue ~120 copy instructions per tile and meet at a CTA barrier once per
// tile, so both warpgroups run their softmax at the same time while the tensor cores idle
// (docs/tree_attention_next.md, R2 and R3). Here:
//   * warpgroup 0 is a producer: its 128 threads issue the cp.async copies of Q and of every
//     K/V tile into a ring of ws_stages<KT>() stages and signal each stage on an mbarrier
//     (cp.async.mbarrier.arrive.noinc: the arrive fires when the thread's copies have landed);
//     it gives registers to the consumers (setmaxnreg 56: at 40 its copy addressing spilled);
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
// Same inputs, outputs, split convention and partials as split_kernel_pipe (128 query rows per
// CTA, one CTA per SM): merge_kernel combines the splits. The per-tile maths (wgmma_qk,
// wgmma_pv, online_softmax, pack_probs) and the epilogue (write_rows) are split_kernel_pipe's.
#pragma once

#include "tree_attention.cuh"

namespace jetspec {
namespace tree_attn {

constexpr int kWsThreads = 384;   // producer warpgroup + 2 consumer warpgroups
constexpr int kWsRows = 128;      // query rows per CTA (64 per consumer warpgroup)
// K/V ring depth for KT key tiles per consumer iteration: the consumers hold the KT stages of
// iteration i (P V) and of iteration i + 1 (S), and the producer fills iteration i + 2's meanwhile,
// so 3 * KT (with 2 * KT the copies' latency was exposed every iteration). KT = 2 at D = 128:
// 6 stages, 230,552 bytes of the 232,448 (227 KiB) an sm_90 block may have.
template <int KT>
constexpr int ws_stages() { return 3 * KT; }

template <int D, int KT>
constexpr int ws_smem_bytes() {
  // Q tile + ws_stages stages of K and of V (rows x D 16-bit elements), the mbarriers (Q full;
  // K full, V full, K/V empty per stage), and 1 KB of slack to align the stages to 1024 bytes
  // (wgmma swizzle atoms).
  return (kWsRows + 2 * ws_stages<KT>() * kBN) * D * 2 + (1 + 3 * ws_stages<KT>()) * 8 + 1024;
}
static_assert(ws_smem_bytes<128, 2>() <= 232448, "shared memory of an sm_90 block (227 KiB)");

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

template <int kRegs>
__device__ __forceinline__ void warpgroup_set_regs() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (kRegs < 128)
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
  else
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

// ---------------------------------------------------------------------------------------------
// grid = (ceil(rows / 128), num_splits, B * Hkv), block = 384 threads, ws_smem_bytes<D, KT>() bytes.
// KT: 64-key tiles per consumer iteration. 1: S is m64n64 per warpgroup (wgmma_ws_pp). 2: the
// consumers take two ring stages at a time, so S covers 128 keys (two m64n64 products) and
// P V runs 8 k-steps (wgmma_ws2, EXPERIMENTAL): the per-iteration costs (mbarrier and ping-pong
// waits, wgmma drains, the row max / sum shuffles, O's rescale) are paid once per 128 keys
// instead of once per 64, as FlashAttention-3 does with its 128-176-key tiles. Its first form
// (eleventh session) issued the second tile's products only when the split had that tile; ptxas
// then serialised every wgmma (C7520: "wgmma.mma_async instructions are serialized due to
// program dependence on compiler-inserted WG.AR in divergent path") and it ran 1.2x slower than
// KT = 1 on the H200. Now no wgmma sits under a data-dependent branch: the producer pads the
// split to whole iterations (a tile past t_end is real keys of the next split or zero-filled past
// L), the consumers always multiply KT tiles, and online_softmax sets the columns of a padding
// tile to -inf by a select (its probabilities are then 0 and its V is finite).
// ---------------------------------------------------------------------------------------------
template <int D, typename T, int KT>
__global__ void __launch_bounds__(kWsThreads, 1) split_kernel_ws(const Params p) {
  static_assert(D == 64 || D == 128, "head dim 64 or 128");
  static_assert(kBN == 64, "S tile is m64n64");
  static_assert(KT == 1 || KT == 2, "one or two key tiles per iteration");
  constexpr int kStages = ws_stages<KT>();
  constexpr int kBM = kWsRows;
  constexpr int CH = D / 8;               // 16-byte chunks per row
  constexpr int KSTEPS = D / 16;
  constexpr int NT_S = KT * kBN / 8;      // 8-key column groups of S per iteration
  constexpr int NT_O = D / 8;
  constexpr int PV_KSTEPS = KT * kBN / 16;
  constexpr int kStage = kBN * CH;        // chunks of one K or V tile
  constexpr int kProducers = 128;
  // KT = 2: S's A operand (Q) is read from shared memory by the wgmma itself; its 32 fragment
  // registers per thread would not fit beside the 128-key S, P and O (ptxas spilled 30 registers).
  constexpr bool kQFromSmem = KT == 2;

  extern __shared__ __align__(1024) uint4 smem_raw[];
  uint4* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023) / 16;
  uint4* sK = smem;                        // kStages * kStage chunks
  uint4* sV = sK + kStages * kStage;       // kStages * kStage
  uint4* sQ = sV + kStages * kStage;       // kBM * CH
  const uint32_t bar0 = smem_u32(sQ + kBM * CH);  // (1 + 3 * kStages) x 8 bytes
  const uint32_t q_full = bar0;
  auto k_full = [&](int s) { return bar0 + 8u * (1 + s); };
  auto v_full = [&](int s) { return bar0 + 8u * (1 + kStages + s); };
  auto kv_empty = [&](int s) { return bar0 + 8u * (1 + 2 * kStages + s); };
  // ring stage and phase parity of the split's i-th tile
  auto stage_of = [&](int i) { return i % kStages; };
  auto parity_of = [&](int i) { return (uint32_t)((i / kStages) & 1); };

  const int tid = threadIdx.x;
  const int split = blockIdx.y;
  const int bh = blockIdx.z;
  const int b = bh / p.Hkv;
  const int kvh = bh - b * p.Hkv;
  const int m_base = blockIdx.x * kBM;

  if (tid == 0) {
    mbar_init(q_full, kProducers);
    for (int s = 0; s < kStages; ++s) {
      mbar_init(k_full(s), kProducers);
      mbar_init(v_full(s), kProducers);
      mbar_init(kv_empty(s), 8);  // one arrival per consumer warp
    }
    mbar_init_fence();
  }
  wait_for_previous_grid();  // programmatic launch: nothing global is touched before this
  signal_dependents_may_launch();
  __syncthreads();  // the barriers are initialised; the last CTA-wide barrier of the kernel

  const T* qg = static_cast<const T*>(p.q);
  const T* kg = static_cast<const T*>(p.k) + b * p.k_sb + kvh * p.k_sh;
  const T* vg = static_cast<const T*>(p.v) + b * p.v_sb + kvh * p.v_sh;

  if (tid < kProducers) {
    // ======================================= producer =========================================
    warpgroup_set_regs<56>();
    const int c_chunk = tid % CH;
    const int r0 = tid / CH;
    // Q before the prefix length: it does not depend on it.
    copy_q_tile<D, T, kBM, kProducers, kQFromSmem>(p, qg, sQ, b, kvh, m_base, r0, c_chunk);
    cp_async_arrive_noinc(q_full);
    const SplitRange range = split_range(p, b, split);
    const int L = range.L, t_begin = range.t_begin, t_end = range.t_end;
    if (t_begin >= t_end) {  // empty split: the consumers never wait; let Q's arrivals land first
      mbar_wait(q_full, 0);
      return;
    }
    const int n_padded = (t_end - t_begin + KT - 1) / KT * KT;  // whole consumer iterations
    for (int i = 0; i < n_padded; ++i) {
      const int st = stage_of(i);
      mbar_wait(kv_empty(st), parity_of(i) ^ 1);  // both consumers done with the stage
      copy_kv_tile<D, T, kProducers>(kg, p.k_ss, sK + st * kStage, t_begin + i, L, r0, c_chunk);
      cp_async_arrive_noinc(k_full(st));
      copy_kv_tile<D, T, kProducers>(vg, p.v_ss, sV + st * kStage, t_begin + i, L, r0, c_chunk);
      cp_async_arrive_noinc(v_full(st));
    }
    cp_async_wait_all();  // do not leave with copies in flight (the consumers wait for their arrivals)
    return;
  }

  // ========================================= consumers ==========================================
  warpgroup_set_regs<224>();
  const int ctid = tid - kProducers;  // 0..255
  const int warp = ctid >> 5;         // 0..7: rows warp * 16 .. +15 of the CTA's 128
  const int cw = warp >> 2;           // consumer warpgroup 0 / 1
  const int lane = ctid & 31;
  const int gid = lane >> 2;
  const int tig = lane & 3;

  const SplitRange range = split_range(p, b, split);
  const int plen = range.plen, L = range.L, t_begin = range.t_begin, t_end = range.t_end;
  if (t_begin >= t_end) {
    write_empty_split(p, split, bh, m_base, kBM, ctid, 256);
    return;
  }
  const int n_tiles = t_end - t_begin;
  const int n_iters = (n_tiles + KT - 1) / KT;

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

  // S of the iteration's KT tiles: tile h fills columns h * 64 .. h * 64 + 63. A padding tile
  // (past the split's last, see the producer) is multiplied like the others (no wgmma under a
  // data-dependent branch); online_softmax then sets its columns to -inf (key_end).
  auto issue_s = [&](float (&s)[NT_S][4], int i0) {
#pragma unroll
    for (int h = 0; h < KT; ++h) {
      float(&sh)[kBN / 8][4] = *reinterpret_cast<float(*)[kBN / 8][4]>(&s[h * (kBN / 8)]);
      if constexpr (kQFromSmem)
        wgmma_qk_ss<D, T>(sh, sQ + cw * (kBN * CH), sK + stage_of(i0 + h) * kStage);
      else
        wgmma_qk<D, T>(sh, qf, sK + stage_of(i0 + h) * kStage);
    }
  };
  auto issue_pv = [&](const uint32_t (&pa)[PV_KSTEPS][4], int i0) {
#pragma unroll
    for (int h = 0; h < KT; ++h)
      wgmma_pv<D, T>(o, *reinterpret_cast<const uint32_t(*)[kBN / 16][4]>(&pa[h * (kBN / 16)]),
                     sV + stage_of(i0 + h) * kStage);
  };
  auto softmax = [&](float (&s)[NT_S][4], int t, float (&alpha)[2]) {
    online_softmax(s, p, t, plen, L, mrow0, mrow1, tig, m_run, l_run, alpha, t_end * kBN);
  };
  auto pack_p = [&](const float (&s)[NT_S][4], uint32_t (&pa)[PV_KSTEPS][4]) { pack_probs<T>(s, pa); };
  auto wait_k = [&](int i0) {
#pragma unroll
    for (int h = 0; h < KT; ++h) mbar_wait(k_full(stage_of(i0 + h)), parity_of(i0 + h));
  };
  auto wait_v = [&](int i0) {
#pragma unroll
    for (int h = 0; h < KT; ++h) mbar_wait(v_full(stage_of(i0 + h)), parity_of(i0 + h));
  };
  // Ping-pong turns: warpgroup cw issues its wgmma groups between waiting on named barrier
  // 1 + cw and arriving on the other's. Every warpgroup issues n_iters + 1 groups (S(0), then
  // S(i+1) with P(i) V(i), then the last P V); warpgroup 0 goes first, so warpgroup 1 arrives
  // once up front and skips its arrival after its last group (the counts of both barriers match).
  int turns_left = n_iters + 1;
  auto take_turn = [&]() { consumers_bar_sync(1 + cw); };
  auto end_turn = [&]() {
    --turns_left;
    if (cw == 0 || turns_left > 0) consumers_bar_arrive(2 - cw);
  };
  if (cw == 1) consumers_bar_arrive(1);
  // Release the iteration's stages to the producer: this warp's products reading them are complete.
  auto release = [&](int i0) {
    __syncwarp();
    if (lane == 0)
#pragma unroll
      for (int h = 0; h < KT; ++h) mbar_arrive(kv_empty(stage_of(i0 + h)));
  };

  // ---- prologue: Q fragments, S(0), softmax(0) ---------------------------------------------------
  mbar_wait(q_full, 0);
  if constexpr (!kQFromSmem) load_q_fragments<D>(qf, sQ, warp, lane);
  float s[NT_S][4];
#pragma unroll
  for (int i = 0; i < NT_S; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
  uint32_t pa[PV_KSTEPS][4];
  float alpha[2];
  wait_k(0);
  fence_proxy_async_smem();  // cp.async (generic proxy) data -> wgmma (async proxy)
  take_turn();
  wgmma_fence();
  issue_s(s, 0);
  JETSPEC_WGMMA_COMMIT();
  end_turn();
  JETSPEC_WGMMA_WAIT(0);
  fence_regs(s);
  softmax(s, t_begin, alpha);  // O = 0: alpha not needed
  pack_p(s, pa);

  // ---- main loop: S(i+1) and P(i) V(i) in flight, softmax(i+1) under the P V product ---------
  for (int it = 0; it + 1 < n_iters; ++it) {
    const int i0 = it * KT, i1 = i0 + KT;  // i0's iteration is complete (KT tiles)
    wait_k(i1);
    wait_v(i0);
    fence_proxy_async_smem();
    take_turn();
    wgmma_fence();
    issue_s(s, i1);
    JETSPEC_WGMMA_COMMIT();
    issue_pv(pa, i0);
    JETSPEC_WGMMA_COMMIT();
    end_turn();
    JETSPEC_WGMMA_WAIT(1);  // S(i+1) done
    fence_regs(s);
    softmax(s, t_begin + i1, alpha);
    JETSPEC_WGMMA_WAIT(0);  // P(i) V(i) done: the iteration's stages are free
    fence_regs(o);
    release(i0);
#pragma unroll
    for (int k = 0; k < NT_O; ++k) {
      o[k][0] *= alpha[0];
      o[k][1] *= alpha[0];
      o[k][2] *= alpha[1];
      o[k][3] *= alpha[1];
    }
    pack_p(s, pa);
  }
  {  // last iteration: O += P V only
    const int i0 = (n_iters - 1) * KT;
    wait_v(i0);
    fence_proxy_async_smem();
    take_turn();
    wgmma_fence();
    issue_pv(pa, i0);
    JETSPEC_WGMMA_COMMIT();
    end_turn();
    JETSPEC_WGMMA_WAIT(0);
    fence_regs(o);
  }

  write_rows<D, T>(p, o, l_run, m_run, m_base + warp * 16 + gid, split, bh, b, kvh, tig);
}

}  // namespace tree_attn
}  // namespace jetspec
