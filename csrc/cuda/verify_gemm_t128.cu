// verify_linear configuration t128: tile 128 x 128 x 64, cooperative, no cluster.
// See csrc/kernels/verify_gemm_sm90.cuh.
#define JETSPEC_VERIFY_GEMM_DEFINE
#include "kernels/verify_gemm_sm90.cuh"

JETSPEC_VERIFY_GEMM_CONFIG(t128, 128, 128, 64, 1)
