/* Clients that leave while their request is held: EOF, reset and half-close
 * are noticed, on_close runs, finish returns EVX_EGONE and releases; a job
 * running for a client that left still completes; keep-alive and pipelining
 * survive a held request; long polls are woken and cancelled. */
#include "test_http_util.h"

#include "http-test.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>

static tc_fixture F;
static sem_t held_sem, closed_sem, done_sem;
static evx_request *held_req[2048];
static int nheld;
static int close_calls, close_state;
static char log_last[256];

static void sems_init(void) {
  sem_init(&held_sem, 0, 0);
  sem_init(&closed_sem, 0, 0);
  sem_init(&done_sem, 0, 0);
  nheld = close_calls = close_state = 0;
}

static void test_log(void *arg, const evx_http_log_entry *e) {
  (void)arg;
  snprintf(log_last, sizeof log_last, "%s %s %d", e->method, e->path, e->status);
}

static void on_close_cb(evx_request *req, void *arg) {
  (void)arg;
  close_calls++;
  close_state = evx_request_state(req);
  sem_post(&closed_sem);
}

static void h_hold(evx_request *req, void *arg) {
  (void)arg;
  held_req[nheld++] = req;
  if (!evx_request_query(req, "quiet")) evx_request_on_close(req, on_close_cb, NULL);
  sem_post(&held_sem);
}

static void h_hello(evx_request *req, void *arg) {
  (void)arg;
  evx_request_finishf(req, 200, NULL, "hello %s", evx_request_path(req));
}

/* ---- the client leaves while its request is held ---------------------- */

enum { LEAVE_FIN, LEAVE_RST, LEAVE_HALF };
static int leave_rc, leave_state_seen;

static void finish_first(void *arg) {
  (void)arg;
  leave_state_seen = evx_request_state(held_req[0]);
  leave_rc = evx_request_finish(held_req[0], 200, NULL, "late", 4);
}

static void *leave_client(void *arg) {
  int how = *(int *)arg;
  int fd = tc_connect(F.port);
  tc_send(fd, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
  tc_sem_wait(&held_sem);
  if (how == LEAVE_RST) tc_reset(fd);
  else if (how == LEAVE_HALF) shutdown(fd, SHUT_WR);
  else close(fd);
  tc_sem_wait(&closed_sem); /* on_close ran on the loop */
  tc_on_loop(F.loop, finish_first, NULL);
  if (how == LEAVE_HALF) close(fd);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_client_leaves_held) {
  int how = _i;
  sems_init();
  tc_fixture_init(&F, &(evx_http_opts){.log = test_log});
  evx_http_route(F.http, "GET", "/hold", 0, h_hold, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, leave_client, &how);
  ck_assert_int_eq(close_calls, 1);
  ck_assert_int_eq(close_state, EVX_EGONE);
  ck_assert_int_eq(leave_state_seen, EVX_EGONE);
  ck_assert_int_eq(leave_rc, EVX_EGONE);
  ck_assert_str_eq(log_last, "GET /hold 499");
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.gone, 1);
  ck_assert_uint_eq(st.status[0], 1);
  ck_assert_uint_eq(st.status[2], 0);
  tc_fixture_done(&F);
}
END_TEST

/* ---- the client leaves while its job runs / waits in the queue --------- */

static evx_executor *EX;
static evx_gate gate;

typedef struct job {
  evx_request *req;
  evx_job *handle;
  int park;
  int status;
  int finish_rc;
} job;

static job jobs[2];
static int njobs, cancel_rc;

static void job_work(void *arg) {
  job *j = arg;
  if (j->park) evx_gate_park(&gate);
}

static void job_done(void *arg, int status) {
  job *j = arg;
  j->status = status;
  j->finish_rc = evx_request_finish(j->req, 200, NULL, "done", 4);
  sem_post(&done_sem);
}

static void job_client_left(evx_request *req, void *arg) {
  (void)req;
  job *j = arg;
  close_calls++;
  if (!j->park) cancel_rc = evx_job_cancel(j->handle);
  sem_post(&closed_sem);
}

static void h_job(evx_request *req, void *arg) {
  (void)arg;
  job *j = &jobs[njobs++];
  j->req = req;
  j->park = evx_request_query(req, "park") != NULL;
  ck_assert_int_eq(evx_submit_job(EX, job_work, job_done, j, &j->handle), EVX_OK);
  ck_assert_int_eq(evx_request_on_close(req, job_client_left, j), EVX_OK);
}

