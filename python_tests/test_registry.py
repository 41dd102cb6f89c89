"""The extension registers every op of DESIGN §3 with a CPU kernel and a fake kernel."""
import pytest
import torch

import jetspec_ext

OPS = ["build_tree", "tree_attention", "tree_accept", "commit_kv", "skinny_linear"]


@pytest.mark.parametrize("op", OPS)
def test_schema_registered(op):
    assert hasattr(torch.ops.jetspec, op)
    schema = str(getattr(torch.ops.jetspec, op).default._schema)
    assert schema.startswith(f"jetspec::{op}(")


@pytest.mark.parametrize("op", ["tree_accept", "commit_kv", "skinny_linear"])
def test_cpu_kernel_registered(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"jetspec::{op}", "CPU")


def test_mutated_arguments_are_annotated():
    assert "Tensor(a!) rng_state" in str(torch.ops.jetspec.tree_accept.default._schema)
    s = str(torch.ops.jetspec.commit_kv.default._schema)
    assert "Tensor(a!) kv_cache" in s and "Tensor(b!) prefix_lens" in s
