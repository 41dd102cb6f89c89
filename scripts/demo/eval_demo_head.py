#!/usr/bin/env python
"""Evaluate demo heads through the real decoder (greedy): mean accepted length (tau) at several
tree budgets for a causal head and a bidirectional head, the causal head as a chain (width 1,
budget = depth + 1), optionally the DDTree tree policy too (``--policies accum,ddtree``), and
wall-clock tokens/s of the speculative decoder versus the decoder's
autoregressive baseline (``generate_ar``: same static cache, same ops).

Results go to ``--out`` (JSON) after EVERY configuration (partial results survive a crash or the
time cap), plus a Markdown table (``--table``, default: the JSON path with ``.md``).

    python scripts/demo/eval_demo_head.py --causal build/demo_head/causal/head \\
        --bidir build/demo_head/bidir/head --prompts build/demo_head/eval_prompts.jsonl \\
        --num 50 --device cuda --out results.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings

import torch

# The checkout's jetspec_ext when run as `python3 scripts/demo/eval_demo_head.py` without
# PYTHONPATH, as the benchmarks do.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def log(msg):
    print(f"[eval_demo_head] {msg}", flush=True)


def write(res, out, table):
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1, default=str)
    os.replace(tmp, out)
    with open(table, "w") as f:
        f.write(render_table(res))


def recording_capture_failures(fn):
    """Run ``fn()``; returns ``(its result, the first ``decoder.GraphCaptureFailed`` warning's text
    or None)``. A failed capture makes the decoder run that configuration eagerly, so its tokens/s
    is not comparable with the graphed rows: the table marks it. Other warnings are passed on."""
    from jetspec_ext.decoder import GraphCaptureFailed

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    failed = None
    for w in caught:
        if issubclass(w.category, GraphCaptureFailed):
            failed = failed or str(w.message)[:300]
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if failed:
        log(f"WARNING: {failed}")
    return out, failed


def _tps(e) -> str:
    t = _f(e.get("tokens_per_s"), 1)
    return t + " (eager: graph capture failed)" if e.get("graph_capture_failed") else t


def _f(x, nd=2):
    return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def render_table(res) -> str:
    rows = ["| config | width | budget | depth | tau | tokens/s | speedup vs AR | identical to AR |",
            "|---|---|---|---|---|---|---|---|"]
    ar = res.get("ar") or {}
    if ar.get("skipped"):
        rows.append(f"| autoregressive | - | - | - | skipped ({ar['skipped']}) | | | |")
    elif ar:
        rows.append(f"| autoregressive | - | - | - | 1.00 | {_tps(ar)} | 1.00 | - |")
    for name, e in res.get("configs", {}).items():
        if "error" in e or "skipped" in e:
            rows.append(f"| {name} | - | - | - | {e.get('error') or e.get('skipped')} | | | |")
            continue
        t = e.get("draft_temperature", 1.0)
        label = name if t == 1.0 else f"{name}, draft T {t:g}"
        rows.append(f"| {label} | {e['width']} | {e['budget']} | {e['depth']} | {_f(e['tau'])} | "
                    f"{_tps(e)} | {_f(e.get('speedup'))} | {e.get('identical_to_ar', '-')} |")
    head = (f"Demo heads, greedy, {res.get('prompts')} held-out MBPP prompts, max {res.get('max_new_tokens')} "
            f"new tokens, device {res.get('device')}, dtype {res.get('dtype')}, CUDA graphs "
            f"{res.get('cuda_graph')}, torch.compile {res.get('compile', False)}.\n\n")
    return head + "\n".join(rows) + "\n" + render_ratios(res)


def tree_entry(res, kind: str, budget: int) -> dict:
    """The ``kind`` head's (``causal`` / ``bidirectional``) accum-tree row at ``budget``, whatever
    the width; {} when there is none."""
    for key, e in res.get("configs", {}).items():
        if key.startswith(f"{kind} tree w") and key.endswith(f" b{budget}"):
            return e
    return {}


def render_ratios(res) -> str:
    """Per budget with both heads' tree rows: the causal / bidirectional tau ratio with its 95 %
    paired bootstrap interval over the prompts (``jetspec_ext.train.tau_ratio_interval``); empty
    when the rows lack per-prompt records."""
    from jetspec_ext.train import tau_ratio_interval

    lines = []
    for b in res.get("budgets") or []:
        c, d = tree_entry(res, "causal", b), tree_entry(res, "bidirectional", b)
        try:
            iv = tau_ratio_interval(c, d)
        except ValueError:
            continue
        lines.append(f"- budget {b}: causal / bidirectional tau {iv['ratio']:.3f}, 95 % paired bootstrap "
                     f"interval over the {iv['prompts']} prompts {iv['lo']:.3f} - {iv['hi']:.3f}")
    return ("\nTau ratio with its uncertainty over prompts:\n\n" + "\n".join(lines) + "\n") if lines else ""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default=None, help="target directory (default: the bundled demo target)")
    ap.add_argument("--causal", default=None, help="causal head directory")
    ap.add_argument("--bidir", default=None, help="bidirectional head directory")
    ap.add_argument("--prompts", required=True, help="JSONL eval prompts")
    ap.add_argument("--num", type=int, default=50)
    ap.add_argument("--budgets", default="16,64,128")
    ap.add_argument("--width", type=int, default=7)
    ap.add_argument("--depth", type=int, default=None,
                    help="tree depth D (default: each head's block size - 1; at most that, and at most "
                         "budget - 1); the chain row's budget is D + 1. E.g. to compare a head trained with "
                         "a larger block with one of block 16 at depth 15")
    ap.add_argument("--policies", default="accum",
                    help="tree policies, comma-separated: accum (JetSpec: expand the best node, W children at "
                         "a time) and/or ddtree (= topn: the N best nodes one at a time)")
    ap.add_argument("--draft-temperature", type=float, default=1.0,
                    help="both heads' trees are built from softmax(draft logits / T) (decoder.generate's "
                         "draft_temperature; the tree's shape only)")
    ap.add_argument("--bidir-draft-temperature", type=float, default=None,
                    help="the bidirectional head's draft temperature instead (default: --draft-temperature), "
                         "e.g. to compare each head at its best")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cuda-graph", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the target's and the heads' round computations (AR baseline too; "
                         "each shape compiles on its warm-up call)")
    ap.add_argument("--end-by", type=float, default=None, help="unix time: skip what would start after it")
    ap.add_argument("--no-ar", action="store_true",
                    help="tau only: no autoregressive baseline (so no speedups and no identical-to-AR column), "
                         "e.g. for many prompts on the CPU")
    ap.add_argument("--no-chain", action="store_true", help="leave out the causal head's chain row")
    ap.add_argument("--out", required=True)
    ap.add_argument("--table", default=None)
    ap.add_argument("--extra", default=None, help="JSON file merged into the results (e.g. training summaries)")
    a = ap.parse_args(argv)
    if a.depth is not None and a.depth < 1:
        ap.error(f"--depth must be at least 1, got {a.depth}")
    bidir_t = a.draft_temperature if a.bidir_draft_temperature is None else a.bidir_draft_temperature
    from jetspec_ext.decoder import check_draft_temperature

    try:  # before the model loads
        for t in (a.draft_temperature, bidir_t):
            check_draft_temperature(t)
    except ValueError as e:
        ap.error(str(e))

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jetspec_ext.draft_head import JetSpecDraftHead
    from jetspec_ext.train import encode_prompt, evaluate, read_prompts, stop_ids_for

    heads = {}
    if a.depth is not None:  # before the target loads: a head drafts at most block - 1 depths
        for path in filter(None, dict.fromkeys((a.causal, a.bidir))):
            heads[path] = JetSpecDraftHead.from_pretrained(path)
            if a.depth > heads[path].block_size - 1:
                ap.error(f"--depth {a.depth} is deeper than {path} can draft (block {heads[path].block_size}: "
                         f"depth at most {heads[path].block_size - 1})")

    table = a.table or os.path.splitext(a.out)[0] + ".md"
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    if a.target is None:
        from jetspec_ext.demo import demo_target_dir
        a.target = demo_target_dir()
    dev = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if a.device == "auto" else a.device))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    graph = dev.type == "cuda" and a.cuda_graph != "off"
    if dev.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    tok = AutoTokenizer.from_pretrained(a.target)
    model = AutoModelForCausalLM.from_pretrained(a.target, dtype=dtype).to(dev).eval()
    stops = stop_ids_for(tok, model)
    texts = read_prompts(a.prompts, a.num)
    ids = [encode_prompt(tok, t, "off") for t in texts]
    budgets = [int(x) for x in a.budgets.split(",") if x]
    res = {"target": a.target, "prompts": len(ids), "max_new_tokens": a.max_new_tokens, "device": str(dev),
           "dtype": str(dtype).replace("torch.", ""), "cuda_graph": graph, "compile": a.compile, "budgets": budgets,
           "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
           "configs": {}}
    if a.extra and os.path.isfile(a.extra):
        with open(a.extra) as f:
            res["training"] = json.load(f)
    write(res, a.out, table)
    kw = dict(max_new_tokens=a.max_new_tokens, stop_token_ids=stops, cuda_graph=graph, compile=a.compile)

    # On CUDA every timed evaluate first decodes one prompt per cache bucket untimed, with the same
    # target and drafter, so that the context, kernels, graph captures (and compilations) are not
    # timed. On the CPU (no captures) one short warm-up decode before the first timed pass.
    warm = dev.type == "cuda"
    if not warm:
        try:
            evaluate(model, None, ids[:1], budgets=(), measure_ar=True, **{**kw, "max_new_tokens": 8})
        except Exception:  # noqa: BLE001
            traceback.print_exc()
    # the AR baseline, once
    ar_tokens = None
    if a.no_ar:
        res["ar"] = {"skipped": "--no-ar"}
    else:
        try:
            r, failed = recording_capture_failures(
                lambda: evaluate(model, None, ids, budgets=(), measure_ar=True, warmup=warm, **kw))
            res["ar"] = r["ar"]
            if failed:
                res["ar"]["graph_capture_failed"] = failed
            ar_tokens = r["ar_tokens"]
            log(f"AR baseline: {r['ar']['tokens_per_s']:.1f} tokens/s ({r['ar']['tokens']} tokens)")
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            res["ar"] = {"error": repr(e)}
    write(res, a.out, table)
    ar_tps = (res.get("ar") or {}).get("tokens_per_s")

    policies = []
    for p in a.policies.split(","):
        p = {"ddtree": "topn"}.get(p.strip(), p.strip())
        if p not in ("accum", "topn"):
            ap.error(f"--policies: unknown policy {p!r} (accum, ddtree)")
        if p not in policies:
            policies.append(p)
    res["policies"] = policies
    # the first policy for both heads, then the causal chain, then the other policies (what a time
    # cap cuts is the least important)
    plan = []
    for i, pol in enumerate(policies):
        label = "tree" if pol == "accum" else "ddtree"
        for name, path, t in (("causal", a.causal, a.draft_temperature), ("bidirectional", a.bidir, bidir_t)):
            if path:
                plan += [(f"{name} {label}", path, a.width, b, pol, t) for b in budgets]
        if i == 0 and a.causal and not a.no_chain:
            plan.append(("causal chain", a.causal, 1, None, "accum", a.draft_temperature))
    for name, path, width, budget, policy, draft_t in plan:
        key = f"{name} w{width} b{budget if budget else 'D+1'}"
        if a.end_by is not None and time.time() > a.end_by:
            res["configs"][key] = {"skipped": "time cap"}
            write(res, a.out, table)
            continue
        try:
            if path not in heads:
                heads[path] = JetSpecDraftHead.from_pretrained(path)
            head = heads[path]
            D = head.block_size - 1 if a.depth is None else a.depth
            b = budget if budget else D + 1
            r, failed = recording_capture_failures(
                lambda: evaluate(model, head, ids, budgets=(b,), width=width, depth=D, policy=policy,
                                 ar_reference=ar_tokens, warmup=warm, draft_temperature=draft_t, **kw))
            e = dict(r["budgets"][str(b)])
            if failed:
                e["graph_capture_failed"] = failed
            e.update(width=width, budget=b, head=path, causal=head.causal, policy=policy, draft_temperature=draft_t)
            if ar_tps and e.get("tokens_per_s"):
                e["speedup"] = e["tokens_per_s"] / ar_tps
            res["configs"][key] = e
            log(f"{key}: tau {e['tau']:.3f}, {e['tokens_per_s']:.1f} tokens/s"
                + (f", speedup {e['speedup']:.2f}x" if "speedup" in e else ""))
        except Exception as ex:  # noqa: BLE001 - record and go on
            traceback.print_exc()
            res["configs"][key] = {"error": repr(ex)[:300]}
        write(res, a.out, table)
    log("table:\n" + render_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
