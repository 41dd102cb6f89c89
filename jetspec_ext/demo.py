"""The bundled demo pair: a small Qwen3 target trained on Python source code, its tokenizer, and a
JetSpec draft head for it.

Layout inside the package (``jetspec_ext/demo_models/``)::

    target/  config.json, model.safetensors (bf16), generation_config.json,
             tokenizer.json, tokenizer_config.json, special_tokens_map.json, demo_info.json
    head/    config.json, model.safetensors   (the JetSpec draft head, from ``jetspec train``)

The files are produced by ``scripts/demo/make_demo_target.sh`` (target + tokenizer) and
``scripts/demo/make_demo_head.sh`` (the head, trained with ``jetspec train``: 3 draft layers,
taps 1 and 3, block 16, bf16); see ``scripts/demo/README.md``. ``jetspec generate`` with no
``--target`` runs this pair. ``JETSPEC_DEMO_DIR`` overrides the
location (a directory holding ``target/`` and ``head/``).

The weights are stored in bf16 to keep the package small; :func:`load_demo_target` loads them in
fp32 on the CPU (bf16 matmuls are slow there) and bf16 on CUDA, unless told otherwise.
"""
from __future__ import annotations

import os

PARTS = ("target", "head")

# The draft temperature ``jetspec generate`` uses with the bundled head when none is given: the
# best of 0.5 / 0.7 / 0.85 / 1.0 for this head on an H200 (500 held-out MBPP prompts, budget 128,
# greedy; tau 6.22 / 6.31 / 6.25 / 6.11), see benchmarks/RESULTS.md, thirty-fourth session. It
# shapes the tree only: the output is the same at any temperature.
DEMO_DRAFT_TEMPERATURE = 0.7
REQUIRED_FILES = {
    "target": ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"),
    "head": ("config.json", "model.safetensors"),
}


class DemoModelMissingError(FileNotFoundError):
    """The bundled demo model files are not present in this installation."""


def demo_root() -> str:
    """Directory holding the demo parts: $JETSPEC_DEMO_DIR if set, else the package's
    ``demo_models`` directory."""
    env = os.environ.get("JETSPEC_DEMO_DIR")
    if env:
        return os.path.abspath(env)
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_models")


def _check_part(part: str) -> None:
    if part not in PARTS:
        raise ValueError(f"jetspec demo: unknown part {part!r}; expected one of {PARTS}")


def missing_files(part: str = "target") -> list[str]:
    """Paths of the files of ``part`` that are missing (empty when the part is complete)."""
    _check_part(part)
    d = os.path.join(demo_root(), part)
    return [os.path.join(d, f) for f in REQUIRED_FILES[part] if not os.path.isfile(os.path.join(d, f))]


def has_demo(part: str | None = None) -> bool:
    """True when the demo files are present: both parts when ``part`` is None, else that part."""
    parts = PARTS if part is None else (part,)
    return all(not missing_files(p) for p in parts)


def demo_dir(part: str = "target", check: bool = True) -> str:
    """Directory of a demo part ("target": model + tokenizer, loadable with
    ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``; "head": the JetSpec draft head).
    With ``check`` (default) raises :class:`DemoModelMissingError` naming the missing files and
    how to produce them."""
    _check_part(part)
    d = os.path.join(demo_root(), part)
    if check:
        miss = missing_files(part)
        if miss:
            how = ("bash scripts/demo/make_demo_target.sh (then unpack demo_target.tar.gz into "
                   "jetspec_ext/demo_models/)" if part == "target" else
                   "bash scripts/demo/make_demo_head.sh (then unpack demo_head.tar.gz into "
                   "jetspec_ext/demo_models/), or jetspec train on the demo target")
            raise DemoModelMissingError(
                f"jetspec demo: the bundled demo {part} is not installed; missing: "
                f"{', '.join(miss)}. This jetspec_ext build ships without it; produce it with "
                f"{how} from a source checkout and reinstall, set JETSPEC_DEMO_DIR to a "
                f"directory holding target/ and head/, or pass a model explicitly."
            )
    return d


def demo_target_dir(check: bool = True) -> str:
    return demo_dir("target", check)


def demo_head_dir(check: bool = True) -> str:
    return demo_dir("head", check)


def load_demo_target(device=None, dtype=None):
    """(model, tokenizer) of the demo target, in eval mode on ``device`` (default: CUDA when
    available, else CPU). ``dtype`` defaults to bf16 on CUDA and fp32 on the CPU (the stored
    weights are bf16; loading upcasts them)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = demo_target_dir()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=dtype).to(device).eval()
    return model, tok


def load_demo_head(device=None, dtype=None):
    """The demo JetSpec head (:class:`jetspec_ext.draft_head.JetSpecDraftHead`), optionally moved."""
    from .draft_head import JetSpecDraftHead

    return JetSpecDraftHead.from_pretrained(demo_head_dir(), device=device, dtype=dtype)
