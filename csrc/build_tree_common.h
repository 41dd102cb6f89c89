// Argument checks and output allocation of build_tree shared by the CPU and CUDA launchers.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <string>
#include <string_view>
#include <tuple>

#include "checks.h"

namespace jetspec {

constexpr int64_t kBuildTreeMaxDepth = 32;
constexpr int64_t kBuildTreeMaxWidth = 16;
constexpr int64_t kBuildTreeMaxBudget = 1024;

// Policies: 0 = accum (JetSpec), 1 = topn (DDTree).
inline int build_tree_policy_id(std::string_view policy) {
  if (policy == "accum") return 0;
  if (policy == "topn") return 1;
  TORCH_CHECK(false, "build_tree: `policy` must be \"accum\" or \"topn\", got \"", std::string(policy),
              "\"");
  return -1;
}

inline void check_build_tree_args(const at::Tensor& draft_logits, const at::Tensor& root_tokens,
                                  int64_t width, int64_t budget, std::string_view policy,
                                  double temperature) {
  constexpr const char* op = "build_tree";
  check_dim(draft_logits, 3, op, "draft_logits");
  check_dtype_in(draft_logits, {at::kBFloat16, at::kHalf, at::kFloat}, op, "draft_logits");
  check_contiguous(draft_logits, op, "draft_logits");
  const int64_t B = draft_logits.size(0), D = draft_logits.size(1), V = draft_logits.size(2);
  TORCH_CHECK(D >= 1 && D <= kBuildTreeMaxDepth, op,
              ": `draft_logits` depth D = size(1) must be in [1, ", kBuildTreeMaxDepth,
              "], got shape ", draft_logits.sizes());
  TORCH_CHECK(V >= 1 && V <= (int64_t{1} << 31) - 1, op,
              ": `draft_logits` vocabulary V = size(2) must be in [1, 2^31), got shape ",
              draft_logits.sizes());
  check_dim(root_tokens, 1, op, "root_tokens");
  check_dtype(root_tokens, at::kLong, op, "root_tokens");
  TORCH_CHECK(root_tokens.size(0) == B, op, ": `root_tokens` must have shape (B,) = (", B,
              ",) like `draft_logits`, got ", root_tokens.sizes());
  check_same_device(root_tokens, draft_logits, op, "root_tokens", "draft_logits");
  TORCH_CHECK(width >= 1 && width <= kBuildTreeMaxWidth, op, ": `width` must be in [1, ",
              kBuildTreeMaxWidth, "], got ", width);
  TORCH_CHECK(width <= V, op, ": `width` = ", width, " exceeds the vocabulary size V = ", V);
  TORCH_CHECK(budget >= 1 && budget <= kBuildTreeMaxBudget, op, ": `budget` must be in [1, ",
              kBuildTreeMaxBudget, "] (nodes, root included), got ", budget);
  build_tree_policy_id(policy);
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0.0, op,
              ": `temperature` must be finite and > 0, got ", temperature);
}

using BuildTreeOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                    at::Tensor, at::Tensor, at::Tensor>;

// node_tokens, parents, depths, scores, tree_mask, num_nodes, first_child, next_sibling.
inline BuildTreeOutputs alloc_build_tree_outputs(const at::Tensor& draft_logits, int64_t budget) {
  const int64_t B = draft_logits.size(0), N = budget, NW = (budget + 31) / 32;
  auto o = draft_logits.options();
  return {at::empty({B, N}, o.dtype(at::kLong)),       at::empty({B, N}, o.dtype(at::kInt)),
          at::empty({B, N}, o.dtype(at::kInt)),        at::empty({B, N}, o.dtype(at::kFloat)),
          at::empty({B, N, NW}, o.dtype(at::kInt)),    at::empty({B}, o.dtype(at::kInt)),
          at::empty({B, N}, o.dtype(at::kInt)),        at::empty({B, N}, o.dtype(at::kInt))};
}

// 1 / temperature rounded to float, as every implementation applies it (x * inv_t).
inline float build_tree_inv_temperature(double temperature) {
  return static_cast<float>(1.0 / temperature);
}

}  // namespace jetspec
