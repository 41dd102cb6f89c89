"""Shared helpers for the decoder / draft-head / CLI tests: tiny random Qwen3 targets, the real
Qwen3 tokenizer, prompts from ../shared/data, and a test-only "oracle" drafter."""
import json
import os

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

# The prompt sets and the Qwen3 tokenizer live in ../shared/data beside the checkout (CI lays a
# copy there too); JETSPEC_DATA overrides.
_HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.environ.get("JETSPEC_DATA", os.path.join(_HERE, "..", "..", "shared", "data"))
TOKENIZER_DIR = os.path.join(DATA, "qwen3_tokenizer")
QWEN3_VOCAB = 151936


def tiny_config(tied: bool, vocab: int = QWEN3_VOCAB, layers: int = 6, hidden: int = 64, **kw) -> Qwen3Config:
    base = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, head_dim=128, vocab_size=vocab,
                tie_word_embeddings=tied, max_position_embeddings=4096, rope_theta=10000.0,
                eos_token_id=None, bos_token_id=None, pad_token_id=None)
    base.update(kw)
    return Qwen3Config(**base)


def tiny_target(tied: bool, seed: int = 0, **kw) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    m = Qwen3ForCausalLM(tiny_config(tied, **kw)).eval()
    with torch.no_grad():  # sharper logits than the default init: fewer near-ties, less repetition
        m.lm_head.weight.mul_(4.0) if not tied else m.model.embed_tokens.weight.mul_(4.0)
    m.generation_config.eos_token_id = None
    m.generation_config.pad_token_id = 0
    return m


def load_prompts(n: int = 2, name: str = "spec_bench.jsonl"):
    out = []
    with open(os.path.join(DATA, name)) as f:
        for line in f:
            r = json.loads(line)
            out.append(r.get("turns", [None])[0] or r.get("question") or r.get("prompt"))
            if len(out) == n:
                break
    return out


def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def chat_ids(tok, text: str, max_tokens: int = 48):
    s = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                add_generation_prompt=True, enable_thinking=False)
    ids = tok(s, add_special_tokens=False).input_ids
    return ids[-max_tokens:]  # keep the tail: the assistant turn header must stay at the end


def hf_greedy(model, ids, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return out[0, len(ids):].tolist()


def tiny_draft_pair(head_layers: int = 2, seed: int = 0, vocab: int = 512, block_size: int = 6, **head_kw):
    """(model, head, Target) for the drafter tests: a tiny 3-layer target (hidden 64, head dim 64,
    untied) and a fresh head tapping layers 0 and 1, its norms drawn from [0.5, 1.5] (not all
    ones, so they matter)."""
    from jetspec_ext.draft_head import JetSpecDraftHead
    from jetspec_ext.target import Target

    model = tiny_target(tied=False, vocab=vocab, layers=3, hidden=64, head_dim=64, seed=4)
    torch.manual_seed(seed)
    head = JetSpecDraftHead.for_target(model.config, num_layers=head_layers, block_size=block_size,
                                       target_layer_ids=[0, 1], **head_kw)
    with torch.no_grad():
        for p in head.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model, head, Target(model, head.target_layer_ids)


@torch.inference_mode()
def extend_and_draft(drafter, seed=0, S=40, P=9):
    """Random context cache, one extension by a block of tokens (the head's block size, D + 1),
    one draft: (ctx, logits). Checks the cache writes themselves (two drafters compared with each
    other would not see them missing): every key / value vector of the extension's slots
    [P, P+n) changed from its random start in every layer and head, and nothing outside
    [P, P+2n) (the extension and the draft block's scratch slots after it) changed."""
    n = drafter.head.block_size
    g = torch.Generator().manual_seed(seed)
    ctx = drafter.new_context(1, S)
    dev = ctx.device
    ctx.copy_(torch.randn(ctx.shape, generator=g))
    start = ctx.clone()
    lens = torch.full((1,), P, dtype=torch.int32, device=dev)
    F_ = len(drafter.head.target_layer_ids) * drafter.head.config.hidden_size
    drafter.extend(ctx, lens, torch.randn(1, n, F_, generator=g).to(dev, ctx.dtype))
    lens += n
    logits = drafter.draft(ctx, lens, torch.tensor([17], device=dev))
    # ctx: (L_draft, 2, B, Hkv, S, Dh)
    assert (ctx[..., P:P + n, :] != start[..., P:P + n, :]).any(dim=-1).all()
    outside = torch.ones(S, dtype=torch.bool)
    outside[P:P + 2 * n] = False
    assert torch.equal(ctx[..., outside.to(dev), :], start[..., outside.to(dev), :])
    return ctx, logits


class OracleDrafter:
    """Test-only drafter that "copies the target": it knows the target's greedy continuation
    ``ref`` (prompt + tokens) and proposes it with the true token at rank ``ranks[d]`` among
    ``width`` strong candidates at depth d+1 (rank >= width: the true token is absent). Forces
    long acceptance paths, including through non-first children."""

    def __init__(self, ref_tokens, vocab, depth, width, ranks=None, seed=0):
        self.ref = list(ref_tokens)
        self.vocab, self.depth, self.width = vocab, depth, width
        self.ranks = list(ranks) if ranks is not None else [0] * depth
        self.g = torch.Generator().manual_seed(seed)

    def new_context(self, batch, max_len):
        return None

    def extend(self, ctx, ctx_lens, tapped):
        pass

    def draft(self, ctx, ctx_lens, anchor):
        B = anchor.shape[0]
        logits = torch.randn(B, self.depth, self.vocab, generator=self.g)
        for b in range(B):
            p = int(ctx_lens[b])  # anchor sits at position p; depth d predicts position p + d
            for d in range(self.depth):
                pos = p + d + 1
                true = self.ref[pos] if pos < len(self.ref) else 0
                decoys = torch.randint(0, self.vocab, (self.width + 1,), generator=self.g).tolist()
                decoys = [t for t in decoys if t != true][: self.width]
                order = decoys[: self.ranks[d]] + [true] + decoys[self.ranks[d]:]
                for r, t in enumerate(order[: self.width]):
                    logits[b, d, t] = 20.0 - r
        return logits
