"""Which tree_attention configurations of a kernel variant stall (never finish), fail or pass: one
worker process runs the cases one after the other and reports each; when a case does not finish
within --case-seconds, the worker is killed, the case is recorded as STALL and a fresh worker
goes on from the next case. So one hang costs one case's timeout, not the whole device call
(a stalled kernel keeps its process's GPU context busy until the process dies).

    PYTHONPATH=. python scripts/gpu/ta_stall_map.py --impl wgmma_ws_pp \\
        --cells 4096x1,4096x128,1024x256 --splits auto,3,8,9,16 --clusters 1,0

Each case: Qwen3-8B heads (Hq 32, Hkv 8, D 128), batch 1, bf16, prefix P, N tree tokens with a
random tree (every node sees its ancestors), the cache slots past the tree NaN, the split count
forced through JETSPEC_TREE_ATTN_SPLITS (auto: the launcher's choice) and the cluster merge
through JETSPEC_TREE_ATTN_CLUSTER (1: by the cost model, 0: never); checked against the fp32
reference (max |error| of the output; FAIL above --tolerance). Prints one line per case (OK,
FAIL, ERROR: an exception, or the worker died; STALL) and a summary; exit 0 only if all are OK.
--device cpu runs the same cases on the CPU op (a smoke test of this script's control flow; the
variables above then change nothing).
"""
import argparse
import os
import queue
import subprocess
import sys
import threading
import time


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--impl", default="wgmma_ws_pp", help="JETSPEC_TREE_ATTN_IMPL for every case")
    ap.add_argument("--cells", default="4096x1,4096x64,4096x128,1024x64,1024x256",
                    help="comma-separated PREFIXxTREE_TOKENS")
    ap.add_argument("--splits", default="auto,2,3,8,16", help="comma-separated split counts (auto: the launcher's)")
    ap.add_argument("--clusters", default="1,0", help="comma-separated JETSPEC_TREE_ATTN_CLUSTER values (1, 0)")
    ap.add_argument("--case-seconds", type=float, default=20.0,
                    help="a case not done within this many seconds is a STALL (the first case also "
                         "pays the worker's start-up)")
    ap.add_argument("--tolerance", type=float, default=0.05, help="max |out - fp32 reference| for OK")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        a.cells = [tuple(int(x) for x in c.lower().split("x")) for c in a.cells.split(",")]
        assert all(len(c) == 2 and c[0] >= 0 and c[1] >= 1 for c in a.cells)
    except (ValueError, AssertionError):
        ap.error(f"--cells: PREFIXxTREE_TOKENS items with PREFIX >= 0 and TREE_TOKENS >= 1, got {a.cells!r}")
    a.splits = a.splits.split(",")
    if not all(s == "auto" or (s.isdigit() and int(s) >= 1) for s in a.splits):
        ap.error(f"--splits: 'auto' or positive integers, got {a.splits}")
    a.clusters = a.clusters.split(",")
    if not all(c in ("0", "1") for c in a.clusters):
        ap.error(f"--clusters: 0 or 1, got {a.clusters}")
    if a.case_seconds <= 0:
        ap.error("--case-seconds must be > 0")
    return a


def all_cases(a):
    return [(P, N, s, c) for (P, N) in a.cells for s in a.splits for c in a.clusters]


def case_name(case):
    P, N, s, c = case
    return f"P{P} N{N} splits={s} cluster={c}"


