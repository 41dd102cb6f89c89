"""What fp8 drafting (``HeadDrafter(fp8=True)``) does to acceptance: the bundled demo pair
(trained target + causal head), greedy, the same prompts decoded with the plain drafter and the
fp8 one; prints tau (mean tokens per round over all rounds of all prompts) per drafter, the paired
per-prompt ratio, and whether the two outputs are token-identical (greedy: each is the target's
own output, so they must be, up to the target's bf16 near-ties on the GPU).

    python benchmarks/probe_fp8_draft_tau.py [--num 100] [--budget 128] [--device cpu|cuda]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.harness import data_dir  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default=None, help="JSONL prompts (default: mbpp_test.jsonl of benchmarks.harness.data_dir())")
    ap.add_argument("--num", type=int, default=50)
    ap.add_argument("--skip", type=int, default=0, help="prompts skipped at the file's start")
    ap.add_argument("--budget", type=int, default=128)
    ap.add_argument("--width", type=int, default=7)
    ap.add_argument("--draft-temperature", type=float, default=None, help="default: the demo pair's")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    from jetspec_ext.decoder import HeadDrafter, generate
    from jetspec_ext.demo import DEMO_DRAFT_TEMPERATURE, has_demo, load_demo_head, load_demo_target
    from jetspec_ext.target import Target
    from jetspec_ext.train import encode_prompt, read_prompts, stop_ids_for

    if not has_demo("head"):
        print("probe_fp8_draft_tau: n/a (the bundled demo pair is not installed)")
        return 0
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    model, tok = load_demo_target(device=dev)
    head = load_demo_head(device=dev, dtype=model.dtype)
    target = Target(model, head.target_layer_ids)
    path = a.prompts or os.path.join(data_dir(), "mbpp_test.jsonl")
    texts = read_prompts(path, a.skip + a.num)[a.skip:]
    ids = [encode_prompt(tok, t, "off") for t in texts]
    T = DEMO_DRAFT_TEMPERATURE if a.draft_temperature is None else a.draft_temperature
    kw = dict(max_new_tokens=a.max_new_tokens, budget=a.budget, width=a.width, draft_temperature=T,
              stop_token_ids=stop_ids_for(tok, model))
    drafters = {"plain": HeadDrafter(head, target), "fp8": HeadDrafter(head, target, fp8=True)}
    stats = {k: [0, 0, []] for k in drafters}  # tokens, rounds, per-prompt tau
    same = 0
    t0 = time.perf_counter()
    for p in ids:
        outs = {}
        for k, d in drafters.items():
            r = generate(target, d, p, **kw)
            n_tok = sum(x.accept_len[0] for x in r.rounds)
            stats[k][0] += n_tok
            stats[k][1] += len(r.rounds)
            stats[k][2].append(n_tok / max(1, len(r.rounds)))
            outs[k] = r.tokens[0]
        same += outs["plain"] == outs["fp8"]
    tau = {k: s[0] / max(1, s[1]) for k, s in stats.items()}
    ratios = [b / a_ for a_, b in zip(stats["plain"][2], stats["fp8"][2])]
    ratios.sort()
    print(f"demo pair, {len(ids)} prompts of {os.path.basename(path)} (from #{a.skip}), greedy, budget {a.budget}, "
          f"width {a.width}, draft temperature {T}, max {a.max_new_tokens} new tokens, {dev}, {model.dtype}; "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"tau plain {tau['plain']:.3f} | tau fp8 {tau['fp8']:.3f} | fp8 / plain {tau['fp8'] / tau['plain']:.4f} | "
          f"per-prompt ratio median {ratios[len(ratios) // 2]:.4f} (min {ratios[0]:.3f}, max {ratios[-1]:.3f}) | "
          f"outputs identical {same} / {len(ids)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
