/* evx_condition: wait / notify / notify_all, timeouts, cancelled waiters are
 * removed at once, free fails pending waiters with EVX_ECLOSED. */
#include "evx_test.h"

typedef struct rec {
  int n;
  int order[64];
  int status[64];
} rec;

static rec g_rec;

static void rec_cb(evx_future *f, void *arg) {
  g_rec.order[g_rec.n] = (int)(intptr_t)arg;
  g_rec.status[g_rec.n] = evx_future_status(f);
  g_rec.n++;
}

static evx_loop *new_loop(void) {
  memset(&g_rec, 0, sizeof g_rec);
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  return loop;
}

START_TEST(test_notify_oldest_first) {
  evx_loop *loop = new_loop();
  evx_condition *c = evx_condition_new(loop);
  ck_assert_ptr_nonnull(c);
  ck_assert_uint_eq(evx_condition_waiters(c), 0);
  ck_assert_int_eq(evx_condition_notify(c, 1), 0); /* nobody waits */
  evx_future *w[3];
  for (int i = 0; i < 3; i++) {
    w[i] = evx_condition_wait(c, 0);
    ck_assert_ptr_nonnull(w[i]);
    ck_assert_int_eq(evx_future_on_done(w[i], rec_cb, (void *)(intptr_t)i), EVX_OK);
  }
  ck_assert_uint_eq(evx_condition_waiters(c), 3);
  ck_assert_int_eq(evx_future_status(w[0]), EVX_PENDING);

  ck_assert_int_eq(evx_condition_notify(c, 1), 1);
  ck_assert_uint_eq(evx_condition_waiters(c), 2);
  evx_test_run_until_count(loop, &g_rec.n, 1, 5000);
  ck_assert_int_eq(g_rec.order[0], 0); /* the oldest */
  ck_assert_int_eq(g_rec.status[0], EVX_OK);
  ck_assert_int_eq(evx_future_status(w[0]), EVX_OK);
  ck_assert_ptr_null(evx_future_result(w[0]));
  ck_assert_int_eq(evx_future_status(w[1]), EVX_PENDING);
  ck_assert_int_eq(evx_future_status(w[2]), EVX_PENDING);

  ck_assert_int_eq(evx_condition_notify(c, 5), 2); /* only 2 left */
  ck_assert_uint_eq(evx_condition_waiters(c), 0);
  evx_test_run_until_count(loop, &g_rec.n, 3, 5000);
  ck_assert_int_eq(evx_future_status(w[1]), EVX_OK);
  ck_assert_int_eq(evx_future_status(w[2]), EVX_OK);
  ck_assert_int_eq(evx_condition_notify(c, 0), 0);
  for (int i = 0; i < 3; i++) evx_future_release(w[i]);
  evx_condition_free(c);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_notify_all) {
  evx_loop *loop = new_loop();
  evx_condition *c = evx_condition_new(loop);
  ck_assert_ptr_nonnull(c);
  ck_assert_int_eq(evx_condition_notify_all(c), 0);
  evx_future *w[5];
  for (int i = 0; i < 5; i++) {
    w[i] = evx_condition_wait(c, i % 2 ? 60000 : 0); /* with and without a timeout */
    ck_assert_ptr_nonnull(w[i]);
    ck_assert_int_eq(evx_future_on_done(w[i], rec_cb, (void *)(intptr_t)i), EVX_OK);
  }
  ck_assert_int_eq(evx_condition_notify_all(c), 5);
  ck_assert_uint_eq(evx_condition_waiters(c), 0);
  /* A waiter that arrives after notify_all waits for the next notify. */
  evx_future *late = evx_condition_wait(c, 0);
  ck_assert_ptr_nonnull(late);
  evx_test_run_until_count(loop, &g_rec.n, 5, 5000);
  evx_test_run_once(loop);
  ck_assert_int_eq(g_rec.n, 5);
  for (int i = 0; i < 5; i++) ck_assert_int_eq(g_rec.status[i], EVX_OK);
  ck_assert_int_eq(evx_future_status(late), EVX_PENDING);
  ck_assert_uint_eq(evx_condition_waiters(c), 1);
  ck_assert_int_eq(evx_condition_notify_all(c), 1);
  ck_assert_int_eq(evx_future_status(late), EVX_OK);
  for (int i = 0; i < 5; i++) evx_future_release(w[i]);
  evx_future_release(late);
  evx_condition_free(c);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_timeout) {
  evx_loop *loop = new_loop();
  evx_condition *c = evx_condition_new(loop);
  ck_assert_ptr_nonnull(c);
  uint64_t t0 = evx_now_ns();
  evx_future *w = evx_condition_wait(c, 30);
  evx_future *forever = evx_condition_wait(c, 0);
  ck_assert_ptr_nonnull(w);
  ck_assert_ptr_nonnull(forever);
  ck_assert_int_eq(evx_future_on_done(w, rec_cb, (void *)1), EVX_OK);
  evx_test_run_until_count(loop, &g_rec.n, 1, 5000);
  uint64_t ms = evx_test_ms_since(t0);
  ck_assert_uint_ge(ms + 3, 30);
  ck_assert_uint_lt(ms, 3000);
  ck_assert_int_eq(g_rec.status[0], EVX_ETIMEDOUT);
  ck_assert_int_eq(evx_future_status(w), EVX_ETIMEDOUT);
  ck_assert_uint_eq(evx_condition_waiters(c), 1); /* the timed-out waiter is gone */
  /* notify now wakes only the one still waiting. */
  ck_assert_int_eq(evx_condition_notify_all(c), 1);
  ck_assert_int_eq(evx_future_status(w), EVX_ETIMEDOUT);
  evx_future_release(w);
  evx_future_release(forever);
  evx_condition_free(c);
  evx_test_free_loop(loop);
}
END_TEST