# ---- worker: runs cases from index `start` on, one line per event on stdout ---------------------
def worker(a, start):
    import torch
    import jetspec_ext
    import numpy as np
    from jetspec_ext.reference.attention import tree_attention as ref
    from jetspec_ext.reference.build_tree import ancestor_mask

    os.environ["JETSPEC_TREE_ATTN_IMPL"] = a.impl
    # Test hooks (python_tests/test_dev_scripts.py): the case numbered INDEX sleeps / raises.
    sleep_in = os.environ.get("JETSPEC_STALL_MAP_TEST_SLEEP")
    raise_in = os.environ.get("JETSPEC_STALL_MAP_TEST_RAISE")
    cases = all_cases(a)
    for i in range(start, len(cases)):
        P, N, splits, cluster = cases[i]
        print(f"START {i}", flush=True)
        if splits == "auto":
            os.environ.pop("JETSPEC_TREE_ATTN_SPLITS", None)
        else:
            os.environ["JETSPEC_TREE_ATTN_SPLITS"] = splits
        os.environ["JETSPEC_TREE_ATTN_CLUSTER"] = cluster
        g = torch.Generator().manual_seed(a.seed + i)
        Hq, Hkv, D, S = 32, 8, 128, P + N + 64
        q = torch.randn(1, N, Hq, D, generator=g).to(a.device, torch.bfloat16)
        k = torch.randn(1, Hkv, S, D, generator=g).to(a.device, torch.bfloat16)
        v = torch.randn(1, Hkv, S, D, generator=g).to(a.device, torch.bfloat16)
        k[:, :, P + N:] = float("nan")  # slots past the tree must never be read (NaN would show)
        v[:, :, P + N:] = float("nan")
        parents = np.array([-1] + [int(torch.randint(0, j, (1,), generator=g)) for j in range(1, N)])
        mask = torch.from_numpy(ancestor_mask(parents, N)).unsqueeze(0).to(a.device)  # (1, N, ceil(N/32))
        pl = torch.tensor([P], dtype=torch.int32, device=a.device)
        if sleep_in is not None and int(sleep_in) == i:
            time.sleep(3600)
        try:
            if raise_in is not None and int(raise_in) == i:
                raise RuntimeError("test hook")
            out, _ = jetspec_ext.tree_attention(q, k, v, pl, mask)
            if a.device == "cuda":
                torch.cuda.synchronize()
            r, _ = ref(q.float(), k.float(), v.float(), pl, mask)
            err = (out.float() - r).abs().max().item()
            print(f"{'OK' if err <= a.tolerance else 'FAIL'} {i} {err:.3g}", flush=True)
        except Exception as e:  # noqa: BLE001 (reported per case)
            print(f"ERROR {i} {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}", flush=True)
            return  # after a CUDA error the context may be unusable: a fresh worker takes the next case


# ---- driver ---------------------------------------------------------------------------------------
def spawn(argv, start):
    # The worker imports jetspec_ext as this process would (PYTHONPATH=. in a checkout with the
    # extension built in place, or the installed package): same environment.
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--_worker-from", str(start)] + argv,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_lines(stream, out):
    """Every line of `stream` into the queue `out`, then None (the worker exited)."""
    for line in stream:
        out.put(line)
    out.put(None)


def drive(argv):
    a = parse_args(argv)
    cases = all_cases(a)
    results = {}  # index -> (status, detail)

    def record(idx, status, detail):
        results[idx] = (status, detail)
        print(f"{status:5s} {case_name(cases[idx])}: {detail}", flush=True)

    nxt = 0
    while nxt < len(cases):
        proc = spawn(argv, nxt)
        lines = queue.Queue()
        threading.Thread(target=read_lines, args=(proc.stdout, lines), daemon=True).start()
        current, started, last_other = None, False, ""  # last_other: its last non-result line
        deadline = time.monotonic() + a.case_seconds + 30  # start-up: import torch, CUDA
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:  # the case in progress (or the start-up) did not finish
                proc.kill()
                idx = current if current is not None else nxt
                record(idx, "STALL", f"not done in {a.case_seconds:g} s")
                nxt = idx + 1
                break
            if line is None:  # the worker exited
                code = proc.wait()
                why = f"worker exited (code {code})" + (f": {last_other}" if last_other else "")
                if current is not None:  # inside a case
                    record(current, "ERROR", why)
                    nxt = current + 1
                elif not started and nxt < len(cases):  # before its first case: do not retry forever
                    record(nxt, "ERROR", why + " (before its first case)")
                    nxt += 1
                break  # otherwise: all done, or it stopped after an ERROR line: go on from nxt
            parts = line.split(maxsplit=2)
            if len(parts) >= 2 and parts[0] == "START" and parts[1].isdigit():
                current, started = int(parts[1]), True
                deadline = time.monotonic() + a.case_seconds
            elif len(parts) >= 2 and parts[0] in ("OK", "FAIL", "ERROR") and parts[1].isdigit():
                idx, detail = int(parts[1]), parts[2].strip() if len(parts) > 2 else ""
                record(idx, parts[0], detail if parts[0] == "ERROR" else f"max |err| {detail}")
                current, nxt = None, idx + 1
            elif line.strip():  # warnings, tracebacks: not a result; the last one explains an exit
                last_other = line.strip()[:300]
        proc.wait()
    counts = {}
    for status, _ in results.values():
        counts[status] = counts.get(status, 0) + 1
    print(f"{a.impl} on {a.device}: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("OK", "FAIL", "ERROR", "STALL"))
          + f" of {len(cases)} cases")
    return 0 if counts.get("OK", 0) == len(cases) else 1


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--_worker-from":
        worker(parse_args(sys.argv[3:]), int(sys.argv[2]))
    else:
        sys.exit(drive(sys.argv[1:]))
