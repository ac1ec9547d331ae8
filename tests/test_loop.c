/* evx_loop: creation (owned / adopted base), run and stop, misuse, teardown. */
#include "evx_test.h"

#include <event2/event.h>

static void set_flag_cb(void *arg) { (*(int *)arg)++; }

/* ---- new / base ----------------------------------------------------------- */

START_TEST(test_new_owned_base) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  ck_assert_ptr_nonnull(evx_loop_base(loop));
  /* Before the first run the creating thread counts as the loop thread. */
  ck_assert_int_ne(evx_loop_in_thread(loop), 0);
  int ran = 0;
  ck_assert_int_eq(evx_add_callback(loop, set_flag_cb, &ran), EVX_OK);
  ck_assert_int_eq(evx_add_callback(loop, evx_test_stop_cb, loop), EVX_OK);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(ran, 1);
  evx_test_free_loop(loop); /* frees the owned base: ASan would flag a leak */
}
END_TEST

/* A raw libevent event on the adopted base stops the loop: proves evx_loop_run
 * really dispatches the caller's base. */
static void raw_event_cb(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  evx_loop_stop((evx_loop *)arg);
}

static void raw_flag_cb(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  (*(int *)arg)++;
}

START_TEST(test_new_adopted_base) {
  struct event_base *base = event_base_new();
  ck_assert_ptr_nonnull(base);
  evx_loop *loop = evx_loop_new(base);
  ck_assert_ptr_nonnull(loop);
  ck_assert_ptr_eq(evx_loop_base(loop), base);

  struct timeval tv = {0, 1000};
  ck_assert_int_eq(event_base_once(base, -1, EV_TIMEOUT, raw_event_cb, loop, &tv), 0);
  evx_test_run(loop, 5000);

  evx_test_free_loop(loop);
  /* The adopted base survives evx_loop_free and still works. */
  int fired = 0;
  struct timeval zero = {0, 0};
  ck_assert_int_eq(event_base_once(base, -1, EV_TIMEOUT, raw_flag_cb, &fired, &zero), 0);
  ck_assert_int_eq(event_base_loop(base, EVLOOP_ONCE), 0);
  ck_assert_int_eq(fired, 1);
  event_base_free(base);
}
END_TEST

/* ---- run / stop ----------------------------------------------------------- */

START_TEST(test_run_stop_from_callback) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  int a = 0, b = 0;
  ck_assert_int_eq(evx_add_callback(loop, set_flag_cb, &a), EVX_OK);
  ck_assert_int_eq(evx_add_callback(loop, evx_test_stop_cb, loop), EVX_OK);
  ck_assert_int_eq(evx_loop_run(loop), EVX_OK);
  ck_assert_int_eq(a, 1);
  /* Stopping a stopped loop is harmless; a stop from a callback may be repeated. */
  ck_assert_int_eq(evx_add_callback(loop, set_flag_cb, &b), EVX_OK);
  ck_assert_int_eq(evx_add_callback(loop, evx_test_stop_cb, loop), EVX_OK);
  ck_assert_int_eq(evx_add_callback(loop, evx_test_stop_cb, loop), EVX_OK);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(b, 1);
  evx_test_free_loop(loop);
}
END_TEST

typedef struct stopper {
  evx_loop *loop;
  sem_t go;
  int stop_rc;
  int in_thread;
} stopper;

static void *stopper_thread(void *arg) {
  stopper *s = arg;
  sem_wait(&s->go);
  s->in_thread = evx_loop_in_thread(s->loop);
  s->stop_rc = evx_loop_stop(s->loop);
  return NULL;
}

static void post_go_cb(void *arg) { sem_post(&((stopper *)arg)->go); }

START_TEST(test_stop_from_other_thread) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  stopper s = {.loop = loop, .stop_rc = 99, .in_thread = 99};
  sem_init(&s.go, 0, 0);
  pthread_t t;
  ck_assert_int_eq(pthread_create(&t, NULL, stopper_thread, &s), 0);
  /* The thread stops the loop only once it is running, and idle: the stop
   * must wake the loop up by itself. */
  ck_assert_int_eq(evx_add_callback(loop, post_go_cb, &s), EVX_OK);
  evx_test_run(loop, 5000);
  pthread_join(t, NULL);
  ck_assert_int_eq(s.stop_rc, EVX_OK);
  ck_assert_int_eq(s.in_thread, 0);
  sem_destroy(&s.go);
  evx_test_free_loop(loop);
}
END_TEST

