/* evx_call_later / evx_timer_cancel. Time is the subject here, so the tests
 * use short real delays with generous bounds. */
#include "evx_test.h"

/* "after ms milliseconds": a timer never fires early. Elapsed times are
 * whole milliseconds rounded down, hence the 1 ms slack. The upper bound only
 * guards against a hang. */
#define EARLY_SLACK_MS 1
#define LATE_LIMIT_MS 3000

typedef struct fired {
  int order[16];
  uint64_t elapsed_ms[16];
  int n;
  uint64_t start_ns;
  evx_loop *loop;
  int stop_after;
} fired;

typedef struct targ {
  fired *f;
  int id;
} targ;

static void record_cb(void *arg) {
  targ *t = arg;
  fired *f = t->f;
  f->order[f->n] = t->id;
  f->elapsed_ms[f->n] = evx_test_ms_since(f->start_ns);
  f->n++;
  if (f->n == f->stop_after) evx_loop_stop(f->loop);
}

START_TEST(test_order_by_deadline) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  static const uint64_t delays[] = {50, 10, 30, 0, 20, 40};
  enum { N = sizeof delays / sizeof delays[0] };
  fired f = {.loop = loop, .stop_after = N, .start_ns = evx_now_ns()};
  targ args[N];
  for (int i = 0; i < N; i++) {
    args[i] = (targ){&f, (int)delays[i]};
    ck_assert_ptr_nonnull(evx_call_later(loop, delays[i], record_cb, &args[i]));
  }
  evx_test_run(loop, 5000);
  ck_assert_int_eq(f.n, N);
  static const int expect[] = {0, 10, 20, 30, 40, 50};
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(f.order[i], expect[i]);
    ck_assert_uint_ge(f.elapsed_ms[i] + EARLY_SLACK_MS, (uint64_t)expect[i]);
    ck_assert_uint_lt(f.elapsed_ms[i], (uint64_t)expect[i] + LATE_LIMIT_MS);
  }
  evx_test_free_loop(loop);
}
END_TEST

/* 0 ms: next iteration, never inside evx_call_later. */
typedef struct zero {
  evx_loop *loop;
  int fired;
  int fired_inside;
} zero;

static void zero_fire_cb(void *arg) {
  zero *z = arg;
  z->fired++;
  evx_loop_stop(z->loop);
}
static void zero_arm_cb(void *arg) {
  zero *z = arg;
  ck_assert_ptr_nonnull(evx_call_later(z->loop, 0, zero_fire_cb, z));
  z->fired_inside = z->fired;
}

START_TEST(test_zero_ms) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  zero z = {.loop = loop};
  ck_assert_int_eq(evx_add_callback(loop, zero_arm_cb, &z), EVX_OK);
  uint64_t t0 = evx_now_ns();
  evx_test_run(loop, 5000);
  ck_assert_int_eq(z.fired_inside, 0);
  ck_assert_int_eq(z.fired, 1);
  ck_assert_uint_lt(evx_test_ms_since(t0), LATE_LIMIT_MS);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- cancel --------------------------------------------------------------- */

static void count_cb(void *arg) { (*(int *)arg)++; }

START_TEST(test_cancel_prevents_call) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  int cancelled_fired = 0, zero_fired = 0;
  evx_timer *t = evx_call_later(loop, 10, count_cb, &cancelled_fired);
  evx_timer *z = evx_call_later(loop, 0, count_cb, &zero_fired);
  ck_assert_ptr_nonnull(t);
  ck_assert_ptr_nonnull(z);
  ck_assert_int_eq(evx_timer_cancel(t), EVX_OK);
  ck_assert_int_eq(evx_timer_cancel(z), EVX_OK); /* a 0 ms timer can be cancelled too */
  fired f = {.loop = loop, .stop_after = 1, .start_ns = evx_now_ns()};
  targ a = {&f, 1};
  ck_assert_ptr_nonnull(evx_call_later(loop, 60, record_cb, &a)); /* well after t's deadline */
  evx_test_run(loop, 5000);
  ck_assert_int_eq(cancelled_fired, 0);
  ck_assert_int_eq(zero_fired, 0);
  evx_test_free_loop(loop);
}
END_TEST

/* A timer cancelled by an earlier timer's callback does not fire. */
typedef struct chain {
  evx_loop *loop;
  evx_timer *victim;
  int victim_fired;
  int cancel_rc;
} chain;

static void victim_cb(void *arg) { ((chain *)arg)->victim_fired++; }
static void killer_cb(void *arg) {
  chain *c = arg;
  c->cancel_rc = evx_timer_cancel(c->victim);
}

START_TEST(test_cancel_from_timer_callback) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  chain c = {.loop = loop, .cancel_rc = 99};
  ck_assert_ptr_nonnull(evx_call_later(loop, 5, killer_cb, &c));
  c.victim = evx_call_later(loop, 40, victim_cb, &c);
  ck_assert_ptr_nonnull(c.victim);
  ck_assert_ptr_nonnull(evx_call_later(loop, 80, evx_test_stop_cb, loop));
  evx_test_run(loop, 5000);
  ck_assert_int_eq(c.cancel_rc, EVX_OK);
  ck_assert_int_eq(c.victim_fired, 0);
  evx_test_free_loop(loop);
}
END_TEST

