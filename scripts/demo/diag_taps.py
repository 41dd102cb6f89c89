#!/usr/bin/env python
"""Issue 6 diagnosis: what do the target's layers say about the next tokens (logit lens)?

For cached greedy answers (a ``regen_*.jsonl`` written by diag_accuracy.py), the output of every
target layer k (HF ``hidden_states[k + 1]``) at position j goes through the target's final norm
and LM head; the script reports top-1 / top-7 agreement with the greedy token at j + 1 (what the
target itself predicts there) and at j + 2 (one token further: what a draft head's slot 2
must guess). The head taps layers 1 and 3 of 6 (``--taps`` just marks them in the table).

    python scripts/demo/diag_taps.py --regen build/diag/regen_mbpp128.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys

import torch


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--regen", required=True)
    ap.add_argument("--taps", default="1,3")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from jetspec_ext.demo import load_demo_target
    from jetspec_ext.train import load_cache

    model, _ = load_demo_target(device="cpu", dtype=torch.float32)
    samples = list(load_cache(a.regen).values())
    L = model.config.num_hidden_layers
    hit = torch.zeros(L, 2, 2)
    n = torch.zeros(2)
    with torch.no_grad():
        for s in samples:
            seq = list(s.prompt_ids) + list(s.response_ids)
            P = len(s.prompt_ids)
            ids = torch.tensor([seq])
            hs = model.model(input_ids=ids, output_hidden_states=True).hidden_states
            for k in range(L):
                h = hs[k + 1][0] if k < L - 1 else hs[k + 1][0]  # last entry is already normed by HF
                logits = model.lm_head(h if k == L - 1 else model.model.norm(h))
                top7 = logits.topk(7, -1).indices
                for ahead in (1, 2):
                    js = torch.arange(P - 1, len(seq) - ahead)  # positions whose token j+ahead is an answer token
                    want = ids[0, js + ahead]
                    hit[k, ahead - 1, 0] += float((top7[js, 0] == want).sum())
                    hit[k, ahead - 1, 1] += float((top7[js] == want.unsqueeze(-1)).any(-1).sum())
                    if k == 0:
                        n[ahead - 1] += len(js)
    taps = {int(x) for x in a.taps.split(",") if x}
    rows = []
    print("layer  next top1  next top7  next+1 top1  next+1 top7")
    for k in range(L):
        r = [float(hit[k, i, j] / n[i]) for i in range(2) for j in range(2)]
        rows.append({"layer": k, "tapped": k in taps, "next_top1": r[0], "next_top7": r[1],
                     "next2_top1": r[2], "next2_top7": r[3]})
        print(f"{k:5d}{'*' if k in taps else ' '} " + "  ".join(f"{x:9.3f}" for x in r))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"samples": len(samples), "layers": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
