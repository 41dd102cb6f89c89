// Argument checks of skinny_linear shared by the CPU and CUDA implementations (so both devices
// accept and refuse the same inputs).
#pragma once
#include <ATen/core/Tensor.h>

#include "checks.h"

namespace jetspec {

constexpr int64_t kSkinnyMaxRows = 16;  // skinny::kMaxRows
constexpr int64_t kSkinnyKMultiple = 32;  // skinny::kKBlock

inline void check_skinny_linear_args(const at::Tensor& x, const at::Tensor& weight) {
  constexpr const char* op = "skinny_linear";
  check_dim(x, 2, op, "x");
  check_dim(weight, 2, op, "weight");
  check_dtype_in(x, {at::kBFloat16, at::kHalf}, op, "x");
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": `weight` must have the dtype of `x` (",
              x.scalar_type(), "), got ", weight.scalar_type());
  check_contiguous(x, op, "x");
  check_contiguous(weight, op, "weight");  // never copy a weight matrix silently
  check_same_device(weight, x, op, "weight", "x");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= kSkinnyMaxRows, op, ": `x` must have 1..",
              kSkinnyMaxRows, " rows (use F.linear for more), got ", x.size(0));
  TORCH_CHECK(x.size(1) == weight.size(1), op, ": `x` has ", x.size(1),
              " columns but `weight` has ", weight.size(1), " (in_features)");
  TORCH_CHECK(x.size(1) > 0 && x.size(1) % kSkinnyKMultiple == 0, op,
              ": in_features must be a positive multiple of ", kSkinnyKMultiple, ", got ", x.size(1));
  TORCH_CHECK(weight.size(0) >= 1 && weight.size(0) <= (int64_t{1} << 30), op,
              ": `weight` must have 1..2^30 rows (out_features), got ", weight.size(0));
}

}  // namespace jetspec
