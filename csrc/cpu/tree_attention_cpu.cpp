// CPU implementation of jetspec::tree_attention (fp32 / bf16 / fp16; maths in fp32).
// Semantics: jetspec_ext/reference/attention.py. Simple ATen code, one batch row at a time.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "tree_attention_common.h"

namespace jetspec {
namespace {

// Dense (N, N) bool visibility of the tree part from the packed (N, W) int32 mask.
at::Tensor unpack_mask(const at::Tensor& packed, int64_t N) {
  auto shifts = at::arange(32, packed.options());                      // (32,)
  auto bits = at::bitwise_and(at::bitwise_right_shift(packed.unsqueeze(-1), shifts), 1);  // (N,W,32)
  return bits.reshape({N, -1}).narrow(1, 0, N).to(at::kBool);
}

std::tuple<at::Tensor, at::Tensor> tree_attention_cpu(const at::Tensor& q,
                                                      const at::Tensor& k_cache,
                                                      const at::Tensor& v_cache,
                                                      const at::Tensor& prefix_lens,
                                                      const at::Tensor& tree_mask, double scale) {
  constexpr const char* op = "tree_attention";
  const auto s = check_tree_attention_args(q, k_cache, v_cache, prefix_lens, tree_mask);
  TORCH_CHECK(std::isfinite(scale), op, ": `scale` must be finite, got ", scale);
  const auto plens = prefix_lens.contiguous();
  const int32_t* pl = plens.data_ptr<int32_t>();
  for (int64_t b = 0; b < s.B; ++b)
    TORCH_CHECK(pl[b] >= 0 && pl[b] + s.N <= s.S, op, ": `prefix_lens[", b, "]` = ", pl[b],
                " must satisfy 0 <= prefix_len and prefix_len + N (", s.N,
                ") <= S (cache slots, ", s.S, ")");

  auto out = at::empty({s.B, s.N, s.Hq, s.D}, q.options());
  auto lse = at::empty({s.B, s.Hq, s.N}, q.options().dtype(at::kFloat));
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t b = 0; b < s.B; ++b) {
    const int64_t P = pl[b], L = P + s.N;
    // (Hkv, G*N, D): query rows grouped by KV head, row = g * N + n.
    auto qb = q[b].to(at::kFloat).permute({1, 0, 2}).reshape({s.Hkv, s.G * s.N, s.D});
    auto kb = k_cache[b].narrow(1, 0, L).to(at::kFloat);  // (Hkv, L, D)
    auto vb = v_cache[b].narrow(1, 0, L).to(at::kFloat);
    auto scores = at::bmm(qb, kb.transpose(1, 2)).mul_(scale);  // (Hkv, G*N, L)
    auto visible = at::ones({s.N, L}, tree_mask.options().dtype(at::kBool));
    visible.narrow(1, P, s.N).copy_(unpack_mask(tree_mask[b], s.N));
    scores = scores.view({s.Hkv, s.G, s.N, L}).masked_fill(visible.logical_not(), ninf);
    auto row_lse = at::logsumexp(scores, -1, /*keepdim=*/true);  // (Hkv, G, N, 1)
    // Rows that see nothing: lse = -inf, probabilities 0 (not NaN).
    auto safe = at::where(at::isinf(row_lse), at::zeros_like(row_lse), row_lse);
    auto probs = at::exp(scores - safe).view({s.Hkv, s.G * s.N, L});
    auto ob = at::bmm(probs, vb).view({s.Hq, s.N, s.D}).permute({1, 0, 2});  // (N, Hq, D)
    out[b].copy_(ob);
    lse[b].copy_(row_lse.view({s.Hq, s.N}));
  }
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(jetspec, CPU, m) { m.impl("tree_attention", &tree_attention_cpu); }

}  // namespace jetspec
