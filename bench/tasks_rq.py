"""RQ twin of bench/tasks_redis.c (Debian python3-rq).

    workers:  rq worker -u redis://127.0.0.1:PORT/0 bench   (two of them; PYTHONPATH=bench/)
    producer: /usr/bin/python3 tasks_rq.py N [RATE]

BENCH_REDIS_PORT names the redis-server. The job pushes "start - enqueue"
in us onto bench:lat, as the evexec and Celery versions do.
"""
import os
import sys
import time

import redis
import rq

PORT = int(os.environ.get("BENCH_REDIS_PORT", "6379"))
_r = None


def bench(t_us):
    global _r
    now = int(time.time() * 1e6)
    if _r is None:
        _r = redis.Redis(port=PORT)
    _r.rpush("bench:lat", now - t_us)


def wait_llen(r, n):
    while r.llen("bench:lat") < n:
        time.sleep(0.001)


def main():
    n = int(sys.argv[1])
    rate = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    r = redis.Redis(port=PORT)
    q = rq.Queue("bench", connection=r)
    r.delete("bench:lat")
    q.enqueue("tasks_rq.bench", int(time.time() * 1e6), result_ttl=0)  # warm-up
    wait_llen(r, 1)
    r.delete("bench:lat")
    t0 = time.time()
    for i in range(n):
        if rate:  # on schedule: task i at t0 + i / rate
            d = t0 + i / rate - time.time()
            if d > 0:
                time.sleep(d)
        q.enqueue("tasks_rq.bench", int(time.time() * 1e6), result_ttl=0)
    wait_llen(r, n)
    t1 = time.time()
    lat = sorted(int(x) for x in r.lrange("bench:lat", 0, -1))
    print("tasks_redis impl=rq-%s tasks=%d rate=%s producers=1 workers=2 tasks_per_s=%.0f "
          "p50_start_ms=%.2f p99_start_ms=%.2f" % (
              rq.__version__, n, rate or "max", n / (t1 - t0),
              lat[len(lat) // 2] / 1000.0, lat[len(lat) * 99 // 100] / 1000.0))


if __name__ == "__main__":
    main()
