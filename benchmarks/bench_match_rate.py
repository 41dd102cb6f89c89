"""Token match rate of the speculative decoder against the project's AR baseline (greedy, bf16).

Model pair: the bundled demo pair (jetspec_ext/demo_models: small trained Qwen3 code model + its
JetSpec head), or ``--target`` / ``--draft``. Prompts: the MBPP test problems from
$JETSPEC_DATA/mbpp_test.jsonl, formatted as the demo evaluation does (``def`` line + docstring,
raw text, no chat template; scripts/demo/extract_prompts.py). For each prompt it decodes greedily
with ``jetspec_ext.decoder.generate`` (budget 64, width 7, depth min(block_size - 1, budget - 1))
and with ``generate_ar`` (same static cache, dtype and ops; one token per step), CUDA-graphed
rounds on the GPU, and compares the two token sequences.

Reported: prompts fully identical; match rate = sum over prompts of the identical-prefix length /
sum of the compared lengths (the longer of the two outputs). For every divergence (first differing
position of a prompt): the position, the AR token and the speculative token, and the target's
logits at that position, computed by plain Hugging Face forwards over prompt + common prefix:
once in the run's dtype (bf16) and once in fp32 (the same weights upcast). Printed: the bf16 top-2
gap, the bf16 gap between the two diverging tokens, the fp32 top-2 gap and which path the fp32
argmax agrees with.

Near-tie rule: a divergence is a near-tie when the bf16 logits of the two diverging tokens differ
by at most ``k * 2^-7 * |logit|`` (|logit| = the larger magnitude of the two; 2^-7 * |x| is one to
two bf16 ulps at x, so the default k = 4 means "within about 4-8 bf16 ulps"; ``--tie-ulps k``).
This implies the bf16 top-2 gap is within the threshold too whenever one of the two tokens is the
argmax; a divergence to a token that is not near the top is flagged NOT A NEAR-TIE.

    python benchmarks/bench_match_rate.py                       # GPU, bf16, 64 prompts x 128 tokens
    python benchmarks/bench_match_rate.py --device cpu --num-prompts 3 --max-new-tokens 16   # smoke
    python benchmarks/bench_match_rate.py --fp8-draft            # the drafter with fp8 weight copies

Exit status 0 whatever the outcome (it reports); JSON lines via $JETSPEC_BENCH_JSON (harness).
"""
import argparse
import copy
import json
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts", "demo"))

from benchmarks.harness import data_dir, print_table  # noqa: E402


def mbpp_prompts(path, n):
    from extract_prompts import load_mbpp, mbpp_prompt

    out = [p for p in (mbpp_prompt(r) for r in load_mbpp(path)) if p]
    return out[:n]


def common_prefix(a, b):
    """(identical-prefix length, compared length = the longer output's length)."""
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k, max(len(a), len(b))


def tie_threshold(la: float, lb: float, ulps: float) -> float:
    """``ulps * 2^-7 * max(|la|, |lb|)``: the near-tie threshold for two bf16 logits."""
    return ulps * 2.0 ** -7 * max(abs(la), abs(lb))


@torch.inference_mode()
def divergence_info(ref_lo, ref_hi, ids, ar_tok, spec_tok, ulps):
    """Logits at the next position after ``ids`` (prompt + common prefix) from the run-dtype model
    ``ref_lo`` and its fp32 upcast ``ref_hi``; tokens of -1 (an output that ended) count as absent."""
    x = torch.tensor([ids], device=ref_lo.lm_head.weight.device)
    lo = ref_lo(input_ids=x, use_cache=False).logits[0, -1].float()
    hi = ref_hi(input_ids=x, use_cache=False).logits[0, -1].float()
    (l1, l2), (t1, t2) = lo.topk(2)
    (h1, h2), (u1, _) = hi.topk(2)
    la = float(lo[ar_tok]) if ar_tok >= 0 else float("nan")
    lb = float(lo[spec_tok]) if spec_tok >= 0 else float("nan")
    thr = tie_threshold(la, lb, ulps) if ar_tok >= 0 and spec_tok >= 0 else float("nan")
    pair_gap = abs(la - lb)
    u1 = int(u1)
    return {"top2_gap_lo": float(l1 - l2), "pair_gap_lo": pair_gap, "threshold": thr,
            "near_tie": bool(pair_gap <= thr), "top2_lo": f"{int(t1)},{int(t2)}",
            "rank_ar": int((lo > la).sum()) if ar_tok >= 0 else -1,
            "rank_spec": int((lo > lb).sum()) if spec_tok >= 0 else -1,
            "top2_gap_fp32": float(h1 - h2),
            "fp32_argmax": u1, "fp32_agrees": "both" if u1 == ar_tok == spec_tok else
            "ar" if u1 == ar_tok else "spec" if u1 == spec_tok else "neither"}


