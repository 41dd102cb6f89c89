"""jetspec::verify_linear: x (M, K) @ weight (N, K)^T for tree-verification row counts, against
the fp32 reference.

Accuracy rule (as for attention, FlashAttention's): the kernel's error against an fp32 reference
of the same inputs is at most twice that of PyTorch's own bf16 F.linear (cuBLAS on the GPU), plus
a tiny absolute slack for outputs that round exactly."""
import pytest
import torch
import torch.nn.functional as F

import jetspec_ext
from conftest import call_poisoned, check_programmatic_launch, ieee_fp32_matmul, record_calls
from linear_support import check_accuracy as _check_accuracy
from linear_support import inputs

op = jetspec_ext.verify_linear
ref = jetspec_ext.reference.verify_linear


def _has_cuda_kernel():
    return (torch.cuda.is_available()
            and torch._C._dispatch_has_kernel_for_dispatch_key("jetspec::verify_linear", "CUDA")
            and torch.cuda.get_device_capability()[0] == 9)


def _bf16_inputs(M, N, K, device, seed=0, lead=None):
    return inputs(M, N, K, torch.bfloat16, device, seed, lead)


requires_kernel = pytest.mark.skipif(not _has_cuda_kernel(),
                                     reason="needs the CUTLASS-built verify_linear and an sm_90 GPU")


def test_cpu_matches_reference():
    for M, N, K in ((1, 40, 64), (128, 96, 128), (37, 8, 8)):
        x, w = _bf16_inputs(M, N, K, "cpu", seed=M)
        torch.testing.assert_close(op(x, w), ref(x, w), rtol=0, atol=0)


def _devices():
    return ["cpu"] + (["cuda"] if _has_cuda_kernel() else [])


