"""The compute-sanitizer driver (scripts/gpu/sanitize_ops.py, scripts/gpu/sanitize.sh).

The sanitizer itself needs the GPU (its runs are in benchmarks/RESULTS.md); here: every case is a
valid call of the op (run on the CPU ops), the case list reaches every kernel variant the launchers
can pick, and sanitize.sh's verdicts (negative control, racecheck's own summary, initcheck failing
on any report) are right, on the output of a stand-in sanitizer that prints canned reports; and the
stand-alone racecheck probe (scripts/gpu/racecheck_cluster_probe.cu) compiles for sm_90a. The hang /
determinism stress script (scripts/gpu/stress_tree_attention.py) runs on the CPU op: its comparison
catches a changed output and its watchdog a launch chunk that does not complete."""
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import env_importing_this_jetspec_ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts", "gpu"))
import sanitize_ops  # noqa: E402


def test_every_case_is_a_valid_call_on_the_cpu_ops(capsys):
    assert sanitize_ops.main(["--device", "cpu", "--quick", "--only", "tree_attention,tree,linear"]) == 0
    out = capsys.readouterr().out
    n = out.count("case: ")
    assert n >= 20 and f"sanitize_ops: {n} cases done" in out


def test_case_list_reaches_every_kernel_variant(capsys):
    assert sanitize_ops.main(["--list"]) == 0
    names = capsys.readouterr().out.splitlines()
    ta = [n for n in names if n.startswith("tree_attention")]
    for impl in ("mma", "wgmma_pipe", "wgmma_ws_pp"):
        assert any(f"IMPL={impl}" in n for n in ta), impl
    assert any("CLUSTER=require" in n for n in ta) and any("CLUSTER=0" in n for n in ta)
    assert any("Q_TMA=0" in n for n in ta) and any("D64" in n for n in ta) and any("D128" in n for n in ta)
    assert any("P[0," in n for n in ta), "a row with no prefix"
    # build_tree: tiled and streaming statistics (V above kTileElems * kMaxSplits), K 8 and 16
    tree = [n for n in names if n.startswith("build_tree")]
    hdr = open(os.path.join(ROOT, "csrc", "kernels", "build_tree.cuh")).read()
    tiled_max = (int(re.search(r"constexpr int kTileElems = (\d+);", hdr).group(1))
                 * int(re.search(r"constexpr int kMaxSplits = (\d+);", hdr).group(1)))
    vs = [int(re.search(r" V(\d+) ", n).group(1)) for n in tree]
    ws = [int(re.search(r" W(\d+) ", n).group(1)) for n in tree]
    assert min(vs) <= tiled_max < max(vs) and min(ws) <= 8 < max(ws)
    assert any("accum" in n for n in tree) and any("topn" in n for n in tree)
    assert any(" T0.0 " in n for n in tree) and any(" k50 " in n for n in tree)
    # verify_linear: every tile configuration the launcher knows (read from its source)
    src = open(os.path.join(ROOT, "csrc", "cuda", "verify_linear_cuda.cu")).read()
    configs = re.findall(r'\{"(\w+)", verify_gemm::config_', src)
    assert len(configs) >= 6
    vl = [n for n in names if n.startswith("verify_linear")]
    defaults = {"s64": "M16 ", "p64c2": "M128 ", "t128": "M200 "}  # picked by row count
    for c in configs:
        assert any(f"'{c}'" in n for n in vl) or any(n.startswith("verify_linear " + defaults.get(c, "?"))
                                                     for n in vl), c
    assert any("residual=True" in n for n in vl)
    # skinny_linear: the CUDA-core kernel (1..4 rows), the tensor-core one with each tiling and a K split
    sk = [n for n in names if n.startswith("skinny_linear")]
    rows = [int(re.search(r" M(\d+) ", n).group(1)) for n in sk]
    assert min(rows) <= 4 < max(rows)
    for s in ("GEMV': '0'", "2x4", "1x8", "KSPLIT"):
        assert any(s in n for n in sk), s


