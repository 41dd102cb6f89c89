// CPU implementation of jetspec::verify_linear: the reference maths (fp32 products and sums, one
// rounding to bf16). Semantics: jetspec_ext/reference/linear.py.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "verify_linear_common.h"

namespace jetspec {
namespace {

at::Tensor verify_linear_cpu(const at::Tensor& x, const at::Tensor& weight,
                             const std::optional<at::Tensor>& residual) {
  check_verify_linear_args(x, weight, residual);
  at::Tensor acc = at::matmul(x.to(at::kFloat), weight.to(at::kFloat).t());
  if (residual.has_value()) acc.add_(residual->to(at::kFloat));
  return acc.to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(jetspec, CPU, m) { m.impl("verify_linear", &verify_linear_cpu); }

}  // namespace jetspec
