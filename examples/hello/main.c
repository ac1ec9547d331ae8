/*
 * evx_hello: the HTTP layer in one file.
 *
 *   /hello          answered on the loop thread
 *   /work?ms=N      sleeps N ms on the worker pool (a stand-in for a blocking
 *                   library call), then answers; 503 + Retry-After when the
 *                   pool's queue is full, or - with --target-wait-ms - when
 *                   the job would wait longer than that; a client that
 *                   leaves cancels its job if it has not started (a running
 *                   one is asked to stop: evx_job_cancelled())
 *   /wait           long poll: answers when someone calls /notify, or
 *                   "timeout" after ?timeout=MS (default 30000)
 *   /notify         wakes every /wait
 *
 *   /co/work, /co/wait   with --coro: /work and /wait as coroutine handlers
 *
 * Usage: evx_hello [--host ADDR] [--port N] [--threads N] [--spin-us N] [--target-wait-ms N]
 *                  [--quiet] [--coro]
 * SIGINT/SIGTERM: evx_http_shutdown - stop accepting, let held requests
 * finish for --grace-ms (default 10000), answer the rest 503, cancel the
 * queued jobs, exit 0. A second signal ends the grace at once.
 */
#define _POSIX_C_SOURCE 200809L
#include <evexec/evexec.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_WORK_MS 60000
#define DRAIN_GRACE_MS 10000

static evx_loop *loop;
static evx_http *http;
static evx_executor *pool;
static evx_condition *cond;
static evx_future *shut_f;

/* ---- /hello ---- */

static void on_hello(evx_request *req, void *arg) {
  (void)arg;
  evx_request_finish(req, 200, "text/plain", "hello\n", 6);
}

/* ---- /work?ms=N ---- */

typedef struct work {
  evx_request *req;
  evx_job *job;
  long ms;
} work;

static void work_run(void *arg) { /* worker thread */
  work *w = arg;
  /* ms=0 measures the offload itself: a zero nanosleep would still cost the
   * kernel's timer slack (about 50-70 us on Linux). */
  if (w->ms == 0) return;
  /* in 10 ms slices, so that a cancelled job (client gone, shutdown) stops */
  for (long left = w->ms; left > 0 && !evx_job_cancelled(); left -= 10) {
    long ms = left < 10 ? left : 10;
    struct timespec ts = {.tv_sec = 0, .tv_nsec = ms * 1000000L};
    nanosleep(&ts, NULL);
  }
}

static void work_done(void *arg, int status) { /* loop thread */
  work *w = arg;
  if (status == EVX_OK)
    evx_request_finishf(w->req, 200, NULL, "slept %ld ms\n", w->ms);
  else if (status == EVX_ETIMEDOUT) /* waited past --target-wait-ms: shed, never ran */
    evx_request_reply_busy(w->req, 1);
  else /* cancelled: the client left (finish says EVX_EGONE) or we are shutting down */
    evx_request_finish(w->req, 503, NULL, "cancelled\n", 10);
  free(w);
}

static void work_client_left(evx_request *req, void *arg) {
  (void)req;
  work *w = arg;
  evx_job_cancel(w->job); /* EVX_EBUSY when it already runs: its result is dropped */
}

static void on_work(evx_request *req, void *arg) {
  (void)arg;
  const char *s = evx_request_query(req, "ms");
  char *end = NULL;
  long ms = s ? strtol(s, &end, 10) : 0;
  if (s && (end == s || *end || ms < 0 || ms > MAX_WORK_MS)) {
    evx_request_finishf(req, 400, NULL, "ms must be 0..%d\n", MAX_WORK_MS);
    return;
  }
  work *w = malloc(sizeof *w);
  if (!w) {
    evx_request_finish(req, 500, NULL, "out of memory\n", 14);
    return;
  }
  w->req = req;
  w->ms = ms;
  int rc = evx_submit_job(pool, work_run, work_done, w, &w->job);
  if (rc != EVX_OK) {
    free(w);
    if (rc == EVX_EBUSY) evx_request_reply_busy(req, 1);
    else evx_request_finishf(req, 503, NULL, "%s\n", evx_strerror(rc));
    return;
  }
  evx_request_on_close(req, work_client_left, w);
}

/* ---- /wait and /notify ---- */

typedef struct waiter {
  evx_request *req;
  evx_future *f;
} waiter;

static void wait_done(evx_future *f, void *arg) {
  waiter *w = arg;
  int st = evx_future_status(f);
  if (st == EVX_OK) evx_request_finish(w->req, 200, NULL, "notified\n", 9);
  else if (st == EVX_ETIMEDOUT) evx_request_finish(w->req, 200, NULL, "timeout\n", 8);
  else evx_request_finish(w->req, 503, NULL, "closed\n", 7); /* cancelled (client left) or shutdown */
  evx_future_release(f);
  free(w);
}

static void wait_client_left(evx_request *req, void *arg) {
  (void)req;
  waiter *w = arg;
  evx_future_cancel(w->f); /* the condition drops the waiter now; wait_done finishes */
}

