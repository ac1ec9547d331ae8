#!/bin/sh
# HTTP benchmark: examples/hello (evexec), a plain evhttp server answering
# /hello with no evexec (bench/evhttp_plain.c, the reference), and, when Debian's
# python3-tornado is installed, hello's Tornado twin (bench/tornado_server.py),
# all under the same wrk load.
#
#   sh bench/http.sh [BUILD_DIR]          (default build-bench)
#
# For each route (/hello, /work?ms=0, /work?ms=10) and each server, one wrk
# warm-up second, then one measured run; prints
#   http impl=evexec route=/hello threads=T conns=C requests=.. rps=.. p50_ms=.. p99_ms=.. errors=..
# then the ratios, then the memory of 10k held long-poll requests (/wait) on a
# fresh server of each kind (bench/longpoll.py):
#   longpoll impl=evexec conns=10000 held=.. answered=.. rss_base_kb=.. rss_held_kb=.. bytes_per_conn=..
# and the same for hello's coroutine handlers (impl=evexec-coro, /co/wait, when
# hello has --coro).
#
# Coroutine vs callback handler (/co/work?ms=0 vs /work?ms=0, hello --coro):
# both routes run on the SAME server process (same workers, same job, both
# real handlers as a user writes them), in CORO_ROUNDS rounds. A round is four
# CORO_RUN-second wrk runs in the order callback, coroutine, coroutine,
# callback (ABBA: a load that rises or falls steadily during a round hits
# both routes alike). The result is the median rps of the coroutine runs over
# the median rps of the callback runs: as many runs of each, interleaved, so
# both see the same machine, and a run spoiled by a burst of other work (on
# this shared 2-vCPU VM a run can lose half its rps) moves a median little.
# Also printed: paired, the median of the rounds' own ratios (coroutine runs'
# mean over callback runs' mean; one spoiled run spoils its round), best, the
# best coroutine run over the best callback run, and the 1-minute load average
# before and after (above ~2, wrk, the loop and the two workers share the 2
# vCPUs with others and no figure is worth much):
#   coro_round i=1 cb_rps=A,D co_rps=B,C ratio=..
#   http impl=evexec route=/co/work?ms=0 ... rps=..   (the median of the coroutine runs)
#   ratio http coro_vs_callback route=/work?ms=0 impl=evexec rps=<co_rps/cb_rps> paired=..
#     best=.. rounds=.. run_s=.. cb_rps=<median> co_rps=<median> load1=<before>-<after>
# One long run per route (the old method) swung 0.60-1.02x on this 2-vCPU VM
# while other jobs ran: a load change during one of the two runs moved the
# ratio by as much as the change itself.
#
# Environment: THREADS (workers, default 2), SPIN_US (evx_hello --spin-us:
# an idle worker polls this long before it sleeps; default 0), DURATION (seconds per run, 5),
# CONNS (wrk connections, 64), CONNS_WORK10 (wrk connections for /work?ms=10,
# default 4 x THREADS: enough to keep every worker busy, few enough that the
# warm-up's queue drains in 40 ms instead of eating into the measured run),
# WRK_THREADS (1), CORO_ROUNDS (9), CORO_RUN (seconds per run, 1), CORO_ONLY (1: only the
# coroutine vs callback rounds, about 40 s; no other server, route or long poll), PORT (18080), TORNADO_PORT
# (18081), LONGPOLL_CONNS (10000; 0 skips), PYTHON (/usr/bin/python3: Debian's
# Tornado is installed for it). Servers log to $TMPDIR; only 127.0.0.1 is used.
set -euf  # -f: routes like /work?ms=0 must never glob

BUILD=${1:-build-bench}
THREADS=${THREADS:-2}
SPIN_US=${SPIN_US:-0}
DURATION=${DURATION:-5}
CONNS=${CONNS:-64}
CONNS_WORK10=${CONNS_WORK10:-$((THREADS * 4))}
WRK_THREADS=${WRK_THREADS:-1}
CORO_ROUNDS=${CORO_ROUNDS:-9}
CORO_RUN=${CORO_RUN:-1}
CORO_ONLY=${CORO_ONLY:-0}
PORT=${PORT:-18080}
TORNADO_PORT=${TORNADO_PORT:-18081}
PLAIN_PORT=${PLAIN_PORT:-18082}
LONGPOLL_CONNS=${LONGPOLL_CONNS:-10000}
PYTHON=${PYTHON:-/usr/bin/python3}
HERE=$(cd "$(dirname "$0")" && pwd)
HOST=127.0.0.1

