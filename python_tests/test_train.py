"""`jetspec train` (jetspec_ext.train) on the CPU: the dense many-block training forward equals the
decoder's head forward (causal and bidirectional), the loss falls, checkpoints reload, resuming
reproduces an uninterrupted run, and the CLI runs end to end on the bundled demo target."""
import math
import os

import pytest
import torch

from conftest import requires_cuda
from decoder_support import tiny_config
from jetspec_ext.draft_head import JetSpecDraftHead
from jetspec_ext.train import (
    Batcher,
    Sample,
    TrainConfig,
    block_attention_mask,
    dense_block_forward,
    encode_prompts,
    evaluate,
    load_cache,
    loss_on_batch,
    read_prompts,
    regenerate,
    slot_weights,
    train_head,
    _target_features,
)
from transformers import Qwen3ForCausalLM


def tiny_model(vocab=256, seed=0):
    torch.manual_seed(seed)
    m = Qwen3ForCausalLM(tiny_config(tied=True, vocab=vocab, layers=4, hidden=64)).eval()
    with torch.no_grad():
        m.model.embed_tokens.weight.mul_(4.0)
    return m


def tiny_samples(model, n=6, P=6, R=20, seed=1):
    """Greedy continuations of random prompts (the target's own data)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = torch.randint(2, model.config.vocab_size, (1, P), generator=g)
        with torch.no_grad():
            full = model.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=R, do_sample=False,
                                  pad_token_id=0, eos_token_id=None)
        out.append(Sample(p[0].tolist(), full[0, P:].tolist()))
    return out


@pytest.mark.parametrize("causal", [True, False])
@torch.no_grad()
def test_dense_training_forward_matches_decoder_forward(causal):
    torch.manual_seed(0)
    cfg = tiny_config(tied=True, vocab=200, layers=6, hidden=64)
    head = JetSpecDraftHead.for_target(cfg, num_layers=2, block_size=5, mask_token_id=1, causal=causal)
    assert head.causal == causal
    B, T, N = 2, 13, head.block_size
    F_ = len(head.target_layer_ids) * cfg.hidden_size
    tapped = torch.randn(B, T, F_)
    anchors = torch.tensor([[3, 7, 11], [1, 5, 12]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    K = anchors.shape[1]
    embeds = torch.randn(B, K * N, cfg.hidden_size)
    pos = (anchors.unsqueeze(-1) + torch.arange(N)).view(B, K * N)
    mask = block_attention_mask(anchors, valid, T, N, causal)
    dense = dense_block_forward(head, tapped, embeds, pos, mask).view(B, K, N, -1)
    for b in range(B):
        for k in range(K):
            if not valid[b, k]:
                continue
            a = int(anchors[b, k])
            cache = head.new_context_cache(1, T + N + 2)
            lens = torch.zeros(1, dtype=torch.int32)
            head.extend_context(cache, lens, tapped[b:b + 1, :a])  # context = positions 0..a-1
            lens += a
            want = head.forward_block(cache, lens, embeds[b:b + 1, k * N:(k + 1) * N])[0]
            torch.testing.assert_close(dense[b, k], want, rtol=1e-4, atol=1e-4)


def test_train_loss_falls_checkpoint_reloads_and_resume(tmp_path):
    torch.set_num_threads(2)
    model = tiny_model()
    samples = tiny_samples(model)
    head0 = JetSpecDraftHead.for_target(model.config, num_layers=1, block_size=4, mask_token_id=1)
    state0 = {k: v.clone() for k, v in head0.state_dict().items()}
    cfg = TrainConfig(steps=40, batch_size=4, anchors=6, lr=3e-3, warmup=5, save_every=0, log_every=10)
    losses = []
    s = train_head(model, head0, samples, cfg, str(tmp_path / "a"), on_step=lambda st, l: losses.append(l))
    assert s["steps"] == 40
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    # the final head and the checkpoint reload in the published format
    for d in ("head", "checkpoint"):
        h = JetSpecDraftHead.from_pretrained(str(tmp_path / "a" / d))
        for k, v in head0.state_dict().items():
            torch.testing.assert_close(h.state_dict()[k].float(), v.float(), rtol=0, atol=0)
    assert os.path.isfile(tmp_path / "a" / "checkpoint" / "trainer_state.pt")
    assert (tmp_path / "a" / "train_log.jsonl").read_text().strip()
    # resume: 6 steps straight == 3 steps, then resume for the remaining 3
    cfg6 = TrainConfig(steps=6, batch_size=4, anchors=6, lr=3e-3, warmup=2, save_every=3, log_every=1)
    ha = JetSpecDraftHead.for_target(model.config, num_layers=1, block_size=4, mask_token_id=1)
    ha.load_state_dict(state0)
    train_head(model, ha, samples, cfg6, str(tmp_path / "b"))
    # interrupted after step 3 (the checkpoint of step 3 is on disk), then resumed
    hc = JetSpecDraftHead.for_target(model.config, num_layers=1, block_size=4, mask_token_id=1)
    hc.load_state_dict(state0)
    def stopper(st, loss):
        if st == 3:
            raise _Stop()
    with pytest.raises(_Stop):
        train_head(model, hc, samples, cfg6, str(tmp_path / "c"), on_step=stopper)
    assert torch.load(tmp_path / "c" / "checkpoint" / "trainer_state.pt", weights_only=False)["step"] == 3
    hd = JetSpecDraftHead.for_target(model.config, num_layers=1, block_size=4, mask_token_id=1)
    s2 = train_head(model, hd, samples, cfg6, str(tmp_path / "c"), resume=str(tmp_path / "c" / "checkpoint"))
    assert s2["steps"] == 6
    for k, v in ha.state_dict().items():
        torch.testing.assert_close(hd.state_dict()[k], v, rtol=1e-5, atol=1e-6)


class _Stop(Exception):
    pass


def test_max_epochs_caps_steps(tmp_path):
    torch.set_num_threads(2)
    model = tiny_model()
    samples = tiny_samples(model)
    head = JetSpecDraftHead.for_target(model.config, num_layers=1, block_size=4, mask_token_id=1)
    cfg = TrainConfig(steps=1000, batch_size=4, anchors=2, save_every=0, max_epochs=2.0)
    n = Batcher(samples, cfg, head.mask_token_id, head.block_size).n
    s = train_head(model, head, samples, cfg, str(tmp_path / "e"))
    assert s["steps"] == math.ceil(2.0 * n / 4) < 1000
    with pytest.raises(ValueError, match="max_epochs"):
        train_head(model, head, samples, TrainConfig(steps=5, batch_size=4, max_epochs=0.0), str(tmp_path / "f"))


def test_batcher_anchors_in_response_and_deterministic():
    samples = [Sample([5, 6, 7], list(range(10, 30))), Sample([5] * 4, [9, 9, 9])]
    cfg = TrainConfig(batch_size=2, anchors=8, max_len=16)
    b = Batcher(samples, cfg, 1, 4)
    ids, att, lens, anchors, valid = b.batch(3)
    ids2, _, _, anchors2, _ = b.batch(3)
    assert torch.equal(ids, ids2) and torch.equal(anchors, anchors2)
    for r in range(2):
        L = int(lens[r])
        P = 3 if L == 16 else 4
        a = anchors[r][valid[r]]
        assert (a >= P).all() and (a <= L - 2).all() and len(set(a.tolist())) == len(a)


class _EchoModel(torch.nn.Module):
    """A stand-in for an HF model in regenerate(): answers [first prompt token, 0 (eos)] and
    records the order in which prompts (by their first token) were answered."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
        first = [int(r[m.bool()][0]) for r, m in zip(input_ids, attention_mask)]
        self.seen.append(first)
        new = torch.tensor([[f, 0] + [0] * (max_new_tokens - 2) for f in first])
        return torch.cat([input_ids, new], dim=1)


