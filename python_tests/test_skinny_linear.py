"""jetspec::skinny_linear: x (M <= 16, K) @ weight (N, K)^T, against the fp32 reference.

Accuracy rule (as for attention, FlashAttention's): the kernel's error against an fp32 reference
of the same inputs is at most twice that of PyTorch's own bf16 / fp16 F.linear (cuBLAS on the
GPU), plus a tiny absolute slack for outputs that round exactly."""
import pytest
import torch
import torch.nn.functional as F

import jetspec_ext
from conftest import call_poisoned, record_calls, requires_cuda
from linear_support import check_accuracy as _check_accuracy
from linear_support import inputs

op = jetspec_ext.skinny_linear
ref = jetspec_ext.reference.skinny_linear


def test_cpu_matches_reference():
    for M, N, K in ((1, 40, 64), (16, 96, 128), (5, 33, 32)):
        x, w = inputs(M, N, K, torch.bfloat16, "cpu", seed=M)
        torch.testing.assert_close(op(x, w), ref(x, w), rtol=0, atol=0)


def test_leading_dims_and_noncontiguous_x(device):
    x, w = inputs(0, 64, 96, torch.bfloat16, device, seed=3, lead=(2, 3))
    out = op(x, w)
    assert out.shape == (2, 3, 64) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref(x, w), rtol=2e-2, atol=2e-2)
    xt = torch.randn(96, 4, device=device).to(torch.bfloat16).t()  # (4, 96), not contiguous
    torch.testing.assert_close(op(xt, w), ref(xt, w), rtol=2e-2, atol=2e-2)


def test_bad_inputs(device):
    x, w = inputs(4, 64, 64, torch.bfloat16, device)
    with pytest.raises(RuntimeError, match="1..16 rows"):
        op(torch.zeros(17, 64, dtype=torch.bfloat16, device=device), w)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        op(x[:, :48].contiguous(), w[:, :48].contiguous())
    with pytest.raises(RuntimeError, match="in_features"):
        op(x, w[:, :32].contiguous())
    with pytest.raises(RuntimeError, match="dtype"):
        op(x, w.half())
    with pytest.raises(RuntimeError, match="must be one of"):
        op(x.float(), w.float())
    with pytest.raises(RuntimeError, match="contiguous"):
        op(x, torch.zeros(64, 128, dtype=torch.bfloat16, device=device)[:, ::2])
    with pytest.raises(RuntimeError, match="2 dimensions"):
        torch.ops.jetspec.skinny_linear(x, w.unsqueeze(0))


def test_opcheck(device):
    x, w = inputs(3, 40, 64, torch.bfloat16, device, seed=5)
    torch.library.opcheck(torch.ops.jetspec.skinny_linear.default, (x, w))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [1, 2, 3, 4, 7, 16])
@pytest.mark.parametrize("N,K", [(6144, 4096), (4096, 12288), (24576, 4096), (4096, 4096), (40, 32),
                                 (1001, 96), (37, 544)])
def test_cuda_matches_reference(M, N, K, dtype):
    """M <= 4 runs the CUDA-core kernel (skinny_gemv.cuh), more rows the tensor-core one; N not
    a multiple of the rows per CTA, K not a multiple of the 256-element chunk."""
    x, w = inputs(M, N, K, dtype, "cuda", seed=M * 7 + N % 97)
    out = call_poisoned(lambda: op(x, w))
    assert out.shape == (M, N)
    _check_accuracy(out, x, w)


@requires_cuda
@pytest.mark.parametrize("M", [1, 4])
def test_cuda_tensor_core_path_for_few_rows(M, monkeypatch):
    """JETSPEC_SKINNY_GEMV=0 sends 1..4 rows to the tensor-core kernel: it must agree too."""
    monkeypatch.setenv("JETSPEC_SKINNY_GEMV", "0")
    for N, K in ((4096, 4096), (1001, 96)):
        x, w = inputs(M, N, K, torch.bfloat16, "cuda", seed=M + N)
        _check_accuracy(call_poisoned(lambda: op(x, w)), x, w)


@requires_cuda
@pytest.mark.parametrize("cfg", ["4x2", "2x4", "1x8"])
@pytest.mark.parametrize("ksplit", ["0", "1", "3", "5"])
def test_cuda_tilings_and_k_splits(cfg, ksplit, monkeypatch):
    """Every tiling (JETSPEC_SKINNY_CFG) with the automatic, no, and forced K splits across CTAs
    (JETSPEC_SKINNY_KSPLIT; 5 does not divide the 128 k blocks), twice in a row (the split-K
    arrival counters must be back at zero after each launch). JETSPEC_SKINNY_GEMV=0: one row would
    otherwise take the CUDA-core kernel, which has no tiling or K split."""
    monkeypatch.setenv("JETSPEC_SKINNY_GEMV", "0")
    monkeypatch.setenv("JETSPEC_SKINNY_CFG", cfg)
    monkeypatch.setenv("JETSPEC_SKINNY_KSPLIT", ksplit)
    for M in (1, 16):
        x, w = inputs(M, 4096 + 40, 4096, torch.bfloat16, "cuda", seed=M + int(ksplit))
        a = call_poisoned(lambda: op(x, w))
        _check_accuracy(a, x, w)
        torch.testing.assert_close(op(x, w), a, rtol=0, atol=0)  # deterministic split order