/* A timer's own handle, cancelled from inside its callback: a no-op answering
 * EVX_EINVAL (the handle is freed once fn returns); no double free. */
typedef struct self_cancel {
  evx_loop *loop;
  evx_timer *t;
  int rc;
  int calls;
} self_cancel;

static void self_cancel_cb(void *arg) {
  self_cancel *s = arg;
  s->calls++;
  s->rc = evx_timer_cancel(s->t);
  evx_loop_stop(s->loop);
}

START_TEST(test_cancel_inside_own_callback) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  self_cancel s = {.loop = loop, .rc = 99};
  s.t = evx_call_later(loop, 1, self_cancel_cb, &s);
  ck_assert_ptr_nonnull(s.t);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(s.calls, 1);
  ck_assert_int_eq(s.rc, EVX_EINVAL);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_invalid_args) {
  ck_assert_int_eq(evx_timer_cancel(NULL), EVX_EINVAL);
  ck_assert_ptr_null(evx_call_later(NULL, 0, count_cb, NULL));
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  ck_assert_ptr_null(evx_call_later(loop, 0, NULL, NULL));
  evx_test_run_once(loop);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- wrong thread --------------------------------------------------------- */

/* A worker job calls the loop-thread-only timer API while the loop runs:
 * evx_call_later answers NULL and evx_timer_cancel EVX_EINVAL (the timer it
 * tried to cancel stays pending, and is cancelled by the loop thread after). */
typedef struct wrong {
  evx_loop *loop;
  evx_timer *own; /* a real timer created on the loop thread, far in the future */
  atomic_int later_was_null;
  atomic_int cancel_rc;
  int wrong_fired;
  int done_calls;
} wrong;

static void wrong_fire_cb(void *arg) { ((wrong *)arg)->wrong_fired++; }

static void wrong_work(void *arg) {
  wrong *w = arg;
  evx_timer *t = evx_call_later(w->loop, 0, wrong_fire_cb, w);
  atomic_store(&w->later_was_null, t == NULL);
  atomic_store(&w->cancel_rc, evx_timer_cancel(w->own));
}

static void wrong_done(void *arg, int status) {
  wrong *w = arg;
  ck_assert_int_eq(status, EVX_OK);
  w->done_calls++;
  evx_loop_stop(w->loop);
}

/* Submitted from a loop callback: the loop is running while the worker calls. */
static evx_executor *g_wrong_ex;
static void wrong_submit_cb(void *arg) {
  ck_assert_int_eq(evx_submit(g_wrong_ex, wrong_work, wrong_done, arg), EVX_OK);
}

START_TEST(test_wrong_thread) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor_opts o = {.threads = 1};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  wrong w = {.loop = loop, .later_was_null = -1, .cancel_rc = 99};
  w.own = evx_call_later(loop, 60000, wrong_fire_cb, &w);
  ck_assert_ptr_nonnull(w.own);
  g_wrong_ex = ex;
  ck_assert_int_eq(evx_add_callback(loop, wrong_submit_cb, &w), EVX_OK);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(w.done_calls, 1);
  ck_assert_int_eq(atomic_load(&w.later_was_null), 1);
  ck_assert_int_eq(atomic_load(&w.cancel_rc), EVX_EINVAL);
  /* Give a wrongly accepted 0 ms timer the chance to fire. */
  evx_test_run_once(loop);
  ck_assert_int_eq(w.wrong_fired, 0);
  /* The worker's cancel did nothing: the handle is still valid here. */
  ck_assert_int_eq(evx_timer_cancel(w.own), EVX_OK);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* A timer armed by a callback that ran late in its loop iteration (after a
 * busy 20 ms) still waits its full delay from the moment it was armed, not
 * from the start of the iteration. */
typedef struct late_arm {
  evx_loop *loop;
  uint64_t armed_ns;
  uint64_t fired_after_ns;
} late_arm;

static void late_fire_cb(void *arg) {
  late_arm *l = arg;
  l->fired_after_ns = evx_now_ns() - l->armed_ns;
  evx_loop_stop(l->loop);
}
static void busy_then_arm_cb(void *arg) {
  late_arm *l = arg;
  evx_test_spin_us(20000); /* a slow callback earlier in the iteration */
  l->armed_ns = evx_now_ns();
  ck_assert_ptr_nonnull(evx_call_later(l->loop, 10, late_fire_cb, l));
}

START_TEST(test_not_early_after_busy_callback) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  late_arm l = {.loop = loop};
  /* Arm from inside a running loop (timers are how the callback gets called). */
  ck_assert_ptr_nonnull(evx_call_later(loop, 1, busy_then_arm_cb, &l));
  evx_test_run(loop, 5000);
  ck_assert_uint_ge(l.fired_after_ns + EARLY_SLACK_MS * 1000000ull, 10000000ull);
  evx_test_free_loop(loop);
}
END_TEST

