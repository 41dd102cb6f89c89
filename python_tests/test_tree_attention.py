"""tree_attention: CPU and CUDA kernels against the fp32 reference (FlashAttention rule)."""
import os

import pytest
import torch

import jetspec_ext
from conftest import call_poisoned, check_programmatic_launch, ieee_fp32_matmul
from jetspec_ext.reference.attention import (dense_visibility, pack_tree_mask,
                                             tree_attention as ref_tree_attention,
                                             unpack_tree_mask)

HAS_CUDA_KERNEL = torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
    "jetspec::tree_attention", "CUDA")
requires_cuda_kernel = pytest.mark.skipif(not HAS_CUDA_KERNEL,
                                          reason="needs a GPU and a CUDA build of tree_attention")
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA_KERNEL else [])
# CUDA kernel variants: mma.sync (any GPU), the pipelined wgmma kernel and the warp-specialized
# ping-pong wgmma kernel (sm_90 only), chosen per call by an env var.
WGMMA_IMPLS = ["wgmma_pipe", "wgmma_ws_pp"]
IMPLS = ["mma"] + (WGMMA_IMPLS if HAS_CUDA_KERNEL and torch.cuda.get_device_capability()[0] == 9 else [])


_CANARY_CODE = r"""
import torch, jetspec_ext
from jetspec_ext.reference.attention import tree_attention as ref
torch.manual_seed(0)
for (B, N, Hq, Hkv, D, P, dt) in [(1, 64, 32, 8, 128, 700, torch.bfloat16),
                                   (2, 37, 8, 8, 64, 100, torch.float16),
                                   (1, 1, 8, 2, 128, 0, torch.bfloat16)]:
    S = P + N + 3
    q = torch.randn(B, N, Hq, D, device="cuda", dtype=dt)
    k = torch.randn(B, Hkv, S, D, device="cuda", dtype=dt)
    v = torch.randn(B, Hkv, S, D, device="cuda", dtype=dt)
    pl = torch.full((B,), P, dtype=torch.int32, device="cuda")
    mask = torch.full((B, N, (N + 31) // 32), -1, dtype=torch.int32, device="cuda")
    out, lse = jetspec_ext.tree_attention(q, k, v, pl, mask)
    torch.cuda.synchronize()
    r, rl = ref(q.float(), k.float(), v.float(), pl, mask)
    # lse depends on S = Q K^T only (K operand path); out on both (V operand path).
    print(B, N, Hq, Hkv, D, P, dt, "out max err", (out.float() - r).abs().max().item(),
          "lse max err", (lse - rl).abs().max().item())
print("CANARY OK")
"""
_canary_result = {}


def wgmma_canary(impl="wgmma_ws_pp"):
    """Run a wgmma variant once in a subprocess first, so that a crash (illegal instruction,
    misaligned address) cannot leave a sticky CUDA error in this test process."""
    if impl not in _canary_result:
        import subprocess
        import sys
        env = dict(os.environ, JETSPEC_TREE_ATTN_IMPL=impl)
        try:
            r = subprocess.run([sys.executable, "-c", _CANARY_CODE], env=env, capture_output=True,
                               text=True, timeout=180)  # a hung kernel must not eat the session
            ok = r.returncode == 0 and "CANARY OK" in r.stdout
            _canary_result[impl] = (ok, (r.stdout + r.stderr)[-3000:])
        except subprocess.TimeoutExpired:
            _canary_result[impl] = (False, "timed out (hang?)")
        print(f"{impl} canary:", _canary_result[impl][1])
    return _canary_result[impl]


@pytest.fixture(params=IMPLS)
def impl(request, monkeypatch):
    if request.param != "mma":
        ok, log = wgmma_canary(request.param)
        if not ok:
            pytest.fail(f"{request.param} variant crashed in a subprocess; not run in-process:\n"
                        f"{log}")
    monkeypatch.setenv("JETSPEC_TREE_ATTN_IMPL", request.param)
    return request.param


@requires_cuda_kernel
@pytest.mark.skipif("wgmma_pipe" not in IMPLS, reason="wgmma needs sm_90")
@pytest.mark.parametrize("variant", WGMMA_IMPLS)
def test_wgmma_canary_subprocess(variant):
    ok, log = wgmma_canary(variant)
    assert ok, log


# ----------------------------------------------------------------------------------------------
# Input builders
# ----------------------------------------------------------------------------------------------
def random_parents(n, gen, kind="random"):
    """Parent array of a tree of n nodes (root 0 has parent -1; parent of i is in [0, i))."""
    parents = [-1]
    for i in range(1, n):
        if kind == "chain":
            parents.append(i - 1)
        elif kind == "star":
            parents.append(0)
        else:  # random, biased towards recent nodes (deep trees)
            lo = max(0, i - 1 - int(torch.randint(0, 8, (1,), generator=gen)))
            parents.append(int(torch.randint(lo, i, (1,), generator=gen)) if kind == "deep"
                           else int(torch.randint(0, i, (1,), generator=gen)))
    return parents


def closure_mask(parents):
    """(N, N) bool: row i has bit j iff j is an ancestor of i or i itself."""
    n = len(parents)
    m = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        m[i, i] = True
        if parents[i] >= 0:
            m[i] |= m[parents[i]]
    return m


