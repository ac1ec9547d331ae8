/*
 * Fuzz target: the HTTP request layer (http.h) as a client sees it. The input
 * is the raw byte stream of one client connection - request lines, headers,
 * bodies, pipelined requests, garbage - sent to a fresh evx_http server over
 * a Unix socket (no TCP ports, so no TIME_WAIT build-up over millions of
 * runs).
 *
 * Routes exercise: exact vs prefix routing and 405 (/g is GET only), query
 * decoding and headers (/echo), bodies, set_header with input-derived values
 * (CR/LF must be refused), requests held and finished later from a timer with
 * an input-chosen status (invalid ones must give 500, not a crash), chunked
 * replies, reply_busy, and clients that leave while a request is held (the
 * half-close at the end of every input).
 *
 * Checked per input: no crash, no sanitizer report, no leak (LSan); every
 * byte stream the server sends starts with a status line; the connection ends
 * (the server closes after the client's half-close) within a bounded number
 * of loop iterations; evx_request_live_count() is 0 after teardown.
 */
#include <errno.h>
#include <event2/event.h>
#include <event2/http.h>
#include <evexec/evexec.h>
#include <evexec/http.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "fuzz.h"
#include "http-test.h" /* evx__http_evhttp: attach a Unix listener */
#include "http_oracle.h"

typedef struct held {
  evx_request *req;
  int status;
  int chunked;
} held;

static int g_outstanding; /* held requests whose timer has not run yet */

static const char *nz(const char *s) { return s ? s : "-"; }

static void h_echo(evx_request *req, void *arg) {
  (void)arg;
  size_t blen = 0;
  const char *body = evx_request_body(req, &blen);
  EVX_FUZZ_CHECK(body != NULL && body[blen] == '\0');
  const char *hv = evx_request_query(req, "h");
  if (hv) {
    int rc = evx_request_set_header(req, "X-Echo", hv);
    if (strpbrk(hv, "\r\n")) EVX_FUZZ_CHECK(rc == EVX_EINVAL);
    else EVX_FUZZ_CHECK(rc == EVX_OK || rc == EVX_EINVAL); /* EINVAL: e.g. empty name rules */
  }
  int rc = evx_request_finishf(req, 200, "text/plain", "%s %s %s a=%s b=%s x=%s peer=%s len=%zu\n",
                               nz(evx_request_method(req)), nz(evx_request_path(req)),
                               nz(evx_request_uri(req)), nz(evx_request_query(req, "a")),
                               nz(evx_request_query(req, "b")), nz(evx_request_header(req, "X-A")),
                               nz(evx_request_peer(req)), blen);
  EVX_FUZZ_CHECK(rc == EVX_OK);
  /* Code after finish runs normally; a second finish is refused. */
  EVX_FUZZ_CHECK(evx_request_finish(req, 200, NULL, NULL, 0) == EVX_EINVAL);
}

static void held_fire(void *arg) {
  held *h = arg;
  g_outstanding--;
  int gone = evx_request_state(h->req);
  int rc;
  if (h->chunked) {
    rc = evx_request_start_chunked(h->req, 200, NULL);
    EVX_FUZZ_CHECK(rc == EVX_OK || rc == gone);
    if (rc == EVX_OK) {
      (void)evx_request_write(h->req, "part1;", 6);
      (void)evx_request_write(h->req, "", 0);
      (void)evx_request_write(h->req, "part2", 5);
    }
    rc = evx_request_end(h->req);
  } else {
    rc = evx_request_finish(h->req, h->status, NULL, "later\n", 6);
  }
  if (gone) EVX_FUZZ_CHECK(rc == gone);
  else if (h->status < 100 || h->status > 599) EVX_FUZZ_CHECK(h->chunked || rc == EVX_EINVAL);
  free(h);
}

static void on_left(evx_request *req, void *arg) {
  (void)arg;
  EVX_FUZZ_CHECK(evx_request_is_gone(req));
}

/* /hold?s=STATUS&t=MS&c=1 : keep the request, finish it from a timer. */
static void h_hold(evx_request *req, void *arg) {
  evx_loop *loop = arg;
  held *h = malloc(sizeof *h);
  EVX_FUZZ_CHECK(h);
  const char *s = evx_request_query(req, "s");
  const char *t = evx_request_query(req, "t");
  h->req = req;
  h->status = s ? atoi(s) : 200;
  h->chunked = evx_request_query(req, "c") != NULL;
  EVX_FUZZ_CHECK(evx_request_on_close(req, on_left, NULL) == EVX_OK);
  uint64_t ms = t ? (uint64_t)(atoi(t) & 3) : 0;
  EVX_FUZZ_CHECK(evx_call_later(loop, ms, held_fire, h) != NULL);
  g_outstanding++;
}

static void h_busy(evx_request *req, void *arg) {
  (void)arg;
  (void)evx_request_reply_busy(req, 1);
}

static void h_get_only(evx_request *req, void *arg) {
  (void)arg;
  (void)evx_request_finish(req, 204, NULL, NULL, 0);
}

/* How long the server gets to close the connection, and then to finish the
 * held requests: request_timeout_ms (2000) plus a wide margin for loaded
 * machines and valgrind. A correct server is done long before. */
#define PHASE2_MS 20000

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Run the loop's events for `ms` of wall-clock time (or less when there is
 * nothing to do: then it sleeps in the backend until the timeout). */
static void run_for(struct event_base *base, int ms) {
  struct timeval tv = {0, ms * 1000};
  event_base_loopexit(base, &tv);
  event_base_loop(base, 0);
}

