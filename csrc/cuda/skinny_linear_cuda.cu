// CUDA launcher of jetspec::skinny_linear (kernel: csrc/kernels/skinny_linear.cuh).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "cuda_utils.cuh"
#include "kernels/skinny_gemv.cuh"
#include "kernels/skinny_linear.cuh"
#include "skinny_linear_common.h"

namespace jetspec {
namespace {

// Arrival counters of the split-K reduction (one per row tile). Shared by every skinny_linear
// launch on the device: two launches with a K split must not run concurrently on different streams.
ArrivalCounters split_k_counters(4096);

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
  // 1..4 rows: the CUDA-core kernel reading whole 512-byte runs of each weight row
  // (skinny_gemv.cuh). JETSPEC_SKINNY_GEMV=0 sends them to the tensor-core kernel (tests, tuning).
  const char* gemv_env = std::getenv("JETSPEC_SKINNY_GEMV");
  if (M <= skinny::kGemvMaxRows && !(gemv_env != nullptr && std::string(gemv_env) == "0")) {
    const dim3 grid(static_cast<unsigned>(ceil_div(N, skinny::kGemvRowsPerCta)));
    cudaStream_t stream = current_stream();
    auto gemv = [&](auto tag, auto m_c) {
      using T = decltype(tag);
      skinny::skinny_gemv_kernel<T, decltype(m_c)::value><<<grid, skinny::kGemvThreads, 0, stream>>>(
          reinterpret_cast<const T*>(x.data_ptr()), reinterpret_cast<const T*>(weight.data_ptr()),
          reinterpret_cast<T*>(out.data_ptr()), N, K);
    };
    auto by_m = [&](auto tag) {
      switch (M) {
        case 1: gemv(tag, std::integral_constant<int, 1>{}); break;
        case 2: gemv(tag, std::integral_constant<int, 2>{}); break;
        case 3: gemv(tag, std::integral_constant<int, 3>{}); break;
        default: gemv(tag, std::integral_constant<int, 4>{});
      }
    };
    if (x.scalar_type() == at::kBFloat16)
      by_m(__nv_bfloat16{});
    else
      by_m(__half{});
    JETSPEC_CHECK_LAUNCH();
    return out;
  }
  // Tiling: JETSPEC_SKINNY_CFG = "4x2" (default: 4 n8 tiles per warp, 2 k blocks in flight),
  // "2x4" or "1x8" (tuning).
  int cfg = 0;
  if (const char* env = std::getenv("JETSPEC_SKINNY_CFG")) {
    const std::string v(env);
    TORCH_CHECK(v.empty() || v == "4x2" || v == "2x4" || v == "1x8",
                "JETSPEC_SKINNY_CFG must be 4x2, 2x4 or 1x8, got '", v, "'");
    cfg = v == "2x4" ? 1 : v == "1x8" ? 2 : 0;
  }
  // K split over CTAs (gridDim.y): about 3 CTAs per SM in all, each warp at least one 32-wide k
  // block, at most 8 splits; JETSPEC_SKINNY_KSPLIT=n forces n (tuning; 1 = none).
  int forced_ks = 0;
  if (const char* env = std::getenv("JETSPEC_SKINNY_KSPLIT")) {
    forced_ks = std::atoi(env);
    TORCH_CHECK(forced_ks >= 0 && forced_ks <= 64, "JETSPEC_SKINNY_KSPLIT must be 0 (auto) .. 64, got '",
                env, "'");
  }
  const int device = x.get_device();
  cudaStream_t stream = current_stream();
  auto run = [&](auto tag, auto tiles, auto unroll) {
    using T = decltype(tag);
    constexpr int kTiles = decltype(tiles)::value, kUnroll = decltype(unroll)::value;
    const int tiles_n = ceil_div(N, 8 * kTiles);
    const int kblocks = K / skinny::kKBlock;
    int ks = forced_ks > 0 ? forced_ks : ceil_div(3 * sm_count(device), tiles_n);
    ks = std::max(1, std::min({ks, forced_ks > 0 ? 64 : 8, kblocks / skinny::kWarps, kblocks}));
    int* counters = nullptr;
    at::Tensor part;
    if (ks > 1) {
      counters = split_k_counters.get(device, tiles_n, stream);
      if (counters == nullptr) ks = 1;  // capturing with too small a counter buffer
    }
    if (ks > 1) part = at::empty({ks, M, N}, x.options().dtype(at::kFloat));
    const dim3 grid(static_cast<unsigned>(tiles_n), static_cast<unsigned>(ks));
    skinny::skinny_linear_kernel<T, kTiles, kUnroll><<<grid, skinny::kThreads, 0, stream>>>(
        reinterpret_cast<const T*>(x.data_ptr()), reinterpret_cast<const T*>(weight.data_ptr()),
        reinterpret_cast<T*>(out.data_ptr()), M, N, K, ks > 1 ? part.data_ptr<float>() : nullptr,
        counters);
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
