"""The one place the decoder picks an implementation for a jetspec op.

``op("tree_attention", device)`` returns the ``jetspec_ext.<op>`` wrapper (the compiled kernel)
when the extension has a kernel for that device, and the pure-PyTorch
``jetspec_ext.reference.<op>`` otherwise (e.g. an op whose CPU or CUDA kernel has not landed
yet). Both take the same arguments. The lookup is done at call time, so it is cheap and always
reflects what is registered.
"""
import torch

import jetspec_ext

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
