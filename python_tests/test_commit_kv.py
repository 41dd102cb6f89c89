"""commit_kv: kernel vs reference (exact), untouched slots, 6-D wrapper input, overlap of
sources and destinations, opcheck, argument errors, invalid paths (CPU raises, CUDA flags)."""
import pytest
import torch

import jetspec_ext
from jetspec_ext.reference import commit as ref_commit

from conftest import requires_cuda

op = torch.ops.jetspec.commit_kv.default
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def random_paths(B, P, N, gen, lens=None):
    """accepted_nodes (B, P) i32 (strictly increasing from 0, -1 padded) and accept_len (B,) i32.
    lens: explicit lengths (0 and -1 allowed: such rows are skipped)."""
    acc = torch.full((B, P), -1, dtype=torch.int32)
    if lens is None:
        lens = torch.randint(0, P + 1, (B,), generator=gen).tolist()
    for b, n in enumerate(lens):
        if n <= 0:
            continue
        rest = torch.randperm(N - 1, generator=gen)[: n - 1].sort().values + 1
        acc[b, :n] = torch.cat([torch.zeros(1, dtype=torch.long), rest]).int()
    return acc, torch.tensor(lens, dtype=torch.int32)


def make_commit_case(C, B, H, S, Dh, P, N, dtype, seed, lens=None):
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn(C, B, H, S, Dh, generator=g).to(dtype)
    plen = torch.randint(0, S - N + 1, (B,), generator=g).int()
    acc, alen = random_paths(B, P, N, g, lens)
    return kv, plen, acc, alen


def independent_check(kv0, plen0, acc, alen, kv, plen, what=""):
    """Invariants checked without the reference: moved slots hold the sources, every other slot
    is unchanged, prefix_lens advanced on rows with accept_len > 0 only."""
    C, B, H, S, Dh = kv0.shape
    for b in range(B):
        n, p = int(alen[b]), int(plen0[b])
        if n <= 0:
            assert torch.equal(kv[:, b], kv0[:, b]), f"{what}: row {b} (accept_len {n}) was modified"
            assert int(plen[b]) == p, f"{what}: prefix_lens[{b}] changed for accept_len {n}"
            continue
        src = p + acc[b, :n].long()
        assert torch.equal(kv[:, b, :, p: p + n], kv0[:, b, :, src]), f"{what}: row {b} moved slots wrong"
        assert torch.equal(kv[:, b, :, :p], kv0[:, b, :, :p]), f"{what}: row {b} prefix slots touched"
        assert torch.equal(kv[:, b, :, p + n:], kv0[:, b, :, p + n:]), f"{what}: row {b} slots past p+n touched"
        assert int(plen[b]) == p + n, f"{what}: prefix_lens[{b}] = {int(plen[b])}, expected {p + n}"


def run_both(device, kv0, plen0, acc, alen, *, wrapper=False):
    kv, plen = kv0.clone().to(device), plen0.clone().to(device)
    if wrapper:
        jetspec_ext.commit_kv(kv, plen, acc.to(device), alen.to(device))
    else:
        op(kv, plen, acc.to(device), alen.to(device))
    kv_r, plen_r = kv0.clone(), plen0.clone()
    ref_commit.commit_kv(kv_r, plen_r, acc, alen)
    return kv.cpu(), plen.cpu(), kv_r, plen_r


