#!/usr/bin/env python
"""Train the demo target: a small ``transformers`` Qwen3ForCausalLM, from scratch, on the Python
corpus (``build_corpus.py``) with the demo tokenizer (``train_tokenizer.py``).

* Model: preset ``demo`` = hidden 256, 6 layers, 2 query heads x head dim 128, 1 KV head,
  intermediate 768, tied embeddings, max position 2048, vocab = the tokenizer's (about 6.8 M
  parameters with 8192 tokens: 13.7 MB in bf16). Preset ``tiny`` is the CPU smoke config. Every
  size can be overridden on the command line.
* Data: every file of a split is tokenized (cached under ``<out>/data``), followed by
  ``<|endoftext|>``, and the files are concatenated into one stream; each step draws
  ``--batch-size`` windows of ``--seq-len + 1`` tokens at random offsets (a generator seeded by
  (seed, step), so resuming replays the same batches). The held-out split is scored every
  ``--eval-every`` steps on fixed windows (loss in nats/token and bits per byte).
* Optimiser: AdamW (fused on CUDA; weight decay on matrices only), linear warm-up then cosine
  decay to ``--min-lr-ratio`` over the run, where the run's progress is the larger of
  step/``--max-steps`` and elapsed/``--minutes`` (so a time budget also completes the schedule),
  gradient clipping. bf16 autocast on CUDA (fp32 master weights), fp32 on the CPU.
* Checkpoints: ``<out>/checkpoint`` (fp32 weights via save_pretrained/safetensors + the
  optimiser and step in ``trainer_state.pt``) every ``--save-every`` steps and at the end;
  ``--resume`` continues from it (same arguments; the time budget counts the time already spent).
  The final model goes to ``<out>/final``: weights in ``--save-dtype`` (bf16 by default: half
  the size; load it with ``dtype=torch.float32`` on the CPU), the tokenizer files,
  generation_config.json and ``demo_info.json`` (training summary). ``<out>/train_log.jsonl`` has
  one line per log/eval step.

Usage (GPU demo): ``python scripts/demo/train_target.py --corpus build/demo/corpus --tokenizer
build/demo/tokenizer --out build/demo/target --minutes 4``; CPU smoke: ``--preset tiny
--max-steps 20 --batch-size 4 --seq-len 64``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

PRESETS = {
    # head_dim 128 as the demo requires; 2 query heads share 1 KV head (GQA 2:1).
    "demo": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=2, num_key_value_heads=1,
                 head_dim=128, intermediate_size=768, max_position_embeddings=2048,
                 rope_theta=10000.0, seq_len=1024, batch_size=64),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                 head_dim=32, intermediate_size=128, max_position_embeddings=256,
                 rope_theta=10000.0, seq_len=64, batch_size=8),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


# ----------------------------------------------------------------------------------------- data
def _file_sha1(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def tokenize_split(corpus_dir: str, tokenizer_dir: str, split: str, cache_dir: str | None = None,
                   chunk: int = 2048, verbose: bool = True):
    """Token stream of one split: each file's ids followed by the end-of-text id. Returns
    (np.ndarray uint16/int32 tokens, number of UTF-8 bytes of text). Cached in cache_dir, keyed
    by the corpus file and tokenizer hashes."""
    from tokenizers import Tokenizer

    src = os.path.join(corpus_dir, f"{split}.jsonl")
    tok_path = os.path.join(tokenizer_dir, "tokenizer.json")
    key = hashlib.sha1((_file_sha1(src) + _file_sha1(tok_path)).encode()).hexdigest()[:16]
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        npy = os.path.join(cache_dir, f"{split}-{key}.npy")
        meta_path = npy + ".json"
        if os.path.exists(npy) and os.path.exists(meta_path):
            with open(meta_path) as f:
                return np.load(npy), json.load(f)["bytes"]
    t0 = time.time()
    tok = Tokenizer.from_file(tok_path)
    eos = tok.token_to_id("<|endoftext|>")
    assert eos is not None, "tokenizer has no <|endoftext|> token"
    dtype = np.uint16 if tok.get_vocab_size() <= 65535 else np.int32
    parts, nbytes, batch = [], 0, []

    def flush():
        for enc in tok.encode_batch(batch, add_special_tokens=False):
            ids = enc.ids
            ids.append(eos)
            parts.append(np.asarray(ids, dtype=dtype))
        batch.clear()

    with open(src, encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            nbytes += len(text.encode("utf-8"))
            batch.append(text)
            if len(batch) >= chunk:
                flush()
    if batch:
        flush()
    arr = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    if cache_dir:
        np.save(npy, arr)
        with open(meta_path, "w") as f:
            json.dump({"bytes": nbytes, "tokens": int(arr.size)}, f)
    if verbose:
        print(f"[train_target] tokenized {split}: {arr.size:,} tokens from {nbytes / 1e6:.1f} MB "
              f"({nbytes / max(1, arr.size):.2f} bytes/token) in {time.time() - t0:.1f} s", flush=True)
    return arr, nbytes


def sample_batch(tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int, step: int):
    """(inputs, targets), each (batch_size, seq_len) int64 on tokens.device, from random windows;
    the offsets depend only on (seed, step)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    hi = tokens.numel() - seq_len - 1
    starts = torch.randint(0, max(1, hi + 1), (batch_size,), generator=g)
    idx = starts[:, None] + torch.arange(seq_len + 1)[None, :]
    w = tokens[idx.to(tokens.device)].long()
    return w[:, :-1], w[:, 1:]


