/* examples/hello end to end: the real binary, real sockets. Routes, the
 * access log on stderr, the options, and a clean stop on SIGTERM with a job
 * running and a long poll held (the job's answer still arrives, the long
 * poll gets 503, exit status 0). */
#include "test_http_util.h"

#include "test_hello_server.h"

static server S;

START_TEST(test_routes_and_log) {
  /* --spin-us: /work must answer the same with a spinning worker */
  char *argv[] = {"evx_hello", "--port", "0", "--threads", "2", "--spin-us", "20", NULL};
  ck_assert_int_eq(srv_start(&S, argv), 0);
  tc_resp r;
  ck_assert_int_eq(tc_get(S.port, "/hello", &r), 0);
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(r.body, "hello\n");
  tc_resp_free(&r);
  ck_assert_int_eq(tc_get(S.port, "/work?ms=30", &r), 0);
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(r.body, "slept 30 ms\n");
  tc_resp_free(&r);
  ck_assert_int_eq(tc_get(S.port, "/work?ms=-1", &r), 0);
  ck_assert_int_eq(r.status, 400);
  tc_resp_free(&r);
  ck_assert_int_eq(tc_get(S.port, "/nowhere", &r), 0);
  ck_assert_int_eq(r.status, 404);
  tc_resp_free(&r);

  /* a long poll woken by /notify */
  int fd = tc_connect(S.port);
  tc_send(fd, "GET /wait HTTP/1.1\r\nHost: t\r\n\r\n");
  tc_resp n;
  int woke = 0;
  for (int i = 0; i < 100 && !woke; i++) { /* until the waiter is registered */
    ck_assert_int_eq(tc_get(S.port, "/notify", &n), 0);
    woke = strcmp(n.body, "woke 1\n") == 0;
    tc_resp_free(&n);
    if (!woke) tc_sleep_ms(10);
  }
  ck_assert(woke);
  tc_conn c;
  tc_conn_init(&c, fd);
  ck_assert_int_eq(tc_read_resp(&c, &r, 0), 0);
  ck_assert_str_eq(r.body, "notified\n");
  tc_resp_free(&r);
  close(fd);

  /* a client that leaves during its job shows as 499 in the access log */
  fd = tc_connect(S.port);
  tc_send(fd, "GET /work?ms=200 HTTP/1.1\r\nHost: t\r\n\r\n");
  tc_sleep_ms(50);
  close(fd);
  ck_assert(srv_wait_log(&S, "GET /work 499"));
  ck_assert(strstr(S.log, "GET /hello 200 6B"));
  ck_assert(strstr(S.log, "GET /work 200 12B"));
  ck_assert(strstr(S.log, "GET /nowhere 404"));

  kill(S.pid, SIGINT);
  ck_assert_int_eq(srv_wait(&S), 0);
  ck_assert(strstr(S.log, "evx_hello: stopped"));
}
END_TEST

static tc_resp stop_work, stop_wait;
static int stop_port;

static void *stop_client_work(void *arg) {
  (void)arg;
  tc_get(stop_port, "/work?ms=300", &stop_work);
  return NULL;
}
static void *stop_client_wait(void *arg) {
  (void)arg;
  tc_get(stop_port, "/wait", &stop_wait);
  return NULL;
}

START_TEST(test_clean_stop) {
  char *argv[] = {"evx_hello", "--port", "0", NULL};
  ck_assert_int_eq(srv_start(&S, argv), 0);
  stop_port = S.port;
  pthread_t t1, t2;
  pthread_create(&t1, NULL, stop_client_work, NULL);
  pthread_create(&t2, NULL, stop_client_wait, NULL);
  tc_sleep_ms(100); /* both requests are in (time is the subject: a signal mid-request) */
  kill(S.pid, SIGTERM);
  pthread_join(t1, NULL);
  pthread_join(t2, NULL);
  ck_assert_int_eq(srv_wait(&S), 0);
  ck_assert_int_eq(stop_work.status, 200); /* the running job finished and answered */
  ck_assert_str_eq(stop_work.body, "slept 300 ms\n");
  ck_assert_int_eq(stop_wait.status, 503); /* the long poll was ended */
  tc_resp_free(&stop_work);
  tc_resp_free(&stop_wait);
  ck_assert(strstr(S.log, "signal 15"));
  ck_assert(strstr(S.log, "evx_hello: stopped"));
  /* nothing listens any more */
  ck_assert_int_lt(tc_connect(S.port), 0);
}
END_TEST

