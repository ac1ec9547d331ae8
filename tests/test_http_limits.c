/* Limits: header size (431, and 400 far above), body size (413), max held
 * requests (503), a busy executor (503 + Retry-After through
 * evx_request_reply_busy), the request timeout (504, then finish says
 * EVX_ETIMEDOUT) and the idle keep-alive timeout. */
#include "test_http_util.h"

static tc_fixture F;
static sem_t held_sem, closed_sem;
static evx_request *held[8];
static int nheld;
static char log_last[128];

static void test_log(void *arg, const evx_http_log_entry *e) {
  (void)arg;
  snprintf(log_last, sizeof log_last, "%s %s %d %llu", e->method, e->path, e->status,
           (unsigned long long)e->bytes);
}

static void h_hello(evx_request *req, void *arg) {
  (void)arg;
  size_t n;
  evx_request_body(req, &n);
  evx_request_finishf(req, 200, NULL, "ok %zu", n);
}

static int close_state;
static void on_closed(evx_request *req, void *arg) {
  (void)arg;
  close_state = evx_request_state(req);
  sem_post(&closed_sem);
}

static void h_hold(evx_request *req, void *arg) {
  (void)arg;
  held[nheld++] = req;
  evx_request_on_close(req, on_closed, NULL);
  sem_post(&held_sem);
}

static void finish_all(void *arg) {
  int *rcs = arg;
  for (int i = 0; i < nheld; i++) rcs[i] = evx_request_finish(held[i], 200, NULL, "late", 4);
}

/* ---- header and body size --------------------------------------------- */

static tc_resp sz_resp[5];
static int sz_eof_big;

static char *make_req(const char *method, const char *path, size_t hdr_bytes, size_t body_bytes) {
  char *big = malloc(hdr_bytes + 1);
  memset(big, 'h', hdr_bytes);
  big[hdr_bytes] = '\0';
  size_t cap = hdr_bytes + body_bytes + 256;
  char *raw = malloc(cap);
  int n = snprintf(raw, cap, "%s %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n%s%s%s"
                   "Content-Length: %zu\r\n\r\n",
                   method, path, hdr_bytes ? "X-Big: " : "", big, hdr_bytes ? "\r\n" : "",
                   body_bytes);
  memset(raw + n, 'b', body_bytes);
  raw[(size_t)n + body_bytes] = '\0';
  free(big);
  return raw;
}

static void *size_client(void *arg) {
  (void)arg;
  char *r0 = make_req("GET", "/hello", 500, 0);
  char *r1 = make_req("GET", "/hello", 1500, 0);  /* > 1024: 431 from evexec */
  char *r2 = make_req("POST", "/hello", 0, 900);  /* body within 1000 */
  char *r3 = make_req("POST", "/hello", 0, 1500); /* body above 1000: 413 */
  char *r4 = make_req("GET", "/hello", 3000, 0);  /* > 2 x 1024: evhttp cuts it off */
  tc_request(F.port, r0, &sz_resp[0]);
  tc_request(F.port, r1, &sz_resp[1]);
  tc_request(F.port, r2, &sz_resp[2]);
  tc_request(F.port, r3, &sz_resp[3]);
  int fd = tc_connect(F.port);
  tc_send(fd, r4);
  tc_conn c;
  tc_conn_init(&c, fd);
  tc_read_resp(&c, &sz_resp[4], 0);
  sz_eof_big = tc_wait_eof(&c);
  close(fd);
  free(r0), free(r1), free(r2), free(r3), free(r4);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_header_and_body_size) {
  tc_fixture_init(&F, &(evx_http_opts){.max_header_size = 1024, .max_body_size = 1000,
                                       .log = test_log});
  evx_http_route(F.http, NULL, "/hello", 0, h_hello, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, size_client, NULL);
  ck_assert_int_eq(sz_resp[0].status, 200);
  ck_assert_int_eq(sz_resp[1].status, 431);
  ck_assert_int_eq(sz_resp[2].status, 200);
  ck_assert_str_eq(sz_resp[2].body, "ok 900");
  ck_assert_int_eq(sz_resp[3].status, 413);
  ck_assert_str_eq(sz_resp[3].body, "Payload Too Large\n");
  ck_assert_str_eq(tc_header(&sz_resp[3], "Content-Type"), "text/plain; charset=utf-8");
  ck_assert_int_eq(sz_resp[4].status, 400);
  ck_assert(sz_eof_big);
  for (int i = 0; i < 5; i++) tc_resp_free(&sz_resp[i]);
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.requests, 3); /* 413 and 400 never become requests */
  /* the 413 is evexec's own (text, before the body is read), logged and
   * counted like the 431; evhttp's cut-off 400 is not */
  ck_assert_uint_eq(st.status[4], 2);
  ck_assert_str_eq(log_last, "POST - 413 18"); /* its body bytes, as for other replies */
  tc_fixture_done(&F);
}
END_TEST

