"""Reference of ``skinny_linear`` and ``verify_linear``: ``x @ weight.T`` with fp32 products and sums, rounded once to
the input dtype (what a tensor-core GEMM with fp32 accumulation computes, up to summation order)."""
import torch

Tensor = torch.Tensor


def skinny_linear(x: Tensor, weight: Tensor) -> Tensor:
    """``x`` ``(..., K)``, ``weight`` ``(N, K)`` -> ``(..., N)`` in ``x.dtype``."""
    return (x.float() @ weight.float().t()).to(x.dtype)


def verify_linear(x: Tensor, weight: Tensor) -> Tensor:
    """``x`` ``(..., K)`` bf16, ``weight`` ``(N, K)`` bf16 -> ``(..., N)`` bf16: the same maths as
    :func:`skinny_linear` (the two ops differ only in the row counts their kernels are built for)."""
    return skinny_linear(x, weight)
