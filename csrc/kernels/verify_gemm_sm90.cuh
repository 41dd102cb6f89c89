// Weight-streaming GEMM for tree-verification shapes on sm_90a: y = x @ W^T with x (M, K) row-major
// bf16, M about 16..256 (the tree's tokens), W (N, K) row-major bf16 (nn.Linear layout, i.e. a
// K-major B operand), y (M, N) bf16, fp32 accumulation.
//
// Why: at M = 128 the Qwen3-8B projections are bound by reading W once (4.3 TB/s), and cuBLAS sits
// 15-75% above that floor on the H200 (o_proj 13.7 vs 7.8 us). Built from CUTLASS 3 collectives
// (TMA loads into 128-byte-swizzled shared memory, wgmma, mbarrier pipeline), configured here.
// What the H200 measured (benchmarks/RESULTS.md, seventh session):
//  - p64c2 (ping-pong 64x64 tiles, clusters of 2 along M sharing each W tile by TMA multicast,
//    so W is read once and every SM streams 1/128 of it): faster than cuBLAS for o_proj and
//    down_proj at M = 128, slower for q|k|v, gate|up, the LM head and M = 256. The default up to
//    128 rows.
//  - also measured at M = 128 and dropped (tenth session, 2026-11-29): ping-pong 64x64 with a
//    2 x 2 cluster (x multicast along N too: slower for every shape, e.g. o_proj 17.9 vs 12.0 us),
//    and ping-pong 64 x 96 / 128 / 192 tiles (q|k|v 16.3-21.4 vs cuBLAS 16.6 us, gate|up
//    56.9-61.0 vs 55.8, o_proj 13.3-18.5 vs p64c2 12.0, LM head 384-431 vs 346).
//  - cooperative 128-row tiles (t128, t256, t128c2) with a stream-K / split-K / data-parallel
//    schedule: slower than cuBLAS everywhere (each CTA streams 4x more W; issue slots 5-10% busy).
//    The default beyond 128 rows; kept for tuning.
//
// Torch-free: raw pointers, a stream, a caller-provided workspace.
#pragma once
// NDEBUG in the configuration TUs: CUTLASS's device asserts are calls that serialize the wgmma
// pipeline (ptxas C7510). This header must be their first include.
#if defined(JETSPEC_VERIFY_GEMM_DEFINE) && !defined(NDEBUG)
#define NDEBUG
#endif
#include <cuda_runtime.h>
#include <stddef.h>

namespace jetspec {
namespace verify_gemm {

// How the (M / tile_m) x (N / tile_n) output tiles and their K loops are spread over the CTAs.
enum class Schedule : int { kHeuristic = 0, kDataParallel = 1, kSplitK = 2, kStreamK = 3 };

struct Problem {
  const void* x;       // (M, K) bf16, row-major, 16-byte aligned, K % 8 == 0
  const void* weight;  // (N, K) bf16, row-major, 16-byte aligned
  void* out;           // (M, N) bf16, row-major, N % 8 == 0
  const void* residual;  // (M, N) bf16, row-major, added in the epilogue (configs with a C
                         // operand only: Config::has_residual), or null
  int M, N, K;
  Schedule schedule;
  int splits;    // K splits when schedule == kSplitK (>= 1)
  int sm_count;  // CTAs of the persistent grid
  int device;
};

// One compiled tile configuration. workspace_size() may be 0; run() returns cudaSuccess or the
// error (cudaErrorNotSupported when CUTLASS refuses the problem: the caller falls back).
struct Config {
  const char* name;
  bool has_residual;  // the epilogue adds Problem::residual (D = acc + C, one rounding)
  size_t (*workspace_size)(const Problem&);
  cudaError_t (*run)(const Problem&, void* workspace, size_t workspace_bytes, cudaStream_t stream);
};

// The configurations (csrc/cuda/verify_gemm_<name>.cu); null when built without CUTLASS.
Config config_t128();   // tile 128 x 128 x 64, no cluster
Config config_t256();   // tile 128 x 256 x 64, no cluster
Config config_t128c2(); // tile 128 x 128 x 64, cluster of 2 along N sharing the x tile (TMA multicast)
Config config_p64c2();  // ping-pong, tile 64 x 64 x 64, cluster of 2 along M sharing the W tile, data-parallel
Config config_p64c2r(); // p64c2 with the residual as the epilogue's C operand
// Few rows (the draft head's block, M <= 16), transposed (kSwapAB): W's rows fill the tile.
Config config_s64();    // ping-pong, tile 64 (W rows) x 16 (x rows) x 128, data-parallel
Config config_s64r();   // s64 with the residual as the epilogue's C operand
Config config_s128();   // cooperative, tile 128 x 16 x 128, stream-K / split-K (tuning: slower than s64)
Config config_s128r();  // s128 with the residual as the epilogue's C operand

}  // namespace verify_gemm
}  // namespace jetspec

