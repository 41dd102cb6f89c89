"""Developer scripts: the control-bit decoding of scripts/sass_ctrl.py on two instructions of a
real sm_90a listing (split_kernel_ws, twenty-first session), a global load and the first
instruction that uses its result; benchmarks/probe_ta_timeline.py's per-iteration tables on
synthetic timelines; scripts/gpu/ta_stall_map.py's control flow on the CPU op (every case
reported; a case that never finishes recorded as a stall and the map going on);
benchmarks/probe_tree_key_union.py's union of the visible tree keys on a chain and a star; the
patches kept in docs/patches still apply to the checkout; the op test files gpu_suite.sh names exist;
scripts/gpu/pack_out.sh packs more than 8 result files into one archive; scripts/gpu/touch_if_csrc_changed.sh
touches the sources when the last build here was of other sources."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import sass_ctrl  # noqa: E402

LISTING = """\
        /*37d0*/              @!P3 LDG.E.CONSTANT R174, desc[UR14][R20.64] ;                           /* 0x0000000e14aeb981 */
                                                                                                       /* 0x000ea4000c1e9900 */
        /*3a00*/                   IMAD.MOV.U32 R178, RZ, RZ, R174 ;                                   /* 0x000000ffffb27224 */
                                                                                                       /* 0x004fe200078e00ae */
"""


def test_load_sets_a_scoreboard_and_its_use_waits_for_it():
    (a0, t0, stall0, wr0, rd0, wait0), (a1, t1, stall1, wr1, rd1, wait1) = sass_ctrl.decode(LISTING.split("\n"))
    assert (a0, a1) == (0x37D0, 0x3A00)
    assert t0.startswith("@!P3 LDG") and t1.startswith("IMAD.MOV")
    assert (stall0, wr0, rd0, wait0) == (2, 2, 7, 0)  # sets SB2 when R174 is written, waits for nothing
    assert (stall1, wr1, rd1, wait1) == (1, 7, 7, 1 << 2)  # waits for SB2 before it reads R174


def _probe(name="probe_ta_timeline"):
    """benchmarks/NAME.py as a module (the probes import jetspec_ext from the repo root)."""
    import importlib

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return importlib.import_module(f"benchmarks.{name}")


def _synthetic_timeline(pt, n_slots, iters, ready_after, softmax_to_next, pv_after=50,
                        packed_after=None, may_copy_after=None):
    """A 4-CTA timeline at 1 GHz (clock = ns): phases 2-20 100 ns apart, then `iters` key-tile
    iterations: P V landed `pv_after` ns after the previous softmax (from iteration 1), P packed
    `packed_after` ns after it, the K / V waits passed `ready_after` ns after it (10 in iteration
    0), the turn 40 ns later, the scores 320, consumer 1's scores 680 and the next softmax's end
    `softmax_to_next` ns after the K / V waits. With `may_copy_after`, the producer may copy
    tiles 0-2 at once and tile i + 2 that many ns after iteration i's previous softmax."""
    import torch

    tl = torch.zeros(4, n_slots, dtype=torch.long)
    for c in range(4):
        for k in range(2, 21):
            tl[c, k] = 100 * k
        tl[c, pt.GT_ENTRY], tl[c, pt.CLK_ENTRY] = 1000, 1
        tl[c, pt.GT_EXIT], tl[c, pt.CLK_EPI], tl[c, pt.SMID] = 41000, 40001, c
        prev = tl[c, pt.CLK_SM0].item()
        if may_copy_after is not None:
            for k in range(3):
                tl[c, pt.CLK_MAY_COPY0 + k] = 500 + k  # the ring starts empty
        for i in range(iters):
            if i > 0:
                tl[c, pt.CLK_PV0 + i - 1] = prev + pv_after
                if packed_after is not None:
                    tl[c, pt.CLK_PACKED0 + i - 1] = prev + packed_after
                if may_copy_after is not None and i + 2 < pt.N_ITER_SLOTS:
                    tl[c, pt.CLK_MAY_COPY0 + i + 2] = prev + may_copy_after  # reuses tile i - 1's stage
            ready = prev + ready_after if i > 0 else prev + 10
            tl[c, pt.CLK_READY0 + i] = ready
            tl[c, pt.CLK_TURN0 + i] = ready + 40
            tl[c, pt.CLK_SCORES0 + i] = ready + 320
            tl[c, pt.CLK_WG1_SCORES0 + i] = ready + 680
            prev = ready + softmax_to_next
            tl[c, pt.CLK_ITER0 + i] = prev
    return tl


