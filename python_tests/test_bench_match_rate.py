"""benchmarks/bench_match_rate.py helpers on the CPU (synthetic token lists, a tiny random target)."""
import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
bmr = pytest.importorskip("benchmarks.bench_match_rate")


@pytest.mark.parametrize("a,b,expect", [
    ([1, 2, 3], [1, 2, 3], (3, 3)),
    ([1, 2, 3, 4], [1, 2, 9, 4], (2, 4)),
    ([5, 2], [1, 2], (0, 2)),
    ([1, 2], [1, 2, 0], (2, 3)),   # one output stopped earlier: compared over the longer one
    ([], [], (0, 0)),
])
def test_common_prefix(a, b, expect):
    assert bmr.common_prefix(a, b) == expect
    assert bmr.common_prefix(b, a) == expect


def test_tie_threshold():
    assert bmr.tie_threshold(16.0, -3.0, 4) == 4 * 16.0 / 128
    assert bmr.tie_threshold(-32.0, 1.0, 1) == 0.25


def test_divergence_info_tiny_model():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16, vocab_size=64, max_position_embeddings=128)
    hi = Qwen3ForCausalLM(cfg).eval()
    lo = Qwen3ForCausalLM(cfg).eval()
    lo.load_state_dict(hi.state_dict())
    lo = lo.to(torch.bfloat16)
    ids = [3, 7, 11, 5]
    with torch.no_grad():
        logits = lo(input_ids=torch.tensor([ids])).logits[0, -1].float()
    t1, t2 = logits.topk(2).indices.tolist()
    d = bmr.divergence_info(lo, hi, ids, t1, t2, ulps=1e6)
    assert d["rank_ar"] == 0 and d["rank_spec"] == 1 and d["near_tie"]
    assert d["pair_gap_lo"] == pytest.approx(d["top2_gap_lo"])
    assert d["fp32_agrees"] in ("ar", "spec", "neither")
    far = int(logits.argmin())
    d = bmr.divergence_info(lo, hi, ids, t1, far, ulps=1.0)
    assert not d["near_tie"] and d["rank_spec"] == cfg.vocab_size - 1
