#!/usr/bin/env bash
# Several demo head pairs (causal + bidirectional, trained at the same time by
# scripts/demo/make_demo_head.sh) on ONE regenerated cache, one pair after the other, fresh heads
# each time: a controlled comparison of training recipes (same data, seed, step budget and
# evaluation; only the `jetspec train` arguments of each pair differ). No regeneration: the cache
# is an earlier run's export (make_demo_head.sh writes $OUT/regen.jsonl.gz; DEMO_RETURN_REGEN=1
# with call.sh's demo step brings it back), or DEMO_CACHE=regenerate: first a regeneration alone
# (`make_demo_head.sh --regen-only`, REGEN_SECONDS of generation, default 110: ~150 s on the H200
# in all, about the 15 MB export's 62,762 answers), its export copied to $OUT/regen.jsonl.gz so
# that later calls can carry it (carried files do not outlive a session).
# The export is capped at 15 MB (a uniform prefix of the answers); the whole cache is BUILD/regen.jsonl
# of `make_demo_head.sh --regen-only --build BUILD` (142,007 answers, 156 MB, in ~200 s on the H200):
# too large to carry, but a later call on the same warm machine can pass it as DEMO_CACHE.
#
#   DEMO_CACHE=.carry/regen/regen.jsonl.gz PAIRS="p0: p50:--block-noise=0.5" \
#     PAIRS_ARGS="--total-minutes 4.5 --steps 2000 --eval-seconds 70" bash scripts/gpu/demo_pairs.sh
#
# PAIRS: space-separated NAME:ARGS items, ARGS = jetspec-train arguments joined by ',' (empty:
# the default recipe). PAIRS_ARGS: make_demo_head.sh arguments for every pair (give --steps so
# that every pair trains the same steps, with --total-minutes large enough that no pair stops at
# its time cap: the table shows the steps). PAIRS_DEVICE (default cuda; cpu with --tiny for a
# smoke test). PAIRS_PARALLEL=N runs N pairs at a time (default 1): on the H200 two pairs (four
# training processes) share the GPU well, but their speedups are then not wall-clock figures
# (the table says so); give a larger --total-minutes and --eval-seconds, as each runs slower.
# Writes $OUT/demo_pairs.tgz (each pair's results, logs; no heads) and $OUT/demo_pairs.md (the table printed last). The heads of the pair named in PAIRS_KEEP come back
# as $OUT/NAME_demo_head.tar.gz and $OUT/NAME_demo_head_bidir.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
: "${DEMO_CACHE:?DEMO_CACHE=path of a regeneration cache (.jsonl or .jsonl.gz), or regenerate}"
REGEN_SECONDS="${REGEN_SECONDS:-110}"
if [[ "$DEMO_CACHE" == regenerate ]]; then
  [[ "$REGEN_SECONDS" =~ ^[1-9][0-9]*$ ]] || { echo "REGEN_SECONDS must be a positive integer, got '$REGEN_SECONDS'"; exit 2; }
elif [[ ! -f "$DEMO_CACHE" ]]; then
  echo "DEMO_CACHE '$DEMO_CACHE': no such file (give a cache, or DEMO_CACHE=regenerate)"; exit 2
