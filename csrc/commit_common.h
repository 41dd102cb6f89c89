// Argument checks of commit_kv shared by the CPU and CUDA implementations.
#pragma once
#include <ATen/core/Tensor.h>

#include "checks.h"

namespace jetspec {

inline void check_commit_kv_args(const at::Tensor& kv_cache, const at::Tensor& prefix_lens,
                                 const at::Tensor& accepted_nodes, const at::Tensor& accept_len) {
  constexpr const char* op = "commit_kv";
  check_dim(kv_cache, 5, op, "kv_cache");
  check_dtype_in(kv_cache, {at::kBFloat16, at::kHalf, at::kFloat}, op, "kv_cache");
  check_contiguous(kv_cache, op, "kv_cache");
  const int64_t B = kv_cache.size(1);
  check_dim(prefix_lens, 1, op, "prefix_lens");
  check_dtype(prefix_lens, at::kInt, op, "prefix_lens");
  check_size(prefix_lens, 0, B, op, "prefix_lens", "batch B of kv_cache");
  check_contiguous(prefix_lens, op, "prefix_lens");  // kernels index data_ptr() directly
  check_dim(accepted_nodes, 2, op, "accepted_nodes");
  check_dtype(accepted_nodes, at::kInt, op, "accepted_nodes");
  check_contiguous(accepted_nodes, op, "accepted_nodes");
  check_size(accepted_nodes, 0, B, op, "accepted_nodes", "batch B of kv_cache");
  TORCH_CHECK(accepted_nodes.size(1) >= 1 && accepted_nodes.size(1) <= 1024, op,
              ": `accepted_nodes` must have 1..1024 columns (max_depth + 1), got ",
              accepted_nodes.sizes());
  TORCH_CHECK(accepted_nodes.size(1) <= kv_cache.size(3), op,
              ": the path (", accepted_nodes.size(1), " nodes) is longer than the cache (S = ",
              kv_cache.size(3), ")");
  check_dim(accept_len, 1, op, "accept_len");
  check_dtype(accept_len, at::kInt, op, "accept_len");
  check_size(accept_len, 0, B, op, "accept_len", "batch B of kv_cache");
  check_contiguous(accept_len, op, "accept_len");
  check_same_device(prefix_lens, kv_cache, op, "prefix_lens", "kv_cache");
  check_same_device(accepted_nodes, kv_cache, op, "accepted_nodes", "kv_cache");
  check_same_device(accept_len, kv_cache, op, "accept_len", "kv_cache");
}

}  // namespace jetspec
