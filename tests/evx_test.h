/* Shared helpers for the Check suites (test-only, never installed).
 *
 * Conventions every suite follows:
 *  - each test uses a fresh loop and ends by proving a clean shutdown:
 *    evx_test_assert_idle() on each executor (queued == running == 0, every
 *    accepted job accounted for), then evx_test_free_loop(), which checks that
 *    the counting allocator installed by the fixture is back to zero blocks;
 *  - tests run forked (CK_FORK, the Check default) with a tcase timeout;
 *  - thread tests are deterministic: workers are parked on an evx_gate, the
 *    test checks EBUSY / cancel / shutdown, then opens the gate;
 *  - ck_assert is only called on the test (= loop) thread: worker code records
 *    what it saw in atomics and the loop thread asserts on it.
 */
#ifndef EVX_TEST_H
#define EVX_TEST_H

#include <check.h>
#include <evexec/evexec.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "evx-private.h" /* evx_now_ns, evx_strdup...: the tests may use evexec's internals */

/* ---- gates: park worker threads deterministically ------------------------ */

/* Each parked job posts `entered`, then waits on `release`. */
typedef struct evx_gate {
  sem_t entered;
  sem_t release;
} evx_gate;

static inline void evx_gate_init(evx_gate *g) {
  sem_init(&g->entered, 0, 0);
  sem_init(&g->release, 0, 0);
}
static inline void evx_gate_destroy(evx_gate *g) {
  sem_destroy(&g->entered);
  sem_destroy(&g->release);
}
/* Work function: park on the gate. arg is the gate. */
static inline void evx_gate_park(void *arg) {
  evx_gate *g = arg;
  sem_post(&g->entered);
  sem_wait(&g->release);
}
/* Wait (from the test thread) until n jobs are parked. */
static inline void evx_gate_wait_entered(evx_gate *g, unsigned n) {
  for (unsigned i = 0; i < n; i++) sem_wait(&g->entered);
}
static inline void evx_gate_open(evx_gate *g, unsigned n) {
  for (unsigned i = 0; i < n; i++) sem_post(&g->release);
}

/* ---- counting / failing allocator ---------------------------------------- */

/* Installed by the fixture of every tcase made with evx_test_tcase(), so every
 * test checks that evexec frees everything it allocated (even without ASan). */
typedef struct evx_test_alloc_state {
  atomic_long live;     /* blocks handed out and not freed yet */
  atomic_long allocs;   /* successful allocations (malloc, calloc, realloc(NULL, n)) */
  atomic_long attempts; /* allocation attempts, failed ones included */
  atomic_long fail_at;  /* 0: never fail; N > 0: fail the Nth attempt */
  atomic_int sticky;    /* with fail_at: fail every attempt from the Nth on */
  atomic_long failures; /* attempts that were made to fail */
} evx_test_alloc_state;

static evx_test_alloc_state evx_test_alloc;

/* While > 0 on a thread, that thread's allocations are neither failed nor
 * counted as attempts: the test harness's own evexec calls (watchdog timers,
 * observers) must not shift or absorb the injected failure. */
static _Thread_local int evx_test_alloc_paused;

static inline int evx_test__should_fail(void) {
  if (evx_test_alloc_paused > 0) return 0;
  long n = atomic_fetch_add(&evx_test_alloc.attempts, 1) + 1;
  long at = atomic_load(&evx_test_alloc.fail_at);
  if (at > 0 && (n == at || (n > at && atomic_load(&evx_test_alloc.sticky)))) {
    atomic_fetch_add(&evx_test_alloc.failures, 1);
    return 1;
  }
  return 0;
}
static inline void *evx_test__malloc(size_t n) {
  if (evx_test__should_fail()) return NULL;
  void *p = malloc(n ? n : 1);
  if (p) {
    atomic_fetch_add(&evx_test_alloc.live, 1);
    atomic_fetch_add(&evx_test_alloc.allocs, 1);
  }
  return p;
}
static inline void *evx_test__calloc(size_t count, size_t n) {
  if (evx_test__should_fail()) return NULL;
  void *p = calloc(count ? count : 1, n ? n : 1);
  if (p) {
    atomic_fetch_add(&evx_test_alloc.live, 1);
    atomic_fetch_add(&evx_test_alloc.allocs, 1);
  }
  return p;
}
static inline void *evx_test__realloc(void *old, size_t n) {
  if (old && n == 0) { /* realloc(p, 0) frees p */
    free(old);
    atomic_fetch_sub(&evx_test_alloc.live, 1);
    return NULL;
  }
  if (evx_test__should_fail()) return NULL;
  void *p = realloc(old, n ? n : 1);
  if (p && !old) {
    atomic_fetch_add(&evx_test_alloc.live, 1);
    atomic_fetch_add(&evx_test_alloc.allocs, 1);
  }
  return p;
}
static inline void evx_test__free(void *p) {
  if (!p) return;
  atomic_fetch_sub(&evx_test_alloc.live, 1);
  free(p);
}

