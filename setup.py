"""Build script for jetspec_ext.

Builds ``jetspec_ext._C``: a CUDA extension when nvcc and a CUDA-enabled torch are present, a
CPU-only extension otherwise. Both register the same ``torch.ops.jetspec`` ops (the CUDA build adds
CUDA kernels for them).

Environment variables (all optional):
  JETSPEC_FORCE_CPU=1      build the CPU-only extension even when CUDA is available.
  JETSPEC_CUDA_ARCHS       ';'-separated targets, e.g. "90a;80" (default "90a;80+PTX").
                           "+PTX" also embeds PTX for that target so newer GPUs can JIT it.
  JETSPEC_DEBUG=1          -O0 -g (host) and -lineinfo (device).
  CUDA_HOME                toolkit root; otherwise found from nvcc on PATH or /usr/local/cuda.
  JETSPEC_CUTLASS_INCLUDE  CUTLASS 3 include folder (default: the nvidia-cutlass wheel's, if installed)
                           for the sm_90a verify_linear GEMM; without it that op is not built.
  MAX_JOBS                 parallel compile jobs (ninja).

CMakeLists.txt builds the same sources; keep ``SOURCES`` logic in the two files in sync
(both glob csrc/*.cpp, csrc/cpu/*.cpp and, for CUDA, csrc/cuda/*.cu).
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    """CUDA toolkit root, or None. Set before torch.utils.cpp_extension is imported (it caches it)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if c and os.path.exists(os.path.join(c, "bin", "nvcc")):
            return c
    return None


CUDA_HOME = _find_cuda_home()
if CUDA_HOME:
    os.environ["CUDA_HOME"] = CUDA_HOME

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

WITH_CUDA = (
    CUDA_HOME is not None
    and torch.version.cuda is not None
    and os.environ.get("JETSPEC_FORCE_CPU", "0") != "1"
)
DEBUG = os.environ.get("JETSPEC_DEBUG", "0") == "1"


def _site_include_dirs():
    """Headers that torch's CUDA headers include (cuBLAS, cuSPARSE, ...) ship in the nvidia cu13
    wheels rather than the toolkit on some machines; add them when present."""
    dirs = []
    try:
        import nvidia  # namespace package from the nvidia-* wheels

        for base in list(nvidia.__path__):
            for sub in ("cu13/include", "cu12/include"):
                d = os.path.join(base, sub)
                if os.path.isdir(d):
                    dirs.append(d)
    except ImportError:
        pass
    return dirs


CUDA_ARCHS = os.environ.get("JETSPEC_CUDA_ARCHS", "90a;80+PTX")


def _arch_flags():
    spec = CUDA_ARCHS
    flags = []
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        ptx = item.endswith("+PTX")
        arch = item[: -len("+PTX")] if ptx else item
        arch = arch.replace(".", "")
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{arch},code=compute_{arch}")
    if not flags:
        sys.exit("JETSPEC_CUDA_ARCHS is empty")
    return flags


def _cutlass_include():
    """CUTLASS 3 headers for the sm_90a verify GEMM (csrc/kernels/verify_gemm_sm90.cuh):
    JETSPEC_CUTLASS_INCLUDE, else the nvidia-cutlass wheel's copy. None: that op is not built
    (the decoder then keeps F.linear for tree-verification shapes)."""
    d = os.environ.get("JETSPEC_CUTLASS_INCLUDE")
    if d:
        if not os.path.isfile(os.path.join(d, "cutlass", "cutlass.h")):
            sys.exit(f"JETSPEC_CUTLASS_INCLUDE={d} has no cutlass/cutlass.h")
        return d
    try:
        import cutlass_library

        d = os.path.join(os.path.dirname(cutlass_library.__file__), "source", "include")
        return d if os.path.isfile(os.path.join(d, "cutlass", "cutlass.h")) else None
    except ImportError:
        return None


def _sources():
    srcs = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    if WITH_CUDA:
        srcs += sorted(glob.glob("csrc/cuda/*.cu"))
    return srcs