typedef struct second_run {
  evx_loop *loop;
  int timer_fired;
} second_run;

static void second_run_timer_cb(void *arg) {
  second_run *r = arg;
  r->timer_fired = 1;
  evx_loop_stop(r->loop);
}

static void second_run_arm_cb(void *arg) {
  second_run *r = arg;
  ck_assert_ptr_nonnull(evx_call_later(r->loop, 20, second_run_timer_cb, r));
}

START_TEST(test_stop_before_run) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  int ran = 0;
  ck_assert_int_eq(evx_add_callback(loop, set_flag_cb, &ran), EVX_OK);
  /* A stop while not running: the next run returns after one iteration, and
   * callbacks queued before the run ran in that iteration. */
  ck_assert_int_eq(evx_loop_stop(loop), EVX_OK);
  ck_assert_int_eq(evx_loop_run(loop), EVX_OK);
  ck_assert_int_eq(ran, 1);

  /* The stop was consumed: the next run keeps going until a 20 ms timer stops it. */
  second_run r = {.loop = loop};
  ck_assert_int_eq(evx_add_callback(loop, second_run_arm_cb, &r), EVX_OK);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(r.timer_fired, 1);
  evx_test_free_loop(loop);
}
END_TEST

/* A stop from a callback ends the run after the current iteration: the
 * callbacks queued after it in the same batch still run in this run. */
START_TEST(test_stop_finishes_batch) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  int before = 0, after = 0;
  ck_assert_int_eq(evx_add_callback(loop, set_flag_cb, &before), EVX_OK);
  ck_assert_int_eq(evx_add_callback(loop, evx_test_stop_cb, loop), EVX_OK);
  ck_assert_int_eq(evx_add_callback(loop, set_flag_cb, &after), EVX_OK);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(before, 1);
  ck_assert_int_eq(after, 1);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_run_twice) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  for (int round = 1; round <= 3; round++) {
    int ran = 0;
    ck_assert_int_eq(evx_add_callback(loop, set_flag_cb, &ran), EVX_OK);
    ck_assert_int_eq(evx_add_callback(loop, evx_test_stop_cb, loop), EVX_OK);
    evx_test_run(loop, 5000);
    ck_assert_int_eq(ran, 1);
  }
  evx_test_free_loop(loop);
}
END_TEST

/* ---- misuse --------------------------------------------------------------- */