def test_regenerate_order_is_chunked_not_global_longest_first(tmp_path, monkeypatch):
    import jetspec_ext.train as tr
    monkeypatch.setattr(tr, "REGEN_CHUNK_BATCHES", 2)
    lens = [1, 5, 2, 9, 3, 3, 8, 1, 7, 2]          # prompt i = [100 + i] + filler, length lens[i]
    prompts = [[100 + i] + [7] * (n - 1) for i, n in enumerate(lens)]
    m = _EchoModel()
    cache = str(tmp_path / "c.jsonl")
    out = regenerate(m, prompts, cache, max_new_tokens=4, batch_size=2, eos_token_id=0)
    # chunks of 2 batches x 2 prompts = 4 prompts, in prompt order; longest first within a chunk
    order = [x - 100 for b in m.seen for x in b]
    assert order == [3, 1, 2, 0, 6, 4, 5, 7, 8, 9]
    assert [s.response_ids for s in out] == [[100 + i, 0] for i in range(10)]  # prompt order, cut at eos
    # a time cap answers whole leading chunks of the prompt order, then resumes from the cache
    m2 = _EchoModel()
    calls = []
    monkeypatch.setattr(tr.time, "time", lambda: 100.0)
    cache2 = str(tmp_path / "c2.jsonl")
    real_gen = m2.generate

    def gen(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            monkeypatch.setattr(tr.time, "time", lambda: 1e9)  # the cap passes during batch 2
        return real_gen(*a, **k)
    m2.generate = gen
    part = regenerate(m2, prompts, cache2, max_new_tokens=4, batch_size=2, eos_token_id=0, end_by=1000.0)
    assert sorted(p.prompt_ids[0] - 100 for p in part) == [0, 1, 2, 3]   # the first chunk exactly
    assert len(load_cache(cache2)) == 4
    monkeypatch.setattr(tr.time, "time", lambda: 100.0)
    rest = regenerate(_EchoModel(), prompts, cache2, max_new_tokens=4, batch_size=2, eos_token_id=0)
    assert [s.response_ids for s in rest] == [s.response_ids for s in out]


def test_encode_prompts_matches_encode_prompt():
    from transformers import AutoTokenizer
    from jetspec_ext.train import encode_prompt
    tok = AutoTokenizer.from_pretrained(_demo_target())
    texts = ["def f(x):\n    return x\n", "", "class A:\n    pass\n\n", "x = 'ü' * 3"] * 3
    assert encode_prompts(tok, texts, "off", chunk=5) == [encode_prompt(tok, t, "off") for t in texts]
    assert encode_prompts(tok, [], "off") == []


def test_read_prompts_formats(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"prompt": "p1"}\n{"question": "q"}\n{"turns": ["t1", "t2"]}\n"s"\n')
    assert read_prompts(str(tmp_path / "a.jsonl")) == ["p1", "q", "t1", "s"]
    (tmp_path / "b.txt").write_text("one\ntwo\n")
    assert read_prompts(str(tmp_path / "b.txt")) == ["one", "two"]
    (tmp_path / "c.txt").write_text("def f():\n    pass\n\n\ndef g():\n    return 1\n")
    assert read_prompts(str(tmp_path / "c.txt")) == ["def f():\n    pass", "def g():\n    return 1"]
    with pytest.raises(ValueError):
        (tmp_path / "d.jsonl").write_text('{"x": 1}\n')
        read_prompts(str(tmp_path / "d.jsonl"))


def test_evaluate_through_decoder():
    model = tiny_model()
    head = JetSpecDraftHead.for_target(model.config, num_layers=1, block_size=4, mask_token_id=1)
    r = evaluate(model, head, [[3, 4, 5, 6], [7, 8, 9]], budgets=(4, 8), width=2, max_new_tokens=8,
                 measure_ar=True)
    assert r["budgets"]["4"]["tau"] >= 1.0 and r["budgets"]["8"]["identical_to_ar"] == "2/2"
    assert r["ar"]["tokens"] == 16
    for e in r["budgets"].values():  # per-prompt records add up to the totals
        assert len(e["per_prompt_accepted"]) == len(e["per_prompt_rounds"]) == 2
        assert sum(e["per_prompt_rounds"]) == e["rounds"]
        assert sum(e["per_prompt_accepted"]) / e["rounds"] == pytest.approx(e["tau"], rel=0, abs=1e-12)
        assert all(r_ >= 1 for r_ in e["per_prompt_rounds"])


def _entry(acc, rounds):
    return {"per_prompt_accepted": list(acc), "per_prompt_rounds": list(rounds)}


def test_tau_ratio_interval_point_and_degenerate_cases():
    """The ratio is (sum acc / sum rounds) / (sum acc / sum rounds), not a mean of per-prompt
    ratios; a head against itself, or a head that accepts exactly twice as much on every prompt,
    has a zero-width interval."""
    from jetspec_ext.train import tau_ratio_interval

    a = _entry([60, 10, 33], [10, 5, 11])
    b = _entry([30, 20, 22], [10, 5, 11])
    iv = tau_ratio_interval(a, b, n_boot=500)
    assert iv["ratio"] == pytest.approx((103 / 26) / (72 / 26))
    assert iv["lo"] <= iv["ratio"] <= iv["hi"] and iv["lo"] < iv["hi"] and iv["prompts"] == 3
    same = tau_ratio_interval(a, a, n_boot=200)
    assert same["ratio"] == same["lo"] == same["hi"] == pytest.approx(1.0)
    twice = tau_ratio_interval(_entry([20, 8, 44], [10, 5, 11]), _entry([10, 4, 22], [10, 5, 11]), n_boot=200)
    assert twice["lo"] == pytest.approx(2.0) and twice["hi"] == pytest.approx(2.0)


def test_tau_ratio_interval_is_a_paired_bootstrap():
    """Same seed: the interval equals a plain loop over the same resampled indices (the SAME
    indices for both heads), and a different seed moves it only a little."""
    import numpy as np

    from jetspec_ext.train import tau_ratio_interval

    g = np.random.default_rng(3)
    rounds_a = g.integers(10, 40, 40)
    rounds_b = g.integers(10, 40, 40)
    a = _entry(rounds_a * g.uniform(3, 7, 40) // 1, rounds_a)
    b = _entry(rounds_b * g.uniform(2, 6, 40) // 1, rounds_b)
    iv = tau_ratio_interval(a, b, n_boot=300, seed=11, level=0.9)
    idx = np.random.default_rng(11).integers(0, 40, size=(300, 40))
    ref = []
    for row in idx:
        ta = sum(a["per_prompt_accepted"][i] for i in row) / sum(a["per_prompt_rounds"][i] for i in row)
        tb = sum(b["per_prompt_accepted"][i] for i in row) / sum(b["per_prompt_rounds"][i] for i in row)
        ref.append(ta / tb)
    lo, hi = np.quantile(ref, [0.05, 0.95])
    assert iv["lo"] == pytest.approx(lo, rel=1e-12) and iv["hi"] == pytest.approx(hi, rel=1e-12)
    other = tau_ratio_interval(a, b, n_boot=4000, seed=12, level=0.9)
    assert abs(other["lo"] - iv["lo"]) < 0.1 and abs(other["hi"] - iv["hi"]) < 0.1


def test_tau_ratio_cross_validated_measures_each_pick_on_the_other_fold():
    """Each head's setting is chosen on one fold and its records are kept on the OTHER fold: a
    setting that is best only on the prompts it was chosen on gains nothing. Hand-computed on 4
    prompts (halves: prompts 0-1 / 2-3; parity: 0, 2 / 1, 3)."""
    from jetspec_ext.train import tau_ratio_cross_validated, tau_ratio_interval

    r = [10, 10, 10, 10]
    num = {0.5: _entry([80, 80, 40, 40], r),      # best on the first half only
           1.0: _entry([50, 50, 50, 50], r)}      # best on the second half
    den = {1.0: _entry([40, 40, 40, 40], r)}
    cv = tau_ratio_cross_validated(num, den, folds="halves", n_boot=200)
    # chosen on 0-1: T 0.5, measured on 2-3 (40, 40); chosen on 2-3: T 1.0, measured on 0-1 (50, 50)
    assert [(p["num"], p["den"]) for p in cv["chosen"]] == [(0.5, 1.0), (1.0, 1.0)]
    assert cv["num_tau"] == pytest.approx(180 / 40) and cv["den_tau"] == pytest.approx(4.0)
    assert cv["ratio"] == pytest.approx((180 / 40) / 4.0) and cv["prompts"] == 4
    assert cv["chosen"][0]["num_tau"] == pytest.approx(4.0) and cv["chosen"][1]["num_tau"] == pytest.approx(5.0)
    in_sample = max(tau_ratio_interval(e, den[1.0])["ratio"] for e in num.values())
    assert cv["ratio"] < in_sample                 # 1.125 against T 0.5's 1.5 in-sample
    par = tau_ratio_cross_validated(num, den, folds="parity", n_boot=200)
    # chosen on 0, 2: T 0.5 (tau 6 vs 5), kept on 1, 3 (80, 40); chosen on 1, 3: T 0.5 again, kept on 0, 2
    assert [p["num"] for p in par["chosen"]] == [0.5, 0.5] and par["ratio"] == pytest.approx(1.5)
    # one setting per head: the plain paired interval, same resamples
    one = tau_ratio_cross_validated({1.0: num[1.0]}, den, n_boot=300, seed=5)
    ref = tau_ratio_interval(num[1.0], den[1.0], n_boot=300, seed=5)
    assert (one["ratio"], one["lo"], one["hi"]) == pytest.approx((ref["ratio"], ref["lo"], ref["hi"]))


def test_tau_ratio_cross_validated_rejects_what_it_cannot_split():
    from jetspec_ext.train import tau_ratio_cross_validated

    a = _entry([6, 4, 5, 5], [2, 2, 2, 2])
    with pytest.raises(ValueError, match="different numbers of prompts"):
        tau_ratio_cross_validated({1.0: a}, {1.0: _entry([6, 4], [2, 2])})
    with pytest.raises(ValueError, match="folds"):
        tau_ratio_cross_validated({1.0: a}, {1.0: a}, folds="thirds")
    with pytest.raises(ValueError, match="at least one setting"):
        tau_ratio_cross_validated({}, {1.0: a})
    with pytest.raises(ValueError, match="per_prompt"):
        tau_ratio_cross_validated({1.0: {"tau": 3.0}}, {1.0: a})
    with pytest.raises(ValueError, match="at least 2 prompts"):
        tau_ratio_cross_validated({1.0: _entry([3], [1])}, {1.0: _entry([3], [1])})


def test_tau_ratio_interval_rejects_what_it_cannot_pair():
    from jetspec_ext.train import tau_ratio_interval

    a = _entry([6, 4], [2, 2])
    with pytest.raises(ValueError, match="per_prompt"):
        tau_ratio_interval({"tau": 3.0}, a)
    with pytest.raises(ValueError, match="same"):
        tau_ratio_interval(a, _entry([6, 4, 5], [2, 2, 2]))
    with pytest.raises(ValueError, match="lengths"):
        tau_ratio_interval(_entry([6, 4], [2]), a)
    with pytest.raises(ValueError, match="level"):
        tau_ratio_interval(a, a, level=1.0)
    with pytest.raises(ValueError, match="no tau ratio"):
        tau_ratio_interval(a, _entry([0, 0], [2, 2]))


def _count_generate_calls(monkeypatch):
    """Wrap the decoder's generate (evaluate imports it at call time): a list of per-call records."""
    import jetspec_ext.decoder as dec
    calls, real = [], dec.generate

    def counted(*a, **k):
        calls.append(k.get("budget"))
        return real(*a, **k)
    monkeypatch.setattr(dec, "generate", counted)
    return calls


def test_evaluate_warmup_decodes_one_prompt_per_cache_bucket_untimed(monkeypatch):
    """warmup=True decodes, before each timed pass, the first prompt of each cache-length bucket
    (here: 3 distinct prompt lengths, unrounded on the CPU; 2 of them share a length), and changes
    no result; without it there are no extra decodes."""
    model = tiny_model()
    head = JetSpecDraftHead.for_target(model.config, num_layers=1, block_size=4, mask_token_id=1)
    prompts = [[3, 4, 5, 6], [7, 8, 9], [10, 11, 12], [5, 6, 7, 8, 9]]
    kw = dict(budgets=(4, 8), width=2, max_new_tokens=8, measure_ar=True)
    calls = _count_generate_calls(monkeypatch)
    cold = evaluate(model, head, prompts, **kw)
    n_cold = len(calls)
    warm = evaluate(model, head, prompts, warmup=True, **kw)
    assert n_cold == 3 * len(prompts)                       # AR + 2 budgets
    assert len(calls) - n_cold == 3 * len(prompts) + 3 * 3  # + 3 buckets per pass
    for b in ("4", "8"):
        for k in ("tau", "tokens", "rounds", "identical_to_ar"):
            assert warm["budgets"][b][k] == cold["budgets"][b][k]
    assert warm["ar_tokens"] == cold["ar_tokens"]


def test_cache_slots_buckets():
    from jetspec_ext.decoder import cache_slots
    from jetspec_ext.target import Target
    t = Target(tiny_model(), (1,))
    assert cache_slots(t, 10, 20, 8, 3, graphed=False) == 10 + 20 + 8 + 3 + 2
    assert cache_slots(t, 10, 20, None, 0, graphed=False) == 10 + 20 + 1 + 2   # AR: one token a step
    assert cache_slots(t, 10, 20, 8, 3, graphed=True) == 256
    assert cache_slots(t, 250, 20, 8, 3, graphed=True) == 512
    assert cache_slots(t, 4090, 20, 8, 3, graphed=False) == 4090 + 6 + 8 + 3 + 2   # clipped to 4096 positions
    assert cache_slots(t, 100, 20, 8, 3, graphed=False, max_context=110) == 100 + 10 + 8 + 3 + 2


@requires_cuda
def test_cuda_evaluate_warmup_keeps_captures_out_of_the_timed_decodes(monkeypatch):
    """On CUDA with graphs, every capture happens in the warm-up decodes: the timed ones replay."""
    import warnings

    import jetspec_ext.decoder as dec
    from decoder_support import tiny_target
    # the shapes of test_decoder's graph tests (Qwen3 vocabulary, head dim 128), bf16 for the kernels
    model = tiny_target(tied=True, seed=9).cuda().to(torch.bfloat16)
    head = JetSpecDraftHead.for_target(model.config, num_layers=2, block_size=8)
    prompts = [[3, 4, 5, 6], [7, 8, 9], [3] * 300]         # two buckets of 256 slots
    captures, phases, real_capture, real_generate = [], [], dec.capture_graph, dec.generate

    def counted_capture(fn):
        captures.append(1)
        return real_capture(fn)

    def counted_generate(*a, **k):
        before = len(captures)
        r = real_generate(*a, **k)
        phases.append(len(captures) - before)
        return r
    monkeypatch.setattr(dec, "capture_graph", counted_capture)
    monkeypatch.setattr(dec, "generate", counted_generate)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dec.GraphCaptureFailed)  # a failed capture fails the test
        evaluate(model, head, prompts, budgets=(8,), width=2, max_new_tokens=8, measure_ar=True,
                 cuda_graph=True, warmup=True)
    # per pass (AR, budget 8): 2 warm-up decodes that capture, then 3 timed decodes that do not
    assert phases == [1, 1, 0, 0, 0] * 2, phases


def _demo_target():
    from jetspec_ext.demo import demo_dir, has_demo
    if not has_demo("target"):
        pytest.skip("the bundled demo target is not installed")
    return demo_dir("target")


def test_cli_block_noise_flags_reach_training(tmp_path, capsys):
    """`--block-noise P --block-noise-no-loss`, `--block-noise-blocks F`, `--block-noise-from S`,
    `--block-noise-ramp` and `--slot-weight-gamma G` reach the training config (the train line of
    the log names the recipe);
    the shaping flags without `--block-noise`, and S past the block's last mask slot, are refused
    before regeneration."""
    from jetspec_ext.cli import main
    target = _demo_target()
    torch.set_num_threads(2)
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "def add(a, b):\\n    return a + b\\n"}\n')
    base = ["train", "--target", target, "--prompts", str(p), "--out", str(tmp_path / "run"), "--steps", "1",
            "--batch-size", "1", "--anchors", "2", "--num-layers", "1", "--taps", "1,3", "--block-size", "6",
            "--gen-max-new-tokens", "8", "--device", "cpu", "--eval-num", "0"]
    capsys.readouterr()
    assert main(base + ["--block-noise", "0.5", "--block-noise-no-loss"]) == 0
    logged = capsys.readouterr()
    assert "block noise 0.5 (noisy slots out of the loss)" in logged.out + logged.err
    assert main(base + ["--block-noise-no-loss"]) != 0
    refused = capsys.readouterr()
    assert "--block-noise-no-loss needs --block-noise" in refused.err and "regenerated" not in refused.out
    assert main(base + ["--block-noise", "0.9", "--block-noise-blocks", "0.5"]) == 0
    logged = capsys.readouterr()
    assert "block noise 0.9 in a 0.5 fraction of the blocks" in logged.out + logged.err
    assert main(base + ["--block-noise-blocks", "0.5"]) != 0
    refused = capsys.readouterr()
    assert "--block-noise-blocks needs --block-noise" in refused.err and "regenerated" not in refused.out
    assert main(base + ["--block-noise", "0.9", "--block-noise-from", "3"]) == 0
    logged = capsys.readouterr()
    assert "block noise 0.9 from mask slot 3 on" in logged.out + logged.err
    assert main(base + ["--block-noise", "0.9", "--block-noise-from", "3", "--block-noise-ramp"]) == 0
    logged = capsys.readouterr()
    assert "block noise 0.9 from mask slot 3 on, rising linearly to the last slot" in logged.out + logged.err
    assert main(base + ["--slot-weight-gamma", "7"]) == 0
    logged = capsys.readouterr()
    assert "slot weights exp(-(k - 1) / 7.0)" in logged.out + logged.err
    assert main(base + ["--block-noise-ramp"]) != 0
    refused = capsys.readouterr()
    assert "--block-noise-ramp needs --block-noise" in refused.err and "regenerated" not in refused.out
    assert main(base + ["--block-noise", "0.9", "--block-noise-from", "6"]) != 0   # block 6: slots 1..5
    refused = capsys.readouterr()
    assert "past the head's last mask slot (5" in refused.err and "regenerated" not in refused.out


def test_cli_train_then_generate_with_demo_pair(tmp_path, capsys, monkeypatch):
    """`jetspec train` on the demo target (a few steps), then `jetspec generate` with no --target
    picks up the demo pair (JETSPEC_DEMO_DIR pointed at the bundled target + the new head)."""
    from jetspec_ext.cli import main
    target = _demo_target()
    torch.set_num_threads(2)
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "def add(a, b):\\n    \\"\\"\\"Return a + b.\\"\\"\\"\\n"}\n'
                 '{"prompt": "class Stack:\\n    def push(self, x):\\n"}\n')
    out = tmp_path / "run"
    args = ["train", "--target", target, "--prompts", str(p), "--out", str(out), "--steps", "4",
            "--batch-size", "2", "--anchors", "4", "--num-layers", "1", "--taps", "1,3", "--block-size", "6",
            "--gen-max-new-tokens", "16", "--warmup", "1", "--device", "cpu", "--save-dtype", "bfloat16",
            "--eval-prompts", str(p), "--eval-num", "1", "--eval-budgets", "4,8", "--eval-max-new-tokens", "8"]
    assert main(args) == 0
    summ = __import__("json").loads((out / "summary.json").read_text())
    assert summ["train"]["steps"] == 4 and summ["eval"]["budgets"]["8"]["tau"] >= 1.0
    assert len((out / "regen.jsonl").read_text().splitlines()) == 2
    head = JetSpecDraftHead.from_pretrained(str(out / "head"))
    assert head.fc.weight.dtype == torch.bfloat16 and head.target_layer_ids == [1, 3] and head.causal
    # resume from OUT/checkpoint for 2 more steps; the cache is reused (no new regeneration)
    assert main(args[:args.index("--steps")] + ["--steps", "6", "--resume"] + args[args.index("--steps") + 2:]) == 0
    assert __import__("json").loads((out / "summary.json").read_text())["train"]["steps"] == 6
    assert len((out / "regen.jsonl").read_text().splitlines()) == 2
    # --regenerate-only: fills the cache (2 more prompts), no head, a summary with the counts
    p2 = tmp_path / "p2.jsonl"
    p2.write_text(p.read_text() + '{"prompt": "import os\\n"}\n{"prompt": "x = 1\\n\\n"}\n')
    ro = tmp_path / "regen_only"
    assert main(["train", "--target", target, "--prompts", str(p2), "--out", str(ro), "--cache",
                 str(out / "regen.jsonl"), "--gen-max-new-tokens", "16", "--device", "cpu",
                 "--regenerate-only"]) == 0
    rs = __import__("json").loads((ro / "summary.json").read_text())["regenerate"]
    assert rs["prompts"] == 4 and rs["samples"] == 4 and not (ro / "head").exists()
    assert len((out / "regen.jsonl").read_text().splitlines()) == 4
    capsys.readouterr()
    demo = tmp_path / "demo"
    demo.mkdir()
    os.symlink(target, demo / "target")
    os.symlink(out / "head", demo / "head")
    monkeypatch.setenv("JETSPEC_DEMO_DIR", str(demo))
    assert main(["generate", "--max-new-tokens", "8", "--device", "cpu", "--budget", "8", "--compare-ar"]) == 0
    o = capsys.readouterr().out
    assert "def fibonacci" in o and "mean accepted length" in o and "identical output" in o
    # the demo head's default draft temperature, unless one is given
    from jetspec_ext.demo import DEMO_DRAFT_TEMPERATURE
    assert f"draft temperature {DEMO_DRAFT_TEMPERATURE:g})" in o and DEMO_DRAFT_TEMPERATURE != 1.0
    assert main(["generate", "--max-new-tokens", "8", "--device", "cpu", "--budget", "8",
                 "--draft-temperature", "1"]) == 0
    assert "draft temperature" not in capsys.readouterr().out