static void on_wait(evx_request *req, void *arg) {
  (void)arg;
  const char *s = evx_request_query(req, "timeout");
  unsigned long ms = s ? strtoul(s, NULL, 10) : 30000;
  waiter *w = malloc(sizeof *w);
  if (!w) {
    evx_request_finish(req, 500, NULL, "out of memory\n", 14);
    return;
  }
  w->req = req;
  w->f = cond ? evx_condition_wait(cond, ms) : NULL;
  if (!w->f || evx_future_on_done(w->f, wait_done, w) != EVX_OK) {
    if (w->f) {
      evx_future_cancel(w->f);
      evx_future_release(w->f);
    }
    free(w);
    evx_request_finish(req, 503, NULL, "unavailable\n", 12);
    return;
  }
  evx_request_on_close(req, wait_client_left, w);
}

static void on_notify(evx_request *req, void *arg) {
  (void)arg;
  int n = cond ? evx_condition_notify_all(cond) : 0;
  evx_request_finishf(req, 200, NULL, "woke %d\n", n);
}

/* ---- --coro: the same two routes as coroutine handlers (bench/http.sh
 * compares them with the callback handlers above on one server) ---- */

static void co_work(evx_request *req, void *arg) {
  (void)arg;
  const char *s = evx_request_query(req, "ms");
  char *end = NULL;
  work w = {.req = req, .ms = s ? strtol(s, &end, 10) : 0};
  if (s && (end == s || *end || w.ms < 0 || w.ms > MAX_WORK_MS)) {
    evx_request_finishf(req, 400, NULL, "ms must be 0..%d\n", MAX_WORK_MS);
    return;
  }
  int rc = evx_await_job(pool, work_run, &w); /* EVX_EGONE: the client left; nothing to send */
  if (rc == EVX_OK) evx_request_finishf(req, 200, NULL, "slept %ld ms\n", w.ms);
  else if (rc == EVX_EBUSY || rc == EVX_ETIMEDOUT) /* full, or shed by --target-wait-ms */
    evx_request_reply_busy(req, 1);
  else evx_request_finishf(req, 503, NULL, "%s\n", evx_strerror(rc));
}

static void co_wait(evx_request *req, void *arg) {
  (void)arg;
  const char *s = evx_request_query(req, "timeout");
  evx_future *f = cond ? evx_condition_wait(cond, s ? strtoul(s, NULL, 10) : 30000) : NULL;
  int rc = f ? evx_await(f) : EVX_ECLOSED;
  evx_future_release(f);
  if (rc == EVX_OK) evx_request_write_str(req, "notified\n");
  else if (rc == EVX_ETIMEDOUT) evx_request_write_str(req, "timeout\n");
  else evx_request_set_status(req, 503); /* shutdown, or the client left (then nothing is sent) */
}

/* ---- shutdown ---- */

/* The server answered everyone: cancel what is still queued, then stop. */
static void on_shut_done(evx_future *f, void *arg) {
  (void)f;
  (void)arg;
  evx_executor_shutdown(pool, EVX_SHUTDOWN_CANCEL); /* queued jobs never run */
  evx_loop_stop(loop);
}

static void on_signal(int sig, void *arg) {
  long grace_ms = *(long *)arg;
  if (shut_f) { /* a second signal: end the grace now */
    fprintf(stderr, "evx_hello: signal %d again, answering the rest now\n", sig);
    evx_future_release(evx_http_shutdown(http, 0));
    return;
  }
  fprintf(stderr, "evx_hello: signal %d, stopping (grace %ld ms)\n", sig, grace_ms);
  shut_f = evx_http_shutdown(http, (uint64_t)grace_ms);
  evx_condition_free(cond); /* long polls end now with EVX_ECLOSED -> 503; work gets the grace */
  cond = NULL;
  if (!shut_f || evx_future_on_done(shut_f, on_shut_done, NULL) != EVX_OK) evx_loop_stop(loop);
}

