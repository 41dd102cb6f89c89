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


def has_kernel(name: str, device) -> bool:
    key = _DISPATCH_KEY.get(torch.device(device).type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"jetspec::{name}", key)


def op(name: str, device):
    """The callable implementing jetspec op ``name`` on ``device`` (kernel wrapper or reference)."""
    if has_kernel(name, device):
        return getattr(jetspec_ext, name)
    return getattr(jetspec_ext.reference, name)
