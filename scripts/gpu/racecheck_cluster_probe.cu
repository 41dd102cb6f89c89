// A stand-alone kernel with tree_attention's cluster-merge protocol and nothing else, to tell
// whether compute-sanitizer racecheck's stall on the wgmma_ws_pp N1 P1000 case (clusters of 5-8
// CTAs never finish; 2-4 do: benchmarks/RESULTS.md, fortieth session) belongs to the kernel or to
// the tool. Built and run by scripts/gpu/racecheck_cluster_probe.sh (sm_90a, no torch).
//
// Each CTA of a cluster of `cs` (1 CTA per SM: `smem` bytes of dynamic shared memory, 384 threads,
// as split_kernel_ws):
//   mode 0 ("barrier"): mbarrier init, cluster barrier, cluster barrier, exit.
//   mode 1 ("push"): as split_kernel_ws's epilogue: init its receive mbarrier, cluster barrier,
//     stage `rows` x 256 bytes in its own shared memory, fence for the async proxy, then one thread
//     expects (cs - 1) x share bytes on its own barrier and bulk-copies (cp.async.bulk
//     shared::cta -> shared::cluster, complete_tx on the receiver's mbarrier) every other CTA's
//     share into that CTA's receive buffer; all threads wait on their barrier, sum what they
//     received into a global word, cluster barrier, exit. The host checks every sum.
//   mode 2 / 3: mode 1, but the stage buffer is first filled from global memory by the async
//     proxy, as split_kernel_ws's Q tile is (its rows are the epilogue's staging buffer): mode 2 by
//     one 1-D bulk copy (cp.async.bulk), mode 3 by two 2-D TMA boxes of 64 x 128 bf16 with the
//     128-byte swizzle (cp.async.bulk.tensor, a CUtensorMap), each on its own mbarrier; then read,
//     overwritten by generic stores, fenced and pushed as in mode 1.
#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled (from the runtime: no -lcuda)
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <algorithm>
#include <vector>

#define CHECK(x)                                                                          \
  do {                                                                                    \
    cudaError_t e_ = (x);                                                                 \
    if (e_ != cudaSuccess) {                                                              \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(2);                                                                       \
    }                                                                                     \
  } while (0)

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ uint32_t map_rank(uint32_t addr, int rank) {
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(addr), "r"(rank));
  return r;
}
__device__ __forceinline__ void cluster_sync_all() {
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}
// The one arrival of `bar`'s phase, expecting `bytes` of asynchronous copies on it.
__device__ __forceinline__ void arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("{\n.reg .b64 s;\nmbarrier.arrive.expect_tx.shared::cta.b64 s, [%0], %1;\n}\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
// Spin until phase 0 of `bar` has completed (as split_kernel_ws's mbar_wait does).
__device__ __forceinline__ void wait_phase0(uint32_t bar) {
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(0u)
        : "memory");
  }
}
__device__ __forceinline__ int cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return (int)r;
}

