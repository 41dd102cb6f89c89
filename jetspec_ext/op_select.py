"""The one place the decoder picks an implementation for a jetspec op.

``op("tree_attention", device)`` returns the ``jetspec_ext.<op>`` wrapper (the compiled kernel)
when the extension has a kernel for that device, and the pure-PyTorch
``jetspec_ext.reference.<op>`` otherwise (e.g. an op whose CPU or CUDA kernel has not landed
yet). Both take the same arguments. The lookup is done at call time, so it is cheap and always
reflects what is registered.
"""
import os

import torch
import torch.nn.functional as F

import jetspec_ext
from jetspec_ext.fp8 import Fp8Weight, fp8_linear
from jetspec_ext.ops import linear as linear_ops

_DISPATCH_KEY = {"cpu": "CPU", "cuda": "CUDA"}
# dtypes a kernel is limited to on a device (absent = all the op's dtypes)
_KERNEL_DTYPES = {("tree_attention", "cuda"): (torch.bfloat16, torch.float16)}


def has_kernel(name: str, device, dtype=None) -> bool:
    dev = torch.device(device).type
    key = _DISPATCH_KEY.get(dev)
    if key is None or not torch._C._dispatch_has_kernel_for_dispatch_key(f"jetspec::{name}", key):
        return False
    allowed = _KERNEL_DTYPES.get((name, dev))
    return dtype is None or allowed is None or dtype in allowed


def op(name: str, device, dtype=None):
    """The callable implementing jetspec op ``name`` on ``device`` (kernel wrapper or reference).
    ``dtype``: the main input's dtype, for kernels limited to some dtypes (the CUDA
    tree_attention runs bf16 / fp16; fp32 on CUDA uses the reference)."""
    if has_kernel(name, device, dtype):
        return getattr(jetspec_ext, name)
    return getattr(jetspec_ext.reference, name)


# Decoding-shaped linear layers go through jetspec::skinny_linear on CUDA (see :func:`linear`)
# when x has ONE row (the autoregressive step): there its CUDA-core kernel (skinny_gemv.cuh) beat
# cuBLAS at every Qwen3-8B shape on the H200 (o_proj 9.7 vs 13.3 us, down_proj 24.6 vs 30.7 us,
# LM head 272 vs 297 us; graphed AR step 4.51 vs 5.18 ms; benchmarks/RESULTS.md, 2026-11-29). With
# 4 rows it lost at some shapes and with 5..16 rows (tensor-core kernel) it is not faster than
# cuBLAS, so those keep F.linear. JETSPEC_SKINNY_LINEAR=0 turns the routing off. Resolved once at
# import so torch.compile traces the choice from static facts only (this flag, shapes, dtypes).
SKINNY_LINEAR_CUDA = (os.environ.get("JETSPEC_SKINNY_LINEAR", "1") != "0"
                      and torch._C._dispatch_has_kernel_for_dispatch_key("jetspec::skinny_linear", "CUDA"))
ROUTED_MAX_ROWS = 1  # rows of x that op_select.linear sends to skinny_linear (measured: see above)


# Tree-verification-shaped linear layers go through jetspec::verify_linear (CUTLASS-built TMA +
# wgmma GEMM, sm_90 only) where it was measured faster than cuBLAS on the H200: 65..128 rows and at
# most 4096 output features, i.e. Qwen3-8B's o_proj (12.99 vs 14.37 us) and down_proj (30.95 vs
# 34.27 us) at M = 128 (benchmarks/RESULTS.md, 2026-11-29, seventh session). q|k|v, gate|up, the
# LM head and 256 rows were slower there, so they keep F.linear. JETSPEC_VERIFY_LINEAR=0 turns the
# routing off. The flag and the kernel's presence are resolved once at import, like the skinny
# routing; the GPU generation (the kernel needs sm_90) per call from x's device, so importing
# this module never initialises CUDA (torch.compile folds the property lookup to a constant).
VERIFY_LINEAR_CUDA = (os.environ.get("JETSPEC_VERIFY_LINEAR", "1") != "0"
                      and torch._C._dispatch_has_kernel_for_dispatch_key("jetspec::verify_linear", "CUDA"))
