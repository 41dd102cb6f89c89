"""HeadDrafter(fuse_projections=True) (the default): the draft head's decoding path runs one q|k|v
GEMM and one gate|up GEMM per layer (block forward, ``_draft_layer_fused``) and one k|v GEMM per
layer (context extension), with the weights fused once by ``target._fuse_group`` (the head's
Parameters become views of the fused tensors). Checked on the CPU in fp32: the fused block forward
(block KV, draft logits) and context extension equal the unfused ones to rtol = atol = 1e-5 (the
only possible difference is the blocking of the wider fused GEMMs; with MKL on one thread they
come out bit-identical); greedy generation is token-identical
to the unfused drafter and to HF's ``generate``; storage is shared (no second copy); heads that
do not fit fall back to the layers' forward; moved / cast weights are fused again;
save_pretrained writes the same tensors; training a head that a drafter fused first gives the same
losses and weights as training an unfused copy, and the drafter then drafts with the trained
weights. (The compiled fused drafter is checked against the eager one in test_compile.py.)"""
import pytest
import torch

from conftest import record_calls
from decoder_support import extend_and_draft, hf_greedy, tiny_draft_pair
from jetspec_ext.decoder import HeadDrafter, generate
from jetspec_ext.draft_head import JetSpecDraftHead, block_layers, extend_layers, layer_caches
from jetspec_ext.op_select import op
from jetspec_ext.target import Target

DEPTH = 5  # tiny_draft_pair's heads: block size DEPTH + 1
TOL = dict(rtol=1e-5, atol=1e-5)
PROMPT = [5, 9, 200, 31, 7, 77, 300, 12, 3, 99, 41]


pytestmark = pytest.mark.usefixtures("one_thread")


def _spy(monkeypatch):
    import jetspec_ext.draft_head as dh
    calls = {"fused": 0}
    orig = dh._draft_layer_fused

    def fused(*a):
        calls["fused"] += 1
        return orig(*a)
    monkeypatch.setattr(dh, "_draft_layer_fused", fused)
    return calls


def test_fused_drafter_matches_unfused(monkeypatch):
    _, head, target = tiny_draft_pair()
    ref = HeadDrafter(head, target, depth=DEPTH, fuse_projections=False)
    fus = HeadDrafter(head, target, depth=DEPTH)
    assert fus.fused and fus.fuse_note is None and not ref.fused
    calls = _spy(monkeypatch)
    ctx_r, lr = extend_and_draft(ref)
    assert calls["fused"] == 0
    ctx_f, lf = extend_and_draft(fus)
    assert calls["fused"] == len(head.layers)
    torch.testing.assert_close(ctx_f, ctx_r, **TOL)  # context KV (extension) + block KV (draft)
    torch.testing.assert_close(lf, lr, **TOL)
    assert lf.abs().max() > 0.1


@torch.inference_mode()
def test_block_and_extend_functions_match_unfused():
    """block_layers / extend_layers with fused weights vs. the layers' own forward (B = 2, a
    bidirectional head too), and vs. the head's methods (which stay unfused). The heads are
    built under inference_mode here (inference-tensor Parameters: fused as inference tensors)."""
    for causal in (True, False):
        _, head, target = tiny_draft_pair(causal=causal, seed=1)
        fused = HeadDrafter(head, target, depth=DEPTH)._proj.per_layer
        g = torch.Generator().manual_seed(3)
        B, S, N, H = 2, 32, DEPTH + 1, head.config.hidden_size
        cache = torch.randn(head.new_context_cache(B, S).shape, generator=g)
        c_ref, c_fus, c_meth = cache.clone(), cache.clone(), cache.clone()
        lens = torch.tensor([4, 11], dtype=torch.int32)
        tapped = torch.randn(B, 7, 2 * H, generator=g)
        extend_layers(head, layer_caches(c_ref), lens, tapped)
        extend_layers(head, layer_caches(c_fus), lens, tapped, fused)
        head.extend_context(c_meth, lens, tapped)
        torch.testing.assert_close(c_fus, c_ref, **TOL)
        torch.testing.assert_close(c_meth, c_ref, rtol=0, atol=0)
        lens += 7
        emb = torch.randn(B, N, H, generator=g)
        mask = head.block_mask(N, B)
        attn = op("tree_attention", emb.device, emb.dtype)
        h_ref = block_layers(head, layer_caches(c_ref), lens, emb, mask, attn)
        h_fus = block_layers(head, layer_caches(c_fus), lens, emb, mask, attn, fused)
        torch.testing.assert_close(h_fus, h_ref, **TOL)
        torch.testing.assert_close(c_fus, c_ref, **TOL)
        torch.testing.assert_close(head.forward_block(c_meth, lens, emb), h_ref, rtol=0, atol=0)