def test_timeline_probe_splits_the_time_before_each_turn(capsys):
    """benchmarks/probe_ta_timeline.py on a synthetic timeline (1 GHz: clock = ns) with known
    intervals per key-tile iteration: P V landed 50 ns after the softmax, 70 ns more to the K / V
    waits passed, 40 ns of turn barrier, 280 ns to the scores, 575 ns of softmax."""
    pt = _probe()
    tl = _synthetic_timeline(pt, pt.CLK_READY0 + pt.N_ITER_SLOTS, iters=5, ready_after=120, softmax_to_next=895)
    pt.analyse(tl, "synthetic")
    out = capsys.readouterr().out
    assert "P V landed (p50 ns):            2:50 3:50 4:50 5:50" in out
    assert "K, V waits (p50 ns):         2:70 3:70 4:70 5:70" in out
    assert "turn barrier (p50 ns):                                2:40 3:40 4:40 5:40" in out
    assert "previous softmax -> turn taken (p50 ns):     1:50 2:160 3:160" in out
    assert "may be copied" not in out  # no producer slots in this build's timeline


def test_timeline_probe_splits_the_kv_wait_at_the_producers_issue(capsys):
    """The same probe on a synthetic timeline with every slot: after P V landed, 30 ns of release
    / rescale / pack, then 90 ns of K / V waits; the producer may copy tile k 25 ns after consumer
    0's P(k - 3) V(k - 3) landed (it released that stage), and iteration k - 1's K / V waits pass
    170 ns after its softmax: an iteration (1015 ns) + 170 - 75 = 1110 ns after the copy may start."""
    pt = _probe()
    tl = _synthetic_timeline(pt, pt.CLK_MAY_COPY0 + pt.N_ITER_SLOTS, iters=8, ready_after=170,
                             softmax_to_next=845, packed_after=80, may_copy_after=75)
    pt.analyse(tl, "synthetic")
    out = capsys.readouterr().out
    assert "release / rescale / pack P (p50 ns):      2:30 3:30 4:30" in out
    assert "then the next K / V waits (p50 ns):                            2:90 3:90 4:90" in out
    assert "tile k may be copied (p50 ns): 3:25 4:25 5:25 6:25 7:25 8:25\n" in out
    assert "K(k) / V(k-1) waits passed (p50 ns):     3:1110 4:1110 5:1110 6:1110 7:1110 8:1110\n" in out
    # Read as a 4-stage build, tile k's stage was released one iteration (1015 ns) earlier, with
    # P(k - 4) V(k - 4), and the first tile that waits for a release is tile 4.
    pt.analyse(tl, "synthetic", stages=4)
    out = capsys.readouterr().out
    assert "released tile k-4's stage -> tile k may be copied (p50 ns): 4:1040 5:1040 6:1040 7:1040 8:1040\n" in out
    assert "K(k) / V(k-1) waits passed (p50 ns):     4:1110 5:1110 6:1110 7:1110 8:1110\n" in out


def _stall_map(*args, env=None):
    import subprocess

    # The script's worker imports jetspec_ext as these tests do (the installed package in CI; a
    # checkout built in place with PYTHONPATH set): same environment, plus the test hooks.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, os.path.join(root, "scripts", "gpu", "ta_stall_map.py"), "--device", "cpu",
                           "--cells", "70x5,0x3", "--splits", "auto,3", "--clusters", "1", *args],
                          capture_output=True, text=True, env=full_env, timeout=300)


def _stall_map_result(*args, rc, env=None):
    """Run the map, check its exit code; its per-case lines, each case's status, its summary."""
    r = _stall_map(*args, env=env)
    assert r.returncode == rc, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    return lines[:-1], [l.split()[0] for l in lines[:-1]], lines[-1]


