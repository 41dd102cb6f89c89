"""scripts/demo/extract_prompts.py (the demo head's prompts) and eval_demo_head's table, on the CPU."""
import json
import os
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "demo"
if not (SCRIPTS / "extract_prompts.py").exists():  # pragma: no cover
    pytest.skip("scripts/demo not found next to python_tests/", allow_module_level=True)
sys.path.insert(0, str(SCRIPTS))

import eval_demo_head  # noqa: E402
import extract_prompts  # noqa: E402
import select_draft_temperature  # noqa: E402
import summarize_pairs  # noqa: E402

MBPP_REC = {"prompt": "Write a function to add  two numbers.", "task_id": 7,
            "code": "import math\r\ndef add_nums(a, b): \r\n    return a + b"}


def test_mbpp_prompt_is_signature_plus_docstring():
    assert extract_prompts.mbpp_prompt(MBPP_REC) == \
        'def add_nums(a, b):\n    """Write a function to add two numbers."""\n'
    assert extract_prompts.mbpp_prompt({"prompt": "x", "code": "x = 1"}) is None


def test_mbpp_sets_skip_dunder_names():
    names, docs = extract_prompts.mbpp_sets([MBPP_REC, {"prompt": "Pair class.", "code": "class P:\r\n  def __init__(self):"}])
    assert names == {"add_nums"} and docs == {"write a function to add two numbers.", "pair class."}


def test_extract_prompts(tmp_path):
    src = tmp_path / "src"
    (src / "pkg" / "tests").mkdir(parents=True)
    (src / "pkg" / "a.py").write_text(
        'def keep(x, y=2):\n    """Return x plus y."""\n    return x + y\n\n'
        'class C:\n    def method(self):\n        """A method."""\n        return 1\n\n'
        'def add_nums(a, b):\n    """Same name as an MBPP function."""\n    return a + b\n\n'
        'def nodoc():\n    return 0\n')
    (src / "pkg" / "b.py").write_text('def keep(x, y=2):\n    """Return x plus y."""\n    return 0\n')
    (src / "pkg" / "tests" / "t.py").write_text('def test_x():\n    """In a test dir."""\n')
    (src / "pkg" / "bad.py").write_text("def (:\n")
    mbpp = tmp_path / "mbpp.jsonl"
    mbpp.write_text(json.dumps(MBPP_REC) + "\n")
    out, ev = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    info = extract_prompts.main(["--roots", str(src), "--mbpp", str(mbpp), "--train-out", str(out),
                                 "--eval-out", str(ev), "--snippets-per-file", "0"])
    got = sorted(json.loads(x)["prompt"] for x in out.read_text().splitlines())
    assert info["kinds"] == {"def": 2, "snippet": 0}
    assert got == ['def keep(x, y=2):\n    """Return x plus y."""\n', 'def method(self):\n    """A method."""\n']
    assert info["excluded_as_mbpp_like"] == 1 and info["eval_prompts"] == 1
    assert json.loads(ev.read_text())["prompt"].startswith("def add_nums(a, b):\n")
    # deterministic
    out2 = tmp_path / "train2.jsonl"
    extract_prompts.main(["--roots", str(src), "--mbpp", str(mbpp), "--train-out", str(out2),
                          "--snippets-per-file", "0"])
    assert out2.read_text() == out.read_text()


def test_extract_prompts_stdlib_smoke(tmp_path):
    out = tmp_path / "t.jsonl"
    info = extract_prompts.main(["--roots", os.path.join(sysconfig.get_paths()["stdlib"], "json"),
                                 "--train-out", str(out), "--workers", "2"])
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert info["kinds"]["def"] > 3 and info["kinds"]["snippet"] > 3
    assert all(r["prompt"].startswith(("def ", "async def ")) for r in recs if r["kind"] == "def")
    # hash order, not length order
    assert [r["prompt"] for r in recs] == sorted((r["prompt"] for r in recs), key=extract_prompts.order_key)
    # the number of worker processes does not change the output
    out1 = tmp_path / "t1.jsonl"
    extract_prompts.main(["--roots", os.path.join(sysconfig.get_paths()["stdlib"], "json"),
                          "--train-out", str(out1), "--workers", "1"])
    assert out1.read_text() == out.read_text()


