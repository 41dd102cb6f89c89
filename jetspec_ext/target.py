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
* Positions: ``prefix_len + depth``; HF's rotary embedding (called once per forward) gives the
  cos/sin every layer uses. HF's causal-mask construction is not used (``attention_mask=None``).
* The forward loops over the HF decoder layers itself (``layer.forward``), giving each layer its
  own K / V cache views, and optionally runs through ``torch.compile`` regionally (see
  :class:`Target`, docs/decoder.md).
* Tapped features: the output of decoder layer k (= HF's ``hidden_states[k + 1]``; for the last
  layer, as in HF, after the final norm), concatenated along the feature axis.
* Logits: only for the rows the caller asks for (``logits_rows``).
"""
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from .draft_head import scatter_slots
from .op_select import op

ATTN_NAME = "jetspec"
SUPPORTED_MODEL_TYPES = ("qwen3", "qwen3_moe")


@dataclass
class TargetCall:
    """What one jetspec forward of ONE decoder layer needs inside the attention function.

    The layer's own cache views ``k_cache`` / ``v_cache`` (of the stacked cache) are
    carried here, so nothing per layer (like ``module.layer_idx``) is read inside the layer: the
    layers are then structurally identical and one compiled graph serves all of them."""
    k_cache: torch.Tensor       # (B, Hkv, S, Dh): this layer's keys (a view of the stacked cache)
    v_cache: torch.Tensor       # (B, Hkv, S, Dh): this layer's values
    prefix_lens: torch.Tensor   # (B,) int32: committed length per row
    rows: torch.Tensor          # (B, 1) int64: arange(B), the batch index of each slot write
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
    k_cache, v_cache = c.k_cache, c.v_cache
    scatter_slots(k_cache, c.slots, key, c.rows)
    scatter_slots(v_cache, c.slots, value, c.rows)
    scale = float(scaling if scaling is not None else query.shape[-1] ** -0.5)
    if c.tree_mask is not None:
        out, _ = c.attn(query.transpose(1, 2), k_cache, v_cache, c.prefix_lens, c.tree_mask, scale)
        return out, None
    # Causal prefill (host-known lengths; happens once per prompt, never compiled): SDPA over
    # prefix + new keys.
    B, Hq, N, Dh = query.shape
    P = int(c.slots[0, 0])
    k = k_cache[:, :, : P + N]
    v = v_cache[:, :, : P + N]
    rep = Hq // k.shape[1]
    if rep > 1:
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    allow = torch.ones(N, P + N, dtype=torch.bool, device=query.device).tril(diagonal=P)
    out = F.scaled_dot_product_attention(query, k.to(query.dtype), v.to(query.dtype), attn_mask=allow, scale=scale)
    return out.transpose(1, 2), None


AttentionInterface.register(ATTN_NAME, jetspec_attention)


# --------------------------------------------------------------------------------------------
# The three regions of a forward. Plain functions of (modules, tensors): called as they are
# (eager) or through torch.compile (one compiled graph per input shape; the decoder layers are
# structurally identical and carry nothing per layer, so all of them share ONE graph).
# --------------------------------------------------------------------------------------------
def _pre(embed_tokens, rotary_emb, tokens, positions, prefix_lens):
    """Embedding gather, RoPE cos/sin, cache slots and batch rows of the new tokens."""
    B, N = tokens.shape
    h = embed_tokens(tokens)
    cos, sin = rotary_emb(h, positions)
    slots = prefix_lens.to(torch.int64).unsqueeze(1) + torch.arange(N, device=tokens.device)
    rows = torch.arange(B, device=tokens.device).unsqueeze(1)
    return h, cos, sin, slots, rows


def _layer(layer, h, cos, sin, k_cache, v_cache, prefix_lens, rows, slots, tree_mask, attn):
    """One HF decoder layer (its ``forward``: bypasses module hooks such as transformers'
    output-capturing ones) with the jetspec attention context of this layer."""
    call = TargetCall(k_cache=k_cache, v_cache=v_cache, prefix_lens=prefix_lens, rows=rows, slots=slots,
                      tree_mask=tree_mask, attn=attn)
    out = layer.forward(h, attention_mask=None, position_embeddings=(cos, sin), use_cache=False,
                        jetspec_ctx=call)
    return out[0] if isinstance(out, tuple) else out  # older transformers return a tuple


def _post(norm, lm_head, h, taps: List[Optional[torch.Tensor]], logits_rows: Optional[torch.Tensor]):
    """Final norm, LM head on the selected rows, concat of the tapped features (a ``None`` tap
    is the last layer, which Hugging Face's ``hidden_states[-1]`` gives after the final norm)."""
    tapped = torch.cat([t if t is not None else norm(h) for t in taps], dim=-1) if taps else None
    if logits_rows is not None:
        if logits_rows.shape[0] == 0:
            return None, tapped
        h = h.index_select(1, logits_rows)
    return lm_head(norm(h)), tapped


def compile_available() -> bool:
    """Whether torch.compile (dynamo + inductor) can be used in this process."""
    try:
        import torch._dynamo  # noqa: F401
        import torch._inductor  # noqa: F401
    except Exception:  # pragma: no cover
        return False
    return hasattr(torch, "compile")


def _compiler(mode: Optional[str]):
    """torch.compile with static shapes and inductor WITHOUT its own CUDA graphs (the decoder
    captures whole rounds itself), and a recompile limit that fits one graph per shape bucket."""
    import torch._dynamo as dynamo

    with warnings.catch_warnings():  # parameters as graph inputs, so all layers share one graph
        warnings.simplefilter("ignore")  # (always on, and the flag deprecated, in recent torch)
        if getattr(dynamo.config, "inline_inbuilt_nn_modules", True) is False:
            dynamo.config.inline_inbuilt_nn_modules = True
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, max(getattr(dynamo.config, name), 64))
    if hasattr(dynamo.config, "accumulated_recompile_limit"):
        dynamo.config.accumulated_recompile_limit = max(dynamo.config.accumulated_recompile_limit, 512)
    if mode in (None, "default"):
        mode = None
    if mode in ("reduce-overhead", "max-autotune"):
        raise ValueError(f"compile mode {mode!r} uses inductor's own CUDA graphs, which cannot sit inside "
                         "the decoder's round graphs: use 'default' or 'max-autotune-no-cudagraphs'")

    def wrap(fn):
        return torch.compile(fn, dynamic=False, fullgraph=False, mode=mode)

    return wrap


