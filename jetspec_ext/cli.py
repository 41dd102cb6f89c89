"""``jetspec`` command line: ``jetspec generate`` (speculative generation with a JetSpec head) and
``jetspec train`` (train a draft head for a target: :mod:`jetspec_ext.train`).

Examples::

    jetspec generate                     # the bundled demo pair (Python code model + its head)
    jetspec generate --target Qwen/Qwen3-8B-dir --draft jetspec-qwen3-8b-dir \\
        --prompt "What is 17 * 23?" --max-new-tokens 256 --budget 128 --compare-ar
    jetspec train --target DIR --prompts prompts.jsonl --out run/ --steps 2000
"""
import argparse
import json
import os
import sys
from typing import List, Optional


class CLIError(Exception):
    """A user-facing error: printed as ``jetspec: error: ...`` with exit status 2."""


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def _parser() -> argparse.ArgumentParser:
    from .ops.build_tree import MAX_WIDTH, POLICIES

    p = argparse.ArgumentParser(prog="jetspec", description="JetSpec causal parallel tree speculative decoding")
    sub = p.add_subparsers(dest="command")
    g = sub.add_parser("generate", help="generate text with a target model and a JetSpec draft head")
    g.add_argument("--target", default=None,
                   help="Hugging Face Qwen3 model directory (config.json + weights); default: the bundled "
                        "demo target (a small Python code model) with its demo head")
    g.add_argument("--draft", help="JetSpec draft head directory (config.json with dflash_config + safetensors); "
                   "without it, plain autoregressive decoding (with no --target: the demo head)")
    src = g.add_mutually_exclusive_group(required=False)
    src.add_argument("--prompt", help="one user prompt")
    src.add_argument("--prompts", help="jsonl file of prompts (keys: prompt / question / turns[0] / text)")
    g.add_argument("--num-prompts", type=_positive_int, default=None, help="use only the first N prompts of --prompts")
    g.add_argument("--tokenizer", default=None, help="tokenizer directory (default: --target)")
    g.add_argument("--max-new-tokens", type=_positive_int, default=256,
                   help="new tokens per prompt at most (default 256; fewer if the context ends first)")
    g.add_argument("--budget", type=int, default=None,
                   help="tree size in nodes, root included (default: 128 on CUDA, 64 on the CPU, where "
                        "verifying a tree costs compute: the bundled demo pair measured 2.57x at 128 on an "
                        "H200 (500 prompts, draft temperature 0.7) and 1.42-1.50x at 64 on a 2-core CPU, where the chain --width 1 --budget 16 "
                        "measured 1.69-1.92x)")
    g.add_argument("--width", type=int, default=7,
                   help=f"top-W candidate tokens per depth, 1..{MAX_WIDTH} (default 7)")
    g.add_argument("--depth", type=int, default=None, help="draft depth D (default: block_size - 1)")
    g.add_argument("--policy", choices=POLICIES, default="accum",
                   help="tree expansion: accum (best-first by cumulative draft log-prob, W children per "
                        "expansion; default) or topn (one node per expansion, slower to build)")
    g.add_argument("--draft-temperature", type=float, default=None,
                   help="the tree is built from softmax(draft logits / T): below 1 it follows the head's top "
                        "tokens deeper, above 1 it spreads wider; changes speed only (greedy output is unchanged). "
                        "Default: 0.7 with the bundled demo head (its best measured on an H200: tau 6.31 against "
                        "6.11 at 1.0 over 500 held-out prompts at budget 128), else 1.0")
    g.add_argument("--temperature", type=float, default=0.0, help="sampling temperature, >= 0 (default 0 = greedy)")
    g.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens only (default 0 = off)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, in (0, 1] (default 1 = off)")
    g.add_argument("--seed", type=int, default=0)
    th = g.add_mutually_exclusive_group()
    th.add_argument("--thinking", dest="thinking", action="store_true", default=True,
                    help="Qwen3 chat template with thinking (default)")
    th.add_argument("--no-thinking", dest="thinking", action="store_false")
    g.add_argument("--compare-ar", action="store_true", help="also run the autoregressive baseline and report the speedup")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    g.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                   help="auto: bfloat16 on CUDA, float32 on the CPU")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the target's forward (one graph per shape shared by all decoder "
                        "layers) and the draft head's round computations; compiles on the first round")
    g.add_argument("--no-fuse", dest="fuse", action="store_false",
                   help="run the target's decode / verify forwards through HF's layer.forward and the draft "
                        "head through its layers' own forward instead of the fused q|k|v and gate|up "
                        "projections (default: fused, Qwen3 dense targets and stock heads)")
    g.add_argument("--fp8-draft", action="store_true",
                   help="the draft head's GEMMs and its LM head read e4m3 copies of their weights (made at "
                        "start; ~1 byte per weight of extra memory): at batch 1 the draft is a weight stream, "
                        "so a round reads half its bytes. The output is still the target's (every token is "
                        "verified); acceptance may change slightly. CUDA needs compute capability 8.9+ "
                        "(on the CPU it runs the same maths in fp32, slower: for testing)")
    g.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="capture the decoding round in a CUDA graph after the first round and replay it "
                        "(default: on for CUDA; --no-cuda-graph runs eager rounds, which --stats needs "
                        "for per-stage times)")
    g.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                   help="decode the first prompt once, untimed, before the timed runs (with --compare-ar, "
                        "the autoregressive baseline too), so that first-call kernel loading and CUDA-graph "
                        "capture stay out of tokens/s and the speedup (default: on for CUDA, where they "
                        "take longer than a short answer's whole decode; off on the CPU)")
    g.add_argument("--no-stream", dest="stream", action="store_false", help="print each answer at the end")
    g.add_argument("--stats", action="store_true", help="print per-depth acceptance and stage times")
    t = sub.add_parser("train", help="train a JetSpec draft head for a target (regenerate, train, evaluate)")
    from .train import add_arguments
    add_arguments(t)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    if args.command == "train":
        from .train import run
        try:
            run(args)
            return 0
        except (FileNotFoundError, ValueError) as e:
            print(f"jetspec: error: {e}", file=sys.stderr)
            return 2
    try:
        return _generate(args)
    except CLIError as e:
        print(f"jetspec: error: {e}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------------
DEMO_PROMPT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'


def _use_demo(args) -> None:
    """No --target: the bundled demo pair (target + head; the head only when no --draft given)."""
    if args.target is not None:
        return
    from .demo import DEMO_DRAFT_TEMPERATURE, DemoModelMissingError, demo_head_dir, demo_target_dir, has_demo

    try:
        args.target = demo_target_dir()
    except DemoModelMissingError as e:
        raise CLIError(str(e))
    if args.draft is None and has_demo("head"):
        args.draft = demo_head_dir()
        if args.draft_temperature is None:
            args.draft_temperature = DEMO_DRAFT_TEMPERATURE
    elif args.draft is None:
        print("jetspec: the demo head is not installed; decoding autoregressively", file=sys.stderr)
    if args.prompt is None and args.prompts is None:
        args.prompt = DEMO_PROMPT


def _read_prompts(args) -> List[str]:
    if args.prompt is None and args.prompts is None:
        raise CLIError("give --prompt or --prompts")
    if args.prompt is not None:
        return [args.prompt]
    if not os.path.isfile(args.prompts):
        raise CLIError(f"prompts file {args.prompts!r} not found")
    out = []
    with open(args.prompts) as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise CLIError(f"{args.prompts}:{i + 1}: not valid JSON ({e})")
            text = r if isinstance(r, str) else (r.get("prompt") or r.get("question") or r.get("text")
                                                  or (r.get("turns") or [None])[0])
            if not text:
                raise CLIError(f"{args.prompts}:{i + 1}: no prompt / question / turns / text field")
            out.append(text)
            if args.num_prompts and len(out) >= args.num_prompts:
                break
    if not out:
        raise CLIError(f"prompts file {args.prompts!r} holds no prompts")
    return out


def _load(args):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .decoder import HeadDrafter
    from .draft_head import JetSpecDraftHead
    from .target import SUPPORTED_MODEL_TYPES, Target

    try:
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if args.device == "auto" else args.device))
    except RuntimeError:
        raise CLIError(f"--device {args.device!r}: expected cpu, cuda, cuda:N or auto")
    if device.type not in ("cpu", "cuda"):
        raise CLIError(f"--device {args.device!r}: jetspec runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda requested but no CUDA GPU is available")
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16, "float32": torch.float32}[args.dtype]
    if not os.path.isfile(os.path.join(args.target, "config.json")):
        raise CLIError(f"target {args.target!r}: no config.json (expected a Hugging Face model directory)")
    try:
        cfg = AutoConfig.from_pretrained(args.target)
    except (OSError, ValueError) as e:
        raise CLIError(f"target {args.target!r}: cannot read its config.json ({_first_line(e)})")
    if cfg.model_type not in SUPPORTED_MODEL_TYPES:
        raise CLIError(f"target model type {cfg.model_type!r} is not supported (supported: "
                       f"{', '.join(SUPPORTED_MODEL_TYPES)})")
    head = None
    if args.draft is not None:
        try:
            head = JetSpecDraftHead.from_pretrained(args.draft)
            head.check_target(cfg)
        except (FileNotFoundError, ValueError) as e:
            raise CLIError(str(e))
    try:  # before the weights: a wrong tokenizer path should not wait for a large model to load
        tok = AutoTokenizer.from_pretrained(args.tokenizer or args.target)
        # (transformers 5 builds an empty tokenizer, one token, for a model directory without
        # tokenizer files: every prompt would encode to nothing)
        if len(tok) <= 1:
            raise OSError("no tokenizer files there")
    except (OSError, ValueError) as e:
        if args.tokenizer is not None:
            raise CLIError(f"--tokenizer {args.tokenizer!r}: cannot load a tokenizer ({_first_line(e)})")
        raise CLIError(f"no tokenizer in the target directory {args.target!r} (pass --tokenizer DIR): "
                       f"{_first_line(e)}")
    try:
        model = AutoModelForCausalLM.from_pretrained(args.target, dtype=dtype).to(device).eval()
    except OSError as e:
        raise CLIError(f"target {args.target!r}: cannot load weights ({e})")
    try:
        target = Target(model, head.target_layer_ids if head is not None else (), compile=args.compile,
                        fuse_projections=args.fuse)
    except ValueError as e:
        raise CLIError(str(e))
    drafter = None
    if head is not None:
        head = head.to(device=device, dtype=dtype).eval()
        try:
            drafter = HeadDrafter(head, target, depth=args.depth, fuse_projections=args.fuse, fp8=args.fp8_draft)
        except ValueError as e:
            raise CLIError(str(e))
    elif args.fp8_draft:
        raise CLIError("--fp8-draft needs a draft head (--draft)")
    return tok, model, target, drafter


