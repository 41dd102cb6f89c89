"""Shared fixtures: the devices each op is tested on (CPU always; CUDA when a GPU is present and
the package carries CUDA kernels)."""
import contextlib
import os
import warnings

import pytest
import torch

import jetspec_ext

HAS_CUDA = torch.cuda.is_available() and jetspec_ext.cuda_compiled()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build")


# TF32 settings (torch >= 2.9: `fp32_precision`; reading the legacy `allow_tf32` flags raises
# there once anything has used the new API, e.g. transformers' enable_tf32).
_NEW_TF32_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")


def env_importing_this_jetspec_ext(base=None) -> dict:
    """An environment (a copy of ``base``, default os.environ) whose Python subprocesses import the
    jetspec_ext this test session imported (CI: the installed package, not the unbuilt checkout;
    here: the checkout built in place): its parent folder goes first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(jetspec_ext.__file__)))
    env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _tf32_state():
    b = torch.backends
    if _NEW_TF32_API:
        return b.fp32_precision, b.cuda.matmul.fp32_precision, b.cudnn.fp32_precision
    return b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32


def _set_tf32_state(state) -> None:
    b = torch.backends
    if _NEW_TF32_API:
        b.fp32_precision, b.cuda.matmul.fp32_precision, b.cudnn.fp32_precision = state
    else:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = state


def _set_matmul_tf32(on: bool) -> None:
    """TF32 for CUDA fp32 matmuls on or off (the rest of the TF32 state as it is)."""
    if _NEW_TF32_API:
        torch.backends.cuda.matmul.fp32_precision = "tf32" if on else "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = on


@contextlib.contextmanager
def ieee_fp32_matmul():
    """fp32 matmuls in full IEEE precision inside the block, whatever the process-wide TF32
    setting: the fp32 references of the accuracy tests (TF32's 10-bit mantissa moves them by more
    than a bf16 / fp16 kernel's error)."""
    saved = _tf32_state()
    _set_matmul_tf32(False)
    try:
        yield
    finally:
        _set_tf32_state(saved)


@pytest.fixture(autouse=True)
def _no_tf32_leak(request):
    """Every test ends with the TF32 settings it started with, and a test that changed them (or
    ran code in-process that did) is named in a warning: code run in-process must not turn TF32
    on for later tests. A tree_attention accuracy test failed once inside the whole CUDA suite on
    the H200 (20th session) because its fp32 reference, not the kernel, had moved; which earlier
    test changed the setting was not found (the references now use ieee_fp32_matmul)."""
    before = _tf32_state()
    yield
    after = _tf32_state()
    if after != before:
        _set_tf32_state(before)
        warnings.warn(f"{request.node.nodeid} changed the TF32 settings {before} -> {after} (restored)")


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(scope="module")
def one_thread():
    """One CPU thread for the module (tiny matmuls: threads only add contention on the 2-core CI
    box). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def check_programmatic_launch(op_call, cases, monkeypatch):
    """Programmatic dependent launch (JETSPEC_PDL, on by default on sm_90) lets a kernel start before
    the kernel ahead of it in the stream has finished; its loads must still see that kernel's
    writes. ``op_call(*inputs)`` returns a tuple of tensors; ``cases`` are input tuples of equal
    shapes. With PDL on, copy kernels write the inputs right before the op and a kernel reads its
    outputs right after, eagerly and under CUDA-graph replay, alternating the cases; every result
    must equal plain launches (JETSPEC_PDL=0) bit for bit."""
    monkeypatch.setenv("JETSPEC_PDL", "0")
    expect = [op_call(*c) for c in cases]
    monkeypatch.setenv("JETSPEC_PDL", "1")
    src = [t.clone() for t in cases[0]]
    dst = [torch.empty_like(t) for t in cases[0]]

    def load(k):
        for t, c in zip(src, cases[k]):
            t.copy_(c)

    def step():
        for d, t in zip(dst, src):
            d.copy_(t)
        return tuple(o.clone() for o in op_call(*dst))

    def check(outs, k):
        for got, want in zip(outs, expect[k]):
            torch.testing.assert_close(got, want, rtol=0, atol=0)

    for k in (0, 1, 0):
        load(k)
        check(step(), k)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        outs = step()
    for k in (1, 0, 1):
        load(k)
        g.replay()
        check(outs, k)


def record_calls(monkeypatch, module, name):
    """Replace ``module.name`` (a function looked up at call time, e.g. ``jetspec_ext.verify_linear``
    from op_select or ``jetspec_ext.decoder.generate`` from the CLI) by a wrapper that records the
    keyword arguments of every call and then calls the original. Returns the list of records:
    its length is the number of calls. Tests use it to check which path ran, where equal values
    would not show it."""
    seen, real = [], getattr(module, name)

    def recording(*a, **k):
        seen.append(k)
        return real(*a, **k)
    monkeypatch.setattr(module, name, recording)
    return seen


def _tensors(out):
    return [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]


def call_poisoned(fn, fill_byte=0xFF, attempts=3):
    """``fn()`` (an op call returning a tensor or a tuple / list of tensors) such that, on CUDA,
    every output starts as garbage: whatever a kernel leaves unwritten reads as ``fill_byte``
    repeated (0xFF: NaN in bf16 / fp16 / fp32, -1 in integers; pass another byte where -1 is a
    valid output). On the CPU: ``fn()``, once.

    Why not a large freed NaN block: PyTorch's caching allocator serves requests of at most 1 MiB
    from a separate small pool that a freed large block never backs, so most outputs of these
    tests would never see it. Instead this relies on the allocator being deterministic: fn runs
    once to settle it (first-call workspaces, new segments), once more to find the blocks of its
    outputs, which are filled with ``fill_byte`` and freed, and once again, which must get exactly
    those blocks back (checked by pointer; up to ``attempts`` rounds, then the test fails rather
    than pass unpoisoned)."""
    first = fn()
    if not any(t.is_cuda for t in _tensors(first)):
        return first
    del first
    for _ in range(attempts):  # another round if something else freed memory in between
        out = fn()
        ptrs = [t.data_ptr() for t in _tensors(out)]
        for t in _tensors(out):
            if t.numel():
                torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage()).fill_(fill_byte)
        del out, t
        res = fn()
        if [t.data_ptr() for t in _tensors(res)] == ptrs:
            return res
        del res
    raise AssertionError(f"call_poisoned: the op's outputs did not get the poisoned blocks back in "
                         f"{attempts} rounds (the caching allocator's state kept changing between calls)")
