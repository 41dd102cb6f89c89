"""The speculative decoder loop (DESIGN §1), gpt-fast style: read it top to bottom.

One round, all on the device with static shapes (so it can later be captured in a CUDA graph per
budget bucket)::

    draft_logits = draft(drafter, st)                        # (B, D, V): one head forward
    tree         = build_tree(draft_logits, st.anchor, ...)  # (B, N) tree of `budget` nodes
    logits, tap  = verify(target, st, tree)                  # one target forward over the tree
    acc          = accept(logits, tree, ...)                 # path, length, next token
    emitted      = commit(target, drafter, st, tree, tap, acc)  # KV + draft context + anchor

then ONE host synchronisation (the emitted tokens and their count, for streaming and the
stop / length check). State between rounds (:class:`DecodeState`):

* ``kv``: the target's stacked static cache ``(L, 2, B, Hkv, S, Dh)``; committed tokens
  ``0 .. prefix_lens-1`` have their keys/values at slots ``0 .. prefix_lens-1``.
* ``anchor`` ``(B,)``: the last emitted token, at position ``prefix_lens``; it has no KV yet (the
  next verify computes it as the tree root).
* ``ctx``: the draft head's context cache; the draft context is exactly the committed tokens,
  so its length is ``prefix_lens`` too.
* ``rng`` ``(2,)`` int64 ``[seed, offset]`` for lossless sampling in ``tree_accept``.

:func:`generate` drives rounds; :func:`generate_ar` is the autoregressive baseline over the same
static cache and the same ops (a one-node "tree" per step), so speedups compare like with like.
"""
import gc
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import torch

from .draft_head import JetSpecDraftHead, block_layers, extend_layers, layer_caches
from .fp8 import fp8_cuda_problem, quantize_weight, scaled_mm_shape_problem
from .op_select import linear, op, plain_linear
from .ops.build_tree import MAX_WIDTH, POLICIES
from .target import FusedProjections, Target, _lm_head_logits

# what _draft_layer_fused expects of every head layer (else the drafter keeps the layers' forward)
_DRAFT_LAYER_CLASSES = ("DraftLayer", "DraftAttention", "Qwen3MLP")


# --------------------------------------------------------------------------------------------
# Drafters
# --------------------------------------------------------------------------------------------
def _draft_body(head, embed_tokens, lm_head, caches, ctx_lens, anchor, fill, mask, attn, fused=None,
                lm_head_weight=None):
    """[anchor, MASK x D] -> target embeddings -> head block forward -> lm_head on rows 1..D.
    fused: per-layer ``(w_qkv, w_gate_up[, w_o, w_down])`` of the head (see :class:`HeadDrafter`)
    or None. lm_head_weight: what the LM head's GEMM reads instead of ``lm_head.weight`` (with
    ``fused``; the fp8 drafter's copy) or None."""
    block = torch.cat([anchor.unsqueeze(1), fill], dim=1)  # [anchor, MASK x D]
    h = block_layers(head, caches, ctx_lens, embed_tokens(block), mask, attn, fused)
    h = h[:, 1:].to(lm_head.weight.dtype)
    # (B, D, V) for depths 1..D; fused: a plain Linear LM head through op_select.linear
    if fused is None:
        return lm_head(h)
    return _lm_head_logits(lm_head, h) if lm_head_weight is None else linear(h, lm_head_weight)