def test_stall_map_reports_every_case():
    lines, statuses, summary = _stall_map_result(rc=0)
    assert statuses == ["OK"] * 4
    assert "P70 N5 splits=3 cluster=1" in lines[1]
    assert summary == "wgmma_ws_pp on cpu: 4 OK, 0 FAIL, 0 ERROR, 0 STALL of 4 cases"


def test_stall_map_kills_a_stalled_case_and_goes_on():
    # The test hook makes the worker sleep in case 1 (P70 N5, 3 splits): that case is a STALL
    # after --case-seconds (5: slack for a busy CI machine), and a fresh worker runs cases 2 and 3.
    lines, statuses, summary = _stall_map_result("--case-seconds", "5", rc=1,
                                                 env={"JETSPEC_STALL_MAP_TEST_SLEEP": "1"})
    assert statuses == ["OK", "STALL", "OK", "OK"], lines
    assert "P70 N5 splits=3" in lines[1] and "not done in 5 s" in lines[1]
    assert summary.endswith("3 OK, 0 FAIL, 0 ERROR, 1 STALL of 4 cases")


def test_stall_map_refuses_bad_cells():
    r = _stall_map("--cells", "64")
    assert r.returncode == 2 and "--cells" in r.stderr


def test_stall_map_records_an_error_and_goes_on_in_a_fresh_worker():
    lines, statuses, summary = _stall_map_result(rc=1, env={"JETSPEC_STALL_MAP_TEST_RAISE": "2"})
    assert statuses == ["OK", "OK", "ERROR", "OK"], lines
    assert "P0 N3 splits=auto" in lines[2] and "RuntimeError: test hook" in lines[2]
    assert summary.endswith("3 OK, 0 FAIL, 1 ERROR, 0 STALL of 4 cases")


def test_stall_map_fails_a_case_above_the_tolerance():
    # bf16 outputs against the fp32 reference are never exact: a zero tolerance fails every case.
    lines, statuses, _ = _stall_map_result("--tolerance", "0", rc=1)
    assert statuses == ["FAIL"] * 4, lines


def test_stall_map_says_why_a_worker_could_not_start():
    # A worker that cannot import jetspec_ext (here: a module of that name that raises) exits
    # before its first case: each case is recorded once, with the worker's last line.
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "jetspec_ext"))
        with open(os.path.join(d, "jetspec_ext", "__init__.py"), "w") as f:
            f.write("raise ImportError('no jetspec_ext here')\n")
        lines, statuses, summary = _stall_map_result(rc=1, env={"PYTHONPATH": d})
    assert statuses == ["ERROR"] * 4, lines
    assert "ImportError: no jetspec_ext here" in lines[0] and "before its first case" in lines[0]
    assert summary.endswith("0 OK, 0 FAIL, 4 ERROR, 0 STALL of 4 cases")


def test_tree_key_union_of_a_chain_grows_with_the_block_and_of_a_star_stays_small():
    from jetspec_ext.reference.build_tree import ancestor_mask
    import numpy as np

    pu = _probe("probe_tree_key_union")
    n = 128
    chain = np.arange(-1, n - 1)  # node i's parent is i - 1: node i sees 0..i
    stats = pu.union_stats(ancestor_mask(chain, n), n, 32)
    assert [s["union"] for s in stats] == [32, 64, 96, 128]
    assert [s["gathered_tiles"] for s in stats] == [1, 1, 2, 2]
    assert [s["max_key"] for s in stats] == [31, 63, 95, 127]
    star = np.array([-1] + [0] * (n - 1))  # every node a child of the root: sees {0, itself}
    stats = pu.union_stats(ancestor_mask(star, n), n, 32)
    assert [s["union"] for s in stats] == [32, 33, 33, 33]
    assert [s["gathered_tiles"] for s in stats] == [1, 1, 1, 1]


def test_tree_key_union_reads_the_sign_bit():
    import numpy as np

    pu = _probe("probe_tree_key_union")
    words = np.full((32, 1), np.int32(-2**31), dtype=np.int32)  # every row: bit 31 only
    assert [(s["union"], s["max_key"]) for s in pu.union_stats(words, 32, 32)] == [(1, 31)]


