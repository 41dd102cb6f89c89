"""Reference of ``build_tree``: per-depth top-W with log-probs, then a Python-heap best-first
expansion and a NumPy ancestor mask (the host path the op replaces). Slow, clear, exact.

Semantics (shared bit for bit with the CPU kernel; the CUDA kernel matches except at 1-ulp
near-ties of cumulative scores across depths, see docs/build_tree.md):

* Scaled logits ``x = float32(logits) * float32(1 / temperature)`` (no multiply when
  temperature == 1), then NaN -> -inf.
* Per depth row (``draft_logits[:, d-1]`` is the distribution of depth d):
  ``m = max(x)``; ``e(x) = 0 if x == m else x - m`` (float32; the rule makes +-inf maxima well
  defined: if ``m = +inf`` the mass is shared equally by the +inf tokens, if ``m = -inf`` every
  token is -inf and the row counts as uniform); ``logS = float32(log(sum(exp(double(e)))))``.
  Log-prob of token x: ``e(x) - logS``.
* Top-W per depth: order by x descending, ties to the lower token id.
* Cumulative score of a node at depth d: ``A(node) - C[d]`` with
  ``A(child) = float32(A(parent) + e(token))`` (A(root) = 0) and
  ``C[d] = float32(C[d-1] + logS[d-1])`` (C[0] = 0). (Same value as the sum of log-probs, written
  so that mathematically tied paths of the same depth tie exactly in float32.)
* accum: pop the created, unexpanded node of highest score (ties: lower node index, i.e. created
  first) whose depth < D, append its W children in rank order (the last expansion appends only
  as many as fit in the budget), repeat until N nodes or nothing is expandable.
* topn: heap of candidates (parent, rank); start (root, 0). Pop the best (ties: lower parent
  index; a parent has at most one pending candidate), create the node, push (parent, rank + 1)
  if rank + 1 < W and (node, 0) if its depth < D. Until N nodes or the heap is empty.
* Padding rows (index >= num_nodes): token = root token, parent -1, depth 0, score -inf, mask
  own bit only, first_child = next_sibling = -1.
"""
import heapq
from typing import Tuple

import numpy as np
import torch

Tensor = torch.Tensor


def depth_tables(draft_logits: Tensor, width: int, temperature: float = 1.0):
    """Per-depth top-W tables. Returns (tokens (B,D,W) int64, e (B,D,W) float32 = x - max,
    logS (B,D) float32, C (B,D+1) float32 cumulative log-normalisers)."""
    x = draft_logits.detach().float()
    if temperature != 1.0:
        x = x * torch.tensor(1.0 / temperature, dtype=torch.float32, device=x.device)
    x = torch.where(torch.isnan(x), torch.full_like(x, float("-inf")), x)
    m = x.amax(dim=-1, keepdim=True)
    e = torch.where(x == m, torch.zeros_like(x), x - m)
    logS = torch.log(torch.exp(e.double()).sum(dim=-1)).float()
    vals, idx = torch.sort(x, dim=-1, descending=True, stable=True)
    vals, idx = vals[..., :width], idx[..., :width]
    etop = torch.where(vals == m, torch.zeros_like(vals), vals - m)
    B, D = logS.shape
    C = torch.zeros(B, D + 1, dtype=torch.float32, device=x.device)
    for d in range(D):
        C[:, d + 1] = C[:, d] + logS[:, d]
    return idx, etop, logS, C