/* Reset the counters and install the counting allocator (no failures). */
static inline void evx_test_alloc_install(void) {
  atomic_store(&evx_test_alloc.live, 0);
  atomic_store(&evx_test_alloc.allocs, 0);
  atomic_store(&evx_test_alloc.attempts, 0);
  atomic_store(&evx_test_alloc.fail_at, 0);
  atomic_store(&evx_test_alloc.sticky, 0);
  atomic_store(&evx_test_alloc.failures, 0);
  ck_assert_int_eq(evx_set_allocator(evx_test__malloc, evx_test__realloc, evx_test__calloc,
                                     evx_test__free),
                   EVX_OK);
}

/* Make the Nth allocation attempt from now fail (0: none); sticky: and every later one. */
static inline void evx_test_alloc_fail_at(long n, int sticky) {
  atomic_store(&evx_test_alloc.sticky, sticky);
  atomic_store(&evx_test_alloc.attempts, 0);
  atomic_store(&evx_test_alloc.failures, 0);
  atomic_store(&evx_test_alloc.fail_at, n);
}

static inline void evx_test_alloc_pause(void) { evx_test_alloc_paused++; }
static inline void evx_test_alloc_resume(void) { evx_test_alloc_paused--; }

static inline long evx_test_alloc_live(void) { return atomic_load(&evx_test_alloc.live); }

/* Checked fixture: runs in the forked child around every test. */
static inline void evx_test_setup(void) { evx_test_alloc_install(); }
static inline void evx_test_teardown(void) {
  ck_assert_msg(evx_test_alloc_live() == 0, "evexec leaked %ld block(s)", evx_test_alloc_live());
}

/* A tcase with the allocator fixture and a timeout (seconds), added to s. */
static inline TCase *evx_test_tcase(Suite *s, const char *name, double timeout) {
  TCase *tc = tcase_create(name);
  tcase_add_checked_fixture(tc, evx_test_setup, evx_test_teardown);
  tcase_set_timeout(tc, timeout);
  suite_add_tcase(s, tc);
  return tc;
}

/* ---- loop helpers -------------------------------------------------------- */

/* Stop the loop from a callback: evx_add_callback(loop, evx_test_stop_cb, loop). */
static inline void evx_test_stop_cb(void *arg) { evx_loop_stop((evx_loop *)arg); }

/* Watchdog state for evx_test_run(): one loop run at a time per test process. */
static struct {
  evx_timer *timer;
  int fired;
} evx_test_wd;

static inline void evx_test__watchdog_cb(void *arg) {
  evx_test_wd.fired = 1;
  evx_test_wd.timer = NULL;
  evx_loop_stop((evx_loop *)arg);
}

/* Run the loop until something calls evx_loop_stop(); fail the test if it does
 * not stop within timeout_ms (a watchdog timer stops it so the failure is
 * reported here, not as a tcase timeout). Must be called on the loop thread. */
static inline void evx_test_run(evx_loop *loop, uint64_t timeout_ms) {
  evx_test_wd.fired = 0;
  evx_test_alloc_pause();
  evx_test_wd.timer = evx_call_later(loop, timeout_ms, evx_test__watchdog_cb, loop);
  evx_test_alloc_resume();
  ck_assert_ptr_nonnull(evx_test_wd.timer);
  ck_assert_int_eq(evx_loop_run(loop), EVX_OK);
  ck_assert_msg(!evx_test_wd.fired, "loop did not stop within %llu ms",
                (unsigned long long)timeout_ms);
  ck_assert_int_eq(evx_timer_cancel(evx_test_wd.timer), EVX_OK);
  evx_test_wd.timer = NULL;
}

/* evx_test_run_until: run the loop until pred(arg) holds, checking it on a
 * 1 ms timer (for outcomes that may already have happened, or whose arrival
 * has no natural place to call evx_loop_stop). Fails after timeout_ms. */
