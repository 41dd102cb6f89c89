#!/usr/bin/env python
"""One table for several demo head pairs (``scripts/gpu/demo_pairs.sh``): per pair, the steps
each head trained, tau of the causal and the bidirectional head per budget, their ratio, both
heads' speedups over AR at the largest budget and the AR baseline's tokens/s.

    python scripts/demo/summarize_pairs.py NAME=DIR/demo_head_results.json [NAME=...]

A pair whose results file is missing or holds errors is listed with what it has, never dropped:
a comparison of recipes must show every recipe that was run."""
from __future__ import annotations

import json
import sys


def _tau(res, kind, budget):
    """tau and entry of the ``kind`` head's tree row at ``budget`` (eval_demo_head's key
    ``"{kind} tree w{width} b{budget}"``, whatever the width)."""
    for key, e in res.get("configs", {}).items():
        if key.startswith(f"{kind} tree w") and key.endswith(f" b{budget}"):
            return e.get("tau"), e
    return None, {}


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


def main(argv=None) -> int:
    pairs = []
    for item in argv if argv is not None else sys.argv[1:]:
        name, _, path = item.partition("=")
        try:
            with open(path) as f:
                pairs.append((name, json.load(f)))
        except (OSError, ValueError) as e:
            pairs.append((name, {"error": repr(e)}))
    print(render(pairs), end="")
    for n, r in pairs:
        if "error" in r:
            print(f"{n}: no results ({r['error']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
