"""Turn the GPU suite's JSON lines (bench.jsonl) into the markdown table kept in RESULTS.md.

    python benchmarks/results_table.py benchmarks/out/bench.jsonl
"""
import json
import sys


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys and k not in ("device",)]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k, "")
            cells.append(f"{v:.2f}" if isinstance(v, float) else str(v))
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
