"""Shared benchmark helper: CUDA-event medians after warm-up, roofline floor, JSON rows.

Every benchmark builds rows with :func:`measure` and prints them with :func:`print_table`; the
GPU suite (benchmarks/gpu_suite.sh) collects the JSON lines. Numbers are only meaningful on the
GPU; on the CPU the helpers still run (wall clock) so the scripts can be smoke-tested.

Roofline constants are the H200 ceilings measured on this project's machine (DESIGN §4):
4.3 TB/s for a device copy, 790 TFLOP/s for a large bf16 matmul.
"""
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

HBM_BYTES_PER_S = 4.3e12
BF16_FLOPS_PER_S = 790e12
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_dir(explicit=None):
    """$JETSPEC_DATA, else the first of ../shared/data, shared/data, .carry/data (repo-relative)
    that holds mbpp_test.jsonl."""
    cands = [explicit or os.environ.get("JETSPEC_DATA")] + [
        os.path.join(_REPO, p) for p in (os.path.join("..", "shared", "data"), os.path.join("shared", "data"),
                                        os.path.join(".carry", "data"))]
    for c in cands:
        if c and os.path.isfile(os.path.join(c, "mbpp_test.jsonl")):
            return c
    raise FileNotFoundError(f"mbpp_test.jsonl not found in any of {[c for c in cands if c]} (set JETSPEC_DATA)")