# examples/hello builds as evx_hello; no access log while measuring (Tornado
# logs nothing either).
HELLO=""
for h in "$BUILD/examples/hello/evx_hello" "$BUILD/examples/hello/hello" "$BUILD/examples/hello"; do
  if [ -f "$h" ] && [ -x "$h" ]; then HELLO=$h && break; fi
done
if [ -z "$HELLO" ]; then
  echo "http skipped reason=no-examples/hello-in-$BUILD"
  exit 0
fi
QUIET=""
if "$HELLO" --help 2>&1 | grep -q -- --quiet; then QUIET=--quiet; fi
# --coro: hello also serves /co/work and /co/wait as coroutine handlers,
# measured against the callback handlers on the same server.
CORO=""
if "$HELLO" --help 2>&1 | grep -q -- --coro; then CORO=--coro; fi
SPIN=""
if [ "$SPIN_US" != 0 ]; then SPIN="--spin-us $SPIN_US"; fi
if ! command -v wrk >/dev/null 2>&1; then
  echo "http skipped reason=no-wrk (apt-get install wrk)"
  exit 0
fi
PLAIN=""
if [ -x "$BUILD/bench/evhttp-plain" ]; then PLAIN=$BUILD/bench/evhttp-plain; fi
HAVE_TORNADO=0
if "$PYTHON" -c 'import tornado' >/dev/null 2>&1; then HAVE_TORNADO=1; fi
if [ "$CORO_ONLY" = 1 ]; then
  if [ -z "$CORO" ]; then
    echo "http skipped reason=CORO_ONLY-but-$HELLO-has-no---coro"
    exit 0
  fi
  PLAIN="" HAVE_TORNADO=0 LONGPOLL_CONNS=0
fi

LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/evx-http.XXXXXX")
PIDS=""
cleanup() {
  for p in $PIDS; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $PIDS; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Servers may hold 10k connections: raise the open-files limit (inherited).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# start NAME PORT CMD...: start a server in the background, wait until it answers.
# Sets SERVER_PID.
start() {
  name=$1 port=$2
  shift 2
  "$@" >"$LOGDIR/$name.out" 2>"$LOGDIR/$name.log" &
  SERVER_PID=$!
  PIDS="$PIDS $SERVER_PID"
  i=0
  while ! curl -s -o /dev/null --max-time 1 "http://$HOST:$port/hello"; do
    i=$((i + 1))
    if [ $i -ge 100 ] || ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "http: $name did not start on port $port; its log:" >&2
      tail -n 20 "$LOGDIR/$name.log" >&2
      exit 1
    fi
    sleep 0.1
  done
}

# stop PID: SIGTERM, wait (bounded), SIGKILL if it did not exit.
stop() {
  pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  i=0
  while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do
    sleep 0.1
    i=$((i + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "http: pid $pid ignored SIGTERM for 5 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  PIDS=$(echo "$PIDS" | tr ' ' '\n' | grep -vx "$pid" | tr '\n' ' ')
}

# measure IMPL PORT ROUTE KEY CONNS: print one `http` line, remember its rps as rps_IMPL_KEY.
measure() {
  impl=$1 port=$2 route=$3 key=$4 c=$5
  url="http://$HOST:$port$route"
  wrk -t "$WRK_THREADS" -c "$c" -d 1s "$url" >/dev/null 2>&1 || true
  sleep 0.5 # let the warm-up's queued requests finish
  out=$(wrk -t "$WRK_THREADS" -c "$c" -d "${DURATION}s" -s "$HERE/wrk-report.lua" "$url" | grep '^wrk ' || true)
  if [ -z "$out" ]; then
    echo "http: wrk failed on $url" >&2
    exit 1
  fi
  echo "http impl=$impl route=$route threads=$THREADS conns=$c ${out#wrk }"
  rps=$(echo "$out" | sed -n 's/.* rps=\([0-9.]*\).*/\1/p')
  eval "rps_${impl}_${key}=$rps"
}

div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }'; }

# wrk_rps URL SECONDS: one wrk run, print its rps (exit on failure).
wrk_rps() {
  o=$(wrk -t "$WRK_THREADS" -c "$CONNS" -d "${2}s" -s "$HERE/wrk-report.lua" "$1" | grep '^wrk ' || true)
  r=$(echo "$o" | sed -n 's/.* rps=\([0-9.]*\).*/\1/p')
  if [ -z "$r" ]; then
    echo "http: wrk failed on $1" >&2
    exit 1
  fi
  echo "$r"
}

# median: the median of the numbers on stdin (the mean of the middle two for
# an even count).
median() {
  sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2];
    else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# coro_rounds PORT: the coroutine vs callback measurement described in the
# header. Sets coro_ratio, coro_paired, coro_best, coro_cb_rps, coro_co_rps, coro_load.
coro_rounds() {
  cb_url="http://$HOST:$1/work?ms=0" co_url="http://$HOST:$1/co/work?ms=0"
  wrk -t "$WRK_THREADS" -c "$CONNS" -d 1s "$cb_url" >/dev/null 2>&1 || true # warm both paths
  wrk -t "$WRK_THREADS" -c "$CONNS" -d 1s "$co_url" >/dev/null 2>&1 || true
  sleep 0.5
  ratios="" cbs="" cos=""
  load0=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo '?')
  i=1
  while [ "$i" -le "$CORO_ROUNDS" ]; do
    cb1=$(wrk_rps "$cb_url" "$CORO_RUN")
    co1=$(wrk_rps "$co_url" "$CORO_RUN")
    co2=$(wrk_rps "$co_url" "$CORO_RUN")
    cb2=$(wrk_rps "$cb_url" "$CORO_RUN")
    cb=$(awk -v a="$cb1" -v b="$cb2" 'BEGIN { printf "%.0f", (a + b) / 2 }')
    co=$(awk -v a="$co1" -v b="$co2" 'BEGIN { printf "%.0f", (a + b) / 2 }')
    r=$(awk -v a="$co" -v b="$cb" 'BEGIN { if (b > 0) printf "%.4f", a / b; else print "nan" }')
    echo "coro_round i=$i cb_rps=$cb1,$cb2 co_rps=$co1,$co2 ratio=$r"
    ratios="$ratios $r" cbs="$cbs $cb1 $cb2" cos="$cos $co1 $co2"
    i=$((i + 1))
  done
  coro_paired=$(echo "$ratios" | tr ' ' '\n' | grep . | median)
  coro_cb_rps=$(echo "$cbs" | tr ' ' '\n' | grep . | median | awk '{ printf "%.0f", $1 }')
  coro_co_rps=$(echo "$cos" | tr ' ' '\n' | grep . | median | awk '{ printf "%.0f", $1 }')
  coro_ratio=$(awk -v a="$coro_co_rps" -v b="$coro_cb_rps" 'BEGIN { if (b > 0) printf "%.4f", a / b; else print "nan" }')
  best_cb=$(echo "$cbs" | tr ' ' '\n' | grep . | sort -g | tail -n 1)
  best_co=$(echo "$cos" | tr ' ' '\n' | grep . | sort -g | tail -n 1)
  coro_best=$(awk -v a="$best_co" -v b="$best_cb" 'BEGIN { if (b > 0) printf "%.4f", a / b; else print "nan" }')
  coro_load="$load0-$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo '?')"
  echo "http impl=evexec route=/co/work?ms=0 threads=$THREADS conns=$CONNS rounds=$CORO_ROUNDS run_s=$CORO_RUN rps=$coro_co_rps"
}

echo "# http: $HELLO --threads $THREADS $SPIN $QUIET vs tornado_server.py --threads $THREADS; wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s"
start evexec "$PORT" "$HELLO" --port "$PORT" --host "$HOST" --threads "$THREADS" $SPIN $QUIET $CORO
EVX_PID=$SERVER_PID
if [ $HAVE_TORNADO = 1 ]; then
  start tornado "$TORNADO_PORT" "$PYTHON" "$HERE/tornado_server.py" --port "$TORNADO_PORT" \
    --host "$HOST" --threads "$THREADS"
  TOR_PID=$SERVER_PID
else
  echo "# http: python3-tornado not installed for $PYTHON; Tornado cases skipped"
fi

if [ -n "$PLAIN" ]; then
  start evhttp "$PLAIN_PORT" "$PLAIN" --port "$PLAIN_PORT" --host "$HOST"
  PLAIN_PID=$SERVER_PID
fi

# Alternate the servers route by route, so all see the same machine state.
CASES="hello:/hello work0:/work?ms=0 work10:/work?ms=10"
if [ "$CORO_ONLY" = 1 ]; then CASES=""; fi
for case in $CASES; do
  key=${case%%:*} route=${case#*:} c=$CONNS
  if [ "$key" = work10 ]; then c=$CONNS_WORK10; fi
  measure evexec "$PORT" "$route" "$key" "$c"
  if [ "$key" = hello ] && [ -n "$PLAIN" ]; then measure evhttp "$PLAIN_PORT" "$route" "$key" "$c"; fi
  if [ $HAVE_TORNADO = 1 ]; then measure tornado "$TORNADO_PORT" "$route" "$key" "$c"; fi
done
if [ -n "$CORO" ]; then coro_rounds "$PORT"; fi
stop "$EVX_PID"
if [ -n "$PLAIN" ]; then stop "$PLAIN_PID"; fi
if [ $HAVE_TORNADO = 1 ]; then stop "$TOR_PID"; fi

ceiling=$((THREADS * 100))
if [ "$CORO_ONLY" != 1 ]; then
  echo "ratio http work0_vs_hello impl=evexec rps=$(div "$rps_evexec_work0" "$rps_evexec_hello")"
  echo "ratio http work10_vs_ceiling impl=evexec rps=$(div "$rps_evexec_work10" "$ceiling") ceiling_rps=$ceiling"
fi
if [ -n "$CORO" ]; then
  echo "ratio http coro_vs_callback route=/work?ms=0 impl=evexec rps=$(div "$coro_ratio" 1)" \
    "paired=$(div "$coro_paired" 1) best=$(div "$coro_best" 1) rounds=$CORO_ROUNDS run_s=$CORO_RUN" \
    "cb_rps=$coro_cb_rps co_rps=$coro_co_rps load1=$coro_load"
fi
if [ -n "$PLAIN" ]; then
  echo "ratio http hello_vs_plain_evhttp impl=evexec rps=$(div "$rps_evexec_hello" "$rps_evhttp_hello")"
  echo "ratio http work0_vs_plain_evhttp_hello impl=evexec rps=$(div "$rps_evexec_work0" "$rps_evhttp_hello")"
fi
if [ $HAVE_TORNADO = 1 ]; then
  echo "ratio http work0_vs_hello impl=tornado rps=$(div "$rps_tornado_work0" "$rps_tornado_hello")"
  echo "ratio http work10_vs_ceiling impl=tornado rps=$(div "$rps_tornado_work10" "$ceiling") ceiling_rps=$ceiling"
  for key in hello work0 work10; do
    case $key in hello) route=/hello ;; work0) route='/work?ms=0' ;; *) route='/work?ms=10' ;; esac
    eval "e=\$rps_evexec_$key t=\$rps_tornado_$key"
    echo "ratio http evexec_vs_tornado route=$route rps=$(div "$e" "$t")"
  done