/* Notified before its timeout: resolved, and no ETIMEDOUT later. */
START_TEST(test_notify_before_timeout) {
  evx_loop *loop = new_loop();
  evx_condition *c = evx_condition_new(loop);
  ck_assert_ptr_nonnull(c);
  evx_future *w = evx_condition_wait(c, 20);
  ck_assert_ptr_nonnull(w);
  ck_assert_int_eq(evx_future_on_done(w, rec_cb, (void *)1), EVX_OK);
  ck_assert_int_eq(evx_condition_notify(c, 1), 1);
  evx_test_run_until_count(loop, &g_rec.n, 1, 5000);
  evx_test_sleep_ms(40); /* past the deadline: time is the subject */
  evx_test_run_once(loop);
  evx_test_run_once(loop);
  ck_assert_int_eq(g_rec.n, 1);
  ck_assert_int_eq(evx_future_status(w), EVX_OK);
  evx_future_release(w);
  evx_condition_free(c);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_cancel_removes_waiter) {
  evx_loop *loop = new_loop();
  evx_condition *c = evx_condition_new(loop);
  ck_assert_ptr_nonnull(c);
  evx_future *a = evx_condition_wait(c, 0);
  evx_future *b = evx_condition_wait(c, 60000);
  evx_future *d = evx_condition_wait(c, 0);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(b);
  ck_assert_ptr_nonnull(d);
  ck_assert_uint_eq(evx_condition_waiters(c), 3);
  ck_assert_int_eq(evx_future_cancel(b), EVX_OK);
  ck_assert_uint_eq(evx_condition_waiters(c), 2); /* at once */
  ck_assert_int_eq(evx_future_cancel(a), EVX_OK);
  ck_assert_uint_eq(evx_condition_waiters(c), 1);
  /* notify skips the cancelled ones and wakes d. */
  ck_assert_int_eq(evx_condition_notify(c, 1), 1);
  ck_assert_int_eq(evx_future_status(d), EVX_OK);
  ck_assert_int_eq(evx_future_status(a), EVX_ECANCELED);
  ck_assert_int_eq(evx_future_status(b), EVX_ECANCELED);
  ck_assert_int_eq(evx_condition_notify_all(c), 0);
  evx_future_release(a);
  evx_future_release(b);
  evx_future_release(d);
  evx_test_run_once(loop);
  evx_condition_free(c);
  evx_test_free_loop(loop);
}
END_TEST

