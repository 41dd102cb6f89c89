"""Target(fuse_projections=True) (the default): tree / decode forwards of a dense Qwen3 target run
``_layer_fused`` (one q|k|v GEMM and one gate|up GEMM per layer, weights fused once as views of
one tensor) instead of HF's ``layer.forward``. Checked here eagerly on the CPU in fp32 (the
compiled fused path is checked in test_compile.py): logits, tapped features and every layer's KV
equal the unfused path's to rtol = atol = 1e-5 (fp32; the only difference is the GEMM blocking of
the wider fused matmuls); greedy generation is token-identical with fuse on / off and to HF's
``generate``; the HF parameters share the fused storage (memory not doubled, tied embeddings
untouched, save_pretrained round-trips); other layer structures fall back to HF's forward."""
import pytest
import torch

from decoder_support import hf_greedy, tiny_target
from jetspec_ext.decoder import HeadDrafter, generate, generate_ar
from jetspec_ext.draft_head import JetSpecDraftHead
from jetspec_ext.target import Target
from test_compile import _random_tree

VOCAB, LAYERS = 512, 3
TOL = dict(rtol=1e-5, atol=1e-5)
PROMPT = [5, 9, 200, 31, 7, 77, 300, 12, 3, 99, 41]


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(tied=False, **kw):
    return tiny_target(tied=tied, vocab=VOCAB, layers=LAYERS, hidden=64, head_dim=64, seed=4, **kw)


def _spy(target):
    """Count the calls of the target's fused and HF layer functions."""
    calls = {"fused": 0, "hf": 0}
    fused_fn, hf_fn = target._layer_fused, target._layer

    def fused(*a):
        calls["fused"] += 1
        return fused_fn(*a)

    def hf(*a):
        calls["hf"] += 1
        return hf_fn(*a)
    target._layer_fused, target._layer = fused, hf
    return calls


def _forward_both(ref, fus, N, P=6, S=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn(LAYERS, 2, 1, ref.num_kv_heads, S, ref.head_dim, generator=g)
    kv_f = kv.clone()
    lens = torch.full((1,), P, dtype=torch.int32)
    tokens = torch.randint(0, VOCAB, (1, N), generator=g)
    mask, depths = _random_tree(1, N, g)
    with torch.inference_mode():
        out_r = ref.forward(kv, lens, tokens, P + depths, mask)
        out_f = fus.forward(kv_f, lens, tokens, P + depths, mask)
    return out_r, out_f, kv, kv_f


@pytest.mark.parametrize("N", [8, 1], ids=["tree", "ar"])
def test_fused_forward_matches_hf_layer(N):
    model = _model()
    ref = Target(model, [0, 1, LAYERS - 1], fuse_projections=False)
    fus = Target(model, [0, 1, LAYERS - 1])
    assert fus.fused and fus.fuse_note is None and not ref.fused
    calls = _spy(fus)
    (lr, tr), (lf, tf), kv, kv_f = _forward_both(ref, fus, N)
    assert calls == {"fused": LAYERS, "hf": 0}
    torch.testing.assert_close(lf, lr, **TOL)
    torch.testing.assert_close(tf, tr, **TOL)
    torch.testing.assert_close(kv_f, kv, **TOL)
    # every new slot written: each key / value vector changed from its random start (the cache
    # _forward_both began with), in every layer and head
    start = torch.randn(kv.shape, generator=torch.Generator().manual_seed(0))
    assert (kv[..., 6:6 + N, :] != start[..., 6:6 + N, :]).any(dim=-1).all()
    # the prefill keeps HF's layer.forward (the module-level function, not the spied one)
    with torch.inference_mode():
        fus.forward(kv_f, torch.zeros(1, dtype=torch.int32), torch.tensor([PROMPT]),
                    torch.arange(len(PROMPT)).unsqueeze(0), None)
    assert calls["fused"] == LAYERS


def test_fused_weights_share_storage(tmp_path):
    model = _model(tied=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params_before = list(model.parameters())
    embed = model.model.embed_tokens.weight
    t = Target(model, [0])
    assert t.fused
    assert list(model.parameters()) == params_before  # same Parameter objects, same order
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, before[n], rtol=0, atol=0)
    assert model.lm_head.weight is embed and model.model.embed_tokens.weight is embed  # tied: untouched
    for layer, (w_qkv, w_gu) in zip(model.model.layers, t._proj.per_layer):
        a, mlp = layer.self_attn, layer.mlp
        row = w_qkv.shape[1] * w_qkv.element_size()
        assert a.q_proj.weight.data_ptr() == w_qkv.data_ptr()
        assert a.k_proj.weight.data_ptr() == w_qkv.data_ptr() + a.q_proj.weight.shape[0] * row
        assert a.v_proj.weight.data_ptr() == a.k_proj.weight.data_ptr() + a.k_proj.weight.shape[0] * row
        assert mlp.gate_proj.weight.data_ptr() == w_gu.data_ptr()
        assert mlp.up_proj.weight.data_ptr() == w_gu.data_ptr() + mlp.gate_proj.weight.shape[0] * row
        assert isinstance(a.q_proj.weight, torch.nn.Parameter)
        torch.testing.assert_close(w_qkv, torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                                   rtol=0, atol=0)
    # memory not doubled: distinct storages hold exactly the parameters' bytes
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    assert sum(storages.values()) == sum(p.numel() * p.element_size() for p in model.parameters())
    # a second Target on the same model reuses the fused storage
    t2 = Target(model, [0])
    assert [w.data_ptr() for pair in t2._proj.per_layer for w in pair] == [w.data_ptr() for pair in t._proj.per_layer for w in pair]
    # save_pretrained / from_pretrained round-trip with the same values
    model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path)
    for n, p in back.named_parameters():
        torch.testing.assert_close(p, before[n], rtol=0, atol=0)