def eval_windows(tokens: torch.Tensor, seq_len: int, max_windows: int):
    """Fixed, non-overlapping held-out windows (inputs, targets), at most max_windows of them."""
    L = min(seq_len, tokens.numel() - 1)
    if L < 1:
        raise ValueError("held-out split is empty: build the corpus with a larger val fraction")
    n = min(max_windows, (tokens.numel() - 1) // L)
    w = tokens[: n * L + 1]
    x = torch.stack([w[i * L: i * L + L] for i in range(n)]).long()
    y = torch.stack([w[i * L + 1: i * L + L + 1] for i in range(n)]).long()
    return x, y


# ---------------------------------------------------------------------------------------- model
def make_config(vocab_size: int, eos_id: int, hidden_size: int, num_hidden_layers: int,
                num_attention_heads: int, num_key_value_heads: int, head_dim: int,
                intermediate_size: int, max_position_embeddings: int, rope_theta: float):
    from transformers import Qwen3Config

    kw = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
              num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
              head_dim=head_dim, intermediate_size=intermediate_size,
              max_position_embeddings=max_position_embeddings, tie_word_embeddings=True,
              rms_norm_eps=1e-6, bos_token_id=None, eos_token_id=eos_id, pad_token_id=eos_id,
              use_sliding_window=False, max_window_layers=num_hidden_layers)
    try:  # transformers >= 5: rope settings live in rope_parameters
        cfg = Qwen3Config(rope_parameters={"rope_type": "default", "rope_theta": rope_theta}, **kw)
    except TypeError:  # pragma: no cover - transformers 4.x
        cfg = Qwen3Config(rope_theta=rope_theta, **kw)
    cfg.architectures = ["Qwen3ForCausalLM"]
    return cfg


def build_model(config):
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(0)
    return Qwen3ForCausalLM(config)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights counted once


def make_optimizer(model, lr: float, weight_decay: float, betas=(0.9, 0.95), fused=False):
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kw = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8, **kw)


def lr_at(step: int, progress: float, peak: float, warmup: int, min_ratio: float,
          progress_at_warmup: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine from peak to peak*min_ratio as the run's
    progress goes from its value at the end of warm-up to 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    denom = max(1e-9, 1.0 - progress_at_warmup)
    p = min(1.0, max(0.0, (progress - progress_at_warmup) / denom))
    return peak * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p)))


def lm_loss(model, x, y, autocast_dtype=None):
    ctx = (torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else torch.autocast(x.device.type, enabled=False))
    with ctx:
        logits = model(input_ids=x, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def evaluate(model, ex, ey, batch_size: int, autocast_dtype=None) -> float:
    was = model.training
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, ex.shape[0], batch_size):
        x, y = ex[i:i + batch_size], ey[i:i + batch_size]
        tot += lm_loss(model, x, y, autocast_dtype).item() * x.numel()
        n += x.numel()
    model.train(was)
    return tot / max(1, n)


SAMPLE_PROMPTS = ("def fibonacci(n):\n", "import os\nimport sys\n\n\ndef main(", "class Stack:\n    def ")


