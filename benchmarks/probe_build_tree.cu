// Where build_tree's expand kernel spends its time (a development probe, not part of the package):
// clock64() stamps between the kernel's phases (merge, C prefix, expansion, outputs) on the
// benchmark shape, plus the latency of the warp primitives the expansion loop is made of.
//   nvcc -std=c++20 -O3 -arch=sm_90a -DJETSPEC_BT_PROBE -Icsrc benchmarks/probe_build_tree.cu -o /tmp/probe && /tmp/probe
#include <cstdio>
#include <cmath>
#include <vector>

#include "kernels/build_tree.cuh"

namespace k = jetspec::build_tree_kernels;

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("CUDA %s at %d\n", cudaGetErrorString(e), __LINE__); return 1; } } while (0)

// Dependent chains of ITER steps: cycles per step of each primitive.
__global__ void chain_kernel(long long* out, int iter, const uint32_t* seed) {
  __shared__ uint32_t sh[1024];
  const int lane = threadIdx.x;
  for (int i = lane; i < 1024; i += 32) sh[i] = (i * 7 + 1) & 1023;
  __syncwarp();
  uint32_t v = seed[lane];
  long long t0 = clock64();
  for (int i = 0; i < iter; ++i) v = __reduce_max_sync(k::kFull, v + lane) & 1023u;
  long long t1 = clock64();
  for (int i = 0; i < iter; ++i) v = __shfl_sync(k::kFull, v, (v + 1) & 31) + 1u;
  long long t2 = clock64();
  for (int i = 0; i < iter; ++i) v = sh[v & 1023];
  long long t3 = clock64();
  for (int i = 0; i < iter; ++i) { uint32_t mh, ml; int w = k::warp_argmax(v, v ^ lane, mh, ml); v = mh + w; }
  long long t4 = clock64();
  for (int i = 0; i < iter; ++i) v = __ballot_sync(k::kFull, (v >> (lane & 7)) & 1) + v;
  long long t5 = clock64();
  if (lane == 0) {
    out[0] = (t1 - t0) / iter; out[1] = (t2 - t1) / iter; out[2] = (t3 - t2) / iter;
    out[3] = (t4 - t3) / iter; out[4] = (t5 - t4) / iter; out[5] = v;
  }
}

int main() {
  const int B = 1, D = 20, V = 151936, W = 7, N = 256, K = 8;
  const int S = (V + k::kTileElems - 1) / k::kTileElems;
  std::vector<__nv_bfloat16> hx((size_t)B * D * V);
  uint64_t st = 12345;
  auto u01 = [&] { st = st * 6364136223846793005ull + 1442695040888963407ull; return ((st >> 11) + 0.5) / 9007199254740992.0; };
  for (auto& x : hx) x = __float2bfloat16((float)(3.0 * sqrt(-2 * log(u01())) * cos(6.283185307 * u01())));
  __nv_bfloat16* dx; int64_t* droots; float2* ms; uint2* keys;
  CK(cudaMalloc(&dx, hx.size() * 2)); CK(cudaMemcpy(dx, hx.data(), hx.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMalloc(&droots, 8 * B)); CK(cudaMemset(droots, 0, 8 * B));
  CK(cudaMalloc(&ms, sizeof(float2) * B * D * S)); CK(cudaMalloc(&keys, sizeof(uint2) * B * D * S * K));
  int64_t* tok; int32_t *par, *dep, *mask, *num, *fc, *ns; float* sc;
  CK(cudaMalloc(&tok, 8 * B * N)); CK(cudaMalloc(&par, 4 * B * N)); CK(cudaMalloc(&dep, 4 * B * N));
  CK(cudaMalloc(&sc, 4 * B * N)); CK(cudaMalloc(&mask, 4 * B * N * ((N + 31) / 32))); CK(cudaMalloc(&num, 4 * B));
  CK(cudaMalloc(&fc, 4 * B * N)); CK(cudaMalloc(&ns, 4 * B * N));
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  int clk_khz = 0; cudaDeviceGetAttribute(&clk_khz, cudaDevAttrClockRate, 0);
  for (int policy = 0; policy < 2; ++policy) {
    for (int rep = 0; rep < 5; ++rep) {
      k::build_tree_stats_tile_kernel<__nv_bfloat16, K><<<dim3(S, B * D), k::kStatsThreads>>>(dx, V, S, W, 1.0f, false, ms, keys);
      cudaEventRecord(e0);
      k::build_tree_expand_kernel<K><<<B, k::kExpandThreads>>>(ms, keys, droots, D, S, W, N, policy, tok, par, dep, sc, mask, num, fc, ns);
      cudaEventRecord(e1);
      CK(cudaDeviceSynchronize());
    }
    float evms; cudaEventElapsedTime(&evms, e0, e1);
    long long t[8]; CK(cudaMemcpyFromSymbol(t, k::g_bt_probe, sizeof(t)));
    int n; CK(cudaMemcpy(&n, num, 4, cudaMemcpyDeviceToHost));
    // pops: accum expands (n - 1) / W nodes after the root (W children each), topn n - 1
    const int pops = policy ? n - 1 : (n - 1 + W - 1) / W - 1;
    printf("expand %s: event %.2f us; cycles merge %lld, C %lld, expansion %lld (%d pops, %lld per pop), outputs %lld, total %lld; nodes %d\n",
           policy ? "topn" : "accum", evms * 1e3, t[1] - t[0], t[2] - t[1], t[3] - t[2], pops,
           pops > 0 ? (t[3] - t[2]) / pops : 0ll, t[4] - t[3], t[4] - t[0], n);
  }
  long long* dout; uint32_t* dseed; CK(cudaMalloc(&dout, 64)); CK(cudaMalloc(&dseed, 128)); CK(cudaMemset(dseed, 0, 128));
  chain_kernel<<<1, 32>>>(dout, 2000, dseed); CK(cudaDeviceSynchronize());
  long long c[6]; CK(cudaMemcpy(c, dout, sizeof(c), cudaMemcpyDeviceToHost));
  printf("cycles per dependent step: redux %lld, shfl %lld, lds %lld, warp_argmax %lld, ballot %lld (attr clock %d MHz)\n",
         c[0], c[1], c[2], c[3], c[4], clk_khz / 1000);
  return 0;
}