SNIPPET_SRC = (
    'import os\n'
    'import sys\n'
    '\n'
    'CONSTANT = 3  # a module constant\n'
    '\n'
    'def helper(a, b):\n'
    '    """Helper."""\n'
    '    s = """a string\n'
    '\n'
    'with a blank line"""\n'
    '    return a + b + len(s)\n'
    '\n'
    '\n'
    'class Thing(object):\n'
    '    attr = 1\n'
    '\n'
    '    def method(self, x,\n'
    '               y=2):\n'
    '        return x * y\n'
    '\n'
    'def add_nums(a, b):\n'
    '    return a + b\n'
    '\n'
    'VALUE = helper(1, 2)\n'
)


def test_snippets_cut_points_and_mbpp_exclusion():
    import ast
    lines = SNIPPET_SRC.splitlines()
    tree = ast.parse(SNIPPET_SRC)
    def never(name, doc1):
        return False
    snips, n_ex = extract_prompts.snippets_of(tree, lines, "h", 100, 10_000, never)
    assert n_ex == 0 and snips
    full_prefixes = {"\n".join(lines[:c]) + "\n" for c in range(1, len(lines) + 1)}
    headers = 0
    for t in snips:
        assert t in full_prefixes or any(p.endswith(t) for p in full_prefixes)  # a file prefix (its tail)
        last = t.rstrip("\n").splitlines()[-1]
        if t.endswith("\n\n"):   # after a blank line, before a statement (not inside the string)
            assert lines[len(t.splitlines())] != "with a blank line\"\"\""
        else:                     # after a def/class header (the multi-line one: its last line)
            assert last.endswith(":") and not last.strip().startswith(("def method(self, x,",))
            headers += 1
    assert headers >= 3  # helper, Thing, method (and add_nums)
    # deterministic, capped per file, half of them after headers
    again, _ = extract_prompts.snippets_of(tree, lines, "h", 4, 10_000, never)
    assert again == extract_prompts.snippets_of(tree, lines, "h", 4, 10_000, never)[0] and 0 < len(again) <= 4
    assert sum(not t.endswith("\n\n") for t in again) >= 2
    # max chars keeps whole last lines
    short, _ = extract_prompts.snippets_of(tree, lines, "h", 100, 120, never)
    assert short and all(len(t) <= 120 and any(p.endswith(t) for p in full_prefixes) for t in short)
    # a snippet holding an MBPP-named function is excluded
    excl, n_ex = extract_prompts.snippets_of(tree, lines, "h", 100, 10_000, lambda n, d: n == "add_nums")
    assert n_ex > 0 and not any("def add_nums" in t for t in excl)
    assert len(excl) + n_ex == len(snips)


def test_extract_prompts_kinds_and_hash_order(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"m{i}.py").write_text(SNIPPET_SRC.replace("helper", f"helper{i}").replace("Thing", f"Thing{i}"))
    (src / "dup.py").write_text(SNIPPET_SRC.replace("helper", "helper0").replace("Thing", "Thing0"))  # = m0.py
    out = tmp_path / "train.jsonl"
    info = extract_prompts.main(["--roots", str(src), "--train-out", str(out), "--snippets-per-file", "3",
                                 "--workers", "2"])
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    kinds = [r["kind"] for r in recs]
    assert info["kinds"] == {"def": kinds.count("def"), "snippet": kinds.count("snippet")}
    assert info["kinds"]["def"] == 12 and info["kinds"]["snippet"] >= 12 and info["duplicate_files"] == 1
    keys = [extract_prompts.order_key(r["prompt"]) for r in recs]
    assert keys == sorted(keys) and len(set(r["prompt"] for r in recs)) == len(recs)
    lens = [len(r["prompt"]) for r in recs]
    assert lens != sorted(lens) and lens != sorted(lens, reverse=True)
    # --max-prompts keeps a prefix of the hash order (a uniform subset)
    out2 = tmp_path / "train2.jsonl"
    extract_prompts.main(["--roots", str(src), "--train-out", str(out2), "--snippets-per-file", "3",
                          "--max-prompts", "5", "--workers", "1"])
    assert out2.read_text().splitlines() == out.read_text().splitlines()[:5]


