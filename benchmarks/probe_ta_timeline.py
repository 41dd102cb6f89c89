"""Development probe: where split_kernel_ws's time goes outside the key-tile loop, from a per-CTA
phase timeline. Needs a diagnostic build (JETSPEC_TREE_ATTN_TIMELINE=1 at build time: the
kernel then records the SM clock at its phases and `torch.ops.jetspec._tree_attention_timeline`
reads them back; default builds have neither). Not part of the suite.

Usage on the H200: JETSPEC_TREE_ATTN_TIMELINE=1 python setup.py build_ext --inplace, then python
benchmarks/probe_ta_timeline.py [--cells 1024x128,...] [--stages S: a build with kWsStages = S].
For each cell (Qwen3-8B heads, bf16, batch 1, the default launcher: automatic splits,
wgmma_ws_pp) one call after warm-up; per phase the median and the 10th / 90th percentile over the
CTAs, in ns (SM clock converted with the clock rate the CTAs themselves show: clock cycles over
global-timer ns between entry and exit)."""
import os
import sys

import torch

import jetspec_ext  # noqa: F401  (loads the extension)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.harness import time_us  # noqa: E402
from benchmarks.probe_decode_attention import case  # noqa: E402

# Timeline slots (csrc/kernels/tree_attention_ws.cuh).
GT_ENTRY, CLK_ENTRY, CLK_BARRIER, CLK_PLEN, CLK_ISSUE0, CLK_Q, CLK_K0, CLK_SM0, CLK_LOOP, \
    CLK_EPI, GT_EXIT, SMID, CLK_EPI_WG1, CLK_LAST_ISSUE, CLK_STAGED, CLK_PLEN_C, CLK_PLEN_AGAIN, \
    CLK_CLUSTER1, CLK_MERGED, CLK_MERGE_LOADS, CLK_MERGE_STORES = range(21)
CLK_ITER0, N_ITER_SLOTS = 21, 16  # consumer 0: key-tile loop iteration i done up to softmax(i + 1)
CLK_SCORES0 = CLK_ITER0 + N_ITER_SLOTS  # consumer 0: iteration i's scores S(i + 1) landed (later builds)
CLK_TURN0 = CLK_SCORES0 + N_ITER_SLOTS  # consumer 0: its turn for iteration i taken (later builds)
CLK_WG1_SCORES0 = CLK_TURN0 + N_ITER_SLOTS  # consumer 1: its scores S(i + 1) landed (later builds)
CLK_PV0 = CLK_WG1_SCORES0 + N_ITER_SLOTS  # consumer 0: P(i) V(i) landed (later builds)
CLK_READY0 = CLK_PV0 + N_ITER_SLOTS  # consumer 0: iteration i's K / V waits passed, before its turn
CLK_PACKED0 = CLK_READY0 + N_ITER_SLOTS  # consumer 0: iteration i's release / rescale / pack of P done
CLK_MAY_COPY0 = CLK_PACKED0 + N_ITER_SLOTS  # producer: the split's tile i may be copied (stage free)

PHASES = [  # name, from slot, to slot
    ("entry -> CTA barrier", CLK_ENTRY, CLK_BARRIER),
    ("barrier -> prefix length known (producer)", CLK_BARRIER, CLK_PLEN),
    ("prefix length -> tile 0 copies issued", CLK_PLEN, CLK_ISSUE0),
    ("barrier -> Q landed (consumer 0)", CLK_BARRIER, CLK_Q),
    ("barrier -> K(0) landed", CLK_BARRIER, CLK_K0),
    ("tile 0 issued -> K(0) landed", CLK_ISSUE0, CLK_K0),
    ("K(0) -> S(0) + softmax(0) done", CLK_K0, CLK_SM0),
    ("key-tile loop (+ last P V)", CLK_SM0, CLK_LOOP),
    ("barrier -> prefix length known (last consumer thread)", CLK_BARRIER, CLK_PLEN_C),
    ("same word again through L2 (ld.global.cg)", CLK_PLEN_C, CLK_PLEN_AGAIN),
    ("epilogue (consumer 0)", CLK_LOOP, CLK_EPI),
    ("  normalise + lse + stage in shared memory", CLK_LOOP, CLK_STAGED),
    ("  global stores issued (merge_kernel path)", CLK_STAGED, CLK_EPI),
    ("  push shares, the others' received (cluster merge)", CLK_STAGED, CLK_CLUSTER1),
    ("  merge this CTA's share, store it", CLK_CLUSTER1, CLK_MERGED),
    ("    its item's loads landed (thread 0)", CLK_CLUSTER1, CLK_MERGE_LOADS),
    ("    maths done, stores issued", CLK_MERGE_LOADS, CLK_MERGE_STORES),
    ("  outgoing copies done reading", CLK_MERGED, CLK_EPI),
    ("consumer 0 done -> consumer 1 done", CLK_EPI, CLK_EPI_WG1),
    ("entry -> epilogue done (whole CTA)", CLK_ENTRY, CLK_EPI),
]


