/* Coroutine handlers (evx_http_route_coro) over raw sockets: auto-finish
 * with the buffered status/headers/body, explicit finish, chunked after
 * buffered writes, and a client leaving at each await point (sleep, queued
 * job, running job, condition, plain future, queue get): that await returns
 * EVX_EGONE, every later one returns it at once, the code after it runs,
 * nothing is left behind. */
#include "test_http_util.h"

static tc_fixture F;
static evx_executor *EX;
static evx_gate gate;
static evx_condition *COND;
static evx_queue *QUEUE;
static sem_t held_sem, after_sem;
static atomic_int work_ran;

/* What the handler saw, asserted by the test after the loop stopped. */
static int g_rc, g_later, g_later_job, g_cleaned, g_waiters_after, g_future_status;
static char g_path_after_finish[64];
static int g_after_finish;

static void mark_work(void *arg) {
  (void)arg;
  atomic_store(&work_ran, 1);
}

static void park_work(void *arg) {
  (void)arg;
  evx_gate_park(&gate);
  atomic_store(&work_ran, 1);
}

static void greet_work(void *arg) { strcpy(arg, "world"); }

/* ---- auto-finish and buffered replies --------------------------------- */

static void h_auto(evx_request *req, void *arg) {
  (void)arg;
  evx_request_set_status(req, 201);
  evx_request_set_header(req, "X-Coro", "yes");
  evx_request_write_str(req, "hello ");
  char who[16] = "";
  if (evx_await_job(EX, greet_work, who) == EVX_OK) evx_request_write_str(req, who);
  /* returns without finishing: finished with 201, X-Coro and the body */
}

static void h_default(evx_request *req, void *arg) {
  (void)req;
  (void)arg;
  evx_sleep(1);
}

static void h_finish_then_await(evx_request *req, void *arg) {
  (void)arg;
  evx_request_write_str(req, "a");
  evx_request_finish_str(req, 202, NULL, "b");
  snprintf(g_path_after_finish, sizeof g_path_after_finish, "%s", evx_request_path(req));
  evx_sleep(5); /* the handle stays valid until the handler returns */
  g_after_finish = evx_request_finish_str(req, 200, NULL, "again") == EVX_EINVAL ? 1 : 2;
}

static void h_chunked(evx_request *req, void *arg) {
  (void)arg;
  evx_request_write_str(req, "first,");
  evx_request_start_chunked(req, 200, NULL);
  evx_sleep(1);
  evx_request_write(req, "second", 6);
  /* auto-finish ends the chunked reply */
}

typedef struct auto_res {
  tc_resp r[4];
  int rc[4];
} auto_res;