/* 10k waiters that all leave: the condition holds nothing for them. */
#define MANY 10000
START_TEST(test_many_cancelled_waiters) {
  evx_loop *loop = new_loop();
  evx_condition *c = evx_condition_new(loop);
  ck_assert_ptr_nonnull(c);
  evx_future **w = malloc(MANY * sizeof *w);
  ck_assert_ptr_nonnull(w);
  evx_test_run_once(loop); /* warm the loop's callback-node cache first */
  /* and its future cache (a bounded free list: as full after the test as now) */
  for (int i = 0; i < MANY; i++) ck_assert_ptr_nonnull(w[i] = evx_future_new(loop));
  for (int i = 0; i < MANY; i++) evx_future_release(w[i]);
  long live_before = evx_test_alloc_live();
  for (int i = 0; i < MANY; i++) {
    w[i] = evx_condition_wait(c, i % 3 == 0 ? 60000 : 0);
    ck_assert_ptr_nonnull(w[i]);
  }
  ck_assert_uint_eq(evx_condition_waiters(c), MANY);
  uint64_t t0 = evx_now_ns();
  /* Cancel in an order that is neither FIFO nor LIFO. */
  for (int i = 0; i < MANY; i += 2) ck_assert_int_eq(evx_future_cancel(w[i]), EVX_OK);
  for (int i = MANY - 1; i > 0; i -= 2) ck_assert_int_eq(evx_future_cancel(w[i]), EVX_OK);
  uint64_t cancel_ms = evx_test_ms_since(t0);
  ck_assert_uint_eq(evx_condition_waiters(c), 0);
  for (int i = 0; i < MANY; i++) evx_future_release(w[i]);
  evx_test_run_once(loop);
  /* Nothing is kept for the departed waiters (no per-waiter residue). */
  ck_assert_int_eq(evx_test_alloc_live(), live_before);
  ck_assert_int_eq(evx_condition_notify_all(c), 0);
  fprintf(stderr, "condition: cancelled %d waiters in %llu ms\n", MANY, (unsigned long long)cancel_ms);
  free(w);
  evx_condition_free(c);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_free_fails_waiters) {
  evx_loop *loop = new_loop();
  evx_condition *c = evx_condition_new(loop);
  ck_assert_ptr_nonnull(c);
  evx_future *w[3];
  for (int i = 0; i < 3; i++) {
    w[i] = evx_condition_wait(c, i == 1 ? 60000 : 0);
    ck_assert_ptr_nonnull(w[i]);
    ck_assert_int_eq(evx_future_on_done(w[i], rec_cb, (void *)(intptr_t)i), EVX_OK);
  }
  evx_condition_free(c);
  for (int i = 0; i < 3; i++) ck_assert_int_eq(evx_future_status(w[i]), EVX_ECLOSED);
  evx_test_run_until_count(loop, &g_rec.n, 3, 5000);
  evx_test_run_once(loop);
  ck_assert_int_eq(g_rec.n, 3);
  for (int i = 0; i < 3; i++) ck_assert_int_eq(g_rec.status[i], EVX_ECLOSED);
  for (int i = 0; i < 3; i++) evx_future_release(w[i]);
  evx_test_free_loop(loop);
}
END_TEST

/* A waiter released (not cancelled) still waits: notify counts it, nothing leaks. */
START_TEST(test_released_waiter_still_waits) {
  evx_loop *loop = new_loop();
  evx_condition *c = evx_condition_new(loop);
  ck_assert_ptr_nonnull(c);
  evx_future *w = evx_condition_wait(c, 0);
  ck_assert_ptr_nonnull(w);
  evx_future_release(w);
  ck_assert_uint_eq(evx_condition_waiters(c), 1);
  ck_assert_int_eq(evx_condition_notify_all(c), 1);
  evx_future *x = evx_condition_wait(c, 0);
  evx_future_release(x);
  evx_test_run_once(loop);
  evx_condition_free(c); /* fails x with ECLOSED and drops it */
  evx_test_free_loop(loop);
}
END_TEST

