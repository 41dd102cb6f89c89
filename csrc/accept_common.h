// Argument checks of tree_accept shared by the CPU and CUDA implementations (shape, dtype,
// device and scalar ranges; value checks of `parents` differ: the CPU op raises, the CUDA op
// flags rows on the device so it never synchronises).
#pragma once
#include <ATen/core/Tensor.h>

#include <cmath>

#include "checks.h"

namespace jetspec {

inline void check_tree_accept_args(const at::Tensor& logits, const at::Tensor& node_tokens,
                                   const at::Tensor& parents, int64_t max_depth,
                                   const at::Tensor& rng_state, double temperature, int64_t top_k,
                                   double top_p) {
  constexpr const char* op = "tree_accept";
  check_dim(logits, 3, op, "logits");
  check_dtype_in(logits, {at::kBFloat16, at::kHalf, at::kFloat}, op, "logits");
  check_contiguous(logits, op, "logits");
  const int64_t B = logits.size(0), N = logits.size(1), V = logits.size(2);
  TORCH_CHECK(B >= 1 && N >= 1 && V >= 1, op, ": `logits` must have non-zero sizes, got ",
              logits.sizes());
  TORCH_CHECK(V <= (int64_t{1} << 31) - 1, op, ": vocabulary too large");
  check_dim(node_tokens, 2, op, "node_tokens");
  check_dtype(node_tokens, at::kLong, op, "node_tokens");
  check_contiguous(node_tokens, op, "node_tokens");
  TORCH_CHECK(node_tokens.size(0) == B && node_tokens.size(1) == N, op,
              ": `node_tokens` must have shape (B, N) = (", B, ", ", N, ") like `logits`, got ",
              node_tokens.sizes());
  check_dim(parents, 2, op, "parents");
  check_dtype(parents, at::kInt, op, "parents");
  check_contiguous(parents, op, "parents");
  TORCH_CHECK(parents.size(0) == B && parents.size(1) == N, op,
              ": `parents` must have shape (B, N) = (", B, ", ", N, ") like `logits`, got ",
              parents.sizes());
  check_same_device(node_tokens, logits, op, "node_tokens", "logits");
  check_same_device(parents, logits, op, "parents", "logits");
  TORCH_CHECK(max_depth >= 0 && max_depth < N, op, ": `max_depth` must be in [0, N) = [0, ", N,
              "), got ", max_depth);
  check_dim(rng_state, 1, op, "rng_state");
  check_dtype(rng_state, at::kLong, op, "rng_state");
  check_contiguous(rng_state, op, "rng_state");  // the CUDA kernel reads data_ptr()[0..1]
  TORCH_CHECK(rng_state.size(0) == 2, op, ": `rng_state` must be [seed, offset] (shape (2,)), got ",
              rng_state.sizes());
  check_same_device(rng_state, logits, op, "rng_state", "logits");
  TORCH_CHECK(std::isfinite(temperature) && temperature >= 0.0, op,
              ": `temperature` must be finite and >= 0, got ", temperature);
  TORCH_CHECK(top_k >= 0, op, ": `top_k` must be >= 0 (0 disables), got ", top_k);
  TORCH_CHECK(top_p > 0.0 && top_p <= 1.0, op, ": `top_p` must be in (0, 1], got ", top_p);
}

}  // namespace jetspec
