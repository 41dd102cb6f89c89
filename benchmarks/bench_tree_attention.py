"""Benchmark of torch.ops.jetspec.tree_attention on Qwen3-8B shapes (Hq 32, Hkv 8, Dh 128, bf16).

Per cell: our time (CUDA-graph replay), the roofline floor max(bytes / 4.3 TB/s, FLOPs / 790
TFLOP/s) with bytes = K and V of prefix + tree read once + Q + O and FLOPs = 4 Hq N (P + N) Dh per
batch row, achieved TB/s and TFLOP/s, the allowance (bytes-bound: max(1.5 floor, floor + 4 us);
FLOP-bound: max(2 floor, floor + 4 us)) with pass/fail, and beside it PyTorch SDPA with the
equivalent dense boolean mask, SDPA with no mask, and FlexAttention with the equivalent block mask
(n/a when unavailable). On CUDA the default and each kernel variant (``<impl>_us``) are the
median of 3 interleaved rounds of CUDA-graph timings (one round: every variant once, same warm-up
and iterations), so no column is favoured by its position.

Run from the repo root: python benchmarks/bench_tree_attention.py [--quick]
"""
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jetspec_ext  # noqa: E402
from benchmarks.harness import (BF16_FLOPS_PER_S, HBM_BYTES_PER_S, floor_us, measure,  # noqa: E402
                                print_table, time_us)
from jetspec_ext.reference.attention import dense_visibility, pack_tree_mask  # noqa: E402

HQ, HKV, DH = 32, 8, 128


# The issue-4 cells (B, P, N): batch 1 at prefix 1024 / 4096 / 16384 x tree 64 / 128 / 256, and
# batch 8 at prefix 4096, tree 64.
ISSUE4_CELLS = [(1, P, N) for P in (1024, 4096, 16384) for N in (64, 128, 256)] + [(8, 4096, 64)]


def random_tree_mask(B, N, gen):
    masks = []
    for _ in range(B):
        m = torch.zeros(N, N, dtype=torch.bool)
        for i in range(N):
            m[i, i] = True
            if i > 0:
                m[i] |= m[int(torch.randint(max(0, i - 8), i, (1,), generator=gen))]
        masks.append(m)
    return pack_tree_mask(torch.stack(masks))


def make_inputs(B, P, N, device, dtype, heads=(HQ, HKV, DH)):
    """q, k, v, prefix lengths, packed tree mask; `heads` = (Hq, Hkv, Dh), Qwen3-8B's by default."""
    hq, hkv, dh = heads
    gen = torch.Generator().manual_seed(P * 7 + N + B)
    S = P + N
    q = torch.randn(B, hq, N, dh, device=device, dtype=dtype).transpose(1, 2)  # decoder's view
    k = torch.randn(B, hkv, S, dh, device=device, dtype=dtype)
    v = torch.randn(B, hkv, S, dh, device=device, dtype=dtype)
    plens = torch.full((B,), P, dtype=torch.int32, device=device)
    mask = random_tree_mask(B, N, gen).to(device)
    return q, k, v, plens, mask


