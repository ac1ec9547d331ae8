#!/bin/sh
# Run every benchmark and print one line per result, then the issue's targets.
#
#   sh bench/run.sh [BUILD_DIR]     (default build-bench; `make bench` builds it
#                                    in Release and calls this)
#
# Environment: THREADS (pool size, default 2), ROUNDS (5), JOBS (roundtrip
# jobs per round, 1000000), PP_JOBS (pingpong jobs per round, 50000), PP_SPIN_US
# (evexec's opts.spin_us for the second pingpong run, 50; 0 skips it), SKIP_HTTP=1,
# SKIP_TASKS=1 (bench/tasks.sh: ext/tasks vs Celery and RQ),
# and bench/http.sh's variables (DURATION, CONNS, LONGPOLL_CONNS, ...),
# FIGURES (where the gnuplot PNGs go, default BUILD_DIR/figures: the pingpong
# latency histograms and the HTTP throughput bars, see bench/plot.sh).
# Exit status: 0 when every benchmark ran (targets missed are reported, not
# failures), 1 when one could not run.
set -eu

BUILD=${1:-build-bench}
HERE=$(cd "$(dirname "$0")" && pwd)
BENCH=$BUILD/bench/evx-bench
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-5}
JOBS=${JOBS:-1000000}
PP_JOBS=${PP_JOBS:-50000}
PP_SPIN_US=${PP_SPIN_US:-50}
FIGURES=${FIGURES:-$BUILD/figures}
mkdir -p "$FIGURES"

if [ ! -x "$BENCH" ]; then
  echo "run.sh: $BENCH not built (configure with -DEVX_BUILD_BENCH=ON and libuv1-dev installed)" >&2
  exit 1
fi

OUT=$(mktemp "${TMPDIR:-/tmp}/evx-bench.XXXXXX")
trap 'rm -f "$OUT" "$OUT.1"' EXIT
status=0

# run CMD...: print its output (stdout and stderr, in order) once it is done,
# and keep a copy for the summary.
run() {
  echo "# $*"
  if ! "$@" >"$OUT.1" 2>&1; then
    echo "run.sh: failed: $*" >&2
    status=1
  fi
  cat "$OUT.1"
  cat "$OUT.1" >>"$OUT"
}

model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1 | tr ' ' '_')
echo "machine cpus=$(nproc) model=${model:-unknown} kernel=$(uname -r)" \
  "libuv=$(pkg-config --modversion libuv 2>/dev/null || echo '?')" \
  "libevent=$(pkg-config --modversion libevent 2>/dev/null || echo '?')" \
  "load=$(cut -d ' ' -f 1 /proc/loadavg)"

run "$BENCH" roundtrip --jobs "$JOBS" --window 1024 --threads "$THREADS" --rounds "$ROUNDS"
run "$BENCH" pingpong --jobs "$PP_JOBS" --threads "$THREADS" --rounds "$ROUNDS" \
  --hist "$FIGURES/pingpong-hist.dat"
if [ "$PP_SPIN_US" -gt 0 ]; then
  run "$BENCH" pingpong --jobs "$PP_JOBS" --threads "$THREADS" --rounds "$ROUNDS" --spin-us "$PP_SPIN_US"
fi
run "$BENCH" callbacks --producers 2 --per 200000 --rounds "$ROUNDS"
run "$BENCH" memory --jobs 100000 --threads "$THREADS"
OVERLOAD=$BUILD/bench/evx-overload
if [ -x "$OVERLOAD" ]; then
  run "$OVERLOAD" --threads 2 --job-ms 50 --target-ms 100 --x 10 --seconds 2
fi
CORO_BENCH=$BUILD/bench/evx-coro-bench
if [ -x "$CORO_BENCH" ]; then
  run "$CORO_BENCH" handoff --items 200000 --rounds "$ROUNDS"
  run "$CORO_BENCH" held --coros 10000
fi
if [ "${SKIP_HTTP:-0}" != 1 ]; then
  run env THREADS="$THREADS" sh "$HERE/http.sh" "$BUILD"
fi
if [ "${SKIP_TASKS:-0}" != 1 ]; then
  run env WORKERS="$THREADS" sh "$HERE/tasks.sh" "$BUILD"
fi

# target NAME OP WANT GOT: one line per target of issue 5.
target() {
  awk -v n="$1" -v op="$2" -v w="$3" -v g="$4" 'BEGIN {
    if (g == "") { printf "target %s want%s%s got=none met=unmeasured\n", n, op, w; exit }
    met = (op == ">=") ? (g + 0 >= w + 0) : (g + 0 <= w + 0)
    printf "target %s want%s%s got=%s met=%s\n", n, op, w, g, met ? "yes" : "no" }'
}
# field LINE-PATTERN KEY: the value of KEY= on the first output line matching the pattern.
field() {
  grep -E "$1" "$OUT" | head -n 1 | tr ' ' '\n' | sed -n "s/^$2=//p"
}
echo "# targets (ratios measured in this run)"
target roundtrip_ops_evexec_vs_libuv ">=" 2 "$(field '^ratio roundtrip ' ops_per_s)"
target pingpong_p50_evexec_vs_libuv "<=" 0.7 "$(field '^ratio pingpong evexec_vs_libuv ops' p50_us)"
if [ "$PP_SPIN_US" -gt 0 ]; then
  target "pingpong_p50_evexec_spin${PP_SPIN_US}_vs_libuv" "<=" 0.7 \
    "$(field "^ratio pingpong evexec_vs_libuv spin_us=$PP_SPIN_US " p50_us)"
fi
# issue 11: 10x overload with a 100 ms target wait
target overload_ok_p99_over_target "<=" 2 "$(field '^ratio overload ' p99_over_target)"
target overload_busy_p99_ms "<=" 10 "$(field '^ratio overload ' busy_p99_ms)"
target overload_504 "<=" 0 "$(field '^overload impl=evexec .*target_ms=100 ' t504)"
target overload_late "<=" 0 "$(field '^overload impl=evexec .*target_ms=100 ' late)"
target http_work0_vs_hello ">=" 0.8 "$(field '^ratio http work0_vs_hello impl=evexec' rps)"
target http_work0_evexec_vs_tornado ">=" 8 "$(field '^ratio http evexec_vs_tornado route=/work\?ms=0 ' rps)"
target coro_handoff_vs_swapcontext "<=" 0.25 "$(field '^ratio coro_handoff evexec_vs_swapcontext' ns)"
target http_work0_coro_vs_callback ">=" 0.95 "$(field '^ratio http coro_vs_callback ' rps)"
target longpoll_coro_bytes_per_conn "<=" 16384 "$(field '^longpoll impl=evexec-coro ' bytes_per_conn)"
target http_work10_vs_ceiling ">=" 0.95 "$(field '^ratio http work10_vs_ceiling impl=evexec' rps)"
target tasks_sqlite_full_vs_celery ">=" 10 "$(field '^ratio tasks evexec_full_vs_celery ' tasks_per_s)"

echo "# figures (gnuplot)"
if ! sh "$HERE/plot.sh" "$FIGURES" "$OUT"; then
  echo "run.sh: no figures drawn" >&2
  status=1
fi
exit $status