class HeadDrafter:
    """The JetSpec head plus what it borrows from the target (embedding, LM head).

    compile (default: ``target.compiled``): torch.compile the round's two head computations,
    the block forward (+ embedding, LM head) and the context extension by the D+1 tokens a round
    commits (each one graph; the prefill's extension stays eager). Same static-shape /
    no-inductor-cudagraphs settings as ``Target(compile=True)``.

    fuse_projections (default True): the block forward runs one q|k|v GEMM and one gate|up GEMM
    per head layer, and the context extension one k|v GEMM per layer (the target side's fusion,
    ``target._fuse_group``: each layer's q/k/v and gate/up ``Parameter.data`` become views of
    one fused tensor, same values, same memory, same Parameter objects, so the head's own
    forward, training and ``save_pretrained`` are unaffected). Heads whose layers are not the
    stock modules with plain bias-free ``nn.Linear`` projections and no forward hooks keep the
    unfused path (``self.fused`` says which, ``self.fuse_note`` why not; checked at construction,
    so hooks added later are not seen). Moving / casting the head after construction gives the
    parameters separate storage again: the next draft / extend notices (data pointers) and fuses
    again.

    fp8 (default False): the draft forward and the context extension read e4m3 copies of every
    weight they stream (the head layers' q|k|v, o, gate|up and down, ``fc``, and the target's LM
    head), made once here; activations are quantized per row at each GEMM
    (:mod:`jetspec_ext.fp8`: ``torch._scaled_mm`` on CUDA, compute capability 8.9+; the same maths
    in fp32 elsewhere, slower than the plain path there: meant for tests). Why: at batch 1 the
    draft is a weight stream (~3.4 GB per round on Qwen3-8B shapes), and fp8 halves it. The
    output is unchanged in kind (the target verifies every token: greedy output stays the
    target's own); the acceptance length may change, since the draft's logits do. Costs one e4m3
    byte per weight of GPU memory on top of the model (~1.67 GB for Qwen3-8B and a 5-layer head).
    Needs the fused projections (a stock head, ``fuse_projections=True``) and plain bias-free
    ``nn.Linear`` ``fc`` and LM head, and every projection's sizes multiples of 16 (the CUDA
    path's rule, enforced on every device); else ValueError. The copies are made again when a weight
    moves to new storage (``.to``, ``load_state_dict(assign=True)``; data pointers checked per
    draft / extend, not on CUDA-graph replays); in-place changes to the weights (training) are
    not seen: call :meth:`refresh_fp8` or build a new drafter."""

    def __init__(self, head: JetSpecDraftHead, target: Target, depth: Optional[int] = None,
                 compile: Optional[bool] = None, fuse_projections: bool = True, fp8: bool = False):
        head.check_target(target.config)
        self.head = head
        self.target = target
        self.depth = int(depth) if depth is not None else head.block_size - 1
        if not 1 <= self.depth <= head.block_size - 1:
            raise ValueError(f"depth must be in [1, {head.block_size - 1}] for this head (block_size {head.block_size})")
        self._proj = FusedProjections(head.config, head.layers, fuse_projections, _DRAFT_LAYER_CLASSES)
        self.fp8 = bool(fp8)
        self._fp8 = None  # (source key, per-layer 4-tuples, fc, LM head) of Fp8Weight
        if self.fp8:
            why = self._fp8_problem()
            if why is not None:
                raise ValueError(f"fp8 drafting: {why}")
            self._fp8_weights()
        self._static = {}
        self.compiled = getattr(target, "compiled", False) if compile is None else bool(compile)
        self._draft, self._extend = _draft_body, extend_layers
        if self.compiled:
            from .target import _compiler

            wrap = _compiler(getattr(target, "compile_mode", None))
            self._draft, self._extend = wrap(_draft_body), wrap(extend_layers)

    @property
    def fused(self) -> bool:
        return self._proj.fused

    @property
    def fuse_note(self):
        return self._proj.note

    def _fp8_problem(self) -> Optional[str]:
        if not self.fused:
            return f"needs the fused projections ({self.fuse_note})"
        lm_head = self.target.model.lm_head
        for name, mod in (("fc", self.head.fc), ("the LM head", lm_head)):
            if not plain_linear(mod):
                return f"{name} must be a plain bias-free nn.Linear without hooks"
        dev = lm_head.weight.device
        why = fp8_cuda_problem(dev)
        if why is not None:
            return why
        # the CUDA path's size rule, on every device: the same settings fail the same way anywhere
        named = [(f"layer {i} {n}", m.weight) for i, layer in enumerate(self.head.layers)
                 for n, m in (("q_proj", layer.self_attn.q_proj), ("k_proj", layer.self_attn.k_proj),
                              ("o_proj", layer.self_attn.o_proj), ("gate_proj", layer.mlp.gate_proj),
                              ("down_proj", layer.mlp.down_proj))]
        return scaled_mm_shape_problem(named + [("fc", self.head.fc.weight), ("the LM head", lm_head.weight)])

    def _fp8_sources(self):
        per_layer = self._proj.weights()
        layers = [(w_qkv, w_gate_up, layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight)
                  for (w_qkv, w_gate_up), layer in zip(per_layer, self.head.layers)]
        return layers, self.head.fc.weight, self.target.model.lm_head.weight

    def _fp8_weights(self):
        """(per-layer ``(w_qkv, w_gate_up, w_o, w_down)``, fc, LM head) as Fp8Weight, quantized
        again when a source tensor moved (data pointer, dtype or shape)."""
        layers, fc_w, lm_w = self._fp8_sources()
        key = tuple((t.data_ptr(), t.dtype, tuple(t.shape)) for t in [w for lw in layers for w in lw] + [fc_w, lm_w])
        if self._fp8 is None or self._fp8[0] != key:
            self._fp8 = (key, [tuple(quantize_weight(w) for w in lw) for lw in layers],
                         quantize_weight(fc_w), quantize_weight(lm_w))
        return self._fp8[1:]

    def refresh_fp8(self) -> None:
        """Quantize the fp8 copies again (after in-place changes to the weights)."""
        if self.fp8:
            self._fp8 = None
            self._fp8_weights()

    def _weights(self):
        """What the draft's GEMMs read: (per-layer weights or None, fc weight, LM head weight);
        the last two None where the modules' own weights are read (the plain drafter)."""
        if self.fp8:
            return self._fp8_weights()
        return self._proj.weights(), None, None

    def new_context(self, batch: int, max_len: int) -> torch.Tensor:
        return self.head.new_context_cache(batch, max_len, device=self.target.device)

    def extend(self, ctx: torch.Tensor, ctx_lens: torch.Tensor, tapped: torch.Tensor) -> None:
        # compiled for the round's fixed D+1 rows only (the prefill's length varies per prompt)
        fn = self._extend if tapped.shape[1] == self.depth + 1 else extend_layers
        layers, fc_w, _ = self._weights()
        fn(self.head, layer_caches(ctx), ctx_lens, tapped, layers, fc_w)

    def draft(self, ctx: torch.Tensor, ctx_lens: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        B, D = anchor.shape[0], self.depth
        key = (B, anchor.device)
        if key not in self._static:  # built once per batch size: nothing is built per round
            self._static[key] = (self.head.block_mask(D + 1, B, anchor.device),
                                 torch.full((B, D), self.head.mask_token_id, dtype=torch.int64, device=anchor.device),
                                 op("tree_attention", anchor.device, self.head.fc.weight.dtype))
        mask, fill, attn = self._static[key]
        m = self.target.model
        layers, _, lm_w = self._weights()
        return self._draft(self.head, m.model.embed_tokens, m.lm_head, layer_caches(ctx), ctx_lens, anchor,
                           fill, mask, attn, layers, lm_w)


# --------------------------------------------------------------------------------------------
# State and statistics
# --------------------------------------------------------------------------------------------
@dataclass
class DecodeState:
    kv: torch.Tensor           # (L, 2, B, Hkv, S, Dh)
    prefix_lens: torch.Tensor  # (B,) int32
    anchor: torch.Tensor       # (B,) int64
    rng: torch.Tensor          # (2,) int64 [seed, offset]
    ctx: Optional[torch.Tensor] = None  # draft context cache
    cap: Optional[torch.Tensor] = None  # (B,) int32: prefix_lens is clamped to it (finished rows)


class Tree(NamedTuple):
    tokens: torch.Tensor     # (B, N) int64, node 0 = anchor
    parents: torch.Tensor    # (B, N) int32
    depths: torch.Tensor     # (B, N) int32
    mask: torch.Tensor       # (B, N, ceil(N/32)) int32 ancestor bits


class Accepted(NamedTuple):
    nodes: torch.Tensor      # (B, D+1) int32 path, root first, -1 padded
    length: torch.Tensor     # (B,) int32 tokens produced this round
    next_token: torch.Tensor  # (B,) int64


@dataclass
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0


@dataclass
class RoundStats:
    accept_len: List[int]            # per row: tokens produced this round (accepted drafts + 1)
    times: Dict[str, float]          # seconds per stage (valid when profiling / on the CPU)


@dataclass
class GenerationResult:
    tokens: List[List[int]]          # new tokens per row (stop token included, as HF does)
    prompt_len: int
    rounds: List[RoundStats] = field(default_factory=list)
    prefill_s: float = 0.0
    decode_s: float = 0.0
    depth: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def mean_accept_len(self) -> float:
        """tau: mean tokens per round (accepted drafts + the target's own token), row 0."""
        n = [r.accept_len[0] for r in self.rounds]
        return sum(n) / len(n) if n else float("nan")

    def per_depth_acceptance(self) -> List[float]:
        """Fraction of rounds (row 0) whose accepted path reaches depth d, for d = 1..D."""
        n = [r.accept_len[0] - 1 for r in self.rounds]
        return [sum(x >= d for x in n) / len(n) if n else float("nan") for d in range(1, self.depth + 1)]

    def stage_times(self) -> Dict[str, float]:
        tot: Dict[str, float] = {}
        for r in self.rounds:
            for k, v in r.times.items():
                tot[k] = tot.get(k, 0.0) + v
        return tot

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens[0]) / self.decode_s if self.decode_s > 0 else float("nan")