def baselines(q, k, v, plens, mask, P, N):
    """Callables of the baselines that work here (a failing one is reported as n/a)."""
    B = q.shape[0]
    L = P + N
    F = torch.nn.functional
    qh = q.transpose(1, 2).contiguous()  # (B, Hq, N, Dh)
    kk, vv = k[:, :, :L], v[:, :, :L]
    vis = dense_visibility(plens, mask, N, L).unsqueeze(1)  # (B, 1, N, L)
    cands = {}

    def sdpa_gqa(attn_mask):
        return lambda: F.scaled_dot_product_attention(qh, kk, vv, attn_mask=attn_mask,
                                                      enable_gqa=True)
    cands["sdpa_mask"] = sdpa_gqa(vis)
    cands["sdpa_nomask"] = sdpa_gqa(None)
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        tree = dense_visibility(plens, mask, N, L)  # (B, N, L) bool

        def mask_mod(b, h, q_idx, kv_idx):
            return tree[b, q_idx, kv_idx]

        bm = create_block_mask(mask_mod, B, None, N, L, device=q.device)
        # One compiled flex per cell shape (dynamic=False), two at the cells where the default
        # kernel choice fails: past dynamo's default of 8 recompiles of flex_attention it would
        # fall back to the eager, unfused flex (~5 ms at P16384 N256: not FlexAttention's time).
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        flex = torch.compile(flex_attention, dynamic=False)
        cands["flex"] = lambda: flex(qh, kk, vv, block_mask=bm, enable_gqa=True)
    except Exception as e:  # noqa: BLE001
        print(f"flex: n/a ({type(e).__name__}: {str(e)[:100]})")
    if "flex" in cands:
        # At N 64 Inductor picks the flex-decoding kernel for these short query blocks and, on the
        # H200's torch, finds no config for it ("NoValidChoicesError"); the general flex kernel
        # (FORCE_USE_FLEX_ATTENTION) is the FlexAttention that remains, timed in its place then.
        cands["flex_general"] = lambda: flex(qh, kk, vv, block_mask=bm, enable_gqa=True,
                                             kernel_options={"FORCE_USE_FLEX_ATTENTION": True})
    ok = {}
    for name, fn in cands.items():
        if name == "flex_general" and "flex" in ok:
            continue
        try:
            fn()
            ok[name] = fn
        except Exception as e:  # noqa: BLE001
            print(f"{name}: n/a ({type(e).__name__}: {str(e)[:100]})")
    if "flex_general" in ok:
        print("flex: timed with kernel_options FORCE_USE_FLEX_ATTENTION (the default kernel choice failed)")
        ok["flex"] = ok.pop("flex_general")
    return ok


T_START = time.time()
# sm_90 kernel variants timed beside the default (JETSPEC_TREE_ATTN_IMPL; the default is wgmma_ws_pp)
WGMMA_IMPLS = ("wgmma_pipe", "wgmma_ws_pp")
REPEATS = 3  # interleaved timing rounds of the default and the variants (median)


def bench_cell(B, P, N, device, dtype, with_baselines=True):
    q, k, v, plens, mask = make_inputs(B, P, N, device, dtype)
    L = P + N
    esz = torch.finfo(dtype).bits // 8
    bytes_moved = 2 * B * HKV * L * DH * esz + 2 * B * N * HQ * DH * esz
    flops = 4.0 * B * HQ * N * L * DH
    t_bytes = bytes_moved / HBM_BYTES_PER_S * 1e6
    t_flops = flops / BF16_FLOPS_PER_S * 1e6
    fl = floor_us(bytes_moved, flops)
    flop_bound = t_flops >= t_bytes
    allowance = max(2 * fl, fl + 4) if flop_bound else max(1.5 * fl, fl + 4)
    fn = lambda: jetspec_ext.tree_attention(q, k, v, plens, mask)  # noqa: E731
    if time.time() - T_START > 170:  # keep the whole script inside the suite's 300 s timeout
        with_baselines = False
    variants = {}  # <impl>_us columns (CUDA)
    us = None
    if device == "cuda":
        # The default and every kernel variant (env var read per call, at capture time), timed
        # alike and interleaved over REPEATS rounds, median of the rounds: timed once each, in a
        # fixed order, the same kernel read up to 8 % apart depending on its position (eleventh
        # session: B8 P4096 N64 85.7 us as the default, first, against 92.7 us as wgmma_ws_pp,
        # last; benchmarks/RESULTS.md).
        impls = [""] + ["mma"] + [i for i in WGMMA_IMPLS if torch.cuda.get_device_capability()[0] == 9]
        samples = {impl: [] for impl in impls}
        for _ in range(REPEATS):
            for impl in impls:
                if impl:
                    os.environ["JETSPEC_TREE_ATTN_IMPL"] = impl
                try:
                    samples[impl].append(time_us(fn, warmup=10, iters=100, graph=True))
                except Exception as e:  # noqa: BLE001  (JSON *_us values must stay numbers)
                    print(f"{impl} B{B} P{P} N{N}: error {type(e).__name__}: {str(e)[:200]}")
                finally:
                    os.environ.pop("JETSPEC_TREE_ATTN_IMPL", None)
        us = statistics.median(samples[""])
        variants = {f"{impl}_us": statistics.median(t) for impl, t in samples.items() if impl and t}
    bl = baselines(q, k, v, plens, mask, P, N) if with_baselines else {}
    row = measure("tree_attention", f"B{B} P{P} N{N}", fn, bytes_moved=bytes_moved, flops=flops,
                  baselines=bl, graph=device == "cuda", us=us)
    row.update(variants)
    row["bound"] = "flop" if flop_bound else "bytes"
    row["allow_us"] = allowance
    row["pass"] = "PASS" if row["us"] <= allowance else "FAIL"
    print("  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                    if k != "device"), flush=True)  # progress (the suite runs under a timeout)
    return row


def main():
    quick = "--quick" in sys.argv
    cuda = torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "jetspec::tree_attention", "CUDA")
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16
    if cuda:
        cells = ISSUE4_CELLS
    else:  # smoke test of the script on the CPU op (timings meaningless)
        cells = [(1, 256, 16)] if quick else [(1, 1024, 64)]
    rows = []
    for B, P, N in cells:
        rows.append(bench_cell(B, P, N, device, dtype, with_baselines=cuda or not quick))
    print_table(rows)
    if cuda:
        npass = sum(r["pass"] == "PASS" for r in rows)
        print(f"tree_attention: {npass}/{len(rows)} cells within the allowance")
        if "--no-sweep" not in sys.argv and time.time() - T_START < 200:
            split_sweep(device, dtype)
        breakdowns(device, dtype)


