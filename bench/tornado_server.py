#!/usr/bin/python3
"""The Tornado twin of examples/hello, for bench/http.sh.

Same routes, same model: one IOLoop thread, blocking work on a
ThreadPoolExecutor through @run_on_executor, long polling on a
tornado.locks.Condition.

  /hello        -> "hello\\n" from the loop thread
  /work?ms=N    -> sleeps N ms (0..60000) on a worker, then replies
  /wait         -> held until /notify
  /notify       -> wakes every /wait, replies with how many were woken

Run with Debian's python3-tornado: /usr/bin/python3 bench/tornado_server.py
--port 8081 --threads 2. Logs nothing per request; stops on SIGINT/SIGTERM.
"""
import argparse
import asyncio
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import tornado.httpserver
import tornado.ioloop
import tornado.locks
import tornado.web
from tornado.concurrent import run_on_executor


class Hello(tornado.web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "text/plain")
        self.write("hello\n")


class Work(tornado.web.RequestHandler):
    def initialize(self, executor):
        self.executor = executor

    @run_on_executor
    def blocking(self, ms):
        time.sleep(ms / 1000.0)
        return ms

    async def get(self):
        try:
            ms = int(self.get_query_argument("ms", "0"))
        except ValueError:
            ms = -1
        if ms < 0 or ms > 60000:
            raise tornado.web.HTTPError(400, "ms must be 0..60000")
        done = await self.blocking(ms)
        self.set_header("Content-Type", "text/plain")
        self.write("worked %d ms\n" % done)


class Wait(tornado.web.RequestHandler):
    def initialize(self, cond):
        self.cond = cond

    async def get(self):
        await self.cond.wait()
        self.set_header("Content-Type", "text/plain")
        self.write("notified\n")


class Notify(tornado.web.RequestHandler):
    def initialize(self, cond):
        self.cond = cond

    def get(self):
        n = len(self.cond._waiters)  # Condition has no public waiter count
        self.cond.notify_all()
        self.set_header("Content-Type", "text/plain")
        self.write("%d\n" % n)

    post = get


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--threads", type=int, default=4)
    a = ap.parse_args()
    if not 1 <= a.threads <= 1024:
        ap.error("--threads must be 1..1024")
    # No per-request logging (4xx would otherwise reach stderr through
    # logging's last-resort handler): the benchmark measures serving only.
    for name in ("tornado.access", "tornado.general"):
        logging.getLogger(name).setLevel(logging.ERROR)

    async def serve():
        executor = ThreadPoolExecutor(a.threads)
        cond = tornado.locks.Condition()
        app = tornado.web.Application([
            (r"/hello", Hello),
            (r"/work", Work, dict(executor=executor)),
            (r"/wait", Wait, dict(cond=cond)),
            (r"/notify", Notify, dict(cond=cond)),
        ])
        server = tornado.httpserver.HTTPServer(app)
        server.listen(a.port, a.host, backlog=4096)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        # Stop accepting; requests still held (wait, work) are dropped, and
        # their handler tasks get cancelled: that is expected, not an error.
        loop.set_exception_handler(lambda _loop, _ctx: None)
        server.stop()
        executor.shutdown(wait=True)

    asyncio.run(serve())


if __name__ == "__main__":
    main()
