"""Reference of ``commit_kv``: compact the accepted path's KV after the prefix.

kv_cache (C, B, H, S, Dh): C stacked caches (layers x {key, value}). Tree node i of row b was
written at slot ``prefix_lens[b] + i`` by the verify forward. For each row, the accepted nodes
``a_0 = 0, a_1, ..., a_{n-1}`` (n = accept_len[b]) move to slots ``prefix_lens[b] + j``; then
``prefix_lens[b] += n``. Rows with n <= 0 are left untouched (cache and prefix_lens). Slots
past the new prefix keep stale values (they are overwritten by the next round). Every source is
read before any destination is written (a_j >= j, so a naive in-order copy is also correct, but
a parallel one must not interleave).
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
        if n > accepted_nodes.shape[1]:
            raise ValueError(f"commit_kv: `accept_len[{b}]` = {n} exceeds the columns of `accepted_nodes`")
        path = accepted_nodes[b, :n].tolist()
        if path[0] != 0 or any(a < j for j, a in enumerate(path)):
            raise ValueError(f"commit_kv: `accepted_nodes[{b}]` is not a root-first tree path: {path}")
        if p + max(path) >= S:
            raise ValueError("commit_kv: accepted path runs past the end of the cache")
        src = (p + accepted_nodes[b, :n].long()).to(kv_cache.device)
        rows = kv_cache[:, b].index_select(2, src).clone()
        kv_cache[:, b, :, p : p + n] = rows
    # rows with accept_len <= 0 (e.g. flagged by the CUDA tree_accept) are left untouched
    prefix_lens += accept_len.clamp(min=0).to(device=prefix_lens.device, dtype=prefix_lens.dtype)