# --------------------------------------------------------------------------------------------
# The round, one function per stage
# --------------------------------------------------------------------------------------------
def draft(drafter, st: DecodeState) -> torch.Tensor:
    """One draft-head forward over [anchor, MASK x D] -> per-depth logits (B, D, V)."""
    return drafter.draft(st.ctx, st.prefix_lens, st.anchor)


def build_tree(draft_logits: torch.Tensor, anchor: torch.Tensor, width: int, budget: int, policy: str,
               draft_temperature: float = 1.0) -> Tree:
    """Best-first tree of `budget` nodes (root = anchor) from the top-`width` tokens per depth,
    scored by cumulative log-probs under softmax(draft_logits / draft_temperature)."""
    out = op("build_tree", draft_logits.device)(draft_logits, anchor, width, budget, policy, draft_temperature)
    tokens, parents, depths, _scores, mask = out[:5]
    return Tree(tokens, parents, depths, mask)


def verify(target: Target, st: DecodeState, tree: Tree):
    """One target forward over the tree: node i at position prefix+depth(i), KV at slot prefix+i.
    Returns logits at every node (B, N, V) and the tapped features (B, N, F)."""
    positions = st.prefix_lens.to(torch.int64).unsqueeze(1) + tree.depths.to(torch.int64)
    return target.forward(st.kv, st.prefix_lens, tree.tokens, positions, tree.mask)


