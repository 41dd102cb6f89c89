#!/usr/bin/env python
"""Prompts for the demo head: "function signature + docstring" and file-prefix snippets from Python
sources, and the "signature + docstring" form for held-out MBPP problems.

Training prompts (``--train-out``), two kinds (field ``"kind"``):

* ``def``: every function (and method, nested ones included) with a docstring, written as its
  ``def`` header line(s) plus its docstring, dedented, ending with a newline; the model is to write
  the body. At most ``--max-chars`` characters.
* ``snippet``: file-prefix snippets. Up to ``--snippets-per-file`` cut points per file, at line
  boundaries: right after a ``def``/``class`` header line (the model writes the docstring / body),
  or after a blank line that precedes a statement (the model writes the next statement). The
  snippet is the text of the file up to the cut, keeping only its last whole lines that fit in
  ``--snippet-max-chars`` (the recent context: ``jetspec train`` keeps a prompt's last
  ``max_len / 2`` tokens anyway). Cuts are drawn at random (seeded by the file's content), half of
  them after headers. Snippets with very long lines (data blobs) or fewer than 2 non-blank lines
  are skipped.

Sources: the ``.py`` files under ``--roots`` (default: the interpreter's standard library), in
sorted order, files with identical content read once. Excluded: test directories (``test``,
``tests``, ``idle_test``), files that are not UTF-8 or do not parse, and anything that resembles
MBPP: a ``def`` prompt (or a snippet containing a function) whose function name is an MBPP function
name (dunder names aside) or whose docstring's first line equals an MBPP problem statement (when the
MBPP file is available). Files are parsed by ``--workers`` processes; the output does not depend on their
number.

Order: prompts are deduplicated (first occurrence wins), then ordered by a SHA-1 of the text, NOT by
length, so any prefix of the file (a ``--max-prompts`` cap, or a time-capped regeneration that
answers prompts in file order) is a uniform random subset of both kinds. The counts per kind are
printed.

Eval prompts (``--eval-out``): the MBPP test problems (``mbpp_test.jsonl``: "prompt", "code") as
``<first def line of "code">`` + a docstring holding "prompt", e.g.::

    def remove_Occ(s,ch):
        \"\"\"Write a python function to remove first and last occurrence of a given character from the string.\"\"\"

Both outputs are JSONL ``{"prompt": ...}`` (the format ``jetspec train --prompts`` reads; it ignores
the extra ``kind`` / ``task_id`` fields).
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import multiprocessing
import os
import random
import re
import sys
import sysconfig
import textwrap
import time
import warnings

SKIP_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"}
DEF_RE = re.compile(r"^\s*def\s+([A-Za-z_]\w*)\s*\(.*$", re.M)
MAX_FILE_BYTES = 2_000_000       # larger sources are generated tables, not code worth prompting on
SNIPPET_MAX_LINE = 160           # a snippet with a longer line is probably data
SNIPPET_MIN_CHARS = 80


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


def mbpp_sets(recs):
    """(lower-cased MBPP function names, lower-cased normalised problem statements). Dunder names
    (``__init__`` of the class-based problems) are left out: they would exclude every constructor."""
    names, docs = set(), set()
    for r in recs:
        m = DEF_RE.search(r.get("code", ""))
        if m and not (m.group(1).startswith("__") and m.group(1).endswith("__")):
            names.add(m.group(1).lower())
        docs.add(" ".join(r.get("prompt", "").split()).lower())
    return names, docs


def _parse(src: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ast.parse(src)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return None


def _doc1(node) -> str | None:
    """First line of a function's docstring (None: no docstring)."""
    if not node.body:
        return None
    first = node.body[0]
    if (isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant)
            and isinstance(first.value.value, str)):
        doc = first.value.value.strip()
        return doc.splitlines()[0].strip() if doc else ""
    return None


def functions_of(tree, lines, max_chars: int):
    """(name, docstring first line, prompt) of each documented function of a parsed file."""
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.body:
            continue
        doc1 = _doc1(node)
        first = node.body[0]
        if not doc1 or first.end_lineno is None:
            continue
        text = "\n".join(lines[node.lineno - 1: first.end_lineno])
        text = textwrap.dedent(text).rstrip() + "\n"
        if len(text) > max_chars or not text.lstrip().startswith(("def ", "async def ")):
            continue
        yield node.name, doc1, text