def pct(x, q):
    return torch.quantile(x.double(), q).item()


def analyse(tl, label, stages=3):
    live = tl[:, CLK_ENTRY] != 0
    done = live & (tl[:, CLK_EPI] != 0) & (tl[:, GT_EXIT] != 0)
    tl_l, tl_d = tl[live], tl[done]
    if tl_d.shape[0] == 0:
        print(f"{label}: no CTA recorded (not a timeline build, or not the ws kernel)")
        return
    ghz = ((tl_d[:, CLK_EPI] - tl_d[:, CLK_ENTRY]).double() /
           (tl_d[:, GT_EXIT] - tl_d[:, GT_ENTRY]).double().clamp(min=1)).median().item()
    t0 = tl_l[:, GT_ENTRY].min()
    starts = (tl_l[:, GT_ENTRY] - t0).double()
    ends = (tl_d[:, GT_EXIT] - t0).double()
    print(f"== {label}: {tl_l.shape[0]} CTAs ({tl_d.shape[0]} with work) on "
          f"{tl_l[:, SMID].unique().numel()} SMs; SM clock {ghz:.2f} GHz")
    print(f"   CTA entry spread: p50 {pct(starts, .5):.0f} ns, p90 {pct(starts, .9):.0f}, max "
          f"{starts.max().item():.0f}; consumer-0 exit: p50 {pct(ends, .5):.0f}, max "
          f"{ends.max().item():.0f} ns after the first entry")
    clustered = (tl_d[:, CLK_CLUSTER1] != 0).any().item()  # this call ran the cluster merge
    for name, a, b in PHASES:
        rows = tl_d if b not in (CLK_PLEN, CLK_ISSUE0) else tl_l[(tl_l[:, b] != 0)]
        cluster_only = bool({CLK_CLUSTER1, CLK_MERGED, CLK_MERGE_LOADS, CLK_MERGE_STORES} & {a, b})
        if cluster_only:
            rows = rows[(rows[:, a] != 0) & (rows[:, b] != 0)]
        elif "merge_kernel path" in name and clustered:
            continue
        if rows.shape[0] == 0:
            continue
        d = (rows[:, b] - rows[:, a]).double() / ghz
        print(f"   {name:<62} p50 {pct(d, .5):7.0f}  p10 {pct(d, .1):7.0f}  p90 {pct(d, .9):7.0f} ns")
    if tl.shape[1] >= CLK_ITER0 + N_ITER_SLOTS:  # builds with the per-iteration slots
        scores = tl.shape[1] >= CLK_SCORES0 + N_ITER_SLOTS  # and, later builds, scores landed
        turns = tl.shape[1] >= CLK_WG1_SCORES0 + N_ITER_SLOTS  # and, later still, turns / consumer 1
        pv = tl.shape[1] >= CLK_READY0 + N_ITER_SLOTS  # and P V landed / ready for the turn
        packed = tl.shape[1] >= CLK_PACKED0 + N_ITER_SLOTS  # and P packed (release / rescale / pack done)
        may_copy = tl.shape[1] >= CLK_MAY_COPY0 + N_ITER_SLOTS  # and the producer's copy times
        cells = {"total": [], "wait": [], "softmax": [], "turn": [], "issue": [], "wg1": [],
                 "pv": [], "ready": [], "bar": [], "pack": [], "kvwait": [], "late": [], "flight": []}
        for i in range(N_ITER_SLOTS):
            a, end = CLK_SM0 if i == 0 else CLK_ITER0 + i - 1, CLK_ITER0 + i
            rows = tl_d[(tl_d[:, a] != 0) & (tl_d[:, end] != 0)]
            if rows.shape[0] == 0:
                break
            p50 = lambda x, y: f"{i + 1}:{pct((rows[:, y] - rows[:, x]).double() / ghz, .5):.0f}"  # noqa: E731
            cells["total"].append(p50(a, end))
            if scores:
                cells["wait"].append(p50(a, CLK_SCORES0 + i))
                cells["softmax"].append(p50(CLK_SCORES0 + i, end))
            if turns:
                cells["turn"].append(p50(a, CLK_TURN0 + i))
                cells["issue"].append(p50(CLK_TURN0 + i, CLK_SCORES0 + i))
                cells["wg1"].append(p50(CLK_SCORES0 + i, CLK_WG1_SCORES0 + i))
            if pv and i > 0:  # iteration 0's turn follows softmax(0) with no P V before it
                cells["pv"].append(p50(a, CLK_PV0 + i - 1))
                cells["ready"].append(p50(CLK_PV0 + i - 1, CLK_READY0 + i))
                cells["bar"].append(p50(CLK_READY0 + i, CLK_TURN0 + i))
                if packed:
                    cells["pack"].append(p50(CLK_PV0 + i - 1, CLK_PACKED0 + i - 1))
                    cells["kvwait"].append(p50(CLK_PACKED0 + i - 1, CLK_READY0 + i))
                # Tile k = i + 1 reuses tile k - stages's stage (kWsStages-stage ring): consumer 0
                # released it just after P(k - stages) V(k - stages) landed; iteration i waits for K(k).
                if may_copy and i + 1 >= stages and i + 1 < N_ITER_SLOTS:
                    cells["late"].append(p50(CLK_PV0 + i + 1 - stages, CLK_MAY_COPY0 + i + 1))
                    cells["flight"].append(p50(CLK_MAY_COPY0 + i + 1, CLK_READY0 + i))
        if cells["total"]:
            print("   key-tile loop per iteration, up to the softmax of the split's tile k (k: p50 ns, "
                  "CTAs with that many tiles): " + " ".join(cells["total"]))
        if cells["wait"]:
            print("     of which: previous softmax -> tile k's scores landed (p50 ns): " + " ".join(cells["wait"]))
            print("     and: scores landed -> softmax of tile k done (p50 ns):       " + " ".join(cells["softmax"]))
        if cells["turn"]:
            print("     the wait split: previous softmax -> turn taken (p50 ns):     " + " ".join(cells["turn"]))
            print("       and: turn taken -> scores landed (p50 ns):                 " + " ".join(cells["issue"]))
            print("     consumer 1's scores of tile k land after consumer 0's by (p50 ns):  " + " ".join(cells["wg1"]))
        if cells["pv"]:
            print("     previous softmax -> turn, split: P V landed (p50 ns):            " + " ".join(cells["pv"]))
            print("       then release / rescale / pack P / K, V waits (p50 ns):         " + " ".join(cells["ready"]))
            print("       then the turn barrier (p50 ns):                                " + " ".join(cells["bar"]))
        if cells["pack"]:
            print("     the middle part split: release / rescale / pack P (p50 ns):      " + " ".join(cells["pack"]))
            print("       then the next K / V waits (p50 ns):                            " + " ".join(cells["kvwait"]))
        if cells["late"]:
            print(f"     producer: consumer 0 released tile k-{stages}'s stage -> tile k may be copied (p50 ns): "
                  + " ".join(cells["late"]))
            print("       then copies issued -> consumer 0's K(k) / V(k-1) waits passed (p50 ns):     "
                  + " ".join(cells["flight"]))
    sys.stdout.flush()