def accept(logits: torch.Tensor, tree: Tree, depth: int, st: DecodeState, sp: SamplingParams) -> Accepted:
    """Walk the tree with the target's choices (greedy, or lossless sampling)."""
    f = op("tree_accept", logits.device)
    nodes, length, nxt = f(logits, tree.tokens, tree.parents, depth, st.rng, sp.temperature, sp.top_k, sp.top_p)
    return Accepted(nodes, length, nxt)


def commit(target: Target, drafter, st: DecodeState, tree: Tree, tapped: Optional[torch.Tensor],
           acc: Accepted) -> torch.Tensor:
    """Keep the accepted path: grow the draft context with its tapped features, compact its KV
    (commit_kv also advances prefix_lens), make the emitted token the next anchor.
    Returns the emitted tokens (B, D+1): row b's first ``acc.length[b]`` entries are real."""
    path = acc.nodes.clamp(min=0).to(torch.int64)                    # (B, D+1)
    if drafter is not None and tapped is not None:
        feats = tapped.gather(1, path.unsqueeze(-1).expand(-1, -1, tapped.shape[-1]))
        drafter.extend(st.ctx, st.prefix_lens, feats)               # slots prefix .. prefix+D
    op("commit_kv", st.kv.device)(st.kv.flatten(0, 1), st.prefix_lens, acc.nodes, acc.length)
    if st.cap is not None:
        st.prefix_lens.clamp_(max=st.cap)  # finished rows of a batch stop growing
    path_tokens = tree.tokens.gather(1, path)                        # token of each path node
    emitted = torch.cat([path_tokens[:, 1:], path_tokens[:, :1]], dim=1)
    emitted.scatter_(1, (acc.length.to(torch.int64) - 1).clamp(min=0).unsqueeze(1), acc.next_token.unsqueeze(1))
    st.anchor.copy_(acc.next_token)
    return emitted


