"""Benchmark of tree_accept (and commit_kv) on the GPU, side by side with the baselines of
issue 2: the vectorised PyTorch path (argmax over the vocabulary + the walk as tensor ops).

Run: python benchmarks/bench_tree_accept.py   (from the repo root, after building).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jetspec_ext  # noqa: E402
from benchmarks.harness import kernel_breakdown, measure, print_breakdown, print_table  # noqa: E402


def random_tree(B, N, V, depth, device, gen):
    """A random tree of N nodes and max depth `depth` (chain spine + random extra nodes)."""
    parents = torch.full((B, N), -1, dtype=torch.int32)
    depths = torch.zeros(B, N, dtype=torch.int64)
    for i in range(1, N):
        if i <= depth:
            p = torch.full((B,), i - 1)
        else:
            p = torch.randint(0, i, (B,), generator=gen)
            p = torch.where(depths[torch.arange(B), p] >= depth, torch.zeros_like(p), p)
        parents[:, i] = p.to(torch.int32)
        depths[:, i] = depths[torch.arange(B), p] + 1
    tokens = torch.randint(0, V, (B, N), generator=gen)
    return tokens.to(device), parents.to(device)


def torch_accept_greedy(logits, tokens, parents, max_depth):
    """Vectorised PyTorch baseline: argmax, then the walk as max_depth tensor steps."""
    B, N, V = logits.shape
    choice = logits.argmax(-1)  # (B, N)
    par = parents.long()
    ok = (par >= 0) & (tokens == torch.gather(choice, 1, par.clamp(min=0)))
    ok[:, 0] = False
    idx = torch.arange(N, device=logits.device).expand(B, N)
    v = torch.zeros(B, dtype=torch.long, device=logits.device)
    path = [v]
    for _ in range(max_depth):
        cand = torch.where(ok & (par == v[:, None]), idx, N)
        nxt = cand.min(-1).values
        v = torch.where(nxt < N, nxt, v)
        path.append(v)
    return torch.stack(path, 1), torch.gather(choice, 1, v[:, None])


def main():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    rows = []
    V = 151936 if dev == "cuda" else 4096
    for B, N in ([(1, 128), (1, 256), (8, 64)] if dev == "cuda" else [(1, 32)]):
        D = 20
        logits = (torch.randn(B, N, V, device=dev) * 3).to(torch.bfloat16)
        # LLM-like logits: a few strong candidates over a low bulk.
        peaked = torch.randn(B, N, V, device=dev) * 2.5
        peaked[..., :64] += 15.0
        peaked = peaked.to(torch.bfloat16)
        tokens, parents = random_tree(B, N, V, D, dev, gen)
        rng = torch.tensor([1234, 0], dtype=torch.int64, device=dev)
        nbytes = logits.numel() * 2
        shape = f"B={B} N={N} V={V} bf16"
        cases = [
            ("greedy", logits, 0.0, 0, 1.0),
            ("sample T=1", logits, 1.0, 0, 1.0),
            ("sample T=1 peaked", peaked, 1.0, 0, 1.0),
            ("sample T=0.7 k=50", logits, 0.7, 50, 1.0),
            ("sample T=0.7 p=0.9", logits, 0.7, 0, 0.9),
            ("sample T=0.7 k=50 p=0.9", logits, 0.7, 50, 0.9),
        ]
        for label, lg, T, k, p in cases:
            fn = (lambda lg=lg, T=T, k=k, p=p:
                  torch.ops.jetspec.tree_accept(lg, tokens, parents, D, rng, T, k, p))
            base = {"torch": lambda: torch_accept_greedy(logits, tokens, parents, D)} if T == 0 else None
            rows.append(measure(f"tree_accept {label}", shape, fn, bytes_moved=nbytes, baselines=base))
            if dev == "cuda":
                rows.append(measure(f"tree_accept {label} [graph]", shape, fn, bytes_moved=nbytes,
                                    graph=True))
                if N == 256 and label in ("greedy", "sample T=1", "sample T=0.7 k=50 p=0.9"):
                    print_breakdown(f"tree_accept {label} {shape}", kernel_breakdown(fn))

    # commit_kv: Qwen3-8B cache (36 layers x {k, v}, 8 KV heads, head dim 128, bf16), 21 nodes.
    L, H, Dh, S, n = (36, 8, 128, 4096, 21) if dev == "cuda" else (2, 2, 64, 256, 5)
    cache = torch.randn(2 * L, 1, H, S, Dh, device=dev, dtype=torch.bfloat16)
    prefix0 = torch.tensor([1024], dtype=torch.int32, device=dev)
    prefix = prefix0.clone()
    path = torch.full((1, 33), -1, dtype=torch.int32)
    path[0, :n] = torch.tensor(sorted(set([0] + list(range(2, 200, 9))))[:n], dtype=torch.int32)
    path = path.to(dev)
    alen = torch.tensor([n], dtype=torch.int32, device=dev)
    nbytes = 2 * (2 * L) * H * (n - 1) * Dh * 2  # read + write the moved slots

    def reset():
        prefix.copy_(prefix0)

    for graph in ([False, True] if dev == "cuda" else [False]):
        rows.append(measure(
            "commit_kv" + (" [graph]" if graph else ""), f"L={L} H={H} Dh={Dh} n={n} bf16",
            lambda: torch.ops.jetspec.commit_kv(cache, prefix, path, alen),
            bytes_moved=nbytes, setup=reset, graph=graph))
    if dev == "cuda":
        print_breakdown("commit_kv", kernel_breakdown(
            lambda: (reset(), torch.ops.jetspec.commit_kv(cache, prefix, path, alen))))
    print_table(rows)


if __name__ == "__main__":
    main()
