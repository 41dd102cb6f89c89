#!/usr/bin/env python
"""Issue 6 diagnosis: how much does a head trained with noisy blocks (``jetspec train
--block-noise P``) lean on the noisy tokens beside its MASK slots, which decoding never shows it?

For each head (``--head NAME=DIR``, e.g. the causal and bidirectional heads of one pair) and each
noise probability in ``--noise`` (0 = all-MASK blocks, the decoding condition): every anchor of the
target's greedy answers to held-out prompts (``jetspec_ext.train.regenerate``, cached), through the
training code path (``Batcher`` + ``loss_on_batch``, noisy slots drawn from the target as in
training), and per mask slot i = 1..D the top-1 agreement with the target's greedy token, counted
on MASK slots only (``noise_in_loss=False``: a noisy slot holds a draw of the very token it
predicts). The same anchors, seed and draws for every head, so only the head differs.

A MASK slot's accuracy with noisy neighbours minus its all-MASK accuracy is what the head gained
from those neighbours in training and loses at decoding time. The causal head's neighbours are its
earlier slots only; the bidirectional head's are earlier and later slots.

    python scripts/demo/diag_noise_reliance.py --head causal=DIR --head bidir=DIR2 \\
        --prompts build/demo_head/eval_prompts.jsonl --num 30 --noise 0,0.5,0.9 --out rel.json

fp32, on the CPU or (``--device cuda``; scripts/demo/make_demo_head.sh --slot-diag N) the GPU.
Writes ``--out`` (JSON) and prints one table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def slot_accuracy(model, head, samples, noise: float, seed: int, max_len: int):
    """(top-1 hits per slot, counted MASK slots per slot): float64 ``(D,)`` each, over every anchor
    of every sample (one sequence per forward), MASK slots only."""
    from jetspec_ext.train import Batcher, TrainConfig, loss_on_batch

    D = head.block_size - 1
    hits = torch.zeros(D, dtype=torch.float64)
    count = torch.zeros(D, dtype=torch.float64)
    for j, s in enumerate(samples):
        cfg = TrainConfig(batch_size=1, anchors=max_len, max_len=max_len, seed=seed + j, block_noise=noise,
                          block_noise_in_loss=noise == 0)
        batch = Batcher([s], cfg, head.mask_token_id, head.block_size).batch(0)
        with torch.no_grad():
            _, stats = loss_on_batch(model, head, batch, noise_in_loss=noise == 0)
        n_slot, acc = stats["slots_by_depth"], stats["top1_by_depth"]
        count += torch.tensor(n_slot, dtype=torch.float64)
        hits += torch.tensor(acc, dtype=torch.float64) * torch.tensor(n_slot, dtype=torch.float64)
    return hits, count


def add_heldout_arguments(ap, num: int) -> None:
    """The arguments this script shares with diag_refine.py: heads, held-out prompts, output."""
    ap.add_argument("--head", action="append", required=True, help="NAME=DIR of a head checkpoint (repeat)")
    ap.add_argument("--prompts", required=True, help="held-out prompts (JSONL with 'prompt', or text)")
    ap.add_argument("--num", type=int, default=num)
    ap.add_argument("--max-len", type=int, default=384)
    ap.add_argument("--gen-max-new-tokens", type=int, default=256)
    ap.add_argument("--cache-dir", default="build/diag")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)


def load_heldout(a, device: Optional[str] = "cpu"):
    """(demo target in fp32 on ``device`` (None: CUDA when available), {name: (dir, head)} on it
    too, the target's greedy answers to the first ``a.num`` prompts, cached in ``a.cache_dir``)."""
    from jetspec_ext.demo import load_demo_target
    from jetspec_ext.draft_head import JetSpecDraftHead
    from jetspec_ext.train import encode_prompt, read_prompts, regenerate, stop_ids_for

    torch.set_num_threads(a.threads)
    model, tok = load_demo_target(device=device, dtype=torch.float32)
    model.requires_grad_(False)
    heads = {}
    for spec in a.head:
        name, path = spec.split("=", 1)
        heads[name] = (path, JetSpecDraftHead.from_pretrained(path, dtype=torch.float32)
                       .to(model.lm_head.weight.device).eval())
    pids = [encode_prompt(tok, t, "off")[-(a.max_len // 2):] for t in read_prompts(a.prompts)[: a.num]]
    stops = stop_ids_for(tok, model)
    samples = regenerate(model, pids, os.path.join(a.cache_dir, "regen_heldout.jsonl"),
                         max_new_tokens=a.gen_max_new_tokens, batch_size=32, eos_token_id=stops or None,
                         pad_token_id=tok.pad_token_id or 0)
    return model, heads, samples


def finish(results: dict, lines, out) -> int:
    """Print the table, keep it in the results and write them to ``out`` (JSON) when given."""
    table = "\n".join(lines)
    print(table)
    results["table"] = table
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_heldout_arguments(ap, num=30)
    ap.add_argument("--noise", default="0,0.5,0.9", help="comma-separated noise probabilities (0 = all-MASK)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                    help="fp32 either way; auto: CUDA when available")
    a = ap.parse_args(argv)
    noises = [float(x) for x in a.noise.split(",")]
    model, heads, samples = load_heldout(a, None if a.device == "auto" else a.device)
    results = {"prompts": a.prompts, "num": len(samples), "noise": noises, "heads": {}}
    shown = (1, 2, 3, 4, 8, 15)
    lines = ["| head | noise | mean top-1 (MASK slots) | " + " | ".join(f"slot {i}" for i in shown) + " |",
             "|---|---|---|" + "---|" * len(shown)]
    for name, (path, head) in heads.items():
        results["heads"][name] = {"dir": path, "causal": head.causal}
        for p in noises:
            t0 = time.time()
            hits, count = slot_accuracy(model, head, samples, p, a.seed, a.max_len)
            acc = (hits / count.clamp(min=1)).tolist()
            mean = float(hits.sum() / count.sum().clamp(min=1))
            results["heads"][name][str(p)] = {"top1_by_depth": acc, "slots_by_depth": count.tolist(), "mean": mean}
            print(f"{name} noise {p}: mean top-1 on MASK slots {mean:.3f} over {int(count.sum())} slots "
                  f"({time.time() - t0:.0f} s)", flush=True)
            cells = [f"{acc[i - 1]:.3f}" if i <= len(acc) else "-" for i in shown]
            lines.append(f"| {name} | {p} | {mean:.3f} | " + " | ".join(cells) + " |")
    return finish(results, lines, a.out)


if __name__ == "__main__":
    sys.exit(main())
