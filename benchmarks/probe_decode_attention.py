"""Development probe: time tree_attention's decode kernel (few query rows) against the tensor-core
variant on decode shapes (Qwen3-8B heads), with forced split counts. Not part of the suite.
Modes: --cells (default path, auto vs one split), --pdl (programmatic launch on / off), --merge
(in-launch merge and split sweeps), none (decode kernel sweep)."""
import os
import sys

import torch

import jetspec_ext
from benchmarks.harness import time_us


def case(P, N=1, Hq=32, Hkv=8, D=128, S=None):
    S = S or P + N + 64
    q = torch.randn(1, N, Hq, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, Hkv, S, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, Hkv, S, D, device="cuda", dtype=torch.bfloat16)
    pl = torch.tensor([P], dtype=torch.int32, device="cuda")
    mask = torch.full((1, N, (N + 31) // 32), -1, dtype=torch.int32, device="cuda")
    return q, k, v, pl, mask


def timed(args, impl, splits="", merge=""):
    for name, val in (("JETSPEC_TREE_ATTN_IMPL", impl), ("JETSPEC_TREE_ATTN_SPLITS", splits),
                      ("JETSPEC_TREE_ATTN_MERGE", merge)):
        if val:
            os.environ[name] = val
        else:
            os.environ.pop(name, None)
    return time_us(lambda: jetspec_ext.tree_attention(*args), graph=True)


if "--cells" in sys.argv:
    # The default path (split_kernel_pipe + merge_kernel) on the round's cells, auto splits and
    # one split (all key tiles in one CTA: exposes the per-tile cost).
    for P, N in ((1024, 1), (1024, 64), (1024, 128), (1024, 256), (4096, 128)):
        args = case(P, N=N)
        print(f"P{P} N{N}  auto={timed(args, 'wgmma_pipe8'):.2f}  "
              f"s1={timed(args, 'wgmma_pipe8', '1'):.2f}", flush=True)
    sys.exit(0)

if "--pdl" in sys.argv:
    # Programmatic dependent launch of the split and merge kernels on (default) and off
    # (JETSPEC_PDL=0), alternated twice on the same inputs in one process.
    for P, N in ((1024, 1), (1024, 16), (1024, 64), (1024, 128), (1024, 256), (4096, 128)):
        args = case(P, N=N)
        row = {"on": [], "off": []}
        for mode in ("on", "off", "on", "off"):
            os.environ["JETSPEC_PDL"] = "1" if mode == "on" else "0"
            row[mode].append(timed(args, ""))
        os.environ.pop("JETSPEC_PDL")
        print(f"P{P} N{N}  pdl_on={sum(row['on']) / 2:.2f} ({row['on'][0]:.2f}/{row['on'][1]:.2f})  "
              f"pdl_off={sum(row['off']) / 2:.2f} ({row['off'][0]:.2f}/{row['off'][1]:.2f})", flush=True)
    sys.exit(0)

if "--merge" in sys.argv:
    # split_kernel_pipe's in-launch merge against merge_kernel, and split sweeps of the round's
    # target cell (N 128, prefix 1024).
    for P, N in ((1024, 1), (4096, 1), (16384, 1), (1024, 4), (1024, 17), (1024, 128)):
        args = case(P, N=N)
        row = [f"P{P} N{N}"]
        for impl in ("wgmma_pipe8", "wgmma_pipe"):
            for splits in ("", "2", "4", "8", "16"):
                for merge in ("kernel", "inline"):
                    row.append(f"{impl}/{splits or 'auto'}/{merge}={timed(args, impl, splits, merge):.1f}")
        print("  ".join(row), flush=True)
    sys.exit(0)

for P, S in ((1024, None), (1024, 8192), (4096, None), (16384, None)):
    args = case(P, S=S)
    row = [f"P{P} S{args[1].shape[2]}"]
    for impl, splits in (("wgmma_pipe8", ""), ("decode", ""), ("decode", "1"), ("decode", "4"),
                         ("decode", "8"), ("decode", "16"), ("decode", "32")):
        os.environ["JETSPEC_TREE_ATTN_IMPL"] = impl
        if splits:
            os.environ["JETSPEC_TREE_ATTN_SPLITS"] = splits
        else:
            os.environ.pop("JETSPEC_TREE_ATTN_SPLITS", None)
        t = time_us(lambda: jetspec_ext.tree_attention(*args), graph=True)
        row.append(f"{impl}/{splits or 'auto'}={t:.1f}")
    print("  ".join(row), flush=True)
