#!/usr/bin/env python
"""Issue 6 diagnosis: per-depth acceptance of a head through the real decoder (greedy, fp32, CPU).

For each configuration (``--budgets``, width ``--width``; plus the causal chain: width 1, budget
D + 1) it decodes ``--num`` prompts and reports tau, the fraction of rounds whose accepted path
reaches depth >= d (d = 1..D), the histogram of accepted draft tokens, and, per round, whether
the target's token at anchor + 1 was the head's slot-1 top-1 / in its top 7 (from the draft logits
of the round, checked against the committed output).

    python scripts/demo/diag_decode.py --prompts build/diag/eval_prompts.jsonl --num 20 \\
        --budgets 16,128 --chain --out build/diag/decode.json
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time

import torch


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--num", type=int, default=20)
    ap.add_argument("--head", default=None)
    ap.add_argument("--budgets", default="16,128")
    ap.add_argument("--width", type=int, default=7)
    ap.add_argument("--chain", action="store_true")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)

    from jetspec_ext.decoder import HeadDrafter, generate
    from jetspec_ext.demo import demo_head_dir, load_demo_target
    from jetspec_ext.draft_head import JetSpecDraftHead
    from jetspec_ext.target import Target
    from jetspec_ext.train import encode_prompt, read_prompts, stop_ids_for

    model, tok = load_demo_target(device="cpu", dtype=torch.float32)
    head = JetSpecDraftHead.from_pretrained(a.head or demo_head_dir(), dtype=torch.float32).eval()
    D = head.block_size - 1
    stops = stop_ids_for(tok, model)
    ids = [encode_prompt(tok, t, "off") for t in read_prompts(a.prompts, a.num)]
    target = Target(model, head.target_layer_ids)
    plan = [(f"tree w{a.width} b{b}", a.width, int(b), min(D, int(b) - 1)) for b in a.budgets.split(",") if b]
    if a.chain:
        plan.append(("chain w1", 1, D + 1, D))
    res = {"prompts": len(ids), "max_new_tokens": a.max_new_tokens, "configs": {}}
    for name, width, budget, depth in plan:
        drafter = HeadDrafter(head, target, depth=depth)
        orig = drafter.draft
        t0 = time.time()
        acc_hist = collections.Counter()
        rounds = toks = 0
        s1_top1 = s1_top7 = s1_n = 0
        for p in ids:
            rec = []

            def rec_draft(ctx, ctx_lens, anchor, _rec=rec):
                out = orig(ctx, ctx_lens, anchor)
                _rec.append((int(ctx_lens[0]), out[0, 0].topk(7).indices.tolist()))
                return out

            drafter.draft = rec_draft
            r = generate(target, drafter, p, budget=budget, width=width, max_new_tokens=a.max_new_tokens,
                         stop_token_ids=stops)
            drafter.draft = orig
            seq = p + r.tokens[0]
            for x in r.rounds:
                acc_hist[x.accept_len[0] - 1] += 1
            rounds += len(r.rounds)
            toks += len(r.tokens[0])
            for pfx, top7 in rec:
                if pfx + 1 < len(seq):
                    s1_n += 1
                    s1_top1 += top7[0] == seq[pfx + 1]
                    s1_top7 += seq[pfx + 1] in top7
        n = sum(acc_hist.values())
        ge = [sum(v for k, v in acc_hist.items() if k >= d) / n for d in range(1, depth + 1)]
        e = {"width": width, "budget": budget, "depth": depth, "rounds": rounds, "tokens": toks,
             "tau": sum((k + 1) * v for k, v in acc_hist.items()) / n,
             "frac_rounds_accepting_ge": ge,
             "accepted_draft_tokens_hist": {str(k): acc_hist[k] for k in sorted(acc_hist)},
             "round_slot1_top1": s1_top1 / max(s1_n, 1), "round_slot1_top7": s1_top7 / max(s1_n, 1),
             "seconds": round(time.time() - t0, 1)}
        res["configs"][name] = e
        print(f"== {name}: tau {e['tau']:.3f} over {rounds} rounds ({e['seconds']} s); slot-1 of the round: top-1 "
              f"{e['round_slot1_top1']:.3f}, top-7 {e['round_slot1_top7']:.3f}")
        print("  P(accepted >= d): " + " ".join(f"{d}:{x:.3f}" for d, x in enumerate(ge, 1)))
        print("  accepted draft tokens histogram: " + json.dumps(e["accepted_draft_tokens_hist"]), flush=True)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
