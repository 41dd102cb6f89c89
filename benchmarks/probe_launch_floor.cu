// What a kernel boundary costs inside a CUDA graph on this GPU (a development probe, not part of
// the package). Why: at prefix 1024 tree_attention is a split kernel plus a merge kernel, and the
// issue-4 allowances there (5.4-13.6 us) are close to what the two cost with no key tiles at all
// (fourteenth session: the split kernel's CTAs live ~5.1 us of a 10.0 us call at P1024 N64, every
// first global load after the grid-dependency wait takes ~1 us). This probe separates the parts:
//   chain    K kernels that do nothing but the grid-dependency wait: us per kernel, plain and
//            with programmatic dependent launch (PDL), for three grid shapes;
//   handoff  pairs of kernels where the second reads what the first wrote (4 MB: the split
//            kernel's partials at P1024 N64), like split -> merge;
//   latency  one dependent global load per CTA right after the wait (clock64 around it), first
//            and second touch of the same word, plain and through L2 only (ld.global.cg).
//   nvcc -std=c++17 -O3 -arch=sm_90a -Icsrc benchmarks/probe_launch_floor.cu -o /tmp/plf && /tmp/plf
// The device side uses the package's torch-free kernels/grid_dependency.cuh; the host launch is
// written out here because jetspec::launch_kernel (csrc/cuda_utils.cuh) needs ATen.
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>

#include "kernels/grid_dependency.cuh"
#include "kernels/tree_attention_ws.cuh"  // ws_smem_bytes: the real launch's shared memory

using jetspec::signal_dependents_may_launch;
using jetspec::wait_for_previous_grid;

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
  printf("CUDA %s at line %d\n", cudaGetErrorString(e_), __LINE__); std::exit(1); } } while (0)

__global__ void empty_kernel() {
  wait_for_previous_grid();
  signal_dependents_may_launch();
}

// Reads n 16-byte words of src and writes them to dst (grid-stride): the split -> merge handoff.
__global__ void copy_kernel(const int4* __restrict__ src, int4* __restrict__ dst, long n) {
  wait_for_previous_grid();
  signal_dependents_may_launch();
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
    dst[i] = src[i];
}

// One thread per CTA: clock64 around a first load of *p, a second load of it, and a load of it
// through L2 only. The stores of the loaded values make each clock read wait for its load.
__global__ void latency_kernel(const int* p, volatile long long* out, volatile int* sink) {
  wait_for_previous_grid();
  signal_dependents_may_launch();
  if (threadIdx.x != 0) return;
  const long long t0 = clock64();
  const int a = p[blockIdx.x & 7];
  *sink = a;
  const long long t1 = clock64();
  const int b = p[(blockIdx.x & 7) + 8];  // another word of the same 128-byte line
  *sink = b;
  const long long t2 = clock64();
  int c;
  asm volatile("ld.global.cg.s32 %0, [%1];" : "=r"(c) : "l"(p + (blockIdx.x & 7)) : "memory");
  *sink = c;
  const long long t3 = clock64();
  out[blockIdx.x * 3 + 0] = t1 - t0;
  out[blockIdx.x * 3 + 1] = t2 - t1;
  out[blockIdx.x * 3 + 2] = t3 - t2;
}

// An empty kernel that also meets its cluster at the end (arrive.release / wait.acquire, as
// split_kernel_ws's cluster merge does before its pushes): what the cluster barrier adds.
__global__ void empty_cluster_sync_kernel() {
  wait_for_previous_grid();
  signal_dependents_may_launch();
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}

