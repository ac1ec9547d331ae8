/* The backend-independent cases of ext/tasks (test-only, never installed).
 *
 * Every case talks to the queue through the public API (evexec/tasks.h)
 * only, so it runs unchanged against any backend. A suite file per backend
 * (tests/test_tasks_sqlite.c, tests/test_tasks_redis.c) defines, BEFORE
 * including this header:
 *
 *   static void ts_backend_setup(void);     per test, in the test's process:
 *                                           a fresh, empty store
 *   static void ts_backend_teardown(void);  remove it
 *   static const char *ts_backend_url(void); the store's URL, between the two
 *   static void ts_backend_opts(evx_tasks_opts *o);  optional tweaks (may do
 *                                           nothing; e.g. opts->db for SQLite)
 *
 * and then calls ts_suite_add(suite) to add the shared tcases.
 *
 * Conventions (tests/evx_test.h): a fresh loop per test; the counting
 * allocator must be back to zero at the end; handlers run on worker threads
 * and only record what they saw in atomics (asserted on the loop thread);
 * handlers that must stay busy park on an evx_gate, never on a sleep. Time
 * is the subject only in the delay, backoff and visibility cases, which use
 * short timeouts (tens of ms) and generous upper bounds.
 */
#ifndef EVX_TASKS_SUITE_H
#define EVX_TASKS_SUITE_H

#include <evexec/metrics.h>
#include <evexec/tasks.h>

#include "evx_test.h"

static evx_loop *ts_loop;

/* ---- what handlers record --------------------------------------------------- */

enum {
  TS_DONE = 0,        /* answer DONE */
  TS_RETRY_TWICE,     /* RETRY on attempts 1 and 2, then DONE */
  TS_RETRY,           /* always RETRY */
  TS_FAIL,            /* FAIL */
  TS_NONSENSE,        /* answer 42 */
  TS_PARK_FIRST,      /* attempt 1 parks on the gate, then DONE; later attempts DONE */
  TS_PARK,            /* every run parks on the gate, then DONE */
  TS_UNTIL_CANCELLED  /* spin until evx_task_cancelled(), then RETRY */
};

typedef struct ts_ctx {
  int mode;
  atomic_int runs;          /* handler invocations */
  atomic_int dones;         /* DONE answers */
  atomic_uint last_attempt;
  atomic_uint max_attempt_seen;
  atomic_int bad_view;      /* a handler saw something wrong in its task */
  atomic_int saw_cancel;
  atomic_int seen[1024];    /* runs per payload number (payload "n=<k>") */
  evx_gate gate;
} ts_ctx;

static ts_ctx ts;

static int ts_payload_num(const evx_task *t) {
  size_t len;
  const char *p = evx_task_payload(t, &len);
  char buf[32];
  if (!p || len < 3 || len >= sizeof buf) return -1;
  memcpy(buf, p, len);
  buf[len] = '\0';
  int k;
  return sscanf(buf, "n=%d", &k) == 1 && k >= 0 && k < 1024 ? k : -1;
}

static evx_task_result ts_handler(evx_task *t, void *arg) {
  ts_ctx *c = arg;
  unsigned att = evx_task_attempt(t);
  atomic_fetch_add(&c->runs, 1);
  atomic_store(&c->last_attempt, att);
  unsigned prev = atomic_load(&c->max_attempt_seen);
  while (att > prev && !atomic_compare_exchange_weak(&c->max_attempt_seen, &prev, att)) {
  }
  if (!evx_task_id(t) || !evx_task_name(t) || att < 1 || att > evx_task_max_attempts(t))
    atomic_store(&c->bad_view, 1);
  int k = ts_payload_num(t);
  if (k >= 0) atomic_fetch_add(&c->seen[k], 1);
  switch (c->mode) {
    case TS_RETRY_TWICE:
      if (att <= 2) {
        evx_task_set_error(t, "not yet (attempt %u)", att);
        return EVX_TASK_RETRY;
      }
      break;
    case TS_RETRY:
      evx_task_set_error(t, "still failing on attempt %u", att);
      return EVX_TASK_RETRY;
    case TS_FAIL:
      evx_task_set_error(t, "bad payload, giving up");
      return EVX_TASK_FAIL;
    case TS_NONSENSE: return (evx_task_result)42;
    case TS_PARK_FIRST:
      if (att == 1) evx_gate_park(&c->gate);
      break;
    case TS_PARK: evx_gate_park(&c->gate); break;
    case TS_UNTIL_CANCELLED:
      sem_post(&c->gate.entered);
      while (!evx_task_cancelled(t)) evx_test_spin_us(200);
      atomic_store(&c->saw_cancel, 1);
      return EVX_TASK_RETRY;
    default: break;
  }
  atomic_fetch_add(&c->dones, 1);
  return EVX_TASK_DONE;
}