FAKE_SANITIZER = r"""#!/usr/bin/env bash
# Stand-in for compute-sanitizer: prints canned reports for the tool named after --tool.
tool=memcheck
all_args="$*"
while [ $# -gt 0 ]; do case $1 in --tool) tool=$2; shift;; --version) echo "fake 1.0"; exit 0;; esac; shift; done
echo "========= COMPUTE-SANITIZER"
case "$tool" in
  memcheck)
    echo "q_tma: ${JETSPEC_TREE_ATTN_Q_TMA-unset}"
    echo "case: x"; echo "  ok (0.0 s)"
    if [ "${FAKE_MEMCHECK_ERRORS:-0}" != 0 ]; then
      echo "========= Invalid __global__ write of size 4 bytes"; echo "=========     at void k()+0x10"
    fi
    echo "sanitize_ops: 1 cases done"; echo "========= ERROR SUMMARY: ${FAKE_MEMCHECK_ERRORS:-0} errors"
    [ "${FAKE_MEMCHECK_ERRORS:-0}" = 0 ] || exit 9 ;;
  initcheck)
    echo "args: $all_args"
    echo "case: x"; echo "  ok (0.0 s)"
    for k in ${FAKE_INIT_KERNELS:-}; do
      echo "========= Uninitialized __global__ memory read of size 16 bytes"
      echo "=========     at void jetspec::tree_attn::${k}<(int)128, float>(jetspec::tree_attn::Params)+0xa20"
    done
    n=$(echo ${FAKE_INIT_KERNELS:-} | wc -w)
    echo "sanitize_ops: 1 cases done"; echo "========= ERROR SUMMARY: $n errors"
    [ "$n" = 0 ] || exit 9 ;;
  racecheck)  # racecheck's exit status stays 0 on warnings; its summary line is its own
    echo "args: $all_args"; echo "q_tma: ${JETSPEC_TREE_ATTN_Q_TMA-unset}"
    echo "case: x"; echo "  ok (0.0 s)"
    w=${FAKE_RACE_WARNINGS:-0}
    [ "$w" = 0 ] || echo "========= Warning: (Warp Level Programming) Potential RAW hazard detected at __shared__ 0x1504"
    echo "sanitize_ops: 1 cases done"
    echo "========= RACECHECK SUMMARY: $(( w < 20 ? w : 20 )) hazards displayed (0 errors, $w warnings)" ;;
esac
"""


def _run_sanitize_sh(tmp_path, **env):
    fake = tmp_path / "compute-sanitizer"
    fake.write_text(FAKE_SANITIZER)
    fake.chmod(0o755)
    e = dict(os.environ, COMPUTE_SANITIZER=str(fake), OUT=str(tmp_path / "out"), SAN_TOOLS="memcheck initcheck")
    e.update(env)
    p = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu", "sanitize.sh")], env=e,
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr


@pytest.mark.parametrize("init_kernels, want_rc", [
    ("", 0),                                  # clean
    # merge_kernel's loads of empty splits' O were expected reports until the thirty-eighth session
    # (empty splits now store zeros): any report fails, that one included
    ("merge_kernel", 1),
    ("split_kernel_ws", 1),
])
def test_sanitize_sh_initcheck_verdicts(tmp_path, init_kernels, want_rc):
    # The stand-in's memcheck reports an error, so the negative control passes.
    rc, out = _run_sanitize_sh(tmp_path, FAKE_MEMCHECK_ERRORS="1", FAKE_INIT_KERNELS=init_kernels,
                               SAN_TOOLS="initcheck")
    assert "negative control reported (1 errors)" in out
    assert rc == want_rc, out
    n = len(init_kernels.split())
    assert re.search(rf"^initcheck\s+\|\s+{9 if n else 0}\s+\|\s+{n} ", out, re.M), out


