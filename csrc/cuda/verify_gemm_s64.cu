// verify_linear configuration s64: transposed (y^T = W x^T) for few rows, ping-pong tile 64 (W rows)
// x 16 (x rows) x 128, data-parallel. See csrc/kernels/verify_gemm_sm90.cuh.
#define JETSPEC_VERIFY_GEMM_DEFINE
#define CUTLASS_ENABLE_GDC_FOR_SM90  // programmatic dependent launch (verify_gemm_sm90.cuh)
#include "kernels/verify_gemm_sm90.cuh"

JETSPEC_VERIFY_GEMM_CONFIG(s64, 64, 16, 128, 1, true, 1, false, true)