def test_generate_identical_fused_and_unfused():
    model, head, target = tiny_draft_pair(head_layers=1)
    ref_hf = hf_greedy(model, PROMPT, 20)
    kw = dict(max_new_tokens=20, budget=8, width=2)
    r_off = generate(target, HeadDrafter(head, target, depth=3, fuse_projections=False), PROMPT, **kw)
    d_on = HeadDrafter(head, target, depth=3)
    assert d_on.fused
    r_on = generate(target, d_on, PROMPT, **kw)
    assert r_on.tokens == r_off.tokens and r_on.tokens[0] == ref_hf
    assert [r.accept_len for r in r_on.rounds] == [r.accept_len for r in r_off.rounds]


def test_fused_head_shares_storage(tmp_path):
    _, head, target = tiny_draft_pair()
    before = {n: p.detach().clone() for n, p in head.named_parameters()}
    params = list(head.parameters())
    d = HeadDrafter(head, target, depth=DEPTH)
    assert d.fused and list(head.parameters()) == params  # same Parameter objects
    for n, p in head.named_parameters():
        assert isinstance(p, torch.nn.Parameter)
        torch.testing.assert_close(p, before[n], rtol=0, atol=0)
    for layer, (w_qkv, w_gu) in zip(head.layers, d._proj.per_layer):
        a, mlp = layer.self_attn, layer.mlp
        row = w_qkv.shape[1] * w_qkv.element_size()
        assert a.q_proj.weight.data_ptr() == w_qkv.data_ptr()
        assert a.k_proj.weight.data_ptr() == w_qkv.data_ptr() + a.q_proj.weight.shape[0] * row
        assert a.v_proj.weight.data_ptr() == a.k_proj.weight.data_ptr() + a.k_proj.weight.shape[0] * row
        assert mlp.gate_proj.weight.data_ptr() == w_gu.data_ptr()
        assert mlp.up_proj.weight.data_ptr() == w_gu.data_ptr() + mlp.gate_proj.weight.shape[0] * row
        torch.testing.assert_close(w_qkv, torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                                   rtol=0, atol=0)
        torch.testing.assert_close(w_gu, torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), rtol=0, atol=0)
    # no second copy: the distinct storages hold exactly the parameters' bytes
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in head.parameters()}
    assert sum(storages.values()) == sum(p.numel() * p.element_size() for p in head.parameters())
    # a second drafter (e.g. another depth / budget) reuses the fused storage
    d2 = HeadDrafter(head, target, depth=3)
    assert [w.data_ptr() for pair in d2._proj.per_layer for w in pair] == [w.data_ptr() for pair in d._proj.per_layer for w in pair]
    # save_pretrained after fusing writes the same tensors, the published names only
    head.save_pretrained(tmp_path)
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert sorted(saved) == sorted(before)
    for n, v in before.items():
        torch.testing.assert_close(saved[n], v, rtol=0, atol=0)
    back = JetSpecDraftHead.from_pretrained(str(tmp_path))
    for n, p in back.named_parameters():
        torch.testing.assert_close(p, before[n], rtol=0, atol=0)


def test_refuse_after_head_moved():
    """head.to(dtype) and back gives the parameters separate storage: the drafter notices and
    fuses again, so it never drafts with stale fused weights."""
    _, head, target = tiny_draft_pair()
    fus = HeadDrafter(head, target, depth=DEPTH)
    ctx0, l0 = extend_and_draft(fus)
    head.to(torch.bfloat16).to(torch.float32)  # values rounded to bf16, storage replaced
    a = head.layers[0].self_attn
    assert a.q_proj.weight.untyped_storage().data_ptr() != a.k_proj.weight.untyped_storage().data_ptr()
    ref = HeadDrafter(head, target, depth=DEPTH, fuse_projections=False)
    ctx_r, lr = extend_and_draft(ref)
    ctx_f, lf = extend_and_draft(fus)
    torch.testing.assert_close(lf, lr, **TOL)
    torch.testing.assert_close(ctx_f, ctx_r, **TOL)
    assert not torch.allclose(lf, l0, rtol=0, atol=0)  # the bf16-rounded weights were used
    assert a.q_proj.weight.untyped_storage().data_ptr() == a.k_proj.weight.untyped_storage().data_ptr()
    # weights replaced one by one (load_state_dict(assign=True) style)
    with torch.no_grad():
        for layer in head.layers:
            layer.mlp.up_proj.weight.data = layer.mlp.up_proj.weight.detach() * 1.5
    ctx_r, lr = extend_and_draft(ref)
    ctx_f, lf = extend_and_draft(fus)
    torch.testing.assert_close(lf, lr, **TOL)
    # Parameters replaced by new objects (load_state_dict(assign=True))
    sd = {k: v.detach().clone() * (0.5 if "q_proj" in k else 1.0) for k, v in head.state_dict().items()}
    head.load_state_dict(sd, assign=True)
    assert a.q_proj.weight.data_ptr() == sd["layers.0.self_attn.q_proj.weight"].data_ptr()
    ctx_r, lr = extend_and_draft(ref)
    ctx_f, lf = extend_and_draft(fus)
    torch.testing.assert_close(lf, lr, **TOL)
    torch.testing.assert_close(ctx_f, ctx_r, **TOL)
    assert a.q_proj.weight.untyped_storage().data_ptr() == a.k_proj.weight.untyped_storage().data_ptr()