fi
: "${PAIRS:?PAIRS=\"NAME:ARGS ...\" (ARGS joined by commas)}"
PARALLEL="${PAIRS_PARALLEL:-1}"
[[ "$PARALLEL" =~ ^[1-9][0-9]*$ ]] || { echo "PAIRS_PARALLEL must be a positive integer, got '$PARALLEL'"; exit 2; }
names=()
for item in $PAIRS; do  # every item checked before any pair starts
  name="${item%%:*}"
  [[ "$item" == *:* && -n "$name" && "$name" =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "bad PAIRS item '$item' (NAME:ARGS)"; exit 2; }
  [[ " ${names[*]} " == *" $name "* ]] && { echo "PAIRS names pair '$name' twice"; exit 2; }
  names+=("$name")
done
(( PARALLEL > ${#names[@]} )) && PARALLEL=${#names[@]}
WORK="${PAIRS_WORK:-/tmp/demo_pairs}"
export JETSPEC_DATA="${JETSPEC_DATA:-$PWD/.carry/data}"  # mbpp_test.jsonl (the eval prompts)
rm -rf "$WORK"; mkdir -p "$WORK"
if [[ "$DEMO_CACHE" == regenerate ]]; then
  # PAIRS_REGEN_ARGS: more make_demo_head.sh arguments for the regeneration (e.g. --tiny on the CPU)
  t0=$(date +%s)
  bash scripts/demo/make_demo_head.sh --regen-only --device "${PAIRS_DEVICE:-cuda}" --out "$WORK/regen_out" \
    --build "$WORK/build_regen" --gen-seconds "$REGEN_SECONDS" \
    --total-minutes "$(python3 -c "print(($REGEN_SECONDS + 120) / 60)")" ${PAIRS_REGEN_ARGS:-} > "$WORK/regen.log" 2>&1
  rc=$?
  grep -h "export_regen\]\|regen-only\|done:" "$WORK/regen.log" | tail -3
  [[ $rc == 0 && -f "$WORK/regen_out/regen.jsonl.gz" ]] || { echo "regeneration failed (exit $rc):"; tail -20 "$WORK/regen.log"; exit 1; }
  cp "$WORK/regen_out/regen.jsonl.gz" "$OUT/regen.jsonl.gz"
  echo "regenerated in $(( $(date +%s) - t0 )) s; the cache is also at \$OUT/regen.jsonl.gz"
  DEMO_CACHE="$WORK/regen_out/regen.jsonl.gz"
fi
case "$DEMO_CACHE" in
  *.gz) gunzip -c "$DEMO_CACHE" > "$WORK/regen.jsonl" || exit 1 ;;
  *) cp "$DEMO_CACHE" "$WORK/regen.jsonl" || exit 1 ;;
esac
echo "cache: $(wc -l < "$WORK/regen.jsonl") records from $DEMO_CACHE"
run_pair() {  # name args...: one pair, fresh heads, its own copy of the cache; its summary lines
  #             go to $WORK/NAME.summary (printed in PAIRS order once every pair is done)
  local name="$1"; shift
  mkdir -p "$WORK/build_$name"
  cp "$WORK/regen.jsonl" "$WORK/build_$name/regen.jsonl"  # a copy each: no pair sees another's writes
  local t0; t0=$(date +%s)
  bash scripts/demo/make_demo_head.sh --device "${PAIRS_DEVICE:-cuda}" --out "$WORK/$name" --build "$WORK/build_$name" \
    --gen-seconds 0 ${PAIRS_ARGS:-} -- "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  { echo "pair $name (${*:-default recipe}): exit $rc in $(( $(date +%s) - t0 )) s"
    grep -h "steps (stopped\|: [0-9]* steps" "$WORK/$name.log" | tail -2; } > "$WORK/$name.summary"
  if [[ "${PAIRS_KEEP:-}" == "$name" ]]; then
    for f in demo_head.tar.gz demo_head_bidir.tar.gz; do
      [[ -f "$WORK/$name/$f" ]] && cp "$WORK/$name/$f" "$OUT/${name}_$f"
    done
  fi
}
summary=(); running=0
for item in $PAIRS; do
  name="${item%%:*}"; args="${item#*:}"
  extra=(); [[ -n "$args" ]] && IFS=',' read -r -a extra <<< "$args"
  run_pair "$name" ${extra[@]+"${extra[@]}"} &
  summary+=("$name=$WORK/$name/demo_head_results.json")
  running=$((running + 1))
  if (( running >= PARALLEL )); then wait -n; running=$((running - 1)); fi
done
wait
for name in "${names[@]}"; do cat "$WORK/$name.summary" 2>/dev/null || echo "pair $name: no summary"; done
tar -C "$WORK" --exclude='*.tar.gz' --exclude='regen.jsonl*' -czf "$OUT/demo_pairs.tgz" \
  $(cd "$WORK" && [[ -d regen_out ]] && echo "regen_out regen.log"  # a regeneration's stats and log (not its cache)
    for item in $PAIRS; do n="${item%%:*}"; [[ -d "$n" ]] && echo "$n"; echo "$n.log"; done)
{ python3 scripts/demo/summarize_pairs.py "${summary[@]}"
  if (( PARALLEL > 1 )); then
    echo
    echo "Pairs ran $PARALLEL at a time on one device: tau is unaffected, but tokens/s and speedups were"
    echo "measured beside other pairs' training or evaluation and are not wall-clock figures."
  fi; } | tee "$OUT/demo_pairs.md"
