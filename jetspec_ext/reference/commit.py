"""Reference of ``commit_kv``: compact the accepted path's KV after the prefix.

kv_cache (C, B, H, S, Dh): C stacked caches (layers x {key, value}). Tree node i of row b was
written at slot ``prefix_lens[b] + i`` by the verify forward. For each row, the accepted nodes
``a_0 = 0, a_1, ..., a_{n-1}`` (n = accept_len[b]) move to slots ``prefix_lens[b] + j``; then
``prefix_lens[b] += n``. Slots past the new prefix keep stale values (they are overwritten by the
next round). Every source is read before any destination is written (a_j >= j, so a naive
in-order copy is also correct, but a parallel one must not interleave).
"""
import torch


def commit_kv(kv_cache: torch.Tensor, prefix_lens: torch.Tensor, accepted_nodes: torch.Tensor,
              accept_len: torch.Tensor) -> None:
    C, B, H, S, Dh = kv_cache.shape
    for b in range(B):
        p = int(prefix_lens[b])
        n = int(accept_len[b])
        if n <= 0:
            continue
        if p + int(accepted_nodes[b, :n].max()) >= S:
            raise ValueError("commit_kv: accepted path runs past the end of the cache")
        src = (p + accepted_nodes[b, :n].long()).to(kv_cache.device)
        rows = kv_cache[:, b].index_select(2, src).clone()
        kv_cache[:, b, :, p : p + n] = rows
    prefix_lens += accept_len.to(prefix_lens.dtype)
