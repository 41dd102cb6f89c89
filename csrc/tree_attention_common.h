// Argument checks of tree_attention shared by the CPU and CUDA implementations. Only static
// properties are checked (shapes, dtypes, devices, strides): prefix_lens values live on the
// device and reading them would synchronise. The caller guarantees prefix_lens[b] + N <= S
// (the CPU op checks it since the values are on the host; the CUDA op clamps for memory safety).
#pragma once
#include <ATen/core/Tensor.h>

#include "checks.h"

namespace jetspec {

struct TreeAttentionShape {
  int64_t B, N, Hq, Hkv, G, S, D, W;
};

inline TreeAttentionShape check_tree_attention_args(const at::Tensor& q, const at::Tensor& k_cache,
                                                    const at::Tensor& v_cache,
                                                    const at::Tensor& prefix_lens,
                                                    const at::Tensor& tree_mask) {
  constexpr const char* op = "tree_attention";
  check_dim(q, 4, op, "q");
  check_dim(k_cache, 4, op, "k_cache");
  check_dim(v_cache, 4, op, "v_cache");
  check_dim(prefix_lens, 1, op, "prefix_lens");
  check_dim(tree_mask, 3, op, "tree_mask");
  check_dtype_in(q, {at::kBFloat16, at::kHalf, at::kFloat}, op, "q");
  TORCH_CHECK(k_cache.scalar_type() == q.scalar_type(), op, ": `k_cache` dtype ",
              k_cache.scalar_type(), " differs from `q` dtype ", q.scalar_type());
  TORCH_CHECK(v_cache.scalar_type() == q.scalar_type(), op, ": `v_cache` dtype ",
              v_cache.scalar_type(), " differs from `q` dtype ", q.scalar_type());
  check_dtype(prefix_lens, at::kInt, op, "prefix_lens");
  check_dtype(tree_mask, at::kInt, op, "tree_mask");
  check_same_device(k_cache, q, op, "k_cache", "q");
  check_same_device(v_cache, q, op, "v_cache", "q");
  check_same_device(prefix_lens, q, op, "prefix_lens", "q");
  check_same_device(tree_mask, q, op, "tree_mask", "q");

  TreeAttentionShape s;
  s.B = q.size(0);
  s.N = q.size(1);
  s.Hq = q.size(2);
  s.D = q.size(3);
  s.Hkv = k_cache.size(1);
  s.S = k_cache.size(2);
  TORCH_CHECK(s.B >= 1, op, ": `q` must have batch >= 1, got shape ", q.sizes());
  TORCH_CHECK(s.D == 64 || s.D == 128, op, ": head dim (last dim of `q`) must be 64 or 128, got ",
              s.D);
  TORCH_CHECK(s.N >= 1 && s.N <= 1024, op, ": the number of tree nodes N (dim 1 of `q`) must be in "
              "1..1024, got ", s.N);
  TORCH_CHECK(k_cache.size(0) == s.B && k_cache.size(3) == s.D, op,
              ": `k_cache` must have shape (B, Hkv, S, Dh) with B = ", s.B, " and Dh = ", s.D,
              " like `q`, got ", k_cache.sizes());
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), op, ": `v_cache` shape ", v_cache.sizes(),
              " differs from `k_cache` shape ", k_cache.sizes());
  TORCH_CHECK(s.Hkv >= 1 && s.Hq >= 1 && s.Hq % s.Hkv == 0, op,
              ": the number of query heads (", s.Hq, ") must be a positive multiple of the number "
              "of KV heads (", s.Hkv, ")");
  s.G = s.Hq / s.Hkv;
  TORCH_CHECK(s.S >= s.N, op, ": the cache (S = ", s.S, " slots) cannot hold the N = ", s.N,
              " tree nodes");
  check_size(prefix_lens, 0, s.B, op, "prefix_lens", "batch B of q");
  s.W = (s.N + 31) / 32;
  TORCH_CHECK(tree_mask.size(0) == s.B && tree_mask.size(1) == s.N && tree_mask.size(2) == s.W, op,
              ": `tree_mask` must have shape (B, N, ceil(N/32)) = (", s.B, ", ", s.N, ", ", s.W,
              "), got ", tree_mask.sizes());
  TORCH_CHECK(q.stride(3) == 1, op, ": the last dim of `q` must be contiguous, got strides ",
              q.strides());
  TORCH_CHECK(k_cache.stride(3) == 1, op,
              ": the last dim of `k_cache` must be contiguous, got strides ", k_cache.strides());
  TORCH_CHECK(v_cache.stride(3) == 1, op,
              ": the last dim of `v_cache` must be contiguous, got strides ", v_cache.strides());
  return s;
}

}  // namespace jetspec
