// Argument checks shared by the CPU and CUDA launchers. Every message names the op and the
// argument, so a user can tell which tensor was wrong without reading the source.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <string>

namespace jetspec {

inline void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == dim, op, ": `", name, "` must have ", dim, " dimensions, got shape ",
              t.sizes());
}

inline void check_dtype(const at::Tensor& t, at::ScalarType dtype, const char* op,
                        const char* name) {
  TORCH_CHECK(t.scalar_type() == dtype, op, ": `", name, "` must be ", dtype, ", got ",
              t.scalar_type());
}

inline void check_dtype_in(const at::Tensor& t, std::initializer_list<at::ScalarType> dtypes,
                           const char* op, const char* name) {
  for (auto d : dtypes)
    if (t.scalar_type() == d) return;
  std::string allowed;
  for (auto d : dtypes) allowed += std::string(allowed.empty() ? "" : ", ") + c10::toString(d);
  TORCH_CHECK(false, op, ": `", name, "` must be one of {", allowed, "}, got ", t.scalar_type());
}

inline void check_contiguous(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_contiguous(), op, ": `", name, "` must be contiguous (got strides ",
              t.strides(), " for shape ", t.sizes(), ")");
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op,
                              const char* name, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": `", name, "` is on ", t.device(), " but `",
              ref_name, "` is on ", ref.device());
}

inline void check_size(const at::Tensor& t, int64_t dim, int64_t expected, const char* op,
                       const char* name, const char* what) {
  TORCH_CHECK(t.size(dim) == expected, op, ": `", name, "` dimension ", dim, " must be ", what,
              " = ", expected, ", got shape ", t.sizes());
}

}  // namespace jetspec
