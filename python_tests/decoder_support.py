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
