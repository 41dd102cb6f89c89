// One CUTLASS configuration of the verify GEMM (csrc/kernels/verify_gemm_sm90.cuh): ping-pong tile 64 x 64 x 64,
// cluster 2 x 1. A translation unit of its own because each instantiation compiles for minutes.
// NDEBUG: CUTLASS's device asserts are calls that serialize the wgmma pipeline (ptxas C7510).
#ifndef NDEBUG
#define NDEBUG
#endif
#ifdef JETSPEC_WITH_CUTLASS
#define JETSPEC_VERIFY_GEMM_DEFINE
#endif
#include "kernels/verify_gemm_sm90.cuh"

namespace jetspec {
namespace verify_gemm {
Config config_p64c2() {
#ifdef JETSPEC_WITH_CUTLASS
  return CutlassGemm<64, 64, 64, 1, true, 2>::config("p64c2");
#else
  return Config{"p64c2", nullptr, nullptr};
#endif
}
}  // namespace verify_gemm
}  // namespace jetspec
