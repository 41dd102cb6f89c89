// CUDA launcher of jetspec::commit_kv: one launch moves the accepted KV of every stacked cache,
// a second tiny one advances prefix_lens (it must run after every block has read them).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "commit_common.h"
#include "cuda_utils.cuh"
#include "kernels/commit_kv.cuh"

namespace jetspec {
namespace {

void commit_kv_cuda(at::Tensor& kv_cache, at::Tensor& prefix_lens,
                    const at::Tensor& accepted_nodes, const at::Tensor& accept_len) {
  check_commit_kv_args(kv_cache, prefix_lens, accepted_nodes, accept_len);
  check_contiguous(prefix_lens, "commit_kv", "prefix_lens");
  check_contiguous(accept_len, "commit_kv", "accept_len");
  c10::cuda::CUDAGuard guard(kv_cache.device());
  const int64_t C = kv_cache.size(0), B = kv_cache.size(1), H = kv_cache.size(2),
                S = kv_cache.size(3), Dh = kv_cache.size(4);
  const int64_t slot_bytes = Dh * kv_cache.element_size();
  TORCH_CHECK(slot_bytes % 16 == 0, "commit_kv: head_dim * element size must be a multiple of 16 bytes, got ",
              slot_bytes);
  TORCH_CHECK(reinterpret_cast<uintptr_t>(kv_cache.data_ptr()) % 16 == 0,
              "commit_kv: `kv_cache` must be 16-byte aligned");
  TORCH_CHECK(C * H <= 2147483647 && B <= 65535, "commit_kv: cache too large");
  const int P = static_cast<int>(accepted_nodes.size(1));
  cudaStream_t stream = current_stream();
  dim3 grid(static_cast<unsigned>(C * H), static_cast<unsigned>(B));
  commit::move_kernel<<<grid, commit::kThreads, 0, stream>>>(
      reinterpret_cast<uint4*>(kv_cache.data_ptr()), static_cast<int>(C), static_cast<int>(B),
      static_cast<int>(H), S, static_cast<int>(slot_bytes / 16), prefix_lens.data_ptr<int32_t>(),
      accepted_nodes.data_ptr<int32_t>(), accept_len.data_ptr<int32_t>(), P);
  JETSPEC_CHECK_LAUNCH();
  commit::advance_kernel<<<ceil_div(B, 4), 128, 0, stream>>>(
      prefix_lens.data_ptr<int32_t>(), accepted_nodes.data_ptr<int32_t>(),
      accept_len.data_ptr<int32_t>(), static_cast<int>(B), P, S);
  JETSPEC_CHECK_LAUNCH();
}

}  // namespace

TORCH_LIBRARY_IMPL(jetspec, CUDA, m) { m.impl("commit_kv", &commit_kv_cuda); }

}  // namespace jetspec
