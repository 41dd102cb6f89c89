"""Target(compile=True): the regional torch.compile of the target's forward (prologue, ONE
decoder-layer graph shared by every layer, epilogue) gives the eager forward's logits, tapped
features and KV cache contents, compiles each input shape once for all layers with no graph
break, and greedy generation is token-identical with and without it. The compiled target uses
the fused q|k|v / gate|up layer (the default) and the eager reference HF's own layer.forward
(fuse_projections=False), so these also check the fused path against HF's; one case compiles
the unfused layer too. Likewise the compiled drafter runs the head's fused projections and the
eager reference drafter the head layers' own forward.

CPU, fp32, a 2-layer tiny Qwen3 (compile time dominates: the module shares one compiled target
across its tests and reuses the shapes the generate tests compiled). Skipped when torch.compile
cannot run here (no inductor / no C++ compiler). A CUDA case checks capture in a CUDA graph."""
import shutil

import pytest
import torch

from conftest import requires_cuda
from decoder_support import hf_greedy, tiny_target
from jetspec_ext.decoder import HeadDrafter, generate, generate_ar
from jetspec_ext.draft_head import JetSpecDraftHead, pack_mask
from jetspec_ext.target import Target, compile_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not compile_available(), reason="torch.compile unavailable"),
]

VOCAB, LAYERS, NEW, BUDGET, DEPTH, WIDTH = 512, 2, 12, 8, 3, 2
PROMPT = [5, 9, 200, 31, 7, 77, 300, 12, 3, 99, 41]


def _counters():
    from torch._dynamo.utils import counters

    return dict(counters["stats"]), dict(counters["graph_break"])


@pytest.fixture(scope="module")
def models():
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("inductor's CPU backend needs a C++ compiler")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    from torch import _dynamo

    _dynamo.reset()
    model = tiny_target(tied=False, vocab=VOCAB, layers=LAYERS, hidden=64, head_dim=64, seed=3)
    torch.manual_seed(0)
    head = JetSpecDraftHead.for_target(model.config, num_layers=1, block_size=DEPTH + 1, target_layer_ids=[0, 1])
    eager = Target(model, head.target_layer_ids, fuse_projections=False)  # HF's layer.forward
    comp = Target(model, head.target_layer_ids, compile=True)  # fused projections (default)
    assert comp.fused and not eager.fused
    yield model, head, eager, comp
    torch.set_num_threads(n)


def test_generate_identical_with_and_without_compile(models):
    model, head, eager, comp = models
    before, _ = _counters()
    ref = generate(eager, HeadDrafter(head, eager, depth=DEPTH, fuse_projections=False), PROMPT, max_new_tokens=NEW,
                   budget=BUDGET, width=WIDTH)
    got = generate(comp, HeadDrafter(head, comp, depth=DEPTH), PROMPT, max_new_tokens=NEW,
                   budget=BUDGET, width=WIDTH)
    assert got.tokens == ref.tokens == [hf_greedy(model, PROMPT, NEW)]  # both lossless, not only alike
    assert [r.accept_len for r in got.rounds] == [r.accept_len for r in ref.rounds]
    assert generate_ar(comp, PROMPT, max_new_tokens=NEW).tokens == generate_ar(eager, PROMPT, max_new_tokens=NEW).tokens
    after, breaks = _counters()
    # target: two shapes (tree N=BUDGET and AR N=1) x three regions, the LAYERS layers sharing
    # one graph; drafter: the block forward and the round's context extension
    assert after.get("unique_graphs", 0) - before.get("unique_graphs", 0) == 8, after
    assert not breaks, breaks