def test_results_table():
    res = {"prompts": 2, "max_new_tokens": 8, "device": "cpu", "dtype": "float32", "cuda_graph": False,
           "ar": {"tokens_per_s": 10.0},
           "configs": {"causal tree w7 b16": {"width": 7, "budget": 16, "depth": 15, "tau": 2.5,
                                              "tokens_per_s": 20.0, "speedup": 2.0, "identical_to_ar": "2/2"},
                       "bidirectional tree w7 b16": {"error": "boom"}}}
    t = eval_demo_head.render_table(res)
    assert "| causal tree w7 b16 | 7 | 16 | 15 | 2.50 | 20.0 | 2.00 | 2/2 |" in t and "boom" in t
    # a configuration that ran eagerly after a failed capture is marked, not passed off as graphed
    res["configs"]["causal tree w7 b16"]["graph_capture_failed"] = "capture failed: ..."
    t = eval_demo_head.render_table(res)
    assert "| 2.50 | 20.0 (eager: graph capture failed) | 2.00 |" in t


def test_capture_failure_warnings_are_recorded():
    """Only the decoder's GraphCaptureFailed warnings mark a row; other warnings pass through."""
    import warnings

    from jetspec_ext.decoder import GraphCaptureFailed

    def round_with(msg, category):
        warnings.warn(msg, category)
        return 7

    with warnings.catch_warnings(record=True) as passed_on:
        warnings.simplefilter("always")
        out, failed = eval_demo_head.recording_capture_failures(
            lambda: round_with("jetspec: CUDA graph capture of the round failed, running eagerly: boom",
                               GraphCaptureFailed))
        assert out == 7 and failed.endswith("boom")
        out, failed = eval_demo_head.recording_capture_failures(lambda: round_with("something else", UserWarning))
        assert out == 7 and failed is None
    assert [str(w.message) for w in passed_on] == ["something else"]


def test_pairs_table_lists_every_pair(tmp_path):
    """scripts/demo/summarize_pairs.py: per pair the steps of both heads, tau causal / bidirectional
    with their ratio per budget, both speedups at the largest budget and AR's tokens/s; a pair without a
    results file is still listed (a recipe comparison must show every recipe that ran)."""
    def res(c, d, steps):
        cfg = {}
        for b, (tc, td) in zip((16, 128), zip(c, d)):
            cfg[f"causal tree w7 b{b}"] = {"tau": tc, "speedup": 1.5 + b / 1000}
            cfg[f"bidirectional tree w7 b{b}"] = {"tau": td, "speedup": 1.2 + b / 1000}
        return {"budgets": [16, 128], "configs": cfg, "ar": {"tokens_per_s": 1650.04},
                "training": {"causal": {"train": {"steps": steps}}, "bidir": {"train": {"steps": steps - 3}}}}

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(res((3.0, 5.5), (2.5, 4.4), 2000)))
    b.write_text(json.dumps(res((3.0, 5.0), (3.0, 5.0), 1990)))
    t = summarize_pairs.render([(n, json.loads(p.read_text())) for n, p in (("p50", a), ("p0", b))])
    assert "| p50 | 2000/1997 | 3.00 / 2.50 (1.20) | 5.50 / 4.40 (1.25) | 1.63x / 1.33x | 1650.0 |" in t
    assert "| p0 | 1990/1987 | 3.00 / 3.00 (1.00) | 5.00 / 5.00 (1.00) | 1.63x / 1.33x | 1650.0 |" in t
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert summarize_pairs.main([f"p50={a}", f"gone={tmp_path / 'missing.json'}"]) == 0
    out = buf.getvalue()
    assert "| p50 |" in out and "| gone | ?/? |" in out and "gone: no results" in out
    assert "slot 1 causal / bidir" not in out                 # no slot_accuracy.json: no second table


