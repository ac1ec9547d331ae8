/*
 * Out of memory along a realistic HTTP path: for every N, fail the Nth
 * allocation of a whole server life - loop, executor, server, routes, bind,
 * a keep-alive connection with a request whose handler submits a job and
 * finishes from its done, a request with a query and a large formatted reply,
 * a 404, then teardown - and check that
 *   - each public call that fails says EVX_ENOMEM (or NULL) and only when an
 *     allocation really failed inside it;
 *   - the client always gets an answer (200, or 500/503 when the server ran
 *     out of memory for that request) or a closed connection - never a hang;
 *   - nothing leaks: after teardown the live byte count of evexec's and
 *     libevent's heaps is back to zero and evx_request_live_count() is 0.
 * N runs from 1 until a run in which no allocation failed (the path has
 * fewer than N allocations), so every allocation on the path is failed once.
 *
 * Two scopes:
 *  - every evexec allocation (evx_set_allocator) on that path;
 *  - libevent's allocations (event_set_mem_functions) made inside the evexec
 *    calls on that path (evx_loop_new's event_base, evx_http_new's evhttp,
 *    the reply buffers of finish). Not those of evhttp's own connection
 *    handling (accept, parse) nor of bind's listener: libevent 2.1 crashes on
 *    some of its own out-of-memory paths there (evhttp_connection_base_bufferevent_new
 *    frees a half-built connection) or reports success for a listener it
 *    could not enable, which evexec cannot change.
 * tests/test_allocator.c covers the core calls (loop, executor, futures).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <evexec/http.h>
#include <netinet/in.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "evx_test.h"
#include "evx_test_alloc.h"

#define MAX_N 5000

/* ---- server side ------------------------------------------------------- */

typedef struct job {
  evx_request *req;
} job;

/* An evexec call inside a window: with TA_WINDOW armed, libevent's
 * allocations count (and may fail) only there. */
#define IN_WINDOW(expr) (ta_window(1), (expr), ta_window(0))

static void job_work(void *arg) { (void)arg; }

static void job_done(void *arg, int status) {
  job *j = arg;
  if (status == EVX_OK) IN_WINDOW(evx_request_finish(j->req, 200, NULL, "done\n", 5));
  else IN_WINDOW(evx_request_finish(j->req, 500, NULL, NULL, 0));
  evx_free(j);
}

static void h_job(evx_request *req, void *arg) {
  evx_executor *ex = arg;
  job *j = evx_malloc(sizeof *j);
  if (!j) {
    IN_WINDOW(evx_request_finish(req, 500, NULL, "no memory\n", 10));
    return;
  }
  j->req = req;
  int rc = evx_submit(ex, job_work, job_done, j);
  if (rc == EVX_OK) return; /* held until done */
  evx_free(j);
  if (rc == EVX_EBUSY) IN_WINDOW(evx_request_reply_busy(req, 1));
  else IN_WINDOW(evx_request_finish(req, 500, NULL, NULL, 0));
}

static void h_echo(evx_request *req, void *arg) {
  (void)arg;
  const char *q = evx_request_query(req, "q");
  const char *ua = evx_request_header(req, "User-Agent");
  /* Larger than any small inline buffer: finishf must allocate. */
  IN_WINDOW(evx_request_finishf(req, 200, NULL, "q=%s ua=%s pad=%0600d\n", q ? q : "-",
                                ua ? ua : "-", 7));
}

/* ---- client thread ----------------------------------------------------- */

typedef struct client {
  int port;
  evx_loop *loop;
  int status[3]; /* per request: HTTP status, 0 closed, -1 timed out / no connect */
} client;

