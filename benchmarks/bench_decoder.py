"""Decoder round vs autoregressive step, Qwen3-8B-shaped target + 5-layer JetSpec head.

Random weights, bf16, on the GPU (built on the meta device, then ``to_empty`` + init: seconds).
Prefix ~1024 tokens. For budgets 32, 64, 128, 256 it times one speculative round (draft,
build_tree, verify, accept, commit) and the AR step of the same target over the same static cache
and ops, prints t_round / t_AR, the stage breakdown (eager, synchronised per stage), and the
speedup / tokens/s PROJECTED at the published acceptance lengths (tau 9.95 at budget 128 and
10.76 at 256, Qwen3-8B on MATH-500). Random weights accept ~1 token per round, so measured
acceptance is meaningless here; only the times are.

Times are "eager" (Python + HF modules launching kernels) and, when capture works, "graph" (the
same call captured in a CUDA graph and replayed). Anything that fails prints n/a with the reason.

    python benchmarks/bench_decoder.py            # GPU: Qwen3-8B shapes
    python benchmarks/bench_decoder.py --tiny     # CPU/GPU smoke run with a tiny model
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import print_table, time_us  # noqa: E402

PUBLISHED_TAU = {128: 9.95, 256: 10.76}
BUDGETS = (32, 64, 128, 256)


def qwen3_8b_config(tiny: bool):
    from transformers import Qwen3Config

    if tiny:
        return Qwen3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=128, vocab_size=4096, tie_word_embeddings=False,
                           max_position_embeddings=4096, rope_theta=1e6)
    return Qwen3Config(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False,
                       max_position_embeddings=40960, rope_theta=1e6, rms_norm_eps=1e-6)


def _init_(module, std=0.02):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, std)


def build(tiny: bool, device, dtype):
    from transformers import Qwen3ForCausalLM
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    from jetspec_ext.draft_head import JetSpecDraftHead

    cfg = qwen3_8b_config(tiny)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(cfg)
    model = model.to_empty(device=device).to(dtype).eval()
    _init_(model)
    model.model.rotary_emb = Qwen3RotaryEmbedding(cfg).to(device)
    head = JetSpecDraftHead.for_target(cfg, num_layers=5, block_size=16, device="meta")
    head = head.to_empty(device=device).to(dtype).eval()
    head.init_weights()
    head.reset_rotary()
    return cfg, model, head


def op_impls(device):
    from jetspec_ext.op_select import has_kernel

    return {n: ("kernel" if has_kernel(n, device) else "reference")
            for n in ("build_tree", "tree_attention", "tree_accept", "commit_kv")}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="tiny model (smoke test; works on the CPU)")
    ap.add_argument("--prefix", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the target's decoder stack (slow to compile: not in the default run)")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        print("bench_decoder: n/a (no CUDA GPU; run with --tiny for a CPU smoke run)")
        return 0
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    try:
        import jetspec_ext  # noqa: F401
        from jetspec_ext.decoder import (DecodeState, HeadDrafter, SamplingParams, _Timer, ar_step, prefill,
                                         spec_round)
        from jetspec_ext.target import Target
    except Exception as e:  # pragma: no cover
        print(f"bench_decoder: n/a (cannot import jetspec_ext: {e})")
        return 0
    budgets = [int(b) for b in args.budgets.split(",")]
    torch.manual_seed(0)
    try:
        cfg, model, head = build(args.tiny, device, dtype)
    except Exception as e:
        print(f"bench_decoder: n/a (could not build the models: {type(e).__name__}: {e})")
        return 0
    print(f"target: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, vocab {cfg.vocab_size}; "
          f"head: {len(head.layers)} layers, taps {head.target_layer_ids}; {dtype}; prefix {args.prefix}")
    print("op implementations:", op_impls(device))
    target = Target(model, head.target_layer_ids, compile=args.compile)
    drafter = HeadDrafter(head, target, depth=15)
    P, D = args.prefix, drafter.depth
    S = P + max(budgets) + D + 64
    sp = SamplingParams()
    st = DecodeState(kv=target.new_cache(1, S), prefix_lens=torch.zeros(1, dtype=torch.int32, device=device),
                     anchor=torch.zeros(1, dtype=torch.int64, device=device),
                     rng=torch.zeros(2, dtype=torch.int64, device=device), ctx=drafter.new_context(1, S), cap=P)
    prompt = torch.randint(0, cfg.vocab_size, (1, P), device=device)
    with torch.inference_mode():
        prefill(target, drafter, st, prompt, sp)
    anchor0 = st.anchor.clone()

    def reset():  # every timed call starts from the same state (prefix P)
        st.prefix_lens.fill_(P)
        st.anchor.copy_(anchor0)

    rows = []

    def timed(fn, graph):
        with torch.inference_mode():
            return time_us(fn, warmup=3, iters=args.iters, setup=reset, graph=graph, graph_reps=1) / 1e3

    def measure(fn, graph):
        try:
            return timed(fn, graph), None
        except Exception as e:
            return float("nan"), f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"

    def round_fn(B):
        return lambda: spec_round(target, drafter, st, 7, B, "accum", sp, lambda n, f: f())

    ar = {"what": "AR step", "budget": 1}
    ar["eager_ms"], err = measure(lambda: ar_step(target, st, sp), False)
    if err:
        ar["error"] = err
    rows.append(ar)
    # 1) eager rounds and their stage breakdown (synchronised around each stage)
    for B in budgets:
        row = {"what": "round", "budget": B}
        row["eager_ms"], err = measure(round_fn(B), False)
        if err:
            row["error"] = err
        else:
            timer = _Timer(device, True)
            with torch.inference_mode():
                for _ in range(3):
                    reset()
                    spec_round(target, drafter, st, 7, B, "accum", sp, timer)
            row.update({f"{k}_ms": v / 3 * 1e3 for k, v in timer.times.items()})
        rows.append(row)
    # 2) CUDA-graphed AR step and rounds (last: a failed capture must not spoil the eager numbers)
    if cuda:
        for row in rows:
            fn = (lambda: ar_step(target, st, sp)) if row["what"] == "AR step" else round_fn(row["budget"])
            row["graph_ms"], err = measure(fn, True)
            if err:
                row["graph_err"] = err
    # 3) ratios and the projection at the published acceptance lengths
    nan = float("nan")
    for row in rows[1:]:
        for mode in ("eager", "graph"):
            row[f"{mode}_ratio"] = row.get(f"{mode}_ms", nan) / ar.get(f"{mode}_ms", nan)
        B = row["budget"]
        if B in PUBLISHED_TAU:
            mode = "graph" if row["graph_ratio"] == row["graph_ratio"] else "eager"
            tau = PUBLISHED_TAU[B]
            row["proj_mode"] = mode
            row["proj_tau"] = tau
            row["proj_speedup"] = tau / row[f"{mode}_ratio"]
            row["proj_tok_s"] = tau / (row[f"{mode}_ms"] * 1e-3)
    print_table(rows)
    print("ratio = t_round / t_AR (goal on the H200: <= 1.5 at budget 128, <= 2.1 at budget 256).")
    print("proj_* = PROJECTION at the published acceptance lengths (tau 9.95 @128, 10.76 @256, MATH-500), "
          "speedup = tau / ratio; not a measured acceptance.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
