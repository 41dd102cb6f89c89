// Counter-based random numbers shared by the CPU and CUDA sampling kernels (torch-free).
// Mirrors jetspec_ext/reference/rng.py exactly: splitmix64 streams keyed by (seed, offset, row).
#pragma once
#include <stdint.h>

#if defined(__CUDACC__)
#define JS_HD __host__ __device__ __forceinline__
#else
#define JS_HD inline
#endif

namespace jetspec {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

JS_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Key of the stream of one row (one tree node of one batch row: row = b * N + node).
JS_HD uint64_t rng_row_base(uint64_t seed, uint64_t offset, uint64_t row) {
  return mix64(mix64(seed ^ mix64(offset)) + row * kGolden);
}

// The i-th uniform in (0, 1) of a row stream (i = token id).
JS_HD float rng_uniform(uint64_t base, uint64_t i) {
  uint64_t h = mix64(base + (i + 1) * kGolden);
  return (static_cast<float>(h >> 40) + 0.5f) * (1.0f / 16777216.0f);
}

}  // namespace jetspec