@torch.no_grad()
def sample_completions(model, tokenizer, prompts=SAMPLE_PROMPTS, max_new_tokens: int = 48):
    """Greedy completions of a few prompts (a sanity check printed at the end of training)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    outs = []
    for p in prompts:
        ids = tokenizer(p, return_tensors="pt").input_ids.to(dev)
        gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
        outs.append(tokenizer.decode(gen[0], skip_special_tokens=False))
    model.train(was)
    return outs


# ----------------------------------------------------------------------------------- checkpoints
def save_checkpoint(model, opt, state: dict, ckpt_dir: str):
    tmp = ckpt_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save({"optimizer": opt.state_dict(), **state}, os.path.join(tmp, "trainer_state.pt"))
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    os.replace(tmp, ckpt_dir)


def export_final(model, tokenizer_dir: str, final_dir: str, save_dtype: str, info: dict):
    """Write the shippable model directory: weights (save_dtype), tokenizer, generation config,
    demo_info.json."""
    import copy

    from transformers import GenerationConfig

    shutil.rmtree(final_dir, ignore_errors=True)
    m = copy.deepcopy(model).cpu()
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[save_dtype]
    m = m.to(dt)
    eos = model.config.eos_token_id
    m.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=eos, bos_token_id=None,
                                           do_sample=False)
    m.save_pretrained(final_dir)
    for fn in TOKENIZER_FILES:
        p = os.path.join(tokenizer_dir, fn)
        if os.path.exists(p):
            shutil.copy(p, os.path.join(final_dir, fn))
    with open(os.path.join(final_dir, "demo_info.json"), "w") as f:
        json.dump(info, f, indent=1)
    for x in os.listdir(final_dir):  # save_pretrained may create 0600 files
        os.chmod(os.path.join(final_dir, x), 0o644)
    size = sum(os.path.getsize(os.path.join(final_dir, x)) for x in os.listdir(final_dir))
    return size


# ------------------------------------------------------------------------------------- training
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default="build/demo/corpus")
    ap.add_argument("--tokenizer", default="build/demo/tokenizer")
    ap.add_argument("--out", default="build/demo/target")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "intermediate_size", "max_position_embeddings", "seq_len", "batch_size"):
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=None,
                        help="override the preset")
    ap.add_argument("--rope-theta", type=float, default=None)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=200, help="warm-up steps")
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--minutes", type=float, default=0.0, help="time budget (0: none)")
    ap.add_argument("--max-steps", type=int, default=0, help="step budget (0: none)")
    ap.add_argument("--end-by", type=float, default=0.0,
                    help="unix time by which the script must have finished: the time budget is "
                         "cut so the loop stops --reserve-s seconds before it (0: unused)")
    ap.add_argument("--reserve-s", type=float, default=40.0,
                    help="seconds kept after the loop for the final eval and export (--end-by)")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--eval-windows", type=int, default=64, help="held-out windows per eval")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--save-every", type=int, default=2000)
    ap.add_argument("--save-dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--sample-tokens", type=int, default=48,
                    help="greedy completion length of the end-of-run samples (0: none)")
    ap.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    a = ap.parse_args(argv)
    if a.minutes <= 0 and a.max_steps <= 0 and a.end_by <= 0:
        ap.error("give --minutes, --max-steps and/or --end-by")
    preset = dict(PRESETS[a.preset])
    for k in list(preset):
        v = getattr(a, k, None)
        if v is not None:
            preset[k] = v
    a.model = preset
    return a


# torch >= 2.9 sets TF32 through `fp32_precision`; there, reading the legacy `allow_tf32` flags
# raises once anything (e.g. transformers) has used the new API, so one API is used throughout.
_NEW_TF32_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")


def _tf32_settings():
    """The (cuBLAS matmul, cuDNN) TF32 settings, for :func:`_set_tf32_settings`."""
    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    return (m.fp32_precision, c.fp32_precision) if _NEW_TF32_API else (m.allow_tf32, c.allow_tf32)


def _set_tf32_settings(settings) -> None:
    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    if _NEW_TF32_API:
        m.fp32_precision, c.fp32_precision = settings
    else:
        m.allow_tf32, c.allow_tf32 = settings


def train(a) -> dict:
    """Run training as configured by parse_args(); returns a summary dict."""
    t_start = time.time()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto"
                       else a.device)
    amp = torch.bfloat16 if dev.type == "cuda" else None
    if dev.type == "cuda":  # process-wide; main() restores the previous setting when training ends
        _set_tf32_settings(("tf32", "tf32") if _NEW_TF32_API else (True, True))
    os.makedirs(a.out, exist_ok=True)
    log_path = os.path.join(a.out, "train_log.jsonl")
    ckpt_dir = os.path.join(a.out, "checkpoint")

    def log(rec):
        print("[train_target] " + " ".join(f"{k}={v}" for k, v in rec.items()), flush=True)
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    # data
    tr_np, tr_bytes = tokenize_split(a.corpus, a.tokenizer, "train", os.path.join(a.out, "data"))
    va_np, va_bytes = tokenize_split(a.corpus, a.tokenizer, "val", os.path.join(a.out, "data"))
    bytes_per_token_val = va_bytes / max(1, va_np.size)
    m = a.model
    T, B = m["seq_len"], m["batch_size"]
    if tr_np.size < T + 2:
        raise ValueError(f"train split has {tr_np.size} tokens, fewer than seq_len + 2 = {T + 2}")
    train_tokens = torch.from_numpy(tr_np.astype(np.int32)).to(dev)
    ex, ey = eval_windows(torch.from_numpy(va_np.astype(np.int32)), T, a.eval_windows)
    ex, ey = ex.to(dev), ey.to(dev)

    # model
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(a.tokenizer)
    vocab = len(hf_tok)
    config = make_config(vocab, hf_tok.eos_token_id, m["hidden_size"], m["num_hidden_layers"],
                         m["num_attention_heads"], m["num_key_value_heads"], m["head_dim"],
                         m["intermediate_size"], m["max_position_embeddings"], m["rope_theta"])
    state = {"step": 0, "elapsed": 0.0, "tokens": 0, "progress_at_warmup": None}
    if a.resume and os.path.exists(os.path.join(ckpt_dir, "trainer_state.pt")):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(ckpt_dir, dtype=torch.float32)
        saved = torch.load(os.path.join(ckpt_dir, "trainer_state.pt"), map_location="cpu",
                           weights_only=False)
        opt_state = saved.pop("optimizer")
        state.update({k: saved[k] for k in state if k in saved})
        log({"event": "resume", "step": state["step"], "elapsed_s": round(state["elapsed"], 1)})
    else:
        model, opt_state = build_model(config), None
    model.to(dev).train()
    n_params = count_params(model)
    opt = make_optimizer(model, a.lr, a.weight_decay, fused=dev.type == "cuda")
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    fwd_model = model
    if a.compile:
        try:
            fwd_model = torch.compile(model)
        except Exception as e:  # pragma: no cover
            print(f"[train_target] torch.compile unavailable ({e}); running eager", flush=True)
    log({"event": "start", "device": str(dev), "params": n_params, "vocab": vocab,
         "train_tokens": int(tr_np.size), "val_tokens": int(va_np.size), "seq_len": T,
         "batch_size": B, "model": json.dumps({k: v for k, v in m.items()}).replace(" ", ""),
         "setup_s": round(time.time() - t_start, 1)})

    budget_s = a.minutes * 60.0
    if a.end_by > 0:  # a hard wall-clock end: cut the budget to what is left
        left = a.end_by - time.time() - a.reserve_s + state["elapsed"]
        budget_s = max(1.0, min(budget_s, left) if budget_s else left)
        log({"event": "budget", "train_s": round(budget_s - state["elapsed"], 1)})
    loop_t0 = time.time() - state["elapsed"]

    def progress(step, elapsed):
        p = 0.0
        if a.max_steps:
            p = max(p, step / a.max_steps)
        if budget_s:
            p = max(p, elapsed / budget_s)
        return p

    first_loss, last_loss, val_hist = None, None, []
    t_log, tok_log = time.time(), 0
    step = start_step = state["step"]
    compile_failed = False
    while True:
        elapsed = time.time() - loop_t0
        if progress(step, elapsed) >= 1.0:
            break
        if state["progress_at_warmup"] is None and step >= a.warmup:
            state["progress_at_warmup"] = progress(step, elapsed)
        lr = lr_at(step, progress(step, elapsed), a.lr, a.warmup, a.min_lr_ratio,
                   state["progress_at_warmup"] or 0.0)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = sample_batch(train_tokens, B, T, a.seed, step)
        try:
            loss = lm_loss(fwd_model, x, y, amp)
        except Exception as e:
            if fwd_model is model or compile_failed:
                raise
            compile_failed = True  # fall back to eager once
            print(f"[train_target] compiled model failed ({type(e).__name__}: {e}); eager now",
                  flush=True)
            fwd_model = model
            loss = lm_loss(fwd_model, x, y, amp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        step += 1
        tok_log += x.numel()
        state["tokens"] += x.numel()
        if step == 1 or step % a.log_every == 0:
            lv = loss.item()
            if first_loss is None:
                first_loss = lv
            last_loss = lv
            now = time.time()
            log({"step": step, "loss": round(lv, 4), "lr": f"{lr:.3g}",
                 "gnorm": round(float(gnorm), 3), "tok_per_s": int(tok_log / max(1e-9, now - t_log)),
                 "elapsed_s": round(now - loop_t0, 1)})
            t_log, tok_log = now, 0
        if step % a.eval_every == 0:
            vl = evaluate(model, ex, ey, B, amp)
            val_hist.append((step, vl))
            log({"step": step, "val_loss": round(vl, 4),
                 "val_bpb": round(vl / math.log(2) / bytes_per_token_val, 4)})
            t_log, tok_log = time.time(), 0
        if a.save_every and step % a.save_every == 0:
            state.update(step=step, elapsed=time.time() - loop_t0)
            save_checkpoint(model, opt, state, ckpt_dir)
            t_log, tok_log = time.time(), 0

    if step > start_step:
        last_loss = loss.item()
    state.update(step=step, elapsed=time.time() - loop_t0)
    vl = evaluate(model, ex, ey, B, amp)
    val_hist.append((step, vl))
    bpb = vl / math.log(2) / bytes_per_token_val
    log({"step": step, "val_loss": round(vl, 4), "val_bpb": round(bpb, 4), "final": True})
    save_checkpoint(model, opt, state, ckpt_dir)
    info = {
        "what": "jetspec_ext demo target: Qwen3ForCausalLM trained from scratch on Python source "
                "code (the standard library and site-packages .py files of the training machine)",
        "licence_note": "Trained on Python sources: the standard library (PSF-2.0) and installed "
                        "packages (licences listed in the corpus' licences.json). Only weights "
                        "are shipped, not the corpus.",
        "params": n_params, "steps": step, "train_tokens_seen": state["tokens"],
        "train_seconds": round(state["elapsed"], 1), "device": str(dev),
        "torch": torch.__version__, "seq_len": T, "batch_size": B, "lr": a.lr,
        "val_loss": round(vl, 4), "val_bits_per_byte": round(bpb, 4),
        "corpus_train_tokens": int(tr_np.size), "corpus_val_tokens": int(va_np.size),
        "saved_dtype": a.save_dtype, "model": m,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except Exception:  # pragma: no cover
        pass
    try:
        info["samples"] = (sample_completions(model, hf_tok, max_new_tokens=a.sample_tokens)
                           if a.sample_tokens > 0 else [])
        for t in info["samples"]:
            print("[train_target] sample:\n" + t + "\n" + "-" * 40, flush=True)
    except Exception as e:  # a sanity check only; never fail the run here
        print(f"[train_target] sampling failed: {type(e).__name__}: {e}", flush=True)
    final_dir = os.path.join(a.out, "final")
    size = export_final(model, a.tokenizer, final_dir, a.save_dtype, info)
    log({"event": "done", "steps": step, "val_loss": round(vl, 4), "final_dir": final_dir,
         "final_mb": round(size / 1e6, 2), "total_s": round(time.time() - t_start, 1)})
    return {"first_loss": first_loss, "last_loss": last_loss, "val": val_hist, "steps": step,
            "final_dir": final_dir, "final_bytes": size, "params": n_params, "info": info}


def main(argv=None):
    # train() turns TF32 on for its fp32 maths on the GPU; a caller in the same process (the tests
    # run this in-process) must not inherit it: fp32 references computed later would silently get
    # TF32's 10-bit mantissa (a tree_attention accuracy test failed that way on the H200).
    saved = _tf32_settings()
    try:
        return train(parse_args(argv))
    finally:
        _set_tf32_settings(saved)


if __name__ == "__main__":
    main()
