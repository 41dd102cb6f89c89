"""tree_accept: kernel vs reference (greedy exact; sampling exact away from float near-ties),
rng_state semantics, statistical losslessness, opcheck, CUDA graphs, argument errors.

Sampling comparison rule (CPU and CUDA alike: both use the reference's counter-based RNG): a
batch row must match the reference exactly when every node on the reference's path is robust:
its uniform u lies more than 2e-5 (in cumulative probability) from the cumulative boundaries
of the token the reference draws (inverse-CDF sampling), and the top-p kept set is the same
for p - 1e-4 and p + 1e-4. Other rows are counted, not compared, and
at least a stated fraction of rows must be compared, so the check cannot pass vacuously.
"""
import math

import pytest
import torch

import jetspec_ext
from jetspec_ext.reference import accept as ref_accept
from jetspec_ext.reference import rng as ref_rng

from conftest import call_poisoned, requires_cuda
from trees import plant_agreement, random_logits, random_tree_batch

op = torch.ops.jetspec.tree_accept.default
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NEAR_TIE = 1e-4     # top-p boundary robustness (in p)
CDF_MARGIN = 2e-5   # inverse-CDF robustness (distance of u to the drawn token's boundaries)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def make_case(B, N, V, dtype, seed, *, plant=None, chain_bias=0.3, pad_frac=0.1, dup_frac=0.2,
              scale=3.0, int_logits=False):
    g = torch.Generator().manual_seed(seed)
    toks, par, D = random_tree_batch(B, N, V, g, pad_frac=pad_frac, chain_bias=chain_bias,
                                     dup_frac=dup_frac)
    if int_logits:  # many exact ties (greedy tie rule: lowest token id)
        logits = torch.randint(0, 3, (B, N, V), generator=g).to(dtype)
    else:
        logits = random_logits(B, N, V, dtype, g, scale)
    if plant is not None:
        plant_agreement(logits, toks, par, g, follow=plant)
    return logits, toks, par, D


def run_op(device, logits, toks, par, D, state, T=0.0, k=0, p=1.0):
    """The op from ``state`` (cloned; the clone advanced by the op is returned), on CUDA with its
    outputs poisoned (0x5A bytes) before the launch (conftest.call_poisoned runs it several times,
    each from a fresh clone of ``state``)."""
    args = (logits.to(device), toks.to(device), par.to(device))
    box = {}

    def call():
        box.clear()  # the previous call's state freed first: every call sees the same allocator state
        box["st"] = state.clone().to(device)
        return op(*args, D, box["st"], T, k, p)
    out = call_poisoned(call, fill_byte=0x5A)
    return [o.cpu() for o in out], box["st"].cpu()


def run_ref(logits, toks, par, D, state, T=0.0, k=0, p=1.0):
    st = state.clone()
    out = ref_accept.tree_accept(logits, toks, par, D, st, T, k, p)
    return list(out), st


def robust_nodes(logits, state, T, k, p):
    """(B, N) bool: node choices that no float rounding can flip: the node's uniform u lies
    more than CDF_MARGIN from both cumulative-probability boundaries of the drawn token, and the
    top-p kept set does not change when p moves by +-NEAR_TIE."""
    B, N, V = logits.shape
    seed, off = (int(x) for x in state.tolist())
    s = ref_accept.filter_logits(logits, T, k, p).double()
    w = torch.exp(s - s.max(-1, keepdim=True).values)
    cum = torch.cumsum(w, -1)
    cum = cum / cum[..., -1:]
    u = ref_rng.uniform(seed, off, torch.arange(B * N).reshape(B, N), 1)[..., 0].double()
    t = torch.searchsorted(cum, u.unsqueeze(-1), right=True).clamp(max=V - 1)
    hi = torch.gather(cum, -1, t).squeeze(-1)
    lo = torch.where(t.squeeze(-1) > 0, torch.gather(cum, -1, (t - 1).clamp(min=0)).squeeze(-1),
                     torch.zeros_like(u))
    ok = ((u - lo) > CDF_MARGIN) & ((hi - u) > CDF_MARGIN)
    if p < 1.0:
        kept = torch.isfinite(ref_accept.filter_logits(logits, T, k, p))
        for q in (p - NEAR_TIE, min(p + NEAR_TIE, 1.0)):
            ok &= (torch.isfinite(ref_accept.filter_logits(logits, T, k, q)) == kept).all(-1)
    return ok


def compare(out, ref, robust_rows=None, *, min_robust_frac=0.8, what=""):
    """Exact comparison of (accepted_nodes, accept_len, next_token). With robust_rows (B,) bool,
    only those rows must match; they must be at least min_robust_frac of all rows (so the check
    cannot pass vacuously). Returns the number of rows that were excused as near-ties."""
    B = ref[1].shape[0]
    rows = torch.ones(B, dtype=torch.bool) if robust_rows is None else robust_rows
    n_rob = int(rows.sum())
    assert n_rob >= max(1, math.ceil(min_robust_frac * B)) if robust_rows is not None else True, (
        f"{what}: only {n_rob}/{B} rows are away from near-ties; the comparison would be vacuous")
    for name, o, r in zip(("accepted_nodes", "accept_len", "next_token"), out, ref):
        assert o.shape == r.shape and o.dtype == r.dtype, f"{what}: {name} {o.shape}/{o.dtype} vs {r.shape}/{r.dtype}"
        bad = (o[rows] != r[rows]).reshape(n_rob, -1).any(-1) if n_rob else torch.zeros(0, dtype=torch.bool)
        if bad.any():
            i = int(rows.nonzero().flatten()[bad.nonzero()[0, 0]])
            raise AssertionError(f"{what}: {name} differs in {int(bad.sum())} of {n_rob} compared rows; "
                                 f"first row {i}: kernel {o[i].tolist()} vs reference {r[i].tolist()}")
    return B - n_rob