def make_case(B, N, Hq, Hkv, D, plens, S=None, dtype=torch.bfloat16, device="cpu", kind="random",
              seed=0, q_transposed=False, stacked_cache=False, poison_tail=True):
    gen = torch.Generator().manual_seed(seed)
    if isinstance(plens, int):
        plens = [plens] * B
    S = S or (max(plens) + N + 5)
    # q: HF layout (B, Hq, N, D) transposed to (B, N, Hq, D) when q_transposed.
    q = torch.randn(B, Hq, N, D, generator=gen) if q_transposed else \
        torch.randn(B, N, Hq, D, generator=gen)
    # K/V: one layer of a stacked (layers, 2, B, Hkv, S + 8, D) cache when stacked_cache.
    extra = 8 if stacked_cache else 0
    kv = torch.randn(3 if stacked_cache else 1, 2, B, Hkv, S + extra, D, generator=gen)
    if poison_tail:  # slots past prefix + N must never be read
        for b in range(B):
            kv[:, :, b, :, plens[b] + N:] = float("nan")
    masks = [closure_mask(random_parents(N, gen, kind)) for _ in range(B)]
    tree_mask = pack_tree_mask(torch.stack(masks))
    prefix_lens = torch.tensor(plens, dtype=torch.int32)
    q = q.to(device=device, dtype=dtype)
    if q_transposed:
        q = q.transpose(1, 2)
    kv = kv.to(device=device, dtype=dtype)
    layer = 1 if stacked_cache else 0
    k, v = kv[layer, 0, :, :, :S], kv[layer, 1, :, :, :S]
    return q, k, v, prefix_lens.to(device), tree_mask.to(device)


def references(q, k, v, plens, mask, scale=None):
    """(fp32 reference out, its lse, the same maths with low-precision probabilities or None).
    The fp32 reference is computed with TF32 off whatever the process-wide setting (TF32's 10-bit
    mantissa would move the reference by more than the kernel's error)."""
    with ieee_fp32_matmul():
        ref32, ref_lse = ref_tree_attention(q.float(), k.float(), v.float(), plens, mask, scale)
    low = None
    if q.dtype != torch.float32:
        low, _ = ref_tree_attention(q, k, v, plens, mask, scale, p_dtype=q.dtype)
    return ref32, ref_lse, low


def check_against_reference(out, lse, q, k, v, plens, mask, scale=None, refs=None):
    """FlashAttention rule: |kernel - fp32 ref| <= 2 |same maths in low precision - fp32 ref| +
    slack; lse close to the fp32 reference."""
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1]) and lse.dtype == torch.float32
    ref32, ref_lse, low = refs or references(q, k, v, plens, mask, scale)
    finite_rows = torch.isfinite(ref_lse).transpose(1, 2).unsqueeze(-1).expand_as(ref32)
    assert not torch.isnan(out).any(), "NaN in the output"
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), "lse = -inf rows differ"
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=1e-3)
    err = (out.float() - ref32).abs().max().item()
    if q.dtype == torch.float32:
        assert err <= 1e-4, f"fp32 max error {err}"
        return err
    base = (low.float() - ref32).abs().max().item()
    assert err <= 2 * base + 1e-4, f"max error {err} > 2 x low-precision error {base} + 1e-4"
    assert torch.all(out.float()[~finite_rows] == 0), "rows that see nothing must be 0"
    return err


def run_op(q, k, v, plens, mask, scale=None):
    """The op with its outputs poisoned (NaN) before the launch on CUDA (conftest.call_poisoned)."""
    return call_poisoned(lambda: jetspec_ext.tree_attention(q, k, v, plens, mask, scale))


# ----------------------------------------------------------------------------------------------
# Mask helpers and reference self-checks
# ----------------------------------------------------------------------------------------------
def test_pack_unpack_roundtrip():
    gen = torch.Generator().manual_seed(1)
    for n in (1, 31, 32, 33, 64, 100):
        dense = torch.rand(2, n, n, generator=gen) < 0.5
        assert torch.equal(unpack_tree_mask(pack_tree_mask(dense), n), dense)


