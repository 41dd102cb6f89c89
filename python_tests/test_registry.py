"""The extension registers every op of DESIGN §3 with a CPU kernel and a fake kernel; importing a
diagnostic build (a marker schema registered) warns."""
import pytest
import torch

import jetspec_ext  # noqa: F401  (registers the torch.ops.jetspec schemas these tests read)
from conftest import env_importing_this_jetspec_ext

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


@pytest.mark.parametrize("marker, says", [
    ("_diag_build_wrong_tree_attention", "gives WRONG results"),
    ("_diag_build_no_setmaxnreg", "JETSPEC_TREE_ATTN_NO_SETMAXNREG=1 at build time"),
    ("_not_a_diag_marker", None),
])
def test_import_warns_on_a_diagnostic_build(marker, says):
    # A diagnostic build registers its marker schema (csrc/cuda/tree_attention_cuda.cu); here one is
    # defined before the import, in a fresh interpreter importing the jetspec_ext this session uses.
    import subprocess
    import sys

    code = ("import warnings, torch\n"
            "lib = torch.library.Library('jetspec', 'FRAGMENT')  # kept: its definitions die with it\n"
            f"lib.define('{marker}() -> ()')\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import jetspec_ext\n"
            "print('|'.join(str(x.message) for x in w if 'diagnostic build' in str(x.message)))\n")
    p = subprocess.run([sys.executable, "-c", code], env=env_importing_this_jetspec_ext(), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    assert (says in last) if says else last == "", p.stdout