def robust_rows_of(ref_out, robust):
    """Rows whose every visited node (the reference path) is robust."""
    acc = ref_out[0].long()
    B = acc.shape[0]
    ok = torch.ones(B, dtype=torch.bool)
    for b in range(B):
        path = acc[b][acc[b] >= 0]
        ok[b] = bool(robust[b, path].all())
    return ok


# ----------------------------------------------------------------------------------------------
# greedy: exact equality
# ----------------------------------------------------------------------------------------------
GREEDY_CASES = {
    # name: (B, N, V, kwargs, seed)
    "deep": (4, 64, 1000, dict(plant=1.0, chain_bias=0.7), 1),
    "stop_at_once": (8, 32, 1000, dict(), 2),
    "big_tree": (2, 1024, 128, dict(plant=1.0, chain_bias=0.6), 3),
    "bushy_partial": (8, 300, 500, dict(plant=0.7, chain_bias=0.2), 4),
    "tiny_vocab_dups": (8, 64, 4, dict(dup_frac=0.5), 5),
    "int_logit_ties": (6, 48, 6, dict(int_logits=True, dup_frac=0.5), 6),
    "root_only": (3, 1, 17, dict(), 7),
    "big_vocab": (2, 5, 151936, dict(plant=1.0, chain_bias=1.0, pad_frac=0.0), 8),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(GREEDY_CASES))
def test_greedy_matches_reference(device, dtype, case):
    B, N, V, kw, seed = GREEDY_CASES[case]
    logits, toks, par, D = make_case(B, N, V, dtype, seed, **kw)
    state = torch.tensor([123, 45], dtype=torch.int64)
    out, st = run_op(device, logits, toks, par, D, state)
    ref, _ = run_ref(logits, toks, par, D, state)
    compare(out, ref, what=f"greedy {case}")
    assert torch.equal(st, state), "greedy must not touch rng_state"
    alen = ref[1]
    # the cases really exercise what their names say
    if case in ("deep", "big_tree", "big_vocab"):
        assert int(alen.max()) >= min(D + 1, 5), alen
    if case == "big_vocab":  # a pure chain with planted agreement: accepted to the end
        assert torch.equal(alen, torch.full_like(alen, D + 1))
    if case == "deep":
        assert float(alen.float().mean()) >= 4
    if case == "stop_at_once":
        assert int((alen == 1).sum()) >= B - 1


def test_greedy_random_sweep(device):
    """Fresh random shapes: B 1..8, N 1..1024, mixed agreement."""
    g = torch.Generator().manual_seed(11)
    for it in range(6):
        B = int(torch.randint(1, 9, (1,), generator=g))
        N = int(torch.randint(1, 1025 if it < 2 else 200, (1,), generator=g))
        V = int(torch.randint(2, 3000, (1,), generator=g))
        dtype = DTYPES[it % 3]
        logits, toks, par, D = make_case(B, N, V, dtype, 100 + it, plant=0.8,
                                         chain_bias=float(torch.rand((), generator=g)))
        out, _ = run_op(device, logits, toks, par, D, torch.tensor([1, 2]))
        ref, _ = run_ref(logits, toks, par, D, torch.tensor([1, 2]))
        compare(out, ref, what=f"sweep {it} B={B} N={N} V={V} {dtype}")


def test_padding_nodes_ignored(device):
    """A padding node (parent -1) carrying the target's token is never accepted; max_depth may
    exceed the tree's depth (unused columns stay -1)."""
    V = 10
    logits = torch.zeros(1, 4, V)
    logits[0, 0, 3] = 5.0  # root picks 3
    logits[0, 1, 4] = 5.0  # node 1 picks 4
    toks = torch.tensor([[0, 3, 3, 4]])
    par = torch.tensor([[-1, -1, 0, 2]], dtype=torch.int32)  # node 1 is padding
    out, _ = run_op(device, logits, toks, par, 3, torch.tensor([0, 0]))
    # root -> node 2 (token 3); node 2 picks argmax of zeros = 0, no child 0 -> emit 0
    assert out[0].tolist() == [[0, 2, -1, -1]] and out[1].tolist() == [2] and out[2].tolist() == [0]


