"""``commit_kv``: move the accepted path's KV next to the prefix, advance prefix_lens (§3.4)."""
import torch

Tensor = torch.Tensor


@torch.library.register_fake("jetspec::commit_kv")
def _commit_kv_fake(kv_cache, prefix_lens, accepted_nodes, accept_len):
    return None


def commit_kv(kv_cache: Tensor, prefix_lens: Tensor, accepted_nodes: Tensor, accept_len: Tensor,
              *, check: bool = False) -> None:
    """Compact the accepted nodes' keys/values for every stacked cache in one launch.

    Args:
        kv_cache: ``(C, B, Hkv, S, Dh)`` bf16 / fp16 / fp32, contiguous, modified in place. C
            stacked caches, e.g. ``layers x {key, value}``; a 6-D ``(L, 2, B, Hkv, S, Dh)`` tensor
            is accepted too (viewed as ``(2L, B, Hkv, S, Dh)``). Tree node i of row b sits at
            slot ``prefix_lens[b] + i``.
        prefix_lens: ``(B,)`` int32, same device, modified in place: ``+= accept_len``.
        accepted_nodes: ``(B, D + 1)`` int32 from ``tree_accept`` (root first, -1 padded).
        accept_len: ``(B,)`` int32 from ``tree_accept``; rows with ``accept_len <= 0`` are left
            untouched.
        check: synchronise and raise if a row's path would run past the cache end. The CPU op
            raises on its own; the CUDA op never synchronises: such rows are left untouched and
            their ``prefix_lens`` entry is set to -1 so the error cannot go unnoticed.

    After the call, row b's slots ``[old_prefix, old_prefix + n)`` hold the accepted nodes'
    keys/values in path order; their RoPE positions (prefix + depth) already match the slots.
    """
    if kv_cache.dim() == 6:
        # flatten() would silently copy a non-contiguous tensor and the op would update the copy
        if not kv_cache.is_contiguous():
            raise RuntimeError("commit_kv: `kv_cache` must be contiguous (got strides "
                               f"{tuple(kv_cache.stride())} for shape {tuple(kv_cache.shape)})")
        kv_cache = kv_cache.flatten(0, 1)
    torch.ops.jetspec.commit_kv.default(kv_cache, prefix_lens, accepted_nodes, accept_len)
    if check and bool((prefix_lens < 0).any()):
        raise ValueError("commit_kv: an accepted path runs past the end of the cache "
                         "(prefix_lens + accepted node index >= S); see the rows with prefix_lens = -1")
