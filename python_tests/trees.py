"""Random draft trees and logits for the tree_accept / commit_kv tests (pure PyTorch, seeded).

Tree format (python_tests and every op): node 0 is the root, parents[0] = -1; for i > 0 a real
node's parent is in [0, i), a padding node has parent -1 (anywhere after the root; ignored).
"""
from typing import List, Tuple

import torch


def random_parents(n: int, gen: torch.Generator, *, pad_frac: float = 0.0,
                   chain_bias: float = 0.0) -> List[int]:
    """Parents of one random tree of n nodes. chain_bias in [0, 1]: probability that node i hangs
    under node i-1 (deep trees); pad_frac: probability that node i > 0 is a padding node."""
    par = [-1]
    real = [0]
    for i in range(1, n):
        if torch.rand((), generator=gen).item() < pad_frac:
            par.append(-1)
            continue
        if torch.rand((), generator=gen).item() < chain_bias:
            par.append(real[-1])
        else:
            par.append(real[int(torch.randint(len(real), (1,), generator=gen))])
        real.append(i)
    return par


def depths_of(par: List[int]) -> List[int]:
    d = [0] * len(par)
    for i in range(1, len(par)):
        d[i] = 0 if par[i] < 0 else d[par[i]] + 1
    return d


def random_tree_batch(B: int, N: int, V: int, gen: torch.Generator, *, pad_frac: float = 0.1,
                      chain_bias: float = 0.3, dup_frac: float = 0.2
                      ) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """(node_tokens (B,N) i64, parents (B,N) i32, max_depth). Tokens are random with some
    duplicated siblings (a later sibling copies an earlier sibling's token)."""
    pars, toks = [], []
    for _ in range(B):
        par = random_parents(N, gen, pad_frac=pad_frac, chain_bias=chain_bias)
        tok = torch.randint(V, (N,), generator=gen).tolist()
        first_child = {}
        for i in range(1, N):
            p = par[i]
            if p < 0:
                continue
            if p in first_child and torch.rand((), generator=gen).item() < dup_frac:
                tok[i] = tok[first_child[p]]
            first_child.setdefault(p, i)
        pars.append(par)
        toks.append(tok)
    parents = torch.tensor(pars, dtype=torch.int32)
    node_tokens = torch.tensor(toks, dtype=torch.int64)
    max_depth = max(max(depths_of(p)) for p in pars)
    return node_tokens, parents, max_depth


def plant_agreement(logits: torch.Tensor, node_tokens: torch.Tensor, parents: torch.Tensor,
                    gen: torch.Generator, *, follow: float = 1.0, boost: float = 30.0) -> None:
    """Make the target agree with the tree along long paths: at each node (with probability
    `follow`) pick the child on the deepest branch (among the children the walk can take) and raise the logit of its token by `boost`
    above the node's current maximum, so acceptance goes deep (greedy surely, sampling with
    probability ~1 at moderate temperature). In place on logits (B, N, V)."""
    B, N, V = logits.shape
    for b in range(B):
        par = parents[b].tolist()
        kids = [[] for _ in range(N)]
        for i in range(1, N):
            if par[i] >= 0:
                kids[par[i]].append(i)
        # the walk takes the lowest-index child carrying a token: plant the token whose first
        # carrier heads the deepest walkable branch
        tk = node_tokens[b].tolist()
        first = [{} for _ in range(N)]
        for v in range(N):
            for c in kids[v]:
                first[v].setdefault(tk[c], c)
        height = [0] * N
        for i in range(N - 1, -1, -1):
            height[i] = 1 + max((height[c] for c in first[i].values()), default=0)
        for v in range(N):
            if not kids[v] or torch.rand((), generator=gen).item() >= follow:
                continue
            tok = max(first[v], key=lambda t: height[first[v][t]])
            row = logits[b, v]
            row[tok] = row.float().max().to(row.dtype) + boost


def random_logits(B: int, N: int, V: int, dtype: torch.dtype, gen: torch.Generator,
                  scale: float = 3.0) -> torch.Tensor:
    return (torch.randn(B, N, V, generator=gen) * scale).to(dtype)