START_TEST(test_misuse_null) {
  ck_assert_int_eq(evx_loop_run(NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_loop_stop(NULL), EVX_EINVAL);
  ck_assert_ptr_null(evx_loop_base(NULL));
  ck_assert_int_eq(evx_add_callback(NULL, set_flag_cb, NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_loop_in_thread(NULL), 0);
  evx_loop_free(NULL);
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  ck_assert_int_eq(evx_add_callback(loop, NULL, NULL), EVX_EINVAL);
  /* Nothing was queued by the failed call: a run-once finds nothing to crash on. */
  evx_test_run_once(loop);
  evx_test_free_loop(loop);
}
END_TEST

typedef struct nested {
  evx_loop *loop;
  int nested_rc;
  int other_thread_rc;
  int in_thread;
} nested;

static void *run_from_thread(void *arg) {
  nested *n = arg;
  n->other_thread_rc = evx_loop_run(n->loop);
  return NULL;
}

static void nested_run_cb(void *arg) {
  nested *n = arg;
  n->in_thread = evx_loop_in_thread(n->loop);
  n->nested_rc = evx_loop_run(n->loop); /* from inside a callback: EINVAL */
  /* From another thread while this one runs it: EINVAL too (already running). */
  pthread_t t;
  if (pthread_create(&t, NULL, run_from_thread, n) == 0) pthread_join(t, NULL);
  evx_loop_stop(n->loop);
}

START_TEST(test_misuse_run_inside_callback) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  nested n = {.loop = loop, .nested_rc = 99, .other_thread_rc = 99};
  ck_assert_int_eq(evx_add_callback(loop, nested_run_cb, &n), EVX_OK);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(n.nested_rc, EVX_EINVAL);
  ck_assert_int_eq(n.other_thread_rc, EVX_EINVAL);
  ck_assert_int_ne(n.in_thread, 0);
  /* The loop is still usable afterwards. */
  int ran = 0;
  ck_assert_int_eq(evx_add_callback(loop, set_flag_cb, &ran), EVX_OK);
  evx_test_run_once(loop);
  ck_assert_int_eq(ran, 1);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- teardown ------------------------------------------------------------- */

/* Callbacks that run inside evx_loop_free (step 2). */
typedef struct teardown {
  evx_loop *loop;
  char order[16];
  int n;
  int add_rc;
  int thread_add_rc;
  int thread_cb_ran;
} teardown;

static void td_record_c(void *arg) {
  teardown *t = arg;
  t->order[t->n++] = 'C';
}
static void td_record_b(void *arg) {
  teardown *t = arg;
  t->order[t->n++] = 'B';
}
/* A: queued before free; adds B during free. B must run too. */
static void td_record_a(void *arg) {
  teardown *t = arg;
  t->order[t->n++] = 'A';
  t->add_rc = evx_add_callback(t->loop, td_record_b, t);
}

START_TEST(test_free_runs_queued_callbacks) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  teardown t = {.loop = loop, .add_rc = 99};
  ck_assert_int_eq(evx_add_callback(loop, td_record_a, &t), EVX_OK);
  ck_assert_int_eq(evx_add_callback(loop, td_record_c, &t), EVX_OK);
  ck_assert_int_eq(t.n, 0);
  evx_test_free_loop(loop);
  ck_assert_int_eq(t.add_rc, EVX_OK);
  ck_assert_int_eq(t.n, 3);
  ck_assert_str_eq(t.order, "ACB");
}
END_TEST

/* A producer thread that calls evx_add_callback while evx_loop_free runs the
 * queued callbacks (step 2): the call is either accepted, and then its
 * callback runs exactly once before free returns, or refused with
 * EVX_ECLOSED, and then it never runs. (loop.h says step-2 calls from other
 * threads get EVX_ECLOSED but also that "callbacks they add run too; from then
 * on" ECLOSED; the implementation accepts and runs them. Either is safe; a
 * lost or doubled callback is not.) */
static void td_thread_cb(void *arg) { ((teardown *)arg)->thread_cb_ran++; }

static void *td_producer(void *arg) {
  teardown *t = arg;
  t->thread_add_rc = evx_add_callback(t->loop, td_thread_cb, t);
  return NULL;
}

static void td_spawn_producer_cb(void *arg) {
  teardown *t = arg;
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, td_producer, t), 0);
  pthread_join(th, NULL); /* the call happens while free is in step 2 */
}

START_TEST(test_free_closes_add_callback) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  teardown t = {.loop = loop, .thread_add_rc = 99};
  ck_assert_int_eq(evx_add_callback(loop, td_spawn_producer_cb, &t), EVX_OK);
  evx_test_free_loop(loop);
  if (t.thread_add_rc == EVX_OK)
    ck_assert_int_eq(t.thread_cb_ran, 1);
  else {
    ck_assert_int_eq(t.thread_add_rc, EVX_ECLOSED);
    ck_assert_int_eq(t.thread_cb_ran, 0);
  }
}
END_TEST

static void never_cb(void *arg) { (*(int *)arg)++; }

START_TEST(test_free_drops_timers) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  int fired = 0;
  ck_assert_ptr_nonnull(evx_call_later(loop, 60000, never_cb, &fired));
  ck_assert_ptr_nonnull(evx_call_later(loop, 0, never_cb, &fired));
  evx_test_free_loop(loop); /* timers are dropped, not called; nothing leaks */
  ck_assert_int_eq(fired, 0);
}
END_TEST

/* Executors still bound at evx_loop_free are freed by it, and every accepted
 * job's done is called exactly once, consistent with whether its work ran. */
#define FB_JOBS 64
typedef struct fb_job {
  atomic_int ran;
  int done_calls;
  int status;
} fb_job;