// ---------------------------------------------------------------------------------------------
// The CUTLASS instantiations: one .cu per configuration (they compile in parallel: each takes
// about a minute), each defining JETSPEC_VERIFY_GEMM_DEFINE, including this header first, then
// JETSPEC_VERIFY_GEMM_CONFIG(name, template arguments of CutlassGemm). Without CUTLASS headers
// the configuration is a stub (null functions; the op is then not registered).
// ---------------------------------------------------------------------------------------------
#if defined(JETSPEC_VERIFY_GEMM_DEFINE) && defined(JETSPEC_WITH_CUTLASS)
#define JETSPEC_VERIFY_GEMM_CONFIG(NAME, ...)                                           \
  namespace jetspec {                                                                   \
  namespace verify_gemm {                                                               \
  Config config_##NAME() { return CutlassGemm<__VA_ARGS__>::config(#NAME); }            \
  }                                                                                     \
  }
#else
#define JETSPEC_VERIFY_GEMM_CONFIG(NAME, ...)                                           \
  namespace jetspec {                                                                   \
  namespace verify_gemm {                                                               \
  Config config_##NAME() { return Config{#NAME, false, nullptr, nullptr}; }             \
  }                                                                                     \
  }
#endif

#if defined(JETSPEC_VERIFY_GEMM_DEFINE) && defined(JETSPEC_WITH_CUTLASS)
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/gemm/kernel/tile_scheduler.hpp>

namespace jetspec {
namespace verify_gemm {

// Programmatic dependent launch (PDL). A configuration TU that defines
// CUTLASS_ENABLE_GDC_FOR_SM90 before including this header (the ping-pong ones; CUTLASS's stream-K
// scheduler does not compile with it) gets kernels whose every global load waits on
// griddepcontrol.wait, so they may be launched while the previous kernel in the stream is still
// finishing: launch and prologue (barrier init, descriptor prefetch) overlap its tail. The first
// global write comes after that wait, so a buffer the previous kernel still reads is never
// overwritten early. JETSPEC_PDL=0 launches plainly (A/B timing). Read per call, like the other
// tuning variables. static: each TU has its own copy, which is what the macro test needs.
static bool launch_programmatic() {
#ifdef CUTLASS_ENABLE_GDC_FOR_SM90
  const char* v = std::getenv("JETSPEC_PDL");
  return v == nullptr || std::strcmp(v, "0") != 0;
#else
  return false;
#endif
}

// kPingpong: two consumer warpgroups on alternate tiles (tile M 64), persistent data-parallel
// schedule (CUTLASS's ping-pong kernel has no stream-K); else cooperative (tile M >= 128) with the
// stream-K / split-K scheduler.
// kResidual: D = acc + C with C = Problem::residual (beta 1), else D = acc (no C operand).
// kSwapAB: the draft head's few-row shapes (M <= 16 tokens). wgmma tiles are at least 64 rows, so
// x's 16 rows would fill a quarter of each; the GEMM is run transposed instead, y^T = W x^T: W is
// the A operand (its rows are the tile's 64 / 128 rows, streamed by TMA), x the B operand (a
// 16-column tile read again by every CTA from L2), y written column-major (which is y row-major).
template <int kTileM, int kTileN, int kTileK, int kClusterN, bool kPingpong = false, int kClusterM = 1,
          bool kResidual = false, bool kSwapAB = false>
struct CutlassGemm {
  using T = cutlass::bfloat16_t;
  using ElementC = std::conditional_t<kResidual, T, void>;
  using TileShape = cute::Shape<cute::Int<kTileM>, cute::Int<kTileN>, cute::Int<kTileK>>;
  using ClusterShape = cute::Shape<cute::Int<kClusterM>, cute::Int<kClusterN>, cute::_1>;
  using EpiSchedule = std::conditional_t<kPingpong, cutlass::epilogue::TmaWarpSpecialized,
                                         cutlass::epilogue::TmaWarpSpecializedCooperative>;
  using MainSchedule = std::conditional_t<kPingpong, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                                          cutlass::gemm::KernelTmaWarpSpecializedCooperative>;
  using Scheduler = std::conditional_t<kPingpong, cutlass::gemm::PersistentScheduler, cutlass::gemm::StreamKScheduler>;
  static constexpr int kAlign = 8;  // 16 bytes of bf16
  // y (M, N) row-major is the transposed problem's (N, M) output column-major.
  using LayoutOut = std::conditional_t<kSwapAB, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float,
      ElementC, LayoutOut, kAlign,  // C: the residual, or none (void)
      T, LayoutOut, kAlign,
      EpiSchedule>::CollectiveOp;

  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,
      // A: x (M, K), K contiguous (swapped: W (N, K)); B: W^T (K, N) column-major = W (N, K)
      // row-major (swapped: x^T (K, M) column-major = x). Both K-major either way.
      T, cutlass::layout::RowMajor, kAlign,
      T, cutlass::layout::ColumnMajor, kAlign,
      float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      MainSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, Mainloop, Epilogue, Scheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Gemm::Arguments arguments(const Problem& p) {
    using StrideA = typename Kernel::StrideA;
    using StrideB = typename Kernel::StrideB;
    using StrideC = typename Kernel::StrideC;
    using StrideD = typename Kernel::StrideD;
    const int64_t M = p.M, N = p.N, K = p.K;
    // The GEMM's own (rows, cols): (M, N), or (N, M) transposed; A and B K-major.
    const int64_t rows = kSwapAB ? N : M, cols = kSwapAB ? M : N;
    StrideA sa = cute::make_stride(K, cute::Int<1>{}, rows * K);
    StrideB sb = cute::make_stride(K, cute::Int<1>{}, cols * K);
    StrideC sc;
    StrideD sd;
    if constexpr (kSwapAB) {  // element (n, m) of the transposed output at m * N + n
      sc = cute::make_stride(cute::Int<1>{}, N, M * N);
      sd = cute::make_stride(cute::Int<1>{}, N, M * N);
    } else {
      sc = cute::make_stride(N, cute::Int<1>{}, M * N);
      sd = cute::make_stride(N, cute::Int<1>{}, M * N);
    }
    cutlass::KernelHardwareInfo hw;
    hw.device_id = p.device;
    hw.sm_count = p.sm_count;
    const T* a = static_cast<const T*>(kSwapAB ? p.weight : p.x);
    const T* b = static_cast<const T*>(kSwapAB ? p.x : p.weight);
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {static_cast<int>(rows), static_cast<int>(cols), p.K, 1},
        {a, sa, b, sb},
        {{}, kResidual ? static_cast<const ElementC*>(p.residual) : nullptr, sc, static_cast<T*>(p.out), sd},
        hw};
    args.epilogue.thread.alpha = 1.f;
    args.epilogue.thread.beta = kResidual ? 1.f : 0.f;
    if constexpr (!kPingpong) set_schedule(args, p);
    return args;
  }