# ----------------------------------------------------------------------------------------------
# sampling: exact equality away from near-ties
# ----------------------------------------------------------------------------------------------
SAMPLING = [  # (temperature, top_k, top_p)
    (1.0, 0, 1.0),
    (0.6, 0, 1.0),
    (1.0, 40, 1.0),
    (1.0, 0, 0.9),
    (0.7, 20, 0.8),
    (1.3, 1, 1.0),
    (1.0, 5000, 0.5),  # top_k >= V (disabled) with a small nucleus
]
SAMPLING_CASES = {
    "deep": (4, 32, 300, dict(plant=1.0, chain_bias=0.7), 21),
    "random": (8, 24, 300, dict(), 22),
    "tiny_vocab_dups": (8, 48, 5, dict(dup_frac=0.5), 23),
}


# every (case, params) pair once, the dtype rotating (keeps the CPU suite fast)
SAMPLING_GRID = [(c, prm, DTYPES[(i + j) % 3]) for i, c in enumerate(SAMPLING_CASES)
                 for j, prm in enumerate(SAMPLING)]


@pytest.mark.parametrize("case,params,dtype", SAMPLING_GRID,
                         ids=[f"{c}-T{p[0]}-k{p[1]}-p{p[2]}-{str(d)[6:]}" for c, p, d in SAMPLING_GRID])
