// Argument checks of verify_linear shared by the CPU and CUDA implementations (both devices accept
// and refuse the same inputs).
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

#include "checks.h"

namespace jetspec {

constexpr int64_t kVerifyAlign = 8;  // in_/out_features multiple of 8 bf16 = 16 bytes (TMA rows)

inline void check_verify_linear_args(const at::Tensor& x, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& residual) {
  constexpr const char* op = "verify_linear";
  check_dim(x, 2, op, "x");
  check_dim(weight, 2, op, "weight");
  check_dtype_in(x, {at::kBFloat16}, op, "x");
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": `weight` must have the dtype of `x` (",
              x.scalar_type(), "), got ", weight.scalar_type());
  check_contiguous(x, op, "x");
  check_contiguous(weight, op, "weight");  // never copy a weight matrix silently
  check_same_device(weight, x, op, "weight", "x");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= (int64_t{1} << 20), op, ": `x` must have 1..2^20 rows, got ",
              x.size(0));
  TORCH_CHECK(x.size(1) == weight.size(1), op, ": `x` has ", x.size(1), " columns but `weight` has ",
              weight.size(1), " (in_features)");
  TORCH_CHECK(x.size(1) > 0 && x.size(1) % kVerifyAlign == 0 && x.size(1) <= (int64_t{1} << 20), op,
              ": in_features must be a positive multiple of ", kVerifyAlign, " (at most 2^20), got ", x.size(1));
  TORCH_CHECK(weight.size(0) > 0 && weight.size(0) % kVerifyAlign == 0 && weight.size(0) <= (int64_t{1} << 30),
              op, ": out_features must be a positive multiple of ", kVerifyAlign, " (at most 2^30), got ",
              weight.size(0));
  if (residual.has_value()) {
    const at::Tensor& r = *residual;
    check_dim(r, 2, op, "residual");
    TORCH_CHECK(r.size(0) == x.size(0) && r.size(1) == weight.size(0), op, ": `residual` must be (",
                x.size(0), ", ", weight.size(0), ") like the output, got ", r.sizes());
    TORCH_CHECK(r.scalar_type() == x.scalar_type(), op, ": `residual` must have the dtype of `x` (",
                x.scalar_type(), "), got ", r.scalar_type());
    check_contiguous(r, op, "residual");
    check_same_device(r, x, op, "residual", "x");
  }
}

}  // namespace jetspec
