/* Not installed: the overload scenario shared by tests/test_overload.c (which
 * asserts on it) and bench/overload.c (which prints it as one bench line).
 *
 * An in-process evexec HTTP server: GET /work?ms=N runs N ms on a pool of
 * `threads` workers (Tornado's offload: submit_job, done finishes; a full or
 * shedding pool answers 503 + Retry-After at once; a client that leaves or a
 * request that times out cancels its job). Open-loop clients offer `rate`
 * requests per second for `seconds`, each on a new connection, and record
 * every response's status and latency. The server also counts work that
 * started for a request that had already timed out ("late").
 *
 * Run it with target_wait_us = 0 (a plain bounded queue: the reference) and
 * with a target to compare. */
#ifndef EVX_OVERLOAD_SCENARIO_H
#define EVX_OVERLOAD_SCENARIO_H

#include <evexec/executor.h>
#include <evexec/http.h>
#include <evexec/loop.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* The monotonic clock (evexec's evx_now_ns is private to the library). */
static uint64_t ov_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

typedef struct ov_config {
  unsigned threads;        /* workers */
  unsigned job_ms;         /* work per request */
  unsigned target_wait_ms; /* executor target_wait_us / 1000; 0: off (reference) */
  unsigned timeout_ms;     /* the server's request timeout (504 after it) */
  unsigned rate;           /* requests per second offered */
  double seconds;          /* how long */
  unsigned clients;        /* client threads sharing the rate; 0: enough that each one's
                              period exceeds the slowest expected answer, so the load
                              stays open-loop (a blocked client would lower it) */
} ov_config;

typedef struct ov_result {
  unsigned sent, ok, busy, timeouts, other, errors;
  double ok_p50_ms, ok_p99_ms, ok_max_ms;
  double busy_p99_ms, busy_max_ms;
  unsigned busy_over_10ms; /* 503s that took longer than 10 ms */
  uint64_t shed, expired;  /* executor stats */
  uint64_t http_timed_out; /* the server's 504 count */
  unsigned late;           /* work started for a request already past its timeout */
  /* The server's view (access log: dispatch to finish), which a busy client
   * machine cannot blur: what the tests assert on. */
  double srv_ok_p99_ms, srv_busy_p99_ms, srv_busy_max_ms;
} ov_result;

/* ---- server ---------------------------------------------------------------- */

typedef struct ov_server {
  evx_loop *loop;
  evx_http *http;
  evx_executor *ex;
  int port;
  unsigned timeout_ms;
  atomic_uint late;
  /* Loop thread: durations (ms) of the 200s and 503s the server sent. */
  double *ok_ms, *busy_ms;
  unsigned nok, nbusy, cap;
} ov_server;

static void ov_log(void *arg, const evx_http_log_entry *e) {
  ov_server *srv = arg;
  if (e->status != 200 && e->status != 503) return;
  if (srv->nok == srv->cap || srv->nbusy == srv->cap) {
    unsigned cap = srv->cap ? srv->cap * 2 : 1024;
    double *a = realloc(srv->ok_ms, cap * sizeof *a), *b = a ? realloc(srv->busy_ms, cap * sizeof *b) : NULL;
    if (a) srv->ok_ms = a;
    if (!a || !b) return;
    srv->busy_ms = b;
    srv->cap = cap;
  }
  if (e->status == 200) srv->ok_ms[srv->nok++] = (double)e->duration_us / 1000.0;
  else srv->busy_ms[srv->nbusy++] = (double)e->duration_us / 1000.0;
}

typedef struct ov_req {
  ov_server *srv;
  evx_request *req;
  evx_job *job;
  unsigned ms;
  uint64_t deadline_ns; /* dispatch + request timeout */
} ov_req;

static void ov_work(void *arg) { /* worker */
  ov_req *r = arg;
  if (ov_now_ns() > r->deadline_ns) atomic_fetch_add(&r->srv->late, 1);
  /* Sleep until the end, in slices of at most 5 ms, stopping early when the
   * job was cancelled while it ran (evx_job_cancel from the close hook). */
  uint64_t end = ov_now_ns() + (uint64_t)r->ms * 1000000u, now;
  while (!evx_job_cancelled() && (now = ov_now_ns()) < end) {
    uint64_t d = end - now < 5000000u ? end - now : 5000000u;
    struct timespec ts = {0, (long)d};
    nanosleep(&ts, NULL);
  }
}

static void ov_done(void *arg, int status) { /* loop thread */
  ov_req *r = arg;
  if (status == EVX_OK) evx_request_finish(r->req, 200, NULL, "done\n", 5);
  else if (status == EVX_ETIMEDOUT) evx_request_reply_busy(r->req, 1); /* waited past the target */
  else evx_request_finish(r->req, 503, NULL, "cancelled\n", 10);
  free(r);
}

static void ov_left(evx_request *req, void *arg) {
  (void)req;
  ov_req *r = arg;
  evx_job_cancel(r->job); /* queued: never runs; running: asked to stop */
}

