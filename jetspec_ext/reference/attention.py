"""Reference of ``tree_attention`` (DESIGN §3.2): fp32 maths with an explicit dense mask.

Batch row b with prefix length P = prefix_lens[b] holds the prefix at cache slots [0, P) and tree
node j at slot P + j. Query tree node i (head h, KV head h // (Hq / Hkv)) sees every prefix slot
and tree node j iff bit j of ``tree_mask[b, i]`` is set (bit j % 32 of int32 word j // 32).
A row that sees nothing gets out = 0 and lse = -inf.
"""
import math
from typing import Optional, Tuple

import torch

Tensor = torch.Tensor


def unpack_tree_mask(tree_mask: Tensor, n: int) -> Tensor:
    """``(..., N, ceil(N/32))`` int32 packed mask -> ``(..., N, N)`` bool (bit j of row i)."""
    shifts = torch.arange(32, device=tree_mask.device, dtype=torch.int64)
    bits = (tree_mask.to(torch.int64).unsqueeze(-1) >> shifts) & 1  # (..., N, W, 32)
    return bits.flatten(-2)[..., :n].bool()


def pack_tree_mask(dense: Tensor) -> Tensor:
    """``(..., N, N)`` bool -> ``(..., N, ceil(N/32))`` int32 (inverse of unpack_tree_mask)."""
    n = dense.shape[-1]
    w = (n + 31) // 32
    padded = torch.zeros(*dense.shape[:-1], w * 32, dtype=torch.int64, device=dense.device)
    padded[..., :n] = dense.to(torch.int64)
    words = (padded.view(*dense.shape[:-1], w, 32) << torch.arange(32, device=dense.device)).sum(-1)
    words = torch.where(words >= 2**31, words - 2**32, words)  # two's complement int32
    return words.to(torch.int32)


def dense_visibility(prefix_lens: Tensor, tree_mask: Tensor, n: int, kv_len: int) -> Tensor:
    """``(B, N, kv_len)`` bool: which cache slots each tree node's query sees."""
    B = tree_mask.shape[0]
    dev = tree_mask.device
    slots = torch.arange(kv_len, device=dev)
    plen = prefix_lens.to(dev).long().view(B, 1, 1)
    tree = unpack_tree_mask(tree_mask, n)  # (B, N, N)
    j = slots.view(1, 1, -1) - plen  # tree index of each slot
    in_tree = (j >= 0) & (j < n)
    jc = j.clamp(0, n - 1).expand(B, n, kv_len)
    bits = torch.gather(tree, 2, jc)
    return (j < 0) | (in_tree & bits)


def tree_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, prefix_lens: Tensor,
                   tree_mask: Tensor, scale: Optional[float] = None,
                   p_dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
    """Reference tree attention.

    Args: as :func:`jetspec_ext.ops.tree_attention`. ``p_dtype`` (testing aid): round the
    probabilities to this dtype before the P @ V product and use it as the product's output dtype
    (the error of "the same maths in low precision" for the FlashAttention test rule).

    Returns ``out (B, N, Hq, Dh)`` in q's dtype (fp32 maths) and ``lse (B, Hq, N)`` fp32.
    """
    B, N, Hq, D = q.shape
    Hkv, S = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    out = torch.zeros(B, N, Hq, D, dtype=torch.float32, device=q.device)
    lse = torch.full((B, Hq, N), float("-inf"), dtype=torch.float32, device=q.device)
    plens = prefix_lens.tolist()
    for b in range(B):
        P = int(plens[b])
        assert 0 <= P and P + N <= S, "prefix_len + N must fit in the cache"
        L = P + N
        k = k_cache[b, :, :L].float().repeat_interleave(G, dim=0)  # (Hq, L, D)
        v = v_cache[b, :, :L].float().repeat_interleave(G, dim=0)
        qb = q[b].float().transpose(0, 1)  # (Hq, N, D)
        s = torch.matmul(qb, k.transpose(1, 2)) * scale  # (Hq, N, L)
        vis = dense_visibility(prefix_lens[b:b + 1], tree_mask[b:b + 1], N, L)[0]  # (N, L)
        s = s.masked_fill(~vis, float("-inf"))
        row_lse = torch.logsumexp(s, dim=-1)  # (Hq, N)
        safe = torch.where(torch.isinf(row_lse), torch.zeros_like(row_lse), row_lse)
        p = torch.exp(s - safe.unsqueeze(-1))
        if p_dtype is not None:
            o = torch.matmul(p.to(p_dtype), v.to(p_dtype)).float()
        else:
            o = torch.matmul(p, v)
        out[b] = o.transpose(0, 1)
        lse[b] = row_lse
    return out.to(q.dtype), lse