def test_batcher_block_fill_lengths():
    """--block-fill: a 6th tensor of revealed prefix lengths, 1..D-1 on chosen valid blocks and 0
    elsewhere, deterministic per step; block_fill 0 keeps the 5-tensor batch."""
    samples = [Sample([5, 6, 7], list(range(10, 40))), Sample([5] * 4, [9, 9, 9])]
    b0 = Batcher(samples, TrainConfig(batch_size=2, anchors=8, max_len=32), 1, 6)
    assert len(b0.batch(0)) == 5
    b = Batcher(samples, TrainConfig(batch_size=2, anchors=8, max_len=32, block_fill=0.5), 1, 6)
    batch = b.batch(2)
    assert len(batch) == 6 and torch.equal(batch[5], b.batch(2)[5])
    valid, fill = batch[4], batch[5]
    assert ((fill >= 1) & (fill <= 4))[fill > 0].all() and (fill[~valid] == 0).all()
    assert (fill > 0).any() and (fill[valid] == 0).any()  # p = 0.5 over 8 + 2 valid blocks
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match="block_fill"):
            TrainConfig(block_fill=bad)
    with pytest.raises(ValueError, match="block_fill"):
        Batcher(samples, TrainConfig(batch_size=2, anchors=8, max_len=32, block_fill=0.5), 1, 2)


