// The one place every jetspec op's schema is declared. CPU implementations register in
// csrc/cpu/*.cpp, CUDA implementations in csrc/cuda/*.cu, fake (meta) implementations in
// jetspec_ext/ops/*.py. Conventions: tree indices int32, token ids int64, batch leading.
#include <Python.h>
#include <torch/library.h>

// `import jetspec_ext._C` loads this shared library, whose static initialisers register the ops.
// No pybind11: the module itself is empty (keeps the translation unit lean).
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(jetspec, m) {
  // §3.1 draft-tree expansion. policy: "accum" (JetSpec) or "topn" (DDTree).
  // Returns node_tokens (B,N) i64, parents (B,N) i32 (root and padding -1), depths (B,N) i32,
  // scores (B,N) f32 (cumulative log-probs), tree_mask (B,N,ceil(N/32)) i32,
  // num_nodes (B,) i32, first_child (B,N) i32, next_sibling (B,N) i32 (-1 = none).
  m.def(
      "build_tree(Tensor draft_logits, Tensor root_tokens, int width, int budget, str policy, "
      "float temperature=1.0) -> (Tensor node_tokens, Tensor parents, Tensor depths, "
      "Tensor scores, Tensor tree_mask, Tensor num_nodes, Tensor first_child, Tensor next_sibling)");
  // §3.2 tree attention. q (B,N,Hq,Dh); k_cache/v_cache (B,Hkv,S,Dh); prefix_lens (B,) i32;
  // tree_mask (B,N,ceil(N/32)) i32. Returns out (B,N,Hq,Dh) and lse (B,Hq,N) f32.
  m.def(
      "tree_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor prefix_lens, "
      "Tensor tree_mask, float scale) -> (Tensor out, Tensor lse)");
  // §3.3 acceptance. logits (B,N,V); node_tokens (B,N) i64; parents (B,N) i32;
  // rng_state (2,) i64 [seed, offset], offset advanced by one per sampling call.
  // Returns accepted_nodes (B,max_depth+1) i32 (-1 padded), accept_len (B,) i32,
  // next_token (B,) i64.
  m.def(
      "tree_accept(Tensor logits, Tensor node_tokens, Tensor parents, int max_depth, "
      "Tensor(a!) rng_state, float temperature=0.0, int top_k=0, float top_p=1.0) -> "
      "(Tensor accepted_nodes, Tensor accept_len, Tensor next_token)");
  // §3.4 KV commit. kv_cache (C,B,Hkv,S,Dh) (C = stacked layers x {k,v}); prefix_lens (B,) i32.
  m.def(
      "commit_kv(Tensor(a!) kv_cache, Tensor(b!) prefix_lens, Tensor accepted_nodes, "
      "Tensor accept_len) -> ()");
  // Decoding-shaped linear layer: x (M,K) bf16/fp16 with M <= 16, weight (N,K) same dtype
  // (nn.Linear layout, no bias). Returns x @ weight^T (M,N), fp32 accumulation.
  m.def("skinny_linear(Tensor x, Tensor weight) -> Tensor");
  // Verification-shaped linear layer: x (M,K) bf16 with M about 16..256 (tree tokens), weight (N,K)
  // bf16 (nn.Linear layout, no bias), K and N multiples of 8, optional residual (M,N) bf16.
  // Returns x @ weight^T (+ residual) (M,N), fp32 accumulation, one rounding.
  m.def("verify_linear(Tensor x, Tensor weight, Tensor? residual=None) -> Tensor");
}
