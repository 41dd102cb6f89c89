"""``tree_attention``: attention of the N tree tokens over the KV prefix plus their tree
ancestors (DESIGN §3.2). Design, layouts and limits: docs/tree_attention.md."""
import math
from typing import Optional, Tuple

import torch

# Head dims the tree_attention op accepts (csrc/tree_attention_common.h): its kernels are
# instantiated for these two, on the CPU as well as on CUDA.
SUPPORTED_HEAD_DIMS = (64, 128)


def head_dim_problem(head_dim: int, whose: str) -> Optional[str]:
    """The error message for a model part (``whose``: "target", "draft head's attention") whose attention
    head dim tree_attention does not handle, or None: checked where the model is set up, so that
    it does not surface as the op's error after a prefill."""
    if head_dim in SUPPORTED_HEAD_DIMS:
        return None
    return (f"{whose} head dim {head_dim} is not supported: jetspec's tree_attention handles head dims "
            f"{' and '.join(map(str, SUPPORTED_HEAD_DIMS))}")

Tensor = torch.Tensor


@torch.library.register_fake("jetspec::tree_attention")
def _tree_attention_fake(q, k_cache, v_cache, prefix_lens, tree_mask, scale):
    B, N, Hq, D = q.shape
    out = q.new_empty((B, N, Hq, D))
    lse = q.new_empty((B, Hq, N), dtype=torch.float32)
    return out, lse


def tree_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, prefix_lens: Tensor,
                   tree_mask: Tensor, scale: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """Attention of tree-node queries over the cached prefix and their tree ancestors.

    Args:
        q: ``(B, N, Hq, Dh)`` bf16 / fp16 (GPU) or also fp32 (CPU). Any strides with the last dim
            contiguous (e.g. ``q_hf.transpose(1, 2)`` of a ``(B, Hq, N, Dh)`` tensor). Dh 64 or 128,
            N in 1..1024.
        k_cache, v_cache: ``(B, Hkv, S, Dh)``, q's dtype and device, last dim contiguous, other
            strides arbitrary (e.g. one layer of a stacked cache). Hq must be a multiple of Hkv
            (query head h uses KV head ``h // (Hq // Hkv)``). Row b holds its prefix at slots
            ``[0, prefix_lens[b])`` and tree node j at slot ``prefix_lens[b] + j``.
        prefix_lens: ``(B,)`` int32 on q's device. The caller guarantees
            ``0 <= prefix_lens[b]`` and ``prefix_lens[b] + N <= S`` (the CUDA op cannot check
            device values without a synchronisation; it clamps for memory safety, the CPU op
            raises).
        tree_mask: ``(B, N, ceil(N/32))`` int32 (as from ``build_tree``): tree node i sees tree
            node j iff bit ``j % 32`` of word ``j // 32`` of row i is set. The prefix is always
            visible. A chain (bits 0..i of row i) is causal attention; N = 1 with bit 0 set is
            plain decoding.
        scale: softmax scale, default ``1 / sqrt(Dh)``.

    Returns:
        out: ``(B, N, Hq, Dh)`` contiguous, q's dtype.
        lse: ``(B, Hq, N)`` float32, natural-log log-sum-exp of the scaled visible scores
            (``-inf`` and ``out = 0`` for a row that sees nothing).

    CUDA: no host synchronisation, CUDA-graph capturable (the split count depends on static
    shapes only).
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    return torch.ops.jetspec.tree_attention.default(q, k_cache, v_cache, prefix_lens, tree_mask,
                                                    float(scale))
