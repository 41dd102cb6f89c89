"""Development probe: time tree_attention's decode kernel (few query rows) against the tensor-core
variant on decode shapes (Qwen3-8B heads), with forced split counts. Not part of the suite."""
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