fi

if [ "$LONGPOLL_CONNS" -gt 0 ]; then
  start evexec-lp "$PORT" "$HELLO" --port "$PORT" --host "$HOST" --threads "$THREADS" $SPIN $QUIET
  "$PYTHON" "$HERE/longpoll.py" --pid "$SERVER_PID" --port "$PORT" --conns "$LONGPOLL_CONNS" \
    --impl evexec || echo "http: long-poll run on evexec incomplete (see above)" >&2
  stop "$SERVER_PID"
  if [ -n "$CORO" ]; then
    start evexec-colp "$PORT" "$HELLO" --port "$PORT" --host "$HOST" --threads "$THREADS" $SPIN $QUIET $CORO
    "$PYTHON" "$HERE/longpoll.py" --pid "$SERVER_PID" --port "$PORT" --conns "$LONGPOLL_CONNS" \
      --path "/co/wait?timeout=300000" --impl evexec-coro ||
      echo "http: coroutine long-poll run on evexec incomplete (see above)" >&2
    stop "$SERVER_PID"
  fi
  if [ $HAVE_TORNADO = 1 ]; then
    start tornado-lp "$TORNADO_PORT" "$PYTHON" "$HERE/tornado_server.py" --port "$TORNADO_PORT" \
      --host "$HOST" --threads "$THREADS"
    "$PYTHON" "$HERE/longpoll.py" --pid "$SERVER_PID" --port "$TORNADO_PORT" \
      --conns "$LONGPOLL_CONNS" --impl tornado || echo "http: long-poll run on tornado incomplete" >&2
    stop "$SERVER_PID"
  fi
fi
rm -rf "$LOGDIR"
