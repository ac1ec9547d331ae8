/* Hardened request mode: a second evx_request_finish from a later callback
 * (heap use-after-free without it) aborts with a message naming the call and
 * the request. The misuse runs in a forked child; the parent checks that it
 * died of SIGABRT and what it said. Plus: the quarantine frees everything. */
#include "test_http_util.h"

#include <signal.h>
#include <sys/wait.h>

static tc_fixture F;
static evx_request *kept;

static void late_again(void *arg) {
  (void)arg;
  evx_request_finish(kept, 200, NULL, "again", 5); /* released by now: misuse */
}

static void late_finish(void *arg) {
  (void)arg;
  evx_request_finish(kept, 200, NULL, "late", 4);
  evx_call_later(F.loop, 20, late_again, NULL); /* a later callback */
}

static void h_keep(evx_request *req, void *arg) {
  (void)arg;
  kept = req;
  evx_call_later(F.loop, 10, late_finish, NULL);
}

static void h_hello(evx_request *req, void *arg) {
  (void)arg;
  evx_request_finish(req, 200, NULL, "hello", 5);
}

static void *client(void *arg) {
  (void)arg;
  tc_resp r;
  tc_get(F.port, (const char *)arg ? (const char *)arg : "/keep", &r);
  tc_resp_free(&r);
  tc_sleep_ms(200); /* the late misuse aborts the server in the meantime */
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_second_finish_aborts) {
  int pfd[2];
  ck_assert_int_eq(pipe(pfd), 0);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    close(pfd[0]);
    dup2(pfd[1], 2);
    tc_fixture_init(&F, &(evx_http_opts){.hardened_requests = 1});
    evx_http_route(F.http, NULL, "/keep", 0, h_keep, NULL);
    tc_fixture_bind(&F);
    tc_fixture_run(&F, client, NULL);
    _exit(0); /* not reached: the second finish aborts */
  }
  close(pfd[1]);
  char out[4096] = {0};
  size_t n = 0;
  ssize_t k;
  while (n < sizeof out - 1 && (k = read(pfd[0], out + n, sizeof out - 1 - n)) > 0) n += (size_t)k;
  close(pfd[0]);
  int st;
  waitpid(pid, &st, 0);
  ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "child status %d, said: %s", st, out);
  ck_assert_msg(strstr(out, "evx_request_finish() called on a request that was already finished"),
                "said: %s", out);
  ck_assert_msg(strstr(out, "GET /keep"), "said: %s", out);
}
END_TEST

/* Many requests through a hardened server: the quarantine ring evicts and
 * frees, and freeing the server frees the rest (the allocator balance of
 * tc_fixture_done / the tcase fixture checks it). */
static void *many_client(void *arg) {
  (void)arg;
  for (int i = 0; i < 300; i++) {
    tc_resp r;
    tc_get(F.port, "/hello", &r);
    tc_resp_free(&r);
  }
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_quarantine_frees) {
  tc_fixture_init(&F, &(evx_http_opts){.hardened_requests = 1});
  evx_http_route(F.http, NULL, "/hello", 0, h_hello, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, many_client, NULL);
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.status[2], 300);
  tc_fixture_done(&F);
}
END_TEST

int main(void) {
  Suite *s = suite_create("http_hardened");
  TCase *tc = evx_test_tcase(s, "hardened", 30);
  tcase_add_test(tc, test_second_finish_aborts);
  tcase_add_test(tc, test_quarantine_frees);
  return evx_test_main(s);
}