def _extension():
    cxx = ["-O0", "-g"] if DEBUG else ["-O3"]
    # C++ standard and Py_LIMITED_API are set by torch (C++20 for torch >= 2.12)
    include_dirs = [os.path.join(ROOT, "csrc")]
    if not WITH_CUDA:
        return CppExtension(
            "jetspec_ext._C",
            _sources(),
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            py_limited_api=True,
        )
    cxx.append("-DJETSPEC_WITH_CUDA")
    nvcc = [
        "-O3",
        "-DJETSPEC_WITH_CUDA",
        "--expt-relaxed-constexpr",
        "-Xptxas=-warn-spills",
    ] + _arch_flags()
    if DEBUG:
        nvcc.append("-lineinfo")
    if os.environ.get("JETSPEC_TREE_ATTN_TIMELINE", "0") == "1":
        # Diagnostic build: split_kernel_ws records a per-CTA phase timeline and the op
        # jetspec::_tree_attention_timeline reads it (benchmarks/probe_ta_timeline.py).
        nvcc.append("-DJETSPEC_TREE_ATTN_TIMELINE")
        nvcc.append("-lineinfo")
        # Wrong-result experiments on top of it, to find what bounds the key-tile loop:
        # JETSPEC_TREE_ATTN_DIAG=NO_EXP (exponentials replaced by one FFMA), NO_SOFTMAX (no
        # softmax update at all; the masked scores are the probabilities), NO_MASK_LOAD (tree
        # tiles' mask words made up instead of loaded) or NO_MASK (tree tiles unmasked), comma
        # separated. Timing only.
        diag_items = ("NO_EXP", "NO_SOFTMAX", "NO_MASK_LOAD", "NO_MASK")
        chosen = list(filter(None, os.environ.get("JETSPEC_TREE_ATTN_DIAG", "").split(",")))
        for item in chosen:
            if item not in diag_items:
                raise SystemExit(f"JETSPEC_TREE_ATTN_DIAG: unknown item {item!r} ({', '.join(diag_items)})")
            nvcc.append(f"-DJETSPEC_TREE_ATTN_DIAG_{item}")
        if chosen:
            nvcc.append("-DJETSPEC_TREE_ATTN_DIAG_ANY")  # marks the build (import jetspec_ext warns)
    elif os.environ.get("JETSPEC_TREE_ATTN_DIAG"):
        raise SystemExit("JETSPEC_TREE_ATTN_DIAG needs JETSPEC_TREE_ATTN_TIMELINE=1 (diagnostic builds only)")
    no_setmaxnreg = os.environ.get("JETSPEC_TREE_ATTN_NO_SETMAXNREG", "0")
    if no_setmaxnreg not in ("0", "1"):
        raise SystemExit(f"JETSPEC_TREE_ATTN_NO_SETMAXNREG must be 0 or 1, got {no_setmaxnreg!r}")
    if no_setmaxnreg == "1":
        # Diagnostic build (racecheck, scripts/gpu/sanitize.sh): split_kernel_ws without setmaxnreg
        # (tree_attention_ws.cuh); correct results, 1.2-1.4x slower (the consumers spill);
        # `import jetspec_ext` warns on it.
        nvcc.append("-DJETSPEC_TREE_ATTN_NO_SETMAXNREG")
        print("jetspec_ext: diagnostic build, split_kernel_ws without setmaxnreg")
    cutlass = _cutlass_include() if "90a" in CUDA_ARCHS else None
    if cutlass:
        include_dirs.append(cutlass)
        nvcc.append("-DJETSPEC_WITH_CUTLASS")
        cxx.append("-DJETSPEC_WITH_CUTLASS")
    print(f"jetspec_ext: CUTLASS headers {'at ' + cutlass if cutlass else 'not found: verify_linear not built'}")
    return CUDAExtension(
        "jetspec_ext._C",
        _sources(),
        include_dirs=include_dirs + _site_include_dirs(),
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        py_limited_api=True,
    )


setup(
    name="jetspec_ext",
    version="0.1.0",
    packages=find_packages(include=["jetspec_ext", "jetspec_ext.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
    package_data={"jetspec_ext": ["py.typed", "demo_models/*/*"]},
    entry_points={"console_scripts": ["jetspec=jetspec_ext.cli:main"]},
)
