/* The shutdown that answers everyone (evx_http_shutdown), on the real
 * examples/hello binary with SIGTERM: every client gets a status line, a new
 * request on a kept-alive connection gets 503 + Connection: close, queued
 * jobs of clients already answered never run, the process exits 0 within
 * grace + 1 s; a second SIGTERM ends the grace at once. */
#include "test_hello_server.h"

#include <sys/wait.h>

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

#define MAXC 100
static int cfd[MAXC];

/* n clients, each sends `req` on its own connection. */
static void open_clients(int port, int n, const char *req) {
  for (int i = 0; i < n; i++) {
    cfd[i] = tc_connect(port);
    if (cfd[i] >= 0) tc_send(cfd[i], req);
  }
}

/* Read each client's answer; count the 200s, the 503s and the silent ones. */
static void read_clients(int n, int *ok, int *busy, int *silent) {
  *ok = *busy = *silent = 0;
  for (int i = 0; i < n; i++) {
    tc_conn c;
    tc_conn_init(&c, cfd[i]);
    tc_resp r;
    if (cfd[i] >= 0 && tc_read_resp(&c, &r, 0) == 0) {
      if (r.status == 200) (*ok)++;
      else if (r.status == 503) (*busy)++;
      tc_resp_free(&r);
    } else {
      (*silent)++;
    }
    close(cfd[i]);
  }
}

static int count(const char *hay, const char *needle) {
  int n = 0;
  for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++) n++;
  return n;
}

static server S;

START_TEST(test_sigterm_answers_everyone) {
  char *argv[] = {"evx_hello", "--port", "0", "--threads", "4", "--grace-ms", "1000", NULL};
  ck_assert_int_eq(srv_start(&S, argv), 0);
  /* a kept-alive connection, served once before the signal */
  int ka = tc_connect(S.port);
  tc_send(ka, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
  tc_conn kc;
  tc_conn_init(&kc, ka);
  tc_resp r;
  ck_assert_int_eq(tc_read_resp(&kc, &r, 0), 0);
  ck_assert_int_eq(r.status, 200);
  tc_resp_free(&r);

  open_clients(S.port, MAXC, "GET /work?ms=500 HTTP/1.1\r\nHost: t\r\n\r\n");
  tc_sleep_ms(200); /* all in: 4 running, 96 queued (time is the subject) */
  uint64_t t0 = now_ms();
  kill(S.pid, SIGTERM);
  tc_sleep_ms(100);
  tc_send(ka, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"); /* new request, kept-alive connection */
  ck_assert_int_eq(tc_read_resp(&kc, &r, 0), 0);
  ck_assert_int_eq(r.status, 503);
  const char *conn = tc_header(&r, "Connection");
  ck_assert_ptr_nonnull(conn);
  ck_assert_str_eq(conn, "close");
  tc_resp_free(&r);
  ck_assert(tc_wait_eof(&kc));
  close(ka);

  int ok, busy, silent;
  read_clients(MAXC, &ok, &busy, &silent);
  int st = srv_wait(&S);
  uint64_t took = now_ms() - t0;
  srv_read_log(&S, 0);
  int ran = count(S.log, "GET /work 200");
  fprintf(stderr, "shutdown: %d x 200, %d x 503, %d silent, exit %d after %llu ms, %d jobs ran\n",
          ok, busy, silent, st, (unsigned long long)took, ran);
  ck_assert_int_eq(silent, 0);        /* every client got a status line */
  ck_assert_int_eq(ok + busy, MAXC);
  ck_assert_int_gt(ok, 0);            /* the grace let work finish */
  ck_assert_int_gt(busy, 0);          /* the rest got 503 at its end */
  ck_assert_int_eq(st, 0);
  ck_assert_uint_lt(took, 1000 + 1000 + 300); /* within grace + 1 s (+ scheduling slack) */
  ck_assert_int_eq(ran, ok); /* no job ran for a client answered 503 */
  ck_assert(strstr(S.log, "evx_hello: stopped"));
}
END_TEST

START_TEST(test_second_sigterm) {
  char *argv[] = {"evx_hello", "--port", "0", "--threads", "4", "--grace-ms", "10000", NULL};
  ck_assert_int_eq(srv_start(&S, argv), 0);
  open_clients(S.port, 24, "GET /work?ms=5000 HTTP/1.1\r\nHost: t\r\n\r\n");
  tc_sleep_ms(200);
  uint64_t t0 = now_ms();
  kill(S.pid, SIGTERM);
  tc_sleep_ms(200);
  kill(S.pid, SIGTERM); /* again: answer the rest now, exit */
  int ok, busy, silent;
  read_clients(24, &ok, &busy, &silent);
  int st = srv_wait(&S);
  uint64_t took = now_ms() - t0;
  fprintf(stderr, "second SIGTERM: %d x 200, %d x 503, %d silent, exit %d after %llu ms\n", ok,
          busy, silent, st, (unsigned long long)took);
  ck_assert_int_eq(silent, 0);
  ck_assert_int_eq(busy, 24);
  ck_assert_int_eq(st, 0); /* a clean exit, not 143 */
  ck_assert_uint_lt(took, 1500);
  ck_assert(strstr(S.log, "again"));
}
END_TEST

int main(void) {
  Suite *s = suite_create("http_shutdown");
  TCase *tc = tcase_create("shutdown");
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_sigterm_answers_everyone);
  tcase_add_test(tc, test_second_sigterm);
  suite_add_tcase(s, tc);
  return evx_test_main(s);
}
