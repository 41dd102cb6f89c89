#!/usr/bin/env bash
# One device call with chosen parts of the GPU suite: build (benchmarks/gpu_suite.sh, the one
# place the H200 build is set up), then the steps named in STEPS (space separated), each with its
# own timeout, logs under $OUT (packed into $OUT/logs.tgz at the end when there are more than 8:
# scripts/gpu/pack_out.sh). Usage on the H200: STEPS="tests probe bt dec" bash scripts/gpu/call.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export JETSPEC_DATA=${JETSPEC_DATA:-$PWD/.carry/data} PYTHONPATH=$PWD PYTHONUNBUFFERED=1
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s]"; }
if [ ! -f jetspec_ext/_C.abi3.so ] || [ "${REBUILD:-1}" = 1 ]; then
  SUITE_BUILD_ONLY=1 bash benchmarks/gpu_suite.sh || exit 1
fi
echo "build done $(el)"
for s in ${STEPS:-}; do
  case $s in
    tests) # TEST1..TEST4: one pytest argument string each, e.g. TEST1='test_x.py -k "a or b"'
           for v in TEST1 TEST2 TEST3 TEST4; do
             [ -n "${!v:-}" ] || continue
             (cd python_tests && eval timeout ${T_TESTS:-200} python3 -m pytest -q -p no:cacheprovider ${!v} > "$OUT/pytest_$v.log" 2>&1; echo "pytest $v rc $?")
             grep -E "FAILED|ERROR|passed|failed" "$OUT/pytest_$v.log" | tail -15
           done ;;
    run) # RUN1..RUN4: any command line each (eval'd from the repo root), e.g. RUN1='JETSPEC_PDL=0 python3 x.py'
         for v in RUN1 RUN2 RUN3 RUN4; do
           [ -n "${!v:-}" ] || continue
           (eval timeout ${T_RUN:-120} ${!v}) > "$OUT/$v.log" 2>&1; echo "$v rc $?"; tail -${RUN_TAIL:-25} "$OUT/$v.log"
         done ;;
    probe) timeout ${T_PROBE:-90} python3 benchmarks/probe_decode_attention.py --splits > "$OUT/probe.log" 2>&1; echo "probe rc $?"; tail -40 "$OUT/probe.log" ;;
    probecells) timeout ${T_PROBE:-120} python3 benchmarks/probe_decode_attention.py --cells > "$OUT/probecells.log" 2>&1; echo "probecells rc $?"; tail -20 "$OUT/probecells.log" ;;
    bt) JETSPEC_BENCH_JSON=$OUT/bt.jsonl timeout ${T_BT:-90} python3 benchmarks/bench_build_tree.py > "$OUT/bt.log" 2>&1; echo "bt rc $?"; tail -30 "$OUT/bt.log" ;;
    dec) timeout ${T_DEC:-240} python3 benchmarks/bench_decoder.py ${DEC_ARGS} > "$OUT/dec.log" 2>&1; echo "dec rc $?"; tail -60 "$OUT/dec.log" ;;
    dec2) env ${DEC2_ENV:-} timeout ${T_DEC2:-240} python3 benchmarks/bench_decoder.py ${DEC2_ARGS} > "$OUT/dec2.log" 2>&1; echo "dec2 rc $?"; tail -60 "$OUT/dec2.log" ;;
    dec3) env ${DEC3_ENV:-} timeout ${T_DEC3:-240} python3 benchmarks/bench_decoder.py ${DEC3_ARGS} > "$OUT/dec3.log" 2>&1; echo "dec3 rc $?"; tail -60 "$OUT/dec3.log" ;;
    gemm) timeout ${T_GEMM:-120} python3 benchmarks/probe_verify_gemm.py > "$OUT/gemm.log" 2>&1; echo "gemm rc $?"; tail -25 "$OUT/gemm.log" ;;
    ta) timeout ${T_TA:-200} python3 benchmarks/bench_tree_attention.py ${TA_ARGS:---no-sweep} > "$OUT/ta.log" 2>&1; echo "ta rc $?"; tail -40 "$OUT/ta.log" ;;
    vl) timeout ${T_VL:-240} python3 benchmarks/bench_verify_linear.py ${VL_ARGS:-} > "$OUT/vl.log" 2>&1; echo "vl rc $?"; tail -45 "$OUT/vl.log" ;;
    vlp) timeout ${T_VLP:-120} python3 benchmarks/probe_verify_linear.py ${VLP_ARGS:-} > "$OUT/vlp.log" 2>&1; echo "vlp rc $?"; cat "$OUT/vlp.log" | head -120 ;;
    ncuvl) OUT=$OUT/ncuvl timeout ${T_NCU:-200} bash benchmarks/ncu_verify_linear.sh ${NCUVL_ARGS:-} > "$OUT/ncuvl.log" 2>&1; echo "ncuvl rc $?"; tail -40 "$OUT/ncuvl.log" ;;
    demo) # results come back as <= 4 files (the device returns at most 8 files in all)
          timeout ${T_DEMO:-480} bash scripts/demo/make_demo_head.sh --device cuda --out /tmp/demo_out ${DEMO_ARGS:-} > "$OUT/demo.log" 2>&1; echo "demo rc $?"
          for f in demo_head.tar.gz demo_head_bidir.tar.gz ${DEMO_RETURN_REGEN:+regen.jsonl.gz}; do [ -f /tmp/demo_out/$f ] && mv /tmp/demo_out/$f "$OUT/"; done
          tar -C /tmp -czf "$OUT/demo_out.tgz" demo_out; tail -45 "$OUT/demo.log" ;;
    demoeval) # the heads of the demo step, evaluated again with torch.compile (AR baseline too)
          timeout ${T_DE:-120} python3 scripts/demo/eval_demo_head.py --causal build/demo_head/causal/head --bidir build/demo_head/bidir/head \
            --prompts build/demo_head/eval_prompts.jsonl --num 50 --budgets 16,64,128 --device cuda --compile ${DE_ARGS:-} \
            --out "$OUT/demo_compiled.json" > "$OUT/demoeval.log" 2>&1; echo "demoeval rc $?"; tail -16 "$OUT/demoeval.log" ;;
    san) # compute-sanitizer (memcheck, racecheck, synccheck, initcheck) over scripts/gpu/sanitize_ops.py
         timeout ${T_SAN:-500} bash scripts/gpu/sanitize.sh > "$OUT/san.log" 2>&1; echo "san rc $?"; tail -${SAN_TAIL:-40} "$OUT/san.log" ;;
    racews) # racecheck of every tree_attention case on a build without setmaxnreg (racecheck stalls
            # now and then with it; sanitize.sh), then the default build back for the steps after
            JETSPEC_TREE_ATTN_NO_SETMAXNREG=1 SUITE_BUILD_ONLY=1 bash benchmarks/gpu_suite.sh > "$OUT/racews_build.log" 2>&1 \
              || { echo "racews: build failed"; tail -20 "$OUT/racews_build.log"; exit 1; }
            SAN_TOOLS=racecheck SAN_T_racecheck=${T_RACEWS:-240} OUT=$OUT/racews bash scripts/gpu/sanitize.sh > "$OUT/racews.log" 2>&1
            echo "racews rc $?"; tail -8 "$OUT/racews.log"
            SUITE_BUILD_ONLY=1 bash benchmarks/gpu_suite.sh > "$OUT/racews_build.log" 2>&1 \
              || { echo "racews: default rebuild failed"; tail -20 "$OUT/racews_build.log"; exit 1; } ;;
    stress) # hang / determinism stress of tree_attention (STRESS_ARGS, e.g. "--iters 200000 --noise")
            timeout ${T_STRESS:-300} python3 scripts/gpu/stress_tree_attention.py ${STRESS_ARGS:-} > "$OUT/stress.log" 2>&1; echo "stress rc $?"; tail -20 "$OUT/stress.log" ;;
    sk) timeout ${T_SK:-90} python3 benchmarks/bench_skinny_linear.py > "$OUT/sk.log" 2>&1; echo "sk rc $?"; tail -20 "$OUT/sk.log" ;;
    ncuta) OUT=$OUT/ncuta timeout ${T_NCU:-150} bash benchmarks/ncu_tree_attention.sh ${NCU_P:-1024} ${NCU_N:-128} > "$OUT/ncuta.log" 2>&1; echo "ncuta rc $?"; tail -60 "$OUT/ncuta.log" ;;
    ncu) OUT=$OUT/ncu timeout ${T_NCU:-120} bash benchmarks/ncu_build_tree.sh ${NCU_B:-8} accum > "$OUT/ncu.log" 2>&1; echo "ncu rc $?"; tail -45 "$OUT/ncu.log" ;;
    *) echo "unknown step $s" ;;
  esac
  echo "step $s done $(el)"
done
# More than 8 files under $OUT: one archive (the device returns 8). PACK_OUT=0: not (a caller
# such as ab_tree_attention.sh that writes more logs after this call and packs at its end).
if [ "${PACK_OUT:-1}" = 1 ]; then bash scripts/gpu/pack_out.sh; fi
