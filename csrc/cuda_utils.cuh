// CUDA launcher helpers: error checks after every launch, current-stream lookup.
#pragma once
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

// Check the launch configuration / asynchronous errors of the kernel just launched.
#define JETSPEC_CHECK_LAUNCH() C10_CUDA_KERNEL_LAUNCH_CHECK()
#define JETSPEC_CUDA_CHECK(expr) C10_CUDA_CHECK(expr)

namespace jetspec {
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
inline int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }
}  // namespace jetspec
