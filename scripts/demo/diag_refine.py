#!/usr/bin/env python
"""Issue 6 exploration: would a second draft pass help a head trained with noisy blocks?

A head trained with ``jetspec train --block-noise P`` has learned to predict slot i from real
tokens in its neighbouring slots (``diag_noise_reliance.py``), but decoding gives it only MASK.
This script measures, on the target's greedy answers to held-out prompts, the greedy chain that
such a head drafts after R passes (Jacobi-style): pass 1 is the decoder's block ``[anchor, MASK x
D]``; pass r + 1 fills the block with pass r's argmax tokens and runs the head again. For every
anchor of every answer it counts the leading slots whose argmax is the target's greedy token (the
accepted length of a width-1 chain of depth D, teacher-forced: every anchor, not only those a
decode would visit), per pass count. No decoder change: this only says whether one is worth
building.

    python scripts/demo/diag_refine.py --head causal=DIR --head bidir=DIR2 \\
        --prompts build/demo_head/eval_prompts.jsonl --num 24 --passes 4 --out refine.json

CPU, fp32. Writes ``--out`` (JSON) and prints one table.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def chain_lengths(model, head, seq, P, passes: int, max_len: int):
    """Accepted chain length per anchor after 1..passes passes: long ``(passes, K)``."""
    from jetspec_ext.train import _target_features, block_attention_mask, dense_block_forward

    seq = seq[:max_len]
    L = len(seq)
    N, D = head.block_size, head.block_size - 1
    ids = torch.tensor([seq])
    anchors = torch.arange(P, L - 1).unsqueeze(0)
    K = anchors.shape[1]
    if K == 0:
        return None
    out = torch.zeros(passes, K, dtype=torch.long)
    with torch.no_grad():
        tapped, _ = _target_features(model, ids, torch.ones_like(ids), head.target_layer_ids)
        pos = anchors[0].unsqueeze(1) + torch.arange(1, N)                 # (K, D): a + i
        exists = pos < L
        want = torch.where(exists, ids[0, pos.clamp(max=L - 1)], -1)     # greedy token a + i
        mask = block_attention_mask(anchors, torch.ones_like(anchors, dtype=torch.bool), L, N, head.causal)
        bpos = (anchors.unsqueeze(-1) + torch.arange(N)).view(1, K * N)
        draft = torch.full((K, D), head.mask_token_id, dtype=torch.long)
        for r in range(passes):
            blk = torch.cat([ids[0, anchors[0]].unsqueeze(1), draft], 1)  # (K, N)
            emb = model.model.embed_tokens(blk.view(1, K * N))
            h = dense_block_forward(head, tapped, emb, bpos, mask).view(K, N, -1)[:, 1:]
            draft = model.lm_head(h).argmax(-1)                           # (K, D)
            hit = (draft == want) & exists
            out[r] = hit.long().cumprod(1).sum(1)                         # leading hits
    return out


def main(argv=None) -> int:
    from diag_noise_reliance import add_heldout_arguments, finish, load_heldout

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_heldout_arguments(ap, num=24)
    ap.add_argument("--passes", type=int, default=4)
    a = ap.parse_args(argv)
    model, heads, samples = load_heldout(a)
    results = {"prompts": a.prompts, "num": len(samples), "passes": a.passes, "heads": {}}
    lines = ["| head | passes | chain tau (teacher-forced) | P(acc >= 1) | >= 2 | >= 4 | >= 8 |",
             "|---|---|---|---|---|---|---|"]
    for name, (path, head) in heads.items():
        t0 = time.time()
        per = [chain_lengths(model, head, list(s.prompt_ids) + list(s.response_ids), len(s.prompt_ids),
                             a.passes, a.max_len) for s in samples]
        lens = torch.cat([p for p in per if p is not None], 1).double()    # (passes, anchors)
        tau = (1 + lens.mean(1)).tolist()
        ge = [[float((lens[r] >= k).double().mean()) for k in (1, 2, 4, 8)] for r in range(a.passes)]
        results["heads"][name] = {"dir": path, "causal": head.causal, "anchors": lens.shape[1],
                                  "chain_tau": tau, "p_accept_ge": ge}
        print(f"{name}: {lens.shape[1]} anchors, {time.time() - t0:.0f} s", flush=True)
        lines += [f"| {name} | {r + 1} | {tau[r]:.2f} | " + " | ".join(f"{x:.3f}" for x in ge[r]) + " |"
                  for r in range(a.passes)]
    return finish(results, lines, a.out)


if __name__ == "__main__":
    sys.exit(main())
