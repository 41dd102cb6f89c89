// CPU implementation of jetspec::commit_kv. Semantics: jetspec_ext/reference/commit.py.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "commit_common.h"

namespace jetspec {
namespace {

void commit_kv_cpu(at::Tensor& kv_cache, at::Tensor& prefix_lens,
                   const at::Tensor& accepted_nodes, const at::Tensor& accept_len) {
  check_commit_kv_args(kv_cache, prefix_lens, accepted_nodes, accept_len);
  const int64_t C = kv_cache.size(0), B = kv_cache.size(1), H = kv_cache.size(2),
                S = kv_cache.size(3), Dh = kv_cache.size(4);
  const int64_t P = accepted_nodes.size(1);
  auto acc = accepted_nodes.accessor<int32_t, 2>();
  auto alen = accept_len.accessor<int32_t, 1>();
  auto plen = prefix_lens.accessor<int32_t, 1>();
  // Validate every row before touching anything.
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = alen[b];
    if (n <= 0) continue;
    TORCH_CHECK(n <= P, "commit_kv: `accept_len[", b, "]` = ", n, " exceeds the ", P,
                " columns of `accepted_nodes`");
    TORCH_CHECK(plen[b] >= 0, "commit_kv: `prefix_lens[", b, "]` = ", plen[b], " is negative");
    for (int64_t j = 0; j < n; ++j) {
      const int64_t a = acc[b][j];
      TORCH_CHECK(j == 0 ? a == 0 : a >= j, "commit_kv: `accepted_nodes[", b, ", ", j, "]` = ", a,
                  " is invalid (a path starts at the root 0 and node j has index >= j; padding "
                  "-1 only after accept_len)");
      TORCH_CHECK(plen[b] + a < S, "commit_kv: row ", b, ": slot prefix_lens + ", a, " = ",
                  plen[b] + a, " is past the end of the cache (S = ", S, ")");
    }
  }
  const int64_t elem = kv_cache.element_size();
  const int64_t row_bytes = Dh * elem;
  char* base = static_cast<char*>(kv_cache.data_ptr());
  std::vector<char> staging;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = alen[b];
    if (n <= 0) continue;
    staging.resize(n * row_bytes);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h) {
        char* head = base + (((c * B + b) * H + h) * S) * row_bytes;
        for (int64_t j = 0; j < n; ++j)  // read every source first
          std::memcpy(staging.data() + j * row_bytes, head + (plen[b] + acc[b][j]) * row_bytes,
                      row_bytes);
        std::memcpy(head + plen[b] * row_bytes, staging.data(), n * row_bytes);
      }
  }
  for (int64_t b = 0; b < B; ++b)
    if (alen[b] > 0) plen[b] += alen[b];
}

}  // namespace

TORCH_LIBRARY_IMPL(jetspec, CPU, m) { m.impl("commit_kv", &commit_kv_cpu); }

}  // namespace jetspec