def test_initcheck_refuses_the_decoder_group(capsys):
    # cuBLAS's outputs read as uninitialized under initcheck on Hopper (initcheck_tma_probe.py):
    # the decoder group under initcheck would bury any real report, so it is refused outright.
    with pytest.raises(SystemExit) as e:
        sanitize_ops.main(["--list", "--only", "decoder", "--skip-tma-output-reads"])
    assert e.value.code == 2
    assert "cannot cover the decoder group" in capsys.readouterr().err
    assert sanitize_ops.main(["--list", "--only", "decoder"]) == 0  # fine for the other tools


def test_sanitize_sh_fails_when_the_control_is_not_reported(tmp_path):
    rc, out = _run_sanitize_sh(tmp_path, FAKE_MEMCHECK_ERRORS="0", SAN_TOOLS="memcheck")
    assert rc == 1 and "NEGATIVE CONTROL NOT REPORTED" in out
    assert re.search(r"^memcheck\s+\|\s+0\s+\|\s+0 ", out, re.M), out  # the tool itself was clean


def test_sanitize_sh_fails_on_a_memcheck_error(tmp_path):
    rc, out = _run_sanitize_sh(tmp_path, FAKE_MEMCHECK_ERRORS="1", SAN_TOOLS="memcheck")
    assert "negative control reported" in out
    assert rc == 1 and re.search(r"^memcheck\s+\|\s+9\s+\|\s+1 ", out, re.M), out


@pytest.mark.parametrize("warnings, want_rc", [(0, 0), (282, 1)])
def test_sanitize_sh_racecheck_verdict_reads_its_own_summary(tmp_path, warnings, want_rc):
    # racecheck prints "RACECHECK SUMMARY: n hazards displayed (e errors, w warnings)", no ERROR
    # SUMMARY: a clean run must pass (the thirty-sixth session's script failed it) and warp-level
    # warnings (not only errors) must fail it.
    rc, out = _run_sanitize_sh(tmp_path, FAKE_MEMCHECK_ERRORS="1", FAKE_RACE_WARNINGS=str(warnings),
                               SAN_TOOLS="racecheck")
    assert rc == want_rc, out
    assert re.search(rf"^racecheck\s+\|\s+0\s+\|\s+{warnings} ", out, re.M), out


def test_sanitize_sh_initcheck_does_not_read_back_tma_stored_outputs(tmp_path):
    rc, out = _run_sanitize_sh(tmp_path, FAKE_MEMCHECK_ERRORS="1", SAN_TOOLS="initcheck",
                               SAN_ARGS_initcheck="--quick --only linear")
    assert rc == 0, out
    log = (tmp_path / "out" / "san_initcheck.log").read_text()
    assert "sanitize_ops.py --quick --only linear --skip-tma-output-reads" in log, log


def test_skip_tma_output_reads_still_launches_every_linear_case(capsys):
    # The flag drops the read-back of verify_linear's output only: the same cases run.
    assert sanitize_ops.main(["--device", "cpu", "--quick", "--only", "linear"]) == 0
    plain = capsys.readouterr().out
    try:
        assert sanitize_ops.main(["--device", "cpu", "--quick", "--only", "linear", "--skip-tma-output-reads"]) == 0
    finally:
        sanitize_ops.SKIP_TMA_OUTPUT_READS = False
    skipping = capsys.readouterr().out
    names = [ln for ln in plain.splitlines() if ln.startswith("case: ")]
    assert any("verify_linear" in n for n in names)
    assert names == [ln for ln in skipping.splitlines() if ln.startswith("case: ")]


def test_match_keeps_only_the_named_cases(capsys):
    assert sanitize_ops.main(["--list", "--quick"]) == 0
    every = capsys.readouterr().out.splitlines()
    assert sanitize_ops.main(["--list", "--quick", "--match", "SPLITS=16,verify_linear"]) == 0
    kept = capsys.readouterr().out.splitlines()
    assert kept and kept == [n for n in every if "SPLITS=16" in n or "verify_linear" in n]


