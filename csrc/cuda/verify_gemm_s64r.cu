// verify_linear configuration s64r: s64 with the residual added in the epilogue (C operand).
// See csrc/kernels/verify_gemm_sm90.cuh.
#define JETSPEC_VERIFY_GEMM_DEFINE
#define CUTLASS_ENABLE_GDC_FOR_SM90  // programmatic dependent launch (verify_gemm_sm90.cuh)
#include "kernels/verify_gemm_sm90.cuh"

JETSPEC_VERIFY_GEMM_CONFIG(s64r, 64, 16, 128, 1, true, 1, true, true)
