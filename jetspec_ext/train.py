"""``jetspec train``: train a JetSpec draft head against a frozen target (DESIGN §1, "Training").

Pipeline (each stage usable on its own from Python):

1. :func:`read_prompts` - prompt files: JSONL (one object per line; the text is the first present of
   ``prompt``, ``question``, ``text``, ``turns[0]``, or the line itself when it is a JSON string),
   or plain text (``.txt`` or any non-JSONL file): prompts separated by blank lines; a file with
   no blank line at all holds one prompt per line. Multi-line prompts (code) need JSONL or blank
   lines between them.
2. :func:`regenerate` - the target answers every prompt itself (Hugging Face ``generate``,
   batched with left padding, greedy by default; on the GPU when available). Results are appended
   to a JSONL cache (``{"key", "prompt_ids", "response_ids"}``, key = sha1 of the prompt ids and the
   generation settings) as each batch completes, so an interrupted run resumes where it stopped.
   Prompts are answered in file order, chunk by chunk (longest first only within a chunk of 8
   batches), so a time cap (``--gen-minutes`` / ``--gen-end-by``) on randomly ordered prompts leaves
   a uniform subset. ``--regenerate-only`` stops here (one process fills the cache; others then
   train on it with ``--gen-minutes 0``).
   Why HF generate and not the project's decoder: the decoder batches only equal-length prompts,
   while ``generate`` pads; greedy because the decoder is evaluated greedily and the acceptance of
   a greedy target is what the head should learn (sampling: ``--gen-temperature``).
3. :func:`train_head` - a fresh (:meth:`JetSpecDraftHead.for_target`) or loaded head; per step the
   frozen target runs once over the batch (tapped features + teacher logits, no grad); for every
   sequence ``anchors`` random anchor positions ``a`` in the response are drawn, and ALL blocks
   ``[x_a, MASK x D]`` of the batch go through the head in ONE forward (:func:`dense_block_forward`):
   block position i sits at RoPE position ``a + i``, sees the fused context features of positions
   ``0 .. a-1`` (exactly the draft context the decoder holds when ``x_a`` is the anchor: the
   committed tokens before it) and, inside its block, positions ``0..i`` (causal) or all
   (``--attention bidirectional``). Loss: forward KL(softmax(z_target / T) || softmax(z_head)) at
   every mask slot i = 1..D whose token exists (teacher = target logits at position ``a+i-1``),
   uniform weights. AdamW, linear warm-up then cosine decay, bf16 autocast on CUDA, gradient
   clipping, periodic checkpoints in the published format plus ``trainer_state.pt`` (optimizer,
   scheduler, step, RNG-free data order: batch and anchors are functions of (seed, step)).
4. :func:`evaluate` - the mean accepted length (tau) through the real decoder
   (:func:`jetspec_ext.decoder.generate`) on held-out prompts, at several budgets, and tokens/s
   versus :func:`jetspec_ext.decoder.generate_ar`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .draft_head import JetSpecDraftHead

TRAINER_STATE = "trainer_state.pt"


def log(msg: str) -> None:
    print(f"[jetspec train] {msg}", flush=True)


def _progress(it, total: int, desc: str):
    """tqdm when installed (and stderr is a terminal), else the iterable itself."""
    try:
        if not sys.stderr.isatty():
            raise ImportError
        from tqdm import tqdm
        return tqdm(it, total=total, desc=desc, leave=False)
    except ImportError:
        return it


# ============================================================================================
# 1. Prompts
# ============================================================================================
def _json_text(r) -> Optional[str]:
    if isinstance(r, str):
        return r
    if not isinstance(r, dict):
        return None
    for k in ("prompt", "question", "text"):
        if isinstance(r.get(k), str) and r[k]:
            return r[k]
    turns = r.get("turns")
    if isinstance(turns, list) and turns and isinstance(turns[0], str):
        return turns[0]
    return None


def read_prompts(path: str, limit: Optional[int] = None) -> List[str]:
    """Prompts of one file (see the module docstring for the formats)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompts file {path!r} not found")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = [x for x in text.splitlines() if x.strip()]
    out: List[str] = []
    is_jsonl = path.endswith((".jsonl", ".json")) or (lines and lines[0].lstrip().startswith("{"))
    if is_jsonl:
        for i, line in enumerate(lines):
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i + 1}: not valid JSON ({e})")
            t = _json_text(r)
            if not t:
                raise ValueError(f"{path}:{i + 1}: no prompt / question / text / turns field")
            out.append(t)
    else:
        blocks = [b.strip("\n") for b in text.replace("\r\n", "\n").split("\n\n")]
        blocks = [b for b in blocks if b.strip()]
        out = blocks if len(blocks) > 1 or not blocks else [x for x in blocks[0].splitlines() if x.strip()]
    if limit is not None:
        out = out[:limit]
    return out


def encode_prompt(tok, text: str, chat: str = "auto", thinking: bool = False) -> List[int]:
    """Token ids of one prompt. ``chat``: "auto" (the chat template when the tokenizer has one),
    "on", or "off" (the raw text)."""
    use = (chat == "on") or (chat == "auto" and getattr(tok, "chat_template", None))
    if use:
        s = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                    add_generation_prompt=True, enable_thinking=thinking)
        return tok(s, add_special_tokens=False).input_ids
    return tok(text, add_special_tokens=False).input_ids


def encode_prompts(tok, texts: Sequence[str], chat: str = "auto", thinking: bool = False,
                   chunk: int = 4096) -> List[List[int]]:
    """``[encode_prompt(tok, t, chat, thinking) for t in texts]``; raw text (no chat template) is
    tokenized in batches (much faster for tens of thousands of prompts; same ids)."""
    use = (chat == "on") or (chat == "auto" and getattr(tok, "chat_template", None))
    if use or not texts:
        return [encode_prompt(tok, t, chat, thinking) for t in texts]
    out: List[List[int]] = []
    for s in range(0, len(texts), chunk):
        out += [list(x) for x in tok(list(texts[s: s + chunk]), add_special_tokens=False).input_ids]
    return out


# ============================================================================================
# 2. Regeneration (cached, resumable)
# ============================================================================================
@dataclass
class Sample:
    prompt_ids: List[int]
    response_ids: List[int]


def _key(prompt_ids: Sequence[int], settings: str) -> str:
    h = hashlib.sha1(settings.encode())
    h.update(json.dumps(list(prompt_ids)).encode())
    return h.hexdigest()


def load_cache(path: str) -> Dict[str, Sample]:
    out: Dict[str, Sample] = {}
    if path and os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:  # a line cut by an interrupted write
                    continue
                out[r["key"]] = Sample(r["prompt_ids"], r["response_ids"])
    return out


REGEN_CHUNK_BATCHES = 8


