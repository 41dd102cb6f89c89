"""Driver for Nsight Compute: runs jetspec.build_tree a few times on the benchmark shape
(D20 V151936 bf16 W7 N256) so `ncu` can profile one launch of each kernel.

    ncu --set full --import-source yes -k regex:build_tree --launch-skip 4 --launch-count 2 \
        python3 benchmarks/profile_build_tree.py --batch 8
(see benchmarks/ncu_build_tree.sh)."""
import argparse

import torch

import jetspec_ext  # noqa: F401  (registers torch.ops.jetspec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--policy", default="accum")
    ap.add_argument("--iters", type=int, default=4)
    a = ap.parse_args()
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(a.batch, 20, 151936, device="cuda", generator=g).mul_(3).to(torch.bfloat16)
    roots = torch.zeros(a.batch, dtype=torch.int64, device="cuda")
    for _ in range(a.iters):
        torch.ops.jetspec.build_tree(logits, roots, 7, 256, a.policy, 1.0)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