def _block_case(causal, **cfg):
    """A tiny target, a 2-layer head with blocks of 5 and the first batch of 2 sequences x 5 anchors
    (TrainConfig options in cfg)."""
    model = tiny_model()
    samples = tiny_samples(model, n=2, R=24)
    head = JetSpecDraftHead.for_target(model.config, num_layers=2, block_size=5, mask_token_id=1,
                                       causal=causal).eval()
    batch = Batcher(samples, TrainConfig(batch_size=2, anchors=5, max_len=40, **cfg), 1, 5).batch(0)
    return model, head, batch


def _reference_block_loss(model, head, batch, block_tokens, in_loss, weight=lambda i: 1.0):
    """The mean forward KL over the slots in the loss, each block computed alone from hand-built
    tokens: block_tokens(r, k, a, L, t_logits) -> the block's N tokens; in_loss(r, k, i) -> slot i
    (1..N-1) counts (when its token a + i exists); weight(i): slot i's weight in the mean. Returns
    (mean, slot count)."""
    ids, att, lens, anchors, valid = batch[:5]
    N = head.block_size
    total, count, weights = 0.0, 0, 0.0
    for r in range(ids.shape[0]):
        T, L = ids.shape[1], int(lens[r])
        tapped, _ = _target_features(model, ids[r:r + 1], att[r:r + 1], head.target_layer_ids)
        t_logits = model(input_ids=ids[r:r + 1], attention_mask=att[r:r + 1]).logits[0].float()
        for k in range(anchors.shape[1]):
            if not valid[r, k]:
                continue
            a = int(anchors[r, k])
            toks = block_tokens(r, k, a, L, t_logits)
            mask = block_attention_mask(torch.tensor([[a]]), torch.tensor([[True]]), T, N, head.causal)
            h = dense_block_forward(head, tapped, model.model.embed_tokens(torch.tensor([toks])),
                                    (a + torch.arange(N)).view(1, N), mask)
            student = torch.log_softmax(model.lm_head(h[0, 1:]).float(), -1)
            for i in range(1, N):
                if a + i >= L:
                    break
                if in_loss(r, k, i):
                    teacher = torch.log_softmax(t_logits[a + i - 1], -1)
                    total += weight(i) * float((teacher.exp() * (teacher - student[i - 1])).sum())
                    count += 1
                    weights += weight(i)
    return total / max(weights, 1e-12), count


