"""Hang and determinism stress test of the CUDA tree_attention kernels (no sanitizer).

Why: compute-sanitizer racecheck sometimes does not finish a warp-specialised cluster-merge case
(forty-first and forty-second sessions, benchmarks/RESULTS.md), and which case stalls changes from
run to run. A real deadlock in the mbarrier / cluster protocol would show up as a hang here too,
given enough launches under varied timing; a racecheck artefact would not. Each case builds its
inputs once per seed, launches the op ``--iters`` times (optionally while a second stream copies
memory, to vary SM scheduling and cluster placement), synchronises every ``--chunk`` launches under
a watchdog, and compares every ``--check-every``-th output bit for bit with the first (the split
merge has a fixed order, so the kernel is deterministic). Exit status 1 on a hang (the process is
killed by the watchdog) or a mismatch. (benchmarks/probe_ta_determinism.py is the closer look at
determinism: a few hundred calls alternating with other inputs, each checked against the fp32
reference's error bound; this script is about hangs, over 10^5 launches per case.)

Usage (on the GPU, after a build): python3 scripts/gpu/stress_tree_attention.py [--iters 50000]
  [--noise] [--cases "B N Hq Hkv D P SPLITS CLUSTER Q_TMA IMPL;..."]  (SPLITS 0 = launcher's choice)
  --device cpu runs the CPU op instead (checks this script, not the kernels).
"""
import argparse
import contextlib
import os
import sys
import threading
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jetspec_ext  # noqa: E402
from sanitize_ops import tree_attention_inputs  # noqa: E402

# The racecheck map's shapes (scripts/gpu/racecheck_case_map.sh), the issue-4 cells (B8 with prefix
# lengths 4096 down to 3837) and the other two kernels with batch rows apart.
DEFAULT_CASES = """1 300 16 2 64 70 4 require 0 wgmma_ws_pp
1 300 16 2 64 70 8 require 0 wgmma_ws_pp
1 300 32 4 64 70 4 require 0 wgmma_ws_pp
1 300 16 2 64 70 4 require 1 wgmma_ws_pp
1 1 32 8 128 1000 0 1 1 wgmma_ws_pp
1 128 32 8 128 1024 0 1 1 wgmma_ws_pp
1 64 32 8 128 1024 0 1 1 wgmma_ws_pp
1 64 32 8 128 4096 0 1 1 wgmma_ws_pp
1 256 32 8 128 1024 0 1 1 wgmma_ws_pp
1 128 32 8 128 1024 16 0 1 wgmma_ws_pp
8 64 32 8 128 4096 0 1 1 wgmma_ws_pp
3 45 12 4 64 777 0 1 1 wgmma_pipe
3 45 12 4 64 777 5 0 1 mma"""


def parse_cases(text):
    cases = []
    for line in text.replace(";", "\n").splitlines():
        f = line.split()
        if not f:
            continue
        if len(f) != 10:
            raise SystemExit(f"case {line!r}: 10 fields expected (B N Hq Hkv D P SPLITS CLUSTER Q_TMA IMPL)")
        B, N, Hq, Hkv, D, P, splits = map(int, f[:7])
        cases.append(dict(B=B, N=N, Hq=Hq, Hkv=Hkv, D=D, P=P, splits=splits, cluster=f[7], q_tma=f[8], impl=f[9]))
    return cases


def set_env(c):
    os.environ["JETSPEC_TREE_ATTN_IMPL"] = c["impl"]
    os.environ["JETSPEC_TREE_ATTN_CLUSTER"] = c["cluster"]
    os.environ["JETSPEC_TREE_ATTN_Q_TMA"] = c["q_tma"]
    if c["splits"]:
        os.environ["JETSPEC_TREE_ATTN_SPLITS"] = str(c["splits"])
    else:
        os.environ.pop("JETSPEC_TREE_ATTN_SPLITS", None)


