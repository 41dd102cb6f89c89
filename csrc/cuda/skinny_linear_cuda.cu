// CUDA launcher of jetspec::skinny_linear (kernel: csrc/kernels/skinny_linear.cuh).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <type_traits>

#include "cuda_utils.cuh"
#include "kernels/skinny_linear.cuh"
#include "skinny_linear_common.h"

namespace jetspec {
namespace {

at::Tensor skinny_linear_cuda(const at::Tensor& x, const at::Tensor& weight) {
  check_skinny_linear_args(x, weight);
  static_assert(skinny::kMaxRows == kSkinnyMaxRows && skinny::kKBlock == kSkinnyKMultiple,
                "checks and kernel disagree");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 &&
                  reinterpret_cast<uintptr_t>(weight.data_ptr()) % 16 == 0,
              "skinny_linear: `x` and `weight` must be 16-byte aligned");
  c10::cuda::CUDAGuard guard(x.device());
  const int M = static_cast<int>(x.size(0)), K = static_cast<int>(x.size(1));
  const int N = static_cast<int>(weight.size(0));
  at::Tensor out = at::empty({M, N}, x.options());
  // Tiling: JETSPEC_SKINNY_CFG = "4x2" (default: 4 n8 tiles per warp, 2 k blocks in flight),
  // "2x4" or "1x8" (tuning).
  int cfg = 0;
  if (const char* env = std::getenv("JETSPEC_SKINNY_CFG")) {
    const std::string v(env);
    TORCH_CHECK(v.empty() || v == "4x2" || v == "2x4" || v == "1x8",
                "JETSPEC_SKINNY_CFG must be 4x2, 2x4 or 1x8, got '", v, "'");
    cfg = v == "2x4" ? 1 : v == "1x8" ? 2 : 0;
  }
  cudaStream_t stream = current_stream();
  auto run = [&](auto tag, auto tiles, auto unroll) {
    using T = decltype(tag);
    constexpr int kTiles = decltype(tiles)::value, kUnroll = decltype(unroll)::value;
    const dim3 grid(static_cast<unsigned>(ceil_div(N, 8 * kTiles)));
    skinny::skinny_linear_kernel<T, kTiles, kUnroll><<<grid, skinny::kThreads, 0, stream>>>(
        reinterpret_cast<const T*>(x.data_ptr()), reinterpret_cast<const T*>(weight.data_ptr()),
        reinterpret_cast<T*>(out.data_ptr()), M, N, K);
  };
  auto by_cfg = [&](auto tag) {
    if (cfg == 1)
      run(tag, std::integral_constant<int, 2>{}, std::integral_constant<int, 4>{});
    else if (cfg == 2)
      run(tag, std::integral_constant<int, 1>{}, std::integral_constant<int, 8>{});
    else
      run(tag, std::integral_constant<int, 4>{}, std::integral_constant<int, 2>{});
  };
  if (x.scalar_type() == at::kBFloat16)
    by_cfg(__nv_bfloat16{});
  else
    by_cfg(__half{});
  JETSPEC_CHECK_LAUNCH();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(jetspec, CUDA, m) { m.impl("skinny_linear", &skinny_linear_cuda); }

}  // namespace jetspec