@pytest.mark.parametrize("device", _devices())
def test_leading_dims_and_noncontiguous_x(device):
    x, w = _bf16_inputs(0, 64, 96, device, seed=3, lead=(2, 3))
    out = op(x, w)
    assert out.shape == (2, 3, 64) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref(x, w), rtol=2e-2, atol=2e-2)
    xt = torch.randn(96, 20, device=device).to(torch.bfloat16).t()  # (20, 96), not contiguous
    torch.testing.assert_close(op(xt, w), ref(xt, w), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("device", _devices())
def test_bad_inputs(device):
    x, w = _bf16_inputs(4, 64, 64, device)
    with pytest.raises(RuntimeError, match="multiple of 8"):
        op(x[:, :60].contiguous(), w[:, :60].contiguous())
    with pytest.raises(RuntimeError, match="out_features must be a positive multiple of 8"):
        op(x, w[:60].contiguous())
    with pytest.raises(RuntimeError, match="in_features"):
        op(x, w[:, :32].contiguous())
    with pytest.raises(RuntimeError, match="dtype"):
        op(x, w.half())
    with pytest.raises(RuntimeError, match="must be one of"):
        op(x.half(), w.half())
    with pytest.raises(RuntimeError, match="contiguous"):
        op(x, torch.zeros(64, 128, dtype=torch.bfloat16, device=device)[:, ::2])
    with pytest.raises(RuntimeError, match="2 dimensions"):
        torch.ops.jetspec.verify_linear(x, w.unsqueeze(0))


@pytest.mark.parametrize("device", _devices())
def test_opcheck(device):
    x, w = _bf16_inputs(24, 40, 64, device, seed=5)
    torch.library.opcheck(torch.ops.jetspec.verify_linear.default, (x, w))


@requires_kernel
@pytest.mark.parametrize("M", [1, 16, 33, 100, 128, 129, 256])
@pytest.mark.parametrize("N,K", [(6144, 4096), (4096, 12288), (4096, 4096), (1000, 72), (40, 4104)])
def test_cuda_matches_reference(M, N, K):
    """Default configuration; M not a multiple of the 128-row tile, N not a multiple of the tile's
    columns, K not a multiple of the 64-wide k block (the TMA boxes' out-of-bounds fill)."""
    x, w = _bf16_inputs(M, N, K, "cuda", seed=M * 7 + N % 97)
    out = call_poisoned(lambda: op(x, w))
    assert out.shape == (M, N)
    _check_accuracy(out, x, w)


@requires_kernel
@pytest.mark.parametrize("cfg", ["t128", "t256", "t128c2", "p64c2", "s64", "s128"])
@pytest.mark.parametrize("sched,splits", [("streamk", None), ("dp", None), ("heuristic", None),
                                          ("splitk", "3"), ("splitk", "8")])
def test_cuda_configs_and_schedules(cfg, sched, splits, monkeypatch):
    """Every tile configuration with every schedule (3 K splits do not divide the 64 k blocks),
    twice in a row: deterministic, and the stream-K fixup workspace is reset each time."""
    monkeypatch.setenv("JETSPEC_VERIFY_CFG", cfg)
    monkeypatch.setenv("JETSPEC_VERIFY_SCHED", sched)
    if splits:
        monkeypatch.setenv("JETSPEC_VERIFY_SPLITS", splits)
    for M, N, K in ((128, 4096 + 40, 4096), (77, 2048, 12288), (256, 1000, 520)):
        x, w = _bf16_inputs(M, N, K, "cuda", seed=M + N)
        a = call_poisoned(lambda: op(x, w))
        _check_accuracy(a, x, w)
        torch.testing.assert_close(op(x, w), a, rtol=0, atol=0)


@requires_kernel
def test_cuda_graph_replay():
    x, w = _bf16_inputs(128, 4096, 4096, "cuda", seed=8)
    expect = op(x, w)
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        op(x, w)
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        out = op(x, w)
    x2, w2 = _bf16_inputs(128, 4096, 4096, "cuda", seed=9)
    for _ in range(3):
        g.replay()
        torch.testing.assert_close(out, expect, rtol=0, atol=0)
    x.copy_(x2)
    w.copy_(w2)
    g.replay()  # new inputs at the captured addresses
    torch.testing.assert_close(out, op(x2, w2), rtol=0, atol=0)


@requires_kernel
def test_bad_tuning_env(monkeypatch):
    x, w = _bf16_inputs(2, 64, 64, "cuda")
    monkeypatch.setenv("JETSPEC_VERIFY_CFG", "t999")
    with pytest.raises(RuntimeError, match="JETSPEC_VERIFY_CFG"):
        op(x, w)
    monkeypatch.setenv("JETSPEC_VERIFY_CFG", "t128")
    monkeypatch.setenv("JETSPEC_VERIFY_SCHED", "splitk")
    monkeypatch.setenv("JETSPEC_VERIFY_SPLITS", "0")
    with pytest.raises(RuntimeError, match="JETSPEC_VERIFY_SPLITS"):
        op(x, w)


@requires_kernel
@pytest.mark.parametrize("cfg", ["", "s64", "s128"])
@pytest.mark.parametrize("M", [1, 2, 5, 15, 16])
@pytest.mark.parametrize("N,K", [(151936 // 8, 4096), (4096, 20480), (1000, 72), (40, 4104), (2048, 136)])
def test_cuda_few_rows(cfg, M, N, K, monkeypatch):
    """The transposed few-row configurations (default up to 16 rows): W's rows in the tile, x's
    rows as the tile's 16 columns (fewer rows: out-of-bounds columns, never stored), N not a
    multiple of the 64 / 128 W rows of a tile, K not a multiple of the 128-wide k block;
    deterministic."""
    if cfg:
        monkeypatch.setenv("JETSPEC_VERIFY_CFG", cfg)
    x, w = _bf16_inputs(M, N, K, "cuda", seed=M * 13 + N + K)
    out = call_poisoned(lambda: op(x, w))
    assert out.shape == (M, N)
    _check_accuracy(out, x, w)
    torch.testing.assert_close(op(x, w), out, rtol=0, atol=0)


def test_decoder_routing(monkeypatch):
    """op_select.linear sends CUDA bf16 inputs of 65..128 rows with at most 4096 outputs, and of
    2..16 rows with any outputs (the draft head's block), on an sm_90 GPU through verify_linear
    (faster than cuBLAS there on the H200), unless JETSPEC_VERIFY_LINEAR=0 (both) or
    JETSPEC_FEW_ROWS_LINEAR=0 (the few rows); other shapes, inputs that want a gradient, and CPU
    tensors keep F.linear."""
    import os

    import jetspec_ext.op_select as sel
    if os.environ.get("JETSPEC_VERIFY_LINEAR", "1") == "0":
        assert sel.VERIFY_LINEAR_CUDA is False
    else:
        assert sel.VERIFY_LINEAR_CUDA is torch._C._dispatch_has_kernel_for_dispatch_key(
            "jetspec::verify_linear", "CUDA")
    assert sel.VERIFY_ROWS == (65, 128) and sel.VERIFY_MAX_N == 4096
    # which path ran is counted, not only inferred from the values (at small K the kernel and
    # F.linear can round to the same bf16 outputs)
    calls = record_calls(monkeypatch, jetspec_ext, "verify_linear")
    x, w = _bf16_inputs(128, 64, 64, "cpu", seed=4)
    torch.testing.assert_close(sel.linear(x, w), F.linear(x, w), rtol=0, atol=0)
    assert len(calls) == 0  # CPU tensors: F.linear
    if _has_cuda_kernel():
        monkeypatch.setattr(sel, "VERIFY_LINEAR_CUDA", True)
        monkeypatch.setattr(sel, "FEW_ROWS_CUDA", True)
        assert sel.FEW_ROWS == (2, 16)
        for M, N, routed in ((128, 4096, True), (65, 64, True), (64, 64, False), (129, 64, False),
                             (128, 4104, False), (16, 8192, True), (2, 64, True), (17, 4096, False)):
            xc, wc = _bf16_inputs(M, N, 256, "cuda", seed=M + N)
            expect = op(xc, wc) if routed else F.linear(xc, wc)
            before = len(calls)
            torch.testing.assert_close(sel.linear(xc.unsqueeze(0), wc), expect.unsqueeze(0), rtol=0, atol=0)
            assert len(calls) - before == int(routed), (M, N, routed)
        xc, wc = _bf16_inputs(16, 4096, 256, "cuda", seed=3)
        wc.requires_grad_(True)  # a gradient is wanted: F.linear (verify_linear has no backward)
        before = len(calls)
        torch.testing.assert_close(sel.linear(xc, wc), F.linear(xc, wc), rtol=0, atol=0)
        monkeypatch.setattr(sel, "FEW_ROWS_CUDA", False)
        xc, wc = _bf16_inputs(16, 4096, 256, "cuda", seed=2)
        torch.testing.assert_close(sel.linear(xc, wc), F.linear(xc, wc), rtol=0, atol=0)
        monkeypatch.setattr(sel, "VERIFY_LINEAR_CUDA", False)
        xc, wc = _bf16_inputs(128, 4096, 256, "cuda", seed=1)
        torch.testing.assert_close(sel.linear(xc, wc), F.linear(xc, wc), rtol=0, atol=0)
        assert len(calls) == before  # gradient wanted, few rows off, verify_linear off: F.linear


def _residual_case(M, N, K, device, seed):
    x, w = _bf16_inputs(M, N, K, device, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    r = torch.randn(M, N, generator=g).to(torch.bfloat16).to(device)
    return x, w, r


def _check_residual_accuracy(out, x, w, r):
    """Against the fp32 reference: at most twice the error of the unfused bf16 maths (product
    rounded, then the sum rounded), plus slack for outputs that round exactly."""
    with ieee_fp32_matmul():
        exact = r.float() + x.float() @ w.float().t()
    unfused_err = ((r + F.linear(x, w)).float() - exact).abs().max().item()
    err = (out.float() - exact).abs().max().item()
    assert torch.isfinite(out).all()
    assert err <= 2 * unfused_err + 1e-6, (err, unfused_err)


def test_cpu_residual_matches_reference():
    x, w, r = _residual_case(37, 40, 64, "cpu", seed=2)
    out = op(x, w, r)
    torch.testing.assert_close(out, ref(x, w, r), rtol=0, atol=0)
    lead = op(x.view(1, 37, 64), w, r.view(1, 37, 40))  # leading dimensions
    assert lead.shape == (1, 37, 40)
    torch.testing.assert_close(lead.view(37, 40), out, rtol=0, atol=0)


@pytest.mark.parametrize("device", _devices())
def test_bad_residual(device):
    x, w, r = _residual_case(4, 64, 64, device, seed=3)
    with pytest.raises(RuntimeError, match="residual"):
        torch.ops.jetspec.verify_linear(x, w, r[:, :32].contiguous())
    with pytest.raises(RuntimeError, match="residual"):
        torch.ops.jetspec.verify_linear(x, w, r.half())
    with pytest.raises(RuntimeError, match="residual"):
        torch.ops.jetspec.verify_linear(x, w, torch.zeros(64, 4, dtype=torch.bfloat16, device=device).t())


@pytest.mark.parametrize("device", _devices())
def test_opcheck_residual(device):
    x, w, r = _residual_case(24, 40, 64, device, seed=6)
    torch.library.opcheck(torch.ops.jetspec.verify_linear.default, (x, w, r))


@requires_kernel
@pytest.mark.parametrize("cfg", ["", "t128", "p64c2", "s64", "s128"])
@pytest.mark.parametrize("M,N,K", [(128, 4096, 4096), (100, 4096, 12288), (65, 1000, 72), (256, 2048, 520),
                                   (16, 4096, 4096), (15, 4096, 12288), (3, 1000, 72)])
def test_cuda_residual(cfg, M, N, K, monkeypatch):
    """The residual in the epilogue (p64c2 / s64 / s128 and the default up to 128 rows use their
    r variants: the transposed ones read the residual column-major like they write the output;
    t128 and the default beyond 128 rows add it after the GEMM), deterministic."""
    if cfg:
        monkeypatch.setenv("JETSPEC_VERIFY_CFG", cfg)
    x, w, r = _residual_case(M, N, K, "cuda", seed=M + K)
    out = call_poisoned(lambda: op(x, w, r))
    _check_residual_accuracy(out, x, w, r)
    torch.testing.assert_close(op(x, w, r), out, rtol=0, atol=0)


@requires_kernel
def test_linear_add_routing(monkeypatch):
    """op_select.linear_add: through verify_linear with the residual where op_select.linear
    would route to it, else residual + linear(x, weight) exactly."""
    import jetspec_ext.op_select as sel

    monkeypatch.setattr(sel, "VERIFY_LINEAR_CUDA", True)
    for M, N, routed in ((128, 4096, True), (64, 64, False), (128, 4104, False)):
        x, w, r = _residual_case(M, N, 256, "cuda", seed=M + N)
        expect = op(x, w, r) if routed else r + F.linear(x, w)
        torch.testing.assert_close(sel.linear_add(r.unsqueeze(0), x.unsqueeze(0), w), expect.unsqueeze(0),
                                   rtol=0, atol=0)


@requires_kernel
@pytest.mark.parametrize("cfg", ["", "p64c2", "s64"])
def test_cuda_programmatic_launch_sees_previous_writes(cfg, monkeypatch):
    """The ping-pong configurations are launched programmatically (JETSPEC_PDL, on by default): the
    GEMM may start before the kernel ahead of it in the stream has finished, and its loads must
    still see that kernel's writes (conftest.check_programmatic_launch), with and without the
    residual."""
    if cfg:
        monkeypatch.setenv("JETSPEC_VERIFY_CFG", cfg)
    M = 16 if cfg.startswith("s") else 128  # the transposed configuration at its few rows
    cases = [_residual_case(M, 4096, 4096, "cuda", seed=s) for s in (11, 12)]
    check_programmatic_launch(lambda x, w, r: (op(x, w), op(x, w, r)), cases, monkeypatch)