typedef int (*evx_test_pred)(void *arg);

static struct {
  evx_loop *loop;
  evx_timer *timer;
  evx_test_pred pred;
  void *arg;
} evx_test_poll;

static inline void evx_test__poll_cb(void *arg) {
  (void)arg;
  evx_test_poll.timer = NULL;
  if (evx_test_poll.pred(evx_test_poll.arg)) {
    evx_loop_stop(evx_test_poll.loop);
    return;
  }
  evx_test_alloc_pause();
  evx_test_poll.timer = evx_call_later(evx_test_poll.loop, 1, evx_test__poll_cb, NULL);
  evx_test_alloc_resume();
  if (!evx_test_poll.timer) evx_loop_stop(evx_test_poll.loop); /* reported by the caller */
}

static inline void evx_test_run_until(evx_loop *loop, evx_test_pred pred, void *arg,
                                      uint64_t timeout_ms) {
  if (pred(arg)) return;
  evx_test_poll.loop = loop;
  evx_test_poll.pred = pred;
  evx_test_poll.arg = arg;
  evx_test_alloc_pause();
  evx_test_poll.timer = evx_call_later(loop, 1, evx_test__poll_cb, NULL);
  evx_test_alloc_resume();
  ck_assert_ptr_nonnull(evx_test_poll.timer);
  evx_test_run(loop, timeout_ms);
  if (evx_test_poll.timer) evx_timer_cancel(evx_test_poll.timer);
  evx_test_poll.timer = NULL;
  ck_assert_msg(pred(arg), "condition not reached");
}

/* The common predicate: *(int *)arg >= target, packed in an evx_test_count. */
typedef struct evx_test_count {
  const int *value;
  int target;
} evx_test_count;

static inline int evx_test__count_reached(void *arg) {
  evx_test_count *c = arg;
  return *c->value >= c->target;
}

/* Run the loop until *value >= target. */
static inline void evx_test_run_until_count(evx_loop *loop, const int *value, int target,
                                            uint64_t timeout_ms) {
  evx_test_count c = {value, target};
  evx_test_run_until(loop, evx_test__count_reached, &c, timeout_ms);
}

static inline void evx_test__noop_cb(void *arg) { (void)arg; }

/* Run exactly one loop iteration: a stop requested while the loop is not
 * running makes the next evx_loop_run() return after one iteration. A no-op
 * callback queued last makes sure that iteration has something to run, so it
 * returns whether or not an iteration waits for an event. */
static inline void evx_test_run_once(evx_loop *loop) {
  evx_test_alloc_pause();
  int rc = evx_add_callback(loop, evx_test__noop_cb, NULL);
  evx_test_alloc_resume();
  ck_assert_int_eq(rc, EVX_OK);
  ck_assert_int_eq(evx_loop_stop(loop), EVX_OK);
  ck_assert_int_eq(evx_loop_run(loop), EVX_OK);
}

/* A clean executor: nothing waits, nothing runs, every accepted job either ran
 * to the end or was cancelled. Call after every `done` was seen. */
static inline void evx_test_assert_idle(evx_executor *ex) {
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.queued, 0);
  ck_assert_uint_eq(st.running, 0);
  ck_assert_uint_eq(st.submitted, st.completed + st.cancelled);
}

/* Free the loop and prove nothing evexec allocated is left. */
static inline void evx_test_free_loop(evx_loop *loop) {
  evx_loop_free(loop);
  ck_assert_msg(evx_test_alloc_live() == 0, "evexec leaked %ld block(s)", evx_test_alloc_live());
}

/* ---- misc ---------------------------------------------------------------- */

/* Sleep; only for tests where time is the subject. */
static inline void evx_test_sleep_ms(unsigned ms) {
  struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

/* Busy work for about `us` microseconds (widens race windows; not a sleep). */
static inline void evx_test_spin_us(unsigned us) {
  uint64_t end = evx_now_ns() + (uint64_t)us * 1000u;
  while (evx_now_ns() < end) {
  }
}

static inline uint64_t evx_test_ms_since(uint64_t start_ns) {
  return (evx_now_ns() - start_ns) / 1000000u;
}

/* Run `suite` with Check and return the process exit status. */
static inline int evx_test_main(Suite *suite) {
  SRunner *sr = srunner_create(suite);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
