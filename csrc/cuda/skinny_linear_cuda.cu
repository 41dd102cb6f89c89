// CUDA launcher of jetspec::skinny_linear (kernel: csrc/kernels/skinny_linear.cuh).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "cuda_utils.cuh"
#include "kernels/skinny_linear.cuh"
#include "skinny_linear_common.h"

namespace jetspec {
namespace {

// Per-device arrival counters of the split-K reduction (zero at rest; each row tile's last CTA
// resets its own). Grown outside graph capture only; during a capture with too small a buffer
// the launch runs without a K split. Shared by every skinny_linear launch on the device: two
// launches with a K split must not run concurrently on different streams.
int* split_k_counters(int device, int64_t need, cudaStream_t stream) {
  static at::Tensor bufs[64];
  if (device < 0 || device >= 64) return nullptr;
  at::Tensor& buf = bufs[device];
  if (buf.defined() && buf.numel() >= need) return buf.data_ptr<int32_t>();
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  JETSPEC_CUDA_CHECK(cudaStreamIsCapturing(stream, &st));
  if (st != cudaStreamCaptureStatusNone) return nullptr;
  buf = at::zeros({std::max<int64_t>(need, 4096)}, at::TensorOptions().dtype(at::kInt).device(at::kCUDA, device));
  return buf.data_ptr<int32_t>();
}

int sm_count(int device) {
  static int counts[64] = {0};
  if (device < 0 || device >= 64) return 132;
  if (counts[device] == 0)
    JETSPEC_CUDA_CHECK(cudaDeviceGetAttribute(&counts[device], cudaDevAttrMultiProcessorCount, device));
  return counts[device];
}

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
  const int device = x.get_device();
  const int sms = sm_count(device);
  const int kblocks = K / skinny::kKBlock;
  // Tuning overrides: JETSPEC_SKINNY_CFG = n8 tiles per CTA (2, 4, 6 or 8),
  // JETSPEC_SKINNY_KSPLIT = K splits across CTAs (0 = automatic, 1 = none).
  int forced_tiles = 0;
  if (const char* env = std::getenv("JETSPEC_SKINNY_CFG")) {
    const std::string v(env);
    TORCH_CHECK(v.empty() || v == "2" || v == "4" || v == "6" || v == "8",
                "JETSPEC_SKINNY_CFG must be 2, 4, 6 or 8 (n8 tiles per CTA), got '", v, "'");
    if (!v.empty()) forced_tiles = std::atoi(env);
  }
  int forced_ks = 0;
  if (const char* env = std::getenv("JETSPEC_SKINNY_KSPLIT")) {
    forced_ks = std::atoi(env);
    TORCH_CHECK(forced_ks >= 0 && forced_ks <= 64, "JETSPEC_SKINNY_KSPLIT must be 0 (auto) .. 64, got '",
                env, "'");
  }
  // Automatic shape: the CTAs (row tiles x K splits) should fill whole waves of one CTA per SM
  // (each SM's share of the HBM stream is what one CTA's ring keeps in flight). Prefer no K split
  // (no partials, no second pass), then more rows per CTA (fewer CTAs), within 3% of the best.
  int tiles = 8, ks = 1;
  {
    double best = -1.0;
    struct Cand { int tiles, ks; double eff; };
    Cand cands[32];
    int nc = 0;
    for (int k = 1; k <= 8; ++k) {
      if (forced_ks > 0 && k != forced_ks) continue;
      if (forced_ks == 0 && k > 1 && k > kblocks / skinny::kWarps) break;
      for (int t : {8, 6, 4, 2}) {
        if (forced_tiles > 0 && t != forced_tiles) continue;
        const int64_t units = static_cast<int64_t>(ceil_div(N, 8 * t)) * k;
        const int64_t waves = (units + sms - 1) / sms;
        const double eff = static_cast<double>(units) / static_cast<double>(waves * sms);
        cands[nc++] = {t, k, eff};
        best = std::max(best, eff);
      }
    }
    for (int i = 0; i < nc; ++i)  // candidates are ordered by (ks, -tiles)
      if (cands[i].eff >= best - 0.03) { tiles = cands[i].tiles; ks = cands[i].ks; break; }
    if (forced_ks > 0) ks = forced_ks;
  }
  ks = std::max(1, std::min(ks, kblocks));
  cudaStream_t stream = current_stream();
  int* counters = nullptr;
  at::Tensor part;
  const int tiles_n = ceil_div(N, 8 * tiles);
  if (ks > 1) {
    counters = split_k_counters(device, tiles_n, stream);
    if (counters == nullptr) ks = 1;  // capturing with too small a counter buffer
  }
  if (ks > 1) part = at::empty({ks, M, N}, x.options().dtype(at::kFloat));
  const dim3 grid(static_cast<unsigned>(tiles_n), static_cast<unsigned>(ks));
  auto run = [&](auto tag, auto tiles_c, auto two_x_c) {
    using T = decltype(tag);
    constexpr int kTiles = decltype(tiles_c)::value;
    constexpr bool kTwoX = decltype(two_x_c)::value;
    constexpr int kSmem = skinny::smem_bytes(kTiles, kTwoX);
    auto kernel = skinny::skinny_linear_kernel<T, kTiles, kTwoX>;
    static bool configured = false;  // per instantiation; the attribute is per function
    if (!configured) {
      JETSPEC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
      configured = true;
    }
    kernel<<<grid, skinny::kThreads, kSmem, stream>>>(
        reinterpret_cast<const T*>(x.data_ptr()), reinterpret_cast<const T*>(weight.data_ptr()),
        reinterpret_cast<T*>(out.data_ptr()), M, N, K, ks > 1 ? part.data_ptr<float>() : nullptr,
        counters);
  };
  auto by_x = [&](auto tag, auto tiles_c) {
    if (M > 8)
      run(tag, tiles_c, std::true_type{});
    else
      run(tag, tiles_c, std::false_type{});
  };
  auto by_tiles = [&](auto tag) {
    switch (tiles) {
      case 2: by_x(tag, std::integral_constant<int, 2>{}); break;
      case 4: by_x(tag, std::integral_constant<int, 4>{}); break;
      case 6: by_x(tag, std::integral_constant<int, 6>{}); break;
      default: by_x(tag, std::integral_constant<int, 8>{});
    }
  };
  if (x.scalar_type() == at::kBFloat16)
    by_tiles(__nv_bfloat16{});
  else
    by_tiles(__half{});
  JETSPEC_CHECK_LAUNCH();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(jetspec, CUDA, m) { m.impl("skinny_linear", &skinny_linear_cuda); }

}  // namespace jetspec
