# The no-op task of bench/tasks_peers.py for RQ workers (and, wrapped by
# tasks_peer_celery.py, for Celery): it counts its completions in Redis
# (INCR), which is how the bench sees them finish. Imports nothing heavy, so
# RQ's per-job work horse pays no import.
import os

import redis

PORT = int(os.environ.get("EVX_BENCH_REDIS_PORT", "6379"))
_r = redis.Redis(host="127.0.0.1", port=PORT)


def noop(i):
    _r.incr("evx:done")
