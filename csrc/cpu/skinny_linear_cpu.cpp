// CPU implementation of jetspec::skinny_linear: the reference maths (fp32 products and sums,
// one rounding to the input dtype). Semantics: jetspec_ext/reference/linear.py.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "skinny_linear_common.h"

namespace jetspec {
namespace {

at::Tensor skinny_linear_cpu(const at::Tensor& x, const at::Tensor& weight) {
  check_skinny_linear_args(x, weight);
  return at::matmul(x.to(at::kFloat), weight.to(at::kFloat).t()).to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(jetspec, CPU, m) { m.impl("skinny_linear", &skinny_linear_cpu); }

}  // namespace jetspec