def expand_row(tok, e, C, root: int, width: int, budget: int, policy: str):
    """Best-first expansion of one batch row. tok (D,W) ints, e (D,W) np.float32, C (D+1,)
    np.float32. Returns lists (tokens, parents, depths, scores)."""
    D = len(tok)
    W, N = width, budget
    toks, par, dep = [root], [-1], [0]
    A = [np.float32(0.0)]
    sc = [np.float32(0.0)]

    def child(p, r):
        d = dep[p] + 1
        a = np.float32(A[p] + e[d - 1][r])
        return d, a, np.float32(a - C[d])

    def add(p, r):
        d, a, s = child(p, r)
        toks.append(int(tok[d - 1][r]))
        par.append(p)
        dep.append(d)
        A.append(a)
        sc.append(s)
        return len(toks) - 1, d

    if policy == "accum":
        heap = [(-sc[0], 0)] if D >= 1 else []
        while len(toks) < N and heap:
            _, p = heapq.heappop(heap)
            for r in range(W):
                if len(toks) == N:
                    break
                i, d = add(p, r)
                if d < D:
                    heapq.heappush(heap, (-sc[i], i))
    elif policy == "topn":
        heap = [(-child(0, 0)[2], 0, 0)] if D >= 1 else []
        while len(toks) < N and heap:
            _, p, r = heapq.heappop(heap)
            i, d = add(p, r)
            if r + 1 < W:
                heapq.heappush(heap, (-child(p, r + 1)[2], p, r + 1))
            if d < D:
                heapq.heappush(heap, (-child(i, 0)[2], i, 0))
    else:
        raise ValueError(f"build_tree: `policy` must be 'accum' or 'topn', got {policy!r}")
    return toks, par, dep, sc


def ancestor_mask(parents: np.ndarray, budget: int) -> np.ndarray:
    """(N,) parents (-1 root/padding) -> (N, ceil(N/32)) int32 packed ancestor-or-self mask."""
    N = budget
    M = np.zeros((N, N), dtype=bool)
    for i in range(N):
        if parents[i] >= 0:
            M[i] = M[parents[i]]
        M[i, i] = True
    NW = (N + 31) // 32
    Mp = np.zeros((N, NW * 32), dtype=np.uint64)
    Mp[:, :N] = M
    words = (Mp.reshape(N, NW, 32) << np.arange(32, dtype=np.uint64)).sum(-1)
    return words.astype(np.uint32).view(np.int32)


def links(parents: np.ndarray, n: int):
    """first_child / next_sibling (-1 = none) from parents, over the first n (valid) nodes."""
    N = len(parents)
    fc = np.full(N, -1, dtype=np.int32)
    ns = np.full(N, -1, dtype=np.int32)
    last = {}
    for i in range(1, n):
        p = int(parents[i])
        if p in last:
            ns[last[p]] = i
        else:
            fc[p] = i
        last[p] = i
    return fc, ns


def build_tree(draft_logits: Tensor, root_tokens: Tensor, width: int, budget: int,
               policy: str = "accum", temperature: float = 1.0) -> Tuple[Tensor, ...]:
    """Reference of :func:`jetspec_ext.ops.build_tree` (same signature, same outputs)."""
    if policy not in ("accum", "topn"):
        raise ValueError(f"build_tree: `policy` must be 'accum' or 'topn', got {policy!r}")
    B, D, V = draft_logits.shape
    N, W = int(budget), int(width)
    dev = draft_logits.device
    tok, e, _, C = depth_tables(draft_logits, W, temperature)
    tok, e, C = tok.cpu().numpy(), e.cpu().numpy(), C.cpu().numpy()
    roots = root_tokens.cpu().tolist()
    NW = (N + 31) // 32
    out_tok = np.zeros((B, N), dtype=np.int64)
    out_par = np.full((B, N), -1, dtype=np.int32)
    out_dep = np.zeros((B, N), dtype=np.int32)
    out_sc = np.full((B, N), -np.inf, dtype=np.float32)
    out_mask = np.zeros((B, N, NW), dtype=np.int32)
    out_n = np.zeros((B,), dtype=np.int32)
    out_fc = np.full((B, N), -1, dtype=np.int32)
    out_ns = np.full((B, N), -1, dtype=np.int32)
    for b in range(B):
        t, p, d, s = expand_row(tok[b], e[b], C[b], int(roots[b]), W, N, policy)
        n = len(t)
        out_tok[b, :] = roots[b]
        out_tok[b, :n] = t
        out_par[b, :n] = p
        out_dep[b, :n] = d
        out_sc[b, :n] = s
        out_n[b] = n
        out_mask[b] = ancestor_mask(out_par[b], N)
        out_fc[b], out_ns[b] = links(out_par[b], n)
    t = lambda a: torch.from_numpy(a).to(dev)  # noqa: E731
    return (t(out_tok), t(out_par), t(out_dep), t(out_sc), t(out_mask), t(out_n), t(out_fc),
            t(out_ns))