class Watchdog:
    """Kills the process when a synchronisation takes longer than ``limit_s``."""

    def __init__(self, limit_s):
        self.limit_s, self.deadline, self.what = limit_s, None, ""
        threading.Thread(target=self._run, daemon=True).start()

    @contextlib.contextmanager
    def armed(self, what):
        """Armed over the block, disarmed on every way out of it. (Left armed after an error, the
        watchdog outlives the call that armed it and kills the process later: forty-fifth
        session, a pytest process that imported this script ended with exit 1 and no summary 60 s
        after a test in which the first launch raised.)"""
        self.what, self.deadline = what, time.monotonic() + self.limit_s
        try:
            yield
        finally:
            self.deadline = None

    def _run(self):
        while True:
            time.sleep(0.2)
            d = self.deadline
            if d is not None and time.monotonic() > d:
                print(f"HANG: {self.what}: no completion within {self.limit_s} s", flush=True)
                os._exit(1)


def sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def run_case(c, args, dog, noise):
    set_env(c)
    dev = args.device
    name = "B{B} N{N} Hq{Hq} Hkv{Hkv} D{D} P{P} splits {splits} cluster {cluster} q_tma {q_tma} {impl}".format(**c)
    mismatches, launches, t0 = 0, 0, time.perf_counter()
    for seed in range(args.seeds):
        # Batch rows with different prefix lengths: P, P - 37, P - 74, ... (at least 0).
        plens = [max(c["P"] - 37 * b, 0) for b in range(c["B"])]
        q, k, v, plen, mask = tree_attention_inputs(c["B"], c["N"], c["Hq"], c["Hkv"], c["D"], plens,
                                                    seed=seed, device=dev)
        try:
            with dog.armed(f"{name} seed {seed}: first launch"):
                ref_out, ref_lse = jetspec_ext.tree_attention(q, k, v, plen, mask, c["D"] ** -0.5)
                sync(dev)
        except RuntimeError as e:
            # A required cluster the launcher refuses on this GPU (it would take more CTA waves than
            # the plain path, e.g. with fewer SMs than the H200): a setting that does not apply here.
            if "JETSPEC_TREE_ATTN_CLUSTER=require, but" not in str(e):
                raise
            print(f"{name:<72} | skipped: {str(e).splitlines()[0]}", flush=True)
            return True
        per_seed = args.iters // args.seeds
        for i in range(0, per_seed, args.chunk):
            n = min(args.chunk, per_seed - i)  # launches in this chunk
            # Armed over the launches too: with a hung kernel the launch queue fills and a launch blocks.
            with dog.armed(f"{name} seed {seed}: launches {i}..{i + n}"):
                if noise is not None:
                    with torch.cuda.stream(noise[0]):
                        noise[2].copy_(noise[1])  # a concurrent copy on another stream
                for j in range(n):
                    out, lse = jetspec_ext.tree_attention(q, k, v, plen, mask, c["D"] ** -0.5)
                    if (i + j) % args.check_every == 0:
                        same = torch.equal(out, ref_out) and torch.equal(lse, ref_lse)  # syncs
                        mismatches += not same
                sync(dev)
            launches += n
    dt = time.perf_counter() - t0
    verdict = "ok" if mismatches == 0 else f"{mismatches} MISMATCHES"
    print(f"{name:<72} | {launches:>7} launches | {dt:6.1f} s | {verdict}", flush=True)
    return mismatches == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=50000, help="launches per case (over all seeds)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=2000, help="launches between synchronisations")
    ap.add_argument("--check-every", type=int, default=997, help="compare every n-th output")
    ap.add_argument("--hang-s", type=float, default=30.0, help="watchdog limit per chunk")
    ap.add_argument("--noise", action="store_true", help="a 256 MB copy on a second stream per chunk")
    ap.add_argument("--cases", default=DEFAULT_CASES)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("stress_tree_attention.py: no GPU (--device cpu checks the script on the CPU op)")
    if args.iters < args.seeds or args.chunk < 1 or args.check_every < 1:
        raise SystemExit("--iters >= --seeds, --chunk >= 1 and --check-every >= 1 expected")
    noise = None
    if args.noise and args.device == "cuda":
        a = torch.empty(64 << 20, dtype=torch.float32, device="cuda")
        noise = (torch.cuda.Stream(), a, torch.empty_like(a))
    dog = Watchdog(args.hang_s)
    ok = all([run_case(c, args, dog, noise) for c in parse_cases(args.cases)])
    print("stress_tree_attention:", "all cases finished, outputs identical" if ok else "MISMATCH", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