/* Many timers: each fires exactly once and none early. */
#define MANY 200
static int g_many_count[MANY];
static int g_many_total;
static evx_loop *g_many_loop;
static uint64_t g_many_start;
static int g_many_early;

static void many_cb(void *arg) {
  int i = (int)(intptr_t)arg;
  g_many_count[i]++;
  if (evx_test_ms_since(g_many_start) + EARLY_SLACK_MS < (uint64_t)(i % 20)) g_many_early++;
  if (++g_many_total == MANY) evx_loop_stop(g_many_loop);
}

START_TEST(test_many_timers) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  g_many_loop = loop;
  g_many_start = evx_now_ns();
  for (int i = 0; i < MANY; i++)
    ck_assert_ptr_nonnull(evx_call_later(loop, (uint64_t)(i % 20), many_cb, (void *)(intptr_t)i));
  evx_test_run(loop, 5000);
  for (int i = 0; i < MANY; i++) ck_assert_int_eq(g_many_count[i], 1);
  ck_assert_int_eq(g_many_early, 0);
  evx_test_free_loop(loop);
}
END_TEST

/* Stale handles: cancelling a timer that already fired was a heap
 * use-after-free, and once its memory held a later timer it cancelled that
 * one. Now it is EVX_EINVAL, and the later timer fires. */
static void zero_stop_cb(void *arg) { evx_loop_stop((evx_loop *)arg); }

START_TEST(test_cancel_after_fire_is_stale) {
  evx_loop *loop = evx_loop_new(NULL);
  int first = 0, later = 0;
  evx_timer *a = evx_call_later(loop, 0, count_cb, &first);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(evx_call_later(loop, 1, zero_stop_cb, loop));
  evx_test_run(loop, 5000);
  ck_assert_int_eq(first, 1);
  /* A later timer of the same size: the allocator may hand it a's memory. */
  evx_timer *b = evx_call_later(loop, 5, count_cb, &later);
  ck_assert_ptr_nonnull(b);
  ck_assert_ptr_ne(a, b);
  ck_assert_int_eq(evx_timer_cancel(a), EVX_EINVAL); /* fired: stale */
  ck_assert_int_eq(evx_timer_cancel(a), EVX_EINVAL);
  ck_assert_ptr_nonnull(evx_call_later(loop, 30, zero_stop_cb, loop));
  evx_test_run(loop, 5000);
  ck_assert_int_eq(later, 1); /* b was not cancelled through a */
  ck_assert_int_eq(evx_timer_cancel(b), EVX_EINVAL);

  /* Cancelled twice: the second is stale, also after the slot was reused. */
  evx_timer *c = evx_call_later(loop, 1000, count_cb, &later);
  ck_assert_int_eq(evx_timer_cancel(c), EVX_OK);
  evx_timer *d = evx_call_later(loop, 1000, count_cb, &later);
  ck_assert_int_eq(evx_timer_cancel(c), EVX_EINVAL);
  ck_assert_int_eq(evx_timer_cancel(d), EVX_OK);
  /* A handle that was never issued names nothing. */
  ck_assert_int_eq(evx_timer_cancel((evx_timer *)(uintptr_t)0x7fff0001), EVX_EINVAL);
  evx_test_free_loop(loop);

  /* Handles of a freed loop stay stale for the next loop's timers. */
  evx_loop *l2 = evx_loop_new(NULL);
  evx_timer *e = evx_call_later(l2, 1000, count_cb, &later);
  ck_assert_ptr_nonnull(e);
  ck_assert_int_eq(evx_timer_cancel(a), EVX_EINVAL);
  ck_assert_int_eq(evx_timer_cancel(d), EVX_EINVAL);
  ck_assert_int_eq(evx_timer_cancel(e), EVX_OK);
  evx_test_free_loop(l2);
}
END_TEST

static Suite *timers_suite(void) {
  Suite *s = suite_create("timers");
  TCase *tc = evx_test_tcase(s, "order", 10);
  tcase_add_test(tc, test_order_by_deadline);
  tcase_add_test(tc, test_zero_ms);
  tcase_add_test(tc, test_many_timers);
  tcase_add_test(tc, test_not_early_after_busy_callback);
  tc = evx_test_tcase(s, "cancel", 10);
  tcase_add_test(tc, test_cancel_prevents_call);
  tcase_add_test(tc, test_cancel_from_timer_callback);
  tcase_add_test(tc, test_cancel_inside_own_callback);
  tcase_add_test(tc, test_invalid_args);
  tcase_add_test(tc, test_cancel_after_fire_is_stale);
  tc = evx_test_tcase(s, "thread", 10);
  tcase_add_test(tc, test_wrong_thread);
  return s;
}

int main(void) { return evx_test_main(timers_suite()); }