def test_sampling_matches_reference(device, dtype, params, case):
    T, k, p = params
    B, N, V, kw, seed = SAMPLING_CASES[case]
    logits, toks, par, D = make_case(B, N, V, dtype, seed, **kw)
    excused = 0
    for off in (0, 977):  # two offsets: different draws, same rules
        state = torch.tensor([0x5EED + seed, off], dtype=torch.int64)
        out, st = run_op(device, logits, toks, par, D, state, T, k, p)
        ref, st_ref = run_ref(logits, toks, par, D, state, T, k, p)
        assert st.tolist() == [state[0].item(), off + 1] and torch.equal(st, st_ref)
        rob = robust_rows_of(ref, robust_nodes(logits, state, T, k, p))
        excused += compare(out, ref, rob, min_robust_frac=0.75, what=f"sampling {case} {params} off={off}")
        if case == "deep" and T <= 1.0 and k != 1:
            assert int(ref[1].max()) >= 4, "planted agreement should make sampling accept deep"
    assert excused <= max(2, B // 4)


def test_sampling_big_vocab(device):
    """V = 151936 (Qwen3), a few nodes, bf16, top-k + top-p."""
    B, N, V = 2, 4, 151936
    logits, toks, par, D = make_case(B, N, V, torch.bfloat16, 31, plant=1.0, chain_bias=1.0,
                                     pad_frac=0.0, scale=2.0)
    for T, k, p in [(1.0, 0, 1.0), (0.8, 50, 0.9)]:
        state = torch.tensor([7, 3], dtype=torch.int64)
        out, _ = run_op(device, logits, toks, par, D, state, T, k, p)
        ref, _ = run_ref(logits, toks, par, D, state, T, k, p)
        rob = robust_rows_of(ref, robust_nodes(logits, state, T, k, p))
        compare(out, ref, rob, min_robust_frac=0.5, what=f"big vocab {(T, k, p)}")


def test_inverse_cdf_resolves_close_boundaries(device):
    """Each row keeps two tokens a < b (everything else -inf) with P(a) = q set 0.002 above
    (odd rows) or below (even rows) the row's own uniform u, so the draw must be a on odd rows
    and b on even rows. Catches wrong uniforms, wrong token order in the CDF and sums not
    accurate to better than 0.002 over a large vocabulary of -inf entries."""
    B, V, margin = 16, 131072, 0.002
    seed, off = 31337, 5
    u = ref_rng.uniform(seed, off, torch.arange(B), 1)[:, 0].double()
    logits = torch.full((B, 1, V), float("-inf"))
    expect = []
    for r in range(B):
        a, b_ = 1000 + 37 * r, V - 5 - 11 * r
        q = float(u[r]) + (margin if r % 2 else -margin)
        q = min(max(q, 1e-3), 1 - 1e-3)
        logits[r, 0, a] = math.log(q)
        logits[r, 0, b_] = math.log(1 - q)
        expect.append(a if float(u[r]) < q else b_)
    state = torch.tensor([seed, off], dtype=torch.int64)
    toks = torch.zeros(B, 1, dtype=torch.int64)
    par = torch.full((B, 1), -1, dtype=torch.int32)
    ref, _ = run_ref(logits, toks, par, 0, state, 1.0)
    assert ref[2].tolist() == expect, "the reference itself must resolve the planted margins"
    out, _ = run_op(device, logits, toks, par, 0, state, 1.0)
    assert out[2].tolist() == expect, (
        f"rows {[r for r in range(B) if out[2][r] != expect[r]]} drew the wrong token")


def test_sampling_random_sweep(device):
    g = torch.Generator().manual_seed(12)
    total = excused = 0
    for it in range(5):
        B = int(torch.randint(1, 9, (1,), generator=g))
        N = int(torch.randint(1, 200 if it else 1024, (1,), generator=g))
        V = int(torch.randint(2, 400 if it else 40, (1,), generator=g))
        T = float(torch.rand((), generator=g)) * 1.5 + 0.2
        k = [0, 1, 10, 100][it % 4]
        p = [1.0, 0.95, 0.7][it % 3]
        logits, toks, par, D = make_case(B, N, V, DTYPES[it % 3], 200 + it, plant=0.9)
        state = torch.tensor([it, 1000 * it], dtype=torch.int64)
        out, _ = run_op(device, logits, toks, par, D, state, T, k, p)
        ref, _ = run_ref(logits, toks, par, D, state, T, k, p)
        rob = robust_rows_of(ref, robust_nodes(logits, state, T, k, p))
        excused += compare(out, ref, rob, min_robust_frac=0.0, what=f"sweep {it}")
        total += B
    assert excused <= total // 5, f"{excused} of {total} rows were near-ties"


def test_top_k_one_is_greedy_without_ties(device):
    logits, toks, par, D = make_case(4, 64, 1000, torch.float32, 41, plant=0.8)
    out_s, _ = run_op(device, logits, toks, par, D, torch.tensor([1, 1]), 1.0, 1, 1.0)
    out_g, _ = run_op(device, logits, toks, par, D, torch.tensor([1, 1]))
    compare(out_s, out_g, what="top_k=1 vs greedy")


# ----------------------------------------------------------------------------------------------
# the comparison can fail
# ----------------------------------------------------------------------------------------------
def test_compare_catches_wrong_reference(device):
    # greedy: a reference that follows the highest-index duplicate sibling
    logits = torch.zeros(1, 3, 8)
    logits[0, 0, 5] = 1.0
    toks = torch.tensor([[0, 5, 5]])
    par = torch.tensor([[-1, 0, 0]], dtype=torch.int32)
    out, _ = run_op(device, logits, toks, par, 1, torch.tensor([0, 0]))
    wrong = [torch.tensor([[0, 2]], dtype=torch.int32), torch.tensor([2], dtype=torch.int32),
             torch.tensor([0])]
    with pytest.raises(AssertionError, match="accepted_nodes"):
        compare(out, wrong, what="self-check")
    compare(out, run_ref(logits, toks, par, 1, torch.tensor([0, 0]))[0], what="self-check ok")
    # sampling: a reference that draws with the wrong offset must be caught by the near-tie rule
    logits, toks, par, D = make_case(8, 40, 300, torch.float32, 22)
    state = torch.tensor([9, 4])
    out, _ = run_op(device, logits, toks, par, D, state, 1.0, 0, 0.9)
    wrong, _ = run_ref(logits, toks, par, D, torch.tensor([9, 5]), 1.0, 0, 0.9)
    rob = robust_rows_of(wrong, robust_nodes(logits, torch.tensor([9, 5]), 1.0, 0, 0.9))
    with pytest.raises(AssertionError, match="differs"):
        compare(out, wrong, rob, min_robust_frac=0.5, what="self-check sampling")


# ----------------------------------------------------------------------------------------------
# rng_state
# ----------------------------------------------------------------------------------------------
def test_rng_state_semantics(device):
    B, N, V = 64, 1, 50
    logits = torch.zeros(B, N, V, device=device)  # uniform: every draw is a fresh token
    toks = torch.zeros(B, N, dtype=torch.int64, device=device)
    par = torch.full((B, N), -1, dtype=torch.int32, device=device)
    st = torch.tensor([42, 10], device=device)
    a = op(logits, toks, par, 0, st, 1.0, 0, 1.0)
    assert st.tolist() == [42, 11]
    b_ = op(logits, toks, par, 0, st, 1.0, 0, 1.0)
    assert st.tolist() == [42, 12]
    assert not torch.equal(a[2], b_[2]), "a new offset must give new draws"
    op(logits, toks, par, 0, st, 0.0, 0, 1.0)
    assert st.tolist() == [42, 12], "greedy must not advance rng_state"
    st2 = torch.tensor([42, 10], device=device)
    a2 = op(logits, toks, par, 0, st2, 1.0, 0, 1.0)
    assert torch.equal(a[2], a2[2]), "same state must give the same draws"
    st3 = torch.tensor([43, 10], device=device)
    a3 = op(logits, toks, par, 0, st3, 1.0, 0, 1.0)
    assert not torch.equal(a[2], a3[2]), "a new seed must give new draws"
    # rows draw independently: not all rows emit the same token
    assert len(set(a[2].tolist())) > 10
    # large offsets / seeds (full uint64 range through int64) work and match the reference
    st4 = torch.tensor([-(2 ** 63), 2 ** 63 - 1], device=device)
    out = op(logits, toks, par, 0, st4, 1.0, 0, 1.0)
    ref, _ = run_ref(logits.cpu(), toks.cpu(), par.cpu(), 0, torch.tensor([-(2 ** 63), 2 ** 63 - 1]), 1.0)
    assert torch.equal(out[2].cpu(), ref[2])
    assert st4.tolist() == [-(2 ** 63), -(2 ** 63)], "offset wraps around like uint64"


def test_wrapper_defaults(device):
    logits, toks, par, D = make_case(2, 8, 20, torch.float32, 51, plant=1.0)
    out = jetspec_ext.tree_accept(logits.to(device), toks.to(device), par.to(device), D)
    ref, _ = run_ref(logits, toks, par, D, torch.zeros(2, dtype=torch.int64))
    compare([o.cpu() for o in out], ref, what="wrapper greedy")
    st = torch.tensor([4, 4], device=device)
    out = jetspec_ext.tree_accept(logits.to(device), toks.to(device), par.to(device), D, st,
                                  temperature=0.8, top_k=5, top_p=0.9, check=True)  # valid: no raise
    assert st.tolist() == [4, 5] and int(out[1].min()) >= 1
    with pytest.raises(ValueError, match="rng_state"):
        jetspec_ext.tree_accept(logits.to(device), toks.to(device), par.to(device), D, temperature=1.0)


# ----------------------------------------------------------------------------------------------
# statistical losslessness: 24576 draws per test (8192 independent rows x 3 offsets), Pearson
# chi-square against the target's filtered distribution computed independently in float64.
# alpha = 1e-6 per chi-square call, so a correct kernel fails a test with probability <= 2e-6
# (the seeds are fixed, so in practice the outcome is deterministic for a given kernel).
# Outcomes of probability 0 (filtered tokens, the unreachable duplicate sibling) must never
# occur. All expected counts are >= 60, so the chi-square approximation is accurate.
# ----------------------------------------------------------------------------------------------
ALPHA = 1e-6
FILTERS = [  # (temperature, top_k, top_p)
    (0.8, 0, 1.0),
    (1.0, 3, 1.0),
    (1.0, 0, 0.7),
    (1.2, 5, 0.8),
]


def filtered_probs(logits_row, T, k, p):
    """Independent float64 computation of the target's filtered distribution (V,)."""
    s = logits_row.double() / T
    order = torch.argsort(s, descending=True, stable=True)
    ss = s[order]
    V = s.numel()
    keep = torch.ones(V, dtype=torch.bool)
    if 0 < k < V:
        keep &= s >= ss[k - 1]
    if p < 1.0:
        q = torch.where(keep, torch.exp(s - ss[0]), torch.zeros_like(s))
        q = q / q.sum()
        vals = sorted(set(s[keep].tolist()), reverse=True)
        for t in vals:
            mass = float(q[s >= t].sum())
            assert abs(mass - p) > 1e-3, "test logits put the top-p boundary at a near-tie"
            if mass >= p:
                keep &= s >= t
                break
    q = torch.where(keep, torch.exp(s - ss[0]), torch.zeros_like(s))
    return q / q.sum()


def chi2_test(counts, probs, what):
    """Pearson chi-square goodness of fit; zero-probability outcomes must never occur."""
    counts = counts.double()
    n = float(counts.sum())
    zero = probs <= 0
    assert float(counts[zero].sum()) == 0, f"{what}: outcomes of probability 0 were drawn: {counts[zero]}"
    exp = probs[~zero] * n
    assert float(exp.min()) >= 5, f"{what}: expected counts too small for chi-square: {exp.min()}"
    stat = float(((counts[~zero] - exp) ** 2 / exp).sum())
    df = int((~zero).sum()) - 1
    pval = float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64))) if df > 0 else 1.0
    assert pval > ALPHA, f"{what}: chi2 = {stat:.1f} (df {df}), p = {pval:.2e} < {ALPHA}\n" \
                         f"observed {counts.tolist()}\nexpected {(probs * n).tolist()}"
    return pval