static void *auto_client(void *arg) {
  auto_res *a = arg;
  a->rc[0] = tc_get(F.port, "/auto", &a->r[0]);
  a->rc[1] = tc_get(F.port, "/default", &a->r[1]);
  a->rc[2] = tc_get(F.port, "/finish", &a->r[2]);
  a->rc[3] = tc_get(F.port, "/chunked", &a->r[3]);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_auto_finish) {
  tc_fixture_init(&F, NULL);
  EX = evx_executor_new(F.loop, &(evx_executor_opts){.threads = 1});
  ck_assert_int_eq(evx_http_route_coro(F.http, "GET", "/auto", 0, h_auto, NULL), EVX_OK);
  ck_assert_int_eq(evx_http_route_coro(F.http, "GET", "/default", 0, h_default, NULL), EVX_OK);
  ck_assert_int_eq(evx_http_route_coro(F.http, "GET", "/finish", 0, h_finish_then_await, NULL),
                   EVX_OK);
  ck_assert_int_eq(evx_http_route_coro(F.http, "GET", "/chunked", 0, h_chunked, NULL), EVX_OK);
  ck_assert_int_eq(evx_http_route_coro(F.http, "GET", "/auto", 0, h_auto, NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_http_route_coro(F.http, "GET", "/x", 0, NULL, NULL), EVX_EINVAL);
  tc_fixture_bind(&F);
  auto_res a;
  memset(&a, 0, sizeof a);
  tc_fixture_run(&F, auto_client, &a);
  for (int i = 0; i < 4; i++) ck_assert_int_eq(a.rc[i], 0);
  ck_assert_int_eq(a.r[0].status, 201);
  ck_assert_str_eq(a.r[0].body, "hello world");
  ck_assert_str_eq(tc_header(&a.r[0], "X-Coro"), "yes");
  ck_assert_ptr_nonnull(strstr(tc_header(&a.r[0], "Content-Type"), "text/plain"));
  ck_assert_int_eq(a.r[1].status, 200);
  ck_assert_uint_eq(a.r[1].body_len, 0);
  ck_assert_int_eq(a.r[2].status, 202);
  ck_assert_str_eq(a.r[2].body, "ab"); /* buffered body first, then finish's */
  ck_assert_int_eq(a.r[3].status, 200);
  ck_assert_str_eq(a.r[3].body, "first,second");
  for (int i = 0; i < 4; i++) tc_resp_free(&a.r[i]);
  evx_test_run_until_count(F.loop, &g_after_finish, 1, 5000);
  ck_assert_str_eq(g_path_after_finish, "/finish");
  ck_assert_int_eq(g_after_finish, 1);
  evx_executor_free(EX);
  tc_fixture_done(&F);
}
END_TEST

/* ---- the client leaves at each await point ---------------------------- */

enum { AT_SLEEP, AT_JOB_QUEUED, AT_JOB_RUNNING, AT_COND, AT_FUTURE, AT_QUEUE, AT_N };

static void h_leave(evx_request *req, void *arg) {
  (void)arg;
  int at = atoi(evx_request_query(req, "at"));
  evx_future *f = NULL;
  sem_post(&held_sem); /* the client leaves now; the watch notices it while we wait */
  switch (at) {
  case AT_SLEEP:
    g_rc = evx_sleep(60000);
    break;
  case AT_JOB_QUEUED:
    g_rc = evx_await_job(EX, mark_work, NULL);
    break;
  case AT_JOB_RUNNING:
    g_rc = evx_await_job(EX, park_work, NULL);
    break;
  case AT_COND:
    f = evx_condition_wait(COND, 0);
    g_rc = evx_await(f);
    g_waiters_after = (int)evx_condition_waiters(COND);
    break;
  case AT_FUTURE:
    f = evx_future_new(F.loop);
    g_rc = evx_await(f);
    break;
  case AT_QUEUE:
    f = evx_queue_get(QUEUE);
    g_rc = evx_await(f);
    break;
  }
  g_future_status = f ? evx_future_status(f) : 0;
  evx_future_release(f);
  g_later = evx_sleep(60000); /* at once */
  g_later_job = evx_await_job(EX, mark_work, NULL);
  g_cleaned = 1;
  sem_post(&after_sem);
  /* no finish: the request is a zombie, auto-finish releases it */
}

static int g_gone_seen;
static void read_gone(void *arg) {
  (void)arg;
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  g_gone_seen = (int)st.gone;
}

static void *leave_client(void *arg) {
  int at = *(int *)arg;
  int fd = tc_connect(F.port);
  char req[128];
  snprintf(req, sizeof req, "GET /leave?at=%d HTTP/1.1\r\nHost: t\r\n\r\n", at);
  tc_send(fd, req);
  tc_sem_wait(&held_sem);
  if (at == AT_JOB_RUNNING) tc_sem_wait(&gate.entered); /* leave once the job runs */
  close(fd);
  if (at == AT_JOB_RUNNING) {
    /* The await waits for the running job: release it once the leave was seen. */
    for (int i = 0; i < 5000 && !g_gone_seen; i++) {
      tc_on_loop(F.loop, read_gone, NULL);
      if (!g_gone_seen) tc_sleep_ms(1);
    }
    evx_gate_open(&gate, 1);
  }
  tc_sem_wait(&after_sem);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_client_leaves_at_each_await) {
  int at = _i;
  sem_init(&held_sem, 0, 0);
  sem_init(&after_sem, 0, 0);
  evx_gate_init(&gate);
  atomic_store(&work_ran, 0);
  g_rc = g_later = g_later_job = g_future_status = 99;
  g_cleaned = g_gone_seen = 0;
  g_waiters_after = -1;
  tc_fixture_init(&F, NULL);
  EX = evx_executor_new(F.loop, &(evx_executor_opts){.threads = 1});
  COND = evx_condition_new(F.loop);
  QUEUE = evx_queue_new(F.loop, 1);
  if (at == AT_JOB_QUEUED) { /* the only worker is busy: the handler's job stays queued */
    ck_assert_int_eq(evx_submit(EX, evx_gate_park, NULL, &gate), EVX_OK);
    evx_gate_wait_entered(&gate, 1);
  }
  ck_assert_int_eq(evx_http_route_coro(F.http, "GET", "/leave", 0, h_leave, NULL), EVX_OK);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, leave_client, &at);
  ck_assert_int_eq(g_rc, EVX_EGONE);
  ck_assert_int_eq(g_later, EVX_EGONE);
  ck_assert_int_eq(g_later_job, EVX_EGONE);
  ck_assert_int_eq(g_cleaned, 1);
  if (at == AT_COND) ck_assert_int_eq(g_waiters_after, 0);
  if (at == AT_COND || at == AT_FUTURE || at == AT_QUEUE)
    ck_assert_int_eq(g_future_status, EVX_ECANCELED); /* the awaited future was cancelled */
  if (at == AT_JOB_QUEUED) {
    evx_gate_open(&gate, 1);
    evx_executor_shutdown(EX, EVX_SHUTDOWN_DRAIN);
  }
  evx_executor_free(EX);
  ck_assert_int_eq(atomic_load(&work_ran), at == AT_JOB_RUNNING); /* a queued job never ran */
  tc_spin(&F);
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.gone, 1);
  evx_condition_free(COND);
  evx_queue_free(QUEUE);
  tc_fixture_done(&F);
  evx_gate_destroy(&gate);
  sem_destroy(&held_sem);
  sem_destroy(&after_sem);
}
END_TEST

Suite *http_coro_suite(void);
Suite *http_coro_suite(void) {
  Suite *s = suite_create("http_coro");
  TCase *tc = evx_test_tcase(s, "http_coro", 30);
  tcase_add_test(tc, test_auto_finish);
  tcase_add_loop_test(tc, test_client_leaves_at_each_await, AT_SLEEP, AT_N);
  return s;
}

int main(void) { return evx_test_main(http_coro_suite()); }
