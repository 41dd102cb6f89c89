"""The target side: a Hugging Face Qwen3ForCausalLM used as it is, with a static stacked KV cache
and tree attention plugged in through transformers' AttentionInterface.

* KV cache: ONE tensor ``(L, 2, B, Hkv, S, Dh)`` (index 0 = keys), so ``commit_kv`` moves the
  accepted path of every layer in one launch.
* Attention: :func:`jetspec_attention` is registered as the attention implementation
  ``"jetspec"``. When a forward is called with ``jetspec_ctx=<TargetCall>`` it writes the new
  keys/values (already normed and rotated by the HF module) into the stacked cache at slots
  ``prefix_len + i`` and attends with ``jetspec_ext.tree_attention`` (tree / single-token
  calls) or SDPA (prefill). Without ``jetspec_ctx`` it defers to HF's SDPA, so the model still
  works with ``model.generate``.
* Positions: ``prefix_len + depth`` passed as ``position_ids``; HF's rotary embedding does the rest.
  The causal-mask construction of HF is bypassed by passing an already-prepared (empty) mask
  mapping.
* Tapped features: ``output_hidden_states=True``; tapped layer id k is ``hidden_states[k + 1]``
  (the output of decoder layer k), concatenated along the feature axis.
* Logits: only for the rows the caller asks for (``logits_rows``).
"""
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from .draft_head import scatter_slots
from .op_select import op

ATTN_NAME = "jetspec"
SUPPORTED_MODEL_TYPES = ("qwen3", "qwen3_moe")


@dataclass
class TargetCall:
    """What one jetspec forward needs inside the attention function."""
    kv: torch.Tensor            # (L, 2, B, Hkv, S, Dh) stacked cache
    prefix_lens: torch.Tensor   # (B,) int32: committed length per row
    slots: torch.Tensor         # (B, N) int64: cache slot of each new token (prefix_len + i)
    tree_mask: Optional[torch.Tensor] = None  # (B, N, ceil(N/32)) int32; None = causal prefill
    attn: Optional[Callable] = None           # tree_attention implementation (resolved by the caller)


def jetspec_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                      jetspec_ctx: Optional[TargetCall] = None, **kwargs):
    """AttentionInterface function. query ``(B, Hq, N, Dh)``, key/value ``(B, Hkv, N, Dh)``.

    Returns ``(out (B, N, Hq, Dh), None)`` as HF's attention functions do.
    """
    if jetspec_ctx is None:  # plain HF use of the model (e.g. model.generate): SDPA
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    c = jetspec_ctx
    k_cache, v_cache = c.kv[module.layer_idx, 0], c.kv[module.layer_idx, 1]
    scatter_slots(k_cache, c.slots, key)
    scatter_slots(v_cache, c.slots, value)
    if c.tree_mask is not None:
        attn = c.attn or op("tree_attention", query.device, query.dtype)
        out, _ = attn(query.transpose(1, 2), k_cache, v_cache, c.prefix_lens, c.tree_mask,
                      float(scaling if scaling is not None else query.shape[-1] ** -0.5))
        return out, None
    # Causal prefill (host-known lengths; happens once per prompt): SDPA over prefix + new keys.
    B, Hq, N, Dh = query.shape
    P = int(c.slots[0, 0])
    k = k_cache[:, :, : P + N]
    v = v_cache[:, :, : P + N]
    rep = Hq // k.shape[1]
    if rep > 1:
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    allow = torch.ones(N, P + N, dtype=torch.bool, device=query.device).tril(diagonal=P)
    out = F.scaled_dot_product_attention(query, k.to(query.dtype), v.to(query.dtype), attn_mask=allow, scale=scaling)
    return out.transpose(1, 2), None


AttentionInterface.register(ATTN_NAME, jetspec_attention)


