"""The test suite's own helpers (conftest): those that guard the accuracy tests' fp32 references
(ieee_fp32_matmul: full fp32 inside, the previous TF32 setting after; the TF32 state the autouse
leak guard saves and restores), and call_poisoned, which makes an op's CUDA outputs start as
garbage."""
import pytest
import torch

import conftest
from conftest import HAS_CUDA, call_poisoned, ieee_fp32_matmul


def test_ieee_fp32_matmul_sets_and_restores():
    before = conftest._tf32_state()
    m = torch.backends.cuda.matmul
    if conftest._NEW_TF32_API:
        m.fp32_precision = "tf32"  # a test (or code it runs) that turned TF32 on
        with ieee_fp32_matmul():
            assert m.fp32_precision == "ieee"
        assert m.fp32_precision == "tf32"
    else:
        m.allow_tf32 = True
        with ieee_fp32_matmul():
            assert m.allow_tf32 is False
        assert m.allow_tf32 is True
    conftest._set_tf32_state(before)
    assert conftest._tf32_state() == before


@pytest.mark.skipif(not HAS_CUDA, reason="TF32 only changes results on a GPU")
def test_ieee_fp32_matmul_gives_fp32_results_under_tf32():
    """With TF32 on, a GPU fp32 matmul is off from the fp64 product by far more than fp32
    rounding; inside ieee_fp32_matmul it is not (sm_80+ GPUs, where TF32 exists)."""
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("no TF32 before sm_80")
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 512, generator=g), torch.randn(512, 256, generator=g)
    exact = (a.double() @ b.double())
    ac, bc = a.cuda(), b.cuda()
    before = conftest._tf32_state()
    try:  # restored here, so that the leak guard's warning is kept for real leaks
        conftest._set_matmul_tf32(True)
        err_tf32 = ((ac @ bc).double().cpu() - exact).abs().max().item()
        with ieee_fp32_matmul():
            err_ieee = ((ac @ bc).double().cpu() - exact).abs().max().item()
    finally:
        conftest._set_tf32_state(before)
    assert err_ieee < 1e-3 < err_tf32, (err_ieee, err_tf32)


def test_call_poisoned_on_the_cpu_is_one_call():
    calls = []
    out = call_poisoned(lambda: calls.append(1) or torch.zeros(3))
    assert calls == [1] and torch.equal(out, torch.zeros(3))


@pytest.mark.skipif(not HAS_CUDA, reason="the poisoning works on the CUDA caching allocator")
@pytest.mark.parametrize("numel", [7, 200_000, 3 << 20])  # small pool (<= 1 MiB) and large pool
def test_call_poisoned_reaches_every_output(numel):
    """Outputs a function allocates and never writes read as the fill: every tensor of a tuple,
    small-pool and large-pool sizes, with earlier results still alive; integers with another byte."""
    def unwritten():
        return (torch.empty(numel, device="cuda"), torch.empty(numel // 2 + 1, dtype=torch.bfloat16, device="cuda"))
    kept = []
    for _ in range(2):
        a, b = call_poisoned(unwritten)
        assert torch.isnan(a).all() and torch.isnan(b).all()
        kept.append((a, b))
    i = call_poisoned(lambda: torch.empty(numel, dtype=torch.int32, device="cuda"), fill_byte=0x5A)
    assert (i == 0x5A5A5A5A).all()