static tc_resp job_resp;

static void *job_client(void *arg) {
  (void)arg;
  /* request 1 parks the only worker; request 2 waits in the queue */
  int fd1 = tc_connect(F.port);
  tc_send(fd1, "GET /job?park=1 HTTP/1.1\r\nHost: t\r\n\r\n");
  evx_gate_wait_entered(&gate, 1);
  int fd2 = tc_connect(F.port);
  tc_send(fd2, "GET /job HTTP/1.1\r\nHost: t\r\n\r\n");
  /* the client of the queued job leaves: on_close cancels it */
  close(fd2);
  tc_sem_wait(&closed_sem);
  tc_sem_wait(&done_sem); /* cancelled job's done ran */
  /* the client of the running job leaves too; then its job completes */
  close(fd1);
  tc_sem_wait(&closed_sem);
  evx_gate_open(&gate, 1);
  tc_sem_wait(&done_sem);
  /* the server still serves */
  tc_get(F.port, "/hello", &job_resp);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_client_leaves_during_job) {
  sems_init();
  evx_gate_init(&gate);
  tc_fixture_init(&F, NULL);
  EX = evx_executor_new(F.loop, &(evx_executor_opts){.threads = 1});
  evx_http_route(F.http, "GET", "/job", 0, h_job, NULL);
  evx_http_route(F.http, "GET", "/hello", 0, h_hello, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, job_client, NULL);
  ck_assert_int_eq(njobs, 2);
  ck_assert_int_eq(close_calls, 2);
  ck_assert_int_eq(cancel_rc, EVX_OK);
  ck_assert_int_eq(jobs[1].status, EVX_ECANCELED);
  ck_assert_int_eq(jobs[1].finish_rc, EVX_EGONE);
  ck_assert_int_eq(jobs[0].status, EVX_OK); /* ran to the end */
  ck_assert_int_eq(jobs[0].finish_rc, EVX_EGONE);
  ck_assert_int_eq(job_resp.status, 200);
  tc_resp_free(&job_resp);
  evx_executor_free(EX);
  evx_gate_destroy(&gate);
  tc_fixture_done(&F);
}
END_TEST

/* ---- keep-alive and pipelining with a held request -------------------- */

static size_t input_buffered;
static void peek_input(void *arg) {
  (void)arg;
  evx_request *r = held_req[0];
  struct evhttp_connection *evcon = evx__request_connection(r);
  input_buffered =
      evcon ? evbuffer_get_length(bufferevent_get_input(evhttp_connection_get_bufferevent(evcon))) : 0;
}

static int ka_early;
static tc_resp ka_resp[4];
static int ka_rc[4];

