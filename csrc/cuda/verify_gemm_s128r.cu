// verify_linear configuration s128r: s128 with the residual added in the epilogue (C operand).
// See csrc/kernels/verify_gemm_sm90.cuh.
#define JETSPEC_VERIFY_GEMM_DEFINE
#include "kernels/verify_gemm_sm90.cuh"

JETSPEC_VERIFY_GEMM_CONFIG(s128r, 128, 16, 128, 1, false, 1, true, true)