class Target:
    """Wraps a Hugging Face causal LM (Qwen3 family) with the jetspec static cache and forwards.

    Args:
        model: a ``Qwen3ForCausalLM`` (or Qwen3-MoE) instance, used unchanged apart from
            selecting the ``"jetspec"`` attention implementation (which defers to SDPA when
            called the normal HF way).
        tapped_layer_ids: target layers whose outputs feed the draft head (may be empty).
        compile: regional ``torch.compile`` of tree / decode forwards (prefill stays eager):
            the embedding + RoPE prologue, ONE decoder-layer function shared by all layers, and
            the final norm + LM head + tapped-feature epilogue, each compiled once per input shape
            (static shapes; the jetspec ops are traced as custom ops through their fake kernels).
            Inductor runs without its own CUDA graphs, so the calls can sit inside the decoder's
            captured rounds (after one warm-up call per shape).
        compile_mode: ``None``/``"default"`` or ``"max-autotune-no-cudagraphs"``.

    The forward loops over the HF decoder layers itself (instead of calling ``model.model``):
    that is what lets each layer get its own cache view, and it collects the tapped features
    without transformers' output-capturing hooks.
    """

    def __init__(self, model, tapped_layer_ids: Sequence[int] = (), compile: bool = False,
                 compile_mode: Optional[str] = None):
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
        self.compiled = bool(compile)
        self.compile_mode = compile_mode
        if compile:
            if not compile_available():
                raise RuntimeError("Target(compile=True): torch.compile is not available in this torch build")
            wrap = _compiler(compile_mode)
            self._pre, self._layer, self._post = wrap(_pre), wrap(_layer), wrap(_post)
        else:
            self._pre, self._layer, self._post = _pre, _layer, _post

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
        m = self.model.model
        compiled = tree_mask is not None  # prefill (host-known lengths, once per prompt): eager
        pre, layer_fn, post = (self._pre, self._layer, self._post) if compiled else (_pre, _layer, _post)
        attn = op("tree_attention", kv.device, kv.dtype) if tree_mask is not None else None
        h, cos, sin, slots, rows = pre(m.embed_tokens, m.rotary_emb, tokens, positions, prefix_lens)
        tap_ids = set(self.tapped_layer_ids) if want_tapped else set()
        taps = {}
        for i, layer in enumerate(m.layers[: self.num_layers]):
            h = layer_fn(layer, h, cos, sin, kv[i, 0], kv[i, 1], prefix_lens, rows, slots, tree_mask, attn)
            if i in tap_ids:
                taps[i] = h if i < self.num_layers - 1 else None  # last layer: normed (HF)
        return post(m.norm, self.model.lm_head, h, [taps[k] for k in self.tapped_layer_ids if k in taps],
                    logits_rows)


def _set_attn_impl(model, name: str) -> None:
    """Select an attention implementation on every (sub)config, across transformers versions."""
    if hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation(name)
            return
        except Exception:  # older / stricter versions: fall back to setting the config field
            pass
    model.config._attn_implementation = name
