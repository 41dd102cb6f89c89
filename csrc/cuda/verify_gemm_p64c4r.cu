// verify_linear configuration p64c4r: p64c4 plus the residual as the epilogue's C operand.
// See csrc/kernels/verify_gemm_sm90.cuh.
#define JETSPEC_VERIFY_GEMM_DEFINE
#define CUTLASS_ENABLE_GDC_FOR_SM90  // programmatic dependent launch (verify_gemm_sm90.cuh)
#include "kernels/verify_gemm_sm90.cuh"

JETSPEC_VERIFY_GEMM_CONFIG(p64c4r, 64, 64, 64, 2, true, 2, true)