def _tail(lines, cut: int, max_chars: int):
    """The last whole lines of ``lines[:cut]`` that fit in ``max_chars`` (leading blank lines
    dropped) and the 0-based index of the first one; None when nothing useful fits."""
    n, start = 0, cut
    while start > 0 and n + len(lines[start - 1]) + 1 <= max_chars:
        start -= 1
        n += len(lines[start]) + 1
    while start < cut and not lines[start].strip():
        start += 1
    if cut - start < 1:
        return None
    body = lines[start:cut]
    if sum(1 for x in body if x.strip()) < 2 or max(len(x) for x in body) > SNIPPET_MAX_LINE:
        return None
    text = "\n".join(body) + "\n"
    if len(text.strip()) < SNIPPET_MIN_CHARS:
        return None
    return text, start


def snippets_of(tree, lines, src_hash: str, per_file: int, max_chars: int, mbpp_like):
    """(text, n_excluded) of up to ``per_file`` file-prefix snippets of a parsed file."""
    if per_file <= 0:
        return [], 0
    header_cuts, blank_cuts, stmt_starts, funcs = set(), set(), set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt):
            stmt_starts.add(node.lineno)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((node.lineno, node.name, _doc1(node)))
            c = node.body[0].lineno - 1  # 1-based last header line = 0-based cut after it
            if c >= node.lineno and c <= len(lines) and lines[c - 1].split("#")[0].rstrip().endswith(":"):
                header_cuts.add(c)
    for ln in stmt_starts:  # statement on 1-based line ln, after a blank line: cut before it
        c = ln - 1
        if 1 <= c < len(lines) and not lines[c - 1].strip():
            blank_cuts.add(c)
    rng = random.Random(src_hash)
    hc, bc = sorted(header_cuts), sorted(blank_cuts)
    rng.shuffle(hc)
    rng.shuffle(bc)
    k_h = min(len(hc), (per_file + 1) // 2)
    k_b = min(len(bc), per_file - k_h)
    k_h = min(len(hc), per_file - k_b)
    out, n_excl = [], 0
    for c in sorted(set(hc[:k_h] + bc[:k_b])):
        r = _tail(lines, c, max_chars)
        if r is None:
            continue
        text, start = r
        if any(mbpp_like(name, d1) for ln, name, d1 in funcs if start < ln <= c):
            n_excl += 1
            continue
        out.append(text)
    return out, n_excl


# ---- per-file work (runs in the worker processes)
_OPTS: dict = {}


def _init_worker(opts: dict) -> None:
    _OPTS.clear()
    _OPTS.update(opts)


def _mbpp_like(name: str, doc1) -> bool:
    return name.lower() in _OPTS["mbpp_names"] or (bool(doc1) and doc1.lower() in _OPTS["mbpp_docs"])


def process_file(path: str):
    """(content hash, [(kind, text)], n excluded as MBPP-like) of one file; None when unreadable."""
    try:
        if os.path.getsize(path) > MAX_FILE_BYTES:
            return None
        with open(path, encoding="utf-8") as f:
            src = f.read()
    except (UnicodeDecodeError, OSError):
        return None
    h = hashlib.sha1(src.encode("utf-8", "surrogatepass")).hexdigest()
    tree = _parse(src)
    if tree is None:
        return h, [], 0
    lines = src.splitlines()
    out, n_excl = [], 0
    for name, doc1, text in functions_of(tree, lines, _OPTS["max_chars"]):
        if _mbpp_like(name, doc1):
            n_excl += 1
            continue
        out.append(("def", text))
    snips, n_ex2 = snippets_of(tree, lines, h, _OPTS["snippets_per_file"], _OPTS["snippet_max_chars"],
                               _mbpp_like)
    out += [("snippet", t) for t in snips]
    return h, out, n_excl + n_ex2


def python_files(roots):
    for root in roots:
        for d, subdirs, files in os.walk(root):
            subdirs[:] = sorted(s for s in subdirs if s not in SKIP_DIRS and not s.startswith("."))
            for f in sorted(files):
                if f.endswith(".py"):
                    yield os.path.join(d, f)


def order_key(text: str) -> str:
    """The output order: a stable hash of the prompt text (uniform, independent of length)."""
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--roots", nargs="*", default=None, help="source roots (default: the stdlib)")
    ap.add_argument("--mbpp", default=None, help="mbpp_test.jsonl (for the eval prompts and the exclusion)")
    ap.add_argument("--train-out", required=True)
    ap.add_argument("--eval-out", default=None)
    ap.add_argument("--max-prompts", type=int, default=0, help="cap on training prompts (0: all)")
    ap.add_argument("--max-chars", type=int, default=1500, help="longest def prompt (characters)")
    ap.add_argument("--snippets-per-file", type=int, default=3, help="file-prefix snippets per file (0: none)")
    ap.add_argument("--snippet-max-chars", type=int, default=640,
                    help="longest snippet (characters; ~3.5 characters per demo-tokenizer token)")
    ap.add_argument("--max-files", type=int, default=0, help="read at most N files (0: all; for tests)")
    ap.add_argument("--workers", type=int, default=0, help="parsing processes (0: the CPU count, at most 32)")
    ap.add_argument("--max-seconds", type=float, default=0,
                    help="stop reading files after this long (0: no cap): the files read so far, in sorted "
                         "order, are used (a safety for a huge site-packages; the output then depends on speed)")
    a = ap.parse_args(argv)
    t0 = time.time()
    roots = a.roots or [sysconfig.get_paths()["stdlib"]]
    mbpp = load_mbpp(a.mbpp)
    mbpp_names, mbpp_docs = mbpp_sets(mbpp)
    paths = list(python_files(roots))
    if a.max_files:
        paths = paths[: a.max_files]
    opts = {"mbpp_names": mbpp_names, "mbpp_docs": mbpp_docs, "max_chars": a.max_chars,
            "snippets_per_file": a.snippets_per_file, "snippet_max_chars": a.snippet_max_chars}
    workers = a.workers or min(32, os.cpu_count() or 1)
    workers = max(1, min(workers, len(paths) // 8 or 1))
    if workers > 1:
        pool = multiprocessing.Pool(workers, initializer=_init_worker, initargs=(opts,))
        results = pool.imap(process_file, paths, chunksize=8)  # ordered: deterministic output
    else:
        pool = None
        _init_worker(opts)
        results = map(process_file, paths)
    seen_files, seen, prompts = set(), set(), []
    n_files = n_dup_files = n_excl = n_seen = 0
    capped = False
    try:
        for r in results:
            n_seen += 1
            if a.max_seconds and time.time() - t0 > a.max_seconds:
                capped = True
                break
            if r is None:
                continue
            h, items, ex = r
            if h in seen_files:
                n_dup_files += 1
                continue
            seen_files.add(h)
            n_files += 1
            n_excl += ex
            for kind, text in items:
                if text in seen:
                    continue
                seen.add(text)
                prompts.append((order_key(text), kind, text))
    finally:
        if pool is not None:
            if capped:
                pool.terminate()
            else:
                pool.close()
            pool.join()
    if capped:
        print(f"[extract_prompts] time cap: {n_seen} of {len(paths)} files read", flush=True)
    prompts.sort()
    if a.max_prompts:
        prompts = prompts[: a.max_prompts]
    os.makedirs(os.path.dirname(os.path.abspath(a.train_out)), exist_ok=True)
    per_kind: dict = {}
    with open(a.train_out, "w", encoding="utf-8") as f:
        for _, kind, t in prompts:
            f.write(json.dumps({"prompt": t, "kind": kind}) + "\n")
            per_kind[kind] = per_kind.get(kind, 0) + 1
    n_eval = 0
    if a.eval_out:
        with open(a.eval_out, "w", encoding="utf-8") as f:
            for r in mbpp:
                p = mbpp_prompt(r)
                if p:
                    f.write(json.dumps({"prompt": p, "task_id": r.get("task_id")}) + "\n")
                    n_eval += 1
    info = {"files": n_files, "files_listed": len(paths), "time_capped": capped, "duplicate_files": n_dup_files, "train_prompts": len(prompts),
            "kinds": {k: per_kind.get(k, 0) for k in ("def", "snippet")},
            "excluded_as_mbpp_like": n_excl, "eval_prompts": n_eval, "workers": workers,
            "seconds": round(time.time() - t0, 1), "roots": roots}
    print("[extract_prompts] " + json.dumps(info), flush=True)
    return info


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
