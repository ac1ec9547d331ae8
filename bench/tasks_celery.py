"""Celery twin of bench/tasks_redis.c (Debian python3-celery, redis broker).

    celery:   /usr/bin/python3 -m celery -A tasks_celery worker --concurrency 2 --pool prefork
    producer: /usr/bin/python3 tasks_celery.py N [RATE]

BENCH_REDIS_PORT names the redis-server for both. The task pushes
"start - enqueue" in us onto bench:lat, as the evexec and RQ versions do.
"""
import os
import sys
import time

import redis
from celery import Celery

PORT = int(os.environ.get("BENCH_REDIS_PORT", "6379"))
app = Celery("tasks_celery", broker="redis://127.0.0.1:%d/0" % PORT)
app.conf.task_ignore_result = True
app.conf.worker_hijack_root_logger = False
app.conf.broker_connection_retry_on_startup = True

_r = None


@app.task(name="bench", ignore_result=True)
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
    r.delete("bench:lat")
    bench.delay(int(time.time() * 1e6))  # warm-up: the workers are up
    wait_llen(r, 1)
    r.delete("bench:lat")
    t0 = time.time()
    for i in range(n):
        if rate:  # on schedule: task i at t0 + i / rate
            d = t0 + i / rate - time.time()
            if d > 0:
                time.sleep(d)
        bench.delay(int(time.time() * 1e6))
    wait_llen(r, n)
    t1 = time.time()
    lat = sorted(int(x) for x in r.lrange("bench:lat", 0, -1))
    print("tasks_redis impl=celery-%s tasks=%d rate=%s producers=1 workers=2 tasks_per_s=%.0f "
          "p50_start_ms=%.2f p99_start_ms=%.2f" % (
              __import__("celery").__version__, n, rate or "max", n / (t1 - t0),
              lat[len(lat) // 2] / 1000.0, lat[len(lat) * 99 // 100] / 1000.0))


if __name__ == "__main__":
    main()
