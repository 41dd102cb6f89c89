#!/usr/bin/env python
"""Prompts for the demo head: "function signature + docstring" from Python sources, and the same
form for held-out MBPP problems.

Training prompts (``--train-out``): every function (and method) with a docstring in the ``.py``
files of the interpreter's standard library (or ``--roots``), written as its ``def`` header line(s)
plus its docstring, dedented, ending with a newline; the model is to write the body. Deterministic:
files in sorted order, prompts deduplicated (first occurrence wins), then ordered by a hash of the
text (a ``--max-prompts`` cap samples evenly). Excluded: test directories (``test``, ``tests``,
``idle_test``), files that do not parse, prompts longer than ``--max-chars``, and anything that
resembles MBPP: a function whose name is an MBPP function name, or whose docstring's first line
equals an MBPP problem statement (when the MBPP file is available).

Eval prompts (``--eval-out``): the MBPP test problems (``mbpp_test.jsonl``: "prompt", "code") as
``<first def line of "code">`` + a docstring holding "prompt", e.g.::

    def remove_Occ(s,ch):
        \"\"\"Write a python function to remove first and last occurrence of a given character from the string.\"\"\"

Both outputs are JSONL ``{"prompt": ...}`` (the format ``jetspec train --prompts`` reads).
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import sys
import sysconfig
import textwrap
import warnings

SKIP_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"}
DEF_RE = re.compile(r"^\s*def\s+([A-Za-z_]\w*)\s*\(.*$", re.M)


def mbpp_prompt(rec: dict) -> str | None:
    """Signature (first ``def`` line of "code") + docstring ("prompt")."""
    code = rec.get("code", "").replace("\r\n", "\n").replace("\r", "\n")
    m = DEF_RE.search(code)
    if not m:
        return None
    sig = m.group(0).strip()
    doc = " ".join(rec.get("prompt", "").split()).replace('"""', "'''")
    return f'{sig}\n    """{doc}"""\n'


def load_mbpp(path: str):
    recs = []
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            recs = [json.loads(x) for x in f if x.strip()]
    return recs


def functions_of(path: str, src: str, max_chars: int):
    """(name, docstring first line, prompt) of each documented function in ``src``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tree = ast.parse(src)
        except (SyntaxError, ValueError):
            return
    lines = src.splitlines()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.body:
            continue
        first = node.body[0]
        if not (isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant)
                and isinstance(first.value.value, str)):
            continue
        doc = first.value.value.strip()
        if not doc or first.end_lineno is None:
            continue
        text = "\n".join(lines[node.lineno - 1: first.end_lineno])
        text = textwrap.dedent(text).rstrip() + "\n"
        if len(text) > max_chars or not text.lstrip().startswith(("def ", "async def ")):
            continue
        yield node.name, doc.splitlines()[0].strip(), text


def python_files(roots):
    for root in roots:
        for d, subdirs, files in os.walk(root):
            subdirs[:] = sorted(s for s in subdirs if s not in SKIP_DIRS and not s.startswith("."))
            for f in sorted(files):
                if f.endswith(".py"):
                    yield os.path.join(d, f)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--roots", nargs="*", default=None, help="source roots (default: the stdlib)")
    ap.add_argument("--mbpp", default=None, help="mbpp_test.jsonl (for the eval prompts and the exclusion)")
    ap.add_argument("--train-out", required=True)
    ap.add_argument("--eval-out", default=None)
    ap.add_argument("--max-prompts", type=int, default=0, help="cap on training prompts (0: all)")
    ap.add_argument("--max-chars", type=int, default=1500)
    ap.add_argument("--max-files", type=int, default=0, help="read at most N files (0: all; for tests)")
    a = ap.parse_args(argv)
    roots = a.roots or [sysconfig.get_paths()["stdlib"]]
    mbpp = load_mbpp(a.mbpp)
    mbpp_names, mbpp_docs = set(), set()
    for r in mbpp:
        m = DEF_RE.search(r.get("code", ""))
        if m:
            mbpp_names.add(m.group(1).lower())
        mbpp_docs.add(" ".join(r.get("prompt", "").split()).lower())
    seen, prompts, n_files, n_excl = set(), [], 0, 0
    for path in python_files(roots):
        if a.max_files and n_files >= a.max_files:
            break
        try:
            with open(path, encoding="utf-8") as f:
                src = f.read()
        except (UnicodeDecodeError, OSError):
            continue
        n_files += 1
        for name, doc1, text in functions_of(path, src, a.max_chars):
            if name.lower() in mbpp_names or doc1.lower() in mbpp_docs:
                n_excl += 1
                continue
            if text in seen:
                continue
            seen.add(text)
            prompts.append(text)
    prompts.sort(key=lambda t: hashlib.sha1(t.encode()).hexdigest())
    if a.max_prompts:
        prompts = prompts[: a.max_prompts]
    os.makedirs(os.path.dirname(os.path.abspath(a.train_out)), exist_ok=True)
    with open(a.train_out, "w", encoding="utf-8") as f:
        for t in prompts:
            f.write(json.dumps({"prompt": t}) + "\n")
    n_eval = 0
    if a.eval_out:
        with open(a.eval_out, "w", encoding="utf-8") as f:
            for r in mbpp:
                p = mbpp_prompt(r)
                if p:
                    f.write(json.dumps({"prompt": p, "task_id": r.get("task_id")}) + "\n")
                    n_eval += 1
    info = {"files": n_files, "train_prompts": len(prompts), "excluded_as_mbpp_like": n_excl,
            "eval_prompts": n_eval, "roots": roots}
    print("[extract_prompts] " + json.dumps(info), flush=True)
    return info


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