def check_draft_temperature(t) -> float:
    """``t`` as a float if it is a valid draft temperature (finite, > 0), else ValueError. The
    build_tree op checks the same, but only once a round runs (after the prefill, inside a capture)."""
    t = float(t)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"draft_temperature must be a finite number > 0, got {t}")
    return t


def check_generation_settings(max_new_tokens, temperature, top_k, top_p, budget: Optional[int] = None,
                              width: Optional[int] = None, policy: Optional[str] = None) -> None:
    """ValueError for settings :func:`generate` cannot run with, before anything is allocated or
    decoded (the ops check the same, but only once a round runs: after the prefill, inside a
    capture). The tree's ``budget`` / ``width`` / ``policy``: checked when given (speculative
    decoding; None for the AR baseline). Each message starts with the parameter's name."""
    if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    t, p = float(temperature), float(top_p)
    if not (math.isfinite(t) and t >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if int(top_k) != top_k or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k}")
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}")
    if budget is not None and budget < 2:
        raise ValueError("budget must be >= 2 (the root plus at least one draft node)")
    if width is not None and not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"width must be in [1, {MAX_WIDTH}], got {width}")
    if policy is not None and policy not in POLICIES:
        raise ValueError(f"policy must be {' or '.join(map(repr, POLICIES))}, got {policy!r}")


def spec_round(target, drafter, st, width, budget, policy, sp, timer, draft_temperature: float = 1.0):
    """draft -> build_tree -> verify -> accept -> commit. Returns (emitted (B, D+1), length (B,)),
    both on the device; ``timer(name, fn)`` runs (and optionally times) each stage."""
    draft_logits = timer("draft", lambda: draft(drafter, st))
    tree = timer("build_tree", lambda: build_tree(draft_logits, st.anchor, width, budget, policy, draft_temperature))
    logits, tapped = timer("verify", lambda: verify(target, st, tree))
    acc = timer("accept", lambda: accept(logits, tree, drafter.depth, st, sp))
    emitted = timer("commit", lambda: commit(target, drafter, st, tree, tapped, acc))
    return emitted, acc.length


def ar_step(target: Target, st: DecodeState, sp: SamplingParams):
    """Autoregressive baseline step: the anchor as a one-node tree -> one new token."""
    tree = _one_node_tree(st.anchor)
    positions = st.prefix_lens.to(torch.int64).unsqueeze(1)
    logits, _ = target.forward(st.kv, st.prefix_lens, tree.tokens, positions, tree.mask, want_tapped=False)
    acc = accept(logits, tree, 0, st, sp)
    return commit(target, None, st, tree, None, acc), acc.length


# --------------------------------------------------------------------------------------------
# Prefill and the host loops
# --------------------------------------------------------------------------------------------
_ONE_NODE: Dict[tuple, tuple] = {}


def _one_node_tree(anchor: torch.Tensor) -> Tree:
    """The anchor as a one-node tree. Its constant parts (parents -1, depth 0, mask bit 0) are
    made once per (batch, device) and reused (read-only), so an AR step launches no fills."""
    B, dev = anchor.shape[0], anchor.device
    key = (B, str(dev), torch.is_inference_mode_enabled())
    if key not in _ONE_NODE:
        _ONE_NODE[key] = (torch.full((B, 1), -1, dtype=torch.int32, device=dev),
                          torch.zeros(B, 1, dtype=torch.int32, device=dev),
                          torch.ones(B, 1, 1, dtype=torch.int32, device=dev))
    parents, depths, mask = _ONE_NODE[key]
    return Tree(anchor.reshape(B, 1).contiguous(), parents, depths, mask)