static void usage(FILE *f) {
  fprintf(f, "usage: evx_hello [--host ADDR] [--port N] [--threads N] [--spin-us N] [--grace-ms N]\n"
             "                 [--queue N] [--target-wait-ms N] [--coro] [--quiet] [--help]\n"
             "  --host ADDR   address to listen on (default 127.0.0.1)\n"
             "  --port N      port (default 8080; 0 picks a free one)\n"
             "  --threads N   worker threads for /work (default 4)\n"
             "  --spin-us N   an idle worker polls for new jobs for N us before it sleeps\n"
             "                (the executor's spin_us; default 0: sleep at once)\n"
             "  --target-wait-ms N  load shedding: a /work job that would wait in the\n"
             "                queue longer than N ms gets 503 + Retry-After at once, and\n"
             "                one that still waited longer is not run (the executor's\n"
             "                target_wait_us; default 0: off)\n"
             "  --grace-ms N  at SIGINT/SIGTERM, held requests may finish for N ms (default\n"
             "                10000); then they get 503. A second signal: at once\n"
             "  --queue N     most jobs waiting for a worker (default 4096); then 503\n"
             "  --quiet       no access log\n"
             "  --coro        also serve /co/work and /co/wait: the same handlers as\n"
             "                coroutines (for bench/http.sh)\n"
             "routes: /hello  /work?ms=N  /wait[?timeout=MS]  /notify\n");
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1";
  long port = 8080, threads = 4, spin_us = 0, grace_ms = DRAIN_GRACE_MS, target_wait_ms = 0;
  long queue = 0;
  int quiet = 0, coro = 0;
  static const struct option opts[] = {{"coro", no_argument, 0, 'c'},{"host", required_argument, 0, 'H'},
                                       {"port", required_argument, 0, 'p'},
                                       {"threads", required_argument, 0, 't'},
                                       {"spin-us", required_argument, 0, 's'},
                                       {"grace-ms", required_argument, 0, 'g'},
                                       {"queue", required_argument, 0, 'Q'},
                                       {"target-wait-ms", required_argument, 0, 'w'},
                                       {"quiet", no_argument, 0, 'q'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "H:p:t:s:g:w:Q:qhc", opts, NULL)) != -1) {
    char *end;
    switch (c) {
    case 'H': host = optarg; break;
    case 'p':
      port = strtol(optarg, &end, 10);
      if (*end || port < 0 || port > 65535) {
        fprintf(stderr, "evx_hello: bad --port %s\n", optarg);
        return 2;
      }
      break;
    case 't':
      threads = strtol(optarg, &end, 10);
      if (*end || threads < 1 || threads > 1024) {
        fprintf(stderr, "evx_hello: bad --threads %s\n", optarg);
        return 2;
      }
      break;
    case 's':
      spin_us = strtol(optarg, &end, 10);
      if (*end || spin_us < 0 || spin_us > 1000000) {
        fprintf(stderr, "evx_hello: bad --spin-us %s\n", optarg);
        return 2;
      }
      break;
    case 'g':
      grace_ms = strtol(optarg, &end, 10);
      if (*end || grace_ms < 0 || grace_ms > 3600000) {
        fprintf(stderr, "evx_hello: bad --grace-ms %s\n", optarg);
        return 2;
      }
      break;
    case 'Q':
      queue = strtol(optarg, &end, 10);
      if (*end || queue < 1 || queue > 1000000) {
        fprintf(stderr, "evx_hello: bad --queue %s\n", optarg);
        return 2;
      }
      break;
    case 'w':
      target_wait_ms = strtol(optarg, &end, 10);
      if (*end || target_wait_ms < 0 || target_wait_ms > 600000) {
        fprintf(stderr, "evx_hello: bad --target-wait-ms %s\n", optarg);
        return 2;
      }
      break;
    case 'q': quiet = 1; break;
    case 'c': coro = 1; break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }

  loop = evx_loop_new(NULL);
  if (!loop) return 1;
  pool = evx_executor_new(loop, &(evx_executor_opts){.threads = (unsigned)threads,
                                                      .spin_us = (unsigned)spin_us,
                                                      .max_queue = (size_t)queue,
                                                      .target_wait_us =
                                                          (unsigned)target_wait_ms * 1000u,
                                                      .name = "work"});
  cond = evx_condition_new(loop);
  http = evx_http_new(loop, &(evx_http_opts){.log = quiet ? NULL : evx_http_log_stderr});
  if (!pool || !cond || !http) return 1;
  if (evx_http_route(http, "GET", "/hello", 0, on_hello, NULL) ||
      evx_http_route(http, "GET", "/work", 0, on_work, NULL) ||
      evx_http_route(http, "GET", "/wait", 0, on_wait, NULL) ||
      evx_http_route(http, NULL, "/notify", 0, on_notify, NULL))
    return 1;
  if (coro && (evx_http_route_coro(http, "GET", "/co/work", 0, co_work, NULL) ||
               evx_http_route_coro(http, "GET", "/co/wait", 0, co_wait, NULL)))
    return 1;
  int rc = evx_http_bind(http, host, (uint16_t)port);
  if (rc != EVX_OK) {
    fprintf(stderr, "evx_hello: cannot listen on %s:%ld: %s\n", host, port, evx_strerror(rc));
    return 1;
  }
  fprintf(stderr, "evx_hello: listening on http://%s:%d/ (%ld threads)\n", host,
          evx_http_port(http), threads);
  fflush(stderr);

  if (evx_loop_on_signal(loop, SIGINT, on_signal, &grace_ms) ||
      evx_loop_on_signal(loop, SIGTERM, on_signal, &grace_ms))
    return 1;

  evx_loop_run(loop);

  /* the teardown order of docs/GUIDE.md ("Shutdown") */
  evx_future_release(shut_f);
  evx_executor_free(pool); /* joins the workers; owed done()s finish their requests */
  evx_http_free(http);
  evx_condition_free(cond);
  evx_loop_free(loop);
  fprintf(stderr, "evx_hello: stopped\n");
  return 0;
}