@torch.no_grad()
def regenerate(model, prompts_ids: Sequence[Sequence[int]], cache_path: str, *, max_new_tokens: int = 256,
               batch_size: int = 64, temperature: float = 0.0, top_p: float = 1.0, eos_token_id=None,
               pad_token_id: int = 0, seed: int = 0, end_by: Optional[float] = None) -> List[Sample]:
    """The target's own responses to ``prompts_ids``, cached in ``cache_path`` (JSONL, appended per
    batch). Returns the samples in prompt order (those done before ``end_by``, a time.time()
    deadline; the rest can be produced by a later call). Prompts are answered in their order, in
    chunks of ``REGEN_CHUNK_BATCHES * batch_size`` sorted longest first within the chunk, so a
    time-capped call on randomly ordered prompts answers a uniform subset of them."""
    settings = f"max_new={max_new_tokens};T={temperature};top_p={top_p};eos={eos_token_id};seed={seed}"
    keys = [_key(p, settings) for p in prompts_ids]
    cache = load_cache(cache_path)
    todo = [i for i, k in enumerate(keys) if k not in cache]
    # Prompt order, chunk by chunk (REGEN_CHUNK_BATCHES batches), longest first WITHIN a chunk to keep
    # padding low. A time cap therefore answers whole chunks of the prompt order (plus part of one):
    # a uniform subset when the prompts are in random order (scripts/demo/extract_prompts.py orders
    # them by a hash), not the longest prompts. Deterministic.
    G = max(1, batch_size) * REGEN_CHUNK_BATCHES
    todo = [i for c in range(0, len(todo), G) for i in sorted(todo[c: c + G], key=lambda i: -len(prompts_ids[i]))]
    dev = next(model.parameters()).device
    if todo:
        log(f"regenerate: {len(todo)} of {len(keys)} prompts to answer ({len(keys) - len(todo)} cached), "
            f"batch {batch_size}, max_new_tokens {max_new_tokens}, temperature {temperature}, device {dev}")
    t0 = time.time()
    done = 0
    os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
    with open(cache_path, "a") as f:
        last_s = 0.0
        for s in range(0, len(todo), batch_size):
            if end_by is not None and time.time() + last_s > end_by:  # a batch would end past the cap
                log(f"regenerate: time cap reached after {done} prompts; the rest stays unanswered")
                break
            tb = time.time()
            idx = todo[s: s + batch_size]
            L = max(len(prompts_ids[i]) for i in idx)
            ids = torch.full((len(idx), L), pad_token_id, dtype=torch.long)
            att = torch.zeros(len(idx), L, dtype=torch.long)
            for r, i in enumerate(idx):  # left padding
                p = prompts_ids[i]
                ids[r, L - len(p):] = torch.tensor(p)
                att[r, L - len(p):] = 1
            kw = dict(do_sample=temperature > 0, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id,
                      eos_token_id=eos_token_id)
            if temperature > 0:
                torch.manual_seed(seed + s)
                kw.update(temperature=temperature, top_p=top_p, top_k=0)
            out = model.generate(input_ids=ids.to(dev), attention_mask=att.to(dev), **kw)[:, L:].tolist()
            for r, i in enumerate(idx):
                resp = out[r]
                if eos_token_id is not None:
                    stops = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
                    for j, t in enumerate(resp):
                        if t in stops:
                            resp = resp[: j + 1]
                            break
                rec = {"key": keys[i], "prompt_ids": list(prompts_ids[i]), "response_ids": resp}
                f.write(json.dumps(rec) + "\n")
                cache[keys[i]] = Sample(rec["prompt_ids"], resp)
            f.flush()
            done += len(idx)
            last_s = time.time() - tb
            el = time.time() - t0
            log(f"regenerate: {done}/{len(todo)} prompts, {el:.1f} s, {done / max(el, 1e-9):.1f} prompts/s")
    return [cache[k] for k in keys if k in cache]


# ============================================================================================
# 3. Training
# ============================================================================================
@dataclass
class TrainConfig:
    steps: Optional[int] = 1000          # total optimizer steps (None: from `minutes`)
    minutes: Optional[float] = None      # time budget; with steps None the total is calibrated
    end_by: Optional[float] = None       # absolute time.time() hard stop (saves and returns)
    batch_size: int = 16                 # sequences per step
    anchors: int = 32                    # anchors (blocks) per sequence
    max_len: int = 512                   # sequences are cut to this many tokens
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.01
    betas: Sequence[float] = (0.9, 0.95)
    clip: float = 1.0
    kl_temperature: float = 1.0
    seed: int = 0
    save_every: int = 500
    log_every: int = 10
    anchor_from_prompt: bool = False     # also draw anchors inside the prompt
    save_dtype: Optional[str] = None     # "bfloat16" / "float32" for the saved weights
    max_epochs: Optional[float] = None   # cap on passes over the data (steps * batch / sequences):
    #                                      small regenerated sets overfit long before a time budget ends
    block_fill: float = 0.0              # fraction of blocks whose first j mask slots (j uniform in
    #                                      1..D-1) hold the sequence's true tokens; those slots get no
    #                                      loss (an experiment on what the causal head learns; the
    #                                      decoder's blocks stay all-MASK)
    block_noise: float = 0.0             # probability that a mask slot of a block holds a token
    #                                      sampled from the teacher's (kl_temperature-softened)
    #                                      distribution for that slot instead of MASK, kept in the
    #                                      loss: noisy drafts in the block, as in Jacobi-Forcing
    #                                      training (an experiment; the decoder's blocks stay all-MASK)
    block_noise_in_loss: bool = True     # False: the noisy slots get no loss (a noisy slot holds a
    #                                      draw of the very token its output predicts, so its loss
    #                                      is partly copying; only the MASK slots are what decoding uses)
    block_noise_blocks: float = 1.0      # fraction of blocks that get noisy slots; the others stay
    #                                      all-MASK, as every decoding block is (1.0: every block)
    block_noise_from: int = 1            # first mask slot (1..D) that may hold noise; the slots before
    #                                      it stay MASK, as at decoding (1: every slot)
    block_noise_ramp: bool = False       # True: slot j (>= block_noise_from = S) is noisy with
    #                                      probability block_noise * (j - S + 1) / (D - S + 1), rising
    #                                      to block_noise at the last slot D: the shallow noisy slots
    #                                      mostly MASK, as at decoding, the deep ones mostly noise
    slot_weight_gamma: float = 0.0       # per-slot loss weights exp(-(k - 1) / gamma) for mask slot k
    #                                      (1..D): gamma > 0 weighs the shallow slots more (DFlash's
    #                                      decaying weights; gamma 7 for block 16), gamma < 0 the deep
    #                                      ones; 0: uniform (the JetSpec paper). An experiment for the
    #                                      demo pair: decoding uses every slot's top-W tokens

    def __post_init__(self):
        if not 0.0 <= self.block_fill <= 1.0:
            raise ValueError(f"block_fill must be in [0, 1], got {self.block_fill}")
        if not 0.0 <= self.block_noise <= 1.0:
            raise ValueError(f"block_noise must be in [0, 1], got {self.block_noise}")
        if not 0.0 < self.block_noise_blocks <= 1.0:
            raise ValueError(f"block_noise_blocks must be in (0, 1], got {self.block_noise_blocks}")
        if not math.isfinite(self.slot_weight_gamma):
            raise ValueError(f"slot_weight_gamma must be finite (0: uniform weights), got {self.slot_weight_gamma}")
        if self.block_noise_from < 1:
            raise ValueError(f"block_noise_from must be >= 1 (mask slots count from 1), got {self.block_noise_from}")
        # The settings that shape the noise mean nothing without it: refused rather than ignored.
        for flag, setting, used in (("--block-noise-no-loss", "block_noise_in_loss=False", not self.block_noise_in_loss),
                                    ("--block-noise-blocks", "block_noise_blocks < 1", self.block_noise_blocks < 1.0),
                                    ("--block-noise-from", "block_noise_from > 1", self.block_noise_from > 1),
                                    ("--block-noise-ramp", "block_noise_ramp=True", self.block_noise_ramp)):
            if used and self.block_noise == 0:
                raise ValueError(f"{flag} needs --block-noise P with P > 0 ({setting} needs block_noise > 0)")


