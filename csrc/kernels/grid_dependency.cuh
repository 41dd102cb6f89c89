// Programmatic dependent launch (PDL), device side (torch-free). A kernel launched with the
// programmatic-stream-serialization attribute (jetspec::launch_kernel(..., programmatic = true))
// may start while the kernel ahead of it in the stream is still running; it must call
// wait_for_previous_grid() before its first global-memory access (read or write), which returns
// once that kernel has completed and its writes are visible. signal_dependents_may_launch() lets
// the next programmatically launched kernel be scheduled onto free SM resources early (it still
// waits in its own wait_for_previous_grid()). Both are no-ops without PDL and before sm_90.
#pragma once

namespace jetspec {

__device__ __forceinline__ void wait_for_previous_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void signal_dependents_may_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

}  // namespace jetspec