def test_batcher_block_noise_slots():
    """--block-noise: a 7th element (noisy, u), bool and uniform (B, K, D), noisy only in valid
    blocks, deterministic per step; the 6th (fill) is None without --block-fill."""
    samples = [Sample([5, 6, 7], list(range(10, 40))), Sample([5] * 4, [9, 9, 9])]
    b = Batcher(samples, TrainConfig(batch_size=2, anchors=8, max_len=32, block_noise=0.5), 1, 6)
    batch = b.batch(3)
    assert len(batch) == 7 and batch[5] is None
    noisy, u = batch[6]
    assert noisy.shape == u.shape == (2, 8, 5) and noisy.dtype == torch.bool
    assert torch.equal(noisy, b.batch(3)[6][0]) and torch.equal(u, b.batch(3)[6][1])
    assert not noisy[~batch[4]].any() and noisy[batch[4]].any() and (~noisy[batch[4]]).any()
    assert ((u >= 0) & (u < 1)).all()
    both = Batcher(samples, TrainConfig(batch_size=2, anchors=8, max_len=32, block_fill=0.5, block_noise=0.5),
                   1, 6).batch(3)
    assert len(both) == 7 and both[5] is not None
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match="block_noise"):
            TrainConfig(block_noise=bad)
    with pytest.raises(ValueError, match="needs block_noise"):
        TrainConfig(block_noise_in_loss=False)


