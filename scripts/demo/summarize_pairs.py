#!/usr/bin/env python
"""One table for several demo head pairs (``scripts/gpu/demo_pairs.sh``): per pair, the steps
each head trained, tau of the causal and the bidirectional head per budget, their ratio, both
heads' speedups over AR at the largest budget and the AR baseline's tokens/s. The largest
budget's ratio carries its 95 % paired bootstrap interval over the prompts, ``[lo, hi]``, where
the results hold per-prompt records (evaluate keeps them since the thirtieth session).

    python scripts/demo/summarize_pairs.py NAME=DIR/demo_head_results.json [NAME=...]

A pair whose results file is missing or holds errors is listed with what it has, never dropped:
a comparison of recipes must show every recipe that was run. Where a pair's directory also holds
``slot_accuracy.json`` (make_demo_head.sh --slot-diag), a second table gives both heads' top-1 per
mask slot with all-MASK blocks, the decoding condition (why a ratio is what it is)."""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_demo_head import tree_entry  # noqa: E402
from jetspec_ext.train import tau_ratio_interval  # noqa: E402

SLOTS_SHOWN = (1, 2, 3, 4, 8)


def _tau(res, kind, budget):
    """tau and entry of the ``kind`` head's tree row at ``budget`` (eval_demo_head's key
    ``"{kind} tree w{width} b{budget}"``, whatever the width)."""
    e = tree_entry(res, kind, budget)
    return e.get("tau"), e


def pair_row(name: str, res: dict) -> str:
    budgets = res.get("budgets") or []
    tr = res.get("training") or {}
    steps = "/".join(str(((tr.get(h) or {}).get("train") or {}).get("steps", "?")) for h in ("causal", "bidir"))
    cells = []
    for b in budgets:
        c, _ = _tau(res, "causal", b)
        d, _ = _tau(res, "bidirectional", b)
        ratio = f"{c / d:.2f}" if c and d else "-"
        cells.append(f"{c:.2f} / {d:.2f} ({ratio})" if c and d else f"{c} / {d} ({ratio})")
    if budgets:  # the largest budget's ratio with its 95 % paired bootstrap interval over prompts
        try:
            iv = tau_ratio_interval(_tau(res, "causal", budgets[-1])[1], _tau(res, "bidirectional", budgets[-1])[1])
            cells[-1] += f" [{iv['lo']:.2f}, {iv['hi']:.2f}]"
        except ValueError:  # no per-prompt records (older results) or a missing row
            pass
    speeds = []
    for kind in ("causal", "bidirectional"):
        _, e = _tau(res, kind, budgets[-1]) if budgets else (None, {})
        speeds.append(f"{e['speedup']:.2f}x" + (" (eager)" if e.get("graph_capture_failed") else "")
                      if e.get("speedup") else "-")
    ar = (res.get("ar") or {}).get("tokens_per_s")
    ar = f"{ar:.1f}" if ar else "-"
    return f"| {name} | {steps} | " + " | ".join(cells) + f" | {speeds[0]} / {speeds[1]} | {ar} |"


def render(pairs: list[tuple[str, dict]]) -> str:
    budgets = next((r.get("budgets") for _, r in pairs if r.get("budgets")), [])
    head = ("| pair | steps causal / bidir | "
            + " | ".join(f"tau b{b} causal / bidir (ratio)" for b in budgets)
            + " | speedup causal / bidir, largest budget | AR tokens/s |")
    rows = [head, "|" + "---|" * (4 + len(budgets))]
    rows += [pair_row(n, r) for n, r in pairs]
    return "\n".join(rows) + "\n"


def render_slots(slots: list[tuple[str, dict]]) -> str:
    """Per pair, the causal and the bidirectional head's all-MASK top-1 at a few mask slots (from
    diag_noise_reliance.py's JSON: heads "causal" / "bidir", noise "0.0")."""
    def cells(res, head):
        acc = (((res.get("heads") or {}).get(head) or {}).get("0.0") or {}).get("top1_by_depth") or []
        return [f"{acc[i - 1]:.2f}" if i <= len(acc) else "-" for i in SLOTS_SHOWN]
    rows = ["| pair | held-out answers | " + " | ".join(f"slot {i} causal / bidir" for i in SLOTS_SHOWN) + " |",
            "|" + "---|" * (2 + len(SLOTS_SHOWN))]
    for name, res in slots:
        c, b = cells(res, "causal"), cells(res, "bidir")
        rows.append(f"| {name} | {res.get('num', '-')} | " + " | ".join(f"{x} / {y}" for x, y in zip(c, b)) + " |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    pairs, slots = [], []
    for item in argv if argv is not None else sys.argv[1:]:
        name, _, path = item.partition("=")
        try:
            with open(path) as f:
                pairs.append((name, json.load(f)))
        except (OSError, ValueError) as e:
            pairs.append((name, {"error": repr(e)}))
        slot_file = os.path.join(os.path.dirname(path), "slot_accuracy.json")
        if os.path.isfile(slot_file):
            try:
                with open(slot_file) as f:
                    slots.append((name, json.load(f)))
            except ValueError as e:
                print(f"{name}: unreadable {slot_file} ({e!r})")
    print(render(pairs), end="")
    if slots:
        print("\nTop-1 agreement with the target per mask slot, all-MASK blocks (the decoding condition), "
              "every anchor of the target's greedy answers to held-out prompts:\n")
        print(render_slots(slots), end="")
    for n, r in pairs:
        if "error" in r:
            print(f"{n}: no results ({r['error']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