/* ---- max_held --------------------------------------------------------- */

static tc_resp mh_resp[3];
static int mh_finish_rc[8];
static char mh_retry[32];

static void *max_held_client(void *arg) {
  (void)arg;
  int fds[2];
  for (int i = 0; i < 2; i++) {
    fds[i] = tc_connect(F.port);
    tc_send(fds[i], "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    tc_sem_wait(&held_sem);
  }
  tc_get(F.port, "/hold", &mh_resp[0]);  /* a third held request: 503 */
  tc_get(F.port, "/hello", &mh_resp[1]); /* a route holding nothing is served while full (issue #11) */
  const char *ra = tc_header(&mh_resp[0], "Retry-After");
  snprintf(mh_retry, sizeof mh_retry, "%.31s", ra ? ra : "(none)");
  tc_on_loop(F.loop, finish_all, mh_finish_rc);
  for (int i = 0; i < 2; i++) {
    tc_resp r;
    tc_conn c;
    tc_conn_init(&c, fds[i]);
    tc_read_resp(&c, &r, 0);
    tc_resp_free(&r);
    close(fds[i]);
  }
  tc_get(F.port, "/hello", &mh_resp[2]); /* room again */
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_max_held) {
  sem_init(&held_sem, 0, 0);
  sem_init(&closed_sem, 0, 0);
  nheld = 0;
  tc_fixture_init(&F, &(evx_http_opts){.max_held = 2, .busy_retry_after_s = 3});
  evx_http_route(F.http, NULL, "/hello", 0, h_hello, NULL);
  evx_http_route(F.http, NULL, "/hold", 0, h_hold, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, max_held_client, NULL);
  ck_assert_int_eq(nheld, 2);
  ck_assert_int_eq(mh_resp[0].status, 503);
  ck_assert_str_eq(mh_retry, "3");
  ck_assert_int_eq(mh_resp[1].status, 200);
  ck_assert_int_eq(mh_resp[2].status, 200);
  ck_assert_int_eq(mh_finish_rc[0], EVX_OK);
  ck_assert_int_eq(mh_finish_rc[1], EVX_OK);
  for (int i = 0; i < 3; i++) tc_resp_free(&mh_resp[i]);
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.rejected_busy, 1);
  tc_fixture_done(&F);
}
END_TEST

/* ---- a busy executor -------------------------------------------------- */

static evx_executor *EX;
static evx_gate gate;
static int busy_rc;

static void park_work(void *arg) {
  (void)arg;
  evx_gate_park(&gate);
}
static void park_done(void *arg, int status) {
  (void)status;
  evx_request_finish(arg, 200, NULL, "worked", 6);
}

static void h_work(evx_request *req, void *arg) {
  (void)arg;
  int rc = evx_submit(EX, park_work, park_done, req);
  if (rc == EVX_EBUSY) busy_rc = evx_request_reply_busy(req, 2);
  else ck_assert_int_eq(rc, EVX_OK);
}

static tc_resp busy_resp[3];
static char busy_retry[32];

static void *busy_client(void *arg) {
  (void)arg;
  int f1 = tc_connect(F.port), f2;
  tc_send(f1, "GET /work HTTP/1.1\r\nHost: t\r\n\r\n");
  evx_gate_wait_entered(&gate, 1); /* the only worker is parked */
  f2 = tc_connect(F.port);
  tc_send(f2, "GET /work HTTP/1.1\r\nHost: t\r\n\r\n"); /* fills the queue (max_queue 1) */
  /* the third finds the queue full; retry until the second is queued */
  for (int i = 0; i < 200; i++) {
    tc_get(F.port, "/work", &busy_resp[2]);
    if (busy_resp[2].status == 503) break;
    tc_resp_free(&busy_resp[2]);
  }
  const char *ra = tc_header(&busy_resp[2], "Retry-After");
  snprintf(busy_retry, sizeof busy_retry, "%.31s", ra ? ra : "(none)");
  evx_gate_open(&gate, 2);
  tc_conn c;
  tc_conn_init(&c, f1);
  tc_read_resp(&c, &busy_resp[0], 0);
  tc_conn_init(&c, f2);
  tc_read_resp(&c, &busy_resp[1], 0);
  close(f1);
  close(f2);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_busy_executor_503) {
  evx_gate_init(&gate);
  tc_fixture_init(&F, NULL);
  EX = evx_executor_new(F.loop, &(evx_executor_opts){.threads = 1, .max_queue = 1});
  evx_http_route(F.http, "GET", "/work", 0, h_work, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, busy_client, NULL);
  ck_assert_int_eq(busy_resp[0].status, 200);
  ck_assert_int_eq(busy_resp[1].status, 200);
  ck_assert_int_eq(busy_resp[2].status, 503);
  ck_assert_str_eq(busy_retry, "2");
  ck_assert_int_eq(busy_rc, EVX_OK);
  for (int i = 0; i < 3; i++) tc_resp_free(&busy_resp[i]);
  evx_executor_free(EX);
  evx_gate_destroy(&gate);
  tc_fixture_done(&F);
}
END_TEST

