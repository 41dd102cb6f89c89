// verify_linear configuration t256: tile 128 x 256 x 64, cooperative, no cluster.
// See csrc/kernels/verify_gemm_sm90.cuh.
#define JETSPEC_VERIFY_GEMM_DEFINE
#include "kernels/verify_gemm_sm90.cuh"

JETSPEC_VERIFY_GEMM_CONFIG(t256, 128, 256, 64, 1)
