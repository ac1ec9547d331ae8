#!/bin/sh
# Offload overhead of the HTTP layer: /work?ms=0 (a job on the pool, answered
# from its done callback) against /hello (answered on the loop), alternating
# on ONE server process, ROUNDS times. Prints one line per round and the
# ratio work/hello. Needs wrk and a Release build:
#   cmake -S . -B build-rel -DCMAKE_BUILD_TYPE=Release && cmake --build build-rel -j2
#   sh examples/hello/bench.sh build-rel/examples/hello/evx_hello [threads] [rounds] [duration]
# SPIN_US=N passes --spin-us N to the server.
set -e
BIN=${1:-build-rel/examples/hello/evx_hello}
THREADS=${2:-4}
ROUNDS=${3:-5}
DUR=${4:-5s}
LOG=$(mktemp)
"$BIN" --port 0 --quiet --threads "$THREADS" --spin-us "${SPIN_US:-0}" 2>"$LOG" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; rm -f "$LOG"' EXIT
for i in 1 2 3 4 5 6 7 8 9 10; do
  PORT=$(sed -n 's|.*http://[^:]*:\([0-9]*\)/.*|\1|p' "$LOG")
  [ -n "$PORT" ] && break
  sleep 0.1
done
[ -n "$PORT" ] || { echo "evx_hello did not start" >&2; exit 1; }
rps() { wrk -t2 -c64 -d"$DUR" "$1" | awk '/Requests\/sec/{print $2}'; }
i=1
while [ "$i" -le "$ROUNDS" ]; do
  h=$(rps "http://127.0.0.1:$PORT/hello")
  w=$(rps "http://127.0.0.1:$PORT/work?ms=0")
  echo "hello_work impl=evexec threads=$THREADS spin_us=${SPIN_US:-0} hello_rps=$h work_rps=$w ratio=$(awk "BEGIN{printf \"%.2f\", $w/$h}")"
  i=$((i + 1))
done