def test_fallbacks():
    # attention bias: the fused GEMMs have no bias; weights left alone
    _, head, target = tiny_draft_pair(attention_bias=True)
    ptr = head.layers[0].self_attn.q_proj.weight.data_ptr()
    d = HeadDrafter(head, target, depth=DEPTH)
    assert not d.fused and "attention_bias" in d.fuse_note and d._proj.weights() is None
    assert head.layers[0].self_attn.q_proj.weight.data_ptr() == ptr
    extend_and_draft(d)
    # a hooked projection (adapters, offloading): not a plain nn.Linear call
    _, head, target = tiny_draft_pair()
    head.layers[1].mlp.up_proj.register_forward_hook(lambda m, i, o: o)
    d = HeadDrafter(head, target, depth=DEPTH)
    assert not d.fused and "layer 1" in d.fuse_note
    ctx_f, lf = extend_and_draft(d)
    ctx_r, lr = extend_and_draft(HeadDrafter(head, target, depth=DEPTH, fuse_projections=False))
    torch.testing.assert_close(lf, lr, rtol=0, atol=0)
    # a hook on a layer / attention / MLP module (the fused path would skip it silently)
    for where in ("layer", "self_attn", "mlp"):
        _, head, target = tiny_draft_pair()
        calls = []
        layer = head.layers[1]
        mod = layer if where == "layer" else getattr(layer, where)
        mod.register_forward_pre_hook(lambda m, i: calls.append(1))
        d = HeadDrafter(head, target, depth=DEPTH)
        assert not d.fused and "hooks" in d.fuse_note, where
        extend_and_draft(d)
        assert calls, where  # the unfused path ran the hook
    # a subclassed layer (its forward could differ)
    _, head, target = tiny_draft_pair()
    from jetspec_ext.draft_head import DraftLayer

    class MyLayer(DraftLayer):
        pass
    head.layers[0].__class__ = MyLayer
    d = HeadDrafter(head, target, depth=DEPTH)
    assert not d.fused and "layer 0" in d.fuse_note
    assert not HeadDrafter(head, target, depth=DEPTH, fuse_projections=False).fused


def test_hooked_fc_is_called():
    """The fused context extension calls fc's weight through op_select.linear only when fc is a
    plain bias-free nn.Linear without hooks; a hooked fc (adapters, offloading) is called as a
    module, so its hook runs, and the result equals the unfused drafter's."""
    _, head, target = tiny_draft_pair()
    calls = []
    head.fc.register_forward_hook(lambda m, i, o: calls.append(1))
    d = HeadDrafter(head, target, depth=DEPTH)
    assert d.fused
    ctx_f, lf = extend_and_draft(d)
    assert calls
    ctx_r, lr = extend_and_draft(HeadDrafter(head, target, depth=DEPTH, fuse_projections=False))
    torch.testing.assert_close(lf, lr, **TOL)
    torch.testing.assert_close(ctx_f, ctx_r, **TOL)


