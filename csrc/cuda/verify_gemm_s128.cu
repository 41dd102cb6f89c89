// verify_linear configuration s128: transposed (y^T = W x^T) for few rows, cooperative tile 128
// (W rows) x 16 (x rows) x 128 with the stream-K / split-K scheduler, meant for W of 4096 rows and
// fewer (too few 64-row tiles to keep every SM streaming). Slower than s64 at every Qwen3-8B shape
// but the LM head (a tie) on the H200 (twentieth session); kept for tuning (JETSPEC_VERIFY_CFG).
// See csrc/kernels/verify_gemm_sm90.cuh.
#define JETSPEC_VERIFY_GEMM_DEFINE
#include "kernels/verify_gemm_sm90.cuh"

JETSPEC_VERIFY_GEMM_CONFIG(s128, 128, 16, 128, 1, false, 1, false, true)
