/* Slow and flooding clients: the header deadline (a slowloris sending one
 * byte at a time is answered 408 and closed, though every byte would restart
 * an idle timer), the body deadline, the connection cap shedding the
 * connection idle the longest, and held-request limits that keep long polls
 * from shutting out other routes. Raw sockets; time is the subject here. */
#include "test_http_util.h"

static tc_fixture F;
static sem_t held_sem;
static evx_request *held[16];
static int nheld;

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void h_hello(evx_request *req, void *arg) {
  (void)arg;
  evx_request_finish(req, 200, NULL, "hello", 5);
}

static void h_hold(evx_request *req, void *arg) {
  (void)arg;
  held[nheld++] = req;
  sem_post(&held_sem);
}

static void finish_all(void *arg) {
  (void)arg;
  for (int i = 0; i < nheld; i++) evx_request_finish(held[i], 200, NULL, "late", 4);
  nheld = 0;
}

/* ---- header deadline (slowloris) --------------------------------------- */

#define NSLOW 5
static tc_resp slow_resp[NSLOW];
static int slow_eof[NSLOW];
static uint64_t slow_ms[NSLOW];
static tc_resp fast_resp;

static void *slowloris_client(void *arg) {
  (void)arg;
  static const char head[] = "GET /hello HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
  int fds[NSLOW];
  uint64_t t0 = now_ms();
  for (int i = 0; i < NSLOW; i++) fds[i] = tc_connect(F.port);
  /* one byte per connection every 20 ms: each connection is never idle for
   * more than 100 ms (the idle timeout is 1 s), but its head never ends */
  size_t k = 0;
  char peek;
  while (now_ms() - t0 < 1500 && k < sizeof head - 1 &&
         recv(fds[NSLOW - 1], &peek, 1, MSG_PEEK | MSG_DONTWAIT) < 0) {
    for (int i = 0; i < NSLOW; i++) send(fds[i], head + k, 1, MSG_NOSIGNAL);
    k++;
    tc_sleep_ms(20);
    if (k == 10) tc_get(F.port, "/hello", &fast_resp); /* others are served meanwhile */
  }
  for (int i = 0; i < NSLOW; i++) {
    tc_conn c;
    tc_conn_init(&c, fds[i]);
    tc_read_resp(&c, &slow_resp[i], 0);
    slow_eof[i] = tc_wait_eof(&c);
    slow_ms[i] = now_ms() - t0;
    close(fds[i]);
  }
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_header_deadline) {
  tc_fixture_init(&F, &(evx_http_opts){.header_timeout_ms = 400, .idle_timeout_ms = 1000});
  evx_http_route(F.http, NULL, "/hello", 0, h_hello, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, slowloris_client, NULL);
  ck_assert_int_eq(fast_resp.status, 200);
  tc_resp_free(&fast_resp);
  for (int i = 0; i < NSLOW; i++) {
    ck_assert_int_eq(slow_resp[i].status, 408);
    ck_assert(slow_eof[i]);
    ck_assert_uint_ge(slow_ms[i], 380);
    ck_assert_uint_lt(slow_ms[i], 1400);
    tc_resp_free(&slow_resp[i]);
  }
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.header_timeouts, NSLOW);
  tc_fixture_done(&F);
}
END_TEST

/* ---- body deadline ------------------------------------------------------ */

static tc_resp body_resp, body_ok;
static int body_eof;
static uint64_t body_ms;

static void *body_client(void *arg) {
  (void)arg;
  int fd = tc_connect(F.port);
  uint64_t t0 = now_ms();
  tc_send(fd, "POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab");
  for (int i = 0; i < 6; i++) { /* a byte every 100 ms: never idle, never done */
    tc_sleep_ms(100);
    send(fd, "c", 1, MSG_NOSIGNAL);
  }
  tc_conn c;
  tc_conn_init(&c, fd);
  tc_read_resp(&c, &body_resp, 0);
  body_eof = tc_wait_eof(&c);
  body_ms = now_ms() - t0;
  close(fd);
  tc_request(F.port, "POST /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc",
             &body_ok);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_body_deadline) {
  tc_fixture_init(&F, &(evx_http_opts){.body_timeout_ms = 300, .idle_timeout_ms = 1000});
  evx_http_route(F.http, NULL, "/hello", 0, h_hello, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, body_client, NULL);
  ck_assert_int_eq(body_resp.status, 408);
  ck_assert(body_eof);
  ck_assert_uint_ge(body_ms, 280);
  ck_assert_uint_lt(body_ms, 1000);
  ck_assert_int_eq(body_ok.status, 200);
  tc_resp_free(&body_resp);
  tc_resp_free(&body_ok);
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.body_timeouts, 1);
  tc_fixture_done(&F);
}
END_TEST

/* ---- connection cap ------------------------------------------------------ */

static int cap_eof[5];
static tc_resp cap_resp[3];