def _first_line(e: BaseException) -> str:
    """An exception's message up to its first line break (library errors run to many lines)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _stop_ids(tok, model) -> List[int]:
    ids = set()
    for t in ("<|im_end|>", "<|endoftext|>"):
        i = tok.convert_tokens_to_ids(t)
        if isinstance(i, int) and i >= 0 and i != tok.unk_token_id:
            ids.add(i)
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update([eos] if isinstance(eos, int) else list(eos or []))
    return sorted(ids)


class _Streamer:
    """Prints the decoded text as tokens arrive (decodes the whole answer, prints the new suffix)."""

    def __init__(self, tok, enabled: bool):
        self.tok, self.enabled, self.ids, self.shown = tok, enabled, [], ""

    def __call__(self, row, new_ids):
        self.ids.extend(new_ids)
        if self.enabled:
            text = self.tok.decode(self.ids, skip_special_tokens=True)
            if text.startswith(self.shown):
                sys.stdout.write(text[len(self.shown):])
                sys.stdout.flush()
                self.shown = text


def _encode(tok, text: str, args) -> List[int]:
    """Token ids of a prompt: through the chat template when the tokenizer has one, else the raw
    text (a base model without a chat template, e.g. the demo code model)."""
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                       add_generation_prompt=True, enable_thinking=args.thinking)
    return tok(text, add_special_tokens=False).input_ids


def _check_settings(args) -> None:
    """The decoding settings, checked before anything is loaded (a large target takes a while)."""
    from .decoder import check_draft_temperature, check_generation_settings

    tree = dict(budget=args.budget, width=args.width, policy=args.policy) if args.draft is not None else {}
    try:
        check_generation_settings(args.max_new_tokens, args.temperature, args.top_k, args.top_p, **tree)
        check_draft_temperature(args.draft_temperature)
    except ValueError as e:  # the messages start with the parameter's name: say the option instead
        name, _, rest = str(e).partition(" ")
        raise CLIError(f"--{name.replace('_', '-')} {rest}")


def _generate(args) -> int:
    from .decoder import generate, generate_ar

    _use_demo(args)
    if args.draft_temperature is None:
        args.draft_temperature = 1.0
    _check_settings(args)
    prompts = _read_prompts(args)
    tok, model, target, drafter = _load(args)
    cuda = target.device.type == "cuda"
    if args.budget is None:
        args.budget = 128 if cuda else 64
    if args.cuda_graph is None:
        args.cuda_graph = cuda
    stops = _stop_ids(tok, model)
    gen_kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                  top_p=args.top_p, seed=args.seed, stop_token_ids=stops, cuda_graph=args.cuda_graph)
    spec_kw = dict(budget=args.budget, width=args.width, policy=args.policy,
                   draft_temperature=args.draft_temperature)
    totals = dict(tokens=0, secs=0.0, rounds=0, accepted=0, ar_tokens=0, ar_secs=0.0)
    results = []
    if args.warmup is None:
        args.warmup = cuda
    if args.warmup and prompts:
        ids = _encode(tok, prompts[0], args)
        try:
            generate(target, drafter, ids, **gen_kw, **spec_kw)
            if args.compare_ar and drafter is not None:
                generate_ar(target, ids, **gen_kw)
        except ValueError as e:
            raise CLIError(str(e))
    for i, text in enumerate(prompts):
        if args.stream and not getattr(tok, "chat_template", None):
            sys.stdout.write(text)  # a base model completes the raw text: show it first
        ids = _encode(tok, text, args)
        ctx = target.max_positions
        if ctx and len(ids) < ctx < len(ids) + args.max_new_tokens:
            print(f"jetspec: note: the context of {ctx} tokens leaves room for {ctx - len(ids)} new tokens "
                  f"after this prompt ({len(ids)} tokens), fewer than --max-new-tokens {args.max_new_tokens}",
                  file=sys.stderr)
        if len(prompts) > 1:
            print(f"\n=== prompt {i + 1}/{len(prompts)} ({len(ids)} tokens) ===")
        stream = _Streamer(tok, args.stream)
        try:
            res = generate(target, drafter, ids, on_tokens=stream, **gen_kw, **spec_kw)
        except ValueError as e:
            raise CLIError(str(e))
        if not args.stream:
            print(tok.decode(res.tokens[0], skip_special_tokens=True), end="")
        print()
        totals["tokens"] += len(res.tokens[0])
        totals["secs"] += res.decode_s + res.prefill_s
        totals["rounds"] += len(res.rounds)
        totals["accepted"] += sum(r.accept_len[0] for r in res.rounds)
        results.append(res)
        if args.compare_ar:
            ar = generate_ar(target, ids, **gen_kw)
            totals["ar_tokens"] += len(ar.tokens[0])
            totals["ar_secs"] += ar.decode_s + ar.prefill_s
            same = ar.tokens[0] == res.tokens[0]
            if args.temperature == 0.0:
                print(f"[AR baseline: {'identical output' if same else 'output differs'}]")
    tps = totals["tokens"] / totals["secs"] if totals["secs"] > 0 else float("nan")
    mode = "jetspec" if drafter is not None else "autoregressive"
    print("\n--- summary ---")
    print(f"mode: {mode}  device: {target.device}  dtype: {str(target.dtype).replace('torch.', '')}")
    print(f"prompts: {len(prompts)}  tokens: {totals['tokens']}  time: {totals['secs']:.2f} s  tokens/s: {tps:.2f}"
          + ("  (after an untimed warm-up decode of the first prompt)" if args.warmup else ""))
    if drafter is not None and totals["rounds"]:
        print(f"rounds: {totals['rounds']}  mean accepted length (tau): {totals['accepted'] / totals['rounds']:.2f}"
              f"  (budget {args.budget}, width {args.width}, depth {drafter.depth}, policy {args.policy}"
              + (f", draft temperature {args.draft_temperature:g}" if args.draft_temperature != 1.0 else "")
              + (", fp8 draft" if drafter.fp8 else "") + ")")
    if args.stats and results:
        r0 = results[-1]
        print("per-depth acceptance (last prompt): " + " ".join(f"{a:.2f}" for a in r0.per_depth_acceptance()))
        st = r0.stage_times()
        if st:
            print("stage time, last prompt: " + "  ".join(f"{k} {v * 1e3:.1f} ms" for k, v in st.items()))
    if args.compare_ar:
        ar_tps = totals["ar_tokens"] / totals["ar_secs"] if totals["ar_secs"] > 0 else float("nan")
        print(f"AR baseline tokens/s: {ar_tps:.2f}  speedup: {tps / ar_tps:.2f}x")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
