#!/usr/bin/env python
"""Issue 6 diagnosis: a prompt-lookup (n-gram copy) drafter through the real decoder, as a yardstick
for the draft head on the demo target.

The demo target's greedy answers repeat themselves (loops), so copying the tokens that followed
the most recent earlier occurrence of the last n tokens (n = 3, 2, 1) of prompt + output predicts
most of them. :class:`LookupDrafter` implements the decoder's drafter interface (``depth``,
``new_context``, ``extend``, ``draft``) with one-hot draft logits and is run as a chain (width 1,
budget depth + 1), so the decoder's greedy output stays identical to the autoregressive one; tau
and tokens/s come from :func:`jetspec_ext.decoder.generate` itself.

    python scripts/demo/diag_pld.py --prompts build/diag/eval_prompts.jsonl --num 20 --out build/diag/pld.json
"""
from __future__ import annotations

import argparse
import json
import sys

import torch


class LookupDrafter:
    """Chain drafter (batch 1) that copies from the token history. The history is rebuilt from
    what the decoder passes: the prompt (``reset``), each round's anchor at ``ctx_lens``, and the
    accepted drafts, which for a chain are the first tokens of the previous draft."""

    def __init__(self, vocab: int, depth: int = 15, nmax: int = 3, device="cpu"):
        self.vocab, self.depth, self.nmax, self.device = vocab, depth, nmax, device
        self.hist, self.last_draft, self.last_len = [], [], None

    def reset(self, prompt):
        self.hist, self.last_draft, self.last_len = list(prompt), [], None

    def new_context(self, batch, max_len):
        if batch != 1:
            raise ValueError("LookupDrafter: batch 1 only")
        return torch.zeros(1)

    def extend(self, ctx, ctx_lens, tapped):
        pass

    def propose(self):
        h = self.hist
        L = len(h)
        for n in range(min(self.nmax, L - 1), 0, -1):
            suf = h[L - n:]
            for s in range(L - n - 1, -1, -1):
                if h[s: s + n] == suf:
                    out, j = [], s + n
                    while len(out) < self.depth:
                        out.append(h[j] if j < L else out[j - L])
                        j += 1
                    return out
        return [h[-1]] * self.depth

    def draft(self, ctx, ctx_lens, anchor):
        n = int(ctx_lens[0])
        if self.last_len is not None:  # tokens committed since the last draft: anchor + accepted drafts
            k = n - self.last_len
            self.hist = self.hist[: self.last_len] + self.hist[self.last_len: self.last_len + 1] + self.last_draft[: k - 1]
        self.hist = self.hist[:n] + [int(anchor[0])]
        self.last_len = n
        self.last_draft = self.propose()
        logits = torch.full((1, self.depth, self.vocab), -30.0, device=self.device)
        logits[0, torch.arange(self.depth), torch.tensor(self.last_draft)] = 0.0
        return logits


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--num", type=int, default=20)
    ap.add_argument("--depth", type=int, default=15)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)

    from jetspec_ext.decoder import generate, generate_ar
    from jetspec_ext.demo import load_demo_target
    from jetspec_ext.target import Target
    from jetspec_ext.train import encode_prompt, read_prompts, stop_ids_for

    model, tok = load_demo_target(device="cpu", dtype=torch.float32)
    stops = stop_ids_for(tok, model)
    ids = [encode_prompt(tok, t, "off") for t in read_prompts(a.prompts, a.num)]
    target = Target(model, ())
    d = LookupDrafter(model.config.vocab_size, a.depth)
    kw = dict(max_new_tokens=a.max_new_tokens, stop_token_ids=stops, profile=False)
    generate_ar(target, ids[0], **{**kw, "max_new_tokens": 8})  # warm-up
    ar_s = sp_s = 0.0
    toks = rounds = acc = same = 0
    for p in ids:
        ar = generate_ar(target, p, **kw)
        d.reset(p)
        r = generate(target, d, p, budget=a.depth + 1, width=1, **kw)
        ar_s += ar.decode_s
        sp_s += r.decode_s
        toks += len(r.tokens[0])
        rounds += len(r.rounds)
        acc += sum(x.accept_len[0] for x in r.rounds)
        same += int(r.tokens[0] == ar.tokens[0])
    res = {"prompts": len(ids), "depth": a.depth, "tau": acc / rounds, "identical_to_ar": f"{same}/{len(ids)}",
           "ar_tokens_per_s": toks / ar_s, "pld_tokens_per_s": toks / sp_s, "speedup": ar_s / sp_s,
           "threads": torch.get_num_threads()}
    print(json.dumps(res))
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