static int cl_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct timeval tv = {3, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* Send one request and read one response (Content-Length framed). Returns
 * the status, 0 when the server closed first, -1 on timeout/error. */
static int cl_roundtrip(int fd, const char *reqtext) {
  size_t n = strlen(reqtext);
  if (send(fd, reqtext, n, MSG_NOSIGNAL) != (ssize_t)n) return 0;
  char buf[4096];
  size_t len = 0;
  for (;;) {
    ssize_t m = recv(fd, buf + len, sizeof buf - 1 - len, 0);
    if (m == 0) return 0;
    if (m < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? -1 : 0;
    len += (size_t)m;
    buf[len] = '\0';
    char *end = strstr(buf, "\r\n\r\n");
    if (!end) {
      if (len == sizeof buf - 1) return -1;
      continue;
    }
    int status = (len > 12 && memcmp(buf, "HTTP/1.", 7) == 0) ? atoi(buf + 9) : 0;
    const char *cl = strcasestr(buf, "\r\nContent-Length:");
    size_t body = cl ? (size_t)strtoul(cl + 17, NULL, 10) : 0;
    size_t have = len - (size_t)(end + 4 - buf);
    while (have < body) { /* drain the body */
      m = recv(fd, buf, sizeof buf, 0);
      if (m <= 0) return m == 0 ? 0 : -1;
      have += (size_t)m;
    }
    return status;
  }
}

static void *client_main(void *arg) {
  client *c = arg;
  static const char *reqs[3] = {
      "GET /job HTTP/1.1\r\nHost: t\r\n\r\n",
      "GET /echo?q=a%20b&x=1&y HTTP/1.1\r\nHost: t\r\nUser-Agent: oom-test\r\n\r\n",
      "GET /nothing-here HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
  };
  int fd = -1;
  for (int i = 0; i < 3; i++) {
    if (fd < 0) fd = cl_connect(c->port);
    if (fd < 0) {
      c->status[i] = -1;
      continue;
    }
    c->status[i] = cl_roundtrip(fd, reqs[i]);
    if (c->status[i] <= 0) { /* closed or broken: a fresh connection for the next one */
      close(fd);
      fd = -1;
    }
  }
  if (fd >= 0) close(fd);
  /* Stop the loop; a failed allocation here is retried (only one fails). */
  while (evx_add_callback(c->loop, evx_test_stop_cb, c->loop) == EVX_ENOMEM) {
  }
  return NULL;
}

/* ---- one server life with the Nth allocation failing ------------------- */

typedef struct outcome {
  int fired;      /* the Nth allocation happened (and failed) */
  int stage;      /* how far setup got: 0 loop .. 6 served */
  int status[3];
  long allocs;    /* allocations counted in scope */
} outcome;

/* A failing call must fail because of the injected failure, with `want`. */
#define EXPECT_FAIL(rc, want)                                                               \
  ck_assert_msg((rc) == (want) && ta_fired(), "N=%ld: %s = %s (fired=%d)", n, #rc,         \
                evx_err_name(rc), ta_fired())

static outcome server_life(int scope, long n) {
  outcome o = {0};
  evx_loop *loop = NULL;
  evx_executor *ex = NULL;
  evx_http *http = NULL;
  ta_arm(scope, n);

  IN_WINDOW(loop = evx_loop_new(NULL));
  if (!loop) {
    ck_assert_msg(ta_fired(), "N=%ld: evx_loop_new NULL without a failed allocation", n);
    goto out;
  }
  o.stage = 1;
  IN_WINDOW(ex = evx_executor_new(loop, &(evx_executor_opts){.threads = 1, .max_queue = 4, .name = "oom"}));
  if (!ex) {
    ck_assert_msg(ta_fired(), "N=%ld: evx_executor_new NULL without a failed allocation", n);
    goto out;
  }
  o.stage = 2;
  IN_WINDOW(http = evx_http_new(loop, &(evx_http_opts){.request_timeout_ms = 2000, .idle_timeout_ms = 2000}));
  if (!http) {
    ck_assert_msg(ta_fired(), "N=%ld: evx_http_new NULL without a failed allocation", n);
    goto out;
  }
  o.stage = 3;
  int rc;
  IN_WINDOW(rc = evx_http_route(http, "GET", "/job", 0, h_job, ex));
  if (rc != EVX_OK) {
    EXPECT_FAIL(rc, EVX_ENOMEM);
    goto out;
  }
  IN_WINDOW(rc = evx_http_route(http, NULL, "/echo", EVX_ROUTE_PREFIX, h_echo, NULL));
  if (rc != EVX_OK) {
    EXPECT_FAIL(rc, EVX_ENOMEM);
    goto out;
  }
  o.stage = 4;
  /* Outside the window: libevent 2.1's evconnlistener_set_cb ignores a failed
   * evconnlistener_enable, so evhttp_bind_socket_with_handle reports success
   * for a listener that never accepts - nothing evexec can see. */
  rc = evx_http_bind(http, "127.0.0.1", 0);
  if (rc != EVX_OK) {
    ck_assert_msg((rc == EVX_ENOMEM || rc == EVX_EIO) && ta_fired(), "N=%ld: bind = %s", n,
                  evx_err_name(rc));
    goto out;
  }
  o.stage = 5;

  client c = {.port = evx_http_port(http), .loop = loop};
  ck_assert_int_gt(c.port, 0);
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, client_main, &c), 0);
  rc = evx_loop_run(loop);
  pthread_join(th, NULL);
  ck_assert_msg(rc == EVX_OK, "N=%ld: evx_loop_run = %s", n, evx_err_name(rc));
  o.stage = 6;
  memcpy(o.status, c.status, sizeof o.status);

out:
  o.fired = ta_fired();
  o.allocs = ta_count();
  ta_disarm();
  evx_http_free(http);
  evx_executor_free(ex);
  evx_loop_free(loop);
  return o;
}

