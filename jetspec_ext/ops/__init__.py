"""Python wrappers (with docstrings) and fake implementations of the torch.ops.jetspec ops.

One module per op. Each registers the op's fake kernel with ``torch.library.register_fake`` so
the ops trace under torch.compile / FakeTensor, and exposes a wrapper that documents every
tensor's shape and dtype.
"""
from .accept import tree_accept
from .attention import tree_attention
from .build_tree import build_tree
from .commit import commit_kv
from .linear import skinny_linear, verify_linear

__all__ = ["build_tree", "commit_kv", "skinny_linear", "tree_accept", "tree_attention", "verify_linear"]