def test_generate_identical_with_fuse_on_and_off():
    model = _model()
    ref_hf = hf_greedy(model, PROMPT, 16)  # before any fusion
    torch.manual_seed(0)
    head = JetSpecDraftHead.for_target(model.config, num_layers=1, block_size=4, target_layer_ids=[0, 1])
    off = Target(model, head.target_layer_ids, fuse_projections=False)
    on = Target(model, head.target_layer_ids)
    kw = dict(max_new_tokens=16, budget=8, width=2)
    r_off = generate(off, HeadDrafter(head, off, depth=3), PROMPT, **kw)
    r_on = generate(on, HeadDrafter(head, on, depth=3), PROMPT, **kw)
    assert r_on.tokens == r_off.tokens
    assert r_on.tokens[0] == ref_hf
    assert [r.accept_len for r in r_on.rounds] == [r.accept_len for r in r_off.rounds]
    assert generate_ar(on, PROMPT, max_new_tokens=16).tokens[0] == ref_hf
    assert hf_greedy(model, PROMPT, 16) == ref_hf  # HF's own generate on the fused (view) weights


def test_fallback_attention_bias():
    model = _model(attention_bias=True)
    ptr = model.model.layers[0].self_attn.q_proj.weight.data_ptr()
    t = Target(model, [0])
    assert not t.fused and "attention_bias" in t.fuse_note
    assert model.model.layers[0].self_attn.q_proj.weight.data_ptr() == ptr  # weights left alone
    ref = Target(model, [0], fuse_projections=False)
    calls = _spy(t)
    (lr, _), (lf, _), _, _ = _forward_both(ref, t, 8)
    assert calls == {"fused": 0, "hf": LAYERS}
    torch.testing.assert_close(lf, lr, rtol=0, atol=0)


def test_fallback_unexpected_module():
    model = _model()
    model.model.layers[1].mlp.up_proj.register_forward_hook(lambda m, i, o: o)
    t = Target(model, [0])
    assert not t.fused and "layer 1" in t.fuse_note
    # a hook on the attention / MLP module: HF's layer.forward calls it, the fused layer would not
    for where in ("self_attn", "mlp"):
        model = _model()
        getattr(model.model.layers[0], where).register_forward_pre_hook(lambda m, a: None)
        t = Target(model, [0])
        assert not t.fused and "hooks" in t.fuse_note, where
    # transformers' own output-capturing hooks (installed by a forward with
    # output_hidden_states=True and kept) do not make the target fall back
    model = _model()
    model(torch.tensor([[1, 2, 3]]), output_hidden_states=True)
    hooked = [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    t = Target(model, [0])
    assert t.fused, (t.fuse_note, hooked)


def test_refuse_after_weights_replaced():
    """Parameters moved to new storage after construction (what model.to would do): the forward
    notices and fuses again, so it never runs stale fused weights."""
    model = _model()
    ref = Target(model, [0], fuse_projections=False)
    fus = Target(model, [0])
    with torch.no_grad():
        for layer in model.model.layers:
            for lin in (layer.self_attn.k_proj, layer.mlp.up_proj):
                lin.weight.data = lin.weight.detach() * 1.5  # fresh storage
    (lr, tr), (lf, tf), kv, kv_f = _forward_both(ref, fus, 8)
    torch.testing.assert_close(lf, lr, **TOL)
    torch.testing.assert_close(kv_f, kv, **TOL)
    a = model.model.layers[0].self_attn
    assert a.q_proj.weight.untyped_storage().data_ptr() == a.k_proj.weight.untyped_storage().data_ptr()


def test_fused_model_built_in_inference_mode():
    """Parameters created under torch.inference_mode are inference tensors: the fused tensor is
    made one too (a Parameter's .data switching kind breaks every later call of the module)."""
    with torch.inference_mode():
        model = _model()
        assert model.model.layers[0].self_attn.q_proj.weight.is_inference()
    ref = Target(model, [0], fuse_projections=False)
    fus = Target(model, [0])
    assert fus.fused
    (lr, _), (lf, _), kv, kv_f = _forward_both(ref, fus, 8)
    torch.testing.assert_close(lf, lr, **TOL)
    torch.testing.assert_close(kv_f, kv, **TOL)
    with torch.inference_mode():
        model(torch.tensor([PROMPT]))  # HF's own forward on the view weights still works