def _cache_len(N):
    """The cache length generate() uses with a compiled target (rounded up to 1024 slots)."""
    S = len(PROMPT) + NEW + (N + DEPTH + 2 if N > 1 else 3)
    return -(-S // 1024) * 1024


def _random_tree(B, N, g):
    parents = torch.full((B, N), -1, dtype=torch.int64)
    bits = torch.zeros(B, N, N, dtype=torch.bool)
    depths = torch.zeros(B, N, dtype=torch.int64)
    for b in range(B):
        bits[b, 0, 0] = True
        for i in range(1, N):
            p = int(torch.randint(0, i, (1,), generator=g))
            parents[b, i] = p
            depths[b, i] = depths[b, p] + 1
            bits[b, i] = bits[b, p]
            bits[b, i, i] = True
    return pack_mask(bits), depths


@pytest.mark.parametrize("N", [BUDGET, 1], ids=["tree", "ar"])
@torch.inference_mode()  # inputs made as generate makes them (guards check inference tensors)
def test_compiled_forward_matches_eager(models, N):
    """Logits, tapped features and every layer's KV (the new slots and the untouched rest)."""
    _, head, eager, comp = models
    g = torch.Generator().manual_seed(N)
    # the cache length the generate test used for this N: no new compilation here
    S = _cache_len(N)
    P = 6
    kv = torch.randn(LAYERS, 2, 1, eager.num_kv_heads, S, eager.head_dim, generator=g)
    kv_c = kv.clone()
    lens = torch.full((1,), P, dtype=torch.int32)
    tokens = torch.randint(0, VOCAB, (1, N), generator=g)
    mask, depths = _random_tree(1, N, g)
    pos = P + depths
    before, _ = _counters()
    le, te = eager.forward(kv, lens, tokens, pos, mask, want_tapped=N > 1)
    lc, tc = comp.forward(kv_c, lens, tokens, pos, mask, want_tapped=N > 1)
    after, breaks = _counters()
    assert after.get("unique_graphs", 0) == before.get("unique_graphs", 0), "recompiled"
    assert not breaks
    torch.testing.assert_close(lc, le, rtol=1e-5, atol=1e-5)
    if N > 1:
        assert tc.shape == (1, N, 2 * model_hidden(eager))
        torch.testing.assert_close(tc, te, rtol=1e-5, atol=1e-5)
    else:
        assert tc is None and te is None
    torch.testing.assert_close(kv_c, kv, rtol=1e-5, atol=1e-5)
    # every new slot [P, P+N) written (each key / value vector changed from its random start in
    # every layer and head), the slots outside untouched, in both
    fresh = torch.randn(LAYERS, 2, 1, eager.num_kv_heads, S, eager.head_dim, generator=torch.Generator().manual_seed(N))
    assert (kv_c[..., P:P + N, :] != fresh[..., P:P + N, :]).any(dim=-1).all()
    keep = torch.ones(S, dtype=torch.bool)
    keep[P:P + N] = False
    torch.testing.assert_close(kv_c[..., keep, :], fresh[..., keep, :], rtol=0, atol=0)


def _draft_inputs(drafter, target, seed):
    """A random context cache (and its copy for the second drafter), lengths, tapped features of
    D+1 tokens and an anchor, at the generate test's shapes (so no new compilation)."""
    g = torch.Generator().manual_seed(seed)
    ctx = drafter.new_context(1, _cache_len(BUDGET))
    ctx.copy_(torch.randn(ctx.shape, generator=g))
    tapped = torch.randn(1, DEPTH + 1, 2 * model_hidden(target), generator=g)
    return ctx, ctx.clone(), torch.full((1,), 9, dtype=torch.int32), tapped, torch.tensor([17])


def _extend_and_draft_both(de, dc, seed):
    """One context extension and one draft by each drafter on the same inputs (:func:`_draft_inputs`,
    ``de``'s target shapes): ``(ctx, ctx_c, logits_e, logits_c)``."""
    ctx, ctx_c, lens, tapped, anchor = _draft_inputs(de, de.target, seed)
    de.extend(ctx, lens, tapped)
    dc.extend(ctx_c, lens, tapped)
    return ctx, ctx_c, de.draft(ctx, lens, anchor), dc.draft(ctx_c, lens, anchor)


@torch.inference_mode()
def test_compiled_drafter_matches_eager(models):
    """The head's block forward (draft logits, block KV) and context extension (context KV)."""
    _, head, eager, comp = models
    de = HeadDrafter(head, eager, depth=DEPTH, fuse_projections=False)  # the layers' own forward
    dc = HeadDrafter(head, comp, depth=DEPTH)  # fused q|k|v, gate|up, context k|v (the default)
    assert dc.compiled and not de.compiled and dc.fused and not de.fused
    before, _ = _counters()
    ctx, ctx_c, le, lc = _extend_and_draft_both(de, dc, seed=7)
    after, _ = _counters()
    assert after.get("unique_graphs", 0) == before.get("unique_graphs", 0), "recompiled"
    assert lc.shape == (1, DEPTH, VOCAB)
    torch.testing.assert_close(lc, le, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ctx_c, ctx, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_compiled_fp8_drafter_matches_eager(models):
    """HeadDrafter(fp8=True) compiled (its Fp8Weight copies go in as graph inputs) against the
    same drafter eager: the same quantized maths, so equal up to the compiled kernels' rounding
    (a scale computed in another order can move an activation by one e4m3 step)."""
    _, head, eager, comp = models
    de = HeadDrafter(head, eager, depth=DEPTH, fp8=True)
    dc = HeadDrafter(head, comp, depth=DEPTH, fp8=True)
    assert dc.compiled and not de.compiled and dc.fp8 and de.fp8
    _, breaks_before = _counters()
    ctx, ctx_c, le, lc = _extend_and_draft_both(de, dc, seed=8)
    torch.testing.assert_close(ctx_c, ctx, rtol=2e-2, atol=2e-2)
    assert lc.shape == (1, DEPTH, VOCAB)
    scale = le.abs().max()
    assert (lc - le).abs().max() <= 2e-2 * scale
    assert _counters()[1] == breaks_before, "graph breaks"


@torch.inference_mode()
def test_compiled_unfused_forward_matches_eager(models):
    """Target(compile=True, fuse_projections=False): HF's layer.forward compiled (one new layer
    graph for the AR shape; the prologue / epilogue graphs are the fused target's)."""
    model, head, eager, _ = models
    comp = Target(model, head.target_layer_ids, compile=True, fuse_projections=False)
    N, P = 1, 6
    S = _cache_len(N)
    g = torch.Generator().manual_seed(11)
    kv = torch.randn(LAYERS, 2, 1, eager.num_kv_heads, S, eager.head_dim, generator=g)
    kv_c = kv.clone()
    lens = torch.full((1,), P, dtype=torch.int32)
    tokens = torch.randint(0, VOCAB, (1, N), generator=g)
    mask, depths = _random_tree(1, N, g)
    le, _ = eager.forward(kv, lens, tokens, P + depths, mask, want_tapped=False)
    lc, _ = comp.forward(kv_c, lens, tokens, P + depths, mask, want_tapped=False)
    _, breaks = _counters()
    assert not breaks, breaks
    torch.testing.assert_close(lc, le, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kv_c, kv, rtol=1e-5, atol=1e-5)


def model_hidden(target):
    return target.config.hidden_size


@requires_cuda
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_compiled_forward_cuda_graph(fuse):
    """On the GPU (bf16): the compiled forward (fused projections or HF's layer.forward) runs
    inside a CUDA-graph capture after a warm-up and its replay matches the eager HF forward."""
    model = tiny_target(tied=False, vocab=VOCAB, layers=LAYERS, hidden=256, head_dim=128, seed=3)
    model = model.to("cuda", torch.bfloat16)
    eager = Target(model, [0, 1], fuse_projections=False)
    comp = Target(model, [0, 1], compile=True, fuse_projections=fuse)
    assert comp.fused == fuse
    N, P, S = 16, 40, 96
    g = torch.Generator().manual_seed(0)
    mask, depths = _random_tree(1, N, g)
    mask, pos = mask.cuda(), (P + depths).cuda()
    tokens = torch.randint(0, VOCAB, (1, N), generator=g).cuda()
    kv0 = torch.randn(LAYERS, 2, 1, eager.num_kv_heads, S, eager.head_dim, generator=g).to("cuda", torch.bfloat16)
    lens = torch.full((1,), P, dtype=torch.int32, device="cuda")
    kv_e, kv_c = kv0.clone(), kv0.clone()
    with torch.inference_mode():
        le, te = eager.forward(kv_e, lens, tokens, pos, mask)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            comp.forward(kv_c, lens, tokens, pos, mask)  # compiles (warm-up)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = comp.forward(kv_c, lens, tokens, pos, mask)
        kv_c.copy_(kv0)
        graph.replay()
        torch.cuda.synchronize()
    lc, tc = out
    torch.testing.assert_close(lc.float(), le.float(), rtol=6e-2, atol=6e-2)
    torch.testing.assert_close(tc.float(), te.float(), rtol=6e-2, atol=6e-2)
    torch.testing.assert_close(kv_c.float(), kv_e.float(), rtol=6e-2, atol=6e-2)
