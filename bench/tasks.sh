#!/bin/sh
# Durable tasks: evexec's ext/tasks (SQLite, synchronous=FULL and NORMAL)
# against Celery 5.2 and RQ 1.13 (Debian, /usr/bin/python3) on a
# redis-server started here, in one run. One line per result, then ratios.
#
#   sh bench/tasks.sh [BUILD_DIR]
#
# Environment: TASKS (evexec tasks per run, 20000), CELERY_TASKS (2000),
# RQ_TASKS (300; RQ forks a process per job), WORKERS (handler threads /
# worker processes, 2), WINDOW (evexec enqueues in flight, 256).
set -eu

BUILD=${1:-build-bench}
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=$BUILD/bench/evx-tasks-bench
TASKS=${TASKS:-20000}
CELERY_TASKS=${CELERY_TASKS:-2000}
RQ_TASKS=${RQ_TASKS:-300}
WORKERS=${WORKERS:-2}
WINDOW=${WINDOW:-256}
PY=/usr/bin/python3

[ -x "$BIN" ] || { echo "tasks.sh: $BIN not built" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "tasks.sh: redis-server not installed" >&2; exit 1; }

DIR=$(mktemp -d "${TMPDIR:-/tmp}/evx-tasks-bench.XXXXXX")
OUT=$DIR/out
RPID=
cleanup() {
  [ -n "$RPID" ] && kill "$RPID" 2>/dev/null && wait "$RPID" 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT

PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# The peers' broker as Debian ships it: in memory, no fsync (Redis' default
# appendonly=no) - weaker durability than evexec's synchronous=FULL.
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$DIR" \
  >"$DIR/redis.log" 2>&1 &
RPID=$!
i=0
until redis-cli -p "$PORT" ping >/dev/null 2>&1; do
  i=$((i + 1)); [ $i -lt 200 ] || { echo "tasks.sh: redis-server did not start" >&2; exit 1; }
  sleep 0.05
done

"$BIN" --tasks "$TASKS" --window "$WINDOW" --workers "$WORKERS" --sync full --dir "$DIR" | tee -a "$OUT"
"$BIN" --tasks "$TASKS" --window "$WINDOW" --workers "$WORKERS" --sync normal --dir "$DIR" | tee -a "$OUT"
$PY "$HERE/tasks_peers.py" celery --redis-port "$PORT" --tasks "$CELERY_TASKS" --workers "$WORKERS" | tee -a "$OUT"
$PY "$HERE/tasks_peers.py" rq --redis-port "$PORT" --tasks "$RQ_TASKS" --workers "$WORKERS" | tee -a "$OUT"

get() { grep -E "$1" "$OUT" | head -n 1 | tr ' ' '\n' | sed -n "s/^$2=//p"; }
full=$(get '^tasks impl=evexec .*sync=full' tasks_per_s)
normal=$(get '^tasks impl=evexec .*sync=normal' tasks_per_s)
celery=$(get '^tasks impl=celery' tasks_per_s)
rq=$(get '^tasks impl=rq' tasks_per_s)
awk -v f="$full" -v n="$normal" -v c="$celery" -v r="$rq" 'BEGIN {
  printf "ratio tasks evexec_full_vs_celery tasks_per_s=%.1f\n", f / c
  printf "ratio tasks evexec_normal_vs_celery tasks_per_s=%.1f\n", n / c
  printf "ratio tasks evexec_full_vs_rq tasks_per_s=%.1f\n", f / r
  printf "ratio tasks evexec_normal_vs_rq tasks_per_s=%.1f\n", n / r }'