/* ---- request timeout -------------------------------------------------- */

static tc_resp to_resp;
static int to_eof, to_finish_rc[8];
static char to_log[128];

static void *timeout_client(void *arg) {
  (void)arg;
  int fd = tc_connect(F.port);
  tc_send(fd, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
  tc_conn c;
  tc_conn_init(&c, fd);
  tc_read_resp(&c, &to_resp, 0); /* arrives after ~150 ms */
  to_eof = tc_wait_eof(&c);
  close(fd);
  tc_sem_wait(&closed_sem);
  memcpy(to_log, log_last, sizeof to_log);
  tc_on_loop(F.loop, finish_all, to_finish_rc);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_request_timeout) {
  sem_init(&held_sem, 0, 0);
  sem_init(&closed_sem, 0, 0);
  nheld = 0;
  tc_fixture_init(&F, &(evx_http_opts){.request_timeout_ms = 150, .log = test_log});
  evx_http_route(F.http, NULL, "/hold", 0, h_hold, NULL);
  tc_fixture_bind(&F);
  uint64_t t0 = evx_now_ns();
  tc_fixture_run(&F, timeout_client, NULL);
  uint64_t ms = (evx_now_ns() - t0) / 1000000;
  ck_assert_int_eq(to_resp.status, 504);
  ck_assert(to_eof);
  ck_assert_uint_ge(ms, 140);
  ck_assert_int_eq(close_state, EVX_ETIMEDOUT);
  ck_assert_str_eq(to_log, "GET /hold 504 16"); /* "request timeout\n" */
  ck_assert_int_eq(to_finish_rc[0], EVX_ETIMEDOUT);
  tc_resp_free(&to_resp);
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.timed_out, 1);
  ck_assert_uint_eq(st.status[5], 1);
  tc_fixture_done(&F);
}
END_TEST

/* ---- idle keep-alive timeout ------------------------------------------ */

static uint64_t idle_ms_silent, idle_ms_after;
static int idle_eof_silent, idle_eof_after;
static tc_resp idle_resp[2];
static int idle_finish_rc[8];

static void *idle_client(void *arg) {
  (void)arg;
  /* a connection that never sends anything */
  uint64_t t0 = evx_now_ns();
  int fd = tc_connect(F.port);
  tc_conn c;
  tc_conn_init(&c, fd);
  idle_eof_silent = tc_wait_eof(&c);
  idle_ms_silent = (evx_now_ns() - t0) / 1000000;
  close(fd);
  /* a held request outlives the idle timeout; afterwards the idle timer runs again */
  fd = tc_connect(F.port);
  tc_conn_init(&c, fd);
  tc_send(fd, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
  tc_sem_wait(&held_sem);
  tc_sleep_ms(400); /* twice the idle timeout: time is the subject here */
  tc_on_loop(F.loop, finish_all, idle_finish_rc);
  tc_read_resp(&c, &idle_resp[0], 0);
  t0 = evx_now_ns();
  idle_eof_after = tc_wait_eof(&c);
  idle_ms_after = (evx_now_ns() - t0) / 1000000;
  close(fd);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_idle_timeout) {
  sem_init(&held_sem, 0, 0);
  sem_init(&closed_sem, 0, 0);
  nheld = 0;
  tc_fixture_init(&F, &(evx_http_opts){.idle_timeout_ms = 200});
  evx_http_route(F.http, NULL, "/hold", 0, h_hold, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, idle_client, NULL);
  ck_assert(idle_eof_silent);
  ck_assert_uint_ge(idle_ms_silent, 150);
  ck_assert_uint_lt(idle_ms_silent, 3000);
  ck_assert_int_eq(idle_finish_rc[0], EVX_OK);
  ck_assert_int_eq(idle_resp[0].status, 200);
  ck_assert_str_eq(idle_resp[0].body, "late");
  ck_assert(idle_eof_after);
  ck_assert_uint_lt(idle_ms_after, 3000);
  tc_resp_free(&idle_resp[0]);
  tc_fixture_done(&F);
}
END_TEST

static Suite *limits_suite(void) {
  Suite *s = suite_create("http_limits");
  TCase *tc = tcase_create("limits");
  tcase_set_timeout(tc, 20);
  tcase_add_test(tc, test_header_and_body_size);
  tcase_add_test(tc, test_max_held);
  tcase_add_test(tc, test_busy_executor_503);
  tcase_add_test(tc, test_request_timeout);
  tcase_add_test(tc, test_idle_timeout);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return evx_test_main(limits_suite()); }
