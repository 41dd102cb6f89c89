"""fp8 drafting (``HeadDrafter(fp8=True)``, :mod:`jetspec_ext.fp8`): e4m3 weight copies with
per-output-row scales, activations quantized per row at each GEMM.

Checked: the quantizer (every element within half an e4m3 step of its value, each row's largest
magnitude at 448, zero rows stay zero); ``fp8_linear`` against the same maths done in fp64 from
the quantized operands (CPU reference path always; the CUDA path, torch._scaled_mm, on a GPU with
fp8 tensor cores) and within the quantization bound of the unquantized ``F.linear``; the drafter
runs every streamed GEMM of the draft (4 per layer + the LM head) and of the context extension
(fc + one k|v per layer) through fp8_linear; its greedy output is token-identical to HF's
``generate`` (the target verifies); its draft logits are close to the bf16 drafter's but not
equal; bad settings raise; the copies follow moved weights and ``refresh_fp8``."""
import pytest
import torch
import torch.nn.functional as F

from conftest import record_calls
from decoder_support import extend_and_draft, hf_greedy, tiny_draft_pair
from jetspec_ext import fp8 as fp8_mod
from jetspec_ext.decoder import HeadDrafter, generate
from jetspec_ext.fp8 import E4M3_MAX, Fp8Weight, fp8_linear, quantize_rows, quantize_weight
from jetspec_ext.target import Target

DEPTH = 5  # tiny_draft_pair's heads: block size DEPTH + 1
PROMPT = [5, 9, 200, 31, 7, 77, 300, 12, 3, 99, 41]

pytestmark = pytest.mark.usefixtures("one_thread")