def _nvcc():
    path = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    return path if os.path.exists(path) else shutil.which("nvcc")


@pytest.mark.skipif(_nvcc() is None, reason="needs nvcc")
def test_racecheck_cluster_probe_compiles_for_sm90a(tmp_path):
    # The probe runs only on the H200 (racecheck_cluster_probe.sh); here its source must still
    # build, with the same flags, against the kernel header whose merge helpers it calls, so that
    # a device call is not spent on a compile error.
    src = os.path.join(ROOT, "scripts", "gpu", "racecheck_cluster_probe.cu")
    cmd = [_nvcc(), "-O2", "-arch=sm_90a", "-I", os.path.join(ROOT, "csrc"), "-o", str(tmp_path / "probe"), src]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "probe").stat().st_size > 0


@pytest.mark.parametrize("caller_q_tma, want", [(None, "0"), ("1", "1")])
def test_sanitize_sh_racecheck_copies_q_by_cp_async(tmp_path, monkeypatch, caller_q_tma, want):
    # racecheck does not finish wgmma_ws_pp's cases that copy Q by TMA into a cluster of 5-8 CTAs
    # (RESULTS, sessions 40-41), so its run sets JETSPEC_TREE_ATTN_Q_TMA=0 (a caller's value wins)
    # and keeps every kernel variant in its default set; the other tools see the caller's setting.
    env = {"FAKE_MEMCHECK_ERRORS": "1", "SAN_TOOLS": "racecheck memcheck"}
    monkeypatch.delenv("JETSPEC_TREE_ATTN_Q_TMA", raising=False)
    if caller_q_tma is not None:
        env["JETSPEC_TREE_ATTN_Q_TMA"] = caller_q_tma
    _run_sanitize_sh(tmp_path, **env)
    race = (tmp_path / "out" / "san_racecheck.log").read_text()
    mem = (tmp_path / "out" / "san_memcheck.log").read_text()
    assert f"q_tma: {want}" in race, race
    assert f"q_tma: {caller_q_tma or 'unset'}" in mem, mem
    args = re.search(r"^args: (.*)$", race, re.M).group(1)
    assert "--quick" in args and "--impls" not in args, args


def test_sanitize_sh_racecheck_on_a_build_without_setmaxnreg(tmp_path, monkeypatch):
    # On a JETSPEC_TREE_ATTN_NO_SETMAXNREG=1 build racecheck finishes every tree_attention case
    # (forty-third session), so it runs all of them (no --quick) with Q by TMA as the default build
    # copies it; the detection asks the build, SAN_NO_SETMAXNREG overrides it.
    monkeypatch.delenv("JETSPEC_TREE_ATTN_Q_TMA", raising=False)
    rc, out = _run_sanitize_sh(tmp_path, FAKE_MEMCHECK_ERRORS="1", SAN_TOOLS="racecheck", SAN_NO_SETMAXNREG="1")
    assert rc == 0, out
    assert "build without setmaxnreg" in out
    race = (tmp_path / "out" / "san_racecheck.log").read_text()
    assert "q_tma: unset" in race, race
    args = re.search(r"^args: (.*)$", race, re.M).group(1)
    assert "--only tree_attention" in args and "--quick" not in args, args
    rc, out = _run_sanitize_sh(tmp_path, SAN_TOOLS="racecheck", SAN_NO_SETMAXNREG="yes")
    assert rc == 2 and "SAN_NO_SETMAXNREG must be auto, 0 or 1" in out, out


CASE_MAP = os.path.join(ROOT, "scripts", "gpu", "racecheck_case_map.sh")


