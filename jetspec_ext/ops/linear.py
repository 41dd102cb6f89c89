"""Bias-free linear layers for speculative-decoding shapes: ``skinny_linear`` (at most 16 rows: the
autoregressive step, the draft block) and ``verify_linear`` (the tree's rows in the verify forward)."""
from typing import Optional

import torch

Tensor = torch.Tensor

MAX_ROWS = 16  # kSkinnyMaxRows in csrc/skinny_linear_common.h
K_MULTIPLE = 32  # in_features must be a multiple of this


@torch.library.register_fake("jetspec::skinny_linear")
def _skinny_linear_fake(x, weight):
    torch._check(x.dim() == 2 and weight.dim() == 2, lambda: "skinny_linear: x and weight must be 2-D")
    torch._check(x.shape[1] == weight.shape[1], lambda: "skinny_linear: in_features differ")
    return x.new_empty((x.shape[0], weight.shape[0]))


def skinny_linear(x: Tensor, weight: Tensor) -> Tensor:
    """``x @ weight.T`` for a few rows, as ``F.linear(x, weight)`` without bias.

    Args:
        x: ``(..., K)`` bf16 or fp16; the leading dimensions hold at most 16 rows in all
            (e.g. one decoding step ``(B, 1, K)`` with B <= 16, or a draft block ``(1, 16, K)``).
            Made contiguous if it is not (it is small).
        weight: ``(N, K)`` same dtype and device, contiguous (``nn.Linear.weight`` layout);
            ``K`` a multiple of 32. A non-contiguous weight is an error, never copied.

    Returns:
        ``(..., N)`` in ``x.dtype``: fp32 products and sums, one rounding (CUDA: kernels
        streaming the weight once: 1..4 rows ``csrc/kernels/skinny_gemv.cuh`` (CUDA
        cores), 5..16 rows ``csrc/kernels/skinny_linear.cuh`` (tensor cores); CPU: the same maths
        with ATen). With one row it reads the weight faster than cuBLAS on the H200 (4.1-4.6 TB/s
        at Qwen3-8B shapes); measurements in benchmarks/RESULTS.md.
    """
    lead = x.shape[:-1]
    out = torch.ops.jetspec.skinny_linear.default(x.reshape(-1, x.shape[-1]).contiguous(), weight)
    return out.view(*lead, weight.shape[0])


VERIFY_ALIGN = 8  # kVerifyAlign in csrc/verify_linear_common.h: in_ and out_features multiple of this


@torch.library.register_fake("jetspec::verify_linear")
def _verify_linear_fake(x, weight, residual=None):
    torch._check(x.dim() == 2 and weight.dim() == 2, lambda: "verify_linear: x and weight must be 2-D")
    torch._check(x.shape[1] == weight.shape[1], lambda: "verify_linear: in_features differ")
    return x.new_empty((x.shape[0], weight.shape[0]))


def verify_linear(x: Tensor, weight: Tensor, residual: Optional[Tensor] = None) -> Tensor:
    """``x @ weight.T`` (``+ residual``) for the tree's rows of a verify forward, as
    ``F.linear(x, weight)`` without bias (``residual + F.linear(x, weight)``).

    Args:
        x: ``(..., K)`` bf16; the leading dimensions hold the rows (e.g. ``(1, 128, K)`` for a
            128-node tree). Made contiguous if it is not (activations are small).
        weight: ``(N, K)`` bf16, same device, contiguous (``nn.Linear.weight`` layout); ``K`` and
            ``N`` multiples of 8. A non-contiguous weight is an error, never copied.
        residual: optional ``(..., N)`` bf16 with the output's shape (a residual connection):
            added to the fp32 product before the one rounding; on CUDA in the GEMM's epilogue
            (configs p64c2, s64 and s128), so it costs no kernel of its own.

    Returns:
        ``(..., N)`` bf16: fp32 products and sums, one rounding. CUDA (sm_90 only, built with
        CUTLASS headers): a TMA + wgmma GEMM from CUTLASS 3 collectives
        (``csrc/kernels/verify_gemm_sm90.cuh``); up to 16 rows the product transposed
        (``y^T = W x^T``: 64 weight rows x 16 rows of x per tile, config s64, the draft head's
        block), up to 128 rows 64x64 tiles in clusters of two that share each weight tile by
        multicast, so the weight is read once; the same inputs give the same bits every call.
        CPU: the same maths with ATen.
    """
    lead = x.shape[:-1]
    res = None if residual is None else residual.reshape(-1, weight.shape[0]).contiguous()
    out = torch.ops.jetspec.verify_linear.default(x.reshape(-1, x.shape[-1]).contiguous(), weight, res)
    return out.view(*lead, weight.shape[0])
