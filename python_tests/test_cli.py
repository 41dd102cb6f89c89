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
    assert "draft_temperature must be" in capsys.readouterr().err


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