CASES = {
    # name: (C, B, H, S, Dh, P, N, lens)
    "small": (2, 3, 2, 40, 16, 6, 12, [0, 1, 6]),
    "batch8_mixed": (6, 8, 4, 128, 64, 17, 64, None),
    "flagged_rows": (4, 5, 2, 64, 32, 9, 20, [-1, 9, 0, -1, 3]),
    "head128_long_paths": (4, 4, 2, 300, 128, 64, 200, [64, 1, 33, 64]),
    "path_of_whole_tree": (2, 2, 1, 48, 8, 16, 16, [16, 16]),  # a_j = j: no move at all
    "single": (1, 1, 1, 8, 8, 1, 1, [1]),  # (Dh * element size >= 16 bytes for the CUDA op)
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_commit_matches_reference(device, dtype, case):
    C, B, H, S, Dh, P, N, lens = CASES[case]
    kv0, plen0, acc, alen = make_commit_case(C, B, H, S, Dh, P, N, dtype, list(CASES).index(case), lens)
    if case == "path_of_whole_tree":
        acc[:] = torch.arange(16, dtype=torch.int32)
    kv, plen, kv_r, plen_r = run_both(device, kv0, plen0, acc, alen)
    assert torch.equal(kv, kv_r), f"{case}: kv_cache differs from the reference"
    assert torch.equal(plen, plen_r), f"{case}: prefix_lens {plen.tolist()} vs {plen_r.tolist()}"
    independent_check(kv0, plen0, acc, alen, kv, plen, case)
    # the case really moves data (sources differ from destinations somewhere)
    if case not in ("path_of_whole_tree", "single"):
        assert not torch.equal(kv, kv0)


def test_commit_random_sweep(device):
    g = torch.Generator().manual_seed(5)
    for it in range(8):
        B = int(torch.randint(1, 9, (1,), generator=g))
        C = int(torch.randint(1, 7, (1,), generator=g))
        N = int(torch.randint(1, 80, (1,), generator=g))
        P = int(torch.randint(1, N + 1, (1,), generator=g))
        S = N + int(torch.randint(0, 40, (1,), generator=g))
        kv0, plen0, acc, alen = make_commit_case(C, B, 2, S, 8, P, N, DTYPES[it % 3], 50 + it)
        kv, plen, kv_r, plen_r = run_both(device, kv0, plen0, acc, alen, wrapper=bool(it % 2))
        assert torch.equal(kv, kv_r) and torch.equal(plen, plen_r), f"sweep {it}"
        independent_check(kv0, plen0, acc, alen, kv, plen, f"sweep {it}")


def overlap_case(dtype=torch.float32):
    """Sources overlap destinations: path [0, 2, 3, 5] moves slot p+2 -> p+1 while p+3 -> p+2."""
    C, B, H, S, Dh = 3, 2, 2, 16, 8
    kv0 = torch.arange(C * B * H * S * Dh, dtype=torch.float32).reshape(C, B, H, S, Dh).to(dtype)
    plen0 = torch.tensor([4, 0], dtype=torch.int32)
    acc = torch.tensor([[0, 2, 3, 5, -1], [0, 1, 2, 3, 4]], dtype=torch.int32)
    alen = torch.tensor([4, 5], dtype=torch.int32)
    return kv0, plen0, acc, alen


def test_commit_overlap(device):
    kv0, plen0, acc, alen = overlap_case()
    kv, plen, kv_r, plen_r = run_both(device, kv0, plen0, acc, alen)
    assert torch.equal(kv, kv_r) and plen.tolist() == [8, 5]
    assert torch.equal(kv[:, 0, :, 4:8], kv0[:, 0, :, [4, 6, 7, 9]])
    independent_check(kv0, plen0, acc, alen, kv, plen, "overlap")


def test_compare_catches_wrong_reference(device):
    """Self-check: a commit that writes destinations while still reading sources (backwards
    order) corrupts the overlap case, and the comparisons above catch it."""
    kv0, plen0, acc, alen = overlap_case()
    kv, plen, _, _ = run_both(device, kv0, plen0, acc, alen)
    wrong = kv0.clone()
    for b in range(2):
        p, n = int(plen0[b]), int(alen[b])
        for j in reversed(range(n)):  # no staging, reverse order: reads overwritten slots
            wrong[:, b, :, p + j] = wrong[:, b, :, p + int(acc[b, j])]
    wrong_plen = plen0 + alen
    # row 0: slot p+2 is overwritten (j=2, with slot p+3) before j=1 reads it
    assert not torch.equal(kv, wrong)
    with pytest.raises(AssertionError, match="moved slots wrong"):
        independent_check(kv0, plen0, acc, alen, wrong, wrong_plen, "self-check")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_commit_6d_wrapper(device, dtype):
    L, B, H, S, Dh, P, N = 3, 4, 2, 50, 16, 8, 20
    g = torch.Generator().manual_seed(9)
    kv6 = torch.randn(L, 2, B, H, S, Dh, generator=g).to(dtype)
    plen0 = torch.randint(0, S - N + 1, (B,), generator=g).int()
    acc, alen = random_paths(B, P, N, g, [8, 0, 1, 5])
    kv, plen = kv6.clone().to(device), plen0.clone().to(device)
    out = jetspec_ext.commit_kv(kv, plen, acc.to(device), alen.to(device), check=True)
    assert out is None
    kv_r, plen_r = kv6.clone().flatten(0, 1), plen0.clone()
    ref_commit.commit_kv(kv_r, plen_r, acc, alen)
    assert torch.equal(kv.cpu(), kv_r.reshape(kv6.shape)), "6-D input: cache not updated in place"
    assert torch.equal(plen.cpu(), plen_r)
    # a non-contiguous 6-D cache must not be silently copied
    kv_nc = kv6.clone().to(device).transpose(4, 5).contiguous().transpose(4, 5)
    with pytest.raises(RuntimeError, match="`kv_cache`.*contiguous"):
        jetspec_ext.commit_kv(kv_nc, plen0.clone().to(device), acc.to(device), alen.to(device))


@requires_cuda
def test_commit_qwen3_8b_shape(device):
    if device != "cuda":
        pytest.skip("Qwen3-8B-sized cache only on the GPU")
    L, B, H, S, Dh, D = 36, 2, 8, 320, 128, 16
    g = torch.Generator(device="cuda").manual_seed(1)
    kv6 = torch.randn(L, 2, B, H, S, Dh, device="cuda", generator=g).to(torch.bfloat16)
    plen0 = torch.tensor([37, 0], dtype=torch.int32)
    acc, alen = random_paths(B, D + 1, 256, torch.Generator().manual_seed(2), [17, 6])
    kv, plen = kv6.clone(), plen0.cuda()
    jetspec_ext.commit_kv(kv, plen, acc.cuda(), alen.cuda(), check=True)
    kv_r, plen_r = kv6.clone().flatten(0, 1), plen0.clone().cuda()
    ref_commit.commit_kv(kv_r, plen_r, acc.cuda(), alen.cuda())
    assert torch.equal(kv.flatten(0, 1), kv_r) and plen.tolist() == [54, 6]


def test_commit_opcheck(device):
    kv0, plen0, acc, alen = make_commit_case(2, 3, 2, 24, 8, 5, 10, torch.float32, 3, [5, 0, 2])
    torch.library.opcheck(op, (kv0.to(device), plen0.to(device), acc.to(device), alen.to(device)))


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------
def good_args(device):
    kv0, plen0, acc, alen = make_commit_case(2, 3, 2, 24, 8, 5, 10, torch.float32, 4, [5, 0, 2])
    return dict(kv_cache=kv0.to(device), prefix_lens=plen0.to(device), accepted_nodes=acc.to(device),
                accept_len=alen.to(device))


def call(a):
    op(a["kv_cache"], a["prefix_lens"], a["accepted_nodes"], a["accept_len"])


BAD_ARGS = {
    "kv_dtype_double": (lambda a: a.update(kv_cache=a["kv_cache"].double()), r"`kv_cache`"),
    "kv_dtype_int": (lambda a: a.update(kv_cache=a["kv_cache"].int()), r"`kv_cache`"),
    "kv_rank": (lambda a: a.update(kv_cache=a["kv_cache"][0]), r"`kv_cache`"),
    "kv_noncontig": (lambda a: a.update(kv_cache=a["kv_cache"].transpose(3, 4).contiguous().transpose(3, 4)), r"`kv_cache`.*contiguous"),
    "prefix_dtype": (lambda a: a.update(prefix_lens=a["prefix_lens"].long()), r"`prefix_lens`"),
    "prefix_shape": (lambda a: a.update(prefix_lens=torch.zeros(4, dtype=torch.int32, device=a["kv_cache"].device)), r"`prefix_lens`"),
    "prefix_rank": (lambda a: a.update(prefix_lens=a["prefix_lens"][None]), r"`prefix_lens`"),
    "prefix_noncontig": (lambda a: a.update(prefix_lens=torch.zeros(6, dtype=torch.int32, device=a["kv_cache"].device)[::2]), r"`prefix_lens`"),
    "nodes_dtype": (lambda a: a.update(accepted_nodes=a["accepted_nodes"].long()), r"`accepted_nodes`"),
    "nodes_rank": (lambda a: a.update(accepted_nodes=a["accepted_nodes"].flatten()), r"`accepted_nodes`"),
    "nodes_rows": (lambda a: a.update(accepted_nodes=a["accepted_nodes"][:2].contiguous()), r"`accepted_nodes`"),
    "nodes_longer_than_cache": (lambda a: a.update(accepted_nodes=torch.zeros(3, 25, dtype=torch.int32, device=a["kv_cache"].device)), r"longer than the cache"),
    "nodes_noncontig": (lambda a: a.update(accepted_nodes=a["accepted_nodes"].t().contiguous().t()), r"`accepted_nodes`.*contiguous"),
    "len_dtype": (lambda a: a.update(accept_len=a["accept_len"].long()), r"`accept_len`"),
    "len_shape": (lambda a: a.update(accept_len=a["accept_len"][:2]), r"`accept_len`"),
    "len_noncontig": (lambda a: a.update(accept_len=torch.zeros(6, dtype=torch.int32, device=a["kv_cache"].device)[::2]), r"`accept_len`"),
}


@pytest.mark.parametrize("bad", list(BAD_ARGS))
def test_commit_bad_arguments(device, bad):
    a = good_args(device)
    mutate, msg = BAD_ARGS[bad]
    mutate(a)
    with pytest.raises(RuntimeError, match=msg):
        call(a)


@requires_cuda
@pytest.mark.parametrize("which", ["prefix_lens", "accepted_nodes", "accept_len", "kv_cache"])
def test_commit_device_mismatch(which):
    a = good_args("cuda")
    a[which] = a[which].cpu()
    with pytest.raises(RuntimeError, match=f"`{which}`|`kv_cache`"):
        call(a)


def test_commit_path_past_cache_end(device):
    """Row 1's path would write/read past S: CPU raises (nothing modified); CUDA leaves the row
    untouched and sets its prefix_lens to -1 (check=True turns that into ValueError)."""
    C, B, H, S, Dh = 2, 3, 2, 20, 4
    g = torch.Generator().manual_seed(0)
    kv0 = torch.randn(C, B, H, S, Dh, generator=g)
    plen0 = torch.tensor([2, 15, 5], dtype=torch.int32)
    acc = torch.tensor([[0, 1, 3, -1], [0, 2, 5, -1], [0, 4, -1, -1]], dtype=torch.int32)
    alen = torch.tensor([3, 3, 2], dtype=torch.int32)  # row 1: slot 15 + 5 = 20 = S
    with pytest.raises(ValueError, match="past the end of the cache"):
        ref_commit.commit_kv(kv0.clone(), plen0.clone(), acc, alen)
    kv, plen = kv0.clone().to(device), plen0.clone().to(device)
    if device == "cpu":
        with pytest.raises(RuntimeError, match="past the end of the cache"):
            op(kv, plen, acc, alen)
        assert torch.equal(kv, kv0) and torch.equal(plen, plen0), "the CPU op validates before writing"
        with pytest.raises(RuntimeError, match="past the end of the cache"):
            jetspec_ext.commit_kv(kv, plen, acc, alen, check=True)
        return
    op(kv, plen, acc.to(device), alen.to(device))  # flags, no raise
    kv, plen = kv.cpu(), plen.cpu()
    assert plen.tolist() == [5, -1, 7]
    assert torch.equal(kv[:, 1], kv0[:, 1]), "the flagged row must be left untouched"
    good = torch.tensor([0, 2])
    kv_r, plen_r = kv0.clone()[:, good].contiguous(), plen0[good].clone()
    ref_commit.commit_kv(kv_r, plen_r, acc[good], alen[good])
    assert torch.equal(kv[:, good], kv_r), "valid rows next to a flagged one must be committed"
    kv, plen = kv0.clone().to(device), plen0.clone().to(device)
    with pytest.raises(ValueError, match="past the end of the cache"):
        jetspec_ext.commit_kv(kv, plen, acc.to(device), alen.to(device), check=True)


def test_commit_cpu_value_errors():
    """CPU-only value checks (the CUDA op's behaviour for these is unspecified)."""
    a = good_args("cpu")
    a["accept_len"] = torch.tensor([6, 0, 2], dtype=torch.int32)  # more than the 5 columns
    with pytest.raises(RuntimeError, match="`accept_len"):
        call(a)
    a = good_args("cpu")
    a["accepted_nodes"][0, 2] = -1  # padding inside the path
    with pytest.raises(RuntimeError, match="`accepted_nodes"):
        call(a)
    a = good_args("cpu")
    a["accepted_nodes"][0, 0] = 1  # a path starts at the root
    with pytest.raises(RuntimeError, match="`accepted_nodes"):
        call(a)
    a = good_args("cpu")
    a["prefix_lens"][0] = -3
    with pytest.raises(RuntimeError, match="`prefix_lens"):
        call(a)