/* ---- helpers ------------------------------------------------------------------ */

static void ts_begin(int mode) {
  memset(&ts, 0, sizeof ts);
  ts.mode = mode;
  evx_gate_init(&ts.gate);
  ts_backend_setup();
  ts_loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(ts_loop);
}

static void ts_end(void) {
  evx_test_free_loop(ts_loop);
  ts_loop = NULL;
  ts_backend_teardown();
  evx_gate_destroy(&ts.gate);
}

/* Options for a test: short poll and backoff so the cases run in ms. */
static evx_tasks_opts ts_opts(void) {
  evx_tasks_opts o;
  memset(&o, 0, sizeof o);
  o.poll_ms = 10;
  o.backoff_ms = 10;
  o.backoff_max_ms = 40;
  ts_backend_opts(&o);
  return o;
}

static evx_tasks *ts_open_with(const evx_tasks_opts *o) {
  evx_tasks *q = NULL;
  char *msg = NULL;
  int rc = evx_tasks_open(ts_loop, ts_backend_url(), o, &q, &msg);
  ck_assert_msg(rc == EVX_OK, "open %s: %s (%s)", ts_backend_url(), evx_strerror(rc),
                msg ? msg : "");
  ck_assert_ptr_null(msg);
  return q;
}

/* Open, register "t" (and "t2") with ts_handler, start. */
static evx_tasks *ts_open_started(const evx_tasks_opts *o) {
  evx_tasks *q = ts_open_with(o);
  ck_assert_int_eq(evx_tasks_register(q, "t", ts_handler, &ts), EVX_OK);
  ck_assert_int_eq(evx_tasks_register(q, "t2", ts_handler, &ts), EVX_OK);
  ck_assert_int_eq(evx_tasks_start(q), EVX_OK);
  return q;
}

static int ts_future_done(void *arg) { return evx_future_is_done(arg); }

/* Run the loop until f is done; returns its status. */
static int ts_wait(evx_future *f, uint64_t timeout_ms) {
  ck_assert_ptr_nonnull(f);
  evx_test_run_until(ts_loop, ts_future_done, f, timeout_ms);
  return evx_future_status(f);
}

typedef struct ts_atomic_at_least {
  atomic_int *v;
  int n;
} ts_atomic_at_least;

static int ts_reached(void *arg) {
  ts_atomic_at_least *a = arg;
  return atomic_load(a->v) >= a->n;
}

static void ts_run_until(atomic_int *v, int n, uint64_t timeout_ms) {
  ts_atomic_at_least a = {v, n};
  evx_test_run_until(ts_loop, ts_reached, &a, timeout_ms);
}

/* Run the loop for about ms (time is the subject). */
static void ts_run_for(uint64_t ms) {
  evx_test_alloc_pause();
  evx_timer *t = evx_call_later(ts_loop, ms, evx_test_stop_cb, ts_loop);
  evx_test_alloc_resume();
  ck_assert_ptr_nonnull(t);
  evx_test_run(ts_loop, ms + 10000);
}

/* Run the loop until n more handlers entered the gate (they park there). */
typedef struct ts_parked {
  int got, want;
} ts_parked;

static int ts_parked_enough(void *arg) {
  ts_parked *p = arg;
  while (p->got < p->want && sem_trywait(&ts.gate.entered) == 0) p->got++;
  return p->got >= p->want;
}

static void ts_wait_parked(int n) {
  ts_parked p = {0, n};
  evx_test_run_until(ts_loop, ts_parked_enough, &p, 10000);
}

/* Enqueue "n=<k>" as task `name`; returns the future. */
static evx_future *ts_enqueue(evx_tasks *q, const char *name, int k, const evx_task_opts *to) {
  char p[32];
  int len = snprintf(p, sizeof p, "n=%d", k);
  return evx_tasks_enqueue(q, name, p, (size_t)len, to);
}

/* Enqueue and wait until durable; returns a copy of the id (evx_free). */
static char *ts_enqueue_wait(evx_tasks *q, const char *name, int k, const evx_task_opts *to) {
  evx_future *f = ts_enqueue(q, name, k, to);
  ck_assert_int_eq(ts_wait(f, 10000), EVX_OK);
  char *id = evx_future_take(f);
  ck_assert_ptr_nonnull(id);
  evx_future_release(f);
  return id;
}

static void ts_shutdown_free(evx_tasks *q, uint64_t grace_ms) {
  evx_future *f = evx_tasks_shutdown(q, grace_ms);
  ck_assert_int_eq(ts_wait(f, 10000), EVX_OK);
  evx_future_release(f);
  evx_tasks_free(q);
}