static void fb_work(void *arg) {
  fb_job *j = arg;
  atomic_fetch_add(&j->ran, 1);
}
static void fb_done(void *arg, int status) {
  fb_job *j = arg;
  j->done_calls++;
  j->status = status;
}

START_TEST(test_free_frees_bound_executors) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor_opts o1 = {.threads = 2, .name = "fb-a"};
  evx_executor_opts o2 = {.threads = 1, .name = "fb-b"};
  evx_executor *a = evx_executor_new(loop, &o1);
  evx_executor *b = evx_executor_new(loop, &o2);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(b);
  evx_gate gate;
  evx_gate_init(&gate);
  /* Park every worker so jobs are really queued when the loop is freed. */
  ck_assert_int_eq(evx_submit(a, evx_gate_park, NULL, &gate), EVX_OK);
  ck_assert_int_eq(evx_submit(a, evx_gate_park, NULL, &gate), EVX_OK);
  ck_assert_int_eq(evx_submit(b, evx_gate_park, NULL, &gate), EVX_OK);
  evx_gate_wait_entered(&gate, 3);
  static fb_job jobs[FB_JOBS];
  for (int i = 0; i < FB_JOBS; i++)
    ck_assert_int_eq(evx_submit(i % 2 ? a : b, fb_work, fb_done, &jobs[i]), EVX_OK);
  evx_gate_open(&gate, 3); /* running jobs must be able to finish */
  evx_test_free_loop(loop); /* frees a and b: no leak, all done called */
  for (int i = 0; i < FB_JOBS; i++) {
    ck_assert_int_eq(jobs[i].done_calls, 1);
    if (jobs[i].status == EVX_OK)
      ck_assert_int_eq(atomic_load(&jobs[i].ran), 1);
    else {
      ck_assert_int_eq(jobs[i].status, EVX_ECANCELED);
      ck_assert_int_eq(atomic_load(&jobs[i].ran), 0);
    }
  }
  evx_gate_destroy(&gate);
}
END_TEST

/* ---- in_thread ------------------------------------------------------------ */

typedef struct where {
  evx_loop *loop;
  atomic_int worker_in_thread;
  int cb_in_thread;
} where;

static void where_work(void *arg) {
  where *w = arg;
  atomic_store(&w->worker_in_thread, evx_loop_in_thread(w->loop));
}
static void where_done(void *arg, int status) {
  where *w = arg;
  ck_assert_int_eq(status, EVX_OK);
  w->cb_in_thread = evx_loop_in_thread(w->loop);
  evx_loop_stop(w->loop);
}

START_TEST(test_in_thread) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor *ex = evx_executor_new(loop, NULL);
  ck_assert_ptr_nonnull(ex);
  where w = {.loop = loop, .worker_in_thread = 99, .cb_in_thread = 99};
  ck_assert_int_eq(evx_submit(ex, where_work, where_done, &w), EVX_OK);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(atomic_load(&w.worker_in_thread), 0);
  ck_assert_int_ne(w.cb_in_thread, 0);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

static Suite *loop_suite(void) {
  Suite *s = suite_create("loop");
  TCase *tc = evx_test_tcase(s, "new", 10);
  tcase_add_test(tc, test_new_owned_base);
  tcase_add_test(tc, test_new_adopted_base);
  tc = evx_test_tcase(s, "run_stop", 10);
  tcase_add_test(tc, test_run_stop_from_callback);
  tcase_add_test(tc, test_stop_from_other_thread);
  tcase_add_test(tc, test_stop_before_run);
  tcase_add_test(tc, test_run_twice);
  tcase_add_test(tc, test_stop_finishes_batch);
  tc = evx_test_tcase(s, "misuse", 10);
  tcase_add_test(tc, test_misuse_null);
  tcase_add_test(tc, test_misuse_run_inside_callback);
  tc = evx_test_tcase(s, "teardown", 10);
  tcase_add_test(tc, test_free_runs_queued_callbacks);
  tcase_add_test(tc, test_free_closes_add_callback);
  tcase_add_test(tc, test_free_drops_timers);
  tcase_add_test(tc, test_free_frees_bound_executors);
  tc = evx_test_tcase(s, "in_thread", 10);
  tcase_add_test(tc, test_in_thread);
  return s;
}

int main(void) { return evx_test_main(loop_suite()); }