def test_reference_matches_sdpa_dense_mask():
    q, k, v, plens, mask = make_case(2, 13, 8, 2, 64, [7, 20], dtype=torch.float32,
                                     poison_tail=False)
    out, _ = ref_tree_attention(q, k, v, plens, mask)
    for b in range(2):
        L = int(plens[b]) + 13
        vis = dense_visibility(plens[b:b + 1], mask[b:b + 1], 13, L)[0]
        kk = k[b, :, :L].repeat_interleave(4, 0)
        vv = v[b, :, :L].repeat_interleave(4, 0)
        sd = torch.nn.functional.scaled_dot_product_attention(q[b].transpose(0, 1), kk, vv,
                                                              attn_mask=vis)
        torch.testing.assert_close(out[b], sd.transpose(0, 1), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Kernel vs reference (CPU always, CUDA when built)
# ----------------------------------------------------------------------------------------------
CPU_CASES = [
    # B, N, Hq, Hkv, D, plens, kind
    (1, 1, 4, 4, 64, [37], "random"),        # N = 1: plain decoding
    (1, 16, 8, 2, 128, [0], "chain"),        # prefix 0, causal chain
    (2, 33, 8, 1, 64, [5, 70], "random"),    # GQA 8, odd lengths, per-row prefix
    (3, 20, 4, 4, 128, [0, 17, 64], "deep"),  # MHA, mixed prefixes
    (1, 65, 4, 1, 64, [129], "star"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: f"B{c[0]}N{c[1]}G{c[2]//c[3]}D{c[4]}{c[6]}")
def test_cpu_matches_reference(case, dtype):
    B, N, Hq, Hkv, D, plens, kind = case
    q, k, v, pl, mask = make_case(B, N, Hq, Hkv, D, plens, dtype=dtype, kind=kind, seed=N)
    out, lse = run_op(q, k, v, pl, mask)
    check_against_reference(out, lse, q, k, v, pl, mask)


def test_cpu_strided_inputs_and_scale():
    q, k, v, pl, mask = make_case(2, 9, 8, 2, 64, [3, 11], q_transposed=True, stacked_cache=True)
    assert not q.is_contiguous() and not k.is_contiguous()
    out, lse = run_op(q, k, v, pl, mask, scale=0.3)
    check_against_reference(out, lse, q, k, v, pl, mask, scale=0.3)


@pytest.mark.parametrize("scale", [-0.05, 0.0])
def test_cpu_negative_scale(scale):
    """Only finiteness is required of the scale: a negative one reverses the ranking of keys, a
    zero one weighs every visible key alike."""
    q, k, v, pl, mask = make_case(2, 30, 8, 2, 64, [70, 5])
    out, lse = run_op(q, k, v, pl, mask, scale=scale)
    check_against_reference(out, lse, q, k, v, pl, mask, scale=scale)


def test_row_that_sees_nothing(device):
    dt = torch.float32 if device == "cpu" else torch.bfloat16
    q, k, v, pl, mask = make_case(1, 40, 4, 2, 64, [0], dtype=dt, device=device)
    mask[0, 3] = 0   # node 3 sees nothing (prefix is empty)
    mask[0, 35] = 0
    out, lse = run_op(q, k, v, pl, mask)
    assert torch.isinf(lse[0, :, 3]).all() and torch.isinf(lse[0, :, 35]).all()
    check_against_reference(out, lse, q, k, v, pl, mask)


def test_opcheck(device):
    dt = torch.float32 if device == "cpu" else torch.bfloat16
    args = make_case(2, 5, 4, 2, 64, [3, 9], dtype=dt, device=device, poison_tail=False)
    torch.library.opcheck(torch.ops.jetspec.tree_attention.default, (*args, 0.125))


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------
def test_bad_inputs(device):
    dt = torch.float32 if device == "cpu" else torch.bfloat16
    q, k, v, pl, mask = make_case(2, 8, 8, 2, 64, [4, 4], dtype=dt, device=device)
    op = jetspec_ext.tree_attention
    with pytest.raises(RuntimeError, match="head dim"):
        op(q[..., :32], k[..., :32], v[..., :32], pl, mask)
    with pytest.raises(RuntimeError, match="multiple of the number of KV heads"):
        k3 = k[:, :1].expand(2, 3, *k.shape[2:])  # 8 query heads over 3 KV heads
        op(q, k3, v[:, :1].expand(2, 3, *v.shape[2:]), pl, mask)
    with pytest.raises(RuntimeError, match="tree_mask"):
        op(q, k, v, pl, mask[:, :, :0])
    with pytest.raises(RuntimeError, match="tree_mask"):
        op(q, k, v, pl, mask[:1])
    with pytest.raises(RuntimeError, match="dtype"):
        op(q, k.to(torch.float16), v, pl, mask)
    with pytest.raises(RuntimeError, match="prefix_lens"):
        op(q, k, v, pl.long(), mask)
    with pytest.raises(RuntimeError, match="cannot hold"):
        op(q, k[:, :, :4], v[:, :, :4], pl, mask)
    with pytest.raises(RuntimeError, match="1..1024"):
        op(q[:, :0], k, v, pl, mask[:, :0])
    with pytest.raises(RuntimeError, match="last dim"):
        k_t = torch.empty_strided(k.shape, (k.numel(), k.shape[2] * 64, 1, k.shape[2]),
                                  dtype=k.dtype, device=device)
        op(q, k_t, v, pl, mask)
    if device == "cpu":  # device values are only checked by the CPU op
        with pytest.raises(RuntimeError, match="prefix_len"):
            op(q, k, v, torch.tensor([4, k.shape[2] - 7], dtype=torch.int32), mask)
    if device == "cuda":
        with pytest.raises(RuntimeError, match="on cpu|is on"):
            op(q, k, v, pl.cpu(), mask)
        with pytest.raises(RuntimeError, match="bfloat16 or float16"):
            op(q.float(), k.float(), v.float(), pl, mask)


# ----------------------------------------------------------------------------------------------
# CUDA: many shapes, forced split counts, strided inputs, CUDA graphs
# ----------------------------------------------------------------------------------------------
GPU_CASES = [
    # B, N, Hq, Hkv, D, plens, kind
    (1, 1, 32, 8, 128, [4096], "random"),       # decode, GQA 4
    (1, 1, 8, 8, 64, [0], "random"),            # decode with an empty prefix
    (3, 2, 32, 4, 128, [1, 1023, 70000], "random"),  # 16 rows per KV head (GQA 8), N = 2
    (2, 4, 16, 4, 64, [0, 129], "chain"),       # 16 rows, head dim 64, a chain
    (2, 3, 4, 4, 128, [65, 5], "deep"),         # GQA 1, a tree of 3
    (1, 64, 32, 8, 128, [1024], "random"),
    (1, 128, 32, 8, 128, [4096], "random"),
    (1, 256, 32, 8, 128, [1000], "deep"),
    (1, 16, 32, 8, 128, [0], "chain"),          # draft head: causal chain, no prefix
    (2, 21, 32, 4, 128, [0, 300], "chain"),     # GQA 8
    (3, 37, 8, 8, 64, [1, 63, 64], "random"),   # GQA 1, odd lengths around tile edges
    (4, 100, 16, 2, 64, [5, 513, 2047, 77], "deep"),
    (8, 64, 32, 8, 128, [4096, 100, 0, 3000, 64, 65, 4000, 1], "random"),
    (1, 1024, 8, 8, 128, [2000], "random"),     # N = 1024
    (1, 1000, 4, 1, 64, [17], "deep"),          # mask words not tile aligned
    (2, 31, 12, 4, 128, [131072 - 31, 5000], "random"),  # 128k prefix
]


_GPU_CASE_CACHE = {}


@requires_cuda_kernel
@pytest.mark.parametrize("splits", ["auto", "1", "3", "16"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", GPU_CASES,
                         ids=lambda c: f"B{c[0]}N{c[1]}Hq{c[2]}Hkv{c[3]}D{c[4]}P{c[5][0]}{c[6]}")
def test_cuda_matches_reference(case, dtype, splits, impl, monkeypatch):
    if splits == "1" and impl != "mma":
        pytest.skip("single-split path: covered by mma and by 'auto' on the larger cases")
    if splits != "auto":
        monkeypatch.setenv("JETSPEC_TREE_ATTN_SPLITS", splits)
    else:
        monkeypatch.delenv("JETSPEC_TREE_ATTN_SPLITS", raising=False)
    B, N, Hq, Hkv, D, plens, kind = case
    key = (str(case), dtype)
    if key not in _GPU_CASE_CACHE:  # inputs and references shared by every split count / variant
        if len(_GPU_CASE_CACHE) > 4:
            _GPU_CASE_CACHE.clear()
        args = make_case(B, N, Hq, Hkv, D, plens, dtype=dtype, device="cuda", kind=kind,
                         seed=N + B)
        _GPU_CASE_CACHE[key] = (args, references(*args))
    (q, k, v, pl, mask), refs = _GPU_CASE_CACHE[key]
    out, lse = run_op(q, k, v, pl, mask)
    torch.cuda.synchronize()
    check_against_reference(out, lse, q, k, v, pl, mask, refs=refs)


@requires_cuda_kernel
def test_cuda_strided_inputs(impl):
    q, k, v, pl, mask = make_case(2, 50, 32, 8, 128, [700, 33], device="cuda", q_transposed=True,
                                  stacked_cache=True)
    assert not q.is_contiguous() and not k.is_contiguous()
    out, lse = run_op(q, k, v, pl, mask, scale=0.05)
    check_against_reference(out, lse, q, k, v, pl, mask, scale=0.05)


@requires_cuda_kernel
def test_cuda_size_one_dims_with_any_stride(impl):
    """Caches whose size-1 dims (batch, KV heads) carry strides torch allows but no dense layout
    would have (here 8 and 16 elements, overlapping the rows), and a head dim of 64: the
    warp-specialized kernel describes the caches to TMA, which wants strides of whole 16-byte
    units, so such strides are replaced by dense ones (they are never stepped)."""
    S, D = 777, 64
    base_k = torch.randn(S * D + 64, device="cuda").to(torch.bfloat16)
    base_v = torch.randn(S * D + 64, device="cuda").to(torch.bfloat16)
    k = torch.as_strided(base_k, (1, 1, S, D), (8, 16, D, 1))
    v = torch.as_strided(base_v, (1, 1, S, D), (8, 16, D, 1))
    q, _, _, pl, mask = make_case(1, 40, 4, 1, D, [S - 40 - 3], device="cuda", seed=21)
    out, lse = run_op(q, k, v, pl, mask)
    torch.cuda.synchronize()
    check_against_reference(out, lse, q, k, v, pl, mask)


@requires_cuda_kernel
@pytest.mark.parametrize("scale", [-0.05, 0.0, 0.2])
def test_cuda_negative_scale_and_uneven_splits(impl, scale, monkeypatch):
    """A zero or negative softmax scale is allowed (only finiteness is required; masked keys must
    stay invisible, -inf times a negative scale would be +inf, times 0 NaN; the kernels fold only
    a positive scale into the exponent), with 5 forced splits of 12 key tiles
    (contiguous in the mma and pipe kernels: 3, 3, 3, 3 and an empty one; interleaved in the
    warp-specialized kernel: 3, 3, 2, 2, 2): no more tiles per split than its ring holds."""
    monkeypatch.setenv("JETSPEC_TREE_ATTN_SPLITS", "5")
    q, k, v, pl, mask = make_case(1, 50, 32, 8, 128, [700], device="cuda", seed=11)
    out, lse = run_op(q, k, v, pl, mask, scale=scale)
    torch.cuda.synchronize()
    check_against_reference(out, lse, q, k, v, pl, mask, scale=scale)


@requires_cuda_kernel
@pytest.mark.parametrize("shift", [20.0, 6.0])
def test_cuda_scores_far_below_zero(impl, shift, monkeypatch):
    """Rows whose every score is far below zero. The lazy running max's common path tests a
    tile's scores against m_run + 8 through an integer max of their bit patterns, exact only
    when that limit is >= 0 (thread_row_max_if_nonneg): with shift 20 every scaled logit is
    around -50 (log2 units), so every tile must take the moving path and still be right; with
    shift 6 the rows sit around the limit's sign change. 3 forced splits, some heads unshifted."""
    monkeypatch.setenv("JETSPEC_TREE_ATTN_SPLITS", "3")
    q, k, v, pl, mask = make_case(1, 64, 32, 8, 128, [700], device="cuda", seed=23)
    q, k = q.clone(), k.clone()
    q[:, :, :24, 0] -= shift  # query heads 0..23 (KV heads 0..5): scores about -shift^2 lower
    k[:, :6, :, 0] += shift
    out, lse = run_op(q, k, v, pl, mask)
    torch.cuda.synchronize()
    check_against_reference(out, lse, q, k, v, pl, mask)


@requires_cuda_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_split_partials_hold_large_values(impl, dtype, monkeypatch):
    """split_kernel_ws stores its split partials in the input dtype (the other kernels in fp32). A
    normalised partial is a convex combination of V rows, |o| <= max |v|, so the dtype's range
    holds it: V up to 6e4 (near fp16's 65504) with 4 forced splits must come out right, not inf."""
    monkeypatch.setenv("JETSPEC_TREE_ATTN_SPLITS", "4")
    q, k, v, pl, mask = make_case(1, 64, 32, 8, 128, [900], dtype=dtype, device="cuda", seed=5)
    big = ((torch.rand(v.shape, device="cuda") * 2 - 1) * 6e4).to(dtype)
    v = torch.where(torch.isnan(v), v, big)  # keep the NaN poison past prefix + N
    assert v.abs().nan_to_num(0).max().item() > 5e4
    out, lse = run_op(q, k, v, pl, mask)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all(), "a split partial overflowed"
    check_against_reference(out, lse, q, k, v, pl, mask)


def use_ws(monkeypatch, env):
    """Select split_kernel_ws (after its subprocess canary) with the settings `env` (None: unset)."""
    ok, log = wgmma_canary("wgmma_ws_pp")
    if not ok:
        pytest.fail(f"wgmma_ws_pp crashed in a subprocess; not run in-process:\n{log}")
    monkeypatch.setenv("JETSPEC_TREE_ATTN_IMPL", "wgmma_ws_pp")
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def run_ws_case(case, monkeypatch, env, **make_kw):
    """split_kernel_ws on `case` = (B, N, Hq, Hkv, D, plens, kind) with the settings `env` (None:
    unset) against the reference; make_kw go to make_case."""
    use_ws(monkeypatch, env)
    B, N, Hq, Hkv, D, plens, kind = case
    q, k, v, pl, mask = make_case(B, N, Hq, Hkv, D, plens, device="cuda", kind=kind, **make_kw)
    out, lse = run_op(q, k, v, pl, mask)
    torch.cuda.synchronize()
    check_against_reference(out, lse, q, k, v, pl, mask)


CLUSTER_CASES = [  # at most 8 clusters (row tiles x B x Hkv): resident at once for every size
    # B, N, Hq, Hkv, D, plens, kind
    (1, 37, 16, 4, 128, [700], "random"),     # 148 rows per KV head: a full and a partial row tile
    (2, 64, 8, 2, 128, [0, 1500], "deep"),    # prefix 0: 1 key tile, so most splits are empty
    (2, 50, 8, 2, 64, [5, 333], "chain"),     # head dim 64
]


@requires_cuda_kernel
@pytest.mark.skipif("wgmma_ws_pp" not in IMPLS, reason="split_kernel_ws needs sm_90")
@pytest.mark.parametrize("cluster", ["require", "0"])
@pytest.mark.parametrize("splits", ["2", "3", "4", "5", "6", "7", "8"])
@pytest.mark.parametrize("case", CLUSTER_CASES,
                         ids=lambda c: f"B{c[0]}N{c[1]}Hq{c[2]}Hkv{c[3]}D{c[4]}P{c[5][0]}{c[6]}")
def test_cuda_cluster_merge(case, splits, cluster, monkeypatch):
    """split_kernel_ws merges 2..8 splits inside a thread-block cluster (bulk copies between the
    CTAs' shared memory) unless JETSPEC_TREE_ATTN_CLUSTER=0 (partials in global memory +
    merge_kernel); 'require' makes the op fail rather than silently take the other path. Both
    paths against the reference, at every split count 2..8 (each has its own compiled merge,
    cluster_merge_share_n): 128 rows shared unevenly over 3, 5, 6 and 7 CTAs (shares of 44, 28,
    24, 20 rows, the last one shorter), partial row tiles, empty splits, head dims 128 and 64.
    All 384 threads take merge items (the producer warpgroup after a setmaxnreg hand-over): at
    6 and 7 splits every one of them, at 3 splits 352."""
    run_ws_case(case, monkeypatch, {"JETSPEC_TREE_ATTN_SPLITS": splits, "JETSPEC_TREE_ATTN_CLUSTER": cluster},
                seed=case[1] + case[0])


@requires_cuda_kernel
@pytest.mark.skipif("wgmma_ws_pp" not in IMPLS, reason="split_kernel_ws needs sm_90")
@pytest.mark.parametrize("q_tma", ["1", "0"])
def test_cuda_cluster_merge_empty_split_stages_zeros(q_tma, monkeypatch):
    """The cluster merge multiplies every split's staged row by its weight with no select, so an
    empty split (weight 0) must stage zeros, not leave the Q bytes its tile holds: 0 x NaN is NaN.
    Batch row 0 has prefix 0 (one key tile for 4 forced clustered splits: 3 of them empty) and
    one NaN query row (node 10, head 0: row 40 of its row tile, whose bytes sit where the staged
    rows 20 and 84, nodes 5 and 21, go). Every other row must match the reference, NaN-free; the
    NaN row itself is not checked (its reference is NaN)."""
    use_ws(monkeypatch, {"JETSPEC_TREE_ATTN_SPLITS": "4", "JETSPEC_TREE_ATTN_CLUSTER": "require",
                         "JETSPEC_TREE_ATTN_Q_TMA": q_tma})
    q, k, v, pl, mask = make_case(2, 64, 8, 2, 128, [0, 900], device="cuda", seed=11)
    q[0, 10, 0] = float("nan")
    out, lse = run_op(q, k, v, pl, mask)
    torch.cuda.synchronize()
    ref32, ref_lse, low = references(q, k, v, pl, mask)
    keep = torch.ones(out.shape[:3], dtype=torch.bool, device=out.device)  # (B, N, Hq)
    keep[0, 10, 0] = False
    assert torch.isfinite(ref32[keep]).all() and not torch.isfinite(ref32[0, 10, 0]).any()
    assert not torch.isnan(out[keep]).any(), "NaN outside the NaN query row (an empty split's Q bytes)"
    torch.testing.assert_close(lse.transpose(1, 2)[keep], ref_lse.transpose(1, 2)[keep], atol=2e-3, rtol=1e-3)
    err = (out.float() - ref32)[keep].abs().max().item()
    base = (low.float() - ref32)[keep].abs().max().item()
    assert err <= 2 * base + 1e-4, f"max error {err} > 2 x low-precision error {base} + 1e-4"


NAN_PATHS = {  # the split settings of each path a row's result can take (None: unset)
    "one_split": {"JETSPEC_TREE_ATTN_SPLITS": "1"},
    "merge_kernel": {"JETSPEC_TREE_ATTN_SPLITS": "5", "JETSPEC_TREE_ATTN_CLUSTER": "0"},
    "cluster_merge": {"JETSPEC_TREE_ATTN_SPLITS": "4", "JETSPEC_TREE_ATTN_CLUSTER": "require"},
}


def check_nan_score_rows(device, monkeypatch, env):
    """A NaN in a row's scores (its query, or a key it sees) makes that row's output and lse NaN,
    as in the reference, and touches no other row. Batch row 0 has prefix 0 (with 4 clustered
    splits, 3 of them empty) and a NaN query row (node 10, head 0) and a NaN tree key (node 20
    of KV head 1: NaN for the heads 4-7 of node 20's descendants only; the others mask it);
    batch row 1 (prefix 900) a NaN query row (node 37, head 5) and a NaN prefix key (slot 300 of
    KV head 1: every row of heads 4-7). Until the fifty-seventh session the split merges took
    the lse max with fmaxf, which drops a NaN, so such a row came out 0 or finite (merge_kernel
    selected the NaN split's weight away) and its lse -inf on every path."""
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    q, k, v, pl, mask = make_case(2, 64, 8, 2, 128, [0, 900], device=device, seed=5)
    q[0, 10, 0] = float("nan")
    q[1, 37, 5] = float("nan")
    k[0, 1, 20] = float("nan")
    k[1, 1, 300] = float("nan")
    out, lse = run_op(q, k, v, pl, mask)
    if device == "cuda":
        torch.cuda.synchronize()
    ref32, ref_lse, low = references(q, k, v, pl, mask)
    nan_rows = torch.isnan(ref_lse).transpose(1, 2)  # (B, N, Hq)
    assert nan_rows[0, 10, 0] and nan_rows[1, 37, 5] and nan_rows[1, :, 4:].all()
    assert nan_rows[0, 20, 4:].all() and not nan_rows[0, 19, 4:].any() and int(nan_rows[0, :, :4].sum()) == 1
    assert torch.equal(torch.isnan(ref32).all(-1), nan_rows) and not torch.isnan(ref32[~nan_rows]).any()
    got_nan_lse = torch.isnan(lse).transpose(1, 2)
    assert torch.equal(got_nan_lse, nan_rows), (
        f"lse NaN rows differ: {int((got_nan_lse & ~nan_rows).sum())} extra, "
        f"{int((nan_rows & ~got_nan_lse).sum())} missing of {int(nan_rows.sum())}")
    assert torch.isnan(out[nan_rows]).all(), (
        f"{int((~torch.isnan(out[nan_rows])).sum())} non-NaN output elements in NaN score rows")
    keep = ~nan_rows
    assert not torch.isnan(out[keep]).any(), "NaN outside the NaN score rows"
    torch.testing.assert_close(lse.transpose(1, 2)[keep], ref_lse.transpose(1, 2)[keep], atol=2e-3, rtol=1e-3)
    err = (out.float() - ref32)[keep].abs().max().item()
    if low is None:
        assert err <= 1e-4, f"fp32 max error {err}"
        return
    base = (low.float() - ref32)[keep].abs().max().item()
    assert err <= 2 * base + 1e-4, f"max error {err} > 2 x low-precision error {base} + 1e-4"


def test_cpu_nan_score_rows_come_out_nan(monkeypatch):
    """check_nan_score_rows on the CPU implementation (bf16 inputs)."""
    check_nan_score_rows("cpu", monkeypatch, {})


@requires_cuda_kernel
@pytest.mark.parametrize("path", list(NAN_PATHS))
def test_cuda_nan_score_rows_come_out_nan(path, impl, monkeypatch):
    """check_nan_score_rows on every CUDA kernel variant and every way a row's result is made:
    one split (written by the split kernel), split partials merged by merge_kernel, and (split_kernel_ws) the
    cluster merge."""
    if path == "cluster_merge" and impl != "wgmma_ws_pp":
        pytest.skip("the cluster merge is split_kernel_ws's")
    env = dict(NAN_PATHS[path])
    if impl != "wgmma_ws_pp":
        env.pop("JETSPEC_TREE_ATTN_CLUSTER", None)
    check_nan_score_rows("cuda", monkeypatch, env)


@requires_cuda_kernel
@pytest.mark.parametrize("setting", ["JETSPEC_TREE_ATTN_CLUSTER", "JETSPEC_TREE_ATTN_Q_TMA"])
def test_cuda_ws_setting_is_checked(setting, monkeypatch):
    """split_kernel_ws's settings (the cluster merge with 4 forced splits; Q by TMA) refuse a value
    they do not know instead of ignoring it."""
    monkeypatch.setenv(setting, "yes")
    monkeypatch.setenv("JETSPEC_TREE_ATTN_SPLITS", "4")
    monkeypatch.setenv("JETSPEC_TREE_ATTN_IMPL", "wgmma_ws_pp")
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("split_kernel_ws exists on sm_90 only")
    q, k, v, pl, mask = make_case(1, 64, 32, 8, 128, [900], device="cuda", seed=3)
    with pytest.raises(RuntimeError, match=f"{setting} must be"):
        jetspec_ext.tree_attention(q, k, v, pl, mask)


Q_COPY_CASES = [  # B, N, Hq, Hkv, D, plens, kind: GQA ratios 1, 2, 3, 4, 6, 8, 16
    (2, 45, 8, 8, 128, [300, 7], "random"),     # G 1: 128 nodes per box, a partial row tile
    (1, 70, 16, 8, 64, [513], "deep"),         # G 2, head dim 64 (one box)
    (2, 50, 12, 4, 128, [64, 901], "chain"),   # G 3: no box holds 128 rows (cp.async)
    (1, 100, 32, 8, 128, [1024], "random"),    # G 4 (Qwen3-8B), rows 400: 4 row tiles, the last partial
    (1, 33, 24, 4, 64, [200], "deep"),         # G 6 (cp.async)
    (3, 20, 16, 2, 128, [0, 65, 2000], "random"),  # G 8, prefix 0
    (1, 24, 16, 1, 128, [777], "random"),      # G 16: boxes of 16 heads x 8 nodes
]


@requires_cuda_kernel
@pytest.mark.skipif("wgmma_ws_pp" not in IMPLS, reason="split_kernel_ws needs sm_90")
@pytest.mark.parametrize("q_tma", ["1", "0"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("case", Q_COPY_CASES,
                         ids=lambda c: f"B{c[0]}N{c[1]}Hq{c[2]}Hkv{c[3]}D{c[4]}P{c[5][0]}{c[6]}")
def test_cuda_ws_q_tile_copies(case, layout, q_tma, monkeypatch):
    """split_kernel_ws copies a CTA's 128 query rows by TMA (one box of G heads x 128 / G nodes per
    64 head-dim columns; nodes past N arrive as zeros) when G divides 128, and by cp.async otherwise
    or with JETSPEC_TREE_ATTN_Q_TMA=0; both write the same 128-byte-swizzled layout that the
    consumers read Q from. Every GQA ratio here, q contiguous or a transposed (B, Hq, N, D) view,
    both paths, against the reference."""
    run_ws_case(case, monkeypatch, {"JETSPEC_TREE_ATTN_Q_TMA": q_tma, "JETSPEC_TREE_ATTN_SPLITS": None},
                seed=case[1] + case[2], q_transposed=layout == "transposed")


@requires_cuda_kernel
@pytest.mark.skipif("wgmma_ws_pp" not in IMPLS, reason="split_kernel_ws needs sm_90")
def test_cuda_ws_q_with_size_one_dims_of_any_stride(monkeypatch):
    """q of one batch row and one query node whose size-1 dims carry strides no dense layout has
    (3 and 5 elements: not 16-byte units, which TMA needs): the launcher gives TMA dense strides
    for them (never stepped), as for the caches. G 4, all 4 rows in the first row tile."""
    monkeypatch.setenv("JETSPEC_TREE_ATTN_IMPL", "wgmma_ws_pp")
    Hq, Hkv, D = 8, 2, 128
    _, k, v, pl, mask = make_case(1, 1, Hq, Hkv, D, [300], device="cuda", seed=4)
    base = torch.randn(Hq * D + 64, device="cuda").to(torch.bfloat16)
    q = torch.as_strided(base, (1, 1, Hq, D), (3, 5, D, 1))
    out, lse = run_op(q, k, v, pl, mask)
    torch.cuda.synchronize()
    check_against_reference(out, lse, q, k, v, pl, mask)


@requires_cuda_kernel
def test_cuda_inputs_written_just_before(impl):
    """K/V caches and prefix length rewritten by the kernels right before the op on the stream
    (as the decoder's cache writes and commits are), after a call that left the old values in
    L2: the result reflects the new values (with programmatic launches the kernels may start
    before the previous kernel ends; nothing they read may be read ahead of the wait)."""
    q, k, v, pl, mask = make_case(1, 128, 32, 8, 128, [600], S=1400, device="cuda", seed=11,
                                  poison_tail=False)
    # direct calls, not run_op: its poisoning repeats the call, so the checked call would no
    # longer be the one right after the writes
    jetspec_ext.tree_attention(q, k, v, pl, mask)
    gen = torch.Generator(device="cuda").manual_seed(12)
    k.copy_(torch.randn(k.shape, generator=gen, device="cuda"))
    v.copy_(torch.randn(v.shape, generator=gen, device="cuda"))
    pl.fill_(1100)
    out, lse = jetspec_ext.tree_attention(q, k, v, pl, mask)
    torch.cuda.synchronize()
    check_against_reference(out, lse, q, k, v, pl, mask)


@requires_cuda_kernel
def test_cuda_matches_cpu_op(impl):
    args = make_case(2, 70, 16, 4, 128, [300, 1200], device="cpu")
    out_c, lse_c = jetspec_ext.tree_attention(*args)
    out_g, lse_g = jetspec_ext.tree_attention(*(a.cuda() for a in args))
    torch.testing.assert_close(out_g.cpu().float(), out_c.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(lse_g.cpu(), lse_c, atol=2e-3, rtol=1e-3)


def check_graph_replays(B, N, Hq, Hkv, D, S, plens_list, replays=1):
    """Capture the op once (after a warm-up on a side stream), then for each prefix-length set:
    new inputs copied in place, output poisoned, `replays` replays, checked against the reference."""
    q, k, v, pl, mask = make_case(B, N, Hq, Hkv, D, plens_list[0], S=S, device="cuda",
                                  poison_tail=False)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            jetspec_ext.tree_attention(q, k, v, pl, mask)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out, lse = jetspec_ext.tree_attention(q, k, v, pl, mask)
    for seed, plens in enumerate(plens_list, start=1):
        q2, k2, v2, pl2, mask2 = make_case(B, N, Hq, Hkv, D, plens, S=S, device="cuda",
                                           seed=seed, poison_tail=False)
        q.copy_(q2), k.copy_(k2), v.copy_(v2), pl.copy_(pl2), mask.copy_(mask2)
        out.fill_(float("nan"))
        for _ in range(replays):
            g.replay()
        torch.cuda.synchronize()
        check_against_reference(out, lse, q, k, v, pl, mask)


@requires_cuda_kernel
def test_cuda_graph_capture_and_replay(impl):
    check_graph_replays(2, 64, 32, 8, 128, 6000, [[1000, 3000], [0, 5936], [4500, 17]])


@requires_cuda_kernel
@pytest.mark.parametrize("N,plen", [(128, 1024), (1, 3000), (64, 0)])
def test_cuda_programmatic_launch_sees_previous_writes(N, plen, impl, monkeypatch):
    """The split and merge kernels are launched programmatically (JETSPEC_PDL, on by default on
    sm_90): each may start before the kernel ahead of it has finished and must still see its
    writes (conftest.check_programmatic_launch), for every kernel variant."""
    cases = [make_case(1, N, 32, 8, 128, plen, S=plen + N + 64, device="cuda", seed=s, poison_tail=False)
             for s in (1, 2)]
    check_programmatic_launch(jetspec_ext.tree_attention, cases, monkeypatch)


@requires_cuda_kernel
def test_cuda_unknown_variant_is_refused(monkeypatch):
    """A kernel variant name that does not exist (e.g. one removed since) is an error, never a
    silent fallback to the default."""
    args = make_case(1, 4, 8, 2, 64, [10], device="cuda")
    for bad in ("decode", "wgmma8", "wgmma_pipe8", "wgmma_ws", "wgmma_ws2", "wgmma_ws_pp4", "fast"):
        monkeypatch.setenv("JETSPEC_TREE_ATTN_IMPL", bad)
        with pytest.raises(RuntimeError, match="JETSPEC_TREE_ATTN_IMPL must be"):
            jetspec_ext.tree_attention(*args)
