"""Development probe (CPU is enough): how many distinct tree keys does one tree_attention CTA need?

Why: split_kernel_ws gives every CTA the whole key range [0, P + N), so each split pays for all
ceil(N / 64) tree tiles (~0.3 us more each than a prefix tile, docs/roadmap.md). A CTA owns 128
query rows = 128 / G consecutive tree nodes (G query heads per KV head: 4 for Qwen3-8B), and a
node sees only its ancestors and itself (at most depth + 1 tree keys). If the union of what a
CTA's nodes see fits in one or two 64-key tiles, gathering those keys' K / V rows would replace
the N / 64 tree tiles (the "gathered tree keys" lead of docs/roadmap.md). This probe measures that
union on real trees: the bundled demo pair decodes held-out MBPP prompts (the decoder's own
build_tree, accum policy), every round's tree mask is recorded, and for each block of
`--nodes-per-cta` consecutive nodes it prints the size of the union of their mask rows and the
number of 64-key tiles that union needs, beside ceil(N / 64).

    python benchmarks/probe_tree_key_union.py --eval-prompts eval_prompts.jsonl [--prompts 8] \
        [--budgets 128,256] [--nodes-per-cta 32]

The trees are the demo head's (the Qwen3-8B head's trees would differ in detail, not in kind:
same policy, width 7, depth 15).
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from jetspec_ext.reference.attention import unpack_tree_mask  # noqa: E402


def union_stats(mask_words: np.ndarray, n: int, nodes_per_cta: int) -> list[dict]:
    """Per block of `nodes_per_cta` consecutive query nodes: the union of their visible tree keys
    (its size, the 64-key tiles it needs when gathered, the highest key index it holds)."""
    vis = unpack_tree_mask(torch.as_tensor(np.asarray(mask_words)), n).numpy()
    out = []
    for start in range(0, n, nodes_per_cta):
        u = vis[start:start + nodes_per_cta].any(axis=0)
        size = int(u.sum())
        out.append({"first_node": start, "union": size, "gathered_tiles": -(-size // 64),
                    "max_key": int(np.flatnonzero(u).max()) if size else -1})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8, help="held-out MBPP prompts to decode")
    ap.add_argument("--budgets", default="128,256")
    ap.add_argument("--nodes-per-cta", type=int, default=32, help="128 rows / G (G = 4 for Qwen3-8B)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--eval-prompts", required=True,
                    help="prompts file in any format jetspec train reads (e.g. scripts/demo/extract_prompts.py's "
                         "--eval-out JSONL)")
    ap.add_argument("--json", default=None, help="write the per-round statistics here")
    args = ap.parse_args()

    import jetspec_ext.decoder as dec
    from jetspec_ext.demo import load_demo_head, load_demo_target
    from jetspec_ext.target import Target
    from jetspec_ext.train import encode_prompt, read_prompts

    model, tok = load_demo_target(device="cpu", dtype=torch.float32)
    head = load_demo_head(device="cpu", dtype=torch.float32).eval()
    target = Target(model, head.target_layer_ids)
    prompts = [encode_prompt(tok, t) for t in read_prompts(args.eval_prompts, args.prompts)]

    recorded = []
    real_build_tree = dec.build_tree

    def recording_build_tree(*a, **kw):
        tree = real_build_tree(*a, **kw)
        recorded.append(tree.mask[0].cpu().numpy().copy())
        return tree

    dec.build_tree = recording_build_tree
    report = {}
    try:
        for budget in [int(b) for b in args.budgets.split(",")]:
            recorded.clear()
            drafter = dec.HeadDrafter(head, target)
            for ids in prompts:
                dec.generate(target, drafter, ids, max_new_tokens=args.max_new_tokens, budget=budget, profile=False)
            stats = [union_stats(m, budget, args.nodes_per_cta) for m in recorded]
            per_block = np.array([[s["union"] for s in r] for r in stats])
            tiles = np.array([[s["gathered_tiles"] for s in r] for r in stats])
            dense = -(-budget // 64)
            print(f"budget {budget}: {len(recorded)} rounds from {len(prompts)} prompts; "
                  f"{args.nodes_per_cta} nodes per CTA; dense tree tiles per CTA today: {dense}")
            print("  block (first node) | union keys: median / p90 / max | gathered 64-key tiles: median / max")
            for j in range(per_block.shape[1]):
                u = per_block[:, j]
                print(f"  {j * args.nodes_per_cta:>5} | {int(np.median(u)):>4} / {int(np.percentile(u, 90)):>4} / "
                      f"{int(u.max()):>4} | {int(np.median(tiles[:, j]))} / {int(tiles[:, j].max())}")
            print(f"  worst CTA per round (gathered tiles): median {int(np.median(tiles.max(axis=1)))}, "
                  f"max {int(tiles.max())}, against {dense}")
            report[budget] = stats
    finally:
        dec.build_tree = real_build_tree
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f)


if __name__ == "__main__":
    main()