// Shared memory: [recv barrier 8 B | pad to 128][stage: 128 rows x 256 B][recv: 128 rows x 256 B]
// [recv barrier | load barrier | pad to 1024][stage][recv] (1024: the 128-byte swizzle's alignment)
__global__ void __launch_bounds__(384, 1) probe_kernel(int mode, int cs, unsigned long long* sums,
                                                       const uint32_t* gsrc, const __grid_constant__ CUtensorMap tmap) {
  extern __shared__ __align__(1024) unsigned char smem[];
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem);
  const uint32_t load_bar = smem_u32(smem + 8);
  uint32_t* stage = reinterpret_cast<uint32_t*>(smem + 1024);
  uint32_t* recv = stage + 128 * 64;
  const int rank = cluster_rank();
  const int tid = threadIdx.x;
  const uint32_t bar_a = smem_u32(bar);
  if (tid == 0) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(bar_a) : "memory");
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(load_bar) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  cluster_sync_all();  // every CTA's barrier initialised before any copy completes on it
  if (mode >= 1) {
    const int R = (128 + cs - 1) / cs;  // rows per share (the last share may be shorter)
    if (mode >= 2) {
      if (tid == 0) {
        arrive_expect_tx(load_bar, 128 * 256);
        if (mode == 2) {
          asm volatile(
              "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                  smem_u32(stage)),
              "l"(gsrc), "r"(128 * 256), "r"(load_bar)
              : "memory");
        } else {
          for (int c = 0; c < 2; ++c)
            asm volatile(
                "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
                "[%4];\n" ::"r"(smem_u32(stage + c * 128 * 32)),
                "l"(&tmap), "r"(c * 64), "r"(0), "r"(load_bar)
                : "memory");
        }
      }
      wait_phase0(load_bar);
      uint32_t x = 0;  // read what landed (the kernel's wgmma reads Q), then overwrite it below
      for (int i = tid; i < 128 * 64; i += 384) x ^= stage[i];
      if (x == 0xdeadbeefu) sums[0] = 1;  // keeps the reads
      __syncthreads();
    }
    for (int i = tid; i < 128 * 64; i += 384) stage[i] = (uint32_t)(rank * 100000 + i);
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    const int my_rows = max(0, min(R, 128 - rank * R));
    if (tid == 0) {
      const uint32_t expect = (uint32_t)((cs - 1) * my_rows * 256);
      arrive_expect_tx(bar_a, expect);
      for (int to = 0; to < cs; ++to) {
        if (to == rank) continue;
        const int rows = max(0, min(R, 128 - to * R));
        if (rows == 0) continue;
        const int slot = rank < to ? rank : rank - 1;
        const uint32_t dst = map_rank(smem_u32(recv + slot * R * 64), to);
        const uint32_t src = smem_u32(stage + to * R * 64);
        const uint32_t rbar = map_rank(bar_a, to);
        asm volatile(
            "cp.async.bulk.shared::cluster.shared::cta.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
            "r"(src), "r"(rows * 256), "r"(rbar)
            : "memory");
      }
      asm volatile("cp.async.bulk.commit_group;\ncp.async.bulk.wait_group.read 0;\n" ::: "memory");
    }
    // Wait for the shares pushed to this CTA (phase 0 of its barrier).
    wait_phase0(bar_a);
    unsigned long long s = 0;
    for (int i = tid; i < (cs - 1) * my_rows * 64; i += 384) {
      const int slot = i / (my_rows * 64), within = i - slot * my_rows * 64;
      s += recv[slot * R * 64 + within];
    }
    atomicAdd(&sums[blockIdx.x], s);
  }
  cluster_sync_all();  // no CTA leaves while another may still write into its shared memory
}

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s mode(0 barrier|1 push|2 bulk load + push|3 TMA load + push) cluster_size clusters [smem_bytes]\n", argv[0]);
    return 2;
  }
  const int mode = std::atoi(argv[1]), cs = std::atoi(argv[2]), clusters = std::atoi(argv[3]);
  const int smem = argc > 4 ? std::atoi(argv[4]) : 200 * 1024;
  if (smem < 1024 + 2 * 128 * 256) { std::fprintf(stderr, "smem too small\n"); return 2; }
  // The global source of modes 2 / 3: 128 rows x 128 bf16 (256 bytes per row).
  uint32_t* gsrc;
  CHECK(cudaMalloc(&gsrc, 128 * 256));
  CHECK(cudaMemset(gsrc, 1, 128 * 256));
  CUtensorMap tmap;
  {
    const cuuint64_t dims[2] = {128, 128};
    const cuuint64_t strides[1] = {256};
    const cuuint32_t box[2] = {64, 128};
    const cuuint32_t estr[2] = {1, 1};
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
    if (found != cudaDriverEntryPointSuccess || fn == nullptr) { std::fprintf(stderr, "no cuTensorMapEncodeTiled\n"); return 2; }
    const CUresult r = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn)(&tmap, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, gsrc, dims, strides, box, estr,
                                              CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                              CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) { std::fprintf(stderr, "cuTensorMapEncodeTiled failed: %d\n", (int)r); return 2; }
  }
  const int grid = cs * clusters;
  CHECK(cudaFuncSetAttribute(probe_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  if (cs > 8) CHECK(cudaFuncSetAttribute(probe_kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  unsigned long long* sums;
  CHECK(cudaMalloc(&sums, grid * sizeof(unsigned long long)));
  CHECK(cudaMemset(sums, 0, grid * sizeof(unsigned long long)));
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(grid);
  cfg.blockDim = dim3(384);
  cfg.dynamicSmemBytes = smem;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = cs;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  CHECK(cudaLaunchKernelEx(&cfg, probe_kernel, mode, cs, sums, (const uint32_t*)gsrc, tmap));
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  std::vector<unsigned long long> h(grid);
  CHECK(cudaMemcpy(h.data(), sums, grid * sizeof(unsigned long long), cudaMemcpyDeviceToHost));
  int bad = 0;
  if (mode >= 1) {
    const int R = (128 + cs - 1) / cs;
    for (int b = 0; b < grid; ++b) {
      const int rank = b % cs;  // clusters are consecutive blocks along x
      const int my_rows = std::max(0, std::min(R, 128 - rank * R));
      unsigned long long want = 0;
      for (int from = 0; from < cs; ++from) {
        if (from == rank) continue;
        for (int i = rank * R * 64; i < rank * R * 64 + my_rows * 64; ++i) want += (unsigned long long)(from * 100000 + i);
      }
      if (h[b] != want) ++bad;
    }
  }
  std::printf("mode %d cluster %d clusters %d smem %d: %s (%d of %d CTAs wrong)\n", mode, cs, clusters, smem,
              bad ? "WRONG" : "ok", bad, grid);
  CHECK(cudaFree(sums));
  CHECK(cudaFree(gsrc));
  return bad ? 1 : 0;
}
