#!/usr/bin/env python
"""Copy a regeneration cache (``jetspec train --cache``, JSONL ``{"key", "prompt_ids",
"response_ids"}``) into a size-capped gzip file, each record tagged with the ``kind`` of its prompt
(``def`` / ``snippet`` from ``extract_prompts.py``; ``?`` when not found), and print statistics per
kind (samples, answer tokens, answers of <= 1 token, answers that reach ``--max-new-tokens``).

Records are copied in cache order (the order they were answered: a uniform subset of the prompts,
see ``jetspec_ext.train.regenerate``) until the compressed file reaches ``--max-mb``; the output
stays a valid cache (``gunzip`` it and pass it as ``--cache``: the extra field is ignored).

    python scripts/demo/export_regen.py --cache build/demo_head/regen.jsonl \\
        --prompts build/demo_head/train_prompts.jsonl --max-len 384 --out $OUT/regen.jsonl.gz
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", required=True)
    ap.add_argument("--prompts", default=None, help="the train prompts JSONL (for the kinds)")
    ap.add_argument("--tokenizer", default=None, help="default: the bundled demo target's")
    ap.add_argument("--max-len", type=int, default=384, help="jetspec train --max-len (prompts keep max_len/2 tokens)")
    ap.add_argument("--max-new-tokens", type=int, default=0, help="the regeneration cap (for the 'capped' count)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-mb", type=float, default=15.0)
    ap.add_argument("--stats-out", default=None, help="JSON file for the statistics")
    a = ap.parse_args(argv)

    kind_of = {}
    if a.prompts and os.path.isfile(a.prompts):
        try:
            from transformers import AutoTokenizer

            tdir = a.tokenizer
            if tdir is None:
                from jetspec_ext.demo import demo_target_dir
                tdir = demo_target_dir()
            tok = AutoTokenizer.from_pretrained(tdir)
            with open(a.prompts, encoding="utf-8") as f:
                recs = [json.loads(x) for x in f if x.strip()]
            from jetspec_ext.train import encode_prompts

            # the prompt ids jetspec train regenerated from (raw text, last max_len / 2 tokens)
            ids = encode_prompts(tok, [r["prompt"] for r in recs], "off")
            keep = a.max_len // 2
            for r, x in zip(recs, ids):
                kind_of.setdefault(tuple(x[-keep:]), r.get("kind", "?"))
        except Exception as e:  # noqa: BLE001 - the kinds are a nicety
            print(f"[export_regen] no kinds ({e!r})", flush=True)

    max_bytes = int(a.max_mb * 1e6)
    stats: dict = {}
    n_in = n_out = 0
    truncated = False
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.cache) as src, open(a.out, "wb") as raw:
        gz = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6)
        for line in src:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            n_in += 1
            k = kind_of.get(tuple(r["prompt_ids"]), "?")
            st = stats.setdefault(k, {"samples": 0, "answer_tokens": 0, "le1_token": 0, "capped": 0})
            n = len(r["response_ids"])
            st["samples"] += 1
            st["answer_tokens"] += n
            st["le1_token"] += int(n <= 1)
            st["capped"] += int(a.max_new_tokens > 0 and n >= a.max_new_tokens)
            if truncated:
                continue
            if raw.tell() > max_bytes - 300_000:  # the compressor buffers a little
                truncated = True
                continue
            r["kind"] = k
            gz.write((json.dumps(r) + "\n").encode())
            n_out += 1
        gz.close()
    info = {"cache_records": n_in, "exported": n_out, "truncated": truncated,
            "mb": round(os.path.getsize(a.out) / 1e6, 2), "per_kind": stats}
    for st in stats.values():
        st["mean_answer_tokens"] = round(st["answer_tokens"] / max(1, st["samples"]), 1)
    print("[export_regen] " + json.dumps(info), flush=True)
    if a.stats_out:
        with open(a.stats_out, "w") as f:
            json.dump(info, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
