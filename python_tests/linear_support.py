"""Shared by the linear-layer op tests (test_skinny_linear.py, test_verify_linear.py): inputs and
the accuracy rule (outputs are poisoned with conftest.call_poisoned).

Accuracy rule (as for attention, FlashAttention's): the kernel's error against an fp32 reference
of the same inputs is at most twice that of PyTorch's own F.linear in the same dtype (cuBLAS on
the GPU), plus a tiny absolute slack for outputs that round exactly."""
import torch
import torch.nn.functional as F

from conftest import ieee_fp32_matmul


def inputs(M, N, K, dtype, device, seed=0, lead=None):
    """x ``(*lead or (M,), K)`` standard normal, weight ``(N, K)`` scaled by 1/sqrt(K)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*(lead or (M,)), K, generator=g).to(dtype).to(device)
    w = (torch.randn(N, K, generator=g) * K ** -0.5).to(dtype).to(device)
    return x, w


def check_accuracy(out, x, w):
    with ieee_fp32_matmul():  # the fp32 reference whatever the process-wide TF32 setting
        exact = x.float() @ w.float().t()
    torch_err = (F.linear(x, w).float() - exact).abs().max().item()
    err = (out.float() - exact).abs().max().item()
    assert torch.isfinite(out).all()
    assert err <= 2 * torch_err + 1e-6, (err, torch_err)
