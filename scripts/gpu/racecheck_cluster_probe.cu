// A stand-alone kernel with tree_attention's cluster-merge protocol and nothing else, to tell
// whether compute-sanitizer racecheck's stall on split_kernel_ws (Q by TMA and clusters of 5-8
// CTAs never finish; benchmarks/RESULTS.md, fortieth session) belongs to the kernel or to the
// tool. Built and run by scripts/gpu/racecheck_cluster_probe.sh (sm_90a, no torch).
//
// The device side calls split_kernel_ws's own helpers (csrc/kernels/tree_attention_ws.cuh:
// mbarriers, cluster barriers, the share layout, cluster_push_shares, tma_load_box), so the probe
// runs the kernel's merge code, not a copy of it. Each CTA of a cluster of `cs` (2..8; 384 threads
// and `smem` bytes of dynamic shared memory, so 1 CTA per SM, as split_kernel_ws), in the kernel's
// order (relaxed cluster arrive after the barrier set-up, cluster wait just before the push, no
// cluster barrier at exit):
//   mode 0: mbarrier set-up, cluster arrive, cluster wait, exit.
//   mode 1: also stages 128 rows of 256 bytes and their lse (generic stores, fenced for the async
//     proxy), then one thread expects its share's bytes (cluster_recv_bytes) and pushes every other
//     CTA's share into it (cluster_push_shares: bulk copies completing on the receiver's
//     mbarrier); all threads wait for their own share, sum it into a global word (the host checks
//     every sum), and the pusher waits for its copies' reads before exit (bulk_wait_read).
//   mode 2 / 3: mode 1, with the staging buffer first written by the async proxy and read, as the
//     kernel's Q tile is: mode 2 by one 1-D bulk copy, mode 3 by tma_load_box (two 64 x 128 bf16
//     boxes, 128-byte swizzle, a 4-D CUtensorMap).
// The fortieth session's runs were of an earlier version (commit 715da2e: the same instructions
// written out in the probe, plus a full cluster barrier at exit).
#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled (from the runtime: no -lcuda)
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <algorithm>
#include <vector>

#include "kernels/tree_attention_ws.cuh"

namespace ta = jetspec::tree_attn;

#define CHECK(x)                                                                          \
  do {                                                                                    \
    cudaError_t e_ = (x);                                                                 \
    if (e_ != cudaSuccess) {                                                              \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(2);                                                                       \
    }                                                                                     \
  } while (0)

constexpr int kD = 128;                 // head dim: 256-byte rows, as the kernel's bf16 O rows
constexpr int kCH = kD / 8;             // 16-byte chunks per row
constexpr int kRows = ta::kWsRows;      // 128 rows staged per CTA
constexpr int kWords = kRows * kD / 2;  // 32-bit words of the staged rows
// Shared memory, as split_kernel_ws's merge: [2 mbarriers | pad to 1024][staged rows (the Q tile)]
// [own lse][received lse][received rows] (1024: the 128-byte swizzle's alignment for mode 3).
constexpr int kSmemNeeded = 1024 + kRows * kD * 2 + kRows * 4 + ta::kClusterRecvRows * (4 + kD * 2);

// Word i of rank r's staged rows, and its lse of row k (what the host expects to be pushed).
__host__ __device__ inline uint32_t staged_word(int rank, int i) { return (uint32_t)(rank * 100000 + i); }
__host__ __device__ inline float staged_lse(int rank, int k) { return (float)(rank * 1000 + k); }

