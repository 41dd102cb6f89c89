// CPU implementation of jetspec::tree_accept. Semantics: jetspec_ext/reference/accept.py.
// The walk only evaluates the target's choice at nodes it visits (at most max_depth + 1 per row).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "accept_common.h"
#include "checks.h"
#include "kernels/rng.h"

namespace jetspec {
namespace {

template <typename T>
float to_float(T x) {
  return static_cast<float>(x);
}

// Greedy: first index of the maximum (NaN never wins; NaN logits are unsupported input).
template <typename T>
int64_t row_argmax(const T* row, int64_t V) {
  int64_t best = 0;
  float best_v = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < V; ++i) {
    float v = to_float(row[i]);
    if (v > best_v) {
      best_v = v;
      best = i;
    }
  }
  return best;
}

// Score threshold after top-k / top-p (tokens scoring >= threshold are kept).
float filter_threshold(std::vector<float>& scores, int64_t top_k, double top_p) {
  const int64_t V = static_cast<int64_t>(scores.size());
  std::vector<float> sorted(scores);
  std::sort(sorted.begin(), sorted.end(), [](float a, float b) { return a > b; });
  float thresh = -std::numeric_limits<float>::infinity();
  int64_t kept = V;
  if (top_k > 0 && top_k < V) {
    thresh = sorted[top_k - 1];
    kept = top_k;
    while (kept < V && sorted[kept] >= thresh) ++kept;  // boundary ties are kept
  }
  if (top_p < 1.0) {
    const float m = sorted[0];
    double z = 0.0;
    for (int64_t i = 0; i < kept; ++i) z += std::exp(static_cast<double>(sorted[i] - m));
    double cum = 0.0;
    for (int64_t i = 0; i < kept; ++i) {
      cum += std::exp(static_cast<double>(sorted[i] - m)) / z;
      bool last_of_group = (i + 1 == kept) || sorted[i + 1] != sorted[i];
      if (last_of_group && cum >= top_p) {
        thresh = std::max(thresh, sorted[i]);
        break;
      }
    }
  }
  return thresh;
}

// Sampling: inverse-CDF draw from the softmax of the kept scores (float64 sums), with the
// row's uniform (value 0 of its counter-based stream): the first token whose cumulative
// probability exceeds u.
template <typename T>
int64_t row_sample(const T* row, int64_t V, float temperature, int64_t top_k, double top_p,
                   uint64_t base) {
  std::vector<float> s(V);
  for (int64_t i = 0; i < V; ++i) s[i] = to_float(row[i]) / temperature;
  float thresh = -std::numeric_limits<float>::infinity();
  if ((top_k > 0 && top_k < V) || top_p < 1.0) thresh = filter_threshold(s, top_k, top_p);
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < V; ++i)
    if (s[i] >= thresh) m = std::max(m, s[i]);
  if (m == -std::numeric_limits<float>::infinity()) return 0;  // nothing kept (all -inf)
  std::vector<double> cum(V);
  double z = 0.0;
  for (int64_t i = 0; i < V; ++i) {
    if (s[i] >= thresh && s[i] != -std::numeric_limits<float>::infinity())
      z += std::exp(static_cast<double>(s[i]) - static_cast<double>(m));
    cum[i] = z;
  }
  const double target = static_cast<double>(rng_uniform(base, 0)) * z;
  // First index with cum > target (cum is non-decreasing).
  const int64_t idx = std::upper_bound(cum.begin(), cum.end(), target) - cum.begin();
  return std::min(idx, V - 1);
}

template <typename T>
void accept_rows(const at::Tensor& logits, const at::Tensor& node_tokens,
                 const at::Tensor& parents, int64_t max_depth, uint64_t seed, uint64_t offset,
                 double temperature, int64_t top_k, double top_p, at::Tensor& accepted,
                 at::Tensor& accept_len, at::Tensor& next_token) {
  const int64_t B = logits.size(0), N = logits.size(1), V = logits.size(2);
  const T* L = logits.data_ptr<T>();
  const int64_t* tok = node_tokens.data_ptr<int64_t>();
  const int32_t* par = parents.data_ptr<int32_t>();
  int32_t* acc = accepted.data_ptr<int32_t>();
  int32_t* alen = accept_len.data_ptr<int32_t>();
  int64_t* nxt = next_token.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const int32_t* p = par + b * N;
    const int64_t* t = tok + b * N;
    int32_t v = 0;
    int32_t len = 1;
    acc[b * (max_depth + 1)] = 0;
    int64_t x;
    while (true) {
      const T* row = L + (b * N + v) * V;
      x = temperature == 0.0
              ? row_argmax(row, V)
              : row_sample(row, V, static_cast<float>(temperature), top_k, top_p,
                           rng_row_base(seed, offset, static_cast<uint64_t>(b * N + v)));
      int32_t child = -1;
      for (int64_t c = v + 1; c < N; ++c)
        if (p[c] == v && t[c] == x) {
          child = static_cast<int32_t>(c);
          break;
        }
      if (child < 0) break;
      // Depths were validated, so the path can never exceed max_depth + 1 nodes.
      acc[b * (max_depth + 1) + len] = child;
      ++len;
      v = child;
    }
    alen[b] = len;
    nxt[b] = x;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tree_accept_cpu(
    const at::Tensor& logits, const at::Tensor& node_tokens, const at::Tensor& parents,
    int64_t max_depth, at::Tensor& rng_state, double temperature, int64_t top_k, double top_p) {
  check_tree_accept_args(logits, node_tokens, parents, max_depth, rng_state, temperature, top_k,
                         top_p);
  const int64_t B = logits.size(0), N = logits.size(1);
  // Value checks (the CUDA op flags these on the device instead).
  auto par = parents.accessor<int32_t, 2>();
  std::vector<int32_t> depth(N);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(par[b][0] == -1, "tree_accept: `parents[", b, ", 0]` must be -1 (node 0 is the root), got ",
                par[b][0]);
    depth[0] = 0;
    for (int64_t i = 1; i < N; ++i) {
      int32_t q = par[b][i];
      TORCH_CHECK(q >= -1 && q < i, "tree_accept: `parents[", b, ", ", i, "]` = ", q,
                  " is out of range (must be -1 for padding or in [0, ", i, "))");
      depth[i] = q < 0 ? 0 : depth[q] + 1;
      TORCH_CHECK(depth[i] <= max_depth, "tree_accept: node ", i, " of batch row ", b,
                  " has depth ", depth[i], " > max_depth = ", max_depth);
    }
  }
  auto opts = logits.options();
  at::Tensor accepted = at::full({B, max_depth + 1}, -1, opts.dtype(at::kInt));
  at::Tensor accept_len = at::empty({B}, opts.dtype(at::kInt));
  at::Tensor next_token = at::empty({B}, opts.dtype(at::kLong));
  const uint64_t seed = static_cast<uint64_t>(rng_state[0].item<int64_t>());
  const uint64_t offset = static_cast<uint64_t>(rng_state[1].item<int64_t>());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "tree_accept_cpu", [&] {
    accept_rows<scalar_t>(logits, node_tokens, parents, max_depth, seed, offset, temperature,
                          top_k, top_p, accepted, accept_len, next_token);
  });
  if (temperature > 0.0) rng_state[1].add_(1);
  return {accepted, accept_len, next_token};
}

}  // namespace

TORCH_LIBRARY_IMPL(jetspec, CPU, m) { m.impl("tree_accept", &tree_accept_cpu); }

}  // namespace jetspec