static evx_tasks_stats ts_stats(evx_tasks *q) {
  evx_tasks_stats s;
  ck_assert_int_eq(evx_tasks_stats_get(q, &s), EVX_OK);
  return s;
}

/* A handler's own counter moves on its worker before the loop has counted
 * its answer: wait for the queue's completed counter. */
typedef struct ts_completed_wait {
  evx_tasks *q;
  uint64_t n;
} ts_completed_wait;

static int ts_completed_reached(void *arg) {
  ts_completed_wait *w = arg;
  evx_tasks_stats s;
  return evx_tasks_stats_get(w->q, &s) == EVX_OK && s.completed >= w->n;
}

static void ts_wait_completed(evx_tasks *q, uint64_t n) {
  ts_completed_wait w = {q, n};
  evx_test_run_until(ts_loop, ts_completed_reached, &w, 10000);
}

/* Counts are refreshed every 100..1000 ms: wait for one taken after this
 * call that matches. */
typedef struct ts_count_wait {
  evx_tasks *q;
  uint64_t ready, delayed, leased, dead;
  uint64_t after_ms;
} ts_count_wait;

static uint64_t ts_wall_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

static int ts_counts_are(void *arg) {
  ts_count_wait *w = arg;
  evx_tasks_stats s = ts_stats(w->q);
  return s.counted_ms > w->after_ms && s.ready == w->ready && s.delayed == w->delayed && s.leased == w->leased &&
         s.dead == w->dead;
}

static void ts_wait_counts(evx_tasks *q, uint64_t ready, uint64_t delayed, uint64_t leased,
                           uint64_t dead) {
  ts_count_wait w = {q, ready, delayed, leased, dead, ts_wall_ms()};
  evx_test_run_until(ts_loop, ts_counts_are, &w, 30000); /* counts lag on a loaded machine */
}

static evx_task_list *ts_dead(evx_tasks *q) {
  evx_future *f = evx_tasks_dead_list(q, 100);
  ck_assert_int_eq(ts_wait(f, 10000), EVX_OK);
  evx_task_list *l = evx_future_take(f);
  evx_future_release(f);
  ck_assert_ptr_nonnull(l);
  return l;
}

static uint64_t ts_dead_change(evx_tasks *q, int retry, const char *id) {
  evx_future *f = retry ? evx_tasks_dead_retry(q, id) : evx_tasks_dead_purge(q, id);
  ck_assert_int_eq(ts_wait(f, 10000), EVX_OK);
  uint64_t n = *(uint64_t *)evx_future_result(f);
  evx_future_release(f);
  return n;
}

/* ---- cases ---------------------------------------------------------------------- */

START_TEST(ts_basic) {
  ts_begin(TS_DONE);
  evx_tasks_opts o = ts_opts();
  evx_tasks *q = ts_open_started(&o);
  evx_task_opts to = {.key = "k-basic"};
  evx_future *f = ts_enqueue(q, "t", 7, &to);
  ck_assert_ptr_nonnull(f);
  ck_assert(!evx_future_is_done(f)); /* durable later, never inside the call */
  ck_assert_int_eq(ts_wait(f, 10000), EVX_OK);
  ck_assert_ptr_nonnull(evx_future_result(f));
  ck_assert_int_gt((int)strlen(evx_future_result(f)), 0);
  evx_future_release(f);
  ts_run_until(&ts.dones, 1, 10000);
  ts_wait_completed(q, 1);
  ck_assert_int_eq(atomic_load(&ts.seen[7]), 1);
  ck_assert_uint_eq(atomic_load(&ts.last_attempt), 1);
  ck_assert_int_eq(atomic_load(&ts.bad_view), 0);
  ts_wait_counts(q, 0, 0, 0, 0);
  evx_tasks_stats s = ts_stats(q);
  ck_assert_uint_eq(s.enqueued, 1);
  ck_assert_uint_eq(s.completed, 1);
  ck_assert_uint_eq(s.retried, 0);
  ck_assert_uint_eq(s.failed, 0);
  uint64_t hist = 0;
  for (int i = 0; i < 24; i++) hist += s.run_hist[i];
  ck_assert_uint_eq(hist, 1);
  ck_assert_str_eq(evx_tasks_queue_name(q), o.queue ? o.queue : "default");
  ck_assert_ptr_nonnull(evx_tasks_executor(q));
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

/* Many tasks in one loop iteration: each runs exactly once. */
START_TEST(ts_many) {
  ts_begin(TS_DONE);
  evx_tasks_opts o = ts_opts();
  o.workers = 3;
  evx_tasks *q = ts_open_started(&o);
  enum { N = 600 };
  evx_future *fs[N];
  for (int i = 0; i < N; i++) {
    fs[i] = ts_enqueue(q, i % 2 ? "t" : "t2", i % 1024, NULL);
    ck_assert_ptr_nonnull(fs[i]);
  }
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(ts_wait(fs[i], 20000), EVX_OK);
    evx_future_release(fs[i]);
  }
  ts_run_until(&ts.dones, N, 20000);
  ts_wait_completed(q, N);
  for (int i = 0; i < N; i++) ck_assert_int_eq(atomic_load(&ts.seen[i]), 1);
  ts_wait_counts(q, 0, 0, 0, 0);
  ck_assert_uint_eq(ts_stats(q).completed, N);
  ts_shutdown_free(q, 1000);
  ck_assert_int_eq(atomic_load(&ts.runs), N);
  ts_end();
}
END_TEST