static int closed_soon(int fd) {
  struct timeval tv = {0, 300000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char b[256];
  ssize_t n = recv(fd, b, sizeof b, 0);
  return n == 0 || (n < 0 && errno == ECONNRESET);
}

static void *cap_client(void *arg) {
  (void)arg;
  int fd[5];
  fd[0] = tc_connect(F.port); /* idle the longest */
  tc_sleep_ms(30);
  fd[1] = tc_connect(F.port); /* holds a request: never shed */
  tc_send(fd[1], "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
  tc_sem_wait(&held_sem);
  fd[2] = tc_connect(F.port); /* served once: idle since */
  tc_send(fd[2], "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
  tc_conn c2;
  tc_conn_init(&c2, fd[2]);
  tc_read_resp(&c2, &cap_resp[0], 0);
  tc_sleep_ms(30);
  fd[3] = tc_connect(F.port); /* the 4th: above the cap of 3, fd[0] goes */
  cap_eof[0] = closed_soon(fd[0]);
  fd[4] = tc_connect(F.port); /* the 5th: fd[2] goes next (fd[1] is busy) */
  cap_eof[2] = closed_soon(fd[2]);
  cap_eof[1] = closed_soon(fd[1]); /* still open: times out reading */
  tc_send(fd[4], "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
  tc_conn c4;
  tc_conn_init(&c4, fd[4]);
  tc_read_resp(&c4, &cap_resp[1], 0);
  tc_on_loop(F.loop, finish_all, NULL);
  tc_conn c1;
  tc_conn_init(&c1, fd[1]);
  tc_read_resp(&c1, &cap_resp[2], 0);
  for (int i = 0; i < 5; i++) close(fd[i]);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_connection_cap) {
  tc_fixture_init(&F, &(evx_http_opts){.max_connections = 3});
  evx_http_route(F.http, NULL, "/hello", 0, h_hello, NULL);
  evx_http_route(F.http, NULL, "/hold", 0, h_hold, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, cap_client, NULL);
  ck_assert(cap_eof[0]);
  ck_assert(cap_eof[2]);
  ck_assert(!cap_eof[1]);
  ck_assert_int_eq(cap_resp[0].status, 200);
  ck_assert_int_eq(cap_resp[1].status, 200);
  ck_assert_int_eq(cap_resp[2].status, 200);
  ck_assert_str_eq(cap_resp[2].body, "late");
  for (int i = 0; i < 3; i++) tc_resp_free(&cap_resp[i]);
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.shed, 2);
  tc_fixture_done(&F);
}
END_TEST

/* ---- held limits per route ------------------------------------------------ */

static tc_resp rl_resp[4];

static void *route_limit_client(void *arg) {
  (void)arg;
  int fds[6];
  for (int i = 0; i < 4; i++) { /* four long polls fill /wait (limit 4) and the server (4) */
    fds[i] = tc_connect(F.port);
    tc_send(fds[i], "GET /wait HTTP/1.1\r\nHost: t\r\n\r\n");
    tc_sem_wait(&held_sem);
  }
  tc_get(F.port, "/wait", &rl_resp[0]);  /* the route's limit: 503 */
  tc_get(F.port, "/hello", &rl_resp[1]); /* holds nothing: served */
  fds[4] = tc_connect(F.port);           /* /work holds nothing yet: served */
  tc_send(fds[4], "GET /work HTTP/1.1\r\nHost: t\r\n\r\n");
  tc_sem_wait(&held_sem);
  tc_get(F.port, "/work", &rl_resp[2]); /* /work holds one and the server is full: 503 */
  tc_on_loop(F.loop, finish_all, NULL);
  for (int i = 0; i < 5; i++) {
    tc_conn c;
    tc_conn_init(&c, fds[i]);
    tc_resp r;
    tc_read_resp(&c, &r, 0);
    tc_resp_free(&r);
    close(fds[i]);
  }
  int fd = tc_connect(F.port); /* room again */
  tc_send(fd, "GET /wait HTTP/1.1\r\nHost: t\r\n\r\n");
  tc_sem_wait(&held_sem);
  tc_on_loop(F.loop, finish_all, NULL);
  tc_conn c;
  tc_conn_init(&c, fd);
  tc_read_resp(&c, &rl_resp[3], 0);
  close(fd);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_route_held_limit) {
  tc_fixture_init(&F, &(evx_http_opts){.max_held = 4});
  evx_http_route(F.http, NULL, "/hello", 0, h_hello, NULL);
  evx_http_route(F.http, NULL, "/wait", 0, h_hold, NULL);
  evx_http_route(F.http, NULL, "/work", 0, h_hold, NULL);
  ck_assert_int_eq(evx_route_set_max_held(evx_http_route_find(F.http, NULL, "/wait", 0), 4), EVX_OK);
  ck_assert_int_eq(evx_route_set_max_held(NULL, 4), EVX_EINVAL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, route_limit_client, NULL);
  ck_assert_int_eq(rl_resp[0].status, 503);
  ck_assert_int_eq(rl_resp[1].status, 200);
  ck_assert_int_eq(rl_resp[2].status, 503);
  ck_assert_int_eq(rl_resp[3].status, 200); /* /wait's slots are back */
  for (int i = 0; i < 4; i++) tc_resp_free(&rl_resp[i]);
  tc_fixture_done(&F);
}
END_TEST



int main(void) {
  sem_init(&held_sem, 0, 0);
  Suite *s = suite_create("http_slow");
  TCase *tc = evx_test_tcase(s, "slow", 30);
  tcase_add_test(tc, test_header_deadline);
  tcase_add_test(tc, test_body_deadline);
  tcase_add_test(tc, test_connection_cap);
  tcase_add_test(tc, test_route_held_limit);

  return evx_test_main(s);
}


