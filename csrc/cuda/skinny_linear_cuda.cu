// CUDA launcher of jetspec::skinny_linear (kernel: csrc/kernels/skinny_linear.cuh).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "kernels/skinny_linear.cuh"
#include "skinny_linear_common.h"

namespace jetspec {
namespace {

at::Tensor skinny_linear_cuda(const at::Tensor& x, const at::Tensor& weight) {
  check_skinny_linear_args(x, weight);
  static_assert(skinny::kMaxRows == kSkinnyMaxRows && skinny::kKBlock == kSkinnyKMultiple,
                "checks and kernel disagree");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 &&
                  reinterpret_cast<uintptr_t>(weight.data_ptr()) % 16 == 0,
              "skinny_linear: `x` and `weight` must be 16-byte aligned");
  c10::cuda::CUDAGuard guard(x.device());
  const int M = static_cast<int>(x.size(0)), K = static_cast<int>(x.size(1));
  const int N = static_cast<int>(weight.size(0));
  at::Tensor out = at::empty({M, N}, x.options());
  const dim3 grid(static_cast<unsigned>(ceil_div(N, skinny::kRowsPerCta)));
  cudaStream_t stream = current_stream();
  if (x.scalar_type() == at::kBFloat16) {
    using T = __nv_bfloat16;
    skinny::skinny_linear_kernel<T><<<grid, skinny::kThreads, 0, stream>>>(
        reinterpret_cast<const T*>(x.data_ptr()), reinterpret_cast<const T*>(weight.data_ptr()),
        reinterpret_cast<T*>(out.data_ptr()), M, N, K);
  } else {
    using T = __half;
    skinny::skinny_linear_kernel<T><<<grid, skinny::kThreads, 0, stream>>>(
        reinterpret_cast<const T*>(x.data_ptr()), reinterpret_cast<const T*>(weight.data_ptr()),
        reinterpret_cast<T*>(out.data_ptr()), M, N, K);
  }
  JETSPEC_CHECK_LAUNCH();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(jetspec, CUDA, m) { m.impl("skinny_linear", &skinny_linear_cuda); }

}  // namespace jetspec
