"""``skinny_linear``: a linear layer for decoding shapes (at most 16 rows), bias-free."""
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
