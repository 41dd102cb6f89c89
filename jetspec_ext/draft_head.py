"""The JetSpec causal parallel draft head (DESIGN §1) in the published checkpoint format (§2).

Architecture
------------
A small stack of Qwen3 decoder layers that owns neither an embedding nor an LM head (it borrows
the target's ``embed_tokens`` and ``lm_head``). Its context is the *fused target feature* of every
committed token: the hidden states of the tapped target layers, concatenated, projected by the
bias-free ``fc`` and RMS-normed by ``hidden_norm``. In each draft layer, the context keys/values
are that layer's own ``k_proj`` (+ ``k_norm`` + RoPE) and ``v_proj`` applied to the fused
feature; nothing else is kept for context positions, so they live in a cache that grows with the
committed tokens (:meth:`JetSpecDraftHead.extend_context`).

Each round the head runs one forward over the block ``[anchor, MASK x D]`` at positions
``ctx_len .. ctx_len + D`` (:meth:`JetSpecDraftHead.forward_block`). Attention inside the block
is causal: block position i sees all context plus block positions 0..i. With
``dflash_config.causal_head = false`` (a DFlash-style head, e.g. ``jetspec train --attention
bidirectional``) every block position sees the whole block instead (:meth:`block_mask`). Block position i >= 1
predicts the token at ``anchor + i``; the target's ``lm_head`` on the normed outputs of
positions 1..D gives the per-depth logits ``(B, D, V)``.

Tapped layer ids
----------------
As in the public JetSpec/DFlash code (``extract_context_feature`` in
hao-ai-lab/JetSpec ``jetspec/models/draft_head.py``: "target layer L is hidden_states[L + 1]"),
layer id ``k`` means **the output of target decoder layer k** (0-based), i.e.
``hidden_states[k + 1]`` of Hugging Face's ``output_hidden_states`` tuple, whose entry 0 is the
embedding output. Fresh heads tap ``len = num_draft_layers`` layers evenly spaced from layer 1 to
layer L-3 (``round(1 + i * (L - 4) / (n - 1))``), e.g. 1, 9, 17, 25, 33 for Qwen3-8B (L = 36).

Caches
------
The context cache is one stacked tensor ``(L_draft, 2, B, Hkv, S, Dh)`` (key = index 0). The
block's own keys/values are written at slots ``ctx_len .. ctx_len + D`` of the same cache (the
next context growth overwrites them), so one ``tree_attention`` call with a lower-triangular
"chain" mask serves each draft layer.
"""
import json
import os
from typing import List, Optional, Sequence

import torch
from torch import nn
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3MLP,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
    rotate_half,
)

from .op_select import linear, linear_add, op, plain_linear
from .ops.attention import head_dim_problem

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


# --------------------------------------------------------------------------------------------
# Small helpers shared with the target side and the decoder
# --------------------------------------------------------------------------------------------
def pack_mask(bits: torch.Tensor) -> torch.Tensor:
    """Bool ``(..., N, N)`` -> packed int32 ``(..., N, ceil(N/32))`` (bit j%32 of word j//32)."""
    N = bits.shape[-1]
    W = (N + 31) // 32
    padded = torch.zeros(*bits.shape[:-1], W * 32, dtype=torch.int64, device=bits.device)
    padded[..., :N] = bits.to(torch.int64)
    words = (padded.view(*bits.shape[:-1], W, 32) << torch.arange(32, device=bits.device)).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def chain_mask(n: int, batch: int = 1, device=None) -> torch.Tensor:
    """Packed causal mask of a chain of n tokens: ``(batch, n, ceil(n/32))`` int32."""
    bits = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    return pack_mask(bits).unsqueeze(0).expand(batch, -1, -1).contiguous()


def full_mask(n: int, batch: int = 1, device=None) -> torch.Tensor:
    """Packed all-visible mask of n tokens (bidirectional block): ``(batch, n, ceil(n/32))`` int32."""
    bits = torch.ones(n, n, dtype=torch.bool, device=device)
    return pack_mask(bits).unsqueeze(0).expand(batch, -1, -1).contiguous()