def _case_map(tmp_path, timeout=120, sanitizer_sleeps=None, **env_vars):
    """racecheck_case_map.sh on the CPU ops; with ``sanitizer_sleeps`` (True / False) through a
    stand-in for compute-sanitizer that runs the program it is given (after 30 s if True)."""
    env = dict(os.environ, OUT=str(tmp_path / "out"), RCM_DEVICE="cpu", **env_vars)
    if sanitizer_sleeps is not None:
        fake = tmp_path / "compute-sanitizer"
        fake.write_text("#!/usr/bin/env bash\n"
                        "while [ $# -gt 0 ]; do case $1 in python3) break;; esac; shift; done\n"
                        + ("sleep 30\n" if sanitizer_sleeps else "") +
                        "echo '========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)'\n"
                        "exec \"$@\"\n")
        fake.chmod(0o755)
        env["COMPUTE_SANITIZER"] = str(fake)
    return subprocess.run(["bash", CASE_MAP], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("fake_sleeps", [False, True])
def test_racecheck_case_map_runs_its_cases(tmp_path, fake_sleeps):
    # The script's case lines reach sanitize_ops.tree_attention_case (here on the CPU ops, through a
    # stand-in for compute-sanitizer that runs the program it is given), and a run the limit kills
    # is reported as not finished rather than as a pass.
    p = _case_map(tmp_path, sanitizer_sleeps=fake_sleeps, RCM_T="2" if fake_sleeps else "60",
                  RCM_CASES="1 3 4 2 64 5 2 require 0")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    row = [r for r in out.splitlines() if r.startswith("B1 N3 Hq4 Hkv2 D64 P5 splits 2 cluster require")][-1]
    assert "| case ok " in row, row  # the plain run
    assert ("NOT FINISHED in 2 s" in row) == fake_sleeps and ("finished, rc 0" in row) != fake_sleeps, row


def test_racecheck_case_map_repeats_each_case(tmp_path):
    p = _case_map(tmp_path, timeout=180, sanitizer_sleeps=False, RCM_T="60", RCM_REPEAT="3",
                  RCM_CASES="1 3 4 2 64 5 2 require 0")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    table = out.split("\ncase ")[-1]  # the closing table: one row per run
    assert table.count("B1 N3 Hq4 Hkv2 D64 P5 splits 2 cluster require") == 3, out
    assert sorted(os.listdir(tmp_path / "out")) == ["rcm_1_1.log", "rcm_1_2.log", "rcm_1_3.log"]
    p = _case_map(tmp_path, timeout=60, RCM_REPEAT="0", RCM_CASES="1 3 4 2 64 5 2 require 0")
    assert p.returncode == 2 and "RCM_REPEAT must be a positive number" in p.stdout, p.stdout + p.stderr


def test_racecheck_case_map_refuses_a_bad_case_line(tmp_path):
    p = _case_map(tmp_path, timeout=60, RCM_CASES="1 x 4 2 64 5 2 require 0")
    assert p.returncode == 2 and "numbers expected, got 'x'" in p.stdout, p.stdout + p.stderr


STRESS = os.path.join(ROOT, "scripts", "gpu", "stress_tree_attention.py")


def _stress(*args, timeout=120):
    # The subprocess imports the jetspec_ext this test session uses (CI: the installed package).
    return subprocess.run([sys.executable, STRESS, "--device", "cpu", *args], env=env_importing_this_jetspec_ext(),
                          capture_output=True, text=True, timeout=timeout)


def test_stress_script_reports_identical_outputs():
    p = _stress("--iters", "6", "--seeds", "2", "--chunk", "2", "--check-every", "1",
                "--cases", "1 3 4 2 64 5 2 require 0 wgmma_ws_pp;2 37 12 4 64 131 0 1 1 wgmma_ws_pp")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert out.count("| ok") == 2 and "all cases finished, outputs identical" in out, out


def test_stress_script_watchdog_reports_a_chunk_that_does_not_complete():
    # ~30 ms per CPU call: a chunk of 100 calls is far over a 0.05 s limit.
    p = _stress("--iters", "100", "--seeds", "1", "--chunk", "100", "--hang-s", "0.05",
                "--cases", "1 300 16 2 64 70 4 require 0 wgmma_ws_pp")
    assert p.returncode == 1 and "HANG: B1 N300" in p.stdout, p.stdout + p.stderr


@pytest.fixture
def launcher_env(monkeypatch):
    """run_case sets the launcher's variables in os.environ; monkeypatch restores them afterwards."""
    for k in ("JETSPEC_TREE_ATTN_IMPL", "JETSPEC_TREE_ATTN_CLUSTER", "JETSPEC_TREE_ATTN_Q_TMA",
              "JETSPEC_TREE_ATTN_SPLITS"):
        monkeypatch.setenv(k, "0")


def _cpu_case(stress, iters, chunk):
    """run_case's arguments for one small case on the CPU op: (args, case)."""
    args = stress.argparse.Namespace(device="cpu", seeds=1, iters=iters, chunk=chunk, check_every=1)
    return args, stress.parse_cases("1 3 4 2 64 5 2 require 0 wgmma_ws_pp")[0]


def test_stress_script_counts_a_changed_output(monkeypatch, capsys, launcher_env):
    import stress_tree_attention as stress

    real, calls = stress.jetspec_ext.tree_attention, []

    def every_third_call_off(*a):
        out, lse = real(*a)
        calls.append(1)
        return (out + 1 if len(calls) % 3 == 0 else out), lse

    monkeypatch.setattr(stress.jetspec_ext, "tree_attention", every_third_call_off)
    args, case = _cpu_case(stress, iters=6, chunk=3)
    dog = stress.Watchdog(60)
    assert not stress.run_case(case, args, dog, None)
    assert "2 MISMATCHES" in capsys.readouterr().out  # calls 3 and 6 of 7 (the first is the reference)


def test_stress_script_skips_a_required_cluster_the_launcher_refuses(monkeypatch, capsys, launcher_env):
    import stress_tree_attention as stress

    def refuse(*a):
        raise RuntimeError("tree_attention: JETSPEC_TREE_ATTN_CLUSTER=require, but 32 clusters of 4 CTAs would "
                           "take 2 waves against 1 without (clusters resident at once: 30)")

    monkeypatch.setattr(stress.jetspec_ext, "tree_attention", refuse)
    args, case = _cpu_case(stress, iters=4, chunk=2)
    assert stress.run_case(case, args, stress.Watchdog(60), None)
    assert "skipped: tree_attention: JETSPEC_TREE_ATTN_CLUSTER=require, but" in capsys.readouterr().out

    def other_error(*a):
        raise RuntimeError("tree_attention: something else")

    monkeypatch.setattr(stress.jetspec_ext, "tree_attention", other_error)
    dog = stress.Watchdog(60)
    with pytest.raises(RuntimeError, match="something else"):
        stress.run_case(case, args, dog, None)
    # Left armed, its thread would end this whole pytest process (os._exit) 60 s later.
    assert dog.deadline is None, "run_case left the watchdog armed after an error"


def test_stress_script_disarms_after_an_error_among_the_launches(monkeypatch, launcher_env):
    """An error in the launch loop (not the first launch) leaves the watchdog disarmed too."""
    import stress_tree_attention as stress

    real, calls = stress.jetspec_ext.tree_attention, []

    def fails_on_the_third_call(*a):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("tree_attention: launch 3 failed")
        return real(*a)

    monkeypatch.setattr(stress.jetspec_ext, "tree_attention", fails_on_the_third_call)
    args, case = _cpu_case(stress, iters=6, chunk=3)
    dog = stress.Watchdog(60)
    with pytest.raises(RuntimeError, match="launch 3 failed"):
        stress.run_case(case, args, dog, None)
    assert len(calls) == 3 and dog.deadline is None, "run_case left the watchdog armed after an error"


def test_stress_script_refuses_a_bad_case_line():
    p = _stress("--cases", "1 3 4 2 64 5 2 require 0")
    assert p.returncode != 0 and "10 fields expected" in p.stderr, p.stdout + p.stderr
