"""Development probe (issue 5): the draft head's LM head in fp8 (e4m3) instead of bf16.

A budget-128 round reads the target's LM head twice: once for the verify rows (M = 128) and once
for the draft block (M = D = 15 rows at batch 1), where it is a pure weight stream of 1.24 GB
(~290 us at 4.3 TB/s; the round's profile put it at ~304 us). The draft's logits only shape the
tree (verification stays exact), so the draft may read an fp8 copy of that weight (622 MB). This
times, on the same inputs, µs per call (CUDA graph of 10 calls; the weight exceeds L2 by far):
  bf16        F.linear(x, W)                                   (what the draft calls today)
  fp8_row     x quantized per row + torch._scaled_mm(x8, W8^T) with per-row / per-output scales
  fp8_tensor  the same with one scale each
and the error of each against fp32 logits (max abs error / max |logit|, top-8 agreement).
Not part of the suite.

    python benchmarks/probe_fp8_lm_head.py [--rows 15,16,32]
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.harness import floor_us, time_us  # noqa: E402
from jetspec_ext.fp8 import E4M3_MAX, quantize_rows  # noqa: E402


def quant_rows(t: torch.Tensor):
    """jetspec_ext.fp8.quantize_rows with its scale as a column, (R, 1): torch._scaled_mm's shape
    for per-row / per-column scales."""
    q, scale = quantize_rows(t)
    return q, scale.unsqueeze(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="15,16,32")
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--shapes-only", action="store_true", help="only the draft GEMM table")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("probe_fp8_lm_head: needs a GPU")
        return
    if not a.shapes_only:
        lm_head_table([int(r) for r in a.rows.split(",")], a.vocab, a.hidden)
    draft_shapes()


def lm_head_table(rows, N: int, K: int):
    """The LM head ``(N, K)`` at each row count of ``rows``: bf16 / fp8_row / fp8_tensor timings and errors."""
    torch.manual_seed(0)
    w = torch.randn(N, K, device="cuda").mul_(K ** -0.5).to(torch.bfloat16)
    w8, sw = quant_rows(w)          # (N, K) e4m3, (N, 1)
    sw_t = sw.t().contiguous()      # (1, N)
    w8_t, sw_one = (w.float() / (w.abs().amax().float() / E4M3_MAX)).to(torch.float8_e4m3fn), \
        (w.abs().amax().float() / E4M3_MAX).reshape(())
    print(f"{'rows':>5s} {'floor bf16':>10s} {'bf16':>8s} {'floor fp8':>10s} {'fp8_row':>8s} {'fp8_tensor':>10s}"
          f" {'err bf16':>9s} {'err row':>9s} {'err tens':>9s} {'top8 bf16':>9s} {'top8 row':>9s} {'top8 tens':>9s}")
    for M in rows:
        x = torch.randn(M, K, device="cuda").to(torch.bfloat16)
        res = {}
        res["bf16"] = time_us(lambda: F.linear(x, w), 10, 100, None, True)

        def fp8_row():
            x8, sx = quant_rows(x)
            return torch._scaled_mm(x8, w8.t(), scale_a=sx, scale_b=sw_t, out_dtype=torch.bfloat16)

        def fp8_tensor():
            sx = x.abs().amax().float() / E4M3_MAX
            x8 = (x.float() / sx).to(torch.float8_e4m3fn)
            return torch._scaled_mm(x8, w8_t.t(), scale_a=sx, scale_b=sw_one, out_dtype=torch.bfloat16)

        for name, fn in (("fp8_row", fp8_row), ("fp8_tensor", fp8_tensor)):
            try:
                fn()
                res[name] = time_us(fn, 10, 100, None, True)
                res["out_" + name] = fn()
            except Exception as e:  # noqa: BLE001
                print(f"M{M} {name}: {type(e).__name__}: {str(e)[:200]}")
                res[name] = float("nan")
                res["out_" + name] = None
        ref = x.float() @ w.float().t()
        top_ref = ref.topk(8, dim=1).indices

        def err(o):
            if o is None:
                return float("nan"), float("nan")
            o = o.float()
            e = (o - ref).abs().max().item() / ref.abs().max().item()
            top = o.topk(8, dim=1).indices
            agree = sum(len(set(top[i].tolist()) & set(top_ref[i].tolist())) for i in range(M)) / (8 * M)
            return e, agree

        eb, tb = err(F.linear(x, w))
        er, tr = err(res["out_fp8_row"])
        et, tt = err(res["out_fp8_tensor"])
        print(f"{M:5d} {floor_us(N * K * 2):10.2f} {res['bf16']:8.2f} {floor_us(N * K):10.2f} {res['fp8_row']:8.2f}"
              f" {res['fp8_tensor']:10.2f} {eb:9.2e} {er:9.2e} {et:9.2e} {tb:9.3f} {tr:9.3f} {tt:9.3f}", flush=True)


def draft_shapes(rows: int = 16):
    """Every GEMM a Qwen3-8B draft round streams, at ``rows`` rows: op_select.linear (what the
    plain drafter calls: verify_linear's few-row configuration on the H200), F.linear, and
    jetspec_ext.fp8.fp8_linear (what HeadDrafter(fp8=True) calls), weights cycled over copies
    beyond L2; µs per call (CUDA graph of 10)."""
    import itertools

    from benchmarks.harness import cold_weight_copies
    from jetspec_ext.fp8 import fp8_linear, quantize_weight
    from jetspec_ext.op_select import linear

    shapes = [("q|k|v", 6144, 4096, 5), ("o_proj", 4096, 4096, 5), ("gate|up", 24576, 4096, 5),
              ("down", 4096, 12288, 5), ("fc", 4096, 20480, 1), ("k|v ctx", 2048, 4096, 5), ("lm_head", 151936, 4096, 1)]
    print(f"\ndraft GEMMs at {rows} rows (the LM head at {rows - 1}), µs per call; per round = x calls")
    print("linear = op_select.linear (bf16, the plain drafter's); fp8 = fp8_linear eager (quantize, GEMM, scale: "
          "several kernels); fp8c = the same torch.compile'd; mm = torch._scaled_mm alone on pre-quantized x")
    print(f"{'shape':10s} {'calls':>5s} {'floor bf16':>10s} {'linear':>8s} {'F.linear':>8s} {'floor fp8':>9s} {'fp8':>8s}"
          f" {'fp8c':>8s} {'mm':>8s}")
    tot = {"linear": 0.0, "F.linear": 0.0, "fp8": 0.0, "fp8c": 0.0, "mm": 0.0, "fb": 0.0, "f8": 0.0}
    for name, N, K, calls in shapes:
        M = rows - 1 if name == "lm_head" else rows
        ws = cold_weight_copies(N, K)
        w8s = [quantize_weight(w) for w in ws]
        x = torch.randn(M, K, device="cuda").to(torch.bfloat16)
        r = {}
        it = itertools.cycle(ws)
        r["linear"] = time_us(lambda: linear(x, next(it)), 10, 100, None, True)
        it = itertools.cycle(ws)
        r["F.linear"] = time_us(lambda: F.linear(x, next(it)), 10, 100, None, True)
        it8 = itertools.cycle(w8s)
        r["fp8"] = time_us(lambda: fp8_linear(x, next(it8)), 10, 100, None, True)
        comp = torch.compile(fp8_linear, dynamic=False)
        it8 = itertools.cycle(w8s)
        r["fp8c"] = time_us(lambda: comp(x, next(it8)), 10, 100, None, True)
        x8 = quant_rows(x)[0]
        it8 = itertools.cycle(w8s)
        r["mm"] = time_us(lambda: (lambda w: torch._scaled_mm(x8, w.q.t(), scale_a=w.unit, scale_b=w.unit,
                                                             out_dtype=torch.float32))(next(it8)), 10, 100, None, True)
        fb, f8 = floor_us(N * K * 2), floor_us(N * K)
        for k in ("linear", "F.linear", "fp8", "fp8c", "mm"):
            tot[k] += calls * r[k]
        tot["fb"] += calls * fb
        tot["f8"] += calls * f8
        print(f"{name:10s} {calls:5d} {fb:10.2f} {r['linear']:8.2f} {r['F.linear']:8.2f} {f8:9.2f} {r['fp8']:8.2f}"
              f" {r['fp8c']:8.2f} {r['mm']:8.2f}", flush=True)
        del ws, w8s
        torch.cuda.empty_cache()
    print(f"{'per round':10s} {'':5s} {tot['fb']:10.1f} {tot['linear']:8.1f} {tot['F.linear']:8.1f} {tot['f8']:9.1f} "
          f"{tot['fp8']:8.1f} {tot['fp8c']:8.1f} {tot['mm']:8.1f}")


if __name__ == "__main__":
    main()