def test_env_ab_probe_rotates_the_values_and_parses_cells():
    """benchmarks/probe_ta_env_ab.py times each value once per round in a rotated order, so over
    as many rounds as values each value takes every position once (no value favoured by coming
    first after the cell's warm-up); --cells B:P:N lists parse, bad ones are refused."""
    import pytest

    pe = _probe("probe_ta_env_ab")
    vals = ["1", "0", "unset"]
    orders = [pe.round_order(vals, r) for r in range(3)]
    assert orders[0] == vals and all(sorted(o) == sorted(vals) for o in orders)
    for pos in range(3):
        assert sorted(o[pos] for o in orders) == sorted(vals)
    assert pe.round_order(vals, 3) == vals
    assert pe.parse_cells("") == pe.CELLS and len(pe.CELLS) == 10
    assert pe.parse_cells("1:1024:64,8:0:5") == [(1, 1024, 64), (8, 0, 5)]
    for bad in ("1:1024", "0:1024:64", "1:x:64", "1:1024:0"):
        with pytest.raises(SystemExit, match="is not B:P:N"):
            pe.parse_cells(bad)


def test_kept_patches_still_apply_to_the_checkout():
    """docs/patches/*.patch are changes measured (or prepared) on the H200 but kept off main; the
    roadmap's next calls start with `git apply` of them, so one that no longer applies is found
    here, not in a device call (the thirty-seventh session found split_rebalance.patch broken)."""
    import glob
    import shutil
    import subprocess

    import pytest

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if shutil.which("git") is None or not os.path.exists(os.path.join(root, ".git")):
        pytest.skip("not a git checkout")
    patches = sorted(glob.glob(os.path.join(root, "docs", "patches", "*.patch")))
    assert patches, "docs/patches holds no patch (then drop this test)"
    failed = {}
    for p in patches:
        r = subprocess.run(["git", "apply", "--check", p], cwd=root, capture_output=True, text=True)
        if r.returncode != 0:
            failed[os.path.basename(p)] = r.stderr.strip()
    assert not failed, failed


def test_gpu_suite_kernel_test_files_exist():
    """benchmarks/gpu_suite.sh runs the op test files (KERNEL_TEST_FILES) in one pytest process and
    ignores them in the second: a renamed or removed file would silently move its tests to the
    second process or fail the first, so every name must be a test file here."""
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "benchmarks", "gpu_suite.sh")).read()
    m = re.search(r'^KERNEL_TEST_FILES="([^"]*)"', text, re.M)
    assert m, "KERNEL_TEST_FILES not found in gpu_suite.sh"
    names = m.group(1).split()
    assert len(names) >= 5
    here = os.path.dirname(os.path.abspath(__file__))
    missing = [n for n in names if not os.path.isfile(os.path.join(here, n))]
    assert not missing, missing
    assert "test_tree_attention.py" in names and "test_decoder.py" not in names


def test_pack_out_packs_more_than_eight_files_into_one_archive(tmp_path):
    """scripts/gpu/pack_out.sh (run last by scripts/gpu/call.sh): the device returns at most 8
    files from $OUT, so 9 or more (subfolders included) become one logs.tgz holding every one of
    them, byte for byte; 8 or fewer stay as they are."""
    import shutil
    import subprocess
    import tarfile

    import pytest

    if shutil.which("tar") is None or shutil.which("bash") is None:
        pytest.skip("needs bash and tar")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "scripts", "gpu", "pack_out.sh")

    def fill(out, n):
        files = {}
        for i in range(n):
            rel = os.path.join("sub", f"f{i}.log") if i % 3 == 0 else f"f{i}.log"
            os.makedirs(os.path.join(out, os.path.dirname(rel)), exist_ok=True)
            with open(os.path.join(out, rel), "w") as f:
                f.write(f"log {i}\n" * (i + 1))
            files[rel] = f"log {i}\n" * (i + 1)
        return files

    env = {k: v for k, v in os.environ.items() if k != "PACK_MAX"}  # the default limit, 8
    few = tmp_path / "few"
    files = fill(str(few), 8)
    subprocess.run(["bash", script], env={**env, "OUT": str(few)}, check=True, capture_output=True)
    kept = {os.path.relpath(os.path.join(d, f), few) for d, _, fs in os.walk(few) for f in fs}
    assert kept == set(files)

    many = tmp_path / "many"
    files = fill(str(many), 11)
    r = subprocess.run(["bash", script], env={**env, "OUT": str(many)}, check=True,
                       capture_output=True, text=True)
    assert "11 files" in r.stdout
    assert sorted(os.listdir(many)) == ["logs.tgz"]
    with tarfile.open(many / "logs.tgz") as tar:
        got = {os.path.normpath(m.name): tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}
    assert got == files