def main():
    if not hasattr(torch.ops.jetspec, "_tree_attention_timeline"):
        sys.exit("not a timeline build: rebuild with JETSPEC_TREE_ATTN_TIMELINE=1")
    read = torch.ops.jetspec._tree_attention_timeline
    cells = [(1024, 64), (1024, 128), (1024, 256), (4096, 128), (16384, 256)]
    if "--cells" in sys.argv:  # e.g. --cells 1024x128,1024x64 (prefix x tree tokens)
        spec = sys.argv[sys.argv.index("--cells") + 1]
        cells = [tuple(int(v) for v in c.split("x")) for c in spec.split(",")]
    # --stages S: the build's kWsStages (csrc/kernels/tree_attention_ws.cuh; default 3), which
    # tile's release frees the stage a copy waits for; the timeline does not record it.
    stages = int(sys.argv[sys.argv.index("--stages") + 1]) if "--stages" in sys.argv else 3
    for P, N in cells:
        args = case(P, N=N)
        for _ in range(3):
            jetspec_ext.tree_attention(*args)
        read(args[0], True)  # zero the timeline
        jetspec_ext.tree_attention(*args)
        tl = read(args[0], False).cpu()
        torch.cuda.synchronize()
        us = time_us(lambda: jetspec_ext.tree_attention(*args), graph=True)
        analyse(tl, f"P{P} N{N} (this build, graph-timed: {us:.2f} us per call)", stages)


if __name__ == "__main__":
    main()