ROOT_LOGITS = torch.tensor([2.0, 1.5, 1.25, 0.875, 0.25, 0.0, -0.5, -1.0])  # exact in bf16
DRAWS_PER_CALL = 8192
CALLS = 3  # 24576 draws per test, three different offsets


def draw_many(device, logits_1, toks_1, par_1, D, T, k, p, dtype=torch.float32):
    """Repeat one tree over a large batch (rows draw independently) for CALLS offsets."""
    B = DRAWS_PER_CALL
    logits = logits_1.to(dtype).expand(B, *logits_1.shape).contiguous().to(device)
    toks = toks_1.expand(B, -1).contiguous().to(device)
    par = par_1.expand(B, -1).contiguous().to(device)
    st = torch.tensor([2024, 0], device=device)
    outs = []
    for _ in range(CALLS):
        outs.append([o.cpu() for o in op(logits, toks, par, D, st, T, k, p)])
    assert int(st[1]) == CALLS
    return [torch.cat(x) for x in zip(*outs)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("params", FILTERS, ids=lambda p: f"T{p[0]}-k{p[1]}-p{p[2]}")
def test_root_token_distribution(device, params, dtype):
    T, k, p = params
    logits = ROOT_LOGITS.to(dtype).float().unsqueeze(0)  # (N=1, V)
    acc, alen, nxt = draw_many(device, logits, torch.tensor([0]), torch.tensor([-1], dtype=torch.int32),
                               0, T, k, p, dtype)
    assert torch.all(alen == 1)
    counts = torch.bincount(nxt, minlength=8)
    chi2_test(counts, filtered_probs(logits[0], T, k, p), f"root token {params}")


def test_chi2_has_power():
    """Self-check: the statistical test rejects a sampler that ignores the filter."""
    T, k, p = 1.0, 3, 1.0
    logits = ROOT_LOGITS.unsqueeze(0)
    acc, alen, nxt = draw_many("cpu", logits, torch.tensor([0]), torch.tensor([-1], dtype=torch.int32),
                               0, T, 0, 1.0)  # unfiltered draws
    counts = torch.bincount(nxt, minlength=8)
    with pytest.raises(AssertionError, match="probability 0"):
        chi2_test(counts, filtered_probs(logits[0], T, k, p), "power")
    # a distribution slightly off (temperature 1.0 vs 1.1) is rejected too
    with pytest.raises(AssertionError, match="chi2"):
        chi2_test(counts, filtered_probs(logits[0], 1.1, 0, 1.0), "power")


CHAIN_LOGITS = torch.tensor([
    [1.0, 0.25, 0.0, -0.5, 0.5, -1.0],   # node 0 (root); child token 0
    [0.0, 1.5, 0.25, 0.5, -0.5, 0.0],    # node 1; child token 1
    [0.5, 0.0, 0.75, 0.0, 1.0, -1.0],    # node 2; child token 2
    [0.0, 0.5, 1.0, 1.5, 0.25, -0.25],   # node 3 (leaf)
])


@pytest.mark.parametrize("params", FILTERS + [(0.9, 4, 0.9)], ids=lambda p: f"T{p[0]}-k{p[1]}-p{p[2]}")
def test_accept_length_distribution(device, params):
    """Chain 0-1-2-3 carrying tokens 0,1,2: P(len = j) follows the product of the target's
    probabilities of the chain tokens; the emitted token's law given the length is q at the
    last node, restricted to non-chain tokens except at the leaf."""
    T, k, p = params
    toks = torch.tensor([9, 0, 1, 2]) % 6
    par = torch.tensor([-1, 0, 1, 2], dtype=torch.int32)
    acc, alen, nxt = draw_many(device, CHAIN_LOGITS, toks, par, 3, T, k, p)
    q = [filtered_probs(CHAIN_LOGITS[i], T, k, p) for i in range(4)]
    # joint of (accept_len, next_token): 4 x 6 outcomes
    exp = torch.zeros(4, 6, dtype=torch.float64)
    reach = 1.0
    for j in range(4):
        for y in range(6):
            if j < 3 and y == int(toks[j + 1]):
                continue  # accepted, not emitted here
            exp[j, y] = reach * q[j][y]
        if j < 3:
            reach *= float(q[j][int(toks[j + 1])])
    assert abs(float(exp.sum()) - 1) < 1e-9
    counts = torch.bincount((alen.long() - 1) * 6 + nxt, minlength=24).reshape(4, 6)
    chi2_test(counts.flatten(), exp.flatten(), f"chain joint {params}")
    # the accept-length marginal on its own (more power for the length law)
    chi2_test(counts.sum(1), exp.sum(1), f"accept length {params}")
    # paths are prefixes of the chain
    for j in range(4):
        rows = alen == j + 1
        assert torch.all(acc[rows, : j + 1] == torch.arange(j + 1, dtype=torch.int32))
        assert torch.all(acc[rows, j + 1:] == -1)


TWO_STEP_LOGITS = torch.tensor([
    [1.0, 0.75, -0.5, 0.0, 0.5],    # root: children carry 0 (node 1), 1 (node 2), 0 (node 3)
    [0.0, 0.5, 1.0, -0.25, 0.25],   # node 1
    [0.5, -0.5, 0.0, 1.25, 0.75],   # node 2
    [3.0, -3.0, -3.0, -3.0, -3.0],  # node 3 (duplicate of node 1: must never be reached)
])


@pytest.mark.parametrize("params", FILTERS, ids=lambda p: f"T{p[0]}-k{p[1]}-p{p[2]}")
def test_two_step_joint_distribution(device, params):
    """Joint of (accepted child, emitted token) = product of the target's conditionals."""
    T, k, p = params
    toks = torch.tensor([4, 0, 1, 0])
    par = torch.tensor([-1, 0, 0, 0], dtype=torch.int32)
    acc, alen, nxt = draw_many(device, TWO_STEP_LOGITS, toks, par, 1, T, k, p)
    q = [filtered_probs(TWO_STEP_LOGITS[i], T, k, p) for i in range(4)]
    exp = torch.zeros(4, 5, dtype=torch.float64)  # (last node, emitted token)
    for y in range(5):
        if y not in (0, 1):
            exp[0, y] = q[0][y]
        exp[1, y] = q[0][0] * q[1][y]
        exp[2, y] = q[0][1] * q[2][y]
    last = torch.where(alen == 2, acc[:, 1].long(), torch.zeros_like(alen, dtype=torch.long))
    counts = torch.bincount(last * 5 + nxt, minlength=20)
    chi2_test(counts, exp.flatten(), f"two-step joint {params}")  # (asserts expected counts >= 5)
    assert int(counts.reshape(4, 5)[3].sum()) == 0, "the duplicate sibling must never be taken"


# ----------------------------------------------------------------------------------------------
# opcheck
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T,k,p", [(0.0, 0, 1.0), (0.8, 10, 0.9)])
def test_opcheck(device, T, k, p):
    logits, toks, par, D = make_case(2, 6, 16, torch.float32, 61, plant=0.8)
    st = torch.tensor([5, 6], device=device)
    torch.library.opcheck(op, (logits.to(device), toks.to(device), par.to(device), D, st, T, k, p))


def test_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        logits = torch.empty(3, 16, 64, dtype=torch.bfloat16)
        out = op(logits, torch.empty(3, 16, dtype=torch.int64), torch.empty(3, 16, dtype=torch.int32),
                 5, torch.empty(2, dtype=torch.int64), 1.0, 0, 1.0)
        assert [tuple(o.shape) for o in out] == [(3, 6), (3,), (3,)]
        assert [o.dtype for o in out] == [torch.int32, torch.int32, torch.int64]


# ----------------------------------------------------------------------------------------------
# CUDA graphs: tree_accept (sampling) + commit_kv captured together
# ----------------------------------------------------------------------------------------------
@requires_cuda
def test_cuda_graph_accept_and_commit(device):
    if device != "cuda":
        pytest.skip("CUDA graphs need the GPU")
    B, N, V, D = 16, 32, 512, None
    T, k, p = 0.9, 50, 0.95
    logits0, toks, par, D = make_case(B, N, V, torch.bfloat16, 71, plant=0.9, scale=1.0)
    C, H, S, Dh = 4, 2, 64 + 10 * (D + 1) + N, 64
    dev = "cuda"
    s_logits = logits0.to(dev)
    s_toks, s_par = toks.to(dev), par.to(dev)
    rng = torch.tensor([777, 0], device=dev)
    kv = torch.randn(C, B, H, S, Dh, device=dev, dtype=torch.bfloat16)
    plen = torch.randint(0, 32, (B,), dtype=torch.int32).to(dev)

    def step():
        acc, alen, nxt = op(s_logits, s_toks, s_par, D, rng, T, k, p)
        torch.ops.jetspec.commit_kv.default(kv, plen, acc, alen)
        return acc, alen, nxt

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out = step()
    torch.cuda.synchronize()

    gen = torch.Generator().manual_seed(72)
    new_logits = [(torch.randn(B, N, V, generator=gen)).to(torch.bfloat16) for _ in range(2)]
    for lg in new_logits:
        plant_agreement(lg, toks, par, gen, follow=0.9)
    seq = [new_logits[0], new_logits[1], new_logits[1]]
    nexts = []
    for r, lg in enumerate(seq):
        rng0, kv0, plen0 = rng.clone(), kv.clone(), plen.clone()
        s_logits.copy_(lg.to(dev))
        graph.replay()
        torch.cuda.synchronize()
        assert int(rng[1]) == int(rng0[1]) + 1, "a replay must advance the offset"
        # eager with the same state
        rng_e, kv_e, plen_e = rng0.clone(), kv0.clone(), plen0.clone()
        e_out = op(lg.to(dev), s_toks, s_par, D, rng_e, T, k, p)
        torch.ops.jetspec.commit_kv.default(kv_e, plen_e, e_out[0], e_out[1])
        for a, b_ in zip(g_out, e_out):
            assert torch.equal(a, b_), f"replay {r}: graph output differs from eager"
        assert torch.equal(kv, kv_e) and torch.equal(plen, plen_e) and torch.equal(rng, rng_e)
        # and the CPU reference agrees away from near-ties
        ref, _ = run_ref(lg, toks, par, D, rng0.cpu(), T, k, p)
        rob = robust_rows_of(ref, robust_nodes(lg, rng0.cpu(), T, k, p))
        compare([o.cpu() for o in g_out], ref, rob, min_robust_frac=0.75, what=f"graph replay {r}")
        nexts.append((g_out[0].clone(), g_out[2].clone()))
    # replays 1 and 2 saw the same logits but must have drawn fresh randomness
    assert not (torch.equal(nexts[1][0], nexts[2][0]) and torch.equal(nexts[1][1], nexts[2][1]))


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------
def good_args(device):
    logits, toks, par, D = make_case(2, 8, 16, torch.float32, 81, plant=1.0)
    return dict(logits=logits.to(device), node_tokens=toks.to(device), parents=par.to(device),
                max_depth=D, rng_state=torch.tensor([1, 2], device=device), temperature=1.0,
                top_k=0, top_p=1.0)


def call(a):
    return op(a["logits"], a["node_tokens"], a["parents"], a["max_depth"], a["rng_state"],
              a["temperature"], a["top_k"], a["top_p"])


BAD_ARGS = {
    "logits_dtype": (lambda a: a.update(logits=a["logits"].double()), r"`logits`"),
    "logits_int": (lambda a: a.update(logits=a["logits"].long()), r"`logits`"),
    "logits_rank": (lambda a: a.update(logits=a["logits"][0]), r"`logits`"),
    "logits_noncontig": (lambda a: a.update(logits=a["logits"].transpose(0, 1).contiguous().transpose(0, 1)), r"`logits`.*contiguous"),
    "tokens_dtype": (lambda a: a.update(node_tokens=a["node_tokens"].int()), r"`node_tokens`"),
    "tokens_shape": (lambda a: a.update(node_tokens=a["node_tokens"][:, :5].contiguous()), r"`node_tokens`"),
    "tokens_rank": (lambda a: a.update(node_tokens=a["node_tokens"].flatten()), r"`node_tokens`"),
    "tokens_noncontig": (lambda a: a.update(node_tokens=torch.stack([a["node_tokens"]] * 2, -1)[..., 0]), r"`node_tokens`.*contiguous"),
    "parents_dtype": (lambda a: a.update(parents=a["parents"].long()), r"`parents`"),
    "parents_shape": (lambda a: a.update(parents=a["parents"][:1].contiguous()), r"`parents`"),
    "parents_noncontig": (lambda a: a.update(parents=torch.stack([a["parents"]] * 2, -1)[..., 0]), r"`parents`.*contiguous"),
    "max_depth_negative": (lambda a: a.update(max_depth=-1), r"`max_depth`"),
    "max_depth_too_big": (lambda a: a.update(max_depth=8), r"`max_depth`"),
    "rng_shape": (lambda a: a.update(rng_state=torch.zeros(3, dtype=torch.int64, device=a["logits"].device)), r"`rng_state`"),
    "rng_rank": (lambda a: a.update(rng_state=torch.zeros(1, 2, dtype=torch.int64, device=a["logits"].device)), r"`rng_state`"),
    "rng_dtype": (lambda a: a.update(rng_state=a["rng_state"].int()), r"`rng_state`"),
    "rng_noncontig": (lambda a: a.update(rng_state=torch.zeros(4, dtype=torch.int64, device=a["logits"].device)[::2]), r"`rng_state`"),
    "temperature_negative": (lambda a: a.update(temperature=-0.5), r"`temperature`"),
    "temperature_nan": (lambda a: a.update(temperature=float("nan")), r"`temperature`"),
    "top_p_zero": (lambda a: a.update(top_p=0.0), r"`top_p`"),
    "top_p_big": (lambda a: a.update(top_p=1.5), r"`top_p`"),
    "top_k_negative": (lambda a: a.update(top_k=-1), r"`top_k`"),
}


@pytest.mark.parametrize("bad", list(BAD_ARGS))
def test_bad_arguments(device, bad):
    a = good_args(device)
    mutate, msg = BAD_ARGS[bad]
    mutate(a)
    with pytest.raises(RuntimeError, match=msg):
        call(a)


@requires_cuda
@pytest.mark.parametrize("which", ["node_tokens", "parents", "rng_state", "logits"])
def test_device_mismatch(which):
    a = good_args("cuda")
    a[which] = a[which].cpu()
    with pytest.raises(RuntimeError, match=f"`{which}`|`logits`"):
        call(a)


def bad_tree(kind):
    """Row 1 of 3 is invalid; the bad node lies on the greedy path."""
    V = 6
    logits = torch.zeros(3, 5, V)
    logits[:, :, 1] = 4.0  # target always picks token 1
    toks = torch.ones(3, 5, dtype=torch.int64)
    par = torch.tensor([[-1, 0, 1, 2, 3]] * 3, dtype=torch.int32)  # chain of depth 4
    D = 4
    if kind == "parent_ge_index":
        par[1, 3] = 3
        msg = r"parents"
    elif kind == "parent_after":
        par[1, 2] = 4
        msg = r"parents"
    elif kind == "parent_below_minus_one":
        par[1, 2] = -2
        msg = r"parents"
    elif kind == "too_deep":
        D = 3  # rows 0 and 2 too... keep them valid by cutting their chain
        par[0, 4] = 0
        par[2, 4] = -1
        msg = r"max_depth"
    return logits, toks, par, D, msg


@pytest.mark.parametrize("kind", ["parent_ge_index", "parent_after", "parent_below_minus_one", "too_deep"])
def test_invalid_tree(device, kind):
    logits, toks, par, D, msg = bad_tree(kind)
    args = (logits.to(device), toks.to(device), par.to(device), D)
    with pytest.raises(ValueError, match=msg):
        ref_accept.tree_accept(logits, toks, par, D, torch.zeros(2, dtype=torch.int64))
    for T in (0.0, 1.0):
        st = torch.tensor([3, 4], device=device)
        if device == "cpu":
            with pytest.raises(RuntimeError, match=msg):
                op(*args, st, T, 0, 1.0)
            with pytest.raises(RuntimeError, match=msg):
                jetspec_ext.tree_accept(*args, st, T, check=True)
        else:
            with pytest.raises(ValueError, match=msg):
                jetspec_ext.tree_accept(*args, st, T, check=True)
            out = [o.cpu() for o in op(*args, st, T, 0, 1.0)]  # flags, no sync, no raise
            assert out[1][1].item() == -1 and out[2][1].item() == -1
            assert torch.all(out[0][1] == -1)
            good = torch.tensor([0, 2])
            ref, _ = run_ref(logits[good], toks[good], par[good], D, torch.tensor([3, 4]), T)
            if T == 0.0:
                # valid rows are unaffected (greedy: exact; row ids differ when sampling)
                compare([o[good] for o in out], ref, what=f"valid rows next to a bad one ({kind})")


def test_root_parent_must_be_minus_one(device):
    logits, toks, par, D = make_case(2, 8, 16, torch.float32, 91)
    par[0, 0] = 0
    args = (logits.to(device), toks.to(device), par.to(device), D)
    with pytest.raises(ValueError, match="parents"):
        ref_accept.tree_accept(logits, toks, par, D, torch.zeros(2, dtype=torch.int64))
    exc = RuntimeError if device == "cpu" else ValueError
    with pytest.raises(exc, match="parents"):
        jetspec_ext.tree_accept(*args, check=True)
