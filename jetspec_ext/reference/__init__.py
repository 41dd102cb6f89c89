"""Pure-PyTorch references of every jetspec op: the semantics the kernels are tested against.

They favour clarity over speed (loops where the maths is sequential) and run on any device.
"""
from .accept import filter_logits, tree_accept
from .attention import tree_attention
from .build_tree import build_tree
from .commit import commit_kv
from .linear import skinny_linear, verify_linear

__all__ = ["build_tree", "commit_kv", "filter_logits", "skinny_linear", "tree_accept", "tree_attention",
           "verify_linear"]
