#!/usr/bin/python3
"""Soak test: examples/hello under mixed hostile load for a fixed time.

Mix (threads, all on 127.0.0.1): well-behaved keep-alive clients on /hello and
/work?ms=5, leavers (send /work?ms=300, close at once or reset), overload
bursts (/work?ms=50 far beyond the pool), slow clients (a header byte every
200 ms: cut off by the header deadline, --header-ms), long polls (/wait),
stalled readers of nothing, and garbage (random bytes and request-smuggling
shapes). Every 2 s it samples the server's RSS and open descriptors from
/proc. At the end: SIGTERM, which must exit 0 within the grace + 1 s.

Pass/fail: after warm-up (the first 10% of the run) RSS may grow at most
--rss-slack-mb, descriptors stay below --max-fds, and every counter of
answered requests is non-zero. Prints one summary line:
  soak impl=evexec seconds=... requests=... rss_warm_kb=... rss_max_kb=... ...
Usage: scripts/soak.py --bin build/examples/hello/evx_hello [--seconds 600]
"""
import argparse
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

ap = argparse.ArgumentParser()
ap.add_argument("--bin", required=True)
ap.add_argument("--seconds", type=int, default=600)
ap.add_argument("--rss-slack-mb", type=float, default=24.0)
ap.add_argument("--max-fds", type=int, default=400)
args = ap.parse_args()

srv = subprocess.Popen([args.bin, "--port", "0", "--threads", "4", "--quiet", "--grace-ms", "2000",
                        "--queue", "32"],
                       stderr=subprocess.PIPE, text=True)
line = srv.stderr.readline()
m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
if not m:
    print("soak: server did not start: " + line, file=sys.stderr)
    sys.exit(1)
port = int(m.group(1))
stop = threading.Event()
srv_log = []
threading.Thread(target=lambda: srv_log.extend(srv.stderr), daemon=True).start()
counts = {}
lock = threading.Lock()


def count(key, n=1):
    with lock:
        counts[key] = counts.get(key, 0) + n


