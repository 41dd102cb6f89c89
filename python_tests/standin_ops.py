"""Test-only stand-ins for the build_tree / tree_attention references while those op branches are
being written (the decoder tests only need *a* valid tree and *correct* attention; exact tree
shape is the op branches' business). ``install()`` patches ``jetspec_ext.reference`` only where
the reference is still the placeholder that raises NotImplementedError.
"""
import heapq

import torch

import jetspec_ext
import jetspec_ext.reference as ref


def _pack_rows(bits: torch.Tensor) -> torch.Tensor:
    """bits (..., N, N) bool -> (..., N, ceil(N/32)) int32 (bit j of word j//32)."""
    N = bits.shape[-1]
    W = (N + 31) // 32
    pad = torch.zeros(*bits.shape[:-1], W * 32, dtype=torch.int64, device=bits.device)
    pad[..., :N] = bits.to(torch.int64)
    w = (pad.view(*bits.shape[:-1], W, 32) << torch.arange(32, device=bits.device)).sum(-1)
    return torch.where(w >= 2**31, w - 2**32, w).to(torch.int32)


def build_tree(draft_logits, root_tokens, width, budget, policy="accum", temperature=1.0):
    B, D, V = draft_logits.shape
    N = budget
    logp = torch.log_softmax(draft_logits.float().cpu() / temperature, -1)
    top = torch.topk(logp, width, dim=-1)
    toks = torch.zeros(B, N, dtype=torch.int64)
    par = torch.full((B, N), -1, dtype=torch.int32)
    dep = torch.zeros(B, N, dtype=torch.int32)
    sc = torch.zeros(B, N, dtype=torch.float32)
    nn_ = torch.zeros(B, dtype=torch.int32)
    for b in range(B):
        toks[b, 0] = int(root_tokens[b])
        n = 1
        heap = [(-0.0, 0, 0)]  # (-score, creation id, node)
        while heap and n < N:
            s, _, v = heapq.heappop(heap)
            d = int(dep[b, v])
            if d >= D:
                continue
            for r in range(width):
                if n >= N:
                    break
                toks[b, n] = int(top.indices[b, d, r])
                par[b, n] = v
                dep[b, n] = d + 1
                sc[b, n] = float(sc[b, v]) + float(top.values[b, d, r])
                heapq.heappush(heap, (-float(sc[b, n]), n, n))
                n += 1
        nn_[b] = n
    anc = torch.zeros(B, N, N, dtype=torch.bool)
    for b in range(B):
        for i in range(N):
            anc[b, i, i] = True
            p = int(par[b, i])
            if p >= 0:
                anc[b, i] |= anc[b, p]
    fc = torch.full((B, N), -1, dtype=torch.int32)
    ns = torch.full((B, N), -1, dtype=torch.int32)
    dev = draft_logits.device
    return (toks.to(dev), par.to(dev), dep.to(dev), sc.to(dev), _pack_rows(anc).to(dev), nn_.to(dev),
            fc.to(dev), ns.to(dev))


def tree_attention(q, k_cache, v_cache, prefix_lens, tree_mask, scale=None):
    B, N, Hq, Dh = q.shape
    Hkv = k_cache.shape[1]
    scale = Dh ** -0.5 if scale is None else scale
    P = prefix_lens.to(torch.int64)
    S = int(P.max()) + N
    bits = ((tree_mask.to(torch.int64).unsqueeze(-1) >> torch.arange(32, device=q.device)) & 1).flatten(-2)[..., :N].bool()
    col = torch.arange(S, device=q.device)
    rel = col.view(1, 1, S) - P.view(B, 1, 1)                        # slot - prefix
    in_tree = (rel >= 0) & (rel < N)
    tree_bit = torch.gather(bits, 2, rel.clamp(0, N - 1).expand(B, N, S))
    allow = (rel < 0) | (in_tree & tree_bit)                          # (B, N, S)
    k = k_cache[:, :, :S].float().repeat_interleave(Hq // Hkv, 1)     # (B, Hq, S, Dh)
    v = v_cache[:, :, :S].float().repeat_interleave(Hq // Hkv, 1)
    s = torch.einsum("bnhd,bhsd->bhns", q.float(), k) * scale
    s = s.masked_fill(~allow.unsqueeze(1), float("-inf"))
    lse = torch.logsumexp(s, -1)
    out = torch.einsum("bhns,bhsd->bnhd", torch.softmax(s, -1), v).to(q.dtype)
    return out, lse


def _is_placeholder(fn):
    try:
        fn()
    except NotImplementedError:
        return True
    except Exception:
        return False
    return False


def install():
    if _is_placeholder(ref.build_tree):
        ref.build_tree = build_tree
    if _is_placeholder(ref.tree_attention):
        ref.tree_attention = tree_attention