def test_tables_give_the_ratio_interval_where_results_hold_per_prompt_records(tmp_path):
    """eval_demo_head's table ends with each budget's causal / bidirectional ratio and its paired
    bootstrap interval, and summarize_pairs adds ``[lo, hi]`` to the largest budget's ratio, when
    the rows hold per-prompt records; results without them render as before."""
    from jetspec_ext.train import tau_ratio_interval

    def row(kind, acc, rounds):
        return {"tau": sum(acc) / sum(rounds), "speedup": 2.0, "width": 7, "budget": 128, "depth": 15,
                "tokens_per_s": 1.0, "per_prompt_accepted": acc, "per_prompt_rounds": rounds}

    c = row("causal", [60, 50, 40, 70], [10, 10, 10, 10])
    d = row("bidirectional", [50, 45, 40, 50], [10, 10, 10, 10])
    res = {"budgets": [128], "prompts": 4, "configs": {"causal tree w7 b128": c, "bidirectional tree w7 b128": d}}
    iv = tau_ratio_interval(c, d)
    t = eval_demo_head.render_table(res)
    assert (f"- budget 128: causal / bidirectional tau {iv['ratio']:.3f}, 95 % paired bootstrap interval "
            f"over the 4 prompts {iv['lo']:.3f} - {iv['hi']:.3f}") in t
    assert f"({iv['ratio']:.2f}) [{iv['lo']:.2f}, {iv['hi']:.2f}] |" in summarize_pairs.render([("p", res)])
    for e in (c, d):
        del e["per_prompt_accepted"]
    assert "bootstrap" not in eval_demo_head.render_table(res)
    assert "[" not in summarize_pairs.pair_row("p", res)


def test_select_draft_temperature_reports_in_sample_and_cross_validated_ratios(tmp_path, capsys):
    """Several eval_demo_head result files of one pair at different draft temperatures: the
    per-temperature table, each head at its in-sample best, and the cross-validated ratios
    (jetspec_ext.train.tau_ratio_cross_validated); a repeated setting with other per-prompt
    records, or no budget with both heads, is refused."""
    from jetspec_ext.train import tau_ratio_cross_validated, tau_ratio_interval

    def row(t, acc):
        return {"tau": sum(acc) / 40, "width": 7, "budget": 128, "depth": 15, "policy": "accum",
                "draft_temperature": t, "per_prompt_accepted": acc, "per_prompt_rounds": [10] * 4}

    runs = [({"causal": [80, 80, 40, 40], "bidirectional": [40, 40, 40, 40]}, 0.6),
            ({"causal": [50, 50, 50, 50], "bidirectional": [45, 45, 40, 40]}, 1.0)]
    files = []
    for i, (accs, t) in enumerate(runs):
        res = {"prompts": 4, "budgets": [128], "configs": {
            f"{k} tree w7 b128": row(t, a) for k, a in accs.items()}}
        res["configs"]["causal chain w1 bD+1"] = row(t, [1, 1, 1, 1])      # not a tree row: ignored
        files.append(tmp_path / f"r{i}.json")
        files[-1].write_text(json.dumps(res))
    dup = tmp_path / "dup.json"                                            # the first run again
    dup.write_text(files[0].read_text())
    assert select_draft_temperature.main([str(f) for f in files + [dup]]) == 0
    out = capsys.readouterr().out
    c = {t: row(t, a["causal"]) for a, t in runs}
    d = {t: row(t, a["bidirectional"]) for a, t in runs}
    assert "| 0.6 | 6.0000 | 4.0000 |" in out and "| 1 | 5.0000 | 4.2500 |" in out
    iv = tau_ratio_interval(c[0.6], d[1.0])
    assert f"causal T 0.6 6.0000 / bidirectional T 1 4.2500 = ratio {iv['ratio']:.4f}" in out
    cv = tau_ratio_cross_validated(c, d, folds="halves")
    assert f"Cross-validated (halves; fold 0: causal T 0.6, bidirectional T 1; fold 1: causal T 1, " \
           f"bidirectional T 0.6): {cv['num_tau']:.4f} / {cv['den_tau']:.4f} = ratio {cv['ratio']:.4f}" in out
    bad = json.loads(files[0].read_text())
    bad["configs"]["causal tree w7 b128"]["per_prompt_accepted"] = [1, 2, 3, 4]
    dup.write_text(json.dumps(bad))
    assert select_draft_temperature.main([str(files[0]), str(dup)]) == 2
    assert "different per-prompt records" in capsys.readouterr().err
    lone = {"prompts": 4, "budgets": [128], "configs": {"causal tree w7 b128": row(1.0, [5, 5, 5, 5])}}
    dup.write_text(json.dumps(lone))
    assert select_draft_temperature.main([str(dup)]) == 2
    assert "both heads" in capsys.readouterr().err