def _e4m3_bound(v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Half an e4m3 step at |v| (in units where the row's scale is ``scale``): relative 2^-4 for
    normal values, absolute 2^-10 * scale below e4m3's smallest normal (2^-6)."""
    return torch.maximum(v.abs() * 2.0 ** -4, scale * 2.0 ** -10) * (1 + 1e-6)


def test_quantize_rows_bounds():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 96, generator=g, dtype=torch.float64) * torch.logspace(-6, 3, 64, dtype=torch.float64)[:, None]
    w[5] = 0.0
    q, s = quantize_rows(w)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32 and s.shape == (64,)
    deq = q.double() * s.double()[:, None]
    assert ((deq - w).abs() <= _e4m3_bound(w, s.double()[:, None])).all()
    amax_q = q.float().abs().amax(dim=1)
    assert torch.equal(amax_q[torch.arange(64) != 5], torch.full((63,), E4M3_MAX))
    assert torch.equal(deq[5], torch.zeros(96, dtype=torch.float64))
    w8 = quantize_weight(w.float())
    rows = w8.narrow(0, 2, 3)  # the k|v rows of a fused weight, with their own scales
    assert torch.equal(rows.q.float(), w8.q[2:5].float()) and torch.equal(rows.scale, w8.scale[2:5])
    with pytest.raises(ValueError, match="only dim 0"):
        w8.narrow(1, 0, 16)
    with pytest.raises(ValueError, match="2-D"):
        quantize_weight(torch.zeros(3, 4, 5))
    bad = torch.ones(4, 16)
    bad[1, 3] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        quantize_weight(bad)


def _exact(x: torch.Tensor, w: Fp8Weight) -> torch.Tensor:
    """The fp8_linear maths in fp64 from the quantized operands."""
    x8, sx = quantize_rows(x.reshape(-1, x.shape[-1]))
    y = (x8.double() @ w.q.double().t()) * sx.double()[:, None] * w.scale.double()[None, :]
    return y.reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_linear_cpu(dtype):
    g = torch.Generator().manual_seed(1)
    W = torch.randn(48, 64, generator=g) / 8
    w = quantize_weight(W)
    x = torch.randn(2, 7, 64, generator=g).to(dtype)
    x[0, 3] = 0.0
    y = fp8_linear(x, w)
    assert y.dtype == dtype and y.shape == (2, 7, 48)
    exact = _exact(x, w)
    tol = (2.0 ** -8 if dtype == torch.bfloat16 else 1e-6) * exact.abs() + 1e-6
    assert ((y.double() - exact).abs() <= tol).all()
    assert torch.equal(y[0, 3], torch.zeros(48, dtype=dtype))
    # within the quantization bound of the unquantized product: each of x's and W's elements
    # is off by at most half an e4m3 step (relative 2^-4 at normal values)
    ref = F.linear(x.double(), W.double())
    bound = 2 * 2.0 ** -4 * (x.double().abs() @ W.double().abs().t()) + 1e-3
    assert ((y.double() - ref).abs() <= bound).all()
    assert not torch.allclose(y.double(), ref, rtol=0, atol=1e-7)  # the quantization is real
    with pytest.raises(ValueError, match="features"):
        fp8_linear(torch.zeros(3, 32), w)


def _cuda_fp8():
    return torch.cuda.is_available() and fp8_mod.fp8_cuda_problem("cuda") is None


@pytest.mark.skipif(not _cuda_fp8(), reason="needs a CUDA GPU with fp8 tensor cores (sm_89+)")
@pytest.mark.parametrize("shape", [(1, 15, 4096, 151936), (1, 16, 256, 512), (2, 3, 128, 48)])
def test_fp8_linear_cuda(shape):
    """torch._scaled_mm path against the same maths in fp64 from the operands the GPU quantized
    (fresh random inputs; the output is a new tensor, so there is nothing to poison). Bound: the
    bf16 output's rounding (2^-8 |y|) plus 2^-9 of sum |x_q w_q| s_x s_w: Hopper's fp8 MMA keeps
    fewer accumulator bits than fp32 inside its instructions (cuBLASLt promotes to fp32 between
    them); measured on the H200 up to 9e-4 of that sum (first run of this test), ~30x below the
    fp8 quantization's own error. A wrong scale, layout or operand would be off by O(sum).
    Also: the GPU's quantizer against the CPU's (the GPU divides by 448 as a multiply by its
    rounded reciprocal: scales 1 ulp apart, so a code may differ by one e4m3 step)."""
    B, M, K, N = shape
    g = torch.Generator(device="cuda").manual_seed(2)
    W = (torch.randn(N, K, device="cuda", generator=g) * K ** -0.5).to(torch.bfloat16)
    w = quantize_weight(W)
    x = torch.randn(B, M, K, device="cuda", generator=g).to(torch.bfloat16)
    y = fp8_linear(x, w)
    x8, sx = quantize_rows(x.reshape(-1, K))  # what fp8_linear computed on the GPU
    torch.cuda.synchronize()
    assert y.dtype == torch.bfloat16 and y.shape == (B, M, N)
    x8, sx, wq, sw = x8.cpu().double(), sx.cpu().double(), w.q.cpu().double(), w.scale.cpu().double()
    exact = ((x8 @ wq.t()) * sx[:, None] * sw[None, :]).reshape(B, M, N)
    mag = ((x8.abs() @ wq.abs().t()) * sx[:, None] * sw[None, :]).reshape(B, M, N)
    err = (y.cpu().double() - exact).abs()
    ok = err <= 2.0 ** -8 * exact.abs() + 2.0 ** -9 * mag + 1e-30
    assert ok.all(), (f"max err {err.max().item():.3e}; worst / |exact| {(err / exact.abs()).max().item():.3e}, "
                      f"/ mag {(err / mag).max().item():.3e}; {int((~ok).sum())} of {ok.numel()} outside")
    # the GPU quantizer against the CPU one (same function): codes within one e4m3 step
    x8_cpu, sx_cpu = quantize_rows(x.cpu().reshape(-1, K))
    torch.testing.assert_close(sx_cpu.double(), sx, rtol=2.5e-7, atol=0)
    diff = (x8_cpu.double() - x8).abs()
    assert (diff <= x8.abs() * 2.0 ** -3 + 2.0 ** -9).all()
    print(f"GPU vs CPU quantizer: {int((diff > 0).sum())} of {diff.numel()} codes differ")


def test_fp8_drafter_runs_every_gemm_in_fp8(monkeypatch):
    _, head, target = tiny_draft_pair(head_layers=2)
    d = HeadDrafter(head, target, depth=DEPTH, fp8=True)
    calls = record_calls(monkeypatch, fp8_mod, "fp8_linear")
    import jetspec_ext.op_select as sel
    monkeypatch.setattr(sel, "fp8_linear", fp8_mod.fp8_linear)  # the name op_select calls
    ctx_8, logits_8 = extend_and_draft(d)
    # extension: fc + one k|v GEMM per layer; draft: q|k|v, o, gate|up, down per layer + LM head
    assert len(calls) == (1 + 2) + (4 * 2 + 1)
    ref = HeadDrafter(head, target, depth=DEPTH)
    ctx_r, logits_r = extend_and_draft(ref)
    assert logits_8.shape == logits_r.shape and logits_8.dtype == logits_r.dtype
    assert not torch.equal(logits_8, logits_r) and not torch.equal(ctx_8, ctx_r)
    scale = logits_r.abs().max()
    assert (logits_8 - logits_r).abs().max() <= 0.1 * scale  # close: same head, fp8 maths


def test_fp8_drafter_greedy_is_the_targets_output():
    model, head, target = tiny_draft_pair(head_layers=1)
    ref_hf = hf_greedy(model, PROMPT, 20)
    kw = dict(max_new_tokens=20, budget=8, width=2)
    r = generate(target, HeadDrafter(head, target, depth=3, fp8=True), PROMPT, **kw)
    assert r.tokens[0] == ref_hf


def test_fp8_drafter_on_the_demo_pair():
    """The bundled trained pair (long acceptance, real tokenizer and prompt): the fp8 drafter's
    greedy output is HF's, token for token, with rounds accepting several tokens (fp32, CPU)."""
    from jetspec_ext.demo import has_demo, load_demo_head, load_demo_target
    if not has_demo("head"):
        pytest.skip("the bundled demo pair is not installed")
    model, tok = load_demo_target(device="cpu")
    head = load_demo_head(device="cpu", dtype=torch.float32)
    target = Target(model, head.target_layer_ids)
    ids = tok("def fibonacci(n):\n    ")["input_ids"]
    ref = hf_greedy(model, ids, 40)
    r = generate(target, HeadDrafter(head, target, fp8=True), ids, max_new_tokens=40, budget=32, width=4)
    assert r.tokens[0] == ref
    assert r.mean_accept_len > 1.5, r.mean_accept_len


def test_fp8_drafter_bad_settings():
    _, head, target = tiny_draft_pair()
    with pytest.raises(ValueError, match="fp8 drafting: needs the fused projections"):
        HeadDrafter(head, target, depth=DEPTH, fuse_projections=False, fp8=True)
    _, head, target = tiny_draft_pair()
    head.fc.register_forward_hook(lambda m, i, o: o)
    with pytest.raises(ValueError, match="fp8 drafting: fc must be a plain"):
        HeadDrafter(head, target, depth=DEPTH, fp8=True)
    # sizes torch._scaled_mm cannot take (an MLP width of 40): refused on every device alike
    _, head, target = tiny_draft_pair(head_layers=1, intermediate_size=40)
    with pytest.raises(ValueError, match="layer 0 gate_proj: .* multiples of 16.*40 x 64"):
        HeadDrafter(head, target, depth=DEPTH, fp8=True)
    HeadDrafter(head, target, depth=DEPTH)  # the plain drafter takes it


def test_scaled_mm_shape_rule():
    """The CUDA path's size rule (checked by HeadDrafter(fp8=True) on CUDA, before anything runs)."""
    from jetspec_ext.fp8 import scaled_mm_shape_problem
    assert scaled_mm_shape_problem([("a", torch.zeros(32, 64)), ("b", torch.zeros(151936, 4096))]) is None
    why = scaled_mm_shape_problem([("a", torch.zeros(32, 64)), ("fc", torch.zeros(48, 40))])
    assert why is not None and why.startswith("fc:") and "48 x 40" in why
    assert "100 x 64" in scaled_mm_shape_problem([("lm", torch.zeros(100, 64))])


def test_fp8_copies_follow_the_weights():
    model, head, target = tiny_draft_pair()
    d = HeadDrafter(head, target, depth=DEPTH, fp8=True)
    _, l0 = extend_and_draft(d)
    with torch.no_grad():  # in place: not seen until refresh_fp8
        model.lm_head.weight.mul_(2.0)
    _, l1 = extend_and_draft(d)
    assert torch.equal(l1, l0)
    d.refresh_fp8()
    _, l2 = extend_and_draft(d)
    torch.testing.assert_close(l2, 2 * l0, rtol=1e-5, atol=1e-5)  # power-of-two scale: same codes
    # a weight moved to new storage: quantized again on the next call
    with torch.no_grad():
        model.lm_head.weight.data = model.lm_head.weight.detach() * 0.5
    _, l3 = extend_and_draft(d)
    torch.testing.assert_close(l3, l0, rtol=1e-5, atol=1e-5)