/* --target-wait-ms: with the one worker busy on a 300 ms job (its run time
 * known from a first one), a job that would wait longer than 50 ms gets 503
 * + Retry-After at once instead of queueing; the running one still answers. */
static tc_resp shed_long;
static void *shed_client_long(void *arg) {
  (void)arg;
  tc_get(stop_port, "/work?ms=300", &shed_long);
  return NULL;
}

START_TEST(test_target_wait) {
  char *argv[] = {"evx_hello", "--port", "0", "--threads", "1", "--target-wait-ms", "50", NULL};
  ck_assert_int_eq(srv_start(&S, argv), 0);
  stop_port = S.port;
  tc_resp r;
  ck_assert_int_eq(tc_get(S.port, "/work?ms=300", &r), 0); /* the run time is known now */
  ck_assert_int_eq(r.status, 200);
  tc_resp_free(&r);
  pthread_t t;
  pthread_create(&t, NULL, shed_client_long, NULL);
  tc_sleep_ms(100); /* the second long job runs (time is the subject) */
  uint64_t t0 = evx_now_ns();
  ck_assert_int_eq(tc_get(S.port, "/work?ms=10", &r), 0);
  uint64_t ms = evx_test_ms_since(t0);
  ck_assert_int_eq(r.status, 503);
  ck_assert_ptr_nonnull(tc_header(&r, "Retry-After"));
  ck_assert_uint_lt(ms, 100); /* at once, not after the 200 ms the job had left */
  tc_resp_free(&r);
  pthread_join(t, NULL);
  ck_assert_int_eq(shed_long.status, 200);
  tc_resp_free(&shed_long);
  kill(S.pid, SIGINT);
  ck_assert_int_eq(srv_wait(&S), 0);
}
END_TEST

static int run_status(char *const argv[], char *out, size_t cap) {
  server s;
  memset(&s, 0, sizeof s);
  int pipefd[2];
  ck_assert_int_eq(pipe(pipefd), 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
  posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
  posix_spawn_file_actions_addclose(&fa, pipefd[0]);
  ck_assert_int_eq(posix_spawn(&s.pid, EVX_HELLO_BIN, &fa, NULL, argv, environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  close(pipefd[1]);
  s.err_fd = pipefd[0];
  int st = srv_wait(&s);
  snprintf(out, cap, "%s", s.log);
  return st;
}

START_TEST(test_options) {
  char out[65536];
  char *help[] = {"evx_hello", "--help", NULL};
  ck_assert_int_eq(run_status(help, out, sizeof out), 0);
  ck_assert(strstr(out, "--port N"));
  ck_assert(strstr(out, "--threads N"));
  ck_assert(strstr(out, "--spin-us N"));
  ck_assert(strstr(out, "--target-wait-ms N"));
  char *badtarget[] = {"evx_hello", "--target-wait-ms", "600001", NULL};
  ck_assert_int_eq(run_status(badtarget, out, sizeof out), 2);
  char *badport[] = {"evx_hello", "--port", "70000", NULL};
  ck_assert_int_eq(run_status(badport, out, sizeof out), 2);
  char *badthreads[] = {"evx_hello", "--threads", "0", NULL};
  ck_assert_int_eq(run_status(badthreads, out, sizeof out), 2);
  char *badspin[] = {"evx_hello", "--spin-us", "-1", NULL};
  ck_assert_int_eq(run_status(badspin, out, sizeof out), 2);
  char *badspin2[] = {"evx_hello", "--spin-us", "1000001", NULL};
  ck_assert_int_eq(run_status(badspin2, out, sizeof out), 2);
  char *unknown[] = {"evx_hello", "--bogus", NULL};
  ck_assert_int_eq(run_status(unknown, out, sizeof out), 2);
}
END_TEST

static Suite *hello_suite(void) {
  Suite *s = suite_create("http_hello");
  TCase *tc = tcase_create("hello");
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_routes_and_log);
  tcase_add_test(tc, test_clean_stop);
  tcase_add_test(tc, test_options);
  tcase_add_test(tc, test_target_wait);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  return evx_test_main(hello_suite());
}