def test_pairs_table_adds_the_slot_diagnostic(tmp_path):
    """A pair directory holding slot_accuracy.json (make_demo_head.sh --slot-diag) adds a second
    table: both heads' all-MASK top-1 at slots 1, 2, 3, 4, 8, per pair; pairs without it are absent
    from that table only."""
    import contextlib
    import io

    def slot_json(c, b):
        return {"num": 24, "heads": {"causal": {"0.0": {"top1_by_depth": c}}, "bidir": {"0.0": {"top1_by_depth": b}}}}

    res = {"budgets": [16], "configs": {"causal tree w7 b16": {"tau": 3.0, "speedup": 1.5},
                                        "bidirectional tree w7 b16": {"tau": 2.5, "speedup": 1.2}}}
    for name in ("t4", "plain"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "demo_head_results.json").write_text(json.dumps(res))
    (tmp_path / "t4" / "slot_accuracy.json").write_text(json.dumps(
        slot_json([0.94, 0.84, 0.58, 0.28, 0.25, 0.2, 0.2, 0.21], [0.91, 0.66, 0.32, 0.26, 0.2, 0.2, 0.2, 0.18])))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert summarize_pairs.main([f"{n}={tmp_path / n / 'demo_head_results.json'}" for n in ("t4", "plain")]) == 0
    out = buf.getvalue()
    assert "| t4 | 24 | 0.94 / 0.91 | 0.84 / 0.66 | 0.58 / 0.32 | 0.28 / 0.26 | 0.21 / 0.18 |" in out
    assert out.count("| plain |") == 1                          # in the main table only


def test_noise_reliance_all_mask_matches_diag_accuracy(tmp_path):
    """diag_noise_reliance's all-MASK per-slot top-1 (Batcher + loss_on_batch, against the
    teacher's argmax) equals diag_accuracy's (its own block forward, against the greedy answer's
    next tokens) on the bundled pair; with noise the MASK slots counted are fewer, and the JSON
    holds every head and noise level."""
    import torch
    import diag_accuracy
    import diag_noise_reliance
    from jetspec_ext.demo import demo_head_dir, load_demo_target
    from jetspec_ext.draft_head import JetSpecDraftHead
    from jetspec_ext.train import load_cache

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "def add(a, b):\\n    \\"\\"\\"Add two numbers.\\"\\"\\"\\n"}\n')
    out = tmp_path / "rel.json"
    assert diag_noise_reliance.main(["--head", f"h={demo_head_dir()}", "--prompts", str(prompts), "--num", "1",
                                     "--noise", "0,0.5", "--gen-max-new-tokens", "24", "--cache-dir",
                                     str(tmp_path), "--out", str(out)]) == 0
    res = json.loads(out.read_text())["heads"]["h"]
    clean, noisy = res["0.0"], res["0.5"]
    assert sum(noisy["slots_by_depth"]) < sum(clean["slots_by_depth"])

    model, _ = load_demo_target(device="cpu", dtype=torch.float32)
    head = JetSpecDraftHead.from_pretrained(demo_head_dir(), dtype=torch.float32).eval()
    (sample,) = load_cache(str(tmp_path / "regen_heldout.jsonl")).values()
    m = diag_accuracy.slot_metrics(model, head, list(sample.prompt_ids) + list(sample.response_ids),
                                   len(sample.prompt_ids))
    ok = m["ok"].double()
    assert clean["slots_by_depth"] == ok.sum(0).tolist()
    expect = ((m["top1"].double() * ok).sum(0) / ok.sum(0).clamp(min=1)).tolist()
    assert clean["top1_by_depth"] == pytest.approx(expect, abs=1e-6)  # fp32 fractions; one slot is >= 1/24