static void check_statuses(long n, const outcome *o, int strict) {
  static const int want[3] = {200, 200, 404};
  for (int i = 0; i < 3; i++) {
    int st = o->status[i];
    if (!o->fired) {
      ck_assert_msg(st == want[i], "N=%ld: request %d got %d with no failed allocation", n, i, st);
      continue;
    }
    /* Never a hang: an answer or a close. */
    ck_assert_msg(st != -1, "N=%ld: request %d got no answer and no close", n, i);
    if (strict)
      ck_assert_msg(st == want[i] || st == 500 || st == 503 || st == 0,
                    "N=%ld: request %d: status %d", n, i, st);
  }
}

static void run_scope(int scope, const char *name) {
  long n;
  int by_stage[7] = {0};
  int answered_500 = 0, closed = 0;
  long total = 0;
  for (n = 1; n <= MAX_N; n++) {
    outcome o = server_life(scope, n);
    ck_assert_msg(ta_bytes() == 0, "%s N=%ld (stage %d): %lld bytes leaked", name, n, o.stage,
                  ta_bytes());
    ck_assert_msg(evx_request_live_count() == 0, "%s N=%ld: %llu requests leaked", name, n,
                  (unsigned long long)evx_request_live_count());
    if (o.stage == 6) check_statuses(n, &o, scope == TA_EVX);
    if (!o.fired) {
      ck_assert_int_eq(o.stage, 6);
      total = o.allocs;
      break;
    }
    by_stage[o.stage]++;
    for (int i = 0; i < 3 && o.stage == 6; i++) {
      if (o.status[i] == 500) answered_500++;
      if (o.status[i] == 0) closed++;
    }
  }
  ck_assert_msg(n <= MAX_N, "%s: still failing allocations at N=%d", name, MAX_N);
  ck_assert_int_gt(total, 10);
  fprintf(stderr,
          "oom_http scope=%s allocations=%ld runs=%ld failed_in: loop=%d executor=%d http_new=%d "
          "route=%d bind=%d request_path=%d | answers_500=%d closes=%d\n",
          name, total, n, by_stage[0], by_stage[1], by_stage[2], by_stage[3], by_stage[4],
          by_stage[5] + by_stage[6], answered_500, closed);
}

START_TEST(oom_evexec_allocations) { run_scope(TA_EVX, "evexec"); }
END_TEST

START_TEST(oom_libevent_inside_evexec_calls) { run_scope(TA_LIBEVENT | TA_WINDOW, "libevent"); }
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("oom_http");
  TCase *tc = tcase_create("oom");
  tcase_set_timeout(tc, 100);
  tcase_add_test(tc, oom_evexec_allocations);
  tcase_add_test(tc, oom_libevent_inside_evexec_calls);
  suite_add_tcase(s, tc);
  return s;
}

static void quiet_log(int severity, const char *msg) {
  (void)severity;
  (void)msg; /* libevent's "calloc failed" warnings are expected here */
}

int main(void) {
  if (ta_install() != 0) return EXIT_FAILURE;
  event_set_log_callback(quiet_log);
  return evx_test_main(suite());
}