VERIFY_RESIDUAL = os.environ.get("JETSPEC_VERIFY_RESIDUAL", "1") != "0"  # linear_add: add in the epilogue
VERIFY_ROWS = (65, 128)  # rows of x routed to verify_linear (inclusive)
VERIFY_MAX_N = 4096  # out_features routed to verify_linear (at most)
# The draft head's block (D + 1 = 16 rows) and its context extension: 2..16 rows go to
# verify_linear's transposed configuration (s64: W's rows fill the wgmma tile, y^T = W x^T) at every
# out_features: faster than cuBLAS (which splits K and adds reduction kernels) at M = 16 for every
# Qwen3-8B-shaped projection of the head but q|k|v (16.1 vs 15.7 us) on the H200, e.g. o_proj 10.4
# vs 13.4 us, the LM head 286.7 vs 303.1 (benchmarks/RESULTS.md, twentieth session).
# JETSPEC_FEW_ROWS_LINEAR=0 keeps F.linear there (side-by-side timing).
FEW_ROWS_CUDA = VERIFY_LINEAR_CUDA and os.environ.get("JETSPEC_FEW_ROWS_LINEAR", "1") != "0"
FEW_ROWS = (2, 16)


def plain_linear(module) -> bool:
    """Whether ``module`` is a plain bias-free ``nn.Linear`` without forward (pre-)hooks or a
    patched forward (offloading, adapters): only then may a fused path call :func:`linear` on its
    weight instead of the module, without skipping anything the module would do."""
    return (type(module) is torch.nn.Linear and module.bias is None and not module._forward_hooks
            and not module._forward_pre_hooks and "forward" not in module.__dict__)


def _verify_routed(x: torch.Tensor, weight: torch.Tensor) -> bool:
    K = weight.shape[-1]
    if not (VERIFY_LINEAR_CUDA and x.is_cuda and x.dtype == torch.bfloat16 and weight.dtype == x.dtype
            and weight.dim() == 2 and K % linear_ops.VERIFY_ALIGN == 0
            and weight.shape[0] % linear_ops.VERIFY_ALIGN == 0 and weight.is_contiguous()
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))  # no backward
            and torch.cuda.get_device_properties(x.device).major == 9):
        return False
    if FEW_ROWS_CUDA and FEW_ROWS[0] * K <= x.numel() <= FEW_ROWS[1] * K:
        return True
    return VERIFY_ROWS[0] * K <= x.numel() <= VERIFY_ROWS[1] * K and weight.shape[0] <= VERIFY_MAX_N


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)`` (no bias), through ``jetspec_ext.skinny_linear`` when it applies:
    CUDA build and tensors, bf16 / fp16, ONE row in ``x`` (the autoregressive step; see
    ``ROUTED_MAX_ROWS``), ``in_features`` a multiple of 32 and a contiguous weight; through
    ``jetspec_ext.verify_linear`` for bf16 tree-verification shapes where it wins (see
    ``VERIFY_ROWS`` / ``VERIFY_MAX_N``) and for 2..16 rows (the draft head's block, ``FEW_ROWS``),
    when no gradient is wanted (the op has no backward). Everything else: ``F.linear``.
    ``weight`` may also be an :class:`jetspec_ext.fp8.Fp8Weight` (the fp8 drafter's copies):
    then :func:`jetspec_ext.fp8.fp8_linear`."""
    if isinstance(weight, Fp8Weight):
        return fp8_linear(x, weight)
    K = weight.shape[-1]
    if (SKINNY_LINEAR_CUDA and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16)
            and weight.dtype == x.dtype and weight.dim() == 2 and x.numel() <= ROUTED_MAX_ROWS * K
            and K % linear_ops.K_MULTIPLE == 0 and weight.is_contiguous()):
        return jetspec_ext.skinny_linear(x, weight)
    if _verify_routed(x, weight):
        return jetspec_ext.verify_linear(x, weight)
    return F.linear(x, weight)


def linear_add(residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``residual + linear(x, weight)`` (a residual connection around a bias-free projection):
    where :func:`linear` routes to ``verify_linear``, the residual is added in that GEMM's
    epilogue (no elementwise kernel of its own, one rounding); otherwise exactly
    ``residual + linear(x, weight)``. ``residual`` has the output's shape.
    JETSPEC_VERIFY_RESIDUAL=0 keeps the add separate (side-by-side timing). An
    :class:`jetspec_ext.fp8.Fp8Weight` ``weight`` takes the separate add (``linear`` dispatches)."""
    if (VERIFY_RESIDUAL and not isinstance(weight, Fp8Weight) and _verify_routed(x, weight)
            and residual.dtype == x.dtype and residual.shape[-1] == weight.shape[0]):
        return jetspec_ext.verify_linear(x, weight, residual)
    return residual + linear(x, weight)
