#!/usr/bin/env python
"""Compare a causal and a bidirectional head each at its best draft temperature, from
``eval_demo_head.py`` result files that ran the same prompts at several ``--draft-temperature`` /
``--bidir-draft-temperature`` values, and say how much of the comparison is selection: the ratio
with each head's temperature chosen on ALL the prompts (in-sample), and cross-validated (chosen on
one half of the prompts, measured on the other, both ways; ``jetspec_ext.train.tau_ratio_cross_validated``).

    python scripts/demo/select_draft_temperature.py benchmarks/results/demo_dt_2026-12-01s34/dt_*.json

Rows are keyed by head kind (causal / bidirectional, from the config name), budget, width and
tree policy; one head per kind is assumed across the files (the files are one pair's runs). A
(kind, budget, width, policy, temperature) seen in several files must have the same per-prompt
records (greedy decoding on one machine is deterministic); otherwise the script stops.
"""
from __future__ import annotations

import argparse
import json
import sys


def collect(results: list) -> dict:
    """{(budget, width, policy): {"causal" | "bidirectional": {temperature: entry}}} over the tree
    rows of ``results`` (``eval_demo_head`` result dicts) that hold per-prompt records."""
    out: dict = {}
    prompts = {r.get("prompts") for r in results}
    if len(prompts) > 1:
        raise ValueError(f"the files ran different numbers of prompts: {sorted(map(str, prompts))}")
    for r in results:
        for name, e in r.get("configs", {}).items():
            kind = name.split(" ")[0]
            if kind not in ("causal", "bidirectional") or " tree " not in name or "per_prompt_accepted" not in e:
                continue
            key = (e["budget"], e["width"], e.get("policy", "accum"))
            t = float(e.get("draft_temperature", 1.0))
            by_t = out.setdefault(key, {}).setdefault(kind, {})
            if t in by_t:
                old = by_t[t]
                if (old["per_prompt_accepted"], old["per_prompt_rounds"]) != (e["per_prompt_accepted"],
                                                                              e["per_prompt_rounds"]):
                    raise ValueError(f"{kind} {key} T {t:g}: two runs with different per-prompt records")
                continue
            by_t[t] = e
    return out


def report(results: list) -> str:
    from jetspec_ext.train import tau_ratio_cross_validated, tau_ratio_interval

    lines = []
    for (budget, width, policy), kinds in sorted(collect(results).items()):
        if set(kinds) != {"causal", "bidirectional"}:
            continue
        c, d = (dict(sorted(kinds[k].items())) for k in ("causal", "bidirectional"))
        lines.append(f"## budget {budget}, width {width}, policy {policy}\n")
        lines.append("| draft T | causal tau | bidirectional tau |\n|---|---|---|")
        for t in sorted(set(c) | set(d)):
            ct = f"{c[t]['tau']:.4f}" if t in c else "-"
            dt = f"{d[t]['tau']:.4f}" if t in d else "-"
            lines.append(f"| {t:g} | {ct} | {dt} |")
        bc = max(c, key=lambda t: c[t]["tau"])
        bd = max(d, key=lambda t: d[t]["tau"])
        iv = tau_ratio_interval(c[bc], d[bd])
        lines.append(f"\nIn-sample (each head's T chosen on all {iv['prompts']} prompts): causal T {bc:g} "
                     f"{c[bc]['tau']:.4f} / bidirectional T {bd:g} {d[bd]['tau']:.4f} = ratio {iv['ratio']:.4f} "
                     f"[{iv['lo']:.4f}, {iv['hi']:.4f}]")
        for folds in ("halves", "parity"):
            cv = tau_ratio_cross_validated(c, d, folds=folds)
            picks = "; ".join(f"fold {p['fold']}: causal T {p['num']:g}, bidirectional T {p['den']:g}"
                              for p in cv["chosen"])
            lines.append(f"Cross-validated ({folds}; {picks}): {cv['num_tau']:.4f} / {cv['den_tau']:.4f} = "
                         f"ratio {cv['ratio']:.4f} [{cv['lo']:.4f}, {cv['hi']:.4f}]")
        lines.append("")
    if not lines:
        raise ValueError("no budget has tree rows with per-prompt records for both heads")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="eval_demo_head.py --out JSON files (one pair, same prompts)")
    args = ap.parse_args(argv)
    results = []
    for f in args.files:
        with open(f) as fh:
            results.append(json.load(fh))
    try:
        print(report(results))
    except ValueError as e:
        print(f"select_draft_temperature: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