def _noise_batch(**overrides):
    """Step 2's batch at noise 0.9 (4 sequences x 64 anchors, block 8), with TrainConfig overrides."""
    samples = [Sample([5, 6, 7], list(range(10, 400))) for _ in range(4)]
    cfg = TrainConfig(batch_size=4, anchors=64, max_len=400, block_noise=0.9, **overrides)
    return Batcher(samples, cfg, 1, 8).batch(2)


def test_batcher_block_noise_blocks_leaves_whole_blocks_clean():
    """--block-noise-blocks F: noise only in about a fraction F of the valid blocks (whole blocks
    all-MASK otherwise), a subset of the slots the same seed and step make noisy without it (so
    F = 1 reproduces a run without the setting); bad values refused."""
    every, half, one = (_noise_batch(**kw) for kw in ({}, {"block_noise_blocks": 0.5}, {"block_noise_blocks": 1.0}))
    assert torch.equal(one[6][0], every[6][0]) and torch.equal(half[6][1], every[6][1])
    noisy_all, noisy_half, valid = every[6][0], half[6][0], every[4]
    assert not (noisy_half & ~noisy_all).any()           # a subset of the same draws
    blocks_with_noise = noisy_half.any(-1)[valid].float().mean().item()
    assert 0.35 < blocks_with_noise < 0.65               # 256 blocks at 0.5 (each ~certain to get
    kept = noisy_half.any(-1)                            # noise at P 0.9 over 7 slots)
    assert torch.equal(noisy_half[kept], noisy_all[kept])  # a kept block keeps all its noisy slots
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="block_noise_blocks"):
            TrainConfig(block_noise=0.5, block_noise_blocks=bad)
    with pytest.raises(ValueError, match="needs block_noise"):
        TrainConfig(block_noise_blocks=0.5)


