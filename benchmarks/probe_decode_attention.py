"""Development probe of tree_attention's default path (split kernel + merge kernel) on the
decoding round's cells (Qwen3-8B heads, batch 1, bf16, CUDA graph of 10 calls). Not part of the
suite. Modes: --cells (default: auto splits vs one split), --decode (the same for the cells of
at most 64 query rows per KV head, which split_kernel_pipe runs: decoding, N = 1, and N = 16),
--pdl (programmatic launch on / off, alternated), --splits (split-count sweep of wgmma_ws_pp and wgmma_pipe), --forced (forced split
counts with and without the cluster merge), --fixed (per-tile and
fixed cost: time against key tiles per CTA at N 128 with 4 splits and with 1), --context (the
decoder's cell, P1024 in a 1360-slot cache, with L2 warm and with L2 refilled by a 128 MB read
between calls as the round's weight streams do; with --impls A,B instead of the split sweep: each
named JETSPEC_TREE_ATTN_IMPL side by side, auto splits, the 1360-slot cache, alternated twice)."""
import os
import sys

import torch

import jetspec_ext
from benchmarks.harness import kernel_stats, time_us


def case(P, N=1, Hq=32, Hkv=8, D=128, S=None):
    S = S or P + N + 64
    q = torch.randn(1, N, Hq, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, Hkv, S, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, Hkv, S, D, device="cuda", dtype=torch.bfloat16)
    pl = torch.tensor([P], dtype=torch.int32, device="cuda")
    mask = torch.full((1, N, (N + 31) // 32), -1, dtype=torch.int32, device="cuda")
    return q, k, v, pl, mask


def timed(args, impl, splits=""):
    for name, val in (("JETSPEC_TREE_ATTN_IMPL", impl), ("JETSPEC_TREE_ATTN_SPLITS", splits)):
        if val:
            os.environ[name] = val
        else:
            os.environ.pop(name, None)
    return time_us(lambda: jetspec_ext.tree_attention(*args), graph=True)


def cells():
    # The default path (the launcher's split kernel + merge_kernel) on the round's cells, auto
    # splits and one split (all key tiles in one CTA: exposes the per-tile cost).
    for P, N in ((1024, 1), (1024, 64), (1024, 128), (1024, 256), (4096, 128), (16384, 256)):
        args = case(P, N=N)
        print(f"P{P} N{N}  auto={timed(args, ''):.2f}  "
              f"s1={timed(args, '', '1'):.2f}", flush=True)


def decode_cells():
    # As cells(), for the cells of <= 64 query rows per KV head (split_kernel_pipe): the AR
    # step's decoding attention (N = 1) at growing prefixes, and N = 16.
    for P, N in ((1024, 1), (4096, 1), (16384, 1), (32768, 1), (1024, 16), (4096, 16)):
        args = case(P, N=N)
        print(f"P{P} N{N}  auto={timed(args, ''):.2f}  "
              f"s1={timed(args, '', '1'):.2f}", flush=True)


def forced(prefixes=(1024,)):
    # Forced split counts (at prefix 1024 unless `--forced P1,P2` names others), each with the
    # cluster merge (JETSPEC_TREE_ATTN_CLUSTER=require; "-" where the clusters would not fit one
    # wave) and with merge_kernel (=0): what the launcher's cost model (choose_cluster_splits)
    # chooses between.
    for P, N in ((P, N) for P in prefixes for N in (64, 128, 256)):
        args = case(P, N=N)
        row = []
        for s in range(2, 9):
            t = {}
            for mode in ("require", "0"):
                os.environ["JETSPEC_TREE_ATTN_CLUSTER"] = mode
                try:
                    t[mode] = f"{timed(args, '', str(s)):.2f}"
                except RuntimeError:
                    t[mode] = "-"
            row.append(f"s{s}={t['require']}/{t['0']}")
        os.environ.pop("JETSPEC_TREE_ATTN_CLUSTER", None)
        os.environ.pop("JETSPEC_TREE_ATTN_SPLITS", None)
        print(f"P{P} N{N} (cluster/merge_kernel us)  " + "  ".join(row), flush=True)


def pdl():
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


def split_sweep():
    # Split-count sweep of the pipelined kernels (merge_kernel combines the splits). The issue-4
    # cells that miss their allowance (P1024 N64 / N128 / N256, P4096 N64) are in it: does
    # wgmma_pipe (64-row CTAs, two per SM; 7-10 % faster per tile since the twenty-first
    # session) beat wgmma_ws_pp there at some split count?
    cells = ((1024, 1), (4096, 1), (16384, 1), (1024, 17), (1024, 64), (1024, 128), (1024, 256), (4096, 64))
    for P, N in cells:
        args = case(P, N=N)
        row = [f"P{P} N{N}"]
        for impl in ("wgmma_ws_pp", "wgmma_pipe"):
            for n in ("", "2", "3", "4", "8", "16"):
                row.append(f"{impl}/{n or 'auto'}={timed(args, impl, n):.2f}")
        print("  ".join(row), flush=True)


def fixed_cost():
    # N = 128 (512 query rows per KV head, 32 row-tile CTAs) at prefixes chosen so that every
    # CTA gets t key tiles: with 4 splits (the default at P1024, + merge_kernel) P = 256 t - 128,
    # with 1 split (no merge) P = 64 t - 128. The graph time's slope in t is the per-tile cost,
    # its intercept the fixed cost. Kernel times from the profiler with plain launches
    # (JETSPEC_PDL=0; with PDL the merge kernel's time would include its wait).
    for splits, p_of in (("4", lambda t: 256 * t - 128), ("1", lambda t: 64 * t - 128)):
        for t in ((1, 2, 3, 4, 5, 6) if splits == "4" else (2, 4, 6, 8, 12, 16)):
            args = case(p_of(t), N=128)
            g_on = timed(args, "", splits)
            os.environ["JETSPEC_PDL"] = "0"
            g_off = timed(args, "", splits)
            ks = kernel_stats(lambda: jetspec_ext.tree_attention(*args), 20)
            os.environ.pop("JETSPEC_PDL")
            kern = "  ".join(f"{r['kernel'].split('<')[0].split('::')[-1]}={r['us']:.2f}" for r in ks)
            print(f"splits {splits} tiles/CTA {t} P{p_of(t)} N128  graph_pdl={g_on:.2f}  graph_nopdl={g_off:.2f}  "
                  f"[nopdl profiler: {kern}]", flush=True)


def in_context(impls=None):
    # bench_decoder's round runs each layer's tree attention at prefix ~1024 in a 1360-slot cache
    # (the launcher sizes its splits from the cache length) right after the layer's GEMMs have
    # streamed weights through L2. The cells above use cache = P + N + 64 and a warm L2. Here, per
    # split count: warm (10 calls back to back in one graph), ctl (each call behind a 1 MB read:
    # the same launch pattern, L2 kept) and cold (each call behind a 128 MB read, as the round's
    # weight streams leave L2); the read's own graph time is subtracted.
    def reader(mb):
        sink = torch.ones(mb * 2**10, 512, dtype=torch.bfloat16, device="cuda")
        out = torch.empty(512, dtype=torch.float32, device="cuda")
        fn = lambda: torch.sum(sink, dim=0, dtype=torch.float32, out=out)
        return fn, time_us(fn, graph=True)
    readers = {"ctl": reader(1), "cold": reader(128)}
    print("read times (us): " + "  ".join(f"{k}={t:.1f}" for k, (_, t) in readers.items()))

    def warm_ctl_cold(args, impl, splits=""):  # "warm/ctl/cold" us of one implementation / split count
        t = [timed(args, impl, splits)]  # (timed leaves its settings in the environment for the rest)
        for fn, t_read in readers.values():
            def both(fn=fn):
                fn()
                jetspec_ext.tree_attention(*args)
            t.append(time_us(both, graph=True) - t_read)
        return "/".join(f"{x:.2f}" for x in t)

    if impls:  # implementations side by side in the decoder's cache (auto splits), two alternated passes
        for N in (64, 128, 256):
            args = case(1024, N=N, S=1360)
            row = [f"{impl}={warm_ctl_cold(args, impl)}" for _ in range(2) for impl in impls]
            os.environ.pop("JETSPEC_TREE_ATTN_IMPL", None)
            print(f"P1024 N{N} S1360 (warm/ctl/cold us)  " + "  ".join(row), flush=True)
        return
    # N 1 is the AR step's call: an L2 prefetch of the prefix helps the ratio only where the round's
    # cold penalty exceeds the AR step's by more than the prefetch costs.
    for N in (1, 64, 128, 256):
        for S in (1024 + N + 64, 1360):
            args = case(1024, N=N, S=S)
            row = []
            for splits in ("", "2", "3", "4", "6"):
                os.environ.pop("JETSPEC_TREE_ATTN_CLUSTER", None)
                row.append(f"{splits or 'auto'}={warm_ctl_cold(args, '', splits)}")
            os.environ.pop("JETSPEC_TREE_ATTN_SPLITS", None)
            print(f"P1024 N{N} S{S} (warm/ctl/cold us)  " + "  ".join(row), flush=True)


if __name__ == "__main__":
    if "--context" in sys.argv:
        impls = sys.argv[sys.argv.index("--impls") + 1].split(",") if "--impls" in sys.argv else None
        in_context(impls)
    elif "--fixed" in sys.argv:
        fixed_cost()
    elif "--pdl" in sys.argv:
        pdl()
    elif "--forced" in sys.argv:
        i = sys.argv.index("--forced") + 1
        forced(tuple(int(x) for x in sys.argv[i].split(",")) if i < len(sys.argv) else (1024,))
    elif "--splits" in sys.argv:
        split_sweep()
    elif "--decode" in sys.argv:
        decode_cells()
    else:
        cells()
