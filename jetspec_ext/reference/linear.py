"""Reference of ``skinny_linear`` and ``verify_linear``: ``x @ weight.T`` with fp32 products and sums, rounded once to
the input dtype (what a tensor-core GEMM with fp32 accumulation computes, up to summation order)."""
from typing import Optional

import torch

Tensor = torch.Tensor


def skinny_linear(x: Tensor, weight: Tensor) -> Tensor:
    """``x`` ``(..., K)``, ``weight`` ``(N, K)`` -> ``(..., N)`` in ``x.dtype``."""
    return (x.float() @ weight.float().t()).to(x.dtype)


def verify_linear(x: Tensor, weight: Tensor, residual: Optional[Tensor] = None) -> Tensor:
    """``x`` ``(..., K)`` bf16, ``weight`` ``(N, K)`` bf16, optional ``residual`` ``(..., N)`` bf16
    -> ``(..., N)`` bf16: ``x @ weight.T (+ residual)`` with fp32 products and sums, rounded once
    (without a residual, the maths of :func:`skinny_linear`)."""
    acc = x.float() @ weight.float().t()
    if residual is not None:
        acc = acc + residual.float()
    return acc.to(x.dtype)