def test_batcher_block_noise_from_keeps_the_first_slots_mask():
    """--block-noise-from S: mask slots 1..S-1 never hold noise, slots S.. hold exactly the noise
    the same seed and step give without the setting (S = 1 reproduces it); bad values refused."""
    every, tail, one = (_noise_batch(**kw) for kw in ({}, {"block_noise_from": 4}, {"block_noise_from": 1}))
    assert torch.equal(one[6][0], every[6][0]) and torch.equal(tail[6][1], every[6][1])
    assert every[6][0][..., :3].any()                    # without it the first slots are noisy too
    assert not tail[6][0][..., :3].any()                 # slots 1..3 stay MASK
    assert torch.equal(tail[6][0][..., 3:], every[6][0][..., 3:])
    with pytest.raises(ValueError, match="past the block's last mask slot"):
        _noise_batch(block_noise_from=8)
    _noise_batch(block_noise_from=7)                     # block 8: slot 7 is the last, allowed
    with pytest.raises(ValueError, match="block_noise_from must be >= 1"):
        TrainConfig(block_noise=0.5, block_noise_from=0)
    with pytest.raises(ValueError, match="needs block_noise"):
        TrainConfig(block_noise_from=2)


def test_batcher_block_noise_ramp_rises_with_the_slot():
    """--block-noise-ramp: slot j (from S on) is noisy with probability P (j - S + 1) / (D - S + 1),
    from the same draws as without it (so a subset of those slots, and the last slot exactly as
    without it); the slots before S stay MASK; refused without --block-noise."""
    D = 7  # block 8
    every = _noise_batch()
    for S in (1, 3):
        ramp = _noise_batch(block_noise_ramp=True, block_noise_from=S)
        noisy, valid = ramp[6][0], ramp[4]
        assert torch.equal(ramp[6][1], every[6][1])             # the same token uniforms
        assert not (noisy & ~every[6][0]).any()                 # a subset of the same draws
        assert torch.equal(noisy[..., D - 1], every[6][0][..., D - 1])  # slot D: probability P
        assert not noisy[..., : S - 1].any()
        freq = noisy[valid].float().mean(0)                     # 256 blocks per slot
        for j in range(S, D + 1):
            expect = 0.9 * (j - S + 1) / (D - S + 1)
            assert abs(freq[j - 1].item() - expect) < 4 * (expect * (1 - expect) / 256) ** 0.5 + 1e-9, (S, j, freq)
        assert freq[S - 1] < 0.35 and freq[D - 1] > 0.8         # it does rise
    with pytest.raises(ValueError, match="needs block_noise"):
        TrainConfig(block_noise_ramp=True)