class Batcher:
    """Deterministic batches and anchors as functions of (seed, step): resuming reproduces them."""

    def __init__(self, samples: Sequence[Sample], cfg: TrainConfig, mask_token_id: int, block: int):
        self.seqs = []
        for s in samples:
            ids = (list(s.prompt_ids) + list(s.response_ids))[: cfg.max_len]
            P = len(s.prompt_ids)
            lo = 1 if cfg.anchor_from_prompt else P
            if len(ids) - 2 >= lo:  # at least one anchor with a following token
                self.seqs.append((ids, lo))
        if not self.seqs:
            raise ValueError("no usable training sequence (responses empty or prompts longer than max_len)")
        if cfg.block_fill > 0 and block < 3:
            raise ValueError(f"block_fill needs a block of at least 3 (anchor + a revealed slot + a "
                             f"masked one), got {block}")
        if cfg.block_noise_from > block - 1:
            raise ValueError(f"block_noise_from {cfg.block_noise_from} is past the block's last mask "
                             f"slot ({block - 1}): no slot could hold noise")
        self.cfg, self.block = cfg, block
        self.n = len(self.seqs)
        self._perm = (None, None)  # (epoch, permutation): computed once per epoch

    def batch(self, step: int):
        cfg = self.cfg
        per_epoch = max(1, self.n // cfg.batch_size) if self.n >= cfg.batch_size else 1
        epoch, j = divmod(step, per_epoch)
        if self._perm[0] != epoch:
            g = torch.Generator().manual_seed(cfg.seed * 1000003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=g).tolist())
        perm = self._perm[1]
        if self.n >= cfg.batch_size:
            idx = perm[j * cfg.batch_size: (j + 1) * cfg.batch_size]
        else:
            idx = [perm[i % self.n] for i in range(cfg.batch_size)]
        ga = torch.Generator().manual_seed(cfg.seed * 7919 + 17 + step)
        seqs = [self.seqs[i] for i in idx]
        T = max(len(s[0]) for s in seqs)
        B, K = len(seqs), cfg.anchors
        ids = torch.zeros(B, T, dtype=torch.long)
        att = torch.zeros(B, T, dtype=torch.long)
        anchors = torch.zeros(B, K, dtype=torch.long)
        valid_anchor = torch.zeros(B, K, dtype=torch.bool)
        lens = torch.zeros(B, dtype=torch.long)
        for b, (s, lo) in enumerate(seqs):
            L = len(s)
            ids[b, :L] = torch.tensor(s)
            att[b, :L] = 1
            lens[b] = L
            cand = torch.arange(lo, L - 1)  # anchor a needs the token a+1
            pick = cand[torch.randperm(len(cand), generator=ga)[:K]].sort().values
            anchors[b, : len(pick)] = pick
            valid_anchor[b, : len(pick)] = True
        if cfg.block_fill == 0 and cfg.block_noise == 0:
            return ids, att, lens, anchors, valid_anchor
        D = self.block - 1
        fill = None
        if cfg.block_fill > 0:
            # Revealed prefix lengths (0 = an all-MASK block), from their own stream of (seed, step).
            gf = torch.Generator().manual_seed(cfg.seed * 104729 + 31 + step)
            chosen = (torch.rand(B, K, generator=gf) < cfg.block_fill) & valid_anchor
            fill = torch.where(chosen, torch.randint(1, D, (B, K), generator=gf), torch.zeros(B, K, dtype=torch.long))
        if cfg.block_noise == 0:
            return ids, att, lens, anchors, valid_anchor, fill
        # Noisy slots and the uniforms their tokens are drawn with (inverse CDF of the teacher in
        # loss_on_batch), from their own stream of (seed, step): resuming reproduces them.
        gn = torch.Generator().manual_seed(cfg.seed * 130363 + 53 + step)
        draw = torch.rand(B, K, D, generator=gn)
        u = torch.rand(B, K, D, generator=gn)
        # Each slot's noise probability: 0 before block_noise_from (those slots stay MASK, as at
        # decoding), then block_noise, or with block_noise_ramp rising linearly to it at slot D.
        # The draws are the same whatever the settings (a float32 comparison, as with the scalar
        # block_noise), so a slot with probability block_noise matches a run without them.
        S = cfg.block_noise_from
        slot = torch.arange(1, D + 1, dtype=torch.float64)
        share = ((slot - S + 1) / (D - S + 1)).clamp(0, 1) if cfg.block_noise_ramp else (slot >= S).double()
        noisy = (draw < (cfg.block_noise * share).float()) & valid_anchor.unsqueeze(-1)
        if cfg.block_noise_blocks < 1.0:
            # Which blocks may hold noise, from a stream of its own so that block_noise_blocks = 1
            # reproduces the batches of a run without the setting.
            gb = torch.Generator().manual_seed(cfg.seed * 15485863 + 71 + step)
            noisy &= (torch.rand(B, K, generator=gb) < cfg.block_noise_blocks).unsqueeze(-1)
        return ids, att, lens, anchors, valid_anchor, fill, (noisy, u)


def block_attention_mask(anchors: torch.Tensor, valid_anchor: torch.Tensor, T: int, block: int,
                         causal: bool) -> torch.Tensor:
    """Bool ``(B, 1, K*block, T + K*block)``: block k position i sees context j < anchors[k] and,
    in its own block, positions <= i (causal) or all (bidirectional). Invalid blocks see only
    themselves (their outputs are ignored)."""
    B, K = anchors.shape
    dev = anchors.device
    Q = K * block
    ctx = torch.arange(T, device=dev).view(1, 1, 1, T) < anchors.view(B, K, 1, 1)   # (B, K, 1, T)
    ctx = (ctx & valid_anchor.view(B, K, 1, 1)).expand(B, K, block, T).reshape(B, Q, T)
    qb = torch.arange(Q, device=dev) // block
    qi = torch.arange(Q, device=dev) % block
    same = qb.view(Q, 1) == qb.view(1, Q)
    inblk = same & (qi.view(1, Q) <= qi.view(Q, 1)) if causal else same
    return torch.cat([ctx, inblk.unsqueeze(0).expand(B, Q, Q)], dim=2).unsqueeze(1)