def conn(timeout=5.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def status_of(s):
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            return 0
        data += chunk
    m = re.match(rb"HTTP/1\.\d (\d{3})", data)
    return int(m.group(1)) if m else -1


def request(path, keep=None):
    s = keep or conn()
    try:
        s.sendall(("GET %s HTTP/1.1\r\nHost: t\r\n%s\r\n" %
                   (path, "" if keep else "Connection: close\r\n")).encode())
        # read a whole response (Content-Length bodies only on these routes)
        data = b""
        while b"\r\n\r\n" not in data:
            c = s.recv(65536)
            if not c:
                return 0
            data += c
        head, _, body = data.partition(b"\r\n\r\n")
        m = re.search(rb"Content-Length: (\d+)", head, re.I)
        need = int(m.group(1)) if m else 0
        while len(body) < need:
            c = s.recv(65536)
            if not c:
                break
            body += c
        return int(head[9:12])
    finally:
        if not keep:
            s.close()


def loop(fn):
    def run():
        while not stop.is_set():
            try:
                fn()
            except OSError:
                count("client_errors")
    return run


def good():
    s = conn()
    try:
        for _ in range(50):
            if stop.is_set():
                break
            st = request(random.choice(["/hello", "/work?ms=5"]), keep=s)
            count("status_%d" % st)
    finally:
        s.close()


def leaver():
    s = conn()
    s.sendall(b"GET /work?ms=300 HTTP/1.1\r\nHost: t\r\n\r\n")
    time.sleep(random.random() * 0.05)
    if random.random() < 0.5:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    count("leavers")


def overload():
    socks = []
    for _ in range(60):
        try:
            s = conn()
            s.sendall(b"GET /work?ms=50 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            socks.append(s)
        except OSError:
            count("client_errors")
    for s in socks:
        try:
            count("status_%d" % status_of(s))
        except OSError:
            count("client_errors")
        s.close()
    time.sleep(0.2)


def slow():
    s = conn(timeout=30)
    head = b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 400  # 80 s > the 60 s deadline
    try:
        for b in head:
            if stop.is_set():
                return
            s.send(bytes([b]))
            time.sleep(0.2)
            s.setblocking(False)
            try:
                if s.recv(1, socket.MSG_PEEK):
                    break
            except BlockingIOError:
                pass
            s.setblocking(True)
        s.setblocking(True)
        st = status_of(s)
        count("slow_%d" % st)
    finally:
        s.close()


def longpoll():
    st = request("/wait?timeout=%d" % random.randint(100, 2000))
    count("wait_%d" % st)


GARBAGE = [
    b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    b"POST /hello HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    b"GET /hello HTTP/9.9\r\nHost: t\r\n\r\n",
    b"GET /hello HTTP/1.1\r\n\r\n",
    b"\x00\x01\x02garbage\r\n\r\n",
]


def garbage():
    s = conn()
    try:
        if random.random() < 0.5:
            s.sendall(random.choice(GARBAGE))
        else:
            s.sendall(bytes(random.getrandbits(8) for _ in range(random.randint(1, 400))) + b"\r\n\r\n")
        s.settimeout(2)
        try:
            count("garbage_%d" % status_of(s))
        except socket.timeout:
            count("garbage_timeout")
    finally:
        s.close()
    time.sleep(0.002)


def notifier():
    request("/notify")
    time.sleep(0.5)


def sample():
    with open("/proc/%d/status" % srv.pid) as f:
        rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    fds = len(os.listdir("/proc/%d/fd" % srv.pid))
    return rss, fds


kinds = [good] * 4 + [leaver] * 2 + [overload] + [slow] * 3 + [longpoll] * 2 + [garbage] * 2 + [notifier]
threads = [threading.Thread(target=loop(k), daemon=True) for k in kinds]
for t in threads:
    t.start()

t0 = time.time()
warm = None
rss_max = fds_max = 0
samples = []
while time.time() - t0 < args.seconds:
    time.sleep(2)
    rss, fds = sample()
    samples.append((rss, fds))
    rss_max, fds_max = max(rss_max, rss), max(fds_max, fds)
    if warm is None and time.time() - t0 >= args.seconds * 0.1:
        warm = rss
stop.set()
for t in threads:
    t.join(timeout=35)
time.sleep(1)
rss_end, fds_end = sample()
t1 = time.time()
srv.send_signal(signal.SIGTERM)
try:
    code = srv.wait(timeout=2 + 1 + 1)
except subprocess.TimeoutExpired:
    srv.kill()
    code = -1
stop_s = time.time() - t1

requests = sum(v for k, v in counts.items() if re.match(r"(status|slow|wait|garbage)_\d+$", k))
detail = " ".join("%s=%d" % kv for kv in sorted(counts.items()))
print("soak impl=evexec seconds=%d requests=%d rss_warm_kb=%d rss_max_kb=%d rss_end_kb=%d "
      "fds_max=%d fds_end=%d exit=%d stop_s=%.2f %s" %
      (args.seconds, requests, warm or 0, rss_max, rss_end, fds_max, fds_end, code, stop_s, detail))
fail = []
if warm and rss_max - warm > args.rss_slack_mb * 1024:
    fail.append("RSS grew %d KiB after warm-up" % (rss_max - warm))
if fds_max > args.max_fds:
    fail.append("%d descriptors open" % fds_max)
if fds_end > 20:
    fail.append("%d descriptors still open after the load" % fds_end)
if code != 0:
    fail.append("exit status %d" % code)
for key in ("status_200", "status_503", "garbage_400", "slow_408", "leavers"):
    if not counts.get(key):
        fail.append("no %s" % key)
if fail:
    print("soak: FAIL: " + "; ".join(fail), file=sys.stderr)
    sys.exit(1)
print("soak: ok", file=sys.stderr)
