#!/usr/bin/python3
"""Celery 5.2 and RQ 1.13 (Debian) on the same job as evx-tasks-bench: enqueue
N no-op tasks, each INCRs a Redis counter; tasks/s from the first enqueue to
the counter reaching N. enq_p50_us/enq_p99_us: the enqueue call (Celery's
delay(), RQ's enqueue()), which returns once Redis has the message.

  tasks_peers.py celery|rq --redis-port P --tasks N [--workers W]

Prints: tasks impl=celery|rq tasks=N workers=W tasks_per_s=... enq_p50_us=... enq_p99_us=...
The workers are started here and stopped at the end; Redis is the caller's.
"""
import argparse
import os
import signal
import subprocess
import sys
import time

import redis

HERE = os.path.dirname(os.path.abspath(__file__))


def wait_counter(r, n, timeout):
    end = time.time() + timeout
    while time.time() < end:
        v = int(r.get("evx:done") or 0)
        if v >= n:
            return v
        time.sleep(0.002)
    raise SystemExit("tasks_peers: only %s of %d tasks done after %ds" % (r.get("evx:done"), n, timeout))


def pct(v, p):
    v = sorted(v)
    return v[int(p * (len(v) - 1))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("impl", choices=["celery", "rq"])
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    env = dict(os.environ, EVX_BENCH_REDIS_PORT=str(a.redis_port), PYTHONPATH=HERE)
    r = redis.Redis(host="127.0.0.1", port=a.redis_port)
    r.flushdb()
    url = "redis://127.0.0.1:%d/0" % a.redis_port
    if a.impl == "celery":
        cmd = [sys.executable, "-m", "celery", "-A", "tasks_peer_celery", "worker", "--pool", "prefork",
               "--concurrency", str(a.workers), "--without-gossip", "--without-mingle",
               "--without-heartbeat", "--loglevel", "WARNING"]
        procs = [subprocess.Popen(cmd, cwd=HERE, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)]
        sys.path.insert(0, HERE)
        os.environ["EVX_BENCH_REDIS_PORT"] = str(a.redis_port)
        import tasks_peer_celery as jobs
        send = lambda i: jobs.celery_noop.delay(i)
    else:
        from rq import Queue
        sys.path.insert(0, HERE)
        os.environ["EVX_BENCH_REDIS_PORT"] = str(a.redis_port)
        import tasks_peer_jobs as jobs
        q = Queue("default", connection=r)
        cmd = ["/usr/bin/rq", "worker", "-u", url, "--path", HERE, "-q", "default"]
        procs = [subprocess.Popen(cmd, cwd=HERE, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for _ in range(a.workers)]
        send = lambda i: q.enqueue(jobs.noop, i)
    try:
        # Warm-up: the workers are up once these ran.
        for i in range(20):
            send(i)
        wait_counter(r, 20, 60)
        r.set("evx:done", 0)
        lat = []
        t0 = time.perf_counter()
        for i in range(a.tasks):
            s = time.perf_counter()
            send(i)
            lat.append(time.perf_counter() - s)
        wait_counter(r, a.tasks, 300)
        secs = time.perf_counter() - t0
        print("tasks impl=%s tasks=%d workers=%d tasks_per_s=%.0f enq_p50_us=%.0f enq_p99_us=%.0f"
              % (a.impl, a.tasks, a.workers, a.tasks / secs, pct(lat, 0.5) * 1e6, pct(lat, 0.99) * 1e6))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


if __name__ == "__main__":
    main()
