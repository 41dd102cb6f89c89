#!/usr/bin/env python
"""Train the demo's byte-level BPE tokenizer on the Python corpus (``build_corpus.py`` output).

A GPT-2-style byte-level BPE (no unknown tokens: every byte sequence round-trips exactly, which
matters for code) trained with the ``tokenizers`` library on the train split, on at most
``--max-bytes`` of text (a deterministic sample: every file while the cap allows, in corpus
order). Special tokens, which take the first ids:

* ``<|endoftext|>`` (id 0): separates files when training and ends generation: eos and pad;
* ``<|mask|>`` (id 1): the draft head's mask token (``dflash_config.mask_token_id``).

Output: a Hugging Face tokenizer directory (``tokenizer.json`` + ``tokenizer_config.json``) that
``transformers.AutoTokenizer.from_pretrained`` loads as a fast tokenizer. No chat template: the
demo is plain code completion. ``clean_up_tokenization_spaces`` is off so decoding is exact.

Usage: ``python scripts/demo/train_tokenizer.py --corpus build/demo/corpus --out
build/demo/tokenizer --vocab-size 8192``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # build_corpus.py sits next to this file
    sys.path.insert(0, _HERE)

EOS_TOKEN = "<|endoftext|>"
MASK_TOKEN = "<|mask|>"
SPECIAL_TOKENS = [EOS_TOKEN, MASK_TOKEN]


def iter_corpus_texts(corpus_dir: str, split: str = "train", max_bytes: int = 0):
    """Yield the file texts of one split, stopping before max_bytes (0: all) is exceeded."""
    total = 0
    with open(os.path.join(corpus_dir, f"{split}.jsonl"), encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            n = len(text.encode("utf-8"))
            if max_bytes and total + n > max_bytes:
                if total == 0:  # always yield something
                    yield text
                return
            total += n
            yield text


def build_tokenizer_object():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def train_tokenizer(corpus_dir: str, out_dir: str, vocab_size: int = 8192, max_bytes: int = 64 << 20,
                    min_frequency: int = 2, max_token_length: int = 32, model_max_length: int = 2048,
                    verbose: bool = True):
    """Train and save the tokenizer; returns the loaded transformers tokenizer."""
    from tokenizers import pre_tokenizers, trainers

    t0 = time.time()
    tok = build_tokenizer_object()
    kw = dict(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    try:
        trainer = trainers.BpeTrainer(max_token_length=max_token_length, **kw)
    except TypeError:  # older tokenizers
        trainer = trainers.BpeTrainer(**kw)
    texts = list(iter_corpus_texts(corpus_dir, "train", max_bytes))
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    os.makedirs(out_dir, exist_ok=True)
    save_hf_tokenizer(tok, out_dir, model_max_length)
    hf = load_and_check(out_dir, texts[:8])
    if verbose:
        enc = tok.encode_batch(texts[: min(len(texts), 200)])
        ntok = sum(len(e.ids) for e in enc)
        nb = sum(len(t.encode("utf-8")) for t in texts[: min(len(texts), 200)])
        print(f"[train_tokenizer] vocab {tok.get_vocab_size()} trained on {len(texts)} files "
              f"({nbytes / 1e6:.1f} MB) in {time.time() - t0:.1f} s; {nb / max(1, ntok):.2f} "
              f"bytes/token on a sample; saved to {out_dir}", flush=True)
    return hf


def save_hf_tokenizer(tok, out_dir: str, model_max_length: int = 2048):
    """Write tokenizer.json and a tokenizer_config.json for PreTrainedTokenizerFast. Written by
    hand (not save_pretrained) so the files are the same whatever transformers version runs."""
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    added = {}
    for i, s in enumerate(SPECIAL_TOKENS):
        added[str(i)] = {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False, "special": True}
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "unk_token": None,
        "mask_token": MASK_TOKEN,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "padding_side": "left",
        "add_bos_token": False,
        "add_eos_token": False,
        "extra_special_tokens": {},
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "mask_token": MASK_TOKEN}, f,
                  indent=2)


def load_and_check(out_dir: str, samples=()):
    """Load with AutoTokenizer and check special ids and exact round trips."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(out_dir)
    assert hf.eos_token_id == 0 and hf.pad_token_id == 0, (hf.eos_token_id, hf.pad_token_id)
    assert hf.mask_token_id == 1, hf.mask_token_id
    for s in list(samples) + ["def f(x):\n    return x  # é ✓\n\t\r\n"]:
        s = s[:2000]
        ids = hf.encode(s, add_special_tokens=False)
        back = hf.decode(ids)
        assert back == s, "tokenizer round trip failed"
    return hf


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default="build/demo/corpus")
    ap.add_argument("--out", default="build/demo/tokenizer")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--max-bytes", default="64M", help="text used for training, e.g. 64M")
    ap.add_argument("--min-frequency", type=int, default=2)
    ap.add_argument("--max-token-length", type=int, default=32)
    ap.add_argument("--model-max-length", type=int, default=2048)
    a = ap.parse_args(argv)
    from build_corpus import parse_size  # same directory

    return train_tokenizer(a.corpus, a.out, a.vocab_size, parse_size(a.max_bytes), a.min_frequency,
                           a.max_token_length, a.model_max_length)


if __name__ == "__main__":
    main()
