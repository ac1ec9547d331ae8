# The Celery app of bench/tasks_peers.py: the no-op task of tasks_peer_jobs.
import os

from celery import Celery

from tasks_peer_jobs import noop

PORT = int(os.environ.get("EVX_BENCH_REDIS_PORT", "6379"))
app = Celery("tasks_peer_celery", broker="redis://127.0.0.1:%d/0" % PORT)
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False,
                broker_connection_retry_on_startup=True)
celery_noop = app.task(name="noop", ignore_result=True)(noop)
