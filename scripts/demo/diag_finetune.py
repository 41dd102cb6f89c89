#!/usr/bin/env python
"""Issue 6 diagnosis: does NEW data move the held-out accuracy of the bundled head?

A short CPU fine-tune of the bundled head (``jetspec_ext.train.train_head``, fp32, one thread) on
the target's greedy answers to ``--num-prompts`` prompts of ``--prompts`` (e.g. site-packages
functions the head never saw, or, as a control, stdlib prompts it was trained on), then the
per-slot metrics of diag_accuracy.py on held-out answers (``--eval NAME=regen.jsonl``, caches
written by diag_accuracy.py), before and after.

    python scripts/demo/diag_finetune.py --prompts build/diag/site_prompts.jsonl --num-prompts 400 \\
        --steps 150 --out build/diag/ft_site --eval mbpp128=build/diag/regen_mbpp128.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def eval_sets(model, head, sets, max_len=384):
    from diag_accuracy import slot_metrics
    from jetspec_ext.train import load_cache

    out = {}
    head.eval()
    for name, path in sets:
        top1 = kl = cnt = 0.0
        for s in load_cache(path).values():
            seq = list(s.prompt_ids) + list(s.response_ids)
            m = slot_metrics(model, head, seq, len(s.prompt_ids), max_len)
            if m is None:
                continue
            ok = m["ok"].double()
            t1 = (m["top1"].double() * ok).sum(0)
            cnt += float(ok.sum())
            top1 += float(t1.sum())
            kl += float((m["kl"].double() * ok).sum())
        out[name] = {"top1_all_slots": top1 / cnt, "kl_all_slots": kl / cnt}
        print(f"  {name}: top-1 {top1 / cnt:.3f}, KL {kl / cnt:.3f}", flush=True)
    head.train()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--num-prompts", type=int, default=400)
    ap.add_argument("--skip-prompts", type=int, default=0, help="use prompts from this index on (hash order)")
    ap.add_argument("--longest-first", action="store_true",
                    help="take the prompts in regeneration order (longest first), e.g. the stdlib ones the head saw")
    ap.add_argument("--gen-max-new-tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--anchors", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--eval", action="append", default=[], help="NAME=regen.jsonl")
    ap.add_argument("--skip-before", action="store_true", help="do not evaluate the head before fine-tuning")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)

    from jetspec_ext.demo import demo_head_dir, load_demo_target
    from jetspec_ext.draft_head import JetSpecDraftHead
    from jetspec_ext.train import TrainConfig, encode_prompt, read_prompts, regenerate, stop_ids_for, train_head

    model, tok = load_demo_target(device="cpu", dtype=torch.float32)
    model.requires_grad_(False)
    head = JetSpecDraftHead.from_pretrained(demo_head_dir(), dtype=torch.float32)
    stops = stop_ids_for(tok, model)
    sets = [tuple(x.split("=", 1)) for x in a.eval]
    res = {"args": vars(a)}
    if sets and not a.skip_before:
        print("before:")
        res["before"] = eval_sets(model, head, sets)
    texts = read_prompts(a.prompts)
    pids = [encode_prompt(tok, t, "off")[-(a.max_len // 2):] for t in texts]
    if a.longest_first:
        order = sorted(range(len(pids)), key=lambda i: -len(pids[i]))
        pids = [pids[i] for i in order]
    pids = pids[a.skip_prompts: a.skip_prompts + a.num_prompts]
    os.makedirs(a.out, exist_ok=True)
    t0 = time.time()
    samples = regenerate(model, pids, os.path.join(a.out, "regen.jsonl"), max_new_tokens=a.gen_max_new_tokens,
                         batch_size=32, eos_token_id=stops or None, pad_token_id=tok.pad_token_id or 0)
    res["gen_s"] = round(time.time() - t0, 1)
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, anchors=a.anchors, max_len=a.max_len, lr=a.lr,
                      warmup=10, save_every=0, log_every=25)
    res["train"] = train_head(model, head, samples, cfg, a.out)
    res["epochs"] = a.steps * a.batch_size / max(res["train"]["sequences"], 1)
    if sets:
        print("after:")
        res["after"] = eval_sets(model, head, sets)
    with open(os.path.join(a.out, "diag_finetune.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
