"""jetspec_ext: CUDA kernels and a decoder loop for JetSpec-style causal parallel tree speculative
decoding.

``import jetspec_ext`` loads the compiled extension, which registers the ``torch.ops.jetspec.*``
ops (CPU always; CUDA when the package was built with nvcc), and their fake implementations.
The Python wrappers below document every tensor's shape and dtype; pure-PyTorch references of
each op live in :mod:`jetspec_ext.reference`.
"""
import torch

try:
    from . import _C  # noqa: F401  (registers torch.ops.jetspec.*)
except ImportError as e:  # pragma: no cover - only on a broken install
    raise ImportError(
        "jetspec_ext: the compiled extension jetspec_ext._C could not be loaded. Reinstall with "
        "`pip install --no-build-isolation .` against the torch you run with "
        f"(torch {torch.__version__}). Original error: {e}"
    ) from e

# Diagnostic builds (setup.py) register a marker schema; importing one warns.
_DIAG_BUILD_WARNINGS = {
    "_diag_build_wrong_tree_attention":
        "(JETSPEC_TREE_ATTN_DIAG at build time) whose CUDA tree_attention gives WRONG results, for timing "
        "only. Rebuild without it.",
    "_diag_build_no_setmaxnreg":
        "(JETSPEC_TREE_ATTN_NO_SETMAXNREG=1 at build time) for compute-sanitizer racecheck: CUDA "
        "tree_attention results are correct but 1.2-1.4x slower. Do not benchmark it; rebuild without it.",
}
for _marker, _what in _DIAG_BUILD_WARNINGS.items():
    if hasattr(torch.ops.jetspec, _marker):  # pragma: no cover - developer builds
        import warnings

        warnings.warn(f"jetspec_ext: this is a diagnostic build {_what}", stacklevel=2)

from . import reference  # noqa: E402,F401
from .ops import (  # noqa: E402,F401
    build_tree,
    commit_kv,
    skinny_linear,
    tree_accept,
    tree_attention,
    verify_linear,
)

__version__ = "0.1.0"


def cuda_compiled() -> bool:
    """True when this build carries CUDA kernels for the jetspec ops."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("jetspec::tree_accept", "CUDA")


__all__ = [
    "build_tree",
    "commit_kv",
    "skinny_linear",
    "tree_accept",
    "tree_attention",
    "verify_linear",
    "cuda_compiled",
    "reference",
]