static void ov_on_work(evx_request *req, void *arg) {
  ov_server *srv = arg;
  const char *s = evx_request_query(req, "ms");
  ov_req *r = malloc(sizeof *r);
  if (!r) {
    evx_request_finish(req, 500, NULL, "oom\n", 4);
    return;
  }
  *r = (ov_req){.srv = srv, .req = req, .ms = s ? (unsigned)atoi(s) : 0,
                .deadline_ns = ov_now_ns() + (uint64_t)srv->timeout_ms * 1000000u};
  int rc = evx_submit_job(srv->ex, ov_work, ov_done, r, &r->job);
  if (rc != EVX_OK) {
    free(r);
    if (rc == EVX_EBUSY) evx_request_reply_busy(req, 1);
    else evx_request_finish(req, 503, NULL, "closed\n", 7);
    return;
  }
  evx_request_on_close(req, ov_left, r);
}

/* Loop thread (the caller's). 0 or -1. */
static int ov_server_start(ov_server *srv, const ov_config *c) {
  memset(srv, 0, sizeof *srv);
  srv->timeout_ms = c->timeout_ms;
  srv->loop = evx_loop_new(NULL);
  if (!srv->loop) return -1;
  evx_executor_opts eo = {.threads = c->threads,
                          .name = "ov",
                          .target_wait_us = c->target_wait_ms * 1000u};
  srv->ex = evx_executor_new(srv->loop, &eo);
  evx_http_opts ho = {.request_timeout_ms = c->timeout_ms, .max_held = 100000, .log = ov_log,
                      .log_arg = srv};
  srv->http = evx_http_new(srv->loop, &ho);
  if (!srv->ex || !srv->http) return -1;
  if (evx_http_route(srv->http, "GET", "/work", 0, ov_on_work, srv) != EVX_OK) return -1;
  if (evx_http_bind(srv->http, "127.0.0.1", 0) != EVX_OK) return -1;
  srv->port = evx_http_port(srv->http);
  return 0;
}

/* The pool first: its last done callbacks finish their requests (those that
 * timed out answer EVX_ETIMEDOUT), then the server has nothing left. */
static void ov_server_free(ov_server *srv) {
  evx_executor_free(srv->ex);
  evx_http_free(srv->http);
  evx_loop_free(srv->loop);
  free(srv->ok_ms);
  free(srv->busy_ms);
}

/* ---- clients ------------------------------------------------------------------ */

typedef struct ov_sample {
  int status; /* 0: transport error */
  double ms;
} ov_sample;

typedef struct ov_client {
  const ov_config *c;
  int port;
  unsigned index;
  uint64_t start_ns;
  ov_sample *samples;
  unsigned n, cap;
} ov_client;

/* One request on a new connection; the HTTP status, or 0. */
static int ov_get(int port, unsigned ms) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  struct timeval tv = {10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int status = 0;
  char buf[1024];
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
    int n = snprintf(buf, sizeof buf,
                     "GET /work?ms=%u HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", ms);
    if (send(fd, buf, (size_t)n, MSG_NOSIGNAL) == n) {
      size_t got = 0;
      ssize_t r;
      while (got < sizeof buf - 1 && (r = recv(fd, buf + got, sizeof buf - 1 - got, 0)) > 0) {
        got += (size_t)r;
        buf[got] = '\0';
        if (strstr(buf, "\r\n\r\n")) break; /* the status line and headers are enough */
      }
      buf[got] = '\0';
      if (got > 12 && strncmp(buf, "HTTP/1.", 7) == 0) status = atoi(buf + 9);
    }
  }
  close(fd);
  return status;
}