static void *ka_client(void *arg) {
  (void)arg;
  int fd = tc_connect(F.port);
  static tc_conn c;
  tc_conn_init(&c, fd);
  /* A is held; B is pipelined behind it in the same packet */
  tc_send(fd, "GET /hold?quiet=1 HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n");
  tc_sem_wait(&held_sem);
  /* C arrives while A is held: the watcher moves it into evhttp's buffer */
  tc_send(fd, "GET /c HTTP/1.1\r\nHost: t\r\n\r\n");
  for (int i = 0; i < 500; i++) {
    tc_on_loop(F.loop, peek_input, NULL);
    if (input_buffered >= 2 * 28) break; /* B and C, 28 bytes each */
    tc_sleep_ms(2);
  }
  /* nothing was answered while A is held */
  struct timeval tv = {0, 50000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char b;
  ka_early = recv(fd, &b, 1, MSG_PEEK) > 0;
  tv.tv_sec = 5;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  tc_on_loop(F.loop, finish_first, NULL);
  ka_rc[0] = tc_read_resp(&c, &ka_resp[0], 0);
  ka_rc[1] = tc_read_resp(&c, &ka_resp[1], 0);
  ka_rc[2] = tc_read_resp(&c, &ka_resp[2], 0);
  /* and the connection is still usable */
  tc_send(fd, "GET /d HTTP/1.1\r\nHost: t\r\n\r\n");
  ka_rc[3] = tc_read_resp(&c, &ka_resp[3], 0);
  close(fd);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_keepalive_pipelining_with_held) {
  sems_init();
  tc_fixture_init(&F, NULL);
  evx_http_route(F.http, "GET", "/hold", 0, h_hold, NULL);
  evx_http_route(F.http, NULL, "/", EVX_ROUTE_PREFIX, h_hello, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, ka_client, NULL);
  ck_assert_uint_ge(input_buffered, 56);
  ck_assert_int_eq(ka_early, 0);
  ck_assert_int_eq(leave_rc, EVX_OK);
  const char *want[4] = {"late", "hello /b", "hello /c", "hello /d"};
  for (int i = 0; i < 4; i++) {
    ck_assert_int_eq(ka_rc[i], 0);
    ck_assert_int_eq(ka_resp[i].status, 200);
    ck_assert_str_eq(ka_resp[i].body, want[i]);
    tc_resp_free(&ka_resp[i]);
  }
  tc_fixture_done(&F);
}
END_TEST

/* ---- pipelined bytes, then the client leaves -------------------------- */

static void *pipe_leave_client(void *arg) {
  (void)arg;
  int fd = tc_connect(F.port);
  tc_send(fd, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
  tc_sem_wait(&held_sem);
  tc_send(fd, "GET /b HTTP/1.1\r\nHost: t\r\n\r\n"); /* buffered by the watcher */
  close(fd);                                          /* then EOF behind it */
  tc_sem_wait(&closed_sem);
  tc_on_loop(F.loop, finish_first, NULL);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_pipelined_then_leave) {
  sems_init();
  tc_fixture_init(&F, NULL);
  evx_http_route(F.http, "GET", "/hold", 0, h_hold, NULL);
  evx_http_route(F.http, NULL, "/", EVX_ROUTE_PREFIX, h_hello, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, pipe_leave_client, NULL);
  ck_assert_int_eq(close_calls, 1);
  ck_assert_int_eq(leave_rc, EVX_EGONE);
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.requests, 1); /* /b died with its connection */
  tc_fixture_done(&F);
}
END_TEST

/* ---- on_close registered after the client left ------------------------ */

static int late_reg_rc, late_finish_rc;
static uint64_t gone_seen;

static void check_gone(void *arg) {
  (void)arg;
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  gone_seen = st.gone;
}

static void late_register(void *arg) {
  (void)arg;
  late_reg_rc = evx_request_on_close(held_req[0], on_close_cb, NULL);
  late_finish_rc = evx_request_finish(held_req[0], 200, NULL, NULL, 0);
}

static void *late_client(void *arg) {
  (void)arg;
  int fd = tc_connect(F.port);
  tc_send(fd, "GET /hold?quiet=1 HTTP/1.1\r\nHost: t\r\n\r\n");
  tc_sem_wait(&held_sem);
  close(fd);
  for (int i = 0; i < 1000 && !gone_seen; i++) {
    tc_on_loop(F.loop, check_gone, NULL);
    if (!gone_seen) tc_sleep_ms(2);
  }
  tc_on_loop(F.loop, late_register, NULL);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_on_close_after_gone) {
  sems_init();
  tc_fixture_init(&F, NULL);
  evx_http_route(F.http, "GET", "/hold", 0, h_hold, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, late_client, NULL);
  ck_assert_uint_eq(gone_seen, 1);
  ck_assert_int_eq(late_reg_rc, EVX_EGONE);
  ck_assert_int_eq(late_finish_rc, EVX_EGONE);
  tc_spin(&F);
  ck_assert_int_eq(close_calls, 0); /* a failed registration never calls back */
  tc_fixture_done(&F);
}
END_TEST

/* ---- long polling: wake, and cancel by leaving ------------------------- */

#define NWAIT 64
#define NLEAVE_BIG 1000

static evx_condition *cond;
typedef struct waiter {
  evx_request *req;
  evx_future *f;
} waiter;
static int wait_ok, wait_gone, wait_other;

static void wait_done(evx_future *f, void *arg) {
  waiter *w = arg;
  int rc;
  if (evx_future_status(f) == EVX_OK) rc = evx_request_finish(w->req, 200, NULL, "notified", 8);
  else rc = evx_request_finish(w->req, 503, NULL, "cancelled", 9);
  if (rc == EVX_OK) wait_ok++;
  else if (rc == EVX_EGONE) wait_gone++;
  else wait_other++;
  evx_future_release(f);
  free(w);
}

static void wait_left(evx_request *req, void *arg) {
  (void)req;
  waiter *w = arg;
  evx_future_cancel(w->f);
}

static void h_wait(evx_request *req, void *arg) {
  (void)arg;
  waiter *w = calloc(1, sizeof *w);
  w->req = req;
  w->f = evx_condition_wait(cond, 10000);
  ck_assert_ptr_nonnull(w->f);
  ck_assert_int_eq(evx_future_on_done(w->f, wait_done, w), EVX_OK);
  ck_assert_int_eq(evx_request_on_close(req, wait_left, w), EVX_OK);
  sem_post(&held_sem);
}

static void h_notify(evx_request *req, void *arg) {
  (void)arg;
  evx_request_finishf(req, 200, NULL, "woke %d", evx_condition_notify_all(cond));
}

static size_t waiters_now;
static uint64_t live_now;
static void read_waiters(void *arg) {
  (void)arg;
  waiters_now = evx_condition_waiters(cond);
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  live_now = st.live;
}

static int poll_waiters(size_t want) {
  for (int i = 0; i < 2000; i++) {
    tc_on_loop(F.loop, read_waiters, NULL);
    if (waiters_now == want) return 1;
    tc_sleep_ms(2);
  }
  return 0;
}

static tc_resp notify_resp, wake_resp[NWAIT / 2];
static int waiters_after_leave, waiters_after_notify, waiters_after_big;
static uint64_t live_after_big;

static void *poll_client(void *arg) {
  (void)arg;
  int fds[NWAIT];
  for (int i = 0; i < NWAIT; i++) {
    fds[i] = tc_connect(F.port);
    tc_send(fds[i], "GET /wait HTTP/1.1\r\nHost: t\r\n\r\n");
    tc_sem_wait(&held_sem);
  }
  for (int i = 0; i < NWAIT / 2; i++) close(fds[i]); /* half of them leave */
  waiters_after_leave = poll_waiters(NWAIT / 2);
  tc_get(F.port, "/notify", &notify_resp);
  for (int i = NWAIT / 2; i < NWAIT; i++) {
    tc_conn c;
    tc_conn_init(&c, fds[i]);
    tc_read_resp(&c, &wake_resp[i - NWAIT / 2], 0);
    close(fds[i]);
  }
  waiters_after_notify = poll_waiters(0);

  /* many leavers: the condition ends up holding nothing */
  static int big[NLEAVE_BIG];
  for (int i = 0; i < NLEAVE_BIG; i++) {
    /* one at a time: a burst of connects would overflow the listen backlog
     * (128) and wait for SYN retransmits */
    big[i] = tc_connect(F.port);
    tc_send(big[i], "GET /wait HTTP/1.1\r\nHost: t\r\n\r\n");
    tc_sem_wait(&held_sem);
  }
  for (int i = 0; i < NLEAVE_BIG; i++) close(big[i]);
  waiters_after_big = poll_waiters(0);
  for (int i = 0; i < 1000 && live_now; i++) {
    tc_sleep_ms(2);
    tc_on_loop(F.loop, read_waiters, NULL);
  }
  live_after_big = live_now;
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_long_poll_wake_and_cancel) {
  sems_init();
  wait_ok = wait_gone = wait_other = 0;
  tc_fixture_init(&F, NULL);
  cond = evx_condition_new(F.loop);
  evx_http_route(F.http, "GET", "/wait", 0, h_wait, NULL);
  evx_http_route(F.http, "GET", "/notify", 0, h_notify, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, poll_client, NULL);
  ck_assert(waiters_after_leave);
  ck_assert_int_eq(notify_resp.status, 200);
  ck_assert_str_eq(notify_resp.body, "woke 32");
  tc_resp_free(&notify_resp);
  for (int i = 0; i < NWAIT / 2; i++) {
    ck_assert_int_eq(wake_resp[i].status, 200);
    ck_assert_str_eq(wake_resp[i].body, "notified");
    tc_resp_free(&wake_resp[i]);
  }
  ck_assert(waiters_after_notify);
  ck_assert(waiters_after_big);
  ck_assert_uint_eq(live_after_big, 0);
  ck_assert_int_eq(wait_ok, NWAIT / 2);
  ck_assert_int_eq(wait_gone, NWAIT / 2 + NLEAVE_BIG);
  ck_assert_int_eq(wait_other, 0);
  ck_assert_uint_eq(evx_condition_waiters(cond), 0);
  evx_condition_free(cond);
  tc_fixture_done(&F);
}
END_TEST

/* ---- the watch starts after a short delay; pipelined input is capped ---- */

static int quick_watching = -1, slow_watching = -1, cap_watching = -1;
static size_t cap_buffered;

static void finish_quick(void *arg) {
  evx_request *r = arg;
  quick_watching = evx__request_watching(r); /* answered within the watch delay: never armed */
  evx_request_finish(r, 200, NULL, "quick", 5);
}

static void h_quick(evx_request *req, void *arg) {
  (void)arg;
  evx_call_later(F.loop, 0, finish_quick, req);
}

static void read_slow(void *arg) {
  (void)arg;
  slow_watching = evx__request_watching(held_req[0]);
}

static void read_cap(void *arg) {
  (void)arg;
  evx_request *r = held_req[0];
  cap_watching = evx__request_watching(r);
  cap_buffered =
      evbuffer_get_length(bufferevent_get_input(evhttp_connection_get_bufferevent(evx__request_connection(r))));
}

static tc_resp wd_resp[2];
static int wd_eof;

static void *watch_client(void *arg) {
  (void)arg;
  tc_get(F.port, "/quick", &wd_resp[0]);
  int fd = tc_connect(F.port);
  tc_send(fd, "GET /hold?quiet=1 HTTP/1.1\r\nHost: t\r\n\r\n");
  tc_sem_wait(&held_sem);
  for (int i = 0; i < 500 && slow_watching != 1; i++) {
    tc_sleep_ms(2);
    tc_on_loop(F.loop, read_slow, NULL);
  }
  /* a client that pipelines far more than the cap while its request is held */
  static char junk[EVX__HTTP_PIPELINE_CAP + 65536];
  memset(junk, 'x', sizeof junk);
  struct timeval tv = {0, 200000};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  size_t sent = 0;
  while (sent < sizeof junk) { /* stops when flow control holds the rest back */
    ssize_t w = send(fd, junk + sent, sizeof junk - sent, MSG_NOSIGNAL);
    if (w <= 0) break;
    sent += (size_t)w;
  }
  for (int i = 0; i < 500 && cap_watching != 0; i++) {
    tc_on_loop(F.loop, read_cap, NULL);
    if (cap_watching != 0) tc_sleep_ms(2);
  }
  tc_on_loop(F.loop, finish_first, NULL);
  tc_conn c;
  tc_conn_init(&c, fd);
  tc_read_resp(&c, &wd_resp[1], 0); /* "late"; then evhttp rejects the junk */
  wd_eof = tc_wait_eof(&c);
  close(fd);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_watch_delay_and_pipeline_cap) {
  sems_init();
  tc_fixture_init(&F, NULL);
  evx_http_route(F.http, "GET", "/quick", 0, h_quick, NULL);
  evx_http_route(F.http, "GET", "/hold", 0, h_hold, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, watch_client, NULL);
  ck_assert_int_eq(wd_resp[0].status, 200);
  ck_assert_int_eq(quick_watching, 0);
  ck_assert_int_eq(slow_watching, 1); /* held longer than the delay: watched */
  ck_assert_int_eq(cap_watching, 0);  /* stopped at the cap */
  ck_assert_uint_ge(cap_buffered, EVX__HTTP_PIPELINE_CAP);
  ck_assert_uint_le(cap_buffered, EVX__HTTP_PIPELINE_CAP + 4096);
  ck_assert_int_eq(leave_rc, EVX_OK);
  ck_assert_int_eq(wd_resp[1].status, 200);
  ck_assert_str_eq(wd_resp[1].body, "late");
  ck_assert(wd_eof);
  for (int i = 0; i < 2; i++) tc_resp_free(&wd_resp[i]);
  tc_fixture_done(&F);
}
END_TEST

static Suite *close_suite(void) {
  Suite *s = suite_create("http_close");
  TCase *tc = tcase_create("close");
  tcase_set_timeout(tc, 30);
  tcase_add_loop_test(tc, test_client_leaves_held, LEAVE_FIN, LEAVE_HALF + 1);
  tcase_add_test(tc, test_client_leaves_during_job);
  tcase_add_test(tc, test_keepalive_pipelining_with_held);
  tcase_add_test(tc, test_pipelined_then_leave);
  tcase_add_test(tc, test_on_close_after_gone);
  tcase_add_test(tc, test_long_poll_wake_and_cancel);
  tcase_add_test(tc, test_watch_delay_and_pipeline_cap);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return evx_test_main(close_suite()); }