def test_refine_first_pass_is_the_decoders_chain(tmp_path):
    """diag_refine's first pass (the decoder's all-MASK block) gives, per anchor, the leading run of
    diag_accuracy's top-1 hits; later passes are computed (shape) and change the drafts."""
    import torch
    import diag_accuracy
    import diag_refine
    from jetspec_ext.demo import demo_head_dir, load_demo_target
    from jetspec_ext.draft_head import JetSpecDraftHead
    from jetspec_ext.train import regenerate

    model, tok = load_demo_target(device="cpu", dtype=torch.float32)
    head = JetSpecDraftHead.from_pretrained(demo_head_dir(), dtype=torch.float32).eval()
    prompt = tok("def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n")["input_ids"]
    (s,) = regenerate(model, [prompt], str(tmp_path / "regen.jsonl"), max_new_tokens=24, pad_token_id=tok.pad_token_id or 0)
    seq, P = list(s.prompt_ids) + list(s.response_ids), len(s.prompt_ids)
    lens = diag_refine.chain_lengths(model, head, seq, P, passes=2, max_len=384)
    m = diag_accuracy.slot_metrics(model, head, seq, P)
    assert lens.shape == (2, m["top1"].shape[0])
    assert torch.equal(lens[0], (m["top1"] & m["ok"]).long().cumprod(1).sum(1))
    assert lens[0].max() > 0


def test_demo_pairs_refuses_bad_settings_before_any_work(tmp_path):
    """scripts/gpu/demo_pairs.sh checks its settings first: a cache file that does not exist, a bad
    REGEN_SECONDS with DEMO_CACHE=regenerate, a malformed PAIRS item each stop it with exit 2 and a
    message naming the setting, before any regeneration or training (no work folder is made)."""
    import subprocess

    def run(**env):
        work = tmp_path / "work"
        full = {**os.environ, "OUT": str(tmp_path / "out"), "PAIRS_WORK": str(work), **env}
        r = subprocess.run(["bash", str(REPO / "scripts" / "gpu" / "demo_pairs.sh")], env=full,
                           capture_output=True, text=True, timeout=60)
        return r.returncode, r.stdout + r.stderr, work.exists()

    rc, out, made = run(DEMO_CACHE=str(tmp_path / "missing.jsonl.gz"), PAIRS="p0:")
    assert rc == 2 and "no such file" in out and "DEMO_CACHE=regenerate" in out and not made
    rc, out, made = run(DEMO_CACHE="regenerate", REGEN_SECONDS="soon", PAIRS="p0:")
    assert rc == 2 and "REGEN_SECONDS must be a positive integer" in out and not made
    cache = tmp_path / "c.jsonl"
    cache.write_text("")
    rc, out, made = run(DEMO_CACHE=str(cache), PAIRS="p0: bad name:--block-noise=0.5")
    assert rc == 2 and "bad PAIRS item" in out and not made