def prefill(target: Target, drafter, st: DecodeState, prompt: torch.Tensor, sp: SamplingParams) -> None:
    """Run the prompt (B, P), fill both caches, choose the first token (the first anchor)."""
    B, P = prompt.shape
    pos = torch.arange(P, device=prompt.device).unsqueeze(0).expand(B, P)
    last = torch.tensor([P - 1], device=prompt.device)
    logits, tapped = target.forward(st.kv, st.prefix_lens, prompt, pos, None, logits_rows=last,
                                    want_tapped=drafter is not None)
    if drafter is not None:
        drafter.extend(st.ctx, st.prefix_lens, tapped)
    st.prefix_lens += P
    # the first token: the target's choice at the last prompt position (a one-node "tree")
    tree = _one_node_tree(prompt[:, -1])
    acc = accept(logits, tree, 0, st, sp)
    st.anchor.copy_(acc.next_token)


class _Timer:
    def __init__(self, device, enabled: bool):
        self.sync = torch.device(device).type == "cuda" and enabled
        self.enabled = enabled
        self.times: Dict[str, float] = {}

    def __call__(self, name, fn):
        if not self.enabled:
            return fn()
        if self.sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        r = fn()
        if self.sync:
            torch.cuda.synchronize()
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t
        return r


def _as_batch(prompt_ids, device) -> torch.Tensor:
    if isinstance(prompt_ids, torch.Tensor):
        t = prompt_ids
    elif prompt_ids and isinstance(prompt_ids[0], (list, tuple)):
        lens = {len(p) for p in prompt_ids}
        if len(lens) != 1:
            raise ValueError("batched prompts must have equal lengths (batch 1 is the supported case)")
        t = torch.tensor(prompt_ids)
    else:
        t = torch.tensor([list(prompt_ids)])
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.shape[1] == 0:
        raise ValueError("empty prompt")
    return t.to(device=device, dtype=torch.int64)