static void ov_sleep_until(uint64_t t_ns) {
  uint64_t now = ov_now_ns();
  if (t_ns <= now) return;
  uint64_t d = t_ns - now;
  struct timespec ts = {(time_t)(d / 1000000000u), (long)(d % 1000000000u)};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

/* Open loop: request i of this client is due at start + (i * clients +
 * index) / rate, whatever the earlier ones took (a late one goes at once). */
static void *ov_client_main(void *arg) {
  ov_client *cl = arg;
  const ov_config *c = cl->c;
  unsigned total = (unsigned)(c->rate * c->seconds);
  for (unsigned i = cl->index; i < total; i += c->clients) {
    ov_sleep_until(cl->start_ns + (uint64_t)i * 1000000000u / c->rate);
    uint64_t t0 = ov_now_ns();
    int st = ov_get(cl->port, c->job_ms);
    if (cl->n == cl->cap) {
      unsigned cap = cl->cap ? cl->cap * 2 : 64;
      ov_sample *s = realloc(cl->samples, cap * sizeof *s);
      if (!s) break;
      cl->samples = s;
      cl->cap = cap;
    }
    cl->samples[cl->n++] = (ov_sample){st, (double)(ov_now_ns() - t0) / 1e6};
  }
  return NULL;
}

typedef struct ov_driver {
  ov_server *srv;
  const ov_config *c;
  ov_client *clients;
} ov_driver;

static void *ov_driver_main(void *arg) {
  ov_driver *d = arg;
  pthread_t *th = calloc(d->c->clients, sizeof *th);
  uint64_t start = ov_now_ns() + 20000000u;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  for (unsigned i = 0; i < d->c->clients; i++) {
    d->clients[i] = (ov_client){.c = d->c, .port = d->srv->port, .index = i, .start_ns = start};
    pthread_create(&th[i], &attr, ov_client_main, &d->clients[i]);
  }
  pthread_attr_destroy(&attr);
  for (unsigned i = 0; i < d->c->clients; i++) pthread_join(th[i], NULL);
  free(th);
  evx_loop_stop(d->srv->loop);
  return NULL;
}

static int ov_cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double ov_quantile(double *v, unsigned n, double q) {
  if (!n) return 0;
  qsort(v, n, sizeof *v, ov_cmp);
  unsigned i = (unsigned)(q * (double)(n - 1) + 0.5);
  return v[i < n ? i : n - 1];
}

/* Run the whole scenario on the calling thread (it becomes the loop thread). */
static int ov_run(const ov_config *cfg, ov_result *out) {
  memset(out, 0, sizeof *out);
  ov_config cc = *cfg;
  const ov_config *c = &cc;
  if (!cc.clients) {
    double slowest_s = cc.target_wait_ms ? (2.0 * cc.target_wait_ms + cc.job_ms) / 1000.0 + 0.05
                                         : cc.timeout_ms / 1000.0 + 0.1;
    cc.clients = (unsigned)(cc.rate * slowest_s) + 1;
    if (cc.clients > 1000) cc.clients = 1000;
  }
  ov_server srv;
  if (ov_server_start(&srv, c) != 0) return -1;
  /* Warm-up: a few sequential requests, so the pool knows its run time. */
  ov_config warm = *c;
  warm.rate = 20;
  warm.seconds = 0.15;
  warm.clients = 1;
  ov_client wc[1];
  ov_driver wd = {&srv, &warm, wc};
  pthread_t t;
  pthread_create(&t, NULL, ov_driver_main, &wd);
  evx_loop_run(srv.loop);
  pthread_join(t, NULL);
  free(wc[0].samples);
  evx_executor_stats st0;
  evx_executor_stats_get(srv.ex, &st0);
  evx_http_stats hs0;
  evx_http_stats_get(srv.http, &hs0);
  unsigned late0 = atomic_load(&srv.late);
  srv.nok = srv.nbusy = 0; /* the warm-up's log lines do not count */

  ov_client *cls = calloc(c->clients, sizeof *cls);
  ov_driver d = {&srv, c, cls};
  pthread_create(&t, NULL, ov_driver_main, &d);
  evx_loop_run(srv.loop);
  pthread_join(t, NULL);

  unsigned total = 0;
  for (unsigned i = 0; i < c->clients; i++) total += cls[i].n;
  double *ok = calloc(total + 1, sizeof *ok), *busy = calloc(total + 1, sizeof *busy);
  unsigned nok = 0, nbusy = 0;
  for (unsigned i = 0; i < c->clients; i++) {
    for (unsigned k = 0; k < cls[i].n; k++) {
      ov_sample s = cls[i].samples[k];
      out->sent++;
      if (s.status == 200) ok[nok++] = s.ms;
      else if (s.status == 503) {
        busy[nbusy++] = s.ms;
        if (s.ms > 10.0) out->busy_over_10ms++;
      } else if (s.status == 504) out->timeouts++;
      else if (s.status == 0) out->errors++;
      else out->other++;
    }
    free(cls[i].samples);
  }
  free(cls);
  out->ok = nok;
  out->busy = nbusy;
  out->ok_p50_ms = ov_quantile(ok, nok, 0.5);
  out->ok_p99_ms = ov_quantile(ok, nok, 0.99);
  out->ok_max_ms = nok ? ok[nok - 1] : 0;
  out->busy_p99_ms = ov_quantile(busy, nbusy, 0.99);
  out->busy_max_ms = nbusy ? busy[nbusy - 1] : 0;
  free(ok);
  free(busy);
  evx_executor_stats st;
  evx_executor_stats_get(srv.ex, &st);
  out->shed = st.shed - st0.shed;
  out->expired = st.expired - st0.expired;
  evx_http_stats hs;
  evx_http_stats_get(srv.http, &hs);
  out->http_timed_out = hs.timed_out - hs0.timed_out;
  out->late = atomic_load(&srv.late) - late0;
  out->srv_ok_p99_ms = ov_quantile(srv.ok_ms, srv.nok, 0.99);
  out->srv_busy_p99_ms = ov_quantile(srv.busy_ms, srv.nbusy, 0.99);
  out->srv_busy_max_ms = srv.nbusy ? srv.busy_ms[srv.nbusy - 1] : 0;
  ov_server_free(&srv);
  return 0;
}

#endif
