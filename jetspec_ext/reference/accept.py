"""Reference of ``tree_accept``: walk the draft tree with the target's own choices.

Semantics (shared with the CPU and CUDA kernels):

* Tree: node 0 is the root (the anchor, last committed token). For i > 0, ``parents[b, i]`` is in
  ``[0, i)`` for a real node and -1 for a padding node (ignored). The depth of a node is its
  distance to the root; no real node may be deeper than ``max_depth``.
* Walk: start at the root. At node v the target chooses token x (greedy: the argmax of the
  logits at v, ties to the lowest token id; sampling: a draw from the filtered distribution
  below). If some child of v carries x, move to the child of **lowest node index** carrying it
  (duplicate siblings are thus never ambiguous) and repeat; otherwise stop and emit x.
* Outputs: ``accepted_nodes[b]`` = node indices of the path, root first, padded with -1 to
  ``max_depth + 1``; ``accept_len[b]`` = path length (root included) = number of tokens this round
  produces (the accepted draft tokens plus the emitted one); ``next_token[b]`` = x at the last
  node.
* Sampling (temperature > 0): scores ``s = logits / temperature`` in float32. Top-k (k > 0)
  keeps every token whose score is >= the k-th largest score (ties at the boundary are all kept,
  as in Hugging Face's TopKLogitsWarper). Top-p (p < 1) then keeps every token whose score is >=
  t*, where t* is the largest score value such that the kept tokens scoring >= t* hold at least
  a fraction p of the kept probability mass (again, boundary ties all kept). x is drawn from
  the softmax of the kept scores by inverse-CDF sampling: x is the first token (in id order)
  whose cumulative probability exceeds u, where u is value 0 of the stream of row ``b * N + v``
  of :mod:`jetspec_ext.reference.rng`. Every node has its own independent uniform, so drawing
  at all nodes in parallel and then walking is exactly the sequential procedure. (The reference
  and the CPU op sum in float64; the CUDA op computes scores as ``logits * (1 / T)`` and sums in
  float32, so a draw within float rounding of a cumulative boundary may pick the neighbouring
  token.)
  Because the candidate children are fixed before verification, the emitted sequence follows the
  target's filtered distribution exactly (lossless).
* rng_state = [seed, offset] (int64). A sampling call uses it and then advances offset by 1;
  greedy calls leave it untouched.
"""
from typing import Tuple

import torch

from . import rng as _rng


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Scores (float32) with filtered-out entries set to -inf. logits (..., V)."""
    s = logits.float() / temperature
    V = s.shape[-1]
    if 0 < top_k < V:
        kth = torch.topk(s, top_k, dim=-1).values[..., -1:]
        s = s.masked_fill(s < kth, float("-inf"))
    if top_p < 1.0:
        p = torch.softmax(s, dim=-1)
        sorted_s, order = torch.sort(s, dim=-1, descending=True)
        sorted_p = torch.gather(p, -1, order)
        # mass held by tokens scoring >= each sorted value (ties counted as a group)
        cum = torch.cumsum(sorted_p.double(), dim=-1)
        # group ties: mass(>= t) for t = sorted_s[j] is the cumsum at the last index equal to t
        last_of_group = torch.ones_like(sorted_s, dtype=torch.bool)
        last_of_group[..., :-1] = sorted_s[..., 1:] != sorted_s[..., :-1]
        ok = (cum >= top_p) & last_of_group
        # first group whose cumulative mass reaches p (exists: the total is 1 up to rounding)
        first = torch.where(ok.any(-1), ok.to(torch.int8).argmax(-1), torch.full_like(ok[..., 0], V - 1, dtype=torch.long))
        thresh = torch.gather(sorted_s, -1, first.unsqueeze(-1))
        s = s.masked_fill(s < thresh, float("-inf"))
    return s


def sample_inverse_cdf(scores: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw from softmax(scores) (float64 maths): the first token (in id order)
    whose cumulative probability exceeds u. scores (..., V) with -inf for removed tokens,
    u (...) in (0, 1). Returns int64 (...)."""
    s = scores.double()
    m = s.max(-1, keepdim=True).values
    w = torch.exp(s - m)
    cum = torch.cumsum(w, -1)
    target = (u.double() * cum[..., -1]).unsqueeze(-1)
    idx = torch.searchsorted(cum, target, right=True).squeeze(-1)
    return idx.clamp(max=scores.shape[-1] - 1)


def target_choices(logits: torch.Tensor, rng_state: torch.Tensor, temperature: float, top_k: int,
                   top_p: float) -> torch.Tensor:
    """The target's token at every node, (B, N) int64 (greedy argmax or inverse-CDF draw)."""
    B, N, V = logits.shape
    if temperature == 0.0:
        return logits.float().argmax(-1)  # torch.argmax returns the first (lowest) maximal index
    seed, offset = (int(x) for x in rng_state.cpu().tolist())
    rows = torch.arange(B * N, dtype=torch.int64).reshape(B, N)
    s = filter_logits(logits.cpu(), temperature, top_k, top_p)
    u = _rng.uniform(seed, offset, rows, 1)[..., 0]
    return sample_inverse_cdf(s, u).to(logits.device)


def _check_tree(par: torch.Tensor, max_depth: int) -> None:
    """Raise ValueError for an invalid tree (the whole tree is checked, like the kernels do)."""
    B, N = par.shape
    for b in range(B):
        p = par[b].tolist()
        if p[0] != -1:
            raise ValueError(f"tree_accept: `parents[{b}, 0]` must be -1 (node 0 is the root), got {p[0]}")
        depth = [0] * N
        for i in range(1, N):
            if not -1 <= p[i] < i:
                raise ValueError(f"tree_accept: `parents[{b}, {i}]` = {p[i]} is out of range "
                                 f"(must be -1 for padding or in [0, {i}))")
            depth[i] = 0 if p[i] < 0 else depth[p[i]] + 1
            if depth[i] > max_depth:
                raise ValueError(f"tree_accept: node {i} of batch row {b} has depth {depth[i]} "
                                 f"> max_depth = {max_depth}")


def tree_accept(logits: torch.Tensor, node_tokens: torch.Tensor, parents: torch.Tensor,
                max_depth: int, rng_state: torch.Tensor, temperature: float = 0.0,
                top_k: int = 0, top_p: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference acceptance. See the module docstring. Mutates rng_state when sampling."""
    B, N, V = logits.shape
    par = parents.cpu()
    _check_tree(par, max_depth)
    choice = target_choices(logits, rng_state, temperature, top_k, top_p).cpu()
    toks = node_tokens.cpu()
    accepted = torch.full((B, max_depth + 1), -1, dtype=torch.int32)
    alen = torch.zeros(B, dtype=torch.int32)
    nxt = torch.zeros(B, dtype=torch.int64)
    for b in range(B):
        pb, tb, cb = par[b].tolist(), toks[b].tolist(), choice[b].tolist()
        path = [0]
        v = 0
        while True:
            x = cb[v]
            kids = [c for c in range(v + 1, N) if pb[c] == v and tb[c] == x]
            if not kids:
                break
            v = kids[0]
            path.append(v)
        accepted[b, : len(path)] = torch.tensor(path, dtype=torch.int32)
        alen[b] = len(path)
        nxt[b] = x
    if temperature > 0.0:
        rng_state[1] += 1
    dev = logits.device
    return accepted.to(dev), alen.to(dev), nxt.to(dev)
