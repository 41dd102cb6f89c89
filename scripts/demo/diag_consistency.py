#!/usr/bin/env python
"""Issue 6 diagnosis: does the head see the same inputs in training and in decoding?

For a few held-out prompts this script decodes greedily with the real decoder
(:func:`jetspec_ext.decoder.generate`, fp32, CPU) and records, every round, the draft logits the
head produced and the round's ``prefix_len`` / anchor. It then recomputes the same blocks through
the TRAINING code path (``jetspec_ext.train``: ``_target_features`` on the whole committed
sequence, ``block_attention_mask``, ``dense_block_forward``, anchors = the rounds' prefix lengths)
and compares the logits. It also checks

* the tapped features: HF ``hidden_states[k + 1]`` (training) vs ``Target.forward`` (decoding),
* the teacher alignment: the training teacher for slot i of anchor a is the target's logits at
  position a + i - 1, whose argmax must be the greedy token at a + i,
* the HF ``model.model`` forward used by training is unchanged after a ``Target`` wrapped the model
  (``Target`` switches the attention implementation to "jetspec").

    python scripts/demo/diag_consistency.py --prompts build/diag/eval_prompts.jsonl --num 3

Prints max |diff| per check and exits non-zero when one exceeds the fp32 tolerance.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--num", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--budget", type=int, default=32)
    ap.add_argument("--head", default=None, help="head directory (default: the bundled one)")
    ap.add_argument("--tol", type=float, default=2e-3)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)

    from jetspec_ext.decoder import HeadDrafter, generate
    from jetspec_ext.demo import demo_head_dir, load_demo_target
    from jetspec_ext.draft_head import JetSpecDraftHead
    from jetspec_ext.target import Target
    from jetspec_ext.train import (_target_features, block_attention_mask, dense_block_forward,
                                   encode_prompt, read_prompts, stop_ids_for)

    model, tok = load_demo_target(device="cpu", dtype=torch.float32)
    head = JetSpecDraftHead.from_pretrained(a.head or demo_head_dir(), dtype=torch.float32).eval()
    taps = head.target_layer_ids
    N, D = head.block_size, head.block_size - 1
    texts = read_prompts(a.prompts, a.num)
    stops = stop_ids_for(tok, model)

    # ---- training-path quantities FIRST (before any Target touches the model)
    seqs, rec_all = [], []
    # decode with a recorder around the drafter
    target = Target(model, taps)
    drafter = HeadDrafter(head, target, depth=D)
    orig = drafter.draft
    worst = {}

    def upd(k, v):
        worst[k] = max(worst.get(k, 0.0), float(v))

    for t in texts:
        p = encode_prompt(tok, t, "off")
        rec = []

        def rec_draft(ctx, ctx_lens, anchor, _rec=rec):
            out = orig(ctx, ctx_lens, anchor)
            _rec.append((int(ctx_lens[0]), int(anchor[0]), out[0].clone()))
            return out

        drafter.draft = rec_draft
        r = generate(target, drafter, p, budget=a.budget, width=7, max_new_tokens=a.max_new_tokens,
                     stop_token_ids=stops)
        drafter.draft = orig
        seqs.append(p + r.tokens[0])
        rec_all.append((len(p), rec))

    # ---- the training path on the committed sequences. Target switched the attention
    # implementation: check that HF's own forward still gives HF's result (vs sdpa explicitly).
    from jetspec_ext.target import _set_attn_impl

    with torch.no_grad():
        for (P, rec), seq in zip(rec_all, seqs):
            ids = torch.tensor([seq])
            att = torch.ones_like(ids)
            tapped_j, last_j = _target_features(model, ids, att, taps)
            impl = model.config._attn_implementation
            _set_attn_impl(model, "sdpa")
            tapped_s, last_s = _target_features(model, ids, att, taps)
            _set_attn_impl(model, impl)
            upd("hf forward: jetspec impl vs sdpa (tapped)", (tapped_j - tapped_s).abs().max())
            tapped, last = tapped_s, last_s
            # tapped features: HF hidden_states vs Target.forward (prefill over the sequence)
            kv = target.new_cache(1, len(seq) + 4)
            pl = torch.zeros(1, dtype=torch.int32)
            pos = torch.arange(len(seq)).unsqueeze(0)
            _, tap_dec = target.forward(kv, pl, ids, pos, None, logits_rows=torch.tensor([len(seq) - 1]))
            upd("tapped: HF hidden_states[k+1] vs Target.forward", (tap_dec - tapped).abs().max())
            # teacher alignment: argmax of target logits at a+i-1 == greedy token a+i
            logits = model.lm_head(last)[0]
            gen = torch.tensor(seq[P:])
            am = logits[P - 1: len(seq) - 1].argmax(-1)
            mism = int((am != gen).sum())
            upd("teacher: #positions where argmax(logits[j-1]) != greedy token j", mism)
            # dense block forward at the rounds' anchors vs the decoder's draft logits
            anchors = torch.tensor([[pfx for pfx, _, _ in rec]])
            valid = torch.ones_like(anchors, dtype=torch.bool)
            K = anchors.shape[1]
            T = ids.shape[1]
            # pad the sequence so every block position exists (the decoder drafts past the end)
            blk = torch.full((1, K, N), head.mask_token_id, dtype=torch.long)
            blk[:, :, 0] = torch.tensor([[anc for _, anc, _ in rec]])
            # anchor token must be the committed token at that position
            for k, (pfx, anc, _) in enumerate(rec):
                if pfx < len(seq) and seq[pfx] != anc:
                    upd("anchor token != committed token at prefix_len", 1)
            emb = model.model.embed_tokens(blk.view(1, K * N))
            bpos = (anchors.unsqueeze(-1) + torch.arange(N)).view(1, K * N)
            mask = block_attention_mask(anchors, valid, T, N, head.causal)
            h = dense_block_forward(head, tapped, emb, bpos, mask).view(1, K, N, -1)[:, :, 1:]
            dense_logits = model.lm_head(h)[0]  # (K, D, V)
            for k, (_, _, dl) in enumerate(rec):
                upd("draft logits: training path vs decoder round", (dense_logits[k] - dl).abs().max())
                upd("draft top-1 differs (count of slots)", int((dense_logits[k].argmax(-1) != dl.argmax(-1)).sum()))
            print(f"prompt len {P}, {len(seq) - P} tokens, {K} rounds checked")
    bad = False
    for k, v in worst.items():
        flag = ""
        if ("count" in k or "#" in k or "!=" in k) and v > 0:
            flag = "  <-- MISMATCH"
            bad = True
        elif "count" not in k and "#" not in k and "!=" not in k and v > a.tol:
            flag = "  <-- above tolerance"
            bad = True
        print(f"{k}: {v:.3g}{flag}")
    print(json.dumps({"ok": not bad}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