START_TEST(ts_retry_then_done) {
  ts_begin(TS_RETRY_TWICE);
  evx_tasks_opts o = ts_opts();
  evx_tasks *q = ts_open_started(&o);
  char *id = ts_enqueue_wait(q, "t", 1, NULL);
  evx_free(id);
  ts_run_until(&ts.dones, 1, 10000);
  ts_wait_completed(q, 1);
  ck_assert_int_eq(atomic_load(&ts.runs), 3);
  ck_assert_uint_eq(atomic_load(&ts.last_attempt), 3);
  evx_tasks_stats s = ts_stats(q);
  ck_assert_uint_eq(s.retried, 2);
  ck_assert_uint_eq(s.completed, 1);
  ck_assert_uint_eq(s.redelivered, 2);
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

/* Out of attempts: dead with the last error; retried from the dead-letter
 * store it runs again from attempt 1; purge forgets it. */
START_TEST(ts_dead_letter) {
  ts_begin(TS_RETRY);
  evx_tasks_opts o = ts_opts();
  evx_tasks *q = ts_open_started(&o);
  evx_task_opts to = {.max_attempts = 3, .key = "dead-key"};
  char *id = ts_enqueue_wait(q, "t", 5, &to);
  ts_run_until(&ts.runs, 3, 10000);
  ts_wait_counts(q, 0, 0, 0, 1);
  ck_assert_int_eq(atomic_load(&ts.runs), 3);
  evx_task_list *l = ts_dead(q);
  ck_assert_uint_eq(l->n, 1);
  ck_assert_str_eq(l->items[0].id, id);
  ck_assert_str_eq(l->items[0].name, "t");
  ck_assert_uint_eq(l->items[0].len, 3);
  ck_assert(memcmp(l->items[0].payload, "n=5", 3) == 0);
  ck_assert_str_eq(l->items[0].key, "dead-key");
  ck_assert_uint_eq(l->items[0].attempts, 3);
  ck_assert_ptr_nonnull(l->items[0].last_error);
  ck_assert_msg(strstr(l->items[0].last_error, "still failing on attempt 3"), "error: %s",
                l->items[0].last_error);
  ck_assert_int_gt(l->items[0].died_ms, 0);
  ck_assert_int_ge(l->items[0].died_ms, l->items[0].enqueued_ms);
  evx_task_list_free(l);
  ck_assert_uint_eq(ts_stats(q).failed, 1);

  /* Retry: runs 3 more times (attempts reset), dead again. */
  ck_assert_uint_eq(ts_dead_change(q, 1, id), 1);
  ts_run_until(&ts.runs, 6, 10000);
  ts_wait_counts(q, 0, 0, 0, 1);
  ck_assert_uint_eq(atomic_load(&ts.max_attempt_seen), 3);
  /* Unknown ids change nothing; purge all removes it. */
  ck_assert_uint_eq(ts_dead_change(q, 1, "999999"), 0);
  ck_assert_uint_eq(ts_dead_change(q, 0, NULL), 1);
  l = ts_dead(q);
  ck_assert_uint_eq(l->n, 0);
  evx_task_list_free(l);
  /* A bad id is refused. */
  evx_future *f = evx_tasks_dead_retry(q, "not an id");
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(evx_future_status(f), EVX_EINVAL);
  evx_future_release(f);
  evx_free(id);
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

START_TEST(ts_fail_is_dead_at_once) {
  ts_begin(TS_FAIL);
  evx_tasks_opts o = ts_opts();
  evx_tasks *q = ts_open_started(&o);
  char *id = ts_enqueue_wait(q, "t", 2, NULL);
  ts_run_until(&ts.runs, 1, 10000);
  ts_wait_counts(q, 0, 0, 0, 1);
  ck_assert_int_eq(atomic_load(&ts.runs), 1);
  evx_task_list *l = ts_dead(q);
  ck_assert_uint_eq(l->n, 1);
  ck_assert_str_eq(l->items[0].last_error, "bad payload, giving up");
  ck_assert_uint_eq(l->items[0].attempts, 1);
  evx_task_list_free(l);
  ck_assert_uint_eq(ts_dead_change(q, 0, id), 1);
  ts_wait_counts(q, 0, 0, 0, 0);
  evx_free(id);
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

/* A handler answering nonsense is a retry with a clear error, and the queue
 * keeps working. */
START_TEST(ts_nonsense_result) {
  ts_begin(TS_NONSENSE);
  evx_tasks_opts o = ts_opts();
  evx_tasks *q = ts_open_started(&o);
  evx_task_opts to = {.max_attempts = 2};
  char *id = ts_enqueue_wait(q, "t", 3, &to);
  evx_free(id);
  ts_run_until(&ts.runs, 2, 10000);
  ts_wait_counts(q, 0, 0, 0, 1);
  evx_task_list *l = ts_dead(q);
  ck_assert_uint_eq(l->n, 1);
  ck_assert_msg(strstr(l->items[0].last_error, "handler returned invalid result 42"), "%s",
                l->items[0].last_error);
  evx_task_list_free(l);
  ts.mode = TS_DONE;
  id = ts_enqueue_wait(q, "t", 4, NULL);
  evx_free(id);
  ts_run_until(&ts.dones, 1, 10000);
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

START_TEST(ts_idempotency_key) {
  ts_begin(TS_DONE);
  evx_tasks_opts o = ts_opts();
  evx_tasks *q = ts_open_started(&o);
  evx_task_opts to = {.key = "<note-1@example>"};
  evx_future *a = ts_enqueue(q, "t", 1, &to), *b = ts_enqueue(q, "t", 2, &to);
  ck_assert_int_eq(ts_wait(a, 10000), EVX_OK);
  ck_assert_int_eq(ts_wait(b, 10000), EVX_OK);
  ck_assert_str_eq(evx_future_result(a), evx_future_result(b));
  ts_run_until(&ts.dones, 1, 10000);
  ts_wait_counts(q, 0, 0, 0, 0);
  /* Still remembered after the task completed. */
  evx_future *c = ts_enqueue(q, "t", 3, &to);
  ck_assert_int_eq(ts_wait(c, 10000), EVX_OK);
  ck_assert_str_eq(evx_future_result(a), evx_future_result(c));
  ts_run_for(50);
  ck_assert_int_eq(atomic_load(&ts.runs), 1);
  ck_assert_int_eq(atomic_load(&ts.seen[1]), 1);
  evx_tasks_stats s = ts_stats(q);
  ck_assert_uint_eq(s.enqueued, 1);
  ck_assert_uint_eq(s.deduplicated, 2);
  evx_future_release(a);
  evx_future_release(b);
  evx_future_release(c);
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

static void ts_expect_fail(evx_future *f, int err) {
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(evx_future_status(f), err); /* settled when the call returns */
  evx_future_release(f);
}

START_TEST(ts_bad_input) {
  ts_begin(TS_DONE);
  evx_tasks_opts o = ts_opts();
  o.max_payload = 64;
  evx_tasks *q = ts_open_started(&o);
  char big[65];
  memset(big, 'x', sizeof big);
  ts_expect_fail(evx_tasks_enqueue(q, "t", "", 0, NULL), EVX_EINVAL);
  ts_expect_fail(evx_tasks_enqueue(q, "t", NULL, 3, NULL), EVX_EINVAL);
  ts_expect_fail(evx_tasks_enqueue(q, "t", big, sizeof big, NULL), EVX_EINVAL);
  ts_expect_fail(evx_tasks_enqueue(q, "unknown", "x", 1, NULL), EVX_EINVAL);
  ts_expect_fail(evx_tasks_enqueue(q, "bad name", "x", 1, NULL), EVX_EINVAL);
  ts_expect_fail(evx_tasks_enqueue(q, "", "x", 1, NULL), EVX_EINVAL);
  ts_expect_fail(evx_tasks_enqueue(q, NULL, "x", 1, NULL), EVX_EINVAL);
  char longkey[202];
  memset(longkey, 'k', 201);
  longkey[201] = '\0';
  evx_task_opts to = {.key = longkey};
  ts_expect_fail(evx_tasks_enqueue(q, "t", "x", 1, &to), EVX_EINVAL);
  to.key = "";
  ts_expect_fail(evx_tasks_enqueue(q, "t", "x", 1, &to), EVX_EINVAL);
  ck_assert_uint_eq(ts_stats(q).rejected, 9);
  ck_assert_ptr_null(evx_tasks_enqueue(NULL, "t", "x", 1, NULL));
  ck_assert_int_eq(evx_tasks_register(q, "t", ts_handler, &ts), EVX_EINVAL);
  ck_assert_int_eq(evx_tasks_register(q, "a b", ts_handler, &ts), EVX_EINVAL);
  ck_assert_int_eq(evx_tasks_register(q, "x", NULL, &ts), EVX_EINVAL);
  ck_assert_int_eq(evx_tasks_start(q), EVX_EINVAL); /* twice */
  ck_assert_int_eq(evx_tasks_stats_get(q, NULL), EVX_EINVAL);
  /* Still works. */
  char *id = ts_enqueue_wait(q, "t", 1, NULL);
  evx_free(id);
  ts_run_until(&ts.dones, 1, 10000);
  ts_shutdown_free(q, 1000);
  ck_assert_int_eq(atomic_load(&ts.runs), 1);

  /* Bad options and URLs. */
  evx_tasks *q2 = NULL;
  char *msg = NULL;
  ck_assert_int_eq(evx_tasks_open(ts_loop, "nosuch:x", NULL, &q2, &msg), EVX_EINVAL);
  ck_assert_ptr_nonnull(msg);
  evx_free(msg);
  msg = NULL;
  evx_tasks_opts bad = ts_opts();
  bad.max_payload = (size_t)65 << 20;
  ck_assert_int_eq(evx_tasks_open(ts_loop, ts_backend_url(), &bad, &q2, &msg), EVX_EINVAL);
  evx_free(msg);
  msg = NULL;
  bad = ts_opts();
  bad.queue = "bad queue";
  ck_assert_int_eq(evx_tasks_open(ts_loop, ts_backend_url(), &bad, &q2, &msg), EVX_EINVAL);
  evx_free(msg);
  msg = NULL;
  bad = ts_opts();
  bad.synchronous = 7;
  ck_assert_int_eq(evx_tasks_open(ts_loop, ts_backend_url(), &bad, &q2, &msg), EVX_EINVAL);
  evx_free(msg);
  ck_assert_ptr_null(q2);
  ck_assert_int_eq(evx_tasks_open(NULL, ts_backend_url(), NULL, &q2, NULL), EVX_EINVAL);
  evx_tasks_free(NULL);
  evx_task_list_free(NULL);
  ts_end();
}
END_TEST

/* A full queue answers EVX_EBUSY at once and stores nothing; room comes back
 * as tasks complete. */
START_TEST(ts_backpressure) {
  ts_begin(TS_PARK);
  evx_tasks_opts o = ts_opts();
  o.max_pending = 3;
  o.workers = 1;
  evx_tasks *q = ts_open_started(&o);
  for (int i = 0; i < 3; i++) {
    char *id = ts_enqueue_wait(q, "t", i, NULL);
    evx_free(id);
  }
  ts_wait_parked(1); /* one runs (parked), two wait */
  ts_expect_fail(ts_enqueue(q, "t", 9, NULL), EVX_EBUSY);
  ck_assert_uint_eq(ts_stats(q).rejected, 1);
  evx_gate_open(&ts.gate, 3);
  ts_run_until(&ts.dones, 3, 10000);
  ts_wait_counts(q, 0, 0, 0, 0);
  ts.mode = TS_DONE;
  ck_assert_uint_eq(ts_stats(q).completed, 3);
  char *id = ts_enqueue_wait(q, "t", 10, NULL);
  evx_free(id);
  ts_run_until(&ts.dones, 4, 10000);
  ck_assert_int_eq(atomic_load(&ts.seen[9]), 0);
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

START_TEST(ts_delay) {
  ts_begin(TS_DONE);
  evx_tasks_opts o = ts_opts();
  evx_tasks *q = ts_open_started(&o);
  uint64_t t0 = evx_now_ns();
  evx_task_opts to = {.delay_ms = 300};
  char *id = ts_enqueue_wait(q, "t", 1, &to);
  evx_free(id);
  ts_run_for(150);
  ck_assert_int_eq(atomic_load(&ts.runs), 0);
  ts_run_until(&ts.dones, 1, 10000);
  ck_assert_uint_ge(evx_test_ms_since(t0), 290);
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

/* A lease not completed in time is delivered again; the late DONE of the
 * first delivery changes nothing. */
START_TEST(ts_visibility_timeout) {
  ts_begin(TS_PARK_FIRST);
  evx_tasks_opts o = ts_opts();
  o.workers = 2;
  o.visibility_ms = 300;
  evx_tasks *q = ts_open_started(&o);
  char *id = ts_enqueue_wait(q, "t", 1, NULL);
  evx_free(id);
  ts_wait_parked(1);
  uint64_t t0 = evx_now_ns();
  ts_run_until(&ts.dones, 1, 10000); /* attempt 2 on the other worker */
  ck_assert_uint_ge(evx_test_ms_since(t0), 200);
  ck_assert_uint_ge(atomic_load(&ts.max_attempt_seen), 2);
  ck_assert_uint_ge(ts_stats(q).redelivered, 1);
  evx_gate_open(&ts.gate, 1);
  ts_run_until(&ts.dones, 2, 10000);
  ts_wait_counts(q, 0, 0, 0, 0);
  /* (On a loaded machine attempt 2 may expire too: every run still ended DONE.) */
  ck_assert_int_eq(atomic_load(&ts.runs), atomic_load(&ts.dones));
  ck_assert_int_eq(atomic_load(&ts.seen[1]), atomic_load(&ts.runs));
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

/* A task whose lease expires on its last attempt goes to the dead-letter
 * store with an error saying so. */
START_TEST(ts_poison) {
  ts_begin(TS_PARK_FIRST);
  evx_tasks_opts o = ts_opts();
  o.workers = 2;
  o.visibility_ms = 150;
  evx_tasks *q = ts_open_started(&o);
  evx_task_opts to = {.max_attempts = 1};
  char *id = ts_enqueue_wait(q, "t", 1, &to);
  evx_free(id);
  ts_wait_parked(1);
  ts_wait_counts(q, 0, 0, 0, 1);
  evx_task_list *l = ts_dead(q);
  ck_assert_uint_eq(l->n, 1);
  ck_assert_msg(strstr(l->items[0].last_error, "lease expired"), "%s", l->items[0].last_error);
  evx_task_list_free(l);
  evx_gate_open(&ts.gate, 1);
  ts_run_until(&ts.dones, 1, 10000);
  ts_run_for(30);
  ck_assert_int_eq(atomic_load(&ts.runs), 1);
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

/* Shutdown: running handlers finish; tasks not started stay stored and the
 * next open resumes them without a second enqueue, attempt not raised. */
START_TEST(ts_shutdown_resume) {
  ts_begin(TS_PARK);
  evx_tasks_opts o = ts_opts();
  o.workers = 1;
  evx_tasks *q = ts_open_started(&o);
  for (int i = 0; i < 5; i++) {
    char *id = ts_enqueue_wait(q, "t", i, NULL);
    evx_free(id);
  }
  ts_wait_parked(1);
  evx_future *f = evx_tasks_shutdown(q, 5000);
  ck_assert_ptr_nonnull(f);
  ts_expect_fail(ts_enqueue(q, "t", 99, NULL), EVX_ECLOSED);
  ts_run_for(20);
  ck_assert(!evx_future_is_done(f)); /* a handler is still running */
  evx_future *f2 = evx_tasks_shutdown(q, 0);
  ck_assert_ptr_eq(f, f2);
  evx_future_release(f2);
  evx_gate_open(&ts.gate, 1);
  ck_assert_int_eq(ts_wait(f, 10000), EVX_OK);
  evx_future_release(f);
  ck_assert_int_eq(atomic_load(&ts.dones), 1);
  evx_tasks_free(q);

  ts.mode = TS_DONE;
  q = ts_open_started(&o);
  ts_run_until(&ts.dones, 5, 10000);
  ck_assert_uint_eq(atomic_load(&ts.max_attempt_seen), 1);
  for (int i = 0; i < 5; i++) ck_assert_int_eq(atomic_load(&ts.seen[i]), 1);
  ts_wait_counts(q, 0, 0, 0, 0);
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

/* A retry in backoff survives a restart: the next open runs it when due,
 * with its attempt count. */
START_TEST(ts_backoff_survives_restart) {
  ts_begin(TS_RETRY_TWICE);
  evx_tasks_opts o = ts_opts();
  o.backoff_ms = 400;
  o.backoff_max_ms = 400;
  evx_tasks *q = ts_open_started(&o);
  char *id = ts_enqueue_wait(q, "t", 1, NULL);
  evx_free(id);
  ts_run_until(&ts.runs, 1, 10000);
  ts_shutdown_free(q, 1000);
  q = ts_open_started(&o);
  ts_run_for(100); /* the backoff is at least 200 ms */
  ck_assert_int_eq(atomic_load(&ts.runs), 1);
  ts_run_until(&ts.dones, 1, 10000);
  ck_assert_uint_eq(atomic_load(&ts.last_attempt), 3);
  ck_assert_int_eq(atomic_load(&ts.runs), 3);
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

/* Past the grace, evx_task_cancelled() turns true for a running handler. */
START_TEST(ts_cancelled_after_grace) {
  ts_begin(TS_UNTIL_CANCELLED);
  evx_tasks_opts o = ts_opts();
  o.workers = 1;
  evx_tasks *q = ts_open_started(&o);
  char *id = ts_enqueue_wait(q, "t", 1, NULL);
  evx_free(id);
  ts_wait_parked(1);
  uint64_t t0 = evx_now_ns();
  evx_future *f = evx_tasks_shutdown(q, 100);
  ck_assert_int_eq(ts_wait(f, 10000), EVX_OK);
  ck_assert_uint_ge(evx_test_ms_since(t0), 90);
  evx_future_release(f);
  ck_assert_int_eq(atomic_load(&ts.saw_cancel), 1);
  evx_tasks_free(q);
  ts_end();
}
END_TEST

/* A worker without the handler for a task retries it with a clear error;
 * in the end it is dead, not lost. A producer may enqueue any valid name. */
START_TEST(ts_unknown_handler) {
  ts_begin(TS_DONE);
  evx_tasks_opts po = ts_opts();
  po.role = EVX_TASKS_ROLE_PRODUCER;
  evx_tasks *p = ts_open_with(&po);
  ck_assert_ptr_null(evx_tasks_executor(p));
  evx_task_opts to = {.max_attempts = 2};
  char *id = ts_enqueue_wait(p, "nobody.handles-this", 1, &to);
  evx_free(id);
  evx_tasks_opts wo = ts_opts();
  wo.role = EVX_TASKS_ROLE_WORKER;
  evx_tasks *w = ts_open_started(&wo);
  ts_wait_counts(w, 0, 0, 0, 1);
  evx_task_list *l = ts_dead(w);
  ck_assert_uint_eq(l->n, 1);
  ck_assert_msg(strstr(l->items[0].last_error, "no handler registered"), "%s",
                l->items[0].last_error);
  evx_task_list_free(l);
  ck_assert_int_eq(atomic_load(&ts.runs), 0);
  ts_shutdown_free(w, 1000);
  ts_shutdown_free(p, 1000);
  ts_end();
}
END_TEST

/* Free without shutdown (and with the loop stopped) settles everything. */
START_TEST(ts_free_abrupt) {
  ts_begin(TS_DONE);
  evx_tasks_opts o = ts_opts();
  evx_tasks *q = ts_open_started(&o);
  evx_future *fs[20];
  for (int i = 0; i < 20; i++) fs[i] = ts_enqueue(q, "t", i, NULL);
  evx_tasks_free(q);
  for (int i = 0; i < 20; i++) {
    int st = evx_future_status(fs[i]);
    ck_assert_msg(st == EVX_OK || st == EVX_ECLOSED, "status %d", st);
    evx_future_release(fs[i]);
  }
  ts_end();
}
END_TEST

/* The loop frees a queue the application did not free; the queue shows in
 * the loop's metrics. */
START_TEST(ts_loop_member) {
  ts_begin(TS_DONE);
  evx_tasks_opts o = ts_opts();
  evx_tasks *q = ts_open_started(&o);
  char *id = ts_enqueue_wait(q, "t", 1, NULL);
  evx_free(id);
  ts_run_until(&ts.dones, 1, 10000);
  ts_wait_counts(q, 0, 0, 0, 0);
  char *text = NULL;
  ck_assert_int_eq(evx_loop_metrics_text(ts_loop, &text, NULL), EVX_OK);
  ck_assert_msg(strstr(text, "evx_tasks_completed_total{queue=\"default\"} 1"), "%s", text);
  ck_assert_msg(strstr(text, "evx_tasks_ready{queue=\"default\"} 0"), "%s", text);
  ck_assert_msg(strstr(text, "evx_tasks_run_seconds_count{queue=\"default\"} 1"), "%s", text);
  evx_free(text);
  evx_future *f = ts_enqueue(q, "t", 2, NULL); /* still in flight at evx_loop_free */
  evx_future_release(f);
  ts_end(); /* frees the queue; no leak */
}
END_TEST

static void ts_suite_add(Suite *s) {
  TCase *tc = evx_test_tcase(s, "tasks", 60);
  tcase_add_test(tc, ts_basic);
  tcase_add_test(tc, ts_many);
  tcase_add_test(tc, ts_retry_then_done);
  tcase_add_test(tc, ts_dead_letter);
  tcase_add_test(tc, ts_fail_is_dead_at_once);
  tcase_add_test(tc, ts_nonsense_result);
  tcase_add_test(tc, ts_idempotency_key);
  tcase_add_test(tc, ts_bad_input);
  tcase_add_test(tc, ts_backpressure);
  tcase_add_test(tc, ts_delay);
  tcase_add_test(tc, ts_visibility_timeout);
  tcase_add_test(tc, ts_poison);
  tcase_add_test(tc, ts_shutdown_resume);
  tcase_add_test(tc, ts_backoff_survives_restart);
  tcase_add_test(tc, ts_cancelled_after_grace);
  tcase_add_test(tc, ts_unknown_handler);
  tcase_add_test(tc, ts_free_abrupt);
  tcase_add_test(tc, ts_loop_member);
}

#endif
