// verify_linear configuration p64n128c2: ping-pong tile 64 x 128 x 64, cluster 2 x 1 (W tile multicast).
// See csrc/kernels/verify_gemm_sm90.cuh.
#define JETSPEC_VERIFY_GEMM_DEFINE
#define CUTLASS_ENABLE_GDC_FOR_SM90  // programmatic dependent launch (verify_gemm_sm90.cuh)
#include "kernels/verify_gemm_sm90.cuh"

JETSPEC_VERIFY_GEMM_CONFIG(p64n128c2, 64, 128, 64, 1, true, 2)
