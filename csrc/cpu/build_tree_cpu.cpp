// CPU implementation of jetspec::build_tree. Semantics: jetspec_ext/reference/build_tree.py
// (bit-identical: same float32 operations in the same order, a binary heap with the same keys).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <queue>
#include <vector>

#include "build_tree_common.h"
#include "checks.h"

namespace jetspec {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Per-depth tables of one batch row: top-W token ids, e = x - max (0 when x == max), logS.
template <typename T>
void depth_tables_row(const T* L, int64_t D, int64_t V, int W, float inv_t, bool scale,
                      std::vector<int64_t>& tok, std::vector<float>& e, std::vector<float>& C) {
  std::vector<float> x(V);
  std::vector<int32_t> idx(V);
  C.assign(D + 1, 0.0f);
  for (int64_t d = 0; d < D; ++d) {
    const T* row = L + d * V;
    float m = kNegInf;
    for (int64_t v = 0; v < V; ++v) {
      float f = static_cast<float>(row[v]);
      if (scale) f = f * inv_t;
      if (std::isnan(f)) f = kNegInf;
      x[v] = f;
      m = std::max(m, f);
    }
    double s = 0.0;
    for (int64_t v = 0; v < V; ++v) {
      float ev = x[v] == m ? 0.0f : x[v] - m;
      s += std::exp(static_cast<double>(ev));
    }
    const float logS = static_cast<float>(std::log(s));
    for (int64_t v = 0; v < V; ++v) idx[v] = static_cast<int32_t>(v);
    std::partial_sort(idx.begin(), idx.begin() + W, idx.end(), [&](int32_t a, int32_t b) {
      return x[a] > x[b] || (x[a] == x[b] && a < b);
    });
    for (int r = 0; r < W; ++r) {
      const float xv = x[idx[r]];
      tok[d * W + r] = idx[r];
      e[d * W + r] = xv == m ? 0.0f : xv - m;
    }
    C[d + 1] = C[d] + logS;
  }
}

struct AccumItem {  // created, unexpanded node
  float score;
  int32_t node;
};
struct AccumLess {  // priority: higher score, then lower node index
  bool operator()(const AccumItem& a, const AccumItem& b) const {
    return a.score < b.score || (a.score == b.score && a.node > b.node);
  }
};
struct TopnItem {  // candidate child (parent, rank)
  float score;
  int32_t parent;
  int32_t rank;
};
struct TopnLess {  // priority: higher score, then lower parent index
  bool operator()(const TopnItem& a, const TopnItem& b) const {
    return a.score < b.score || (a.score == b.score && a.parent > b.parent);
  }
};

// Best-first expansion of one row; fills the output rows; returns the node count.
int32_t expand_row(const std::vector<int64_t>& tok, const std::vector<float>& e,
                   const std::vector<float>& C, int64_t D, int W, int N, int policy, int64_t root,
                   int64_t* out_tok, int32_t* out_par, int32_t* out_dep, float* out_sc) {
  std::vector<float> A(N);
  int32_t n = 1;
  out_tok[0] = root;
  out_par[0] = -1;
  out_dep[0] = 0;
  out_sc[0] = 0.0f;
  A[0] = 0.0f;
  auto child_a = [&](int32_t p, int r) { return A[p] + e[out_dep[p] * W + r]; };
  auto add = [&](int32_t p, int r) {
    const int32_t d = out_dep[p] + 1;
    const float a = child_a(p, r);
    const int32_t i = n++;
    out_tok[i] = tok[(d - 1) * W + r];
    out_par[i] = p;
    out_dep[i] = d;
    A[i] = a;
    out_sc[i] = a - C[d];
    return i;
  };
  if (policy == 0) {
    std::priority_queue<AccumItem, std::vector<AccumItem>, AccumLess> heap;
    if (D >= 1) heap.push({0.0f, 0});
    while (n < N && !heap.empty()) {
      const int32_t p = heap.top().node;
      heap.pop();
      for (int r = 0; r < W && n < N; ++r) {
        const int32_t i = add(p, r);
        if (out_dep[i] < D) heap.push({out_sc[i], i});
      }
    }
  } else {
    std::priority_queue<TopnItem, std::vector<TopnItem>, TopnLess> heap;
    auto score_of = [&](int32_t p, int r) { return child_a(p, r) - C[out_dep[p] + 1]; };
    if (D >= 1) heap.push({score_of(0, 0), 0, 0});
    while (n < N && !heap.empty()) {
      const TopnItem it = heap.top();
      heap.pop();
      const int32_t i = add(it.parent, it.rank);
      if (it.rank + 1 < W) heap.push({score_of(it.parent, it.rank + 1), it.parent, it.rank + 1});
      if (out_dep[i] < D) heap.push({score_of(i, 0), i, 0});
    }
  }
  return n;
}

template <typename T>
void build_tree_rows(const at::Tensor& logits, const at::Tensor& root_tokens, int W, int N,
                     int policy, double temperature, BuildTreeOutputs& out) {
  const int64_t B = logits.size(0), D = logits.size(1), V = logits.size(2);
  const int NW = (N + 31) / 32;
  const T* L = logits.data_ptr<T>();
  at::Tensor roots = root_tokens.contiguous();
  const int64_t* rt = roots.data_ptr<int64_t>();
  int64_t* o_tok = std::get<0>(out).data_ptr<int64_t>();
  int32_t* o_par = std::get<1>(out).data_ptr<int32_t>();
  int32_t* o_dep = std::get<2>(out).data_ptr<int32_t>();
  float* o_sc = std::get<3>(out).data_ptr<float>();
  int32_t* o_mask = std::get<4>(out).data_ptr<int32_t>();
  int32_t* o_n = std::get<5>(out).data_ptr<int32_t>();
  int32_t* o_fc = std::get<6>(out).data_ptr<int32_t>();
  int32_t* o_ns = std::get<7>(out).data_ptr<int32_t>();
  const float inv_t = build_tree_inv_temperature(temperature);
  const bool scale = temperature != 1.0;
  std::vector<int64_t> tok(D * W);
  std::vector<float> e(D * W), C;
  std::vector<int32_t> last(N);
  for (int64_t b = 0; b < B; ++b) {
    depth_tables_row<T>(L + b * D * V, D, V, W, inv_t, scale, tok, e, C);
    int64_t* tk = o_tok + b * N;
    int32_t* par = o_par + b * N;
    int32_t* dep = o_dep + b * N;
    float* sc = o_sc + b * N;
    const int32_t n = expand_row(tok, e, C, D, W, N, policy, rt[b], tk, par, dep, sc);
    o_n[b] = n;
    for (int32_t i = n; i < N; ++i) {  // padding
      tk[i] = rt[b];
      par[i] = -1;
      dep[i] = 0;
      sc[i] = kNegInf;
    }
    // Ancestor mask: row i = row parent(i) | bit i.
    uint32_t* mask = reinterpret_cast<uint32_t*>(o_mask + b * N * NW);
    std::fill(mask, mask + int64_t{N} * NW, 0u);
    for (int32_t i = 0; i < N; ++i) {
      if (par[i] >= 0) std::copy(mask + par[i] * NW, mask + (par[i] + 1) * NW, mask + i * NW);
      mask[i * NW + i / 32] |= 1u << (i % 32);
    }
    // Links (siblings are created in rank order).
    int32_t* fc = o_fc + b * N;
    int32_t* ns = o_ns + b * N;
    std::fill(fc, fc + N, -1);
    std::fill(ns, ns + N, -1);
    std::fill(last.begin(), last.end(), -1);
    for (int32_t i = 1; i < n; ++i) {
      const int32_t p = par[i];
      if (last[p] < 0)
        fc[p] = i;
      else
        ns[last[p]] = i;
      last[p] = i;
    }
  }
}

BuildTreeOutputs build_tree_cpu(const at::Tensor& draft_logits, const at::Tensor& root_tokens,
                                int64_t width, int64_t budget, c10::string_view policy,
                                double temperature) {
  check_build_tree_args(draft_logits, root_tokens, width, budget,
                        std::string_view(policy.data(), policy.size()), temperature);
  const int pid = build_tree_policy_id(std::string_view(policy.data(), policy.size()));
  BuildTreeOutputs out = alloc_build_tree_outputs(draft_logits, budget);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, draft_logits.scalar_type(), "build_tree_cpu", [&] {
        build_tree_rows<scalar_t>(draft_logits, root_tokens, static_cast<int>(width),
                                  static_cast<int>(budget), pid, temperature, out);
      });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(jetspec, CPU, m) { m.impl("build_tree", &build_tree_cpu); }

}  // namespace jetspec
