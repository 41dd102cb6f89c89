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

MBPP_REC = {"prompt": "Write a function to add  two numbers.", "task_id": 7,
            "code": "import math\r\ndef add_nums(a, b): \r\n    return a + b"}


def test_mbpp_prompt_is_signature_plus_docstring():
    assert extract_prompts.mbpp_prompt(MBPP_REC) == \
        'def add_nums(a, b):\n    """Write a function to add two numbers."""\n'
    assert extract_prompts.mbpp_prompt({"prompt": "x", "code": "x = 1"}) is None


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
                                 "--eval-out", str(ev)])
    got = sorted(json.loads(x)["prompt"] for x in out.read_text().splitlines())
    assert got == ['def keep(x, y=2):\n    """Return x plus y."""\n', 'def method(self):\n    """A method."""\n']
    assert info["excluded_as_mbpp_like"] == 1 and info["eval_prompts"] == 1
    assert json.loads(ev.read_text())["prompt"].startswith("def add_nums(a, b):\n")
    # deterministic
    out2 = tmp_path / "train2.jsonl"
    extract_prompts.main(["--roots", str(src), "--mbpp", str(mbpp), "--train-out", str(out2)])
    assert out2.read_text() == out.read_text()


def test_extract_prompts_stdlib_smoke(tmp_path):
    out = tmp_path / "t.jsonl"
    info = extract_prompts.main(["--roots", os.path.join(sysconfig.get_paths()["stdlib"], "json"),
                                 "--train-out", str(out)])
    assert info["train_prompts"] > 3
    assert all(json.loads(x)["prompt"].startswith(("def ", "async def ")) for x in out.read_text().splitlines())


def test_results_table():
    res = {"prompts": 2, "max_new_tokens": 8, "device": "cpu", "dtype": "float32", "cuda_graph": False,
           "ar": {"tokens_per_s": 10.0},
           "configs": {"causal tree w7 b16": {"width": 7, "budget": 16, "depth": 15, "tau": 2.5,
                                              "tokens_per_s": 20.0, "speedup": 2.0, "identical_to_ar": "2/2"},
                       "bidirectional tree w7 b16": {"error": "boom"}}}
    t = eval_demo_head.render_table(res)
    assert "| causal tree w7 b16 | 7 | 16 | 15 | 2.50 | 20.0 | 2.00 | 2/2 |" in t and "boom" in t
