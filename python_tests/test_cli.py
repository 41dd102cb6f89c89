"""Smoke tests of `jetspec generate` with tiny checkpoints written to tmp_path."""
import json
import shutil

import pytest
import torch

from conftest import record_calls
from decoder_support import TOKENIZER_DIR, tiny_target
from jetspec_ext.cli import main
from jetspec_ext.draft_head import JetSpecDraftHead


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ckpt")
    model = tiny_target(tied=True, seed=5)
    model.save_pretrained(root / "target")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{TOKENIZER_DIR}/{f}", root / "target" / f)
    head = JetSpecDraftHead.for_target(model.config, num_layers=2, block_size=6)
    head.save_pretrained(root / "draft")
    return root


def test_generate_with_compare_ar(ckpts, capsys, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"turns": ["Say hi."]}) + "\n" + json.dumps({"question": "2+2?"}) + "\n")
    rc = main(["generate", "--target", str(ckpts / "target"), "--draft", str(ckpts / "draft"),
               "--prompts", str(prompts), "--max-new-tokens", "12", "--budget", "16", "--width", "3",
               "--no-thinking", "--compare-ar", "--device", "cpu", "--stats"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "tokens: 24" in out and "mean accepted length" in out
    assert "AR baseline tokens/s" in out and "speedup" in out
    assert out.count("[AR baseline: identical output]") == 2


def _recording_generate(monkeypatch):
    """The keyword arguments of every jetspec_ext.decoder.generate call (the CLI imports it at
    call time)."""
    import jetspec_ext.decoder as dec

    return record_calls(monkeypatch, dec, "generate")


def test_generate_single_prompt_sampling(ckpts, capsys, monkeypatch):
    """The sampling settings reach the decoder."""
    seen = _recording_generate(monkeypatch)
    rc = main(["generate", "--target", str(ckpts / "target"), "--draft", str(ckpts / "draft"),
               "--prompt", "Hello", "--max-new-tokens", "8", "--budget", "8", "--width", "2",
               "--temperature", "0.7", "--top-p", "0.9", "--top-k", "5", "--seed", "3", "--device", "cpu"])
    assert rc == 0
    assert "tokens: 8" in capsys.readouterr().out
    assert seen and all((k["temperature"], k["top_p"], k["top_k"], k["seed"], k["budget"], k["width"])
                        == (0.7, 0.9, 5, 3, 8, 2) for k in seen), seen


def test_default_budget_on_cpu(ckpts, capsys):
    """Without --budget the CPU gets a 64-node tree (the best measured there), CUDA 128."""
    rc = main(["generate", "--target", str(ckpts / "target"), "--draft", str(ckpts / "draft"),
               "--prompt", "Hello", "--max-new-tokens", "6", "--width", "2", "--device", "cpu"])
    assert rc == 0
    assert "(budget 64," in capsys.readouterr().out


def test_warmup_decodes_untimed_and_changes_no_output(ckpts, capsys):
    """--warmup (default on CUDA only) decodes the first prompt once before the timed runs; the
    answers, tau and the AR check are those of a run without it, and the summary says so."""
    base = ["generate", "--target", str(ckpts / "target"), "--draft", str(ckpts / "draft"), "--prompt", "Hello",
            "--max-new-tokens", "10", "--budget", "16", "--width", "3", "--device", "cpu", "--no-stream",
            "--compare-ar"]
    assert main(base) == 0
    cold = capsys.readouterr().out
    assert main(base + ["--warmup"]) == 0
    warm = capsys.readouterr().out
    assert "untimed warm-up" in warm and "untimed warm-up" not in cold
    answer = lambda o: o.split("--- summary ---")[0]                      # noqa: E731
    tau = lambda o: o.split("mean accepted length (tau): ")[1].split()[0]  # noqa: E731
    assert answer(warm) == answer(cold) and tau(warm) == tau(cold)
    assert "[AR baseline: identical output]" in warm


def test_generate_draft_temperature(ckpts, capsys, monkeypatch):
    """--draft-temperature reaches the summary and the decoder; 0 is a clean error."""
    seen = _recording_generate(monkeypatch)
    base = ["generate", "--target", str(ckpts / "target"), "--draft", str(ckpts / "draft"), "--prompt", "Hello",
            "--max-new-tokens", "6", "--budget", "16", "--width", "2", "--device", "cpu"]
    assert main(base + ["--draft-temperature", "0.5"]) == 0
    assert "draft temperature 0.5)" in capsys.readouterr().out
    assert seen and all(k["draft_temperature"] == 0.5 for k in seen), seen
    seen.clear()
    assert main(base) == 0                      # a head given with --draft: 1.0 unless told
    assert "draft temperature" not in capsys.readouterr().out
    assert seen and all(k.get("draft_temperature", 1.0) == 1.0 for k in seen), seen
    assert main(base + ["--draft-temperature", "0"]) == 2
    assert "--draft-temperature must be" in capsys.readouterr().err


def test_errors(ckpts, tmp_path, capsys):
    base = ["generate", "--prompt", "hi", "--device", "cpu", "--max-new-tokens", "4"]
    # missing target / draft
    assert main(base + ["--target", str(tmp_path / "nope")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(base + ["--target", str(ckpts / "target"), "--draft", str(tmp_path / "nope")]) == 2
    assert "no config.json" in capsys.readouterr().err
    # mismatched head: other vocab / hidden / tapped layers out of range
    other = tiny_target(tied=True, vocab=512, hidden=32, layers=12)
    bad = JetSpecDraftHead.for_target(other.config, num_layers=1, block_size=4)
    bad.save_pretrained(tmp_path / "bad")
    assert main(base + ["--target", str(ckpts / "target"), "--draft", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "hidden size" in err and "vocab" in err and "out of range" in err
    # unsupported model type
    cfg = json.loads((ckpts / "target" / "config.json").read_text())
    (tmp_path / "llama").mkdir()
    cfg["model_type"] = "llama"
    (tmp_path / "llama" / "config.json").write_text(json.dumps(cfg))
    assert main(base + ["--target", str(tmp_path / "llama")]) == 2
    assert "not supported" in capsys.readouterr().err
    # prompt longer than the context
    short = tmp_path / "short"
    shutil.copytree(ckpts / "target", short)
    cfg = json.loads((short / "config.json").read_text())
    cfg["max_position_embeddings"] = 8
    (short / "config.json").write_text(json.dumps(cfg))
    assert main(base + ["--target", str(short)]) == 2
    assert "does not fit the context" in capsys.readouterr().err


def test_train_needs_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["train"])


BAD_SETTINGS = [  # (extra arguments, the start of the error message)
    (["--width", "0"], "--width must be in [1, 16], got 0"),
    (["--width", "17"], "--width must be in [1, 16], got 17"),
    (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
    (["--temperature", "nan"], "--temperature must be a finite number >= 0"),
    (["--temperature", "1", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--top-k", "-2"], "--top-k must be an integer >= 0"),
    (["--budget", "1"], "--budget must be >= 2"),
    (["--draft-temperature", "0"], "--draft-temperature must be a finite number > 0"),
    (["--device", "bogus"], "--device 'bogus': expected cpu, cuda, cuda:N or auto"),
    (["--device", "meta"], "--device 'meta': jetspec runs on cpu or cuda"),
]


@pytest.mark.parametrize("extra, message", BAD_SETTINGS, ids=[" ".join(e) for e, _ in BAD_SETTINGS])
def test_bad_settings_are_refused_before_the_target_loads(ckpts, capsys, monkeypatch, extra, message):
    """Settings the ops would refuse only once a round runs (a traceback after the prefill, the
    thirty-seventh session's audit) are refused first, with the option's name, and without
    loading the target's weights (slow for a large model)."""
    import transformers

    def no_load(*a, **k):
        raise AssertionError("the target's weights were loaded before the settings were checked")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    args = ["generate", "--target", str(ckpts / "target"), "--draft", str(ckpts / "draft"), "--prompt", "hi",
            "--max-new-tokens", "4", "--device", "cpu"]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert f"jetspec: error: {message}" in err, err


@pytest.mark.parametrize("option", ["--max-new-tokens", "--num-prompts"])
@pytest.mark.parametrize("value", ["0", "-3", "x"])
def test_counts_must_be_positive(ckpts, capsys, option, value):
    # (0 new tokens used to print an empty answer with exit 0; --num-prompts 0 used every prompt)
    with pytest.raises(SystemExit) as e:
        main(["generate", "--target", str(ckpts / "target"), "--prompt", "hi", option, value])
    assert e.value.code == 2
    assert f"{option}: expected an integer >= 1" in capsys.readouterr().err


def test_unreadable_config_and_missing_tokenizer(ckpts, tmp_path, capsys):
    base = ["generate", "--prompt", "hi", "--device", "cpu", "--max-new-tokens", "4"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    assert main(base + ["--target", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "cannot read its config.json" in err and "Traceback" not in err
    assert main(base + ["--target", str(ckpts / "target"), "--tokenizer", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert f"--tokenizer '{tmp_path / 'nope'}': cannot load a tokenizer" in err and len(err.splitlines()) == 1, err
    no_tok = tmp_path / "no_tok"
    shutil.copytree(ckpts / "target", no_tok, ignore=shutil.ignore_patterns("tokenizer*"))
    assert main(base + ["--target", str(no_tok)]) == 2
    assert "no tokenizer in the target directory" in capsys.readouterr().err


def test_unsupported_head_dim_is_a_clear_error(tmp_path, capsys):
    """A Qwen3 target whose head dim the tree_attention kernels do not handle used to decode its
    prompt and then fail with the op's RuntimeError."""
    model = tiny_target(tied=True, head_dim=32)
    model.save_pretrained(tmp_path / "t32")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{TOKENIZER_DIR}/{f}", tmp_path / "t32" / f)
    assert main(["generate", "--target", str(tmp_path / "t32"), "--prompt", "hi", "--device", "cpu",
                 "--max-new-tokens", "4"]) == 2
    assert "target head dim 32 is not supported" in capsys.readouterr().err


def test_hidden_size_mismatch_is_said_once(ckpts, tmp_path, capsys):
    other = tiny_target(tied=True, hidden=32)
    JetSpecDraftHead.for_target(other.config, num_layers=1, block_size=4).save_pretrained(tmp_path / "h32")
    assert main(["generate", "--target", str(ckpts / "target"), "--draft", str(tmp_path / "h32"), "--prompt", "hi",
                 "--device", "cpu", "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("hidden size") == 2 and "head hidden size 32 != target hidden size 64" in err, err


def test_a_context_too_short_for_max_new_tokens_is_noted(ckpts, tmp_path, capsys):
    short = tmp_path / "short"
    shutil.copytree(ckpts / "target", short)
    cfg = json.loads((short / "config.json").read_text())
    cfg["max_position_embeddings"] = 40
    (short / "config.json").write_text(json.dumps(cfg))
    assert main(["generate", "--target", str(short), "--prompt", "hi", "--no-thinking", "--device", "cpu",
                 "--max-new-tokens", "200", "--no-stream"]) == 0
    cap = capsys.readouterr()
    assert "leaves room for" in cap.err and "fewer than --max-new-tokens 200" in cap.err
    room = int(cap.err.split("leaves room for ")[1].split()[0])
    assert f"tokens: {room}" in cap.out


def test_generate_fp8_draft(ckpts, capsys, monkeypatch):
    """--fp8-draft builds the drafter with fp8 weight copies; the output stays the target's own
    (the AR baseline's, token for token); without a draft head it is a clean error."""
    import jetspec_ext.decoder as dec

    made = record_calls(monkeypatch, dec, "HeadDrafter")
    rc = main(["generate", "--target", str(ckpts / "target"), "--draft", str(ckpts / "draft"), "--prompt", "Hello",
               "--max-new-tokens", "10", "--budget", "16", "--width", "3", "--no-thinking", "--compare-ar",
               "--device", "cpu", "--fp8-draft"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert made and all(k.get("fp8") is True for k in made), made
    assert "[AR baseline: identical output]" in out and ", fp8 draft)" in out
    assert main(["generate", "--target", str(ckpts / "target"), "--prompt", "hi", "--device", "cpu",
                 "--max-new-tokens", "4", "--fp8-draft"]) == 2
    assert "--fp8-draft needs a draft head" in capsys.readouterr().err