@requires_cuda
def test_cuda_split_k_graph_replay(monkeypatch):
    """The K-split arrival counters under CUDA-graph replay: 8 rows, the tensor-core kernel (1..4
    rows take the CUDA-core kernel, which never splits K)."""
    monkeypatch.setenv("JETSPEC_SKINNY_KSPLIT", "4")
    x, w = inputs(8, 1024, 4096, torch.bfloat16, "cuda", seed=8)
    expect = op(x, w)  # grows the counter buffer outside the capture
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        op(x, w)
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        out = op(x, w)
    for _ in range(3):
        g.replay()
        torch.testing.assert_close(out, expect, rtol=0, atol=0)


def test_bad_tuning_env(monkeypatch):
    """The tiling variables belong to the tensor-core kernel, i.e. 5..16 rows (1..4 rows take the
    CUDA-core kernel, which has no tiling to tune and does not read them), so 8 rows here."""
    if not (torch.cuda.is_available() and jetspec_ext.cuda_compiled()):
        pytest.skip("the tuning variables are read by the CUDA launcher")
    x, w = inputs(8, 64, 64, torch.bfloat16, "cuda")
    monkeypatch.setenv("JETSPEC_SKINNY_CFG", "8x8")
    with pytest.raises(RuntimeError, match="JETSPEC_SKINNY_CFG"):
        op(x, w)
    monkeypatch.setenv("JETSPEC_SKINNY_CFG", "4x2")
    monkeypatch.setenv("JETSPEC_SKINNY_KSPLIT", "-1")
    with pytest.raises(RuntimeError, match="JETSPEC_SKINNY_KSPLIT"):
        op(x, w)


@requires_cuda
def test_cuda_large_values_and_rows_beyond_m():
    """Rows of the m16 tile past M must not leak into the output (their x loads are skipped):
    7 rows (the tensor-core kernel; 1..4 rows take the CUDA-core one), then the same rows with 9
    huge ones after them, which must not change the first 7 bit for bit; large magnitudes keep fp32
    accumulation honest."""
    x, w = inputs(7, 296, 256, torch.bfloat16, "cuda", seed=11)
    x = x * 50
    out = op(x, w)
    _check_accuracy(out, x, w)
    full = torch.cat([x, torch.full((9, 256), 1e4, dtype=x.dtype, device="cuda")])
    torch.testing.assert_close(op(full, w)[:7], out, rtol=0, atol=0)


@requires_cuda
def test_cuda_graph_capture():
    x, w = inputs(4, 512, 256, torch.bfloat16, "cuda", seed=2)
    expect = op(x, w)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        op(x, w)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = op(x, w)
    x2, _ = inputs(4, 512, 256, torch.bfloat16, "cuda", seed=3)
    g.replay()
    torch.testing.assert_close(out, expect, rtol=0, atol=0)
    x.copy_(x2)
    g.replay()
    torch.testing.assert_close(out, op(x2, w), rtol=0, atol=0)


def test_compile_sees_the_op(device):
    x, w = inputs(2, 64, 64, torch.bfloat16, device, seed=9)
    f = torch.compile(lambda a, b: op(a, b) * 2, fullgraph=True, backend="eager")
    torch.testing.assert_close(f(x, w), op(x, w) * 2, rtol=0, atol=0)



def test_decoder_routing(monkeypatch):
    """op_select.linear (the target's and draft head's fused layers) sends CUDA bf16 inputs of ONE
    row through the op (faster than cuBLAS there on the H200), unless JETSPEC_SKINNY_LINEAR=0;
    more rows, and CPU tensors, keep F.linear."""
    import os

    import jetspec_ext.op_select as sel
    has_cuda_kernel = torch._C._dispatch_has_kernel_for_dispatch_key("jetspec::skinny_linear", "CUDA")
    if os.environ.get("JETSPEC_SKINNY_LINEAR", "1") == "0":
        assert sel.SKINNY_LINEAR_CUDA is False
    else:
        assert sel.SKINNY_LINEAR_CUDA is has_cuda_kernel
    assert sel.ROUTED_MAX_ROWS == 1
    # which path ran is counted, not inferred from the values (at K = 64 the kernel and F.linear
    # round to the same bf16 outputs, so equal values would not show the routing)
    calls = record_calls(monkeypatch, jetspec_ext, "skinny_linear")
    x, w = inputs(1, 64, 64, torch.bfloat16, "cpu", seed=4)
    torch.testing.assert_close(sel.linear(x, w), F.linear(x, w), rtol=0, atol=0)
    assert len(calls) == 0  # CPU tensors: F.linear
    if torch.cuda.is_available() and jetspec_ext.cuda_compiled():
        monkeypatch.setattr(sel, "SKINNY_LINEAR_CUDA", True)
        xc, wc = x.cuda(), w.cuda()
        torch.testing.assert_close(sel.linear(xc, wc), op(xc, wc), rtol=0, atol=0)
        assert len(calls) == 1  # one row: the op
        x2 = torch.randn(2, 64, device="cuda").to(torch.bfloat16)  # more than one row: not this op
        sel.linear(x2, wc)
        assert len(calls) == 1
        monkeypatch.setattr(sel, "SKINNY_LINEAR_CUDA", False)
        torch.testing.assert_close(sel.linear(xc, wc), F.linear(xc, wc), rtol=0, atol=0)
        assert len(calls) == 1  # switched off: F.linear
