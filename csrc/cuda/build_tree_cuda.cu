// CUDA launcher of jetspec::build_tree: two launches (per-slice row statistics + top-K, then
// merge / best-first expansion / outputs), current stream, no host synchronisation, static
// shapes (CUDA-graph capturable). Kernels: csrc/kernels/build_tree.cuh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "build_tree_common.h"
#include "cuda_utils.cuh"
#include "kernels/build_tree.cuh"

namespace jetspec {
namespace {

namespace k = build_tree_kernels;

template <typename T, int K>
void launch(const at::Tensor& logits, const at::Tensor& roots, int W, int N, int policy,
            double temperature, BuildTreeOutputs& out) {
  const int B = static_cast<int>(logits.size(0)), D = static_cast<int>(logits.size(1));
  const int V = static_cast<int>(logits.size(2));
  const int rows = B * D;
  TORCH_CHECK(rows <= 65535, "build_tree: B * D = ", rows, " exceeds the CUDA grid limit 65535");
  // V <= kTileElems * kMaxSplits (every vocabulary in practice): the tiled kernel, one block per
  // kTileElems logits. Larger V: the streaming kernel, about 4 blocks per SM in total.
  const bool tiled = V <= k::kTileElems * k::kMaxSplits;
  int S;
  if (tiled) {
    S = ceil_div(V, k::kTileElems);
  } else {
    constexpr int VEC = 16 / sizeof(T);
    const int target = 4 * sm_count(logits.get_device());
    S = std::min(k::kMaxSplits, std::max(1, ceil_div(target, rows)));
    S = std::max(1, std::min<int>(S, (V / VEC) / k::kStatsThreads));
  }
  at::Tensor ws = at::empty({static_cast<int64_t>(rows) * S * (2 + 2 * K)},
                            logits.options().dtype(at::kInt));
  float2* part_ms = reinterpret_cast<float2*>(ws.data_ptr<int32_t>());
  uint2* part_keys = reinterpret_cast<uint2*>(part_ms + static_cast<int64_t>(rows) * S);
  cudaStream_t stream = current_stream();
  const float inv_t = build_tree_inv_temperature(temperature);
  const T* x = reinterpret_cast<const T*>(logits.data_ptr());
  if (tiled)
    k::build_tree_stats_tile_kernel<T, K><<<dim3(S, rows), k::kStatsThreads, 0, stream>>>(
        x, V, S, W, inv_t, temperature != 1.0, part_ms, part_keys);
  else
    k::build_tree_stats_kernel<T, K><<<dim3(S, rows), k::kStatsThreads, 0, stream>>>(
        x, V, S, inv_t, temperature != 1.0, part_ms, part_keys);
  JETSPEC_CHECK_LAUNCH();
  k::build_tree_expand_kernel<K><<<B, k::kExpandThreads, 0, stream>>>(
      part_ms, part_keys, roots.data_ptr<int64_t>(), D, S, W, N, policy,
      std::get<0>(out).data_ptr<int64_t>(), std::get<1>(out).data_ptr<int32_t>(),
      std::get<2>(out).data_ptr<int32_t>(), std::get<3>(out).data_ptr<float>(),
      std::get<4>(out).data_ptr<int32_t>(), std::get<5>(out).data_ptr<int32_t>(),
      std::get<6>(out).data_ptr<int32_t>(), std::get<7>(out).data_ptr<int32_t>());
  JETSPEC_CHECK_LAUNCH();
}

template <typename T>
void launch_width(const at::Tensor& logits, const at::Tensor& roots, int W, int N, int policy,
                  double temperature, BuildTreeOutputs& out) {
  if (W <= 8)
    launch<T, 8>(logits, roots, W, N, policy, temperature, out);
  else
    launch<T, 16>(logits, roots, W, N, policy, temperature, out);
}

BuildTreeOutputs build_tree_cuda(const at::Tensor& draft_logits, const at::Tensor& root_tokens,
                                 int64_t width, int64_t budget, c10::string_view policy,
                                 double temperature) {
  const std::string_view pol(policy.data(), policy.size());
  check_build_tree_args(draft_logits, root_tokens, width, budget, pol, temperature);
  const int pid = build_tree_policy_id(pol);
  const c10::cuda::CUDAGuard guard(draft_logits.device());
  BuildTreeOutputs out = alloc_build_tree_outputs(draft_logits, budget);
  if (draft_logits.size(0) == 0) return out;
  const at::Tensor roots = root_tokens.contiguous();
  const int W = static_cast<int>(width), N = static_cast<int>(budget);
  switch (draft_logits.scalar_type()) {
    case at::kBFloat16:
      launch_width<__nv_bfloat16>(draft_logits, roots, W, N, pid, temperature, out);
      break;
    case at::kHalf:
      launch_width<__half>(draft_logits, roots, W, N, pid, temperature, out);
      break;
    default:
      launch_width<float>(draft_logits, roots, W, N, pid, temperature, out);
      break;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(jetspec, CUDA, m) { m.impl("build_tree", &build_tree_cuda); }

}  // namespace jetspec
