"""``build_tree``: fused draft-tree expansion from draft logits to tree metadata (DESIGN §3.1)."""
from typing import Tuple

import torch

Tensor = torch.Tensor

# The largest `width` the op accepts (kBuildTreeMaxWidth in csrc/build_tree_common.h): the
# per-depth top-W tables are sized for it.
MAX_WIDTH = 16
POLICIES = ("accum", "topn")  # JetSpec's best-first expansion, DDTree's one-node-at-a-time


@torch.library.register_fake("jetspec::build_tree")
def _build_tree_fake(draft_logits, root_tokens, width, budget, policy, temperature=1.0):
    B = draft_logits.shape[0]
    N = budget
    NW = (N + 31) // 32
    i32 = dict(dtype=torch.int32)
    return (
        draft_logits.new_empty((B, N), dtype=torch.int64),
        draft_logits.new_empty((B, N), **i32),
        draft_logits.new_empty((B, N), **i32),
        draft_logits.new_empty((B, N), dtype=torch.float32),
        draft_logits.new_empty((B, N, NW), **i32),
        draft_logits.new_empty((B,), **i32),
        draft_logits.new_empty((B, N), **i32),
        draft_logits.new_empty((B, N), **i32),
    )


def build_tree(draft_logits: Tensor, root_tokens: Tensor, width: int, budget: int,
               policy: str = "accum", temperature: float = 1.0) -> Tuple[Tensor, ...]:
    """Build the draft tree of one round from the draft head's per-depth logits.

    Args:
        draft_logits: ``(B, D, V)`` bf16 / fp16 / fp32 (made contiguous if it is not).
            ``draft_logits[:, j]`` is the distribution of depth ``j + 1`` (draft block position
            j + 1 predicts anchor + j + 1). 1 <= D <= 32.
        root_tokens: ``(B,)`` int64. Token of the root (node 0, the anchor) of each row.
        width: W in [1, 16], W <= V. Children per expansion: the top-W tokens of the next depth.
        budget: N in [1, 1024]: nodes per tree, root included.
        policy: ``"accum"`` (JetSpec: repeatedly expand the best unexpanded node, appending its
            W children) or ``"topn"`` (DDTree: the N best nodes, one at a time).
        temperature: > 0; the log-probs are those of ``softmax(logits / temperature)``.

    Returns (all on the logits' device):
        node_tokens ``(B, N)`` int64: node 0 = root token; padding rows repeat the root token.
        parents ``(B, N)`` int32: root -1, real node i > 0 in ``[0, i)``, padding -1.
        depths ``(B, N)`` int32: root 0, padding 0.
        scores ``(B, N)`` float32: cumulative log-prob (root 0, padding -inf).
        tree_mask ``(B, N, ceil(N/32))`` int32: bit ``j % 32`` of word ``j // 32`` of row i is
            set iff node j is an ancestor of i or i itself (padding rows: own bit only).
        num_nodes ``(B,)`` int32: valid nodes (N unless the tree is exhausted first: at most
            1 + W + ... + W^D nodes exist).
        first_child ``(B, N)`` int32: lowest-index child, -1 if none.
        next_sibling ``(B, N)`` int32: next child of the same parent (index order), -1 if none.

    Tie rules, NaN/inf handling and the exact float32 arithmetic: docs/build_tree.md and
    :mod:`jetspec_ext.reference.build_tree`. The CUDA op does not synchronise with the host and is
    CUDA-graph capturable.
    """
    if not draft_logits.is_contiguous():
        draft_logits = draft_logits.contiguous()
    return torch.ops.jetspec.build_tree.default(draft_logits, root_tokens, int(width), int(budget),
                                                str(policy), float(temperature))
