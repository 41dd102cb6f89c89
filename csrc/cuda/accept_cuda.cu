// CUDA launcher of jetspec::tree_accept: checks, workspace, dtype dispatch, current stream.
// No host synchronisation: invalid trees are flagged on the device (see the wrapper's `check`).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "accept_common.h"
#include "cuda_utils.cuh"
#include "kernels/accept.cuh"

namespace jetspec {
namespace {

template <typename T>
void run_accept(const at::Tensor& logits, const at::Tensor& node_tokens, const at::Tensor& parents,
                int64_t max_depth, at::Tensor& rng_state, double temperature, int64_t top_k,
                double top_p, at::Tensor& accepted, at::Tensor& accept_len,
                at::Tensor& next_token) {
  using namespace accept;
  cudaStream_t stream = current_stream();
  const int64_t B = logits.size(0), N = logits.size(1), V = logits.size(2);
  const int64_t rows = B * N;
  constexpr int kVec = VecTraits<T>::kVec;
  const bool vec_ok = V % kVec == 0 && reinterpret_cast<uintptr_t>(logits.data_ptr()) % 16 == 0;
  // Fixed chunk size (static shapes -> static grid): one block covers kThreads x kLoadsPerThread
  // 16-byte loads, i.e. 8192 bf16 / 4096 fp32 logits, so a 151936-vocabulary row spans 19 blocks.
  const int64_t chunk_len = int64_t(kThreads) * kLoadsPerThread * kVec;
  const int num_chunks = ceil_div(V, chunk_len);
  TORCH_CHECK(rows <= 65535, "tree_accept: B * N = ", rows, " exceeds 65535");
  const size_t smem = static_cast<size_t>(N) * (sizeof(int64_t) + 5 * sizeof(int32_t));
  TORCH_CHECK(smem <= 48 * 1024, "tree_accept: N = ", N, " is too large for the CUDA kernel (max 1755)");
  const T* x = reinterpret_cast<const T*>(logits.data_ptr());
  auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor part_a = at::empty({rows, num_chunks}, f32);
  at::Tensor choice = at::empty({rows}, f32.dtype(at::kLong));
  dim3 chunk_grid(num_chunks, static_cast<unsigned>(rows));
  int64_t* ch = choice.data_ptr<int64_t>();

  if (temperature == 0.0) {
    at::Tensor part_idx = at::empty({rows, num_chunks}, f32.dtype(at::kInt));
    if (vec_ok)
      chunk_argmax_kernel<T, kVec><<<chunk_grid, kThreads, 0, stream>>>(
          x, V, chunk_len, part_a.data_ptr<float>(), part_idx.data_ptr<int32_t>());
    else
      chunk_argmax_kernel<T, 1><<<chunk_grid, kThreads, 0, stream>>>(
          x, V, chunk_len, part_a.data_ptr<float>(), part_idx.data_ptr<int32_t>());
    JETSPEC_CHECK_LAUNCH();
    merge_argmax_kernel<<<ceil_div(rows, kMergeThreads / 32), kMergeThreads, 0, stream>>>(
        part_a.data_ptr<float>(), part_idx.data_ptr<int32_t>(), rows, num_chunks, ch);
    JETSPEC_CHECK_LAUNCH();
  } else {
    const float inv_t = static_cast<float>(1.0 / temperature);
    const bool filtered = (top_k > 0 && top_k < V) || top_p < 1.0;
    at::Tensor thresh;
    const float* thresholds = nullptr;
    if (filtered) {
      thresh = at::empty({rows}, f32);
      if (vec_ok)
        filter_threshold_kernel<T, kVec><<<static_cast<unsigned>(rows), kFilterThreads, 0, stream>>>(
            x, V, inv_t, top_k, top_p, thresh.data_ptr<float>());
      else
        filter_threshold_kernel<T, 1><<<static_cast<unsigned>(rows), kFilterThreads, 0, stream>>>(
            x, V, inv_t, top_k, top_p, thresh.data_ptr<float>());
      JETSPEC_CHECK_LAUNCH();
      thresholds = thresh.data_ptr<float>();
    }
    at::Tensor part_sum = at::empty({rows, num_chunks}, f32);
    at::Tensor tickets = at::zeros({rows}, f32.dtype(at::kInt));  // one memset node
    int* tk = tickets.data_ptr<int>();
    const int64_t* rs = rng_state.data_ptr<int64_t>();
    float* pm = part_a.data_ptr<float>();
    float* ps = part_sum.data_ptr<float>();
#define JETSPEC_SOFTMAX(VEC_, FILT_)                                                        \
  chunk_softmax_kernel<T, VEC_, FILT_><<<chunk_grid, kThreads, 0, stream>>>(                 \
      x, V, chunk_len, inv_t, thresholds, pm, ps, tk, rs, ch)
    if (vec_ok && filtered) JETSPEC_SOFTMAX(kVec, true);
    else if (vec_ok) JETSPEC_SOFTMAX(kVec, false);
    else if (filtered) JETSPEC_SOFTMAX(1, true);
    else JETSPEC_SOFTMAX(1, false);
#undef JETSPEC_SOFTMAX
    JETSPEC_CHECK_LAUNCH();
  }
  walk_kernel<<<static_cast<unsigned>(B), kWalkThreads, smem, stream>>>(
      ch, node_tokens.data_ptr<int64_t>(), parents.data_ptr<int32_t>(), static_cast<int>(N),
      static_cast<int>(max_depth), accepted.data_ptr<int32_t>(), accept_len.data_ptr<int32_t>(),
      next_token.data_ptr<int64_t>(), temperature > 0.0 ? rng_state.data_ptr<int64_t>() : nullptr);
  JETSPEC_CHECK_LAUNCH();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tree_accept_cuda(
    const at::Tensor& logits, const at::Tensor& node_tokens, const at::Tensor& parents,
    int64_t max_depth, at::Tensor& rng_state, double temperature, int64_t top_k, double top_p) {
  check_tree_accept_args(logits, node_tokens, parents, max_depth, rng_state, temperature, top_k,
                         top_p);
  c10::cuda::CUDAGuard guard(logits.device());
  const int64_t B = logits.size(0);
  auto opts = logits.options();
  at::Tensor accepted = at::empty({B, max_depth + 1}, opts.dtype(at::kInt));
  at::Tensor accept_len = at::empty({B}, opts.dtype(at::kInt));
  at::Tensor next_token = at::empty({B}, opts.dtype(at::kLong));
  switch (logits.scalar_type()) {
    case at::kFloat:
      run_accept<float>(logits, node_tokens, parents, max_depth, rng_state, temperature, top_k,
                        top_p, accepted, accept_len, next_token);
      break;
    case at::kHalf:
      run_accept<__half>(logits, node_tokens, parents, max_depth, rng_state, temperature, top_k,
                         top_p, accepted, accept_len, next_token);
      break;
    case at::kBFloat16:
      run_accept<__nv_bfloat16>(logits, node_tokens, parents, max_depth, rng_state, temperature,
                                top_k, top_p, accepted, accept_len, next_token);
      break;
    default:
      TORCH_CHECK(false, "tree_accept: unsupported `logits` dtype ", logits.scalar_type());
  }
  return {accepted, accept_len, next_token};
}

}  // namespace

TORCH_LIBRARY_IMPL(jetspec, CUDA, m) { m.impl("tree_accept", &tree_accept_cuda); }

}  // namespace jetspec
