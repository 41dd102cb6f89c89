"""``tree_accept``: accept the longest draft path the target agrees with (DESIGN §3.3)."""
from typing import Optional, Tuple

import torch

Tensor = torch.Tensor


@torch.library.register_fake("jetspec::tree_accept")
def _tree_accept_fake(logits, node_tokens, parents, max_depth, rng_state, temperature=0.0,
                      top_k=0, top_p=1.0):
    B = logits.shape[0]
    return (
        logits.new_empty((B, max_depth + 1), dtype=torch.int32),
        logits.new_empty((B,), dtype=torch.int32),
        logits.new_empty((B,), dtype=torch.int64),
    )


def tree_accept(logits: Tensor, node_tokens: Tensor, parents: Tensor, max_depth: int,
                rng_state: Optional[Tensor] = None, temperature: float = 0.0, top_k: int = 0,
                top_p: float = 1.0, *, check: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """Walk the draft tree with the target's choices; return the accepted path.

    Args:
        logits: ``(B, N, V)`` bf16 / fp16 / fp32, contiguous. Target logits at the N tree nodes.
        node_tokens: ``(B, N)`` int64. Token carried by each node (node 0 = root / anchor).
        parents: ``(B, N)`` int32. ``parents[b, 0] = -1``; for i > 0 a real node has its parent in
            ``[0, i)``, a padding node has -1 and is ignored.
        max_depth: deepest node depth in the tree (D); sizes ``accepted_nodes``.
        rng_state: ``(2,)`` int64 ``[seed, offset]`` on the logits' device; required when
            sampling. A sampling call advances ``offset`` by one in place (so a replayed CUDA
            graph draws fresh numbers); greedy calls do not touch it.
        temperature: 0 for greedy; > 0 samples from softmax(logits / temperature).
        top_k: keep the k highest-scoring tokens (ties at the boundary kept); 0 disables.
        top_p: nucleus mass in (0, 1]; 1 disables.
        check: synchronise and raise ``ValueError`` if the kernel flagged an invalid tree (a
            parent index out of range, a node deeper than ``max_depth``). The CPU op raises on
            its own; the CUDA op never synchronises and instead marks such rows with
            ``accept_len = -1``, ``next_token = -1`` and ``accepted_nodes`` all -1.

    Returns:
        accepted_nodes ``(B, max_depth + 1)`` int32: path node indices, root first, -1 padded.
        accept_len ``(B,)`` int32: path length including the root = tokens produced this round.
        next_token ``(B,)`` int64: the target's token at the last accepted node (the next
        anchor).

    Semantics in full (tie rules, filtering, randomness): :mod:`jetspec_ext.reference.accept`.
    """
    if rng_state is None:
        if temperature > 0.0:  # (a negative temperature reaches the op's own check)
            raise ValueError("tree_accept: sampling (temperature > 0) needs `rng_state` = [seed, offset]")
        rng_state = torch.zeros(2, dtype=torch.int64, device=logits.device)
    out = torch.ops.jetspec.tree_accept.default(
        logits, node_tokens, parents, int(max_depth), rng_state, float(temperature), int(top_k),
        float(top_p))
    if check and bool((out[1] < 0).any()):
        bad = (out[1] < 0).nonzero().flatten().tolist()
        raise ValueError(
            f"tree_accept: invalid tree in batch rows {bad}: a parent index out of range "
            f"(parents[b, i] must be -1 or in [0, i)) or a node deeper than max_depth={max_depth}")
    return out