@pytest.mark.parametrize("noise_in_loss", [True, False])
@pytest.mark.parametrize("causal", [True, False])
@torch.no_grad()
def test_block_noise_draws_teacher_tokens_and_keeps_their_loss(causal, noise_in_loss):
    """Noisy slots hold the token at quantile u of the teacher's distribution for the slot (here
    found by a plain loop over the vocabulary), every existing slot stays in the loss (with
    ``noise_in_loss=False``: only the MASK slots), and the loss is the mean KL of each block
    computed alone from those hand-built tokens."""
    model, head, batch = _block_case(causal, block_noise=0.6)
    N = head.block_size
    ids, att, lens, anchors, valid, _, (noisy, u) = batch
    loss, stats = loss_on_batch(model, head, batch, noise_in_loss=noise_in_loss)
    drawn = []

    def block_tokens(r, k, a, L, t_logits):
        toks = [int(ids[r, a])]
        for i in range(1, N):
            if noisy[r, k, i - 1] and a + i < L:
                probs = torch.softmax(t_logits[a + i - 1], -1).double()
                c, target, tok = 0.0, float(u[r, k, i - 1]) * float(probs.sum()), probs.numel() - 1
                for v in range(probs.numel()):
                    c += float(probs[v])
                    if c >= target:
                        tok = v
                        break
                toks.append(tok)
                drawn.append(tok)
            else:
                toks.append(1)
        return toks

    in_loss = (lambda r, k, i: True) if noise_in_loss else (lambda r, k, i: not bool(noisy[r, k, i - 1]))
    ref, count = _reference_block_loss(model, head, batch, block_tokens, in_loss)
    assert drawn and stats["slots"] == count > 0
    per_depth = [sum(1 for r in range(ids.shape[0]) for k in range(anchors.shape[1])
                     if valid[r, k] and int(anchors[r, k]) + i < int(lens[r]) and in_loss(r, k, i))
                 for i in range(1, N)]
    assert stats["slots_by_depth"] == per_depth
    assert math.isclose(float(loss), ref, rel_tol=1e-4, abs_tol=1e-6)


@pytest.mark.parametrize("gamma", [3.0, -4.0])
@torch.no_grad()
def test_slot_weights_weigh_each_mask_slots_kl(gamma):
    """--slot-weight-gamma G: the loss is the KL of every mask slot k weighted by exp(-(k - 1) / G)
    (G > 0: the shallow slots count more, G < 0 the deep ones), each block computed alone; the
    uniform loss differs from it; the slot statistics do not change."""
    assert torch.allclose(slot_weights(4, 2.0), torch.exp(-torch.tensor([0.0, 0.5, 1.0, 1.5])))
    assert torch.equal(slot_weights(3, 0.0), torch.ones(3))
    model, head, batch = _block_case(True, slot_weight_gamma=gamma)
    N = head.block_size
    ids = batch[0]
    loss, stats = loss_on_batch(model, head, batch, slot_weight_gamma=gamma)
    ref, count = _reference_block_loss(model, head, batch, lambda r, k, a, L, t: [int(ids[r, a])] + [1] * (N - 1),
                                       lambda r, k, i: True, weight=lambda i: math.exp(-(i - 1) / gamma))
    assert stats["slots"] == count > 0
    assert math.isclose(float(loss), ref, rel_tol=1e-4, abs_tol=1e-6)
    uniform, uniform_stats = loss_on_batch(model, head, batch)
    assert not math.isclose(float(loss), float(uniform), rel_tol=1e-3)
    assert uniform_stats == stats
    with pytest.raises(ValueError, match="slot_weight_gamma must be finite"):
        TrainConfig(slot_weight_gamma=float("nan"))


@pytest.mark.parametrize("causal", [True, False])
@torch.no_grad()
def test_block_fill_reveals_true_tokens_and_drops_their_loss(causal):
    """With revealed prefixes the loss is the mean KL over the still-masked slots only, each block
    computed alone from hand-built tokens [anchor, x_a+1 .. x_a+j, MASK ..]."""
    model, head, batch = _block_case(causal, block_fill=1.0)
    N = head.block_size
    ids, att, lens, anchors, valid, fill = batch
    loss, stats = loss_on_batch(model, head, batch)

    def block_tokens(r, k, a, L, t_logits):
        j = int(fill[r, k])
        assert 1 <= j <= N - 2
        return [int(ids[r, a])] + [int(ids[r, a + i]) if i <= j and a + i < L else 1 for i in range(1, N)]

    ref, count = _reference_block_loss(model, head, batch, block_tokens, lambda r, k, i: i > int(fill[r, k]))
    assert stats["slots"] == count > 0
    assert math.isclose(float(loss), ref, rel_tol=1e-4, abs_tol=1e-6)
