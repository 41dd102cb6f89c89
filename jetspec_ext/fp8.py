"""fp8 (e4m3) weight copies for the draft head's GEMMs (``HeadDrafter(fp8=True)``).

Why: at batch 1 the draft forward is a weight stream. On Qwen3-8B shapes a round reads the head's
5 layers (~1.9 GB), its ``fc`` (168 MB) and the target's LM head (1.24 GB) for only D + 1 = 16
rows; e4m3 copies halve those bytes. The draft only shapes the tree: verification by the target
is unchanged, so the output stays exactly the target's (greedy) or distributed as the target's
(sampling); what fp8 can change is how many draft tokens are accepted (measure it: see
benchmarks/RESULTS.md).

Maths of :func:`fp8_linear` (W ``(N, K)`` quantized once per output row, ``x`` per row at every
call; both with scale ``amax / 448``, e4m3's largest finite value, round to nearest)::

    y[m, n] = (sum_k q_x[m, k] * q_w[n, k]) * s_x[m] * s_w[n]

The sum runs over exact e4m3 products: on CUDA by ``torch._scaled_mm`` with unit scales
(cuBLASLt; its per-row-scaled form measured 1.3-1.5x slower on the H200 for the LM head, so the
scales are applied afterwards in one elementwise pass; Hopper's fp8 MMA keeps fewer accumulator
bits than fp32 inside an instruction, measured up to 9e-4 of sum |q_x q_w| s_x s_w, ~30x below
the quantization's own error), elsewhere by :func:`fp8_linear_reference` (fp32 matmuls, in row
chunks). Rows of ``x`` that are all zero give zero outputs; a non-finite ``x`` gives non-finite
outputs, as the bf16 GEMM would.
"""
from typing import NamedTuple, Optional, Tuple

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
# torch._scaled_mm (cuBLASLt) wants K and N multiples of 16 and 16-byte aligned operands
SCALED_MM_ALIGN = 16
_REF_CHUNK_ROWS = 8192  # the reference's weight rows dequantized at a time (bounds its memory)


class Fp8Weight(NamedTuple):
    """An e4m3 copy of a bias-free linear weight ``W (N, K)``: ``W ~= q * scale[:, None]``.

    q: ``(N, K)`` float8_e4m3fn, row-major. scale: ``(N,)`` float32 (> 0). unit: ``()`` float32
    1.0 on the same device (the unit scale torch._scaled_mm takes as a tensor)."""
    q: torch.Tensor
    scale: torch.Tensor
    unit: torch.Tensor

    def narrow(self, dim: int, start: int, length: int) -> "Fp8Weight":
        """Rows ``[start, start + length)`` as views, like ``Tensor.narrow(0, ...)`` on the weight
        (e.g. the k|v rows of a fused q|k|v weight); only ``dim = 0`` (whole output rows)."""
        if dim != 0:
            raise ValueError("Fp8Weight.narrow: only dim 0 (output rows, each with its scale)")
        return Fp8Weight(self.q.narrow(0, start, length), self.scale.narrow(0, start, length), self.unit)


def quantize_rows(t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``t (R, K)`` -> ``(q (R, K) e4m3, scale (R,) fp32)`` with ``t ~= q * scale[:, None]``,
    ``scale = max(amax_row, tiny) / 448`` (all-zero rows quantize to zeros)."""
    amax = t.detach().abs().amax(dim=-1).float().clamp(min=torch.finfo(torch.float32).tiny)
    scale = amax / E4M3_MAX
    q = (t.detach().float() / scale.unsqueeze(-1)).to(E4M3)
    return q, scale


@torch.no_grad()
def quantize_weight(weight: torch.Tensor) -> Fp8Weight:
    """An :class:`Fp8Weight` of a ``(N, K)`` floating-point weight (a new tensor: later changes
    to ``weight`` are not seen)."""
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"quantize_weight: expected a 2-D floating-point weight, got {tuple(weight.shape)} "
                         f"{weight.dtype}")
    if not torch.isfinite(weight).all():
        raise ValueError("quantize_weight: the weight has non-finite values")
    q, scale = quantize_rows(weight)
    return Fp8Weight(q.contiguous(), scale.contiguous(), torch.ones((), dtype=torch.float32, device=weight.device))


def fp8_cuda_problem(device) -> Optional[str]:
    """None if ``torch._scaled_mm`` runs e4m3 GEMMs on ``device`` (CUDA, compute capability
    8.9 or newer), else why not. Other devices use the reference (no check needed)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"fp8 GEMMs need compute capability 8.9 or newer (this GPU: {major}.{minor})"
    return None


def scaled_mm_shape_problem(named_weights) -> Optional[str]:
    """None if every ``(name, weight (N, K))`` has N and K multiples of 16 (torch._scaled_mm's
    rule for the CUDA path; HeadDrafter enforces it on every device), else what is wrong with the
    first that does not."""
    for name, w in named_weights:
        N, K = w.shape
        if N % SCALED_MM_ALIGN or K % SCALED_MM_ALIGN:
            return (f"{name}: out and in features must be multiples of {SCALED_MM_ALIGN} "
                    f"(torch._scaled_mm's rule); got {N} x {K}")
    return None


def fp8_linear_reference(x8: torch.Tensor, sx: torch.Tensor, w: Fp8Weight, dtype: torch.dtype) -> torch.Tensor:
    """Reference maths: ``x8 (M, K)`` e4m3 with ``sx (M,)``, ``w`` -> ``(M, N)`` in ``dtype``;
    e4m3 values widened to fp32 (exact), fp32 matmul, scales after."""
    xf = x8.float()
    outs = []
    for r in range(0, w.q.shape[0], _REF_CHUNK_ROWS):
        wq = w.q[r:r + _REF_CHUNK_ROWS].float()
        outs.append((xf @ wq.t()) * w.scale[r:r + _REF_CHUNK_ROWS])
    return (torch.cat(outs, dim=1) * sx.unsqueeze(1)).to(dtype)


def fp8_linear(x: torch.Tensor, w: Fp8Weight) -> torch.Tensor:
    """``x (..., K)`` float -> ``(..., N)`` in ``x.dtype``: ``F.linear(x, W)`` with the e4m3 copy
    ``w`` of ``W`` and ``x`` quantized per row (module docstring). CUDA (sm_89+):
    ``torch._scaled_mm``; other devices: :func:`fp8_linear_reference`."""
    K = x.shape[-1]
    if w.q.shape[1] != K:
        raise ValueError(f"fp8_linear: x has {K} features, the weight {w.q.shape[1]}")
    lead = x.shape[:-1]
    x8, sx = quantize_rows(x.reshape(-1, K))
    if x.is_cuda:
        acc = torch._scaled_mm(x8, w.q.t(), scale_a=w.unit, scale_b=w.unit, out_dtype=torch.float32)
        y = (acc * sx.unsqueeze(1) * w.scale).to(x.dtype)
    else:
        y = fp8_linear_reference(x8, sx, w, x.dtype)
    return y.reshape(*lead, w.q.shape[0])
