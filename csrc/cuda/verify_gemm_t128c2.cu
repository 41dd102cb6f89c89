// verify_linear configuration t128c2: tile 128 x 128 x 64, cooperative, cluster 1 x 2 (x tile multicast).
// See csrc/kernels/verify_gemm_sm90.cuh.
#define JETSPEC_VERIFY_GEMM_DEFINE
#include "kernels/verify_gemm_sm90.cuh"

JETSPEC_VERIFY_GEMM_CONFIG(t128c2, 128, 128, 64, 2)
