#!/usr/bin/python3
"""Hold many long-poll requests on a server and report its memory.

Used by bench/http.sh. Opens --conns connections to --path (default /wait),
sends one request on each, waits until the server's RSS settles, reads
VmRSS from /proc/PID/status, then calls --notify once and counts the
connections that got their reply only after the notify (held) - so the
figure is for requests really held open, not refused or dropped.

Prints one line:
  longpoll impl=NAME conns=N held=H answered=A rss_base_kb=B rss_held_kb=R bytes_per_conn=X
bytes_per_conn = (R - B) * 1024 / H: the server's resident memory per held
request, kernel socket buffers not included (they are not in the RSS).
Standard library only; raises its own open-files limit to the hard limit.
"""
import argparse
import asyncio
import resource
import sys
import time


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for pid %d" % pid)


async def request(host, port, method, path):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(("%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                  % (method, path, host)).encode())
    await writer.drain()
    status = (await reader.readline()).decode(errors="replace").split()
    writer.close()
    return int(status[1]) if len(status) > 1 and status[1].isdigit() else 0


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pid", type=int, required=True, help="server process to measure")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--path", default="/wait?timeout=300000",
                    help="long-poll request (the timeout keeps it held for the whole run)")
    ap.add_argument("--notify", default="/notify")
    ap.add_argument("--impl", default="server")
    ap.add_argument("--timeout", type=float, default=60.0, help="overall limit, seconds")
    a = ap.parse_args()
    if a.conns < 1:
        ap.error("--conns must be >= 1")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.conns + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
        if min(want, hard) < want:
            sys.exit("longpoll: open-files hard limit %d is below %d" % (hard, want))

    deadline = time.monotonic() + a.timeout
    base = rss_kb(a.pid)
    notified = False
    early = 0      # replies that came before the notify (refused or not held)
    answered = 0   # 2xx replies after the notify
    failed = 0     # could not connect/send, or the reply was not 2xx
    gate = asyncio.Semaphore(100)  # connect a hundred at a time: the listen backlog is small
    writers = []

    async def one():
        nonlocal early, answered, failed
        try:
            async with gate:
                reader, writer = await asyncio.open_connection(a.host, a.port)
                writers.append(writer)
                writer.write(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (a.path, a.host)).encode())
                await writer.drain()
            line = await reader.readline()
        except OSError:
            failed += 1
            return
        parts = line.decode(errors="replace").split()
        ok = len(parts) > 1 and parts[1].startswith("2")
        if not notified:
            early += 1
        elif ok:
            answered += 1
        elif line:
            failed += 1

    tasks = [asyncio.ensure_future(one()) for _ in range(a.conns)]
    # Wait until every connection sent its request, then until the RSS settles.
    while len(writers) + failed < a.conns and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    last, stable = -1, 0
    while stable < 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = rss_kb(a.pid)
        stable = stable + 1 if abs(now - last) <= max(64, last // 200) else 0
        last = now
    held_rss = rss_kb(a.pid)
    held = a.conns - failed - early

    notified = True
    # A server at its limit of held requests (evx_http's max_held defaults to
    # 10000) refuses the /notify itself with 503: then let one waiter go
    # (its reply, if any, is not counted) and try again.
    status, given_up = 0, 0
    for attempt in range(20):
        status = await request(a.host, a.port, "GET", a.notify)
        if 200 <= status < 300 or status != 503 or not writers:
            break
        writers.pop().close()
        given_up += 1
        await asyncio.sleep(0.05 * (attempt + 1))
    if not 200 <= status < 300:
        print("longpoll: GET %s answered %d" % (a.notify, status), file=sys.stderr)
    left = max(0.1, deadline - time.monotonic())
    await asyncio.wait(tasks, timeout=left)
    for w in writers:
        w.close()

    per = (held_rss - base) * 1024.0 / held if held > 0 else 0.0
    print("longpoll impl=%s conns=%d held=%d answered=%d rss_base_kb=%d rss_held_kb=%d "
          "bytes_per_conn=%.0f" % (a.impl, a.conns, held, answered, base, held_rss, per))
    if early or failed:
        print("longpoll: %d replies came before the notify, %d connections failed"
              % (early, failed), file=sys.stderr)
    if given_up:
        print("longpoll: closed %d held connection(s) to make room for %s"
              % (given_up, a.notify), file=sys.stderr)
    return 0 if held == a.conns and answered >= held - given_up else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
