"""Reference of ``skinny_linear``: ``x @ weight.T`` with fp32 products and sums, rounded once to
the input dtype (what a tensor-core GEMM with fp32 accumulation computes, up to summation order)."""
import torch

Tensor = torch.Tensor


def skinny_linear(x: Tensor, weight: Tensor) -> Tensor:
    """``x`` ``(..., K)``, ``weight`` ``(N, K)`` -> ``(..., N)`` in ``x.dtype``."""
    return (x.float() @ weight.float().t()).to(x.dtype)
