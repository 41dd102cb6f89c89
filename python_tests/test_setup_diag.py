"""setup.py's diagnostic-build switches (docs/tree_attention.md, "Diagnostics"): the items of
JETSPEC_TREE_ATTN_DIAG are checked, and the variable is refused without the timeline flag, so a
typo cannot silently produce a normal build or a wrong-results build without the import warning;
JETSPEC_TREE_ATTN_NO_SETMAXNREG (racecheck diagnostics) takes 0 or 1 only.
The checks run where setup.py builds CUDA code (nvcc present, a CUDA build of torch,
JETSPEC_FORCE_CPU unset)."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_NVCC = shutil.which("nvcc") is not None or os.path.exists(
    os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"))
pytestmark = pytest.mark.skipif(not HAS_NVCC or torch.version.cuda is None or os.environ.get("JETSPEC_FORCE_CPU") == "1",
                                reason="setup.py reads the diagnostic switches only for CUDA builds")


def run_setup(**env_vars):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSPEC_TREE_ATTN_")}
    env.update(env_vars)
    return subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_unknown_item_is_refused_and_the_items_are_listed():
    r = run_setup(JETSPEC_TREE_ATTN_TIMELINE="1", JETSPEC_TREE_ATTN_DIAG="NO_MASK,NO_MASKS")
    assert r.returncode != 0
    assert "unknown item 'NO_MASKS'" in r.stderr + r.stdout
    assert "NO_MASK_LOAD" in r.stderr + r.stdout


def test_items_without_the_timeline_flag_are_refused():
    r = run_setup(JETSPEC_TREE_ATTN_DIAG="NO_MASK")
    assert r.returncode != 0
    assert "needs JETSPEC_TREE_ATTN_TIMELINE=1" in r.stderr + r.stdout


def test_known_items_are_accepted():
    r = run_setup(JETSPEC_TREE_ATTN_TIMELINE="1", JETSPEC_TREE_ATTN_DIAG="NO_MASK_LOAD,NO_MASK")
    assert r.returncode == 0, r.stderr
    assert "jetspec" in r.stdout


def test_no_setmaxnreg_switch_takes_0_or_1():
    r = run_setup(JETSPEC_TREE_ATTN_NO_SETMAXNREG="yes")
    assert r.returncode != 0 and "must be 0 or 1, got 'yes'" in r.stderr + r.stdout
    r = run_setup(JETSPEC_TREE_ATTN_NO_SETMAXNREG="1")
    assert r.returncode == 0, r.stderr
    assert "without setmaxnreg" in r.stdout
    r = run_setup(JETSPEC_TREE_ATTN_NO_SETMAXNREG="0")
    assert r.returncode == 0 and "without setmaxnreg" not in r.stdout, r.stderr
