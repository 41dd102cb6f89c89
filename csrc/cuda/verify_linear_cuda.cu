// CUDA launcher of jetspec::verify_linear (kernel: csrc/kernels/verify_gemm_sm90.cuh, CUTLASS 3
// collectives on sm_90a). Registered only when the extension was built with CUTLASS headers
// (JETSPEC_WITH_CUTLASS); otherwise the decoder keeps F.linear for these shapes.
#ifdef JETSPEC_WITH_CUTLASS
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "cuda_utils.cuh"
#include "kernels/verify_gemm_sm90.cuh"
#include "verify_linear_common.h"

namespace jetspec {
namespace {

using verify_gemm::Config;
using verify_gemm::Schedule;

std::string env_str(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

// The compiled tile configurations by name, each with its residual-epilogue variant where one is
// compiled (else the residual is added by a kernel of its own after the GEMM).
struct NamedConfig {
  const char* name;
  Config (*plain)();
  Config (*with_residual)();
};
constexpr NamedConfig kConfigs[] = {
    {"t128", verify_gemm::config_t128, nullptr},
    {"t256", verify_gemm::config_t256, nullptr},
    {"t128c2", verify_gemm::config_t128c2, nullptr},
    {"p64c2", verify_gemm::config_p64c2, verify_gemm::config_p64c2r},
    {"s64", verify_gemm::config_s64, verify_gemm::config_s64r},
    {"s128", verify_gemm::config_s128, verify_gemm::config_s128r},
};

// Tile configuration: JETSPEC_VERIFY_CFG = one of kConfigs' names (tuning, tests). Default: up to
// 16 rows s64 (transposed ping-pong, the draft head's block: faster than cuBLAS at M = 16 for
// o_proj, down_proj, gate|up, the LM head and the head's k|v and fc on the H200; s128 with
// stream-K, split-K or data-parallel was slower than s64 for every shape but the LM head, where
// they tie); p64c2 up to 128 rows (ping-pong 64x64 tiles, W multicast to the cluster's two M tiles:
// faster than cuBLAS for Qwen3-8B's o_proj and down_proj at M = 128); t128 beyond.
Config pick_config(int M, bool residual) {
  const std::string v = env_str("JETSPEC_VERIFY_CFG");
  const std::string want = v.empty() ? (M <= 16 ? "s64" : M <= 128 ? "p64c2" : "t128") : v;
  for (const NamedConfig& c : kConfigs)
    if (want == c.name) return residual && c.with_residual != nullptr ? c.with_residual() : c.plain();
  std::string names;
  for (const NamedConfig& c : kConfigs) names += names.empty() ? c.name : std::string(", ") + c.name;
  TORCH_CHECK(false, "JETSPEC_VERIFY_CFG must be one of ", names, "; got '", v, "'");
}

// Schedule of the cooperative configurations (p64c2 and s64 are always data-parallel):
// JETSPEC_VERIFY_SCHED = streamk (default) | splitk | dp | heuristic;
// JETSPEC_VERIFY_SPLITS = K splits for splitk (default 4).
Schedule pick_schedule(int* splits) {
  const std::string v = env_str("JETSPEC_VERIFY_SCHED");
  TORCH_CHECK(v.empty() || v == "streamk" || v == "splitk" || v == "dp" || v == "heuristic",
              "JETSPEC_VERIFY_SCHED must be streamk, splitk, dp or heuristic, got '", v, "'");
  *splits = 1;
  if (v == "splitk") {
    const std::string s = env_str("JETSPEC_VERIFY_SPLITS");
    *splits = s.empty() ? 4 : std::atoi(s.c_str());
    TORCH_CHECK(*splits >= 1 && *splits <= 64, "JETSPEC_VERIFY_SPLITS must be 1..64, got '", s, "'");
    return Schedule::kSplitK;
  }
  if (v == "dp") return Schedule::kDataParallel;
  if (v == "heuristic") return Schedule::kHeuristic;
  return Schedule::kStreamK;
}

at::Tensor verify_linear_cuda(const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& residual) {
  check_verify_linear_args(x, weight, residual);
  c10::cuda::CUDAGuard guard(x.device());
  const int device = x.get_device();
  const int major = cc_major(device);
  TORCH_CHECK(major == 9, "verify_linear: needs an sm_90 (Hopper) GPU, got compute capability ", major, ".x");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 &&
                  reinterpret_cast<uintptr_t>(weight.data_ptr()) % 16 == 0,
              "verify_linear: `x` and `weight` must be 16-byte aligned");
  TORCH_CHECK(!residual.has_value() || reinterpret_cast<uintptr_t>(residual->data_ptr()) % 16 == 0,
              "verify_linear: `residual` must be 16-byte aligned");
  const int M = static_cast<int>(x.size(0)), K = static_cast<int>(x.size(1));
  const int N = static_cast<int>(weight.size(0));
  at::Tensor out = at::empty({M, N}, x.options());
  // With a residual: a configuration with an epilogue variant adds it there (one rounding); any
  // other adds it afterwards (a kernel of its own, same maths up to that rounding).
  const Config cfg = pick_config(M, residual.has_value());
  verify_gemm::Problem p{};
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  p.out = out.data_ptr();
  p.residual = residual.has_value() && cfg.has_residual ? residual->data_ptr() : nullptr;
  p.M = M;
  p.N = N;
  p.K = K;
  p.schedule = pick_schedule(&p.splits);
  p.sm_count = sm_count(device);
  p.device = device;
  const size_t ws_bytes = cfg.workspace_size(p);
  // The stream-K fixup workspace comes from the caching allocator (the graph's pool while
  // capturing); CUTLASS zeroes the part it needs with a memset node on `stream`.
  at::Tensor ws = at::empty({static_cast<int64_t>(ws_bytes > 0 ? ws_bytes : 1)}, x.options().dtype(at::kByte));
  const cudaError_t e = cfg.run(p, ws.data_ptr(), ws_bytes, current_stream());
  TORCH_CHECK(e == cudaSuccess, "verify_linear: the ", cfg.name, " GEMM failed for M=", M, " N=", N, " K=", K,
              ": ", cudaGetErrorString(e));
  JETSPEC_CHECK_LAUNCH();
  if (residual.has_value() && !cfg.has_residual) out.add_(*residual);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(jetspec, CUDA, m) { m.impl("verify_linear", &verify_linear_cuda); }

}  // namespace jetspec
#endif  // JETSPEC_WITH_CUTLASS