template <typename... Args>
static void launch_ex(bool pdl, dim3 grid, dim3 block, int smem, int cluster_y, cudaStream_t s, void (*k)(Args...),
                      Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[2];
  int n = 0;
  if (pdl) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  if (cluster_y > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = 1;
    attr[n].val.clusterDim.y = cluster_y;
    attr[n].val.clusterDim.z = 1;
    ++n;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  CK(cudaLaunchKernelEx(&cfg, k, args...));
}
template <typename... Args>
static void launch(bool pdl, dim3 grid, dim3 block, cudaStream_t s, void (*k)(Args...), Args... args) {
  launch_ex(pdl, grid, block, 0, 1, s, k, args...);
}

// Captures body() (which enqueues `kernels` launches) into a graph, replays it; median us per kernel.
template <typename F>
static double time_graph(cudaStream_t s, int kernels, F body) {
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  body();
  CK(cudaStreamEndCapture(s, &g));
  CK(cudaGraphInstantiate(&ge, g, 0));
  for (int i = 0; i < 20; ++i) CK(cudaGraphLaunch(ge, s));  // warm-up
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int r = 0; r < 30; ++r) {
    CK(cudaEventRecord(e0, s));
    CK(cudaGraphLaunch(ge, s));
    CK(cudaEventRecord(e1, s));
    CK(cudaEventSynchronize(e1));
    float t;
    CK(cudaEventElapsedTime(&t, e0, e1));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  CK(cudaGraphExecDestroy(ge));
  CK(cudaGraphDestroy(g));
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  return ms[ms.size() / 2] * 1e3 / kernels;
}

int main() {
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  int dev = 0, sms = 0, clock_khz = 0;
  CK(cudaGetDevice(&dev));
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  CK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, dev));
  printf("probe_launch_floor: %d SMs\n", sms);

  const int K = 40;  // kernels per graph
  struct Shape { const char* name; dim3 grid, block; };
  const Shape shapes[] = {{"1 CTA x 128", dim3(1), dim3(128)},
                          {"128 CTAs x 384 (split_kernel_ws)", dim3(128), dim3(384)},
                          {"512 CTAs x 128 (merge_kernel, P1024 N64)", dim3(512), dim3(128)}};
  printf("-- chain: %d empty kernels per graph, us per kernel\n", K);
  for (const Shape& sh : shapes)
    for (int pdl = 0; pdl < 2; ++pdl) {
      const double us = time_graph(s, K, [&] { for (int i = 0; i < K; ++i) launch(pdl, sh.grid, sh.block, s, empty_kernel); });
      printf("   %-44s %-5s %7.2f\n", sh.name, pdl ? "PDL" : "plain", us);
    }

  // The launch shapes of split_kernel_ws at P1024 (grid row tiles x splits x KV heads, 384
  // threads, its ~184 KB of dynamic shared memory: one CTA per SM), with and without the cluster
  // of its splits, and with a cluster barrier at the end: what the boundary of the real launch
  // costs before any work (fifty-fifth session).
  const int ws_smem = jetspec::tree_attn::ws_smem_bytes<128>();  // 188480 B at D 128
  CK(cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, ws_smem));
  CK(cudaFuncSetAttribute(empty_cluster_sync_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, ws_smem));
  struct WsShape { const char* name; dim3 grid; int cluster_y; bool sync; int smem; };
  const WsShape ws_shapes[] = {
      {"N64: 2 x 6 x 8, 184 KB, no cluster", dim3(2, 6, 8), 1, false, ws_smem},
      {"N64: 2 x 6 x 8, 184 KB, cluster 6", dim3(2, 6, 8), 6, false, ws_smem},
      {"N64: 2 x 6 x 8, 184 KB, cluster 6 + barrier", dim3(2, 6, 8), 6, true, ws_smem},
      {"N128: 4 x 3 x 8, 184 KB, no cluster", dim3(4, 3, 8), 1, false, ws_smem},
      {"N128: 4 x 3 x 8, 184 KB, cluster 3", dim3(4, 3, 8), 3, false, ws_smem},
      {"N128: 4 x 3 x 8, 184 KB, cluster 3 + barrier", dim3(4, 3, 8), 3, true, ws_smem},
      {"P4096 N64: 2 x 8 x 8, 184 KB, no cluster", dim3(2, 8, 8), 1, false, ws_smem},
      {"N64: 2 x 6 x 8, no smem, no cluster", dim3(2, 6, 8), 1, false, 0}};
  printf("-- chain: %d empty kernels per graph launched like split_kernel_ws at P1024, us per kernel\n", K);
  for (const WsShape& sh : ws_shapes)
    for (int pdl = 0; pdl < 2; ++pdl) {
      const double us = time_graph(s, K, [&] {
        for (int i = 0; i < K; ++i)
          launch_ex(pdl, sh.grid, dim3(384), sh.smem, sh.cluster_y, s, sh.sync ? empty_cluster_sync_kernel : empty_kernel);
      });
      printf("   %-44s %-5s %7.2f\n", sh.name, pdl ? "PDL" : "plain", us);
    }

  const long words = (4l << 20) / 16;  // 4 MB
  int4 *a = nullptr, *b = nullptr;
  CK(cudaMalloc(&a, words * 16));
  CK(cudaMalloc(&b, words * 16));
  CK(cudaMemset(a, 0, words * 16));
  printf("-- handoff: 4 MB written by one kernel, read (and written) by the next, us per kernel\n");
  for (const Shape& sh : shapes) {
    if (sh.grid.x == 1) continue;
    for (int pdl = 0; pdl < 2; ++pdl) {
      const double us = time_graph(s, K, [&] {
        for (int i = 0; i < K; ++i) launch(pdl, sh.grid, sh.block, s, copy_kernel, (const int4*)(i & 1 ? b : a), (i & 1 ? a : b), words);
      });
      printf("   %-44s %-5s %7.2f   (floor 8 MB / 4.3 TB/s = %.2f)\n", sh.name, pdl ? "PDL" : "plain", us, 8.0e6 / 4.3e12 * 1e6);
    }
  }

  int* word = nullptr;
  int* sink = nullptr;
  long long* out = nullptr;
  const int ctas = 128;
  CK(cudaMalloc(&word, 64 * sizeof(int)));
  CK(cudaMemset(word, 0, 64 * sizeof(int)));
  CK(cudaMalloc(&sink, sizeof(int)));
  CK(cudaMalloc(&out, ctas * 3 * sizeof(long long)));
  printf("-- latency: one thread per CTA (128 CTAs), after a 4 MB copy kernel, cycles (p10 / p50 / p90)\n");
  for (int pdl = 0; pdl < 2; ++pdl) {
    CK(cudaMemset(out, 0, ctas * 3 * sizeof(long long)));
    for (int r = 0; r < 5; ++r) {  // the last repetition's values are read
      launch(false, dim3(512), dim3(128), s, copy_kernel, (const int4*)a, b, words);
      launch(pdl, dim3(ctas), dim3(128), s, latency_kernel, (const int*)word, (volatile long long*)out, (volatile int*)sink);
    }
    CK(cudaStreamSynchronize(s));
    std::vector<long long> h(ctas * 3);
    CK(cudaMemcpy(h.data(), out, h.size() * sizeof(long long), cudaMemcpyDeviceToHost));
    const char* what[3] = {"first load", "second load (same line)", "ld.global.cg (L2)"};
    for (int j = 0; j < 3; ++j) {
      std::vector<long long> v;
      for (int c = 0; c < ctas; ++c) v.push_back(h[c * 3 + j]);
      std::sort(v.begin(), v.end());
      printf("   %-5s %-26s %6lld / %6lld / %6lld\n", pdl ? "PDL" : "plain", what[j], v[ctas / 10], v[ctas / 2], v[ctas * 9 / 10]);
    }
  }
  printf("   (cycles at the SM clock; nominal %.2f GHz: divide by it for ns)\n", clock_khz / 1e6);
  CK(cudaFree(a));
  CK(cudaFree(b));
  CK(cudaFree(word));
  CK(cudaFree(sink));
  CK(cudaFree(out));
  return 0;
}
