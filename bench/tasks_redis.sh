#!/bin/sh
# Deferred tasks through Redis: evexec (ext/tasks' Redis Streams backend)
# against Celery 5.2 and RQ 1.13 (Debian python3-celery, python3-rq) on the
# same redis-server in the same run. One producer, two worker processes
# (evexec: 2 x 1 handler thread; Celery: --concurrency 2 prefork; RQ: two
# `rq worker`), every task one RPUSH of its start latency. Prints one line
# per implementation and run - as fast as the producer can (rate=max:
# throughput; the start latency is then mostly queueing), and at a modest
# fixed rate (the latency of the path itself) - then the ratios:
#   tasks_redis impl=evexec tasks=N rate=max producers=1 workers=2 tasks_per_s=.. p50_start_ms=.. p99_start_ms=..
#   tasks_redis_ratio evexec_vs_celery=..x evexec_vs_rq=..x target_celery=10x met=yes|no
#
#   sh bench/tasks_redis.sh [BUILD_DIR]   (default build-bench)
#
# Environment: N (evexec tasks, 20000), CELERY_N (2000), RQ_N (300), LAT_N (400)
# and RATE (200/s) for the latency runs (RQ: RQ_LAT_N 60 at RQ_RATE 20/s),
# PYTHON (/usr/bin/python3). redis-server runs on a free port in a temporary
# directory (appendonly yes, the Debian default fsync everysec) and is
# stopped at the end, with every worker.
set -eu

BUILD=${1:-build-bench}
N=${N:-20000}
CELERY_N=${CELERY_N:-2000}
RQ_N=${RQ_N:-300}
LAT_N=${LAT_N:-400}   # tasks of the latency runs, at RATE/s
RATE=${RATE:-200}
RQ_LAT_N=${RQ_LAT_N:-60}  # RQ forks per job: it cannot keep up with RATE
RQ_RATE=${RQ_RATE:-20}
PYTHON=${PYTHON:-/usr/bin/python3}
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=$BUILD/bench/evx-bench-tasks
[ -x "$BIN" ] || { echo "tasks_redis.sh: $BIN not built (needs hiredis)" >&2; exit 1; }

DIR=$(mktemp -d "${TMPDIR:-/tmp}/evx-bench-redis.XXXXXX")
PORT=$($PYTHON -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL=redis://127.0.0.1:$PORT/0
PIDS=""
cleanup() {
  for p in $PIDS; do kill "$p" 2>/dev/null || true; done
  for p in $PIDS; do wait "$p" 2>/dev/null || true; done
  [ -n "${RPID:-}" ] && kill "$RPID" 2>/dev/null && wait "$RPID" 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

redis-server --port "$PORT" --bind 127.0.0.1 --dir "$DIR" --appendonly yes --save '' \
  --daemonize no --logfile "$DIR/redis.log" &
RPID=$!
for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done

stop_workers() {
  for p in $PIDS; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $PIDS; do wait "$p" 2>/dev/null || true; done
  PIDS=""
  redis-cli -p "$PORT" flushall >/dev/null
}

# evexec
for i in 1 2; do "$BIN" worker "$URL" 1 2>>"$DIR/evexec.log" & PIDS="$PIDS $!"; done
EVX=$("$BIN" produce "$URL" "$N")
echo "$EVX"
"$BIN" produce "$URL" "$LAT_N" "$RATE"
stop_workers

# Celery
export BENCH_REDIS_PORT=$PORT
(cd "$HERE" && exec $PYTHON -m celery -A tasks_celery worker --concurrency 2 --pool prefork \
  --without-gossip --without-mingle --without-heartbeat --loglevel WARNING) \
  >>"$DIR/celery.log" 2>&1 & PIDS="$PIDS $!"
CEL=$(cd "$HERE" && $PYTHON tasks_celery.py "$CELERY_N")
echo "$CEL"
(cd "$HERE" && $PYTHON tasks_celery.py "$LAT_N" "$RATE")
stop_workers

# RQ
for i in 1 2; do
  (cd "$HERE" && PYTHONPATH=$HERE exec $PYTHON -m rq.cli worker -u "$URL" -q bench) \
    >>"$DIR/rq.log" 2>&1 & PIDS="$PIDS $!"
done
RQ=$(cd "$HERE" && PYTHONPATH=$HERE $PYTHON tasks_rq.py "$RQ_N")
echo "$RQ"
(cd "$HERE" && PYTHONPATH=$HERE $PYTHON tasks_rq.py "$RQ_LAT_N" "$RQ_RATE")
stop_workers

rate() { echo "$1" | sed -n 's/.*tasks_per_s=\([0-9.]*\).*/\1/p'; }
awk -v e="$(rate "$EVX")" -v c="$(rate "$CEL")" -v r="$(rate "$RQ")" 'BEGIN {
  rc = e / c; rr = e / r;
  printf "tasks_redis_ratio evexec_vs_celery=%.1fx evexec_vs_rq=%.1fx target_celery=10x met=%s\n",
         rc, rr, (rc >= 10 ? "yes" : "no") }'