/* Condition calls from a worker while the loop runs: wrong thread. */
typedef struct wrong {
  evx_loop *loop;
  evx_executor *ex;
  evx_condition *c;
  atomic_int wait_null, notify_rc, notify_all_rc, new_null;
} wrong;

static void wrong_work(void *arg) {
  wrong *w = arg;
  atomic_store(&w->wait_null, evx_condition_wait(w->c, 0) == NULL);
  atomic_store(&w->notify_rc, evx_condition_notify(w->c, 1));
  atomic_store(&w->notify_all_rc, evx_condition_notify_all(w->c));
  atomic_store(&w->new_null, evx_condition_new(w->loop) == NULL);
}
static void wrong_done(void *arg, int status) {
  ck_assert_int_eq(status, EVX_OK);
  evx_loop_stop(((wrong *)arg)->loop);
}
/* Submitted from a loop callback: the loop is running while the worker calls. */
static void wrong_submit_cb(void *arg) {
  wrong *w = arg;
  ck_assert_int_eq(evx_submit(w->ex, wrong_work, wrong_done, w), EVX_OK);
}

START_TEST(test_wrong_thread) {
  evx_loop *loop = new_loop();
  evx_condition *c = evx_condition_new(loop);
  ck_assert_ptr_nonnull(c);
  evx_future *waiter = evx_condition_wait(c, 0);
  ck_assert_ptr_nonnull(waiter);
  evx_executor_opts o = {.threads = 1};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  wrong w = {.loop = loop, .ex = ex, .c = c};
  ck_assert_int_eq(evx_add_callback(loop, wrong_submit_cb, &w), EVX_OK);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(atomic_load(&w.wait_null), 1);
  ck_assert_int_eq(atomic_load(&w.notify_rc), EVX_EINVAL);
  ck_assert_int_eq(atomic_load(&w.notify_all_rc), EVX_EINVAL);
  ck_assert_int_eq(atomic_load(&w.new_null), 1);
  ck_assert_int_eq(evx_future_status(waiter), EVX_PENDING);
  ck_assert_uint_eq(evx_condition_waiters(c), 1);
  evx_future_release(waiter);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_condition_free(c);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_invalid_args) {
  ck_assert_ptr_null(evx_condition_new(NULL));
  ck_assert_ptr_null(evx_condition_wait(NULL, 0));
  ck_assert_int_eq(evx_condition_notify(NULL, 1), EVX_EINVAL);
  ck_assert_int_eq(evx_condition_notify_all(NULL), EVX_EINVAL);
  ck_assert_uint_eq(evx_condition_waiters(NULL), 0);
  evx_condition_free(NULL);
}
END_TEST

static Suite *condition_suite(void) {
  Suite *s = suite_create("condition");
  TCase *tc = evx_test_tcase(s, "notify", 10);
  tcase_add_test(tc, test_notify_oldest_first);
  tcase_add_test(tc, test_notify_all);
  tcase_add_test(tc, test_released_waiter_still_waits);
  tc = evx_test_tcase(s, "timeout", 10);
  tcase_add_test(tc, test_timeout);
  tcase_add_test(tc, test_notify_before_timeout);
  tc = evx_test_tcase(s, "cancel", 20);
  tcase_add_test(tc, test_cancel_removes_waiter);
  tcase_add_test(tc, test_many_cancelled_waiters);
  tc = evx_test_tcase(s, "lifecycle", 10);
  tcase_add_test(tc, test_free_fails_waiters);
  tcase_add_test(tc, test_wrong_thread);
  tcase_add_test(tc, test_invalid_args);
  return s;
}

int main(void) { return evx_test_main(condition_suite()); }
