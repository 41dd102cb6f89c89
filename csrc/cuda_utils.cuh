// CUDA launcher helpers: error checks after every launch, current-stream lookup, SM count,
// per-device arrival counters for kernels whose last CTA finishes a reduction.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

// Check the launch configuration / asynchronous errors of the kernel just launched.
#define JETSPEC_CHECK_LAUNCH() C10_CUDA_KERNEL_LAUNCH_CHECK()
#define JETSPEC_CUDA_CHECK(expr) C10_CUDA_CHECK(expr)

namespace jetspec {
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
inline int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

// Number of SMs of `device` (cached; launch-shape heuristics only).
inline int sm_count(int device) {
  static int cache[64] = {0};
  if (device < 0 || device >= 64) device = 0;
  if (cache[device] == 0) {
    int n = 0;
    JETSPEC_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    cache[device] = n > 0 ? n : 1;
  }
  return cache[device];
}

// Compute capability major of `device` (cached): kernels that exist for one GPU generation only.
inline int cc_major(int device) {
  static int cache[64] = {0};
  if (device < 0 || device >= 64) {
    int m = 0;
    JETSPEC_CUDA_CHECK(cudaDeviceGetAttribute(&m, cudaDevAttrComputeCapabilityMajor, device));
    return m;
  }
  if (cache[device] == 0)
    JETSPEC_CUDA_CHECK(cudaDeviceGetAttribute(&cache[device], cudaDevAttrComputeCapabilityMajor, device));
  return cache[device];
}

// Programmatic dependent launch (csrc/kernels/grid_dependency.cuh) is used on sm_90 unless
// JETSPEC_PDL=0 (A/B timing). Read per call, like the other tuning variables. sm_90 only, not
// "9 or newer": the build embeds sm_90a code and compute_80 PTX, and a newer GPU runs the PTX,
// which has no griddepcontrol.wait (sm_90+ PTX only), so a programmatic launch there could
// read its inputs before the previous kernel had written them.
inline bool programmatic_launch_enabled(int device) {
  const char* v = std::getenv("JETSPEC_PDL");
  return cc_major(device) == 9 && (v == nullptr || std::string(v) != "0");
}

// Launch configuration of kernel<<<grid, block, smem, stream>>> in thread-block clusters of
// `cluster` CTAs (each grid dim a multiple of the cluster's; at most 8 CTAs, the portable size;
// 1 x 1 x 1: no cluster attribute, any GPU), with the programmatic-stream-serialization
// attribute when `programmatic`: the kernel must then wait_for_previous_grid() before touching
// global memory. For cudaLaunchKernelEx and the occupancy queries alike. Not copyable: cfg.attrs
// points into the object.
struct LaunchConfig {
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute attr[2];
  LaunchConfig(dim3 grid, dim3 block, size_t smem, dim3 cluster, cudaStream_t stream, bool programmatic) {
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    unsigned n = 0;
    if (cluster.x * cluster.y * cluster.z > 1) {
      attr[n].id = cudaLaunchAttributeClusterDimension;
      attr[n].val.clusterDim.x = cluster.x;
      attr[n].val.clusterDim.y = cluster.y;
      attr[n].val.clusterDim.z = cluster.z;
      ++n;
    }
    if (programmatic) {
      attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
      attr[n].val.programmaticStreamSerializationAllowed = 1;
      ++n;
    }
    cfg.attrs = n > 0 ? attr : nullptr;
    cfg.numAttrs = n;
  }
  LaunchConfig(const LaunchConfig&) = delete;
  LaunchConfig& operator=(const LaunchConfig&) = delete;
};

// kernel<<<grid, block, smem, stream>>>(args...) with the LaunchConfig above. Checks the launch.
template <typename... KArgs, typename... Args>
void launch_kernel_clustered(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, dim3 cluster,
                             cudaStream_t stream, bool programmatic, Args&&... args) {
  LaunchConfig launch(grid, block, smem, cluster, stream, programmatic);
  JETSPEC_CUDA_CHECK(cudaLaunchKernelEx(&launch.cfg, kernel, std::forward<Args>(args)...));
  JETSPEC_CHECK_LAUNCH();
}

// The same without clusters.
template <typename... KArgs, typename... Args>
void launch_kernel(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   bool programmatic, Args&&... args) {
  launch_kernel_clustered(kernel, grid, block, smem, dim3(1, 1, 1), stream, programmatic, std::forward<Args>(args)...);
}

// Per-device int32 arrival counters, zero at rest: a kernel's CTAs count themselves done and the
// last one of a group finishes the work and resets its counter (graph-replay safe). Each user
// keeps its own `static ArrivalCounters`; launches sharing one must run in one stream order. The
// buffer grows only outside graph capture: get() returns nullptr while capturing with too small
// a buffer, and the caller falls back to a path without counters. A buffer replaced by a larger
// one is kept alive: graphs captured with its address may still replay (freed, its memory could
// be handed to another tensor that those replays would then overwrite).
struct ArrivalCounters {
  at::Tensor bufs[64];
  std::vector<at::Tensor> retired;
  int64_t min_size;
  explicit ArrivalCounters(int64_t min_size_) : min_size(min_size_) {}
  int* get(int device, int64_t need, cudaStream_t stream) {
    if (device < 0 || device >= 64) return nullptr;
    at::Tensor& buf = bufs[device];
    if (buf.defined() && buf.numel() >= need) return buf.data_ptr<int32_t>();
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    JETSPEC_CUDA_CHECK(cudaStreamIsCapturing(stream, &st));
    if (st != cudaStreamCaptureStatusNone) return nullptr;
    if (buf.defined()) retired.push_back(buf);
    buf = at::zeros({need > min_size ? need : min_size},
                    at::TensorOptions().dtype(at::kInt).device(at::kCUDA, device));
    return buf.data_ptr<int32_t>();
  }
};
}  // namespace jetspec