def cache_slots(target: Target, prompt_len: int, max_new_tokens: int, budget: Optional[int], depth: int,
                graphed: bool, max_context: Optional[int] = None) -> int:
    """Slots of the static KV cache that :func:`generate` allocates for a prompt of ``prompt_len``
    tokens (``budget`` None for AR; ``max_new_tokens`` and ``max_context`` as given to generate).
    Rounds captured in CUDA graphs or compiled are kept per cache length, so the length is rounded
    up to a bucket: calls whose lengths share a bucket reuse one capture."""
    max_context = max_context or target.max_positions or (prompt_len + max_new_tokens)
    max_new_tokens = min(max_new_tokens, max_context - prompt_len)
    S = prompt_len + max_new_tokens + (budget if budget is not None else 1) + depth + 2
    if getattr(target, "compiled", False):  # compiled code is specialised on the cache length:
        S = -(-S // 1024) * 1024           # buckets of 1024 slots, not one compilation per prompt
    elif graphed:                          # a captured round is reused by later calls whose
        S = -(-S // 256) * 256             # prompts land in the same bucket of 256 slots
    return S


@torch.inference_mode()
def generate(target: Target, drafter, prompt_ids, *, max_new_tokens: int = 256, budget: int = 64,
             width: int = 7, policy: str = "accum", temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0, stop_token_ids: Sequence[int] = (),
             max_context: Optional[int] = None, profile: Optional[bool] = None, cuda_graph: bool = False,
             on_tokens: Optional[Callable[[int, List[int]], None]] = None,
             draft_temperature: float = 1.0) -> GenerationResult:
    """Speculative generation. ``drafter=None`` runs the autoregressive baseline instead.

    prompt_ids: list of ints, list of equal-length lists, or an int64 tensor ``(B, P)``.
    Returns the new tokens per row; generation of a row stops after ``max_new_tokens`` tokens or
    right after a stop token (included in the output, as transformers' generate does).
    ``on_tokens(row, new_ids)`` is called as tokens are committed (for streaming).
    ``profile`` (default: on for the CPU, off for CUDA) times each stage; on CUDA it
    synchronises around each stage, so leave it off when measuring throughput.
    ``cuda_graph`` (CUDA only): capture the round in a CUDA graph after the first round and replay
    it; falls back to eager rounds with a warning if the capture fails (e.g. an op without a CUDA
    kernel). The captured round and its state (caches) are kept on the drafter (the target for
    AR), one per (batch, cache bucket of 256 slots, budget, width, policy, draft temperature, sampling
    settings), the last 4 of them, so later calls with prompts in the same bucket replay it without
    capturing;
    :func:`release_graphs` frees them (each holds its KV cache).
    ``draft_temperature`` (> 0, default 1): the tree is built from softmax(draft logits /
    draft_temperature). It changes only the tree's shape (greedy output is unchanged; sampled output
    keeps the target's distribution, though a seed's draws may differ): below 1 the best-first
    expansion follows the head's top tokens deeper, above 1 it spreads wider.
    A head whose deep mask slots are reliable gains from < 1.
    """
    device = target.device
    prompt = _as_batch(prompt_ids, device)
    B, P = prompt.shape
    tree = dict(budget=budget, width=width, policy=policy) if drafter is not None else {}
    check_generation_settings(max_new_tokens, temperature, top_k, top_p, **tree)
    sp = SamplingParams(float(temperature), int(top_k), float(top_p))
    depth = drafter.depth if drafter is not None else 0
    draft_temperature = check_draft_temperature(draft_temperature)
    max_context = max_context or target.max_positions or (P + max_new_tokens)
    if P >= max_context:
        raise ValueError(f"prompt of {P} tokens does not fit the context of {max_context} tokens")
    max_new_tokens = min(max_new_tokens, max_context - P)
    graphed = cuda_graph and device.type == "cuda"
    S = cache_slots(target, P, max_new_tokens, budget if drafter is not None else None, depth, graphed, max_context)
    profile = (device.type == "cpu") if profile is None else profile
    timer = _Timer(device, profile and not graphed)
    # Graphed rounds are captured once per (shapes, settings) and kept on the drafter (or the
    # target, for AR) with their state, so later calls replay them; the state is reset in place.
    graphs = _graph_store(drafter if drafter is not None else target) if graphed else {}
    key = (B, S, width, budget, policy, draft_temperature, sp.temperature, sp.top_k, sp.top_p)
    entry = graphs.pop(key, None)
    if entry is None:
        st = DecodeState(
            kv=target.new_cache(B, S),
            prefix_lens=torch.empty(B, dtype=torch.int32, device=device),
            anchor=torch.empty(B, dtype=torch.int64, device=device),
            rng=torch.empty(2, dtype=torch.int64, device=device),
            ctx=drafter.new_context(B, S) if drafter is not None else None,
            cap=torch.empty(B, dtype=torch.int32, device=device))
        run = _round_fn(target, drafter, st, width, budget, policy, sp, timer, draft_temperature)
        entry = (st, GraphedRound(run) if graphed else run)
    st, run = entry
    st.prefix_lens.zero_()
    st.anchor.zero_()
    st.rng.copy_(torch.tensor([int(seed), 0], dtype=torch.int64))
    st.cap.fill_(P + max_new_tokens)
    if graphed:
        graphs[key] = entry  # most recently used last
        while len(graphs) > _GRAPHS_KEPT:
            graphs.pop(next(iter(graphs)))
    stops = set(int(s) for s in stop_token_ids)
    out: List[List[int]] = [[] for _ in range(B)]
    done = [False] * B

    def take(b: int, toks: List[int]) -> None:
        new = []
        for t in toks:
            if len(out[b]) >= max_new_tokens:
                break
            out[b].append(t)
            new.append(t)
            if t in stops:
                break
        if new and on_tokens is not None:
            on_tokens(b, new)
        if len(out[b]) >= max_new_tokens or (out[b] and out[b][-1] in stops):
            done[b] = True

    _sync(device)
    t0 = time.perf_counter()
    prefill(target, drafter, st, prompt, sp)
    first = st.anchor.tolist()  # host sync (once)
    t1 = time.perf_counter()
    for b in range(B):
        take(b, [first[b]])
    res = GenerationResult(tokens=out, prompt_len=P, prefill_s=t1 - t0, depth=depth)
    while not all(done):
        timer.times = {}
        host = run().tolist()  # THE host synchronisation of the round
        for b in range(B):
            if not done[b]:
                take(b, host[b][1: 1 + host[b][0]])
        res.rounds.append(RoundStats([h[0] for h in host], timer.times))
    _sync(device)
    res.decode_s = time.perf_counter() - t1  # decode time excludes the prefill
    return res


def _round_fn(target, drafter, st, width, budget, policy, sp, timer,
              draft_temperature: float = 1.0) -> Callable[[], torch.Tensor]:
    """One round (speculative, or an AR step when ``drafter`` is None) as a function of nothing:
    returns ``(B, 1 + k)`` int64 rows ``[n, emitted tokens...]``."""
    def one_round():
        if drafter is not None:
            emitted, length = spec_round(target, drafter, st, width, budget, policy, sp, timer, draft_temperature)
        else:
            emitted, length = timer("ar_step", lambda: ar_step(target, st, sp))
        return torch.cat([length.to(torch.int64).unsqueeze(1), emitted], dim=1)
    return one_round


_GRAPHS_KEPT = 4  # captured rounds kept per drafter / target (each holds its KV cache)


def release_graphs(owner) -> None:
    """Drop the captured rounds (and the caches they hold) kept on ``owner`` (a drafter, or the
    target for the AR baseline) by ``generate(..., cuda_graph=True)``. Each kept entry holds its
    own KV cache, so long contexts with several budgets can hold a lot of memory."""
    _graph_store(owner).clear()


def _graph_store(owner) -> dict:
    """The captured rounds of ``owner`` (a drafter, or the target for AR), keyed by shapes and
    settings; they live and die with it."""
    store = getattr(owner, "_jetspec_graphs", None)
    if store is None:
        store = {}
        owner._jetspec_graphs = store
    return store


class GraphCaptureFailed(UserWarning):
    """Warned when a round could not be captured in a CUDA graph: ``generate`` goes on with eager
    rounds (same tokens, much slower), so a caller that reports speed can tell such runs apart."""


class GraphedRound:
    """A round function captured in a CUDA graph. The first call runs it eagerly on a side stream
    (a real round that doubles as the warm-up), then captures it (capture records kernels without
    running them); later calls replay the graph and return its static output tensor. All state the
    round touches lives in persistent tensors updated in place (``DecodeState``), which is what
    makes the replay equivalent to calling the function again."""

    def __init__(self, fn: Callable[[], torch.Tensor]):
        self.fn, self.graph, self.out, self.error = fn, None, None, None

    def __call__(self) -> torch.Tensor:
        if self.graph is not None:
            self.graph.replay()
            return self.out
        if self.error is not None:
            return self.fn()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self.fn()
        torch.cuda.current_stream().wait_stream(side)
        try:
            self.graph, self.out = capture_graph(self.fn)
        except Exception as e:  # noqa: BLE001 - report and keep decoding eagerly
            import warnings

            self.error = e
            warnings.warn(f"jetspec: CUDA graph capture of the round failed, running eagerly: {e}",
                          GraphCaptureFailed)
        return out


def capture_graph(fn: Callable[[], torch.Tensor]) -> tuple:
    """Capture ``fn`` in a new CUDA graph; returns ``(graph, static output)``.

    Rounds that are no longer reachable (an earlier ``Target`` / drafter and the rounds stored on
    it form a reference cycle) are freed by Python's cyclic collector whenever it happens to run.
    Freeing a captured graph while another capture is in progress is an illegal CUDA call that
    invalidates that capture (``cudaErrorStreamCaptureInvalidated``: seen on the H200 when the
    demo evaluation moved from one head to the next, whose round then ran eagerly at a tenth of
    the speed). So collect first, and keep the collector off for the length of the capture."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = fn()
    finally:
        if enabled:
            gc.enable()
    return g, out


def generate_ar(target: Target, prompt_ids, **kw) -> GenerationResult:
    """The autoregressive baseline (same static cache, same ops, one token per step)."""
    for k in ("budget", "width", "policy", "draft_temperature"):
        kw.pop(k, None)
    return generate(target, None, prompt_ids, **kw)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