def test_eval_demo_head_tau_only_on_the_bundled_pair(tmp_path):
    """eval_demo_head.py end to end on the CPU with the bundled demo target and head (real parts):
    --no-ar records the baseline as skipped (no speedup, no identical-to-AR), --no-chain leaves the
    chain row out, every tree row keeps per-prompt records that add up to its tau, and the same head
    in both slots gives a ratio of exactly 1 with a zero-width interval."""
    pytest.importorskip("transformers")
    from jetspec_ext.demo import demo_head_dir

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in (
        'def add(a, b):\n    """Return a + b."""\n', 'def is_even(n):\n    """True if n is even."""\n')) + "\n")
    out = tmp_path / "r.json"
    head = demo_head_dir()
    assert eval_demo_head.main(["--causal", head, "--bidir", head, "--prompts", str(prompts), "--num", "2",
                                "--budgets", "16", "--max-new-tokens", "8", "--device", "cpu", "--no-ar",
                                "--no-chain", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["ar"] == {"skipped": "--no-ar"}
    assert sorted(res["configs"]) == ["bidirectional tree w7 b16", "causal tree w7 b16"]
    for e in res["configs"].values():
        assert "speedup" not in e and "identical_to_ar" not in e
        assert len(e["per_prompt_rounds"]) == 2
        assert sum(e["per_prompt_accepted"]) / sum(e["per_prompt_rounds"]) == pytest.approx(e["tau"])
    table = (tmp_path / "r.md").read_text()
    assert "| autoregressive | - | - | - | skipped (--no-ar) |" in table
    assert "causal / bidirectional tau 1.000, 95 % paired bootstrap interval over the 2 prompts 1.000 - 1.000" in table


def test_eval_demo_head_draft_temperatures(tmp_path):
    """--draft-temperature / --bidir-draft-temperature reach each head's rows (recorded and shown in
    the table); a temperature <= 0 is refused before anything loads."""
    pytest.importorskip("transformers")
    from jetspec_ext.demo import demo_head_dir

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": 'def add(a, b):\n    """Return a + b."""\n'}) + "\n")
    out = tmp_path / "r.json"
    head = demo_head_dir()
    args = ["--causal", head, "--bidir", head, "--prompts", str(prompts), "--num", "1", "--budgets", "16",
            "--max-new-tokens", "8", "--device", "cpu", "--no-ar", "--no-chain", "--out", str(out)]
    assert eval_demo_head.main(args + ["--draft-temperature", "0.5", "--bidir-draft-temperature", "2"]) == 0
    res = json.loads(out.read_text())
    assert res["configs"]["causal tree w7 b16"]["draft_temperature"] == 0.5
    assert res["configs"]["bidirectional tree w7 b16"]["draft_temperature"] == 2.0
    table = (tmp_path / "r.md").read_text()
    assert "| causal tree w7 b16, draft T 0.5 |" in table and "| bidirectional tree w7 b16, draft T 2 |" in table
    with pytest.raises(SystemExit):
        eval_demo_head.main(args + ["--bidir-draft-temperature", "0"])


def test_eval_demo_head_depth(tmp_path):
    """--depth D drafts D depths in the tree rows (at most budget - 1) and gives the chain row budget
    D + 1; a depth the head cannot draft (past block - 1) or below 1 is refused before the target
    loads (argparse exits with status 2)."""
    pytest.importorskip("transformers")
    from jetspec_ext.demo import demo_head_dir
    from jetspec_ext.draft_head import JetSpecDraftHead

    head = demo_head_dir()
    block = JetSpecDraftHead.from_pretrained(head).block_size
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": 'def add(a, b):\n    """Return a + b."""\n'}) + "\n")
    out = tmp_path / "r.json"
    args = ["--causal", head, "--prompts", str(prompts), "--num", "1", "--budgets", "16,4",
            "--max-new-tokens", "8", "--device", "cpu", "--no-ar", "--out", str(out)]
    assert eval_demo_head.main(args + ["--depth", "5"]) == 0
    cfg = json.loads(out.read_text())["configs"]
    assert cfg["causal tree w7 b16"]["depth"] == 5
    assert cfg["causal tree w7 b4"]["depth"] == 3  # budget - 1
    assert cfg["causal chain w1 bD+1"]["budget"] == 6 and cfg["causal chain w1 bD+1"]["depth"] == 5
    assert eval_demo_head.main(args) == 0  # default: the head's block - 1
    cfg = json.loads(out.read_text())["configs"]
    assert cfg["causal tree w7 b16"]["depth"] == block - 1 and cfg["causal chain w1 bD+1"]["budget"] == block
    for bad in (str(block), "0"):
        with pytest.raises(SystemExit) as e:
            eval_demo_head.main(args + ["--depth", bad])
        assert e.value.code == 2
