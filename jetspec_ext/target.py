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
  :class:`Target`, docs/decoder.md). Tree / decode forwards of dense Qwen3 targets use
  :func:`_layer_fused` instead (the same maths with one q|k|v GEMM and one gate|up GEMM per
  layer; ``fuse_projections``).
* Tapped features: the output of decoder layer k (= HF's ``hidden_states[k + 1]``; for the last
  layer, as in HF, after the final norm), concatenated along the feature axis.
* Logits: only for the rows the caller asks for (``logits_rows``).
"""
import os
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb

from .draft_head import scatter_slots
from .op_select import linear, linear_add, op, plain_linear
from .ops.attention import head_dim_problem

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
    scale = float(scaling if scaling is not None else query.shape[-1] ** -0.5)
    return _attend(query, key, value, scale, c.k_cache, c.v_cache, c.prefix_lens, c.rows, c.slots,
                   c.tree_mask, c.attn), None


def _attend(query, key, value, scale: float, k_cache, v_cache, prefix_lens, rows, slots, tree_mask, attn):
    """The jetspec attention of one layer, shared by :func:`jetspec_attention` (HF's layer forward)
    and :func:`_layer_fused`: write the new keys/values (normed, rotated) at ``slots`` of the
    layer's cache views, then attend. query ``(B, Hq, N, Dh)``, key/value ``(B, Hkv, N, Dh)``;
    returns ``(B, N, Hq, Dh)``."""
    scatter_slots(k_cache, slots, key, rows)
    scatter_slots(v_cache, slots, value, rows)
    if tree_mask is not None:
        out, _ = attn(query.transpose(1, 2), k_cache, v_cache, prefix_lens, tree_mask, scale)
        return out
    # Causal prefill (host-known lengths; happens once per prompt, never compiled): SDPA over
    # prefix + new keys.
    B, Hq, N, Dh = query.shape
    P = int(slots[0, 0])
    k = k_cache[:, :, : P + N]
    v = v_cache[:, :, : P + N]
    rep = Hq // k.shape[1]
    if rep > 1:
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    allow = torch.ones(N, P + N, dtype=torch.bool, device=query.device).tril(diagonal=P)
    out = F.scaled_dot_product_attention(query, k.to(query.dtype), v.to(query.dtype), attn_mask=allow, scale=scale)
    return out.transpose(1, 2)


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


# Why a functional layer at all: HF's Qwen3 layer runs 7 separate projections (q, k, v, o, gate,
# up, down). On the H200 the graphed, compiled AR step of Qwen3-8B spent 4.77 of 5.87 ms in GEMMs
# (0.30 ms of it split-K reductions of the small k/v/q GEMMs). One GEMM for q|k|v and one for
# gate|up (weights fused once, see _fuse_group) make it 4 GEMMs per layer. Everything else is
# the layer's own modules (norms, o_proj, down_proj, act_fn) and transformers' own RoPE
# function; the maths is Qwen3DecoderLayer.forward's. Used for tree / decode forwards only (the
# prefill keeps HF's layer.forward); any other layer structure keeps _layer.
def _layer_fused(layer, w_qkv, w_gate_up, h, cos, sin, k_cache, v_cache, prefix_lens, rows, slots,
                 tree_mask, attn):
    """One Qwen3 decoder layer with fused q|k|v and gate|up projections. ``w_qkv``
    ``(Hq*Dh + 2*Hkv*Dh, H)``, ``w_gate_up`` ``(2*I, H)``: tensor arguments (not read from the
    module), so all layers still share one compiled graph. Other args as :func:`_layer`."""
    a, mlp = layer.self_attn, layer.mlp
    B, N, _ = h.shape
    Dh = a.head_dim
    nkv = k_cache.shape[1] * Dh
    x = layer.input_layernorm(h)
    q, k, v = linear(x, w_qkv).split([w_qkv.shape[0] - 2 * nkv, nkv, nkv], dim=-1)
    q = a.q_norm(q.view(B, N, -1, Dh)).transpose(1, 2)
    k = a.k_norm(k.view(B, N, -1, Dh)).transpose(1, 2)
    v = v.view(B, N, -1, Dh).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    o = _attend(q, k, v, float(a.scaling), k_cache, v_cache, prefix_lens, rows, slots, tree_mask, attn)
    h = linear_add(h, o.reshape(B, N, -1).contiguous(), a.o_proj.weight)  # plain bias-free Linear (_fusable)
    x = layer.post_attention_layernorm(h)
    gate, up = linear(x, w_gate_up).chunk(2, dim=-1)
    return linear_add(h, mlp.act_fn(gate) * up, mlp.down_proj.weight)


_FUSED_LAYER_CLASSES = ("Qwen3DecoderLayer", "Qwen3Attention", "Qwen3MLP")


def _user_hooks(module) -> list:
    """The module's forward (pre-)hooks other than those transformers itself installs (its
    output-capturing hooks live in ``transformers.utils.output_capturing`` in 5.x)."""
    hooks = list(module._forward_hooks.values()) + list(module._forward_pre_hooks.values())
    return [h for h in hooks if not (getattr(h, "__module__", None) or "").startswith("transformers.")]


def _fusable(cfg, layers, classes=_FUSED_LAYER_CLASSES) -> Optional[str]:
    """None if every layer can take :func:`_layer_fused`, else why not (then HF's forward is used).
    ``classes``: the expected (layer, attention, MLP) class names (the draft head passes its own,
    for ``draft_head._draft_layer_fused``)."""
    if getattr(cfg, "model_type", None) != "qwen3":
        return f"model type {getattr(cfg, 'model_type', None)!r} (fused path: dense qwen3 only)"
    if getattr(cfg, "attention_bias", False):
        return "attention_bias=True"
    for i, layer in enumerate(layers):
        a, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        names = (type(layer).__name__, type(a).__name__, type(mlp).__name__)
        if names != tuple(classes):
            return f"layer {i}: unexpected modules {names}"
        if any("forward" in m.__dict__ for m in (layer, a, mlp)):  # e.g. accelerate's offload hooks
            return f"layer {i}: patched forward"
        # the fused path calls no attention / MLP module (nor, on the draft head, the layer), so
        # their hooks would be skipped silently. transformers' own output-capturing hooks (added
        # to every layer and attention module by any forward with output_hidden_states=True,
        # and kept) are not user hooks: they only record outputs nobody asks for here.
        if any(_user_hooks(m) for m in (layer, a, mlp)):
            return f"layer {i}: forward hooks on the layer / attention / MLP module"
        groups = _groups(layer)
        for lin in [m for g in groups for m in g] + [a.o_proj, mlp.down_proj]:
            if not plain_linear(lin):
                return f"layer {i}: projection {type(lin).__name__} is not a plain bias-free nn.Linear"
        for g in groups:
            w0 = g[0].weight
            if any(m.weight.dtype != w0.dtype or m.weight.device != w0.device or m.weight.dim() != 2
                   or m.weight.is_inference() != w0.is_inference()
                   or m.weight.shape[1] != w0.shape[1] or not m.weight.dtype.is_floating_point for m in g):
                return f"layer {i}: projection weights differ in dtype / device / input size / inference mode"
    return None


def _groups(layer):
    a, mlp = layer.self_attn, layer.mlp
    return (a.q_proj, a.k_proj, a.v_proj), (mlp.gate_proj, mlp.up_proj)


def _fuse_group(linears) -> torch.Tensor:
    """The row-concatenation of the linears' weights as ONE tensor whose row blocks ARE the
    modules' weights: the fused ``(sum out, in)`` tensor is allocated once and each Parameter's
    ``.data`` becomes a view (``narrow``) of it, so memory is not doubled and HF's own forward,
    ``generate`` and ``save_pretrained`` (which clones disjoint shared tensors) see the same
    values. The Parameter objects stay the same (``model.parameters()``, references, hooks keep
    working). Already fused weights (adjacent row blocks of one storage, e.g. by another Target
    on the same model) are reused as they are."""
    ws = [m.weight for m in linears]
    rows_total, cols = sum(w.shape[0] for w in ws), ws[0].shape[1]
    adjacent = all(w.is_contiguous() for w in ws) and all(
        w.untyped_storage().data_ptr() == ws[0].untyped_storage().data_ptr() for w in ws)
    off = ws[0].storage_offset() if adjacent else 0
    for w in ws:
        adjacent = adjacent and w.storage_offset() == off
        off += w.numel()
    # the fused tensor is an inference tensor iff the weights are (modules built under
    # torch.inference_mode): a Parameter's .data must not switch between the two kinds
    with torch.no_grad(), torch.inference_mode(ws[0].is_inference()):
        if adjacent:
            return ws[0].detach().as_strided((rows_total, cols), (cols, 1), ws[0].storage_offset())
        fused = torch.cat([w.detach() for w in ws], dim=0)
        r = 0
        for w in ws:
            w.data = fused.narrow(0, r, w.shape[0])
            r += w.shape[0]
    return fused


def _fuse_layers(layers):
    """:func:`_fuse_group` on every layer: ``([(w_qkv, w_gate_up) per layer], ptrs)``, where
    ``ptrs`` lists ``(module._parameters, weight data_ptr)`` for :func:`_fused_stale`."""
    weights, ptrs = [], []
    for layer in layers:
        weights.append(tuple(_fuse_group(g) for g in _groups(layer)))
        ptrs += [(m._parameters, m.weight.data_ptr()) for g in _groups(layer) for m in g]
    return weights, ptrs


def _fused_stale(ptrs) -> bool:
    """True if a fused parameter no longer lives in the fused storage (e.g. after ``.to``, or a
    Parameter replaced by ``load_state_dict(assign=True)``). Runs before every eager / compiled
    forward (not on CUDA-graph replays), so it reads the modules' parameter dicts directly:
    ``module.weight`` (nn.Module.__getattr__) made it about 7x slower (~180 lookups per call
    for a 36-layer target)."""
    return any(d["weight"].data_ptr() != p for d, p in ptrs)


class FusedProjections:
    """The per-layer fused ``(w_qkv, w_gate_up)`` of a stack of decoder layers (one
    :func:`_fuse_group` per group), kept in step with the modules. Used by :class:`Target` and
    ``decoder.HeadDrafter``. ``note``: None when the layers are fused, else why not (see
    :func:`_fusable`; ``classes`` names the expected layer / attention / MLP modules).
    :meth:`weights` re-fuses first if a parameter moved to new storage (``.to``,
    ``load_state_dict(assign=True)``)."""

    def __init__(self, cfg, layers, enabled: bool = True, classes=_FUSED_LAYER_CLASSES):
        self.layers = list(layers)
        self.note = _fusable(cfg, self.layers, classes) if enabled else "fuse_projections=False"
        self.per_layer, self._ptrs = _fuse_layers(self.layers) if self.note is None else ([], [])

    @property
    def fused(self) -> bool:
        return self.note is None

    def weights(self) -> Optional[List]:
        """``[(w_qkv, w_gate_up) per layer]``, or None when the layers are not fused."""
        if self.note is not None:
            return None
        if _fused_stale(self._ptrs):
            self.per_layer, self._ptrs = _fuse_layers(self.layers)
        return self.per_layer


def _post(norm, lm_head, h, taps: List[Optional[torch.Tensor]], logits_rows: Optional[torch.Tensor]):
    """Final norm, LM head on the selected rows, concat of the tapped features (a ``None`` tap
    is the last layer, which Hugging Face's ``hidden_states[-1]`` gives after the final norm)."""
    tapped = torch.cat([t if t is not None else norm(h) for t in taps], dim=-1) if taps else None
    if logits_rows is not None:
        if logits_rows.shape[0] == 0:
            return None, tapped
        h = h.index_select(1, logits_rows)
    return _lm_head_logits(lm_head, norm(h)), tapped


def _lm_head_logits(lm_head, x: torch.Tensor) -> torch.Tensor:
    """``lm_head(x)``; a plain bias-free ``nn.Linear`` (``op_select.plain_linear``) goes through
    ``op_select.linear`` like the layers' projections (one row on CUDA: the skinny_linear
    kernel, 272 vs 297 us for Qwen3-8B's LM head on the H200)."""
    return linear(x, lm_head.weight) if plain_linear(lm_head) else lm_head(x)


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

    # Inductor's own programmatic dependent launch (Hopper): each of its Triton kernels may start
    # while the kernel before it finishes, and waits (griddepcontrol.wait) before touching its
    # inputs, as our own kernels do (csrc/kernels/grid_dependency.cuh). Measured on the H200
    # (eleventh session, benchmarks/RESULTS.md): budget-128 round 6.78 vs 6.90 ms, AR step
    # unchanged. On by default for the compiled regions only; TORCHINDUCTOR_ENABLE_PDL=0 turns
    # it off. Inductor emits it only on GPUs that support it. torch.compile takes a mode or an
    # options dict, not both, so the mode's options are spelled out.
    import torch._inductor as inductor
    import torch._inductor.config as inductor_config

    options = dict(inductor.list_mode_options(mode)) if mode else {}
    if hasattr(inductor_config.triton, "enable_pdl"):  # (torch builds without the option: skip it)
        options["triton.enable_pdl"] = os.environ.get("TORCHINDUCTOR_ENABLE_PDL", "1") != "0"

    def wrap(fn):
        return torch.compile(fn, dynamic=False, fullgraph=False, options=options)

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
        fuse_projections: tree / decode forwards (compiled or eager) run :func:`_layer_fused`
            (ONE GEMM for q|k|v and one for gate|up per layer) instead of HF's ``layer.forward``,
            for dense ``qwen3`` targets without attention bias whose layers are the stock HF
            modules; anything else keeps HF's forward (``self.fused`` says which,
            ``self.fuse_note`` why not). Fusing rewrites, once, each layer's q/k/v and gate/up
            ``Parameter.data`` as views of one fused tensor (same values, same memory, same
            Parameter objects; ``generate`` and ``save_pretrained`` are unaffected). Moving or
            casting the model (``model.to``) after construction is not expected: it would give
            the parameters separate storage again; the forward notices and re-fuses.

    The forward loops over the HF decoder layers itself (instead of calling ``model.model``):
    that is what lets each layer get its own cache view, and it collects the tapped features
    without transformers' output-capturing hooks.
    """

    def __init__(self, model, tapped_layer_ids: Sequence[int] = (), compile: bool = False,
                 compile_mode: Optional[str] = None, fuse_projections: bool = True):
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
        problem = head_dim_problem(self.head_dim, "target")  # every forward attends with tree_attention
        if problem:
            raise ValueError(problem)
        self.vocab_size = cfg.vocab_size
        self.max_positions = getattr(cfg, "max_position_embeddings", None)
        _set_attn_impl(model, ATTN_NAME)
        self._proj = FusedProjections(cfg, model.model.layers[:L], fuse_projections)
        self.compiled = bool(compile)
        self.compile_mode = compile_mode
        if compile:
            if not compile_available():
                raise RuntimeError("Target(compile=True): torch.compile is not available in this torch build")
            wrap = _compiler(compile_mode)
            self._pre, self._layer, self._post = wrap(_pre), wrap(_layer), wrap(_post)
            self._layer_fused = wrap(_layer_fused)
        else:
            self._pre, self._layer, self._post = _pre, _layer, _post
            self._layer_fused = _layer_fused

    @property
    def fused(self) -> bool:
        """True when tree / decode forwards run :func:`_layer_fused` (see ``fuse_note``)."""
        return self._proj.fused

    @property
    def fuse_note(self) -> Optional[str]:
        """None when the projections are fused, else why not."""
        return self._proj.note

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
        fused_w = self._proj.weights() if tree_mask is not None else None  # prefill: HF's layer.forward
        h, cos, sin, slots, rows = pre(m.embed_tokens, m.rotary_emb, tokens, positions, prefix_lens)
        tap_ids = set(self.tapped_layer_ids) if want_tapped else set()
        taps = {}
        for i, layer in enumerate(m.layers[: self.num_layers]):
            if fused_w is not None:
                w_qkv, w_gate_up = fused_w[i]
                h = self._layer_fused(layer, w_qkv, w_gate_up, h, cos, sin, kv[i, 0], kv[i, 1], prefix_lens,
                                      rows, slots, tree_mask, attn)
            else:
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