def cold_weight_copies(N: int, K: int, min_bytes: int = 160 * 2**20) -> List[torch.Tensor]:
    """Copies of a random bf16 (N, K) weight (scaled 1/sqrt(K)) holding at least ``min_bytes`` in
    all (at most 8): cycling through them in a timed loop streams each call's weight from HBM,
    as in a decoding step, instead of finding it in the 50 MB L2."""
    copies = max(1, min(8, -(-min_bytes // (N * K * 2))))
    return [torch.randn(N, K, device="cuda").mul_(K ** -0.5).to(torch.bfloat16) for _ in range(copies)]


def floor_us(bytes_moved: float = 0.0, flops: float = 0.0) -> float:
    """Roofline floor in microseconds: max(bytes / 4.3 TB/s, FLOPs / 790 TFLOP/s)."""
    return max(bytes_moved / HBM_BYTES_PER_S, flops / BF16_FLOPS_PER_S) * 1e6


def capture_graph(fn: Callable[[], object], reps: int = 10) -> "torch.cuda.CUDAGraph":
    """``reps`` back-to-back calls of ``fn`` captured in one CUDA graph (after 3 warm-up calls on
    a side stream, as capture requires)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    return g


def time_us(fn: Callable[[], object], warmup: int = 10, iters: int = 100,
            setup: Optional[Callable[[], object]] = None, graph: bool = False,
            graph_reps: int = 10) -> float:
    """Median time of ``fn`` in microseconds.

    On CUDA: each call bracketed by CUDA events on the current stream, after ``warmup`` calls;
    ``setup`` (untimed) runs before each call, e.g. to reset state or rotate inputs.
    With ``graph=True`` ``graph_reps`` back-to-back calls are captured in one CUDA graph and a
    replay's time is divided by ``graph_reps``: the cost of the op inside a graphed decoding
    round, without the host's launch latency (which a single tiny replay would measure).
    On the CPU: wall clock.
    """
    cuda = torch.cuda.is_available()
    if graph and cuda:
        if setup:
            setup()
        run = capture_graph(fn, graph_reps).replay
    else:
        run = fn
    for _ in range(warmup):
        if setup:
            setup()
        run()
    times = []
    if cuda:
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for i in range(iters):
            if setup:
                setup()
            starts[i].record()
            run()
            ends[i].record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) * 1e3 / (graph_reps if graph else 1) for s, e in zip(starts, ends)]
    else:
        for _ in range(iters):
            if setup:
                setup()
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


class GpuSampler:
    """Samples the GPU's SM clock (MHz), board power (W), whether the software power cap is
    holding the clocks down, and the enforced power limit (W), with ``nvidia-smi -lms`` while the
    ``with`` block runs: ``with GpuSampler() as g: ...`` then ``g.summary()`` -> a dict (see
    parse_gpu_samples; NaNs and 0 samples where nvidia-smi is absent or says nothing). Why: the
    same code measured different t_round / t_AR on different H200s, with the same AR step
    (benchmarks/RESULTS.md, seventeenth session), and the eighteenth session's samples put the
    budget-128 round at ~680 W with the SM clock at 1755 MHz against 1980 MHz for the AR step:
    the power cap is the suspect, and its event reason says so directly. Sampling is host-side
    and costs the GPU nothing."""

    FIELDS = ("clocks.sm", "power.draw", "clocks_event_reasons.sw_power_cap", "enforced.power.limit")

    def __init__(self, device=None, interval_ms: int = 20):
        self.interval_ms = interval_ms
        self.device = device
        self.lines: List[str] = []
        self.proc = None

    def _base_cmd(self, exe, fields):
        cmd = [exe, "--query-gpu=" + ",".join(fields), "--format=csv,noheader,nounits"]
        if torch.cuda.device_count() > 1 or "CUDA_VISIBLE_DEVICES" in os.environ:
            try:  # address the GPU by UUID (CUDA_VISIBLE_DEVICES renumbers torch's indices)
                dev = torch.device(self.device if self.device is not None else "cuda")
                index = dev.index if dev.index is not None else torch.cuda.current_device()
                cmd.append(f"--id=GPU-{torch.cuda.get_device_properties(index).uuid}")
            except Exception:
                pass
        return cmd

    def __enter__(self):
        import shutil
        import subprocess

        exe = shutil.which("nvidia-smi")
        if exe and torch.cuda.is_available():
            fields = self.FIELDS
            # A driver that does not know a field fails the whole query: then clock and power only.
            probe = subprocess.run(self._base_cmd(exe, fields), capture_output=True, text=True)
            if probe.returncode != 0:
                fields = fields[:2]
            self.proc = subprocess.Popen(self._base_cmd(exe, fields) + [f"-lms={self.interval_ms}"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            out, _ = self.proc.communicate(timeout=10)
            self.lines = out.splitlines()
        return False

    def summary(self):
        return parse_gpu_samples(self.lines)


def parse_gpu_samples(lines: List[str]):
    """``"1980, 612.34[, Active|Not Active, 700.00]"`` lines -> dict: ``sm_mhz`` and ``power_w``
    (medians), ``pcap`` (share of the samples with the software power cap active; NaN when the
    field was not sampled), ``limit_w`` (median enforced power limit; NaN when not sampled),
    ``samples`` (lines parsed). Unparsable lines are skipped."""
    nan = float("nan")
    mhz, watts, capped, limits = [], [], [], []
    for line in lines:
        parts = [x.strip() for x in line.split(",")]
        try:
            m, w = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            continue
        mhz.append(m)
        watts.append(w)
        if len(parts) >= 3 and parts[2] in ("Active", "Not Active"):
            capped.append(parts[2] == "Active")
        if len(parts) >= 4:
            try:
                limits.append(float(parts[3]))
            except ValueError:
                pass
    if not mhz:
        return {"sm_mhz": nan, "power_w": nan, "pcap": nan, "limit_w": nan, "samples": 0}
    return {"sm_mhz": statistics.median(mhz), "power_w": statistics.median(watts),
            "pcap": sum(capped) / len(capped) if capped else nan,
            "limit_w": statistics.median(limits) if limits else nan, "samples": len(mhz)}


def measure(name: str, shape: str, fn: Callable[[], object], *, bytes_moved: float = 0.0,
            flops: float = 0.0, baselines: Optional[Dict[str, Callable[[], object]]] = None,
            warmup: int = 10, iters: int = 100, setup=None, graph: bool = False,
            us: Optional[float] = None) -> Dict:
    """Time ``fn`` and its baselines side by side; return one row (dict) with the floor.
    ``us``: ``fn``'s time when the caller has measured it already (``fn`` is then not timed)."""
    row = {
        "bench": name,
        "shape": shape,
        "us": time_us(fn, warmup, iters, setup, graph) if us is None else us,
        "floor_us": floor_us(bytes_moved, flops),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    if bytes_moved:
        row["TB/s"] = bytes_moved / (row["us"] * 1e-6) / 1e12
    if flops:
        row["TFLOP/s"] = flops / (row["us"] * 1e-6) / 1e12
    for bname, bfn in (baselines or {}).items():
        row[f"{bname}_us"] = time_us(bfn, max(2, warmup // 2), max(5, iters // 4), setup)
    return row


def print_table(rows: List[Dict], json_path: Optional[str] = None) -> None:
    """Print rows as an aligned table; append them as JSON lines to ``json_path`` (or
    $JETSPEC_BENCH_JSON) when given."""
    json_path = json_path or os.environ.get("JETSPEC_BENCH_JSON")
    if json_path:
        with open(json_path, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    if not rows:
        return
    keys: List[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and k != "device"]

    def fmt(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    widths = {k: max(len(k), *(len(fmt(r.get(k, ""))) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(fmt(r.get(k, "")).ljust(widths[k]) for k in keys))
    sys.stdout.flush()


def kernel_breakdown(fn: Callable[[], object], iters: int = 20) -> Dict[str, float]:
    """Mean device time per call of each CUDA kernel ``fn`` launches (torch.profiler), in us,
    keyed by the kernel name cut to 60 characters. Use it to see which launch of a multi-kernel
    op dominates (:func:`kernel_stats` also gives launch counts)."""
    return {r["kernel"][:60]: r["us"] for r in kernel_stats(fn, iters)}


def print_breakdown(title: str, breakdown: Dict[str, float]) -> None:
    if breakdown:
        print(f"-- kernels of {title} (us per call)")
        for k, v in breakdown.items():
            print(f"   {v:8.2f}  {k}")
        print(PDL_NOTE)


def kernel_stats(fn: Callable[[], object], iters: int = 10) -> List[Dict]:
    """Per CUDA kernel name: device time and launches per call of ``fn`` (torch.profiler), sorted
    by time. Works for CUDA-graph replays (their kernels are reported one by one)."""
    if not torch.cuda.is_available():
        return []
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    out = []
    for evt in prof.key_averages():
        t = getattr(evt, "device_time_total", None)
        if t is None:
            t = getattr(evt, "cuda_time_total", 0.0)
        if t and evt.count:
            out.append({"kernel": evt.key, "us": t / iters, "launches": evt.count / iters})
    return sorted(out, key=lambda r: -r["us"])


def print_kernel_stats(title: str, stats: List[Dict], top: int = 25) -> None:
    tot_us = sum(r["us"] for r in stats)
    tot_n = sum(r["launches"] for r in stats)
    print(f"-- kernels of {title}: {tot_n:.0f} launches, {tot_us / 1e3:.3f} ms of kernel time per call "
          f"({len(stats)} distinct); top {min(top, len(stats))}:")
    print(f"   {'us':>9} {'%':>5} {'launches':>8}  kernel")
    for r in stats[:top]:
        print(f"   {r['us']:9.1f} {100 * r['us'] / max(tot_us, 1e-9):5.1f} {r['launches']:8.1f}  {r['kernel'][:110]}")
    print(PDL_NOTE)
    sys.stdout.flush()


# Kernels launched programmatically (PDL, on by default on sm_90: tree_attention's split and merge
# kernels, verify_linear's ping-pong GEMMs) start before their predecessor ends and wait on the
# device; a profiler counts that wait as their kernel time (merge_kernel most visibly). Graph
# times, not these sums, are the measure; JETSPEC_PDL=0 gives plain launches.
PDL_NOTE = ("   (with programmatic launch on, the times of merge_kernel and the CUTLASS GEMMs include "
            "their wait for the kernel before them; JETSPEC_PDL=0 for plain launches)")