def breakdowns(device, dtype):
    """Per-kernel device time (split kernel vs merge kernel) of each variant on two cells."""
    import benchmarks.harness as harness
    if not hasattr(harness, "kernel_breakdown") or time.time() - T_START > 260:
        return
    variants = ["mma"] + (list(WGMMA_IMPLS) if torch.cuda.get_device_capability()[0] == 9 else [])
    for B, P, N in [(1, 1024, 64), (1, 4096, 128)]:
        q, k, v, plens, mask = make_inputs(B, P, N, device, dtype)
        for impl in variants:
            os.environ["JETSPEC_TREE_ATTN_IMPL"] = impl
            try:
                harness.print_breakdown(f"{impl} B{B} P{P} N{N}", harness.kernel_breakdown(
                    lambda: jetspec_ext.tree_attention(q, k, v, plens, mask)))
            except Exception as e:  # noqa: BLE001
                print(f"breakdown {impl}: {type(e).__name__}: {str(e)[:200]}")
            finally:
                os.environ.pop("JETSPEC_TREE_ATTN_IMPL", None)


def split_sweep(device, dtype):
    """Tuning data: time of each kernel variant for forced split counts (env overrides)."""
    rows = []
    variants = ["mma"] + (list(WGMMA_IMPLS) if torch.cuda.get_device_capability()[0] == 9 else [])
    for B, P, N in [(1, 1024, 64), (1, 4096, 128), (1, 16384, 256), (8, 4096, 64)]:
        q, k, v, plens, mask = make_inputs(B, P, N, device, dtype)
        fn = lambda: jetspec_ext.tree_attention(q, k, v, plens, mask)  # noqa: E731
        for impl in variants:
            if time.time() - T_START > 270:
                print("sweep: out of time")
                break
            row = {"sweep": impl, "shape": f"B{B} P{P} N{N}"}
            for splits in ("auto", 1, 2, 4, 8, 16, 32):
                os.environ["JETSPEC_TREE_ATTN_IMPL"] = impl
                if splits != "auto":
                    os.environ["JETSPEC_TREE_ATTN_SPLITS"] = str(splits)
                try:
                    row[f"s{splits}_us"] = time_us(fn, warmup=5, iters=30, graph=True)
                except Exception as e:  # noqa: BLE001
                    row[f"s{splits}_us"] = f"err:{type(e).__name__}"
                    print(f"sweep {impl} splits={splits}: {type(e).__name__}: {str(e)[:200]}")
                finally:
                    os.environ.pop("JETSPEC_TREE_ATTN_IMPL", None)
                    os.environ.pop("JETSPEC_TREE_ATTN_SPLITS", None)
            rows.append(row)
            print("  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in row.items()), flush=True)
    # Printed here, not through print_table: these rows must not enter the suite's JSON summary.
    print("split sweep (median us per forced split count):")
    keys = list(rows[0].keys()) if rows else []
    for r in [dict(zip(keys, keys))] + rows:
        print("  ".join((f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k])).ljust(14)
                        for k in keys))


if __name__ == "__main__":
    main()