__global__ void __launch_bounds__(ta::kWsThreads, 1) probe_kernel(int mode, int cs, unsigned long long* sums,
                                                                  const void* gsrc,
                                                                  const __grid_constant__ CUtensorMap tmap) {
  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t recv_bar = ta::smem_u32(smem), load_bar = ta::smem_u32(smem + 8);
  uint4* stage = reinterpret_cast<uint4*>(smem + 1024);
  float* s_lse = reinterpret_cast<float*>(stage + kRows * kCH);
  float* recv_lse = s_lse + kRows;
  uint4* recv_o = reinterpret_cast<uint4*>(recv_lse + ta::kClusterRecvRows);
  uint32_t* stage_w = reinterpret_cast<uint32_t*>(stage);
  int rank;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(rank));
  const int tid = threadIdx.x;
  if (tid == 0) {
    ta::mbar_init(recv_bar, 1);
    ta::mbar_init(load_bar, 1);
    ta::mbar_init_fence();
  }
  __syncthreads();
  ta::cluster_arrive_relaxed();  // as the kernel: this CTA's receive barrier is initialised
  if (mode >= 2) {  // the staging buffer first written by the async proxy, as the kernel's Q tile
    if (tid == 0) {
      ta::mbar_arrive_expect_tx(load_bar, kRows * kD * 2);
      if (mode == 2) {
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                         ta::smem_u32(stage)),
                     "l"(gsrc), "r"(kRows * kD * 2), "r"(load_bar)
                     : "memory");
      } else {
        for (int c = 0; c < kD / 64; ++c)
          ta::tma_load_box(ta::smem_u32(stage + c * kRows * 8), &tmap, c * 64, 0, 0, 0, load_bar);
      }
    }
    ta::mbar_wait(load_bar, 0);
    uint32_t x = 0;  // read what landed (the kernel's wgmma reads Q), then overwrite it below
    for (int i = tid; i < kWords; i += ta::kWsThreads) x ^= stage_w[i];
    if (x == 0xdeadbeefu) sums[0] = 1;  // keeps the reads
    __syncthreads();
  }
  if (mode >= 1) {  // stage this CTA's rows and lse (generic stores), as cluster_stage_rows does
    for (int i = tid; i < kWords; i += ta::kWsThreads) stage_w[i] = staged_word(rank, i);
    for (int k = tid; k < kRows; k += ta::kWsThreads) s_lse[k] = staged_lse(rank, k);
    ta::fence_proxy_async_smem();
    __syncthreads();
  }
  ta::cluster_wait();  // every CTA of the cluster initialised its receive barrier
  if (mode >= 1) {  // the kernel's push and wait, then a sum of what was received
    if (tid == 0) {
      ta::mbar_arrive_expect_tx(recv_bar, ta::cluster_recv_bytes<kD>(cs, rank));
      ta::cluster_push_shares<kD>(cs, rank, stage, s_lse, recv_o, recv_lse, recv_bar);
    }
    ta::mbar_wait(recv_bar, 0);
    const ta::ClusterShare sh = ta::cluster_share(cs, rank);
    const int R = ta::cluster_rows_per(cs);
    const uint32_t* recv_w = reinterpret_cast<const uint32_t*>(recv_o);
    unsigned long long s = 0;
    for (int i = tid; i < (cs - 1) * sh.count * (kD / 2); i += ta::kWsThreads) {
      const int slot = i / (sh.count * (kD / 2)), within = i - slot * sh.count * (kD / 2);
      s += recv_w[slot * R * (kD / 2) + within];
    }
    for (int i = tid; i < (cs - 1) * sh.count; i += ta::kWsThreads)
      s += (unsigned long long)recv_lse[(i / sh.count) * R + i % sh.count];
    atomicAdd(&sums[blockIdx.x], s);
    if (tid == 0) ta::bulk_wait_read();  // the outgoing copies read the staged rows before exit
  }
}

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr,
                 "usage: %s mode(0 barrier|1 push|2 bulk load + push|3 TMA load + push) cluster_size clusters "
                 "[smem_bytes]\n",
                 argv[0]);
    return 2;
  }
  const int mode = std::atoi(argv[1]), cs = std::atoi(argv[2]), clusters = std::atoi(argv[3]);
  const int smem = argc > 4 ? std::atoi(argv[4]) : 200 * 1024;
  if (smem < kSmemNeeded) { std::fprintf(stderr, "smem must be at least %d bytes\n", kSmemNeeded); return 2; }
  if (cs < 2 || cs > ta::kMaxClusterSplits) {
    std::fprintf(stderr, "cluster size 2..%d\n", ta::kMaxClusterSplits);
    return 2;
  }
  // The global source of modes 2 / 3: kRows rows x kD bf16, as a 4-D tensor (cols, rows, 1, 1) for
  // tma_load_box.
  void* gsrc;
  CHECK(cudaMalloc(&gsrc, kRows * kD * 2));
  CHECK(cudaMemset(gsrc, 1, kRows * kD * 2));
  CUtensorMap tmap;
  {
    const cuuint64_t dims[4] = {kD, kRows, 1, 1};
    const cuuint64_t strides[3] = {kD * 2, kRows * kD * 2, kRows * kD * 2};
    const cuuint32_t box[4] = {64, kRows, 1, 1};
    const cuuint32_t estr[4] = {1, 1, 1, 1};
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
    if (found != cudaDriverEntryPointSuccess || fn == nullptr) {
      std::fprintf(stderr, "no cuTensorMapEncodeTiled\n");
      return 2;
    }
    const CUresult r = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn)(
        &tmap, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, gsrc, dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
        CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) { std::fprintf(stderr, "cuTensorMapEncodeTiled failed: %d\n", (int)r); return 2; }
  }
  const int grid = cs * clusters;
  CHECK(cudaFuncSetAttribute(probe_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  unsigned long long* sums;
  CHECK(cudaMalloc(&sums, grid * sizeof(unsigned long long)));
  CHECK(cudaMemset(sums, 0, grid * sizeof(unsigned long long)));
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(grid);
  cfg.blockDim = dim3(ta::kWsThreads);
  cfg.dynamicSmemBytes = smem;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = cs;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  CHECK(cudaLaunchKernelEx(&cfg, probe_kernel, mode, cs, sums, (const void*)gsrc, tmap));
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  std::vector<unsigned long long> h(grid);
  CHECK(cudaMemcpy(h.data(), sums, grid * sizeof(unsigned long long), cudaMemcpyDeviceToHost));
  int bad = 0;
  if (mode >= 1) {
    const int R = ta::cluster_rows_per(cs);
    for (int b = 0; b < grid; ++b) {
      const int rank = b % cs;  // clusters are consecutive blocks along x
      const int first = rank * R, count = std::max(0, std::min(R, kRows - first));
      unsigned long long want = 0;
      for (int from = 0; from < cs; ++from) {
        if (from == rank) continue;
        for (int i = first * (kD / 2); i < (first + count) * (kD / 2); ++i) want += staged_word(from, i);
        for (int k = first; k < first + count; ++k) want += (unsigned long long)staged_lse(from, k);
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