def test_training_after_fusing(tmp_path):
    """train_head on a head a drafter fused first: same losses and weights as training an
    unfused copy (the training forward uses the modules' own forward on the view weights);
    the checkpoint saves and reloads; the drafter then drafts with the trained weights."""
    from test_train import tiny_model, tiny_samples
    from jetspec_ext.train import TrainConfig, train_head

    model = tiny_model()
    samples = tiny_samples(model, n=4)
    torch.manual_seed(0)
    h_fused = JetSpecDraftHead.for_target(model.config, num_layers=2, block_size=4, mask_token_id=1)
    h_plain = JetSpecDraftHead.for_target(model.config, num_layers=2, block_size=4, mask_token_id=1)
    h_plain.load_state_dict(h_fused.state_dict())
    target = Target(model, h_fused.target_layer_ids)
    drafter = HeadDrafter(h_fused, target, depth=3)
    assert drafter.fused
    w0 = h_fused.layers[0].self_attn.k_proj.weight.detach().clone()
    cfg = TrainConfig(steps=4, batch_size=2, anchors=3, lr=3e-3, warmup=1, save_every=0, log_every=10)
    la, lb = [], []
    train_head(model, h_fused, samples, cfg, str(tmp_path / "a"), on_step=lambda s, l: la.append(l))
    train_head(model, h_plain, samples, cfg, str(tmp_path / "b"), on_step=lambda s, l: lb.append(l))
    assert la == lb
    for (n, p), q in zip(h_fused.named_parameters(), h_plain.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    assert not torch.equal(h_fused.layers[0].self_attn.k_proj.weight, w0)  # it trained
    back = JetSpecDraftHead.from_pretrained(str(tmp_path / "a" / "checkpoint"))
    for n, p in back.named_parameters():
        torch.testing.assert_close(p, h_plain.state_dict()[n], rtol=0, atol=0)
    # the drafter built before training drafts with the trained weights
    ref = HeadDrafter(h_plain, Target(model, h_plain.target_layer_ids, fuse_projections=False), depth=3,
                      fuse_projections=False)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        ctx = drafter.new_context(1, 16)
        ctx.copy_(torch.randn(ctx.shape, generator=g))
        ctx_r = ctx.clone()
        lens = torch.full((1,), 5, dtype=torch.int32)
        torch.testing.assert_close(drafter.draft(ctx, lens, torch.tensor([7])),
                                   ref.draft(ctx_r, lens, torch.tensor([7])), **TOL)


def _has_few_rows_kernel():
    import jetspec_ext.op_select as sel
    return (torch.cuda.is_available() and sel.FEW_ROWS_CUDA
            and torch.cuda.get_device_capability()[0] == 9)


@pytest.mark.skipif(not _has_few_rows_kernel(),
                    reason="needs the CUTLASS-built verify_linear (few-row routing) and an sm_90 GPU")
def test_cuda_fused_drafter_few_rows(monkeypatch):
    """On the GPU in bf16 the fused drafter's few-row GEMMs (fc, k|v, q|k|v, o_proj + residual,
    gate|up, down + residual, the LM head: 6..16 rows) go through verify_linear's transposed
    configurations; its context cache and draft logits stay as close to an fp32 run of the same
    head as the unfused drafter's (F.linear) are: error at most twice the unfused one's, plus
    slack for values that round exactly."""
    import copy

    import jetspec_ext

    model, head, target = tiny_draft_pair()
    calls = record_calls(monkeypatch, jetspec_ext, "verify_linear")
    ctx_ref, l_ref = extend_and_draft(HeadDrafter(head, target, depth=DEPTH, fuse_projections=False))
    errs = {}
    for fuse in (False, True):
        m = copy.deepcopy(model).to("cuda", torch.bfloat16)
        h = copy.deepcopy(head).to("cuda", torch.bfloat16)
        d = HeadDrafter(h, Target(m, h.target_layer_ids), depth=DEPTH, fuse_projections=fuse)
        assert d.fused == fuse
        before = len(calls)
        ctx, logits = extend_and_draft(d)
        assert (len(calls) > before) == fuse  # routed only on the fused path
        errs[fuse] = ((ctx.float().cpu() - ctx_ref).abs().max().item(),
                      (logits.float().cpu() - l_ref).abs().max().item())
    for i in (0, 1):
        assert errs[True][i] <= 2 * errs[False][i] + 1e-3, errs


def test_plain_linear_predicate_and_lm_head():
    """op_select.plain_linear, the one rule by which the fused paths (target layers, the head's
    fc, the LM heads) call a Linear's weight directly: only a bias-free nn.Linear without hooks or
    a patched forward; anything else is called as a module (so _lm_head_logits runs a patched
    forward)."""
    from torch import nn

    from jetspec_ext.op_select import plain_linear
    from jetspec_ext.target import _lm_head_logits

    class Sub(nn.Linear):
        pass

    assert plain_linear(nn.Linear(8, 4, bias=False))
    assert not plain_linear(nn.Linear(8, 4, bias=True))
    assert not plain_linear(Sub(8, 4, bias=False))
    hooked = nn.Linear(8, 4, bias=False)
    hooked.register_forward_pre_hook(lambda m, i: None)
    assert not plain_linear(hooked)
    patched = nn.Linear(8, 4, bias=False)
    patched.forward = lambda x: torch.zeros(*x.shape[:-1], 4)
    assert not plain_linear(patched)
    x = torch.randn(3, 8)
    assert torch.equal(_lm_head_logits(patched, x), torch.zeros(3, 4))
    plain = nn.Linear(8, 4, bias=False)
    torch.testing.assert_close(_lm_head_logits(plain, x), plain(x))