  template <class Args>
  static void set_schedule(Args& args, const Problem& p) {
    using Mode = cutlass::gemm::kernel::detail::DecompositionMode;
    switch (p.schedule) {
      case Schedule::kDataParallel: args.scheduler.decomposition_mode = Mode::DataParallel; break;
      case Schedule::kSplitK:
        args.scheduler.decomposition_mode = Mode::SplitK;
        args.scheduler.splits = p.splits;
        break;
      case Schedule::kStreamK: args.scheduler.decomposition_mode = Mode::StreamK; break;
      default: args.scheduler.decomposition_mode = Mode::Heuristic;
    }
    // Deterministic fixup: the same inputs give the same bits on every call (a decoder that must
    // be reproducible cannot have run-to-run rounding differences).
    args.scheduler.reduction_mode = cutlass::gemm::kernel::detail::ReductionMode::Deterministic;
  }

  static size_t workspace_size(const Problem& p) { return Gemm::get_workspace_size(arguments(p)); }

  static cudaError_t run(const Problem& p, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    const auto args = arguments(p);
    if (Gemm::get_workspace_size(args) > workspace_bytes) return cudaErrorInvalidValue;
    Gemm gemm;
    if (gemm.can_implement(args) != cutlass::Status::kSuccess) return cudaErrorNotSupported;
    if (gemm.initialize(args, workspace, stream) != cutlass::Status::kSuccess) return cudaErrorUnknown;
    if (gemm.run(stream, nullptr, launch_programmatic()) != cutlass::Status::kSuccess) {
      const cudaError_t e = cudaGetLastError();
      return e != cudaSuccess ? e : cudaErrorLaunchFailure;
    }
    return cudaSuccess;
  }

  static Config config(const char* name) { return Config{name, kResidual, &workspace_size, &run}; }
};

}  // namespace verify_gemm
}  // namespace jetspec
#endif  // JETSPEC_VERIFY_GEMM_DEFINE