def default_target_layer_ids(num_target_layers: int, num_taps: int) -> List[int]:
    """Tapped target layers evenly spaced from layer 1 to layer L-3 (the public convention)."""
    if num_taps == 1:
        return [num_target_layers // 2]
    start, end = 1, num_target_layers - 3
    return [int(round(start + i * (end - start) / (num_taps - 1))) for i in range(num_taps)]


def scatter_slots(cache: torch.Tensor, slots: torch.Tensor, values: torch.Tensor,
                  rows: Optional[torch.Tensor] = None) -> None:
    """cache ``(B, H, S, Dh)`` [b, :, slots[b, i]] = values ``(B, H, n, Dh)``; slots ``(B, n)``
    int64; rows ``(B, 1)`` int64 = ``arange(B)`` (made here when not given).

    A device-side ``index_put_`` (no host sync, static shapes), so it can sit in a CUDA graph;
    under torch.compile it is re-inplaced into the cache and fused with the producer of values.
    """
    if rows is None:
        rows = torch.arange(slots.shape[0], device=slots.device).unsqueeze(1)
    cache[rows, :, slots] = values.transpose(1, 2).to(cache.dtype)


# --------------------------------------------------------------------------------------------
# Modules (parameter names = the published safetensors names)
# --------------------------------------------------------------------------------------------
class DraftAttention(nn.Module):
    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.scaling = self.head_dim ** -0.5
        bias = getattr(config, "attention_bias", False)
        H = config.hidden_size
        self.q_proj = nn.Linear(H, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(H, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(H, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, H, bias=bias)
        self.q_norm = Qwen3RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = Qwen3RMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def keys_values(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x ``(B, n, H)`` -> k, v ``(B, Hkv, n, Dh)`` (k normed and rotated)."""
        return self.kv_heads(self.k_proj(x), self.v_proj(x), cos, sin)

    def queries(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x ``(B, n, H)`` -> q ``(B, Hq, n, Dh)`` (normed and rotated)."""
        return self.q_heads(self.q_proj(x), cos, sin)

    # The steps after the projections, shared with the fused-projection decoding path
    # (:func:`_draft_layer_fused`, :func:`extend_layers`), which projects q|k|v in one GEMM.
    def kv_heads(self, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Projected k, v ``(B, n, Hkv * Dh)`` -> ``(B, Hkv, n, Dh)`` each (k normed and rotated)."""
        B, n, _ = k.shape
        k = self.k_norm(k.view(B, n, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = v.view(B, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return _rope(k, cos, sin), v

    def q_heads(self, q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Projected q ``(B, n, Hq * Dh)`` -> ``(B, Hq, n, Dh)`` (normed and rotated)."""
        B, n, _ = q.shape
        q = self.q_norm(q.view(B, n, self.num_heads, self.head_dim)).transpose(1, 2)
        return _rope(q, cos, sin)

    def attend(self, q, k, v, k_cache, v_cache, ctx_lens, slots, mask, attn=None, rows=None,
               project: bool = True):
        """q ``(B, Hq, N, Dh)``, k, v ``(B, Hkv, N, Dh)`` of the block: write k/v at ``slots``,
        attend (tree_attention), project out -> ``(B, N, H)`` (``project=False``: the attention
        output ``(B, N, Hq * Dh)`` before o_proj)."""
        B, _, N, _ = q.shape
        scatter_slots(k_cache, slots, k, rows)
        scatter_slots(v_cache, slots, v, rows)
        if attn is None:
            attn = op("tree_attention", q.device, q.dtype)
        out, _ = attn(q.transpose(1, 2), k_cache, v_cache, ctx_lens, mask, self.scaling)
        out = out.reshape(B, N, -1)
        return self.o_proj(out) if project else out

    def forward(self, x, cos, sin, k_cache, v_cache, ctx_lens, slots, mask, attn=None, rows=None):
        """Block attention. x ``(B, N, H)`` (normed). Writes the block's k/v at ``slots``.
        attn: the tree_attention implementation (default: resolved here); rows: ``arange(B)``
        ``(B, 1)`` for the slot writes (default: made here)."""
        q = self.queries(x, cos, sin)
        k, v = self.keys_values(x, cos, sin)
        return self.attend(q, k, v, k_cache, v_cache, ctx_lens, slots, mask, attn, rows)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on x ``(B, H, n, Dh)`` with cos/sin ``(B, n, Dh)`` from Qwen3RotaryEmbedding."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


class DraftLayer(nn.Module):
    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.self_attn = DraftAttention(config)
        self.mlp = Qwen3MLP(config)
        self.input_layernorm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x, cos, sin, k_cache, v_cache, ctx_lens, slots, mask, attn=None, rows=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, k_cache, v_cache, ctx_lens, slots, mask,
                               attn, rows)
        return x + self.mlp(self.post_attention_layernorm(x))


class JetSpecDraftHead(nn.Module):
    """The causal parallel draft head. ``config`` is a Qwen3Config carrying ``dflash_config``
    (``causal_head``, ``target_layer_ids``, ``mask_token_id``, ``target_hidden_size``),
    ``block_size`` and ``num_target_layers``."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        dc = dict(getattr(config, "dflash_config", None) or {})
        if "target_layer_ids" not in dc:
            dc["target_layer_ids"] = default_target_layer_ids(config.num_target_layers, config.num_hidden_layers)
        dc.setdefault("target_hidden_size", config.hidden_size)
        dc.setdefault("causal_head", True)
        config.dflash_config = dc
        self.config = config
        self.layers = nn.ModuleList(DraftLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        n_taps = len(dc["target_layer_ids"])
        self.fc = nn.Linear(n_taps * dc["target_hidden_size"], config.hidden_size, bias=False)
        self.hidden_norm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen3RotaryEmbedding(config)  # inv_freq is a non-persistent buffer

    # ---- config accessors ----
    @property
    def target_layer_ids(self) -> List[int]:
        return list(self.config.dflash_config["target_layer_ids"])

    @property
    def mask_token_id(self) -> int:
        return int(self.config.dflash_config["mask_token_id"])

    @property
    def causal(self) -> bool:
        """True: causal attention inside the block (JetSpec); False: bidirectional (DFlash)."""
        return bool(self.config.dflash_config.get("causal_head", True))

    def block_mask(self, n: int, batch: int = 1, device=None) -> torch.Tensor:
        """Packed in-block mask for a block of n tokens: causal (lower triangle) or, for a
        ``causal_head = false`` head, all ones."""
        return (chain_mask if self.causal else full_mask)(n, batch, device)

    @property
    def block_size(self) -> int:
        return int(self.config.block_size)

    @property
    def head_dim(self) -> int:
        return self.layers[0].self_attn.head_dim

    # ---- construction / IO ----
    @classmethod
    def for_target(cls, target_config, num_layers: int = 5, block_size: int = 16,
                   mask_token_id: Optional[int] = None, target_layer_ids: Optional[Sequence[int]] = None,
                   num_taps: Optional[int] = None, device=None, causal: bool = True,
                   **overrides) -> "JetSpecDraftHead":
        """A fresh (randomly initialised) head for a target with config ``target_config``.

        Width, heads, head dim, MLP size, norm eps and RoPE follow the target (the head borrows
        its embedding and LM head, so hidden and vocab sizes must match). ``num_taps`` defaults
        to ``num_layers``, as in the public code. ``mask_token_id`` defaults to vocab_size - 1.
        ``device="meta"`` builds it without memory or initialisation (then ``to_empty`` +
        :meth:`init_weights` + :meth:`reset_rotary`, e.g. to build a large head fast on a GPU).
        ``causal=False`` makes a bidirectional (DFlash-style) head (``causal_head: false``).
        """
        tc = target_config
        L = tc.num_hidden_layers
        ids = list(target_layer_ids) if target_layer_ids is not None else \
            default_target_layer_ids(L, num_taps or num_layers)
        kw = dict(
            hidden_size=tc.hidden_size,
            intermediate_size=tc.intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=tc.num_attention_heads,
            num_key_value_heads=tc.num_key_value_heads,
            head_dim=getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads,
            hidden_act=getattr(tc, "hidden_act", "silu"),
            rms_norm_eps=tc.rms_norm_eps,
            vocab_size=tc.vocab_size,
            max_position_embeddings=tc.max_position_embeddings,
            rope_parameters=dict(getattr(tc, "rope_parameters", None) or {"rope_type": "default", "rope_theta": getattr(tc, "rope_theta", 1e6)}),
            tie_word_embeddings=False,
            attention_bias=getattr(tc, "attention_bias", False),
        )
        kw.update(overrides)
        config = Qwen3Config(**kw)
        config.block_size = block_size
        config.num_target_layers = L
        config.dflash_config = {
            "causal_head": bool(causal),
            "target_layer_ids": ids,
            "mask_token_id": int(mask_token_id if mask_token_id is not None else tc.vocab_size - 1),
            "target_hidden_size": tc.hidden_size,
        }
        with torch.device(device or "cpu"):
            head = cls(config)
        if str(device) != "meta":
            head.init_weights(getattr(tc, "initializer_range", 0.02))
        return head

    def reset_rotary(self) -> None:
        """Rebuild the RoPE buffer (non-persistent; lost by ``to_empty`` / meta construction)."""
        self.rotary_emb = Qwen3RotaryEmbedding(self.config).to(self.fc.weight.device)

    def init_weights(self, std: float = 0.02) -> None:
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                nn.init.ones_(p)
            elif p.dim() == 2:
                nn.init.normal_(p, 0.0, std)
            else:
                nn.init.zeros_(p)

    @classmethod
    def from_pretrained(cls, path: str, device=None, dtype: Optional[torch.dtype] = None) -> "JetSpecDraftHead":
        """Load a published JetSpec head directory (config.json + *.safetensors) unchanged."""
        from safetensors.torch import load_file

        cfg_path = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"draft head: no {CONFIG_NAME} in {path!r} (expected a JetSpec head directory)")
        with open(cfg_path) as f:
            raw = json.load(f)
        if "dflash_config" not in raw:
            raise ValueError(f"draft head: {cfg_path} has no 'dflash_config'; not a JetSpec/DFlash draft head")
        # causal_head false (a bidirectional DFlash-style head) is served too: block_mask() then
        # lets every block position see the whole block, in training and in decoding.
        raw.pop("architectures", None)
        raw.pop("auto_map", None)
        raw.pop("model_type", None)
        config = Qwen3Config(**raw)
        for k in ("block_size", "num_target_layers", "dflash_config"):
            setattr(config, k, raw.get(k))
        if config.block_size is None:
            raise ValueError(f"draft head: {cfg_path} has no 'block_size'")
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            raise FileNotFoundError(f"draft head: no *.safetensors weights in {path!r}")
        with torch.device("meta"):
            head = cls(config)
        state = {}
        for f in files:
            state.update(load_file(os.path.join(path, f)))
        expected = set(head.state_dict().keys())
        missing, unexpected = expected - state.keys(), state.keys() - expected
        if missing or unexpected:
            raise ValueError(f"draft head: weights in {path!r} do not match the config: missing "
                             f"{sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}")
        for k, t in state.items():
            want = head.state_dict()[k].shape
            if tuple(t.shape) != tuple(want):
                raise ValueError(f"draft head: {k} has shape {tuple(t.shape)}, config implies {tuple(want)}")
        head.load_state_dict(state, assign=True)
        head.reset_rotary()
        head = head.to(device=device) if device is not None else head
        return head.to(dtype=dtype) if dtype is not None else head

    def save_pretrained(self, path: str) -> None:
        """Write config.json + model.safetensors in the published format."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        d = self.config.to_dict()
        d["architectures"] = ["DFlashDraftModel"]
        d["model_type"] = "qwen3"
        rp = d.get("rope_parameters") or {}
        if "rope_theta" in rp:
            d["rope_theta"] = rp["rope_theta"]  # older readers look here
        d["block_size"] = self.block_size
        d["num_target_layers"] = int(self.config.num_target_layers)
        d["dflash_config"] = dict(self.config.dflash_config)
        with open(os.path.join(path, CONFIG_NAME), "w") as f:
            json.dump(d, f, indent=2, sort_keys=True, default=str)
        # a copy per tensor: a drafter's fused projections make q/k/v (gate/up) views of one
        # storage, which older safetensors releases refuse to save as they are (newer ones accept
        # disjoint views); on the CPU .cpu() alone copies nothing
        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(path, WEIGHTS_NAME), metadata={"format": "pt"})

    def check_target(self, target_config) -> None:
        """Raise ValueError if this head cannot serve a target with ``target_config``."""
        tc = target_config
        dc = self.config.dflash_config
        L = tc.num_hidden_layers
        problems = []
        if self.config.hidden_size != tc.hidden_size:
            problems.append(f"head hidden size {self.config.hidden_size} != target hidden size {tc.hidden_size} "
                            "(the head borrows the target's embedding and LM head)")
        # target_hidden_size equal to the head's own hidden size is the mismatch just said: not again
        if dc["target_hidden_size"] not in (tc.hidden_size, self.config.hidden_size):
            problems.append(f"target hidden size {tc.hidden_size} != head's target_hidden_size "
                            f"{dc['target_hidden_size']}")
        if self.config.vocab_size != tc.vocab_size:
            problems.append(f"head vocab {self.config.vocab_size} != target vocab {tc.vocab_size}")
        bad = [i for i in self.target_layer_ids if not 0 <= i < L]
        if bad:
            problems.append(f"tapped layers {bad} out of range for a {L}-layer target (valid: 0..{L - 1})")
        # the head attends with tree_attention too (chain mask over its block)
        hd_problem = head_dim_problem(self.layers[0].self_attn.head_dim, "draft head's attention")
        if hd_problem:
            problems.append(hd_problem)
        if not 0 <= self.mask_token_id < tc.vocab_size:
            problems.append(f"mask_token_id {self.mask_token_id} outside the vocabulary ({tc.vocab_size})")
        if problems:
            raise ValueError("draft head does not match the target: " + "; ".join(problems))

    # ---- cache + forward ----
    def new_context_cache(self, batch: int, max_len: int, device=None, dtype=None) -> torch.Tensor:
        """Zeroed context cache ``(L_draft, 2, B, Hkv, max_len, Dh)``."""
        p = self.fc.weight
        a = self.layers[0].self_attn
        return torch.zeros(len(self.layers), 2, batch, a.num_kv_heads, max_len, a.head_dim,
                           device=device or p.device, dtype=dtype or p.dtype)

    def fuse(self, tapped: torch.Tensor) -> torch.Tensor:
        """Concatenated tapped features ``(B, n, T * Ht)`` -> fused feature ``(B, n, H)``."""
        return self.hidden_norm(self.fc(tapped.to(self.fc.weight.dtype)))

    def extend_context(self, cache: torch.Tensor, ctx_lens: torch.Tensor, tapped: torch.Tensor) -> None:
        """Append n committed tokens' context keys/values at slots ``ctx_lens + j``.

        cache ``(L_draft, 2, B, Hkv, S, Dh)``; ctx_lens ``(B,)`` int32 (not modified: the caller
        advances it); tapped ``(B, n, T * Ht)``: the tapped target features of the tokens at
        positions ``ctx_lens + j``. Static shapes: rows beyond a row's real count may be
        garbage, they are overwritten before being attended to.
        """
        extend_layers(self, layer_caches(cache), ctx_lens, tapped)

    def forward_block(self, cache: torch.Tensor, ctx_lens: torch.Tensor, block_embeds: torch.Tensor,
                      mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One draft forward over the block at positions ``ctx_lens + i``.

        block_embeds ``(B, D+1, H)``: target embeddings of ``[anchor, MASK x D]``. Returns the
        normed hidden states ``(B, D+1, H)``; apply the target's lm_head to rows 1..D.
        ``mask`` defaults to :meth:`block_mask` (causal, or full for a bidirectional head).
        The block's keys/values are written at slots ``ctx_lens + i`` of ``cache``.
        """
        B, N, _ = block_embeds.shape
        if mask is None:
            mask = self.block_mask(N, B, block_embeds.device)
        attn = op("tree_attention", block_embeds.device, self.fc.weight.dtype)
        return block_layers(self, layer_caches(cache), ctx_lens, block_embeds, mask, attn)


# --------------------------------------------------------------------------------------------
# The head's two computations as plain functions of (head, per-layer cache views, tensors): what
# the methods above run, and what the decoder compiles (torch.compile) when asked. Each layer's
# keys and values come as separate views of the stacked cache, so compiled code writes them in
# place (a mutated view of one stacked input would make the compiled graph copy the cache).
# --------------------------------------------------------------------------------------------
def layer_caches(cache: torch.Tensor) -> List[torch.Tensor]:
    """Stacked cache ``(L, 2, B, Hkv, S, Dh)`` -> ``[k_0, v_0, k_1, v_1, ...]`` views."""
    return [cache[i, j] for i in range(cache.shape[0]) for j in (0, 1)]


def extend_layers(head: "JetSpecDraftHead", caches: List[torch.Tensor], ctx_lens: torch.Tensor,
                  tapped: torch.Tensor, fused: Optional[Sequence] = None, fc_weight=None) -> None:
    """:meth:`JetSpecDraftHead.extend_context` on per-layer views (see :func:`layer_caches`).
    ``fused``: per layer ``(w_qkv, w_gate_up, ...)`` (see :func:`_draft_layer_fused`): each
    layer's context k|v is then ONE GEMM with the k|v rows of ``w_qkv``. ``fc_weight``: what
    ``fc``'s GEMM reads instead of ``fc.weight`` (with ``fused``; e.g. an
    :class:`jetspec_ext.fp8.Fp8Weight` copy)."""
    B, n, _ = tapped.shape
    pos = ctx_lens.to(torch.int64).unsqueeze(1) + torch.arange(n, device=tapped.device)
    rows = torch.arange(B, device=tapped.device).unsqueeze(1)
    fc = head.fc
    if fused is not None and plain_linear(fc):  # head.fuse's maths, fc through op_select.linear
        x = head.hidden_norm(linear(tapped.to(fc.weight.dtype), fc.weight if fc_weight is None else fc_weight))
    else:
        x = head.fuse(tapped)
    cos, sin = head.rotary_emb(x, pos)
    for i, layer in enumerate(head.layers):
        a = layer.self_attn
        if fused is None:
            k, v = a.keys_values(x, cos, sin)
        else:
            w_qkv = fused[i][0]
            nq, nkv = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
            k, v = linear(x, w_qkv.narrow(0, nq, 2 * nkv)).split([nkv, nkv], dim=-1)
            k, v = a.kv_heads(k, v, cos, sin)
        scatter_slots(caches[2 * i], pos, k, rows)
        scatter_slots(caches[2 * i + 1], pos, v, rows)


# Why: decoding runs the head on a block of only D+1 tokens, where each of a layer's 7 small GEMMs
# (plus split-K reductions) costs about the same; one q|k|v GEMM and one gate|up GEMM per layer
# make it 4. The weights are fused once by the drafter (target._fuse_group: the modules'
# Parameters become views of the fused tensors, so nothing is copied and training, save and
# load see the same modules) and come in as tensor arguments. Maths: DraftLayer.forward's.
def _draft_layer_fused(layer: DraftLayer, w_qkv: torch.Tensor, w_gate_up: torch.Tensor, x, cos, sin,
                       k_cache, v_cache, ctx_lens, slots, mask, attn, rows, w_o=None, w_down=None):
    """:class:`DraftLayer` forward with ``w_qkv`` ``(Hq*Dh + 2*Hkv*Dh, H)`` (rows q | k | v)
    and ``w_gate_up`` ``(2*I, H)`` (rows gate | up) instead of the five separate projections;
    ``w_o`` / ``w_down``: what o_proj / down_proj read instead of their modules' weights (None:
    the modules'). Any of the four may be an :class:`jetspec_ext.fp8.Fp8Weight` copy
    (``op_select.linear`` dispatches)."""
    a, mlp = layer.self_attn, layer.mlp
    w_o = a.o_proj.weight if w_o is None else w_o
    w_down = mlp.down_proj.weight if w_down is None else w_down
    nq, nkv = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    q, k, v = linear(layer.input_layernorm(x), w_qkv).split([nq, nkv, nkv], dim=-1)
    k, v = a.kv_heads(k, v, cos, sin)
    o = a.attend(a.q_heads(q, cos, sin), k, v, k_cache, v_cache, ctx_lens, slots, mask, attn, rows, project=False)
    x = linear_add(x, o, w_o)  # plain bias-free Linears (_fusable)
    gate, up = linear(layer.post_attention_layernorm(x), w_gate_up).chunk(2, dim=-1)
    return linear_add(x, mlp.act_fn(gate) * up, w_down)


def block_layers(head: "JetSpecDraftHead", caches: List[torch.Tensor], ctx_lens: torch.Tensor,
                 block_embeds: torch.Tensor, mask: torch.Tensor, attn,
                 fused: Optional[Sequence] = None) -> torch.Tensor:
    """:meth:`JetSpecDraftHead.forward_block` on per-layer views, with the tree_attention
    implementation ``attn`` given. ``fused``: per layer ``(w_qkv, w_gate_up)`` to run
    :func:`_draft_layer_fused` instead of the layer's forward (4-tuples ``(w_qkv, w_gate_up,
    w_o, w_down)`` also give o_proj's and down_proj's weights, e.g. fp8 copies)."""
    B, N, _ = block_embeds.shape
    pos = ctx_lens.to(torch.int64).unsqueeze(1) + torch.arange(N, device=block_embeds.device)
    rows = torch.arange(B, device=block_embeds.device).unsqueeze(1)
    x = block_embeds.to(head.fc.weight.dtype)
    cos, sin = head.rotary_emb(x, pos)
    for i, layer in enumerate(head.layers):
        if fused is None:
            x = layer(x, cos, sin, caches[2 * i], caches[2 * i + 1], ctx_lens, pos, mask, attn, rows)
        else:
            x = _draft_layer_fused(layer, fused[i][0], fused[i][1], x, cos, sin, caches[2 * i],
                                   caches[2 * i + 1], ctx_lens, pos, mask, attn, rows, *fused[i][2:])
    return head.norm(x)