class Target:
    """Wraps a Hugging Face causal LM (Qwen3 family) with the jetspec static cache and forwards.

    Args:
        model: a ``Qwen3ForCausalLM`` (or Qwen3-MoE) instance, used unchanged apart from
            selecting the ``"jetspec"`` attention implementation (which defers to SDPA when
            called the normal HF way).
        tapped_layer_ids: target layers whose outputs feed the draft head (may be empty).
        compile: run the HF decoder stack (``model.model``) through ``torch.compile``
            (static shapes; the jetspec ops are traced as custom ops through their fake kernels).
            Prefill stays eager. Experimental: the fast path the issue asks for.
    """

    def __init__(self, model, tapped_layer_ids: Sequence[int] = (), compile: bool = False):
        cfg = model.config
        if getattr(cfg, "model_type", None) not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"unsupported target model type {getattr(cfg, 'model_type', None)!r}: "
                             f"jetspec supports {', '.join(SUPPORTED_MODEL_TYPES)}")
        L = cfg.num_hidden_layers
        bad = [i for i in tapped_layer_ids if not 0 <= i < L]
        if bad:
            raise ValueError(f"tapped layers {bad} out of range for a {L}-layer target (valid: 0..{L - 1})")
        self.model = model
        self.config = cfg
        self.tapped_layer_ids = list(tapped_layer_ids)
        self.num_layers = L
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.vocab_size = cfg.vocab_size
        self.max_positions = getattr(cfg, "max_position_embeddings", None)
        _set_attn_impl(model, ATTN_NAME)
        self._body = torch.compile(model.model, dynamic=False) if compile else model.model

    @property
    def device(self):
        return self.model.lm_head.weight.device

    @property
    def dtype(self):
        return self.model.lm_head.weight.dtype

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.model.embed_tokens(ids)

    def lm_head(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(h)

    def new_cache(self, batch: int, max_len: int) -> torch.Tensor:
        """Zeroed stacked KV cache ``(L, 2, B, Hkv, max_len, Dh)`` in the model's dtype."""
        return torch.zeros(self.num_layers, 2, batch, self.num_kv_heads, max_len, self.head_dim,
                           device=self.device, dtype=self.dtype)

    def forward(self, kv: torch.Tensor, prefix_lens: torch.Tensor, tokens: torch.Tensor,
                positions: torch.Tensor, tree_mask: Optional[torch.Tensor],
                logits_rows: Optional[torch.Tensor] = None, want_tapped: bool = True):
        """Run the target over new tokens and write their KV at slots ``prefix_lens + i``.

        tokens, positions ``(B, N)`` int64; tree_mask ``(B, N, ceil(N/32))`` int32, or None for a
        causal prefill (all rows the same prefix length). logits_rows: ``(R,)`` int64 row indices
        to compute logits for (None = all N; a 0-length tensor = none).
        Returns (logits ``(B, R, V)`` or None, tapped features ``(B, N, T * H)`` or None).
        """
        B, N = tokens.shape
        slots = prefix_lens.to(torch.int64).unsqueeze(1) + torch.arange(N, device=tokens.device)
        attn = op("tree_attention", kv.device, kv.dtype) if tree_mask is not None else None
        call = TargetCall(kv=kv, prefix_lens=prefix_lens, slots=slots, tree_mask=tree_mask, attn=attn)
        want_hidden = want_tapped and bool(self.tapped_layer_ids)
        body = self._body if tree_mask is not None else self.model.model  # prefill: eager
        out = body(
            input_ids=tokens, position_ids=positions,
            attention_mask={"full_attention": None, "sliding_attention": None},
            use_cache=False, output_hidden_states=want_hidden, jetspec_ctx=call)
        h = out.last_hidden_state
        if logits_rows is not None:
            h = h.index_select(1, logits_rows) if logits_rows.numel() else None
        logits = self.lm_head(h) if h is not None else None
        tapped = None
        if want_hidden:
            hs = out.hidden_states
            tapped = torch.cat([hs[k + 1] for k in self.tapped_layer_ids], dim=-1)
        return logits, tapped


def _set_attn_impl(model, name: str) -> None:
    """Select an attention implementation on every (sub)config, across transformers versions."""
    if hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation(name)
            return
        except Exception:  # older / stricter versions: fall back to setting the config field
            pass
    model.config._attn_implementation = name
