#!/bin/sh
# Run every libFuzzer target built in BUILD/fuzz for a bounded time, starting
# from its committed corpus fuzz/corpus/<name> (read only: new inputs go to
# BUILD/fuzz-work/<name>). A crash, leak, sanitizer report or timeout fails
# the run and leaves the input in BUILD/fuzz-artifacts/.
#
# Usage: fuzz/run.sh BUILD [TOTAL_SECONDS]   (default 60, split over the targets)
# Longer runs: see docs/RELIABILITY.md ("Fuzzing").
set -eu
build=${1:?usage: fuzz/run.sh BUILD [TOTAL_SECONDS]}
total=${2:-60}
src=$(cd "$(dirname "$0")" && pwd)

targets=""
for t in "$build"/fuzz/fuzz_*; do
  case "$t" in *_replay | *.*) continue ;; esac
  [ -x "$t" ] && [ -f "$t" ] && targets="$targets $t"
done
n=$(echo $targets | wc -w)
if [ "$n" -eq 0 ]; then
  echo "fuzz: no targets in $build/fuzz (configure with -DEVX_BUILD_FUZZ=ON)" >&2
  exit 1
fi
per=$((total / n))
[ "$per" -lt 5 ] && per=5

mkdir -p "$build/fuzz-artifacts"
passed=0
failed=0
for t in $targets; do
  name=$(basename "$t")
  short=${name#fuzz_}
  work="$build/fuzz-work/$short"
  log="$build/fuzz-work/$short.log"
  rm -rf "$work"
  mkdir -p "$work"
  dict=""
  [ -f "$src/$short.dict" ] && dict="-dict=$src/$short.dict"
  # -timeout: one input taking 10 s is a hang. -rss_limit_mb: bounded memory.
  # shellcheck disable=SC2086
  if "$t" -max_total_time="$per" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -close_fd_mask=1 -artifact_prefix="$build/fuzz-artifacts/$short-" $dict \
      "$work" "$src/corpus/$short" >"$log" 2>&1; then
    passed=$((passed + 1))
    status=ok
  else
    failed=$((failed + 1))
    status=FAILED
    tail -n 80 "$log"
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  newu=$(sed -n 's/^stat::new_units_added: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
  corpus=$(ls "$src/corpus/$short" | wc -l)
  echo "fuzz target=$short status=$status seconds=$per execs=${execs:-0} execs_per_sec=${rate:-0} cov=${cov:-0} new_units=${newu:-0} corpus=$corpus"
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
