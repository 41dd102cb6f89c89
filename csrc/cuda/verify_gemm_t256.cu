// One CUTLASS configuration of the verify GEMM (csrc/kernels/verify_gemm_sm90.cuh): tile 128 x 256 x 64,
// cluster 1 x 1. A translation unit of its own because each instantiation compiles for minutes.
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
Config config_t256() {
#ifdef JETSPEC_WITH_CUTLASS
  return CutlassGemm<128, 256, 64, 1>::config("t256");
#else
  return Config{"t256", nullptr, nullptr};
#endif
}
}  // namespace verify_gemm
}  // namespace jetspec