def dense_block_forward(head: JetSpecDraftHead, tapped: torch.Tensor, block_embeds: torch.Tensor,
                        block_pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The head's forward for many blocks at once, with dense attention (training path).

    tapped ``(B, T, F)``: tapped target features of positions 0..T-1 (context at position j);
    block_embeds ``(B, Q, H)``; block_pos ``(B, Q)`` RoPE positions of the block tokens;
    mask ``(B, 1, Q, T+Q)`` bool (:func:`block_attention_mask`). Same maths as
    :meth:`JetSpecDraftHead.extend_context` + :meth:`JetSpecDraftHead.forward_block`.
    Returns the normed outputs ``(B, Q, H)``.
    """
    B, T, _ = tapped.shape
    ctx = head.fuse(tapped)
    ctx_pos = torch.arange(T, device=tapped.device).unsqueeze(0).expand(B, T)
    ccos, csin = head.rotary_emb(ctx, ctx_pos)
    x = block_embeds.to(ctx.dtype)
    bcos, bsin = head.rotary_emb(x, block_pos)
    for layer in head.layers:
        a = layer.self_attn
        h = layer.input_layernorm(x)
        Q = h.shape[1]
        q = a.queries(h, bcos, bsin)
        kb, vb = a.keys_values(h, bcos, bsin)
        kc, vc = a.keys_values(ctx, ccos, csin)
        k = torch.cat([kc, kb], dim=2)
        v = torch.cat([vc, vb], dim=2)
        rep = a.num_heads // a.num_kv_heads
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, scale=a.scaling)
        x = x + a.o_proj(o.transpose(1, 2).reshape(B, Q, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return head.norm(x)


def _lr_lambda(cfg: TrainConfig, total: List[int]):
    def f(step: int) -> float:
        w = max(1, min(cfg.warmup, total[0] // 10))  # short runs: at most 10 % warm-up
        if step < w:
            return (step + 1) / w
        n = max(1, total[0] - w)
        p = min(1.0, (step - w) / n)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))
    return f


def _target_features(model, ids, att, layer_ids):
    out = model.model(input_ids=ids, attention_mask=att, use_cache=False, output_hidden_states=True)
    tapped = torch.cat([out.hidden_states[k + 1] for k in layer_ids], dim=-1)
    return tapped, out.last_hidden_state


def slot_weights(D: int, gamma: float, device=None) -> torch.Tensor:
    """(D,) float32 loss weights of mask slots 1..D: exp(-(k - 1) / gamma), or ones when gamma is 0
    (``TrainConfig.slot_weight_gamma``)."""
    k = torch.arange(D, dtype=torch.float32, device=device)
    return torch.ones(D, device=device) if gamma == 0 else torch.exp(-k / gamma)


def loss_on_batch(model, head: JetSpecDraftHead, batch, kl_temperature: float = 1.0, amp: bool = False,
                  noise_in_loss: bool = True, slot_weight_gamma: float = 0.0):
    """Forward KL at every mask slot of every block of the batch, averaged with the weights
    :func:`slot_weights` (``slot_weight_gamma``; 0: uniform). Returns (loss, stats): stats holds
    ``slots`` (the slots in the loss), ``slots_by_depth`` and ``top1_by_depth`` (per mask slot
    1..D: how many are in the loss, and the fraction of those whose argmax is the teacher's).
    ``batch``: (ids, att, lens, anchors, valid_anchor) from :class:`Batcher`, optionally with a 6th
    element ``fill (B, K)`` or None: block k's first fill[b, k] mask slots hold the true tokens
    instead (``TrainConfig.block_fill``) and are left out of the loss; and a 7th, ``(noisy, u)``,
    bool and float ``(B, K, D)``: the noisy slots (``TrainConfig.block_noise``; revealed ones
    excepted) hold the token at quantile u of the teacher's distribution for the slot and stay in
    the loss (``noise_in_loss=False``: they are left out of it)."""
    ids, att, lens, anchors, valid_anchor = batch[:5]
    fill = batch[5] if len(batch) > 5 else None
    noise = batch[6] if len(batch) > 6 else None
    dev = model.lm_head.weight.device
    ids, att, lens, anchors, valid_anchor = (t.to(dev) for t in (ids, att, lens, anchors, valid_anchor))
    B, T = ids.shape
    K = anchors.shape[1]
    N = head.block_size
    D = N - 1
    with torch.no_grad():
        tapped, last = _target_features(model, ids, att, head.target_layer_ids)
        # teacher for block slot i (1..D) of anchor a: the target's logits at position a + i - 1
        tpos = anchors.unsqueeze(-1) + torch.arange(D, device=dev)                     # (B, K, D)
        slot_ok = valid_anchor.unsqueeze(-1) & (tpos + 1 < lens.view(B, 1, 1))          # token a+i exists
        tpos_c = tpos.clamp(max=T - 1).view(B, K * D)
        th = last.gather(1, tpos_c.unsqueeze(-1).expand(-1, -1, last.shape[-1]))
        t_logits = model.lm_head(th).float()
        teacher = F.log_softmax(t_logits / kl_temperature, dim=-1)
        block_tok = torch.full((B, K, N), head.mask_token_id, dtype=torch.long, device=dev)
        block_tok[:, :, 0] = ids.gather(1, anchors)
        if fill is not None:  # slot i (1..D) of a filled block holds the true token a + i
            reveal = (torch.arange(1, N, device=dev) <= fill.to(dev).unsqueeze(-1)) & slot_ok   # (B, K, D)
            true_tok = ids.gather(1, (tpos + 1).clamp(max=T - 1).view(B, K * D)).view(B, K, D)
            block_tok[:, :, 1:] = torch.where(reveal, true_tok, block_tok[:, :, 1:])
            slot_ok = slot_ok & ~reveal
        if noise is not None:  # noisy slots: a draw from the teacher for the slot (inverse CDF)
            noisy, u = noise[0].to(dev) & slot_ok, noise[1].to(dev)
            sel = noisy.reshape(-1).nonzero().squeeze(1)
            if sel.numel():
                cdf = teacher.reshape(B * K * D, -1)[sel].exp().cumsum(-1)
                q = (u.reshape(-1)[sel] * cdf[:, -1]).unsqueeze(-1)
                tok = torch.searchsorted(cdf, q).squeeze(1).clamp(max=cdf.shape[1] - 1)
                slots = block_tok[:, :, 1:].reshape(-1).clone()
                slots[sel] = tok
                block_tok[:, :, 1:] = slots.view(B, K, D)
            if not noise_in_loss:
                slot_ok = slot_ok & ~noisy
        block_embeds = model.model.embed_tokens(block_tok.view(B, K * N))
        block_pos = (anchors.unsqueeze(-1) + torch.arange(N, device=dev)).view(B, K * N)
        mask = block_attention_mask(anchors, valid_anchor, T, N, head.causal)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
        h = dense_block_forward(head, tapped.detach(), block_embeds, block_pos, mask)
        h = h.view(B, K, N, -1)[:, :, 1:].reshape(B, K * D, -1)
        s_logits = model.lm_head(h.to(model.lm_head.weight.dtype))
    student = F.log_softmax(s_logits.float(), dim=-1)
    kl = (teacher.exp() * (teacher - student)).sum(-1).view(B, K, D)
    w = slot_ok.float()
    lw = w * slot_weights(D, slot_weight_gamma, dev)  # (uniform weights: w itself)
    loss = (kl * lw).sum() / lw.sum().clamp(min=1e-12)
    with torch.no_grad():
        top1 = (student.argmax(-1) == t_logits.argmax(-1)).view(B, K, D).float()
        acc_d = (top1 * w).sum((0, 1)) / w.sum((0, 1)).clamp(min=1)
    return loss, {"slots": int(w.sum()), "top1_by_depth": acc_d.tolist(), "slots_by_depth": w.sum((0, 1)).tolist()}


def save_checkpoint(head, opt, sched, state: dict, ckpt_dir: str) -> None:
    """Published-format head + trainer_state.pt, written to a temp dir then renamed (atomic-ish)."""
    tmp = ckpt_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    head.save_pretrained(tmp)  # full precision for resuming
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), **state},
               os.path.join(tmp, TRAINER_STATE))
    old = ckpt_dir.rstrip("/") + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.isdir(ckpt_dir):
        os.rename(ckpt_dir, old)
    os.rename(tmp, ckpt_dir)
    shutil.rmtree(old, ignore_errors=True)


def save_head(head: JetSpecDraftHead, path: str, save_dtype: Optional[str] = None) -> None:
    """Final head in the published format (optionally cast, e.g. bf16 to ship it small)."""
    if save_dtype:
        src = head.fc.weight.dtype
        head.to(getattr(torch, save_dtype))
        head.save_pretrained(path)
        head.to(src)
    else:
        head.save_pretrained(path)


def train_head(model, head: JetSpecDraftHead, samples: Sequence[Sample], cfg: TrainConfig, out_dir: str,
               resume: Optional[str] = None, on_step=None) -> dict:
    """Train ``head`` against the frozen ``model`` (HF Qwen3ForCausalLM) on ``samples``.

    Writes ``out_dir/checkpoint`` every ``save_every`` steps and at the end (head +
    trainer_state.pt), ``out_dir/head`` (final head, ``save_dtype``) and ``out_dir/train_log.jsonl``.
    ``resume``: a checkpoint directory (head weights and trainer state are restored).
    Returns a summary dict (steps, losses, seconds, ...).
    """
    dev = model.lm_head.weight.device
    amp = dev.type == "cuda"
    model.eval().requires_grad_(False)
    head.check_target(model.config)
    head.to(device=dev, dtype=torch.float32).train()
    os.makedirs(out_dir, exist_ok=True)
    total = [cfg.steps if cfg.steps is not None else 10 ** 9]
    decay, no_decay = [], []
    for n, p in head.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=tuple(cfg.betas),
                            fused=dev.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, total))
    step, elapsed0, history = 0, 0.0, []
    if resume:
        st_path = os.path.join(resume, TRAINER_STATE)
        if not os.path.isfile(st_path):
            raise FileNotFoundError(f"resume: no {TRAINER_STATE} in {resume!r}")
        loaded = JetSpecDraftHead.from_pretrained(resume)
        head.load_state_dict({k: v.to(torch.float32) for k, v in loaded.state_dict().items()})
        st = torch.load(st_path, map_location=dev, weights_only=False)
        opt.load_state_dict(st["optimizer"])
        step = int(st["step"])
        if cfg.steps is None:  # a time-calibrated run keeps its step count; explicit --steps wins
            total[0] = int(st.get("total_steps", total[0]))
        sched.load_state_dict(st["scheduler"])
        elapsed0 = float(st.get("elapsed", 0.0))
        log(f"resumed from {resume} at step {step} (total {total[0]})")
    batcher = Batcher(samples, cfg, head.mask_token_id, head.block_size)
    epoch_cap = None
    if cfg.max_epochs is not None:
        if cfg.max_epochs <= 0:
            raise ValueError(f"max_epochs must be > 0, got {cfg.max_epochs}")
        epoch_cap = max(1, math.ceil(cfg.max_epochs * batcher.n / cfg.batch_size))
        if epoch_cap < total[0]:
            log(f"max_epochs {cfg.max_epochs}: at most {epoch_cap} steps over {batcher.n} sequences")
            total[0] = max(step, epoch_cap)
    log(f"train: {batcher.n} sequences, batch {cfg.batch_size} x {cfg.anchors} anchors x block {head.block_size}, "
        f"{sum(p.numel() for p in head.parameters()) / 1e6:.2f} M head params, device {dev}, "
        f"{'causal' if head.causal else 'bidirectional'} in-block attention, steps "
        f"{cfg.steps if cfg.steps is not None else f'from {cfg.minutes} min'}"
        + (f", block fill {cfg.block_fill}" if cfg.block_fill else "")
        + (f", block noise {cfg.block_noise}" if cfg.block_noise else "")
        + (f" in a {cfg.block_noise_blocks} fraction of the blocks" if cfg.block_noise_blocks < 1 else "")
        + (f" from mask slot {cfg.block_noise_from} on" if cfg.block_noise_from > 1 else "")
        + (", rising linearly to the last slot" if cfg.block_noise_ramp else "")
        + ("" if cfg.block_noise_in_loss else " (noisy slots out of the loss)")
        + (f", slot weights exp(-(k - 1) / {cfg.slot_weight_gamma})" if cfg.slot_weight_gamma else ""))
    logf = open(os.path.join(out_dir, "train_log.jsonl"), "a")
    t0 = time.time()
    budget_s = cfg.minutes * 60 if cfg.minutes else None
    calib_at = None
    stopped = None
    last_loss = float("nan")
    bar = _progress(range(step, total[0]), total[0] - step, "train") if cfg.steps is not None else None
    while step < total[0]:
        now = time.time()
        if cfg.end_by is not None and now > cfg.end_by:
            stopped = "end_by"
            break
        if budget_s is not None and now - t0 + elapsed0 > budget_s:
            if cfg.steps is None:  # a calibrated run ends here: its total was an estimate
                total[0] = step
            else:
                stopped = "minutes"
            break
        batch = batcher.batch(step)
        loss, stats = loss_on_batch(model, head, batch, cfg.kl_temperature, amp, cfg.block_noise_in_loss,
                                    cfg.slot_weight_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.clip)
        opt.step()
        sched.step()
        step += 1
        last_loss = float(loss.detach())
        if bar is not None and hasattr(bar, "update"):
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}")
        # time-budgeted runs: set the total from the measured speed (steps/s since step 3),
        # re-estimated at steps 10, 25, 50 and every 100 steps (only the cosine tail moves)
        if cfg.steps is None and budget_s is not None:
            if step == 3:
                calib_at = (time.time(), step)
            elif calib_at is not None and (step in (10, 25, 50) or step % 100 == 0) and step < total[0]:
                rate = (step - calib_at[1]) / max(time.time() - calib_at[0], 1e-9)
                left = budget_s - (time.time() - t0)
                if cfg.end_by is not None:
                    left = min(left, cfg.end_by - time.time())
                new_total = max(step + 1, int(step + 0.97 * rate * left))
                if epoch_cap is not None:
                    new_total = max(step + 1, min(new_total, epoch_cap))
                if new_total != total[0]:
                    log(f"calibrated at step {step}: {rate:.2f} steps/s -> {new_total} steps in the time budget")
                total[0] = new_total
        rec = {"step": step, "loss": last_loss, "lr": sched.get_last_lr()[0], "grad_norm": float(gnorm),
               "elapsed": round(time.time() - t0 + elapsed0, 2)}
        history.append(last_loss)
        if step % cfg.log_every == 0 or step == 1 or step == total[0]:
            rec["top1_by_depth"] = [round(x, 4) for x in stats["top1_by_depth"]]
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            if bar is None or not hasattr(bar, "update"):
                acc = stats["top1_by_depth"]
                log(f"step {step}/{total[0] if total[0] < 10 ** 9 else '?'} loss {last_loss:.4f} lr {rec['lr']:.2e} gnorm {float(gnorm):.2f} "
                    f"top1 d1 {acc[0]:.3f} d{len(acc)} {acc[-1]:.3f} ({rec['elapsed']:.0f} s)")
        if cfg.save_every and step % cfg.save_every == 0 and step < total[0]:
            save_checkpoint(head, opt, sched, {"step": step, "total_steps": total[0],
                                               "elapsed": time.time() - t0 + elapsed0,
                                               "config": asdict(cfg)}, os.path.join(out_dir, "checkpoint"))
        if on_step is not None:
            on_step(step, last_loss)
    if bar is not None and hasattr(bar, "close"):
        bar.close()
    if stopped:
        log(f"stopped early at step {step} ({stopped} reached)")
    elapsed = time.time() - t0 + elapsed0
    save_checkpoint(head, opt, sched, {"step": step, "total_steps": total[0], "elapsed": elapsed,
                                       "config": asdict(cfg)}, os.path.join(out_dir, "checkpoint"))
    save_head(head, os.path.join(out_dir, "head"), cfg.save_dtype)
    logf.close()
    k = max(1, min(20, len(history) // 5))
    summary = {"steps": step, "total_steps": total[0], "stopped_early": stopped, "seconds": round(elapsed, 1),
               "first_loss": history[0] if history else None, "last_loss": last_loss,
               "loss_first_mean": sum(history[:k]) / k if history else None,
               "loss_last_mean": sum(history[-k:]) / k if history else None,
               "sequences": batcher.n, "head": os.path.join(out_dir, "head")}
    summary["passes"] = round(step * cfg.batch_size / batcher.n, 3)  # passes over the sequences
    log(f"train done: {json.dumps(summary)}")
    return summary


# ============================================================================================
# 4. Evaluation through the real decoder
# ============================================================================================
def evaluate(model, head: Optional[JetSpecDraftHead], prompts_ids: Sequence[Sequence[int]], *,
             budgets: Sequence[int] = (16, 64, 128), width: int = 7, depth: Optional[int] = None,
             max_new_tokens: int = 128, stop_token_ids: Sequence[int] = (), policy: str = "accum",
             cuda_graph: bool = False, measure_ar: bool = False, end_by: Optional[float] = None,
             dtype: Optional[torch.dtype] = None, ar_reference: Optional[List[List[int]]] = None,
             compile: bool = False, warmup: bool = False, draft_temperature: float = 1.0) -> dict:
    """Greedy decoding of each prompt with the head at each budget: mean accepted length (tau,
    totals over all rounds of all prompts), tokens/s (decode only, and with prefill); with
    ``measure_ar`` the autoregressive baseline's tokens/s too (its tokens in ``res["ar_tokens"]``)
    and whether outputs match (also against ``ar_reference``, AR tokens from an earlier call).
    ``compile``: ``Target(compile=True)`` (torch.compile of the target's and the head's round
    computations, for the AR baseline and the speculative decoder alike). ``warmup``: before timing
    AR and each budget, decode (untimed, same target and drafter, same settings) the first prompt
    of each cache-length bucket the prompts fall in (up to 4, the graphs a drafter keeps), so that
    the CUDA graph captures and compilations happen outside the timed decodes.
    ``draft_temperature``: :func:`jetspec_ext.decoder.generate`'s (the tree's shape only)."""
    from .decoder import HeadDrafter, cache_slots, generate, generate_ar
    from .target import Target

    dev = model.lm_head.weight.device
    layer_ids = head.target_layer_ids if head is not None else ()
    target = Target(model, layer_ids, compile=compile)
    if head is not None:
        head = head.to(device=dev, dtype=dtype or model.lm_head.weight.dtype).eval()
    kw = dict(max_new_tokens=max_new_tokens, stop_token_ids=list(stop_token_ids), cuda_graph=cuda_graph)
    res: dict = {"prompts": len(prompts_ids), "max_new_tokens": max_new_tokens, "width": width,
                 "draft_temperature": draft_temperature, "budgets": {}}
    graphed = cuda_graph and dev.type == "cuda"

    def warm_up(decode, budget: Optional[int], depth: int) -> None:
        # one untimed decode per cache bucket (generate keeps a capture per bucket, the last 4)
        seen = set()
        for p in prompts_ids:
            S = cache_slots(target, len(p), max_new_tokens, budget, depth, graphed)
            if S not in seen and len(seen) < 4:
                seen.add(S)
                decode(p)

    ar_tokens = ar_reference
    if measure_ar:
        if warmup:
            warm_up(lambda p: generate_ar(target, p, **kw), None, 0)
        toks, secs, tot = 0, 0.0, 0.0
        ar_tokens = []
        for p in prompts_ids:
            r = generate_ar(target, p, **kw)
            ar_tokens.append(r.tokens[0])
            toks += len(r.tokens[0])
            secs += r.decode_s
            tot += r.decode_s + r.prefill_s
        res["ar"] = {"tokens": toks, "decode_s": round(secs, 4), "tokens_per_s": toks / secs if secs else None,
                     "tokens_per_s_incl_prefill": toks / tot if tot else None}
        res["ar_tokens"] = ar_tokens
    for bud in budgets:
        if head is None:
            break
        # tree_accept needs depth < budget: small budgets draft fewer depths
        d = min(depth or head.block_size - 1, bud - 1)
        drafter = HeadDrafter(head, target, depth=d)
        if end_by is not None and time.time() > end_by:
            res["budgets"][str(bud)] = {"skipped": "time cap"}
            continue
        if warmup:
            warm_up(lambda p: generate(target, drafter, p, budget=bud, width=width, policy=policy,
                                       draft_temperature=draft_temperature, **kw), bud, d)
        toks, secs, tot, same = 0, 0.0, 0.0, 0
        pp_acc, pp_rounds = [], []  # per prompt: tokens accepted, rounds (for intervals over prompts)
        for i, p in enumerate(prompts_ids):
            r = generate(target, drafter, p, budget=bud, width=width, policy=policy,
                         draft_temperature=draft_temperature, **kw)
            toks += len(r.tokens[0])
            secs += r.decode_s
            tot += r.decode_s + r.prefill_s
            pp_rounds.append(len(r.rounds))
            pp_acc.append(int(sum(x.accept_len[0] for x in r.rounds)))
            if ar_tokens is not None:
                same += int(r.tokens[0] == ar_tokens[i])
        rounds, acc = sum(pp_rounds), sum(pp_acc)
        e = {"tau": acc / rounds if rounds else None, "depth": d, "rounds": rounds, "tokens": toks,
             "decode_s": round(secs, 4), "tokens_per_s": toks / secs if secs else None,
             "tokens_per_s_incl_prefill": toks / tot if tot else None,
             "per_prompt_accepted": pp_acc, "per_prompt_rounds": pp_rounds}
        if ar_tokens is not None:
            e["identical_to_ar"] = f"{same}/{len(prompts_ids)}"
            if (res.get("ar") or {}).get("tokens_per_s"):
                e["speedup"] = e["tokens_per_s"] / res["ar"]["tokens_per_s"]
        res["budgets"][str(bud)] = e
        log(f"eval budget {bud} width {width}: tau {e['tau']:.3f}, {e['tokens_per_s']:.1f} tok/s"
            + (f", speedup {e.get('speedup', float('nan')):.2f}x" if "speedup" in e else ""))
    return res


def tau_ratio_interval(num: dict, den: dict, *, level: float = 0.95, n_boot: int = 10000,
                       seed: int = 0) -> dict:
    """The ratio of two heads' mean accepted lengths on the SAME prompts (``tau = sum accepted /
    sum rounds`` each, as ``evaluate`` computes it) and a paired bootstrap interval over the prompts:
    ``n_boot`` resamples of the prompt indices with replacement, the same indices for both heads (a
    prompt that is easy for one head is easy for the other), percentiles ``(1 -+ level) / 2`` of
    the resampled ratios. ``num`` / ``den``: ``evaluate`` budget entries (or any dicts) with
    ``per_prompt_accepted`` and ``per_prompt_rounds`` (lists of ints, one per prompt, same order).
    Returns ``{"ratio", "lo", "hi", "level", "prompts", "n_boot"}``. Raises ValueError when the
    entries lack per-prompt records (results from before they were kept) or disagree in length."""
    (na, nr), (da, dr) = _per_prompt_records(num, "num"), _per_prompt_records(den, "den")
    return _paired_ratio_interval(na, nr, da, dr, level=level, n_boot=n_boot, seed=seed)


def _per_prompt_records(e: dict, name: str):
    """``e``'s per-prompt (accepted, rounds) as float64 arrays; ValueError when it has none or
    they disagree in length."""
    import numpy as np

    a, r = e.get("per_prompt_accepted"), e.get("per_prompt_rounds")
    if a is None or r is None:
        raise ValueError(f"{name}: no per_prompt_accepted / per_prompt_rounds (evaluate keeps them since "
                         "the thirtieth session)")
    if len(a) != len(r) or not len(a):
        raise ValueError(f"{name}: per-prompt lists of lengths {len(a)} / {len(r)}")
    return np.asarray(a, dtype=np.float64), np.asarray(r, dtype=np.float64)


def _paired_ratio_interval(na, nr, da, dr, *, level: float, n_boot: int, seed: int) -> dict:
    """:func:`tau_ratio_interval` on per-prompt arrays (accepted / rounds of each head)."""
    import numpy as np

    if len(na) != len(da):
        raise ValueError(f"the two entries cover {len(na)} and {len(da)} prompts; a paired interval needs the same")
    if not 0.0 < level < 1.0 or n_boot < 1:
        raise ValueError(f"level must be in (0, 1) and n_boot >= 1, got {level}, {n_boot}")
    if nr.sum() == 0 or dr.sum() == 0 or da.sum() == 0:
        raise ValueError("a head with no rounds or nothing accepted has no tau ratio")
    ratio = (na.sum() / nr.sum()) / (da.sum() / dr.sum())
    idx = np.random.default_rng(seed).integers(0, len(na), size=(n_boot, len(na)))
    boot = (na[idx].sum(1) / nr[idx].sum(1)) / (da[idx].sum(1) / dr[idx].sum(1))
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return {"ratio": float(ratio), "lo": float(lo), "hi": float(hi), "level": level, "prompts": len(na),
            "n_boot": n_boot}


def tau_ratio_cross_validated(num_by_setting: dict, den_by_setting: dict, *, folds: str = "halves",
                              level: float = 0.95, n_boot: int = 10000, seed: int = 0) -> dict:
    """The causal / bidirectional tau ratio when each head's setting (e.g. its draft temperature)
    is CHOSEN on some prompts and MEASURED on others, so that picking each head's best setting on
    the evaluation prompts themselves does not flatter either head.

    ``num_by_setting`` / ``den_by_setting``: {setting: ``evaluate`` budget entry} for the two heads,
    every entry with ``per_prompt_accepted`` / ``per_prompt_rounds`` over the SAME prompts in the
    same order. Two folds (``folds="halves"``: first / second half of the prompts; ``"parity"``:
    even / odd indices): on each fold each head takes the setting with the highest tau there (ties:
    the first in the dict's order), and the OTHER fold's per-prompt records of that setting are
    kept. The kept records (every prompt once, each measured with a setting chosen without it)
    give the ratio and its paired bootstrap interval (:func:`tau_ratio_interval`). Returns that
    interval dict plus ``"chosen"``: per fold ``{"fold", "num", "den", "num_tau", "den_tau"}``
    (the settings chosen on that fold and their taus on the fold they were measured on), and
    ``"num_tau"`` / ``"den_tau"`` of the kept records."""
    import numpy as np

    if not num_by_setting or not den_by_setting:
        raise ValueError("each head needs at least one setting")
    recs = {}
    for side, d in (("num", num_by_setting), ("den", den_by_setting)):
        recs[side] = {k: _per_prompt_records(e, f"{side}[{k!r}]") for k, e in d.items()}
    n = {len(a) for side in recs.values() for a, _ in side.values()}
    if len(n) != 1:
        raise ValueError(f"the entries cover different numbers of prompts {sorted(n)}; selection needs the same")
    n = n.pop()
    if n < 2:
        raise ValueError("two folds need at least 2 prompts")
    idx = np.arange(n)
    if folds == "halves":
        parts = (idx[: n // 2], idx[n // 2:])
    elif folds == "parity":
        parts = (idx[0::2], idx[1::2])
    else:
        raise ValueError(f"folds must be 'halves' or 'parity', got {folds!r}")

    def tau(rec, where):
        a, r = rec
        return a[where].sum() / r[where].sum() if r[where].sum() > 0 else float("-inf")

    kept = {side: (np.zeros(n), np.zeros(n)) for side in recs}
    chosen = []
    for f, (pick_on, measure_on) in enumerate(((parts[0], parts[1]), (parts[1], parts[0]))):
        row = {"fold": f}
        for side in ("num", "den"):
            best = max(recs[side], key=lambda k: tau(recs[side][k], pick_on))
            a, r = recs[side][best]
            kept[side][0][measure_on], kept[side][1][measure_on] = a[measure_on], r[measure_on]
            row[side], row[f"{side}_tau"] = best, float(tau(recs[side][best], measure_on))
        chosen.append(row)
    iv = _paired_ratio_interval(*kept["num"], *kept["den"], level=level, n_boot=n_boot, seed=seed)
    iv["chosen"] = chosen
    for side in kept:
        iv[f"{side}_tau"] = float(kept[side][0].sum() / kept[side][1].sum())
    return iv


def stop_ids_for(tok, model) -> List[int]:
    ids = set()
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    for t in ("<|im_end|>", "<|endoftext|>"):
        i = tok.convert_tokens_to_ids(t)
        if isinstance(i, int) and i >= 0 and i != tok.unk_token_id:
            ids.add(i)
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update([eos] if isinstance(eos, int) else list(eos or []))
    return sorted(ids)


# ============================================================================================
# The CLI driver (jetspec train)
# ============================================================================================
def _fraction(text: str) -> float:
    """argparse type: a number in [0, 1] (checked at parse time, before any regeneration)."""
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return v


def add_arguments(t) -> None:
    t.add_argument("--target", default=None, help="Hugging Face Qwen3 model directory (default: the bundled demo target)")
    t.add_argument("--tokenizer", default=None, help="tokenizer directory (default: --target)")
    t.add_argument("--prompts", nargs="+", required=True,
                   help="training prompt files: JSONL (prompt/question/text/turns[0]) or plain text "
                        "(blank-line separated, or one per line when no blank line)")
    t.add_argument("--num-prompts", type=int, default=None, help="use at most N training prompts (per file)")
    t.add_argument("--out", required=True, help="output directory: head/, checkpoint/, regen.jsonl, logs")
    t.add_argument("--init-head", default=None, help="start from this head directory (default: a fresh head)")
    t.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from a checkpoint dir (no value: OUT/checkpoint)")
    t.add_argument("--num-layers", type=int, default=3, help="draft layers of a fresh head")
    t.add_argument("--taps", default=None, help="tapped target layers of a fresh head, e.g. 1,3 (default: "
                   "evenly spaced, one per draft layer)")
    t.add_argument("--block-size", type=int, default=16, help="block size of a fresh head (depth D = block - 1)")
    t.add_argument("--mask-token-id", type=int, default=None,
                   help="mask token of a fresh head (default: the tokenizer's mask token, else vocab - 1)")
    t.add_argument("--attention", choices=["causal", "bidirectional"], default="causal",
                   help="in-block attention of a fresh head (bidirectional = DFlash-style; causal_head false)")
    t.add_argument("--chat", choices=["auto", "on", "off"], default="auto",
                   help="wrap prompts in the tokenizer's chat template (auto: when it has one)")
    t.add_argument("--thinking", action="store_true", help="Qwen3 chat template with thinking (default off)")
    t.add_argument("--cache", default=None, help="regenerated-response cache (default OUT/regen.jsonl)")
    t.add_argument("--gen-max-new-tokens", type=int, default=256)
    t.add_argument("--gen-batch-size", type=int, default=64)
    t.add_argument("--gen-temperature", type=float, default=0.0, help="0 = greedy regeneration")
    t.add_argument("--gen-minutes", type=float, default=None,
                   help="time cap for regeneration (0: use only what the cache already holds)")
    t.add_argument("--gen-end-by", type=float, default=None,
                   help="absolute unix time: no regeneration batch ends after it (with --gen-minutes: "
                        "whichever comes first)")
    t.add_argument("--regenerate-only", action="store_true",
                   help="stop after the regeneration (fill the --cache; no head, no training): e.g. one "
                        "process regenerates, then several train on the cache with --gen-minutes 0")
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1000, or from --minutes)")
    t.add_argument("--block-fill", type=_fraction, default=0.0,
                   help="fraction (0..1) of training blocks whose first j mask slots (j random in 1..D-1) "
                        "hold the true tokens, left out of the loss (experiment; default 0: all-MASK blocks)")
    t.add_argument("--block-noise", type=_fraction, default=0.0,
                   help="probability (0..1) that a mask slot of a training block holds a token drawn from "
                        "the teacher's distribution for that slot (a noisy draft, kept in the loss; "
                        "Jacobi-Forcing style; experiment; default 0)")
    t.add_argument("--block-noise-no-loss", action="store_true",
                   help="with --block-noise: leave the noisy slots out of the loss (a noisy slot holds a draw "
                        "of the very token its output predicts); only the MASK slots are trained")
    t.add_argument("--block-noise-blocks", type=_fraction, default=1.0,
                   help="with --block-noise: the fraction (0..1] of training blocks that get noisy slots; "
                        "the others stay all-MASK, as decoding blocks are (default 1: every block)")
    t.add_argument("--block-noise-from", type=int, default=1,
                   help="with --block-noise: the first mask slot (1..D) that may hold noise; the slots "
                        "before it stay MASK, as at decoding (default 1: every slot)")
    t.add_argument("--block-noise-ramp", action="store_true",
                   help="with --block-noise P: the noise probability rises with the slot, from P / (D - S + 1) "
                        "at the first noisy slot S (--block-noise-from) to P at the last slot D")
    t.add_argument("--slot-weight-gamma", type=float, default=0.0,
                   help="loss weight exp(-(k - 1) / GAMMA) for mask slot k: GAMMA > 0 weighs the shallow "
                        "slots more (DFlash's decaying weights, 7 for block 16), GAMMA < 0 the deep ones; "
                        "0 (default): every slot alike, as in the JetSpec paper (experiment)")
    t.add_argument("--max-epochs", type=float, default=None,
                   help="cap on passes over the regenerated data (steps x batch / sequences); the run ends "
                        "early rather than overfit a small set")
    t.add_argument("--minutes", type=float, default=None,
                   help="training time budget: without --steps the step count is calibrated from it; "
                        "with --steps it is a cap")
    t.add_argument("--end-by", type=float, default=None, help="absolute unix time: stop training (and save) by then")
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--anchors", type=int, default=32, help="anchors (blocks) per sequence")
    t.add_argument("--max-len", type=int, default=512)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--warmup", type=int, default=50)
    t.add_argument("--weight-decay", type=float, default=0.01)
    t.add_argument("--clip", type=float, default=1.0)
    t.add_argument("--kl-temperature", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--save-every", type=int, default=500)
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--save-dtype", choices=["bfloat16", "float16", "float32"], default=None,
                   help="dtype of the final head's weights (default: float32)")
    t.add_argument("--eval-prompts", default=None, help="held-out prompts for the final evaluation")
    t.add_argument("--eval-num", type=int, default=20)
    t.add_argument("--eval-budgets", default="16,64,128")
    t.add_argument("--eval-width", type=int, default=7)
    t.add_argument("--eval-max-new-tokens", type=int, default=128)
    t.add_argument("--eval-ar", action="store_true", help="also time the AR baseline (speedup)")
    t.add_argument("--cuda-graph", action="store_true", help="CUDA graphs in the evaluation decoder")
    t.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")


def _build_head(args, tok, tcfg) -> JetSpecDraftHead:
    """The head ``run`` trains: from ``--resume`` (``auto``: OUT/checkpoint if there is one),
    else ``--init-head``, else a fresh head for the target."""
    if args.resume == "auto":
        args.resume = os.path.join(args.out, "checkpoint")
        if not os.path.isfile(os.path.join(args.resume, TRAINER_STATE)):
            log(f"--resume: no checkpoint in {args.resume}; starting fresh")
            args.resume = None
    if args.resume:
        return JetSpecDraftHead.from_pretrained(args.resume)
    if args.init_head:
        return JetSpecDraftHead.from_pretrained(args.init_head)
    mask_id = args.mask_token_id
    if mask_id is None and getattr(tok, "mask_token_id", None) is not None:
        mask_id = int(tok.mask_token_id)
    taps = [int(x) for x in args.taps.split(",")] if args.taps else None
    torch.manual_seed(args.seed)
    return JetSpecDraftHead.for_target(tcfg, num_layers=args.num_layers, block_size=args.block_size,
                                       mask_token_id=mask_id, target_layer_ids=taps,
                                       causal=args.attention == "causal")


def run(args) -> dict:
    """``jetspec train`` with parsed arguments; returns the summary written to OUT/summary.json."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t_start = time.time()
    # The training settings first: a bad combination is refused before any model load or regeneration.
    cfg = TrainConfig(steps=args.steps if args.steps is not None else (None if args.minutes else 1000),
                      minutes=args.minutes, end_by=args.end_by, batch_size=args.batch_size,
                      anchors=args.anchors, max_len=args.max_len, lr=args.lr, warmup=args.warmup,
                      weight_decay=args.weight_decay, clip=args.clip, kl_temperature=args.kl_temperature,
                      seed=args.seed, save_every=args.save_every, log_every=args.log_every,
                      save_dtype=args.save_dtype, max_epochs=args.max_epochs, block_fill=args.block_fill,
                      block_noise=args.block_noise, block_noise_in_loss=not args.block_noise_no_loss,
                      block_noise_blocks=args.block_noise_blocks, block_noise_from=args.block_noise_from,
                      block_noise_ramp=args.block_noise_ramp, slot_weight_gamma=args.slot_weight_gamma)
    if args.target is None:
        from .demo import demo_target_dir
        args.target = demo_target_dir()
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    os.makedirs(args.out, exist_ok=True)
    if not os.path.isfile(os.path.join(args.target, "config.json")):
        raise ValueError(f"target {args.target!r}: no config.json (expected a Hugging Face model directory)")
    tcfg = AutoConfig.from_pretrained(args.target)
    tok = AutoTokenizer.from_pretrained(args.tokenizer or args.target)
    model = AutoModelForCausalLM.from_pretrained(args.target, dtype=dtype).to(dev).eval()
    model.requires_grad_(False)
    stops = stop_ids_for(tok, model)

    # ---- head (none when only regenerating)
    head = None if args.regenerate_only else _build_head(args, tok, tcfg)
    if head is not None:
        head.check_target(tcfg)
        if cfg.block_noise_from > head.block_size - 1:  # refused before any regeneration
            raise ValueError(f"--block-noise-from {cfg.block_noise_from} is past the head's last mask slot "
                             f"({head.block_size - 1}, block {head.block_size})")
        log(f"head: {len(head.layers)} layers, taps {head.target_layer_ids}, block {head.block_size}, "
            f"mask id {head.mask_token_id}, {'causal' if head.causal else 'bidirectional'}")

    # ---- data
    texts: List[str] = []
    for p in args.prompts:
        texts += read_prompts(p, args.num_prompts)
    pids = [x[-(args.max_len // 2):] for x in encode_prompts(tok, texts, args.chat, args.thinking)]
    cache = args.cache or os.path.join(args.out, "regen.jsonl")
    end_gen = time.time() + args.gen_minutes * 60 if args.gen_minutes is not None else None
    if args.gen_end_by is not None:
        end_gen = args.gen_end_by if end_gen is None else min(end_gen, args.gen_end_by)
    t_gen = time.time()
    samples = regenerate(model, pids, cache, max_new_tokens=args.gen_max_new_tokens,
                         batch_size=args.gen_batch_size, temperature=args.gen_temperature,
                         eos_token_id=stops or None, pad_token_id=tok.pad_token_id or 0, seed=args.seed,
                         end_by=end_gen)
    n_resp = sum(len(s.response_ids) for s in samples)
    log(f"data: {len(samples)} regenerated samples of {len(pids)} prompts, {n_resp} response tokens")
    if args.regenerate_only:
        summary = {"target": os.path.abspath(args.target), "cache": os.path.abspath(cache),
                   "regenerate": {"prompts": len(pids), "samples": len(samples), "response_tokens": n_resp,
                                  "empty_or_one_token": sum(len(s.response_ids) <= 1 for s in samples),
                                  "seconds": round(time.time() - t_gen, 1),
                                  "max_new_tokens": args.gen_max_new_tokens},
                   "wall_s": round(time.time() - t_start, 1)}
        _write_json(os.path.join(args.out, "summary.json"), summary)
        log(f"regenerate-only: done in {summary['wall_s']} s ({cache})")
        return summary
    if not samples:
        raise ValueError(f"no regenerated samples in {cache} for these prompts and settings (the cache is keyed "
                         "by prompt ids + --gen-max-new-tokens / --gen-temperature / stop ids / --seed; "
                         "--gen-minutes 0 uses only the cache)")

    # ---- train
    summary = {"target": os.path.abspath(args.target), "train": train_head(model, head, samples, cfg, args.out,
                                                                           resume=args.resume)}
    summary["attention"] = "causal" if head.causal else "bidirectional"
    _write_json(os.path.join(args.out, "summary.json"), summary)

    # ---- eval
    if args.eval_prompts:
        ev_texts = read_prompts(args.eval_prompts, args.eval_num)
        ev_ids = [encode_prompt(tok, t, args.chat, args.thinking) for t in ev_texts]
        final = JetSpecDraftHead.from_pretrained(os.path.join(args.out, "head"))
        budgets = [int(x) for x in args.eval_budgets.split(",") if x]
        summary["eval"] = evaluate(model, final, ev_ids, budgets=budgets, width=args.eval_width,
                                   max_new_tokens=args.eval_max_new_tokens, stop_token_ids=stops,
                                   cuda_graph=args.cuda_graph, measure_ar=args.eval_ar,
                                   warmup=args.cuda_graph and model.lm_head.weight.is_cuda)
        _write_json(os.path.join(args.out, "summary.json"), summary)
    summary["wall_s"] = round(time.time() - t_start, 1)
    _write_json(os.path.join(args.out, "summary.json"), summary)
    log(f"done in {summary['wall_s']} s: head in {os.path.join(args.out, 'head')}")
    return summary


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)