def test_touch_if_csrc_changed_forces_a_rebuild_only_after_other_sources(tmp_path):
    """scripts/gpu/touch_if_csrc_changed.sh (benchmarks/gpu_suite.sh, before its build): with no
    build/ nothing happens; with build/ and a recorded hash equal to the given one the sources keep
    their times; with a different or missing record every file under csrc/ gets a new time (newer
    than the objects, so ninja rebuilds them)."""
    import subprocess
    import time

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "scripts", "gpu", "touch_if_csrc_changed.sh")
    src = tmp_path / "csrc" / "kernels" / "k.cuh"
    src.parent.mkdir(parents=True)
    src.write_text("// kernel\n")
    old = time.time() - 3600
    os.utime(src, (old, old))

    def run(h):
        r = subprocess.run(["bash", script, h], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout, src.stat().st_mtime

    out, mtime = run("aaa")  # no build/: a first build, nothing to touch
    assert out == "" and mtime == old
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "csrc_hash_of_last_build").write_text("aaa\n")
    out, mtime = run("aaa")
    assert out == "" and mtime == old
    out, mtime = run("bbb")
    assert "differs" in out and mtime > old + 3000
    os.utime(src, (old, old))
    (tmp_path / "build" / "csrc_hash_of_last_build").unlink()
    out, mtime = run("aaa")
    assert "unrecorded" in out and mtime > old + 3000


def test_negative_control_swaps_csrc_and_puts_the_checkout_back(tmp_path):
    """scripts/gpu/negative_control.sh in a scratch repository whose build step
    (benchmarks/gpu_suite.sh) only prints the hash of csrc/ and whose test passes only on the
    checkout's source: exit 0 when the control fails and the checkout passes, csrc/ back byte for
    byte afterwards; exit 1 when the control passes too (a test that cannot fail)."""
    import shutil
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    repo = tmp_path / "repo"
    (repo / "scripts" / "gpu").mkdir(parents=True)
    shutil.copy(os.path.join(root, "scripts", "gpu", "negative_control.sh"), repo / "scripts" / "gpu")
    (repo / "benchmarks").mkdir()
    (repo / "benchmarks" / "gpu_suite.sh").write_text(
        'echo "csrc content hash $(cat csrc/kernels/k.cuh | md5sum | cut -c1-12)"\n')
    (repo / "csrc" / "kernels").mkdir(parents=True)
    (repo / "csrc" / "kernels" / "k.cuh").write_text("// fixed\n")
    (repo / "csrc" / "other.cpp").write_text("// unchanged\n")
    (repo / "python_tests").mkdir()
    (repo / "python_tests" / "test_k.py").write_text(
        "def test_fixed():\n    assert 'fixed' in open('../csrc/kernels/k.cuh').read()\n")
    control = tmp_path / "control"
    shutil.copytree(repo / "csrc", control)
    (control / "kernels" / "k.cuh").write_text("// broken\n")
    before = {p: (repo / "csrc" / p).read_bytes() for p in ("kernels/k.cuh", "other.cpp")}

    def run():
        return subprocess.run(["bash", "scripts/gpu/negative_control.sh", str(control), "test_k.py"],
                              cwd=repo, env={**os.environ, "OUT": str(tmp_path / "out")},
                              capture_output=True, text=True)

    r = run()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "control pytest rc 1" in r.stdout and "checkout pytest rc 0" in r.stdout
    assert "control: 1 failed" in r.stdout and "checkout: 1 passed" in r.stdout
    assert {p: (repo / "csrc" / p).read_bytes() for p in before} == before
    assert sorted(os.listdir(repo / "csrc")) == ["kernels", "other.cpp"]

    (control / "kernels" / "k.cuh").write_text("// fixed too\n")
    r = run()
    assert r.returncode == 1 and "control pytest rc 0" in r.stdout
    assert {p: (repo / "csrc" / p).read_bytes() for p in before} == before