def show(rows):
    """JSON lines (numbers) to $JETSPEC_BENCH_JSON as the harness does, then the harness table with
    floats to 4 significant digits (the harness prints 2 decimals: too coarse for logit gaps)."""
    path = os.environ.get("JETSPEC_BENCH_JSON")
    if path:
        with open(path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    print_table([{k: f"{v:.4g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows],
                json_path=os.devnull)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default=None, help="target model directory (default: the bundled demo target)")
    ap.add_argument("--draft", default=None, help="JetSpec head directory (default: the bundled demo head)")
    ap.add_argument("--data", default=None, help="data directory holding mbpp_test.jsonl (default: $JETSPEC_DATA)")
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--width", type=int, default=7)
    ap.add_argument("--depth", type=int, default=None, help="default: min(block_size - 1, budget - 1)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false")
    ap.add_argument("--compile", action="store_true", help="Target(compile=True) (default: eager regions)")
    ap.add_argument("--tie-ulps", type=float, default=4.0, help="near-tie threshold k (see the docstring)")
    ap.add_argument("--fp8-draft", action="store_true", help="HeadDrafter(fp8=True): the draft reads e4m3 weight copies")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("bench_match_rate: n/a (no CUDA GPU; pass --device cpu for a smoke run)")
        return 0
    dtype = getattr(torch, a.dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jetspec_ext.decoder import HeadDrafter, generate, generate_ar
    from jetspec_ext.demo import demo_head_dir, demo_target_dir
    from jetspec_ext.draft_head import JetSpecDraftHead
    from jetspec_ext.op_select import has_kernel
    from jetspec_ext.target import Target
    from jetspec_ext.train import encode_prompt, stop_ids_for

    tdir, hdir = a.target or demo_target_dir(), a.draft or demo_head_dir()
    tok = AutoTokenizer.from_pretrained(tdir)
    model = AutoModelForCausalLM.from_pretrained(tdir, dtype=dtype).to(dev).eval()
    # plain HF copies for the logit analysis, made before Target re-wires attention / fuses weights
    ref_lo = copy.deepcopy(model)
    ref_hi = copy.deepcopy(model).float()
    head = JetSpecDraftHead.from_pretrained(hdir).to(device=dev, dtype=dtype).eval()
    target = Target(model, head.target_layer_ids, compile=a.compile)
    depth = a.depth or min(head.block_size - 1, a.budget - 1)
    drafter = HeadDrafter(head, target, depth=depth, fp8=a.fp8_draft)
    stops = stop_ids_for(tok, model)
    data = data_dir(a.data)
    ids = [encode_prompt(tok, t, "off") for t in mbpp_prompts(os.path.join(data, "mbpp_test.jsonl"), a.num_prompts)]
    graph = a.cuda_graph and dev.type == "cuda"
    kw = dict(max_new_tokens=a.max_new_tokens, stop_token_ids=stops, cuda_graph=graph)
    impls = {n: "kernel" if has_kernel(n, dev, dtype if n == "tree_attention" else None) else "reference"
             for n in ("build_tree", "tree_attention", "tree_accept", "commit_kv")}
    print(f"bench_match_rate: target {tdir}, head {hdir}; {len(ids)} MBPP prompts from {data}; {dev} {a.dtype}; "
          f"budget {a.budget} width {a.width} depth {depth}; max_new_tokens {a.max_new_tokens}; cuda_graph "
          f"{graph}; compile {a.compile}; fused {target.fused}; fp8 draft {drafter.fp8}; ops {impls}; stops {stops}; "
          f"torch {torch.__version__}")
    sys.stdout.flush()

    n_same = n_match = n_cmp = n_tok_ar = n_tok_spec = rounds = acc = 0
    divs = []
    for i, p in enumerate(ids):
        ar = generate_ar(target, p, **kw).tokens[0]
        r = generate(target, drafter, p, budget=a.budget, width=a.width, **kw)
        sp = r.tokens[0]
        rounds += len(r.rounds)
        acc += sum(x.accept_len[0] for x in r.rounds)
        k, n = common_prefix(ar, sp)
        n_match, n_cmp, n_tok_ar, n_tok_spec = n_match + k, n_cmp + n, n_tok_ar + len(ar), n_tok_spec + len(sp)
        msg = f"[{i:3d}] prompt {len(p):4d} tok, AR {len(ar):4d}, spec {len(sp):4d} (tau {r.mean_accept_len:.2f}): "
        if k == n:
            n_same += 1
            print(msg + "identical")
            continue
        at, st = (ar[k] if k < len(ar) else -1), (sp[k] if k < len(sp) else -1)
        d = {"bench": "match_rate_divergence", "prompt": i, "pos": k, "abs_pos": len(p) + k, "ar_tok": at,
             "spec_tok": st, **divergence_info(ref_lo, ref_hi, p + ar[:k], at, st, a.tie_ulps)}
        divs.append(d)
        print(msg + f"DIVERGE at {k}: AR {at} {tok.decode([at]) if at >= 0 else '<end>'!r} vs spec {st} "
              f"{tok.decode([st]) if st >= 0 else '<end>'!r}; bf16 top-2 gap {d['top2_gap_lo']:.4g}, pair gap "
              f"{d['pair_gap_lo']:.4g} (threshold {d['threshold']:.4g}), fp32 top-2 gap {d['top2_gap_fp32']:.4g}, "
              f"fp32 argmax agrees with {d['fp32_agrees']}" + ("" if d["near_tie"] else "   <-- NOT A NEAR-TIE"))
        sys.stdout.flush()

    bad = [d for d in divs if not d["near_tie"]]
    if divs:
        print("\n-- divergences (logits after prompt + common prefix; lo = run dtype, fp32 = same weights upcast)")
        show(divs)
    if bad:
        print("\n" + "!" * 100)
        print(f"!!! {len(bad)} DIVERGENCE(S) ARE NOT NEAR-TIES (pair gap > {a.tie_ulps:g} * 2^-7 * |logit|): "
              + ", ".join(f"prompt {d['prompt']} pos {d['pos']} (gap {d['pair_gap_lo']:.4g} > {d['threshold']:.4g}, "
                          f"ranks AR {d['rank_ar']} spec {d['rank_spec']})" for d in bad))
        print("!" * 100)
    summary = {"bench": "match_rate", "device": str(dev), "dtype": a.dtype, "budget": a.budget, "prompts": len(ids),
               "identical": n_same, "tokens_ar": n_tok_ar, "tokens_spec": n_tok_spec, "compared": n_cmp,
               "matched": n_match, "match_rate": n_match / n_cmp if n_cmp else float("nan"),
               "divergences": len(divs), "near_ties": len(divs) - len(bad), "not_near_ties": len(bad),
               "tau": acc / rounds if rounds else float("nan"), "tie_ulps": a.tie_ulps,
               "seconds": time.perf_counter() - t0}
    print(f"\n-- summary (match rate = identical-prefix tokens / compared tokens; near-tie: bf16 logits of the two "
          f"diverging tokens within {a.tie_ulps:g} * 2^-7 * |logit|)")
    show([summary])
    return 0


if __name__ == "__main__":
    sys.exit(main())