/* The shared client/server plumbing for one input. */
static int unix_listener(struct sockaddr_un *sa, socklen_t *len) {
  static unsigned counter;
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  /* Abstract namespace: nothing on disk, freed with the socket. */
  int n = snprintf(sa->sun_path + 1, sizeof sa->sun_path - 1, "evx-fuzz-%d-%u", (int)getpid(),
                   counter++);
  *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  EVX_FUZZ_CHECK(fd >= 0);
  EVX_FUZZ_CHECK(bind(fd, (struct sockaddr *)sa, *len) == 0);
  EVX_FUZZ_CHECK(listen(fd, 4) == 0);
  return fd;
}

/* What the client received: the byte count and the first bytes. */
typedef struct rx {
  size_t total;
  char first[8];
} rx;

/* Read what the server sent; returns 1 at EOF or reset. */
static int drain(int fd, rx *r) {
  char buf[8192];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      for (ssize_t i = 0; i < n && r->total + (size_t)i < 7; i++) r->first[r->total + (size_t)i] = buf[i];
      r->total += (size_t)n;
      continue;
    }
    if (n == 0) return 1;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
    return 1;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  evx_loop *loop = evx_loop_new(NULL);
  EVX_FUZZ_CHECK(loop);
  evx_http_opts o = {.max_header_size = 1024,
                     .max_body_size = 4096,
                     .request_timeout_ms = 2000,
                     .idle_timeout_ms = 2000,
                     .max_held = 4};
  evx_http *http = evx_http_new(loop, &o);
  EVX_FUZZ_CHECK(http);
  EVX_FUZZ_CHECK(evx_http_route(http, NULL, "/echo", 0, h_echo, NULL) == EVX_OK);
  EVX_FUZZ_CHECK(evx_http_route(http, NULL, "/hold", EVX_ROUTE_PREFIX, h_hold, loop) == EVX_OK);
  EVX_FUZZ_CHECK(evx_http_route(http, "POST", "/busy", 0, h_busy, NULL) == EVX_OK);
  EVX_FUZZ_CHECK(evx_http_route(http, "GET", "/g", 0, h_get_only, NULL) == EVX_OK);
  EVX_FUZZ_CHECK(evx_http_route(http, NULL, "/", EVX_ROUTE_PREFIX, h_echo, NULL) == EVX_OK);

  struct sockaddr_un sa;
  socklen_t salen;
  int lfd = unix_listener(&sa, &salen);
  struct evhttp_bound_socket *bound = evhttp_accept_socket_with_handle(evx__http_evhttp(http), lfd);
  EVX_FUZZ_CHECK(bound);
  int cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  EVX_FUZZ_CHECK(cfd >= 0);
  EVX_FUZZ_CHECK(connect(cfd, (struct sockaddr *)&sa, salen) == 0);
  EVX_FUZZ_CHECK(fcntl(cfd, F_SETFL, O_NONBLOCK) == 0);

  struct event_base *base = evx_loop_base(loop);
  size_t sent = 0;
  rx got = {0};
  int eof = 0;
  /* Phase 1: send everything, let the server answer what it can. */
  for (int i = 0; i < 64 && !eof; i++) {
    if (sent < size) {
      ssize_t w = send(cfd, data + sent, size - sent, MSG_NOSIGNAL);
      if (w > 0) sent += (size_t)w;
      else if (w < 0 && errno != EAGAIN) sent = size; /* the server closed on us */
    }
    event_base_loop(base, EVLOOP_NONBLOCK);
    eof = drain(cfd, &got);
  }
  /* Phase 2: the client is done sending (a held request's client leaves);
   * the server must close the connection. */
  shutdown(cfd, SHUT_WR);
  /* The server acts on timers here (the watch delay, then request_timeout_ms
   * for a request the watch cannot see leave): wait on the clock, not on a
   * count of loop iterations, which a loaded machine runs through early. */
  uint64_t deadline = now_ms() + PHASE2_MS;
  while (!eof && now_ms() < deadline) {
    run_for(base, 1);
    eof = drain(cfd, &got);
  }
  EVX_FUZZ_CHECK(eof);
  /* Whatever the server sent starts with a status line. (evhttp echoes the
   * client's version, so "HTTP/0.1 405" is possible: only "HTTP/" is checked.) */
  if (got.total >= 5) EVX_FUZZ_CHECK(memcmp(got.first, "HTTP/", 5) == 0);
  /* Let the held requests' timers finish them (they may be gone by now). */
  deadline = now_ms() + PHASE2_MS;
  while (g_outstanding > 0 && now_ms() < deadline) run_for(base, 1);
  EVX_FUZZ_CHECK(g_outstanding == 0);

  /* Differential check on framing: evexec never dispatches more messages
   * than the independent reading finds complete and valid before the first
   * bad one (no smuggled request), and rejects only what it finds bad - with
   * the same status - or a message the input cuts off. */
  evx_oracle orc = evx_oracle_run(data, size, o.max_body_size);
  evx_http_stats st;
  evx_http_stats_get(http, &st);
  if (st.requests > (uint64_t)orc.complete) {
    fprintf(stderr, "framing: %llu requests dispatched, oracle: %d complete (bad %d)\n",
            (unsigned long long)st.requests, orc.complete, orc.bad);
    EVX_FUZZ_CHECK(0);
  }
  if (st.bad_requests) {
    if (!(orc.bad ? orc.bad == evx__http_last_bad_status(http) : orc.incomplete)) {
      fprintf(stderr, "framing: evexec rejected with %d, oracle: bad %d incomplete %d\n",
              evx__http_last_bad_status(http), orc.bad, orc.incomplete);
      EVX_FUZZ_CHECK(0);
    }
  }

  close(cfd);
  evx_http_free(http);
  close(lfd); /* evhttp_accept_socket does not own it */
  evx_loop_free(loop);
  EVX_FUZZ_CHECK(evx_request_live_count() == 0);
  return 0;
}
