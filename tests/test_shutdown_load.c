/*
 * Shutdown under load: stopping the loop while jobs, strand jobs, futures and
 * deferred callbacks are queued loses nothing.
 *
 * Every submit attempt ends in exactly one of three ways, and the ledger
 * below checks which one for every attempt:
 *   - refused at once (submit returned EVX_EBUSY / EVX_ECLOSED): neither
 *     work nor done is ever called;
 *   - ran: work ran once, then done(arg, EVX_OK) once;
 *   - cancelled: work never ran, done(arg, EVX_ECANCELED) once.
 * So accepted = ran + cancelled, and nothing is silently dropped.
 *
 * The shutdown sequence exercised is the one docs/RELIABILITY.md documents:
 * evx_loop_stop -> evx_executor_shutdown(DRAIN|CANCEL) -> evx_executor_free
 * (joins the workers and calls every owed done) -> evx_loop_free (runs the
 * callbacks those done calls queued).
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>

#include "evx_test.h"

/* ---- the ledger ------------------------------------------------------- */

typedef struct slot {
  atomic_int work_runs; /* workers */
  int done_calls;       /* loop thread (or the thread freeing the executor) */
  int done_status;
  int submit_rc; /* the submitter's thread; read after it was joined */
  int accepted;
  int seq; /* order in which work ran, for strand jobs */
  struct ledger *lg;
} slot;

typedef struct ledger {
  slot *slots;
  int cap;
  atomic_int used;
  atomic_int run_seq;
  evx_loop *loop;
  evx_executor *ex;       /* follow-up submits go here; NULL once freed */
  int followup_every;     /* done of every Nth job submits a follow-up job */
  int deferred_every;     /* done of every Nth job queues a deferred callback */
  int deferred_added;     /* evx_add_callback returned EVX_OK (loop thread) */
  int deferred_refused;   /* evx_add_callback failed (loop thread) */
  atomic_int deferred_ran;
} ledger;

static void ledger_init(ledger *lg, int cap) {
  memset(lg, 0, sizeof *lg);
  lg->slots = calloc((size_t)cap, sizeof *lg->slots);
  ck_assert_ptr_nonnull(lg->slots);
  lg->cap = cap;
  for (int i = 0; i < cap; i++) {
    atomic_init(&lg->slots[i].work_runs, 0);
    lg->slots[i].lg = lg;
  }
  atomic_init(&lg->used, 0);
  atomic_init(&lg->run_seq, 0);
  atomic_init(&lg->deferred_ran, 0);
}

/* Called from producer threads too, so no ck_assert here (Check's
 * assertions are only safe on the test's own thread). */
static slot *ledger_take(ledger *lg) {
  int i = atomic_fetch_add(&lg->used, 1);
  if (i >= lg->cap) {
    fprintf(stderr, "ledger overflow: %d slots\n", lg->cap);
    abort();
  }
  return &lg->slots[i];
}

static void job_work(void *arg) {
  slot *s = arg;
  s->seq = atomic_fetch_add(&s->lg->run_seq, 1);
  atomic_fetch_add(&s->work_runs, 1);
  /* A little CPU so the queue actually builds up behind the workers. */
  volatile unsigned x = 0;
  for (unsigned i = 0; i < 200; i++) x = x + i;
  (void)x;
}

static void deferred_cb(void *arg) {
  ledger *lg = arg;
  atomic_fetch_add(&lg->deferred_ran, 1);
}

static int submit_slot(evx_executor *ex, evx_strand *st, evx_work_fn work, slot *s);

static void job_done(void *arg, int status) {
  slot *s = arg;
  ledger *lg = s->lg;
  s->done_calls++;
  s->done_status = status;
  int idx = (int)(s - lg->slots);
  /* Deferred work after the response, as a handler does after finish():
   * a follow-up job (mail) and a loop callback. Both may be refused once the
   * executor is shut down or the loop is being freed; that is reported
   * through the return code and counted, never lost. */
  if (lg->followup_every && idx % lg->followup_every == 0 && lg->ex)
    (void)submit_slot(lg->ex, NULL, job_work, ledger_take(lg));
  if (lg->deferred_every && idx % lg->deferred_every == 0) {
    if (evx_add_callback(lg->loop, deferred_cb, lg) == EVX_OK) lg->deferred_added++;
    else lg->deferred_refused++;
  }
}

static int submit_slot(evx_executor *ex, evx_strand *st, evx_work_fn work, slot *s) {
  int rc = st ? evx_strand_submit(st, work, job_done, s) : evx_submit(ex, work, job_done, s);
  s->submit_rc = rc;
  s->accepted = rc == EVX_OK;
  return rc;
}

typedef struct totals {
  int accepted, ran, cancelled, busy, closed;
} totals;

/* Check every slot against the three allowed outcomes and count them. */
static totals ledger_check(ledger *lg) {
  totals t = {0};
  int used = atomic_load(&lg->used);
  for (int i = 0; i < used; i++) {
    slot *s = &lg->slots[i];
    int runs = atomic_load(&s->work_runs);
    if (!s->accepted) {
      ck_assert_msg(s->submit_rc == EVX_EBUSY || s->submit_rc == EVX_ECLOSED,
                    "slot %d: unexpected submit rc %s", i, evx_err_name(s->submit_rc));
      ck_assert_msg(runs == 0 && s->done_calls == 0, "slot %d: refused job ran (%d) or got done (%d)",
                    i, runs, s->done_calls);
      if (s->submit_rc == EVX_EBUSY) t.busy++;
      else t.closed++;
      continue;
    }
    t.accepted++;
    ck_assert_msg(s->done_calls == 1, "slot %d: done called %d times", i, s->done_calls);
    if (s->done_status == EVX_OK) {
      ck_assert_msg(runs == 1, "slot %d: done OK but work ran %d times", i, runs);
      t.ran++;
    } else {
      ck_assert_msg(s->done_status == EVX_ECANCELED, "slot %d: done status %s", i,
                    evx_err_name(s->done_status));
      ck_assert_msg(runs == 0, "slot %d: cancelled but work ran %d times", i, runs);
      t.cancelled++;
    }
  }
  ck_assert_int_eq(t.accepted, t.ran + t.cancelled);
  ck_assert_int_eq(t.accepted + t.busy + t.closed, used);
  return t;
}

/* ---- deterministic: parked workers, full queue, stop, shutdown ---------- */

#define THREADS 2
#define MAX_QUEUE 32
#define STRAND_JOBS 10

typedef struct fill_ctx {
  ledger *lg;
  evx_executor *ex;
  evx_strand *st;
  evx_gate *gate;
  int plain_accepted;
  int busy;
  int unexpected; /* a submit answered something else than expected */
} fill_ctx;

/* Parked jobs wait on the test's gate (one test at a time uses it). */
static evx_gate *g_gate;
static void park_work(void *arg) {
  slot *s = arg;
  atomic_fetch_add(&s->work_runs, 1);
  evx_gate_park(g_gate);
}

/* Runs on a producer thread while the loop runs: fill the pool, queue
 * deferred callbacks, then stop the loop with everything still pending. */
static void *fill_and_stop(void *arg) {
  fill_ctx *c = arg;
  ledger *lg = c->lg;
  for (int i = 0; i < THREADS; i++)
    if (submit_slot(c->ex, NULL, park_work, ledger_take(lg)) != EVX_OK) c->unexpected++;
  if (c->unexpected == 0) evx_gate_wait_entered(c->gate, THREADS);
  for (int i = 0; i < STRAND_JOBS; i++)
    if (submit_slot(c->ex, c->st, job_work, ledger_take(lg)) != EVX_OK) c->unexpected++;
  for (int i = 0; i < 2 * MAX_QUEUE; i++) {
    int rc = submit_slot(c->ex, NULL, job_work, ledger_take(lg));
    if (rc == EVX_EBUSY) {
      if (++c->busy == 3) break;
    } else if (rc == EVX_OK) {
      c->plain_accepted++;
    } else {
      c->unexpected++;
    }
  }
  evx_loop_stop(lg->loop);
  return NULL;
}

static void run_parked_shutdown(int how) {
  ledger lg;
  ledger_init(&lg, 256);
  evx_gate gate;
  evx_gate_init(&gate);
  g_gate = &gate;
  lg.loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(lg.loop);
  lg.ex = evx_executor_new(lg.loop, &(evx_executor_opts){.threads = THREADS, .max_queue = MAX_QUEUE});
  ck_assert_ptr_nonnull(lg.ex);
  evx_strand *st = evx_strand_new(lg.ex);
  ck_assert_ptr_nonnull(st);
  lg.deferred_every = 1; /* every done queues a deferred callback */

  fill_ctx c = {.lg = &lg, .ex = lg.ex, .st = st, .gate = &gate};
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, fill_and_stop, &c), 0);
  ck_assert_int_eq(evx_loop_run(lg.loop), EVX_OK);
  pthread_join(th, NULL);
  ck_assert_int_eq(c.unexpected, 0);
  ck_assert_int_eq(c.plain_accepted + STRAND_JOBS, MAX_QUEUE);

  /* The loop is stopped with 2 jobs running and 32 waiting. */
  ck_assert_int_eq(evx_executor_shutdown(lg.ex, how), EVX_OK);
  slot *late = ledger_take(&lg);
  ck_assert_int_eq(submit_slot(lg.ex, NULL, job_work, late), EVX_ECLOSED);

  evx_executor_stats before;
  ck_assert_int_eq(evx_executor_stats_get(lg.ex, &before), EVX_OK);
  if (how == EVX_SHUTDOWN_CANCEL) {
    ck_assert_uint_eq(before.cancelled, MAX_QUEUE);
    ck_assert_uint_eq(before.queued, 0);
  } else {
    ck_assert_uint_eq(before.cancelled, 0);
    ck_assert_uint_eq(before.queued, MAX_QUEUE);
  }
  ck_assert_uint_eq(before.running, THREADS);

  evx_gate_open(&gate, THREADS);
  evx_executor_free(lg.ex); /* joins the workers; every owed done runs here */
  lg.ex = NULL;

  totals t = ledger_check(&lg);
  ck_assert_int_eq(t.accepted, THREADS + MAX_QUEUE);
  if (how == EVX_SHUTDOWN_CANCEL) {
    ck_assert_int_eq(t.ran, THREADS);
    ck_assert_int_eq(t.cancelled, MAX_QUEUE);
  } else {
    ck_assert_int_eq(t.ran, THREADS + MAX_QUEUE);
    ck_assert_int_eq(t.cancelled, 0);
    /* Strand jobs ran one at a time, in submission order. */
    for (int i = THREADS + 1; i < THREADS + STRAND_JOBS; i++)
      ck_assert_int_lt(lg.slots[i - 1].seq, lg.slots[i].seq);
  }
  ck_assert_int_eq(t.busy, 3);
  ck_assert_int_eq(t.closed, 1);

  /* Every done queued a deferred callback; evx_loop_free runs them all. */
  ck_assert_int_eq(lg.deferred_added, t.accepted);
  ck_assert_int_eq(lg.deferred_refused, 0);
  evx_loop_free(lg.loop);
  ck_assert_int_eq(atomic_load(&lg.deferred_ran), lg.deferred_added);

  evx_gate_destroy(&gate);
  free(lg.slots);
}

START_TEST(cancel_reports_every_pending_job) { run_parked_shutdown(EVX_SHUTDOWN_CANCEL); }
END_TEST

START_TEST(drain_runs_every_accepted_job) { run_parked_shutdown(EVX_SHUTDOWN_DRAIN); }
END_TEST

/* evx_loop_free with an executor that was never shut down: implicit CANCEL,
 * and still every accepted job is reported exactly once. */
START_TEST(loop_free_reports_jobs_of_live_executor) {
  ledger lg;
  ledger_init(&lg, 128);
  evx_gate gate;
  evx_gate_init(&gate);
  g_gate = &gate;
  lg.loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(lg.loop);
  lg.ex = evx_executor_new(lg.loop, &(evx_executor_opts){.threads = THREADS, .max_queue = MAX_QUEUE});
  ck_assert_ptr_nonnull(lg.ex);
  for (int i = 0; i < THREADS; i++)
    ck_assert_int_eq(submit_slot(lg.ex, NULL, park_work, ledger_take(&lg)), EVX_OK);
  evx_gate_wait_entered(&gate, THREADS);
  for (int i = 0; i < MAX_QUEUE; i++)
    ck_assert_int_eq(submit_slot(lg.ex, NULL, job_work, ledger_take(&lg)), EVX_OK);
  /* Release the parked workers and free at once: the workers race the
   * implicit cancel for the waiting jobs. Either outcome is fine; a lost or
   * doubled done is not. */
  evx_gate_open(&gate, THREADS);
  lg.ex = NULL; /* done callbacks must not submit to it */
  evx_loop_free(lg.loop);
  totals t = ledger_check(&lg);
  ck_assert_int_eq(t.accepted, THREADS + MAX_QUEUE);
  ck_assert_int_ge(t.ran, THREADS);
  evx_gate_destroy(&gate);
  free(lg.slots);
}
END_TEST

/* ---- futures: run_on_executor at shutdown ------------------------------ */

typedef struct fut_count {
  int arg_freed;
  int result_freed;
  int settled_ok;
  int settled_cancelled;
  int settled_other;
} fut_count;

static fut_count g_fc;

static void count_arg_free(void *p) {
  g_fc.arg_freed++;
  free(p);
}
static void count_result_free(void *p) {
  g_fc.result_freed++;
  free(p);
}
static int call_fn(void *arg, void **result) {
  int *r = malloc(sizeof *r);
  if (!r) return EVX_ENOMEM;
  *r = *(int *)arg;
  *result = r;
  return EVX_OK;
}
static void on_settled(evx_future *f, void *arg) {
  (void)arg;
  int st = evx_future_status(f);
  if (st == EVX_OK) g_fc.settled_ok++;
  else if (st == EVX_ECANCELED) g_fc.settled_cancelled++;
  else g_fc.settled_other++;
}

START_TEST(futures_settle_on_cancel_shutdown) {
  enum { N = 20 };
  memset(&g_fc, 0, sizeof g_fc);
  ledger lg;
  ledger_init(&lg, 16);
  evx_gate gate;
  evx_gate_init(&gate);
  g_gate = &gate;
  lg.loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(lg.loop);
  lg.ex = evx_executor_new(lg.loop, &(evx_executor_opts){.threads = 1, .max_queue = 64});
  ck_assert_ptr_nonnull(lg.ex);
  ck_assert_int_eq(submit_slot(lg.ex, NULL, park_work, ledger_take(&lg)), EVX_OK);
  evx_gate_wait_entered(&gate, 1);

  evx_future *fs[N];
  for (int i = 0; i < N; i++) {
    int *a = malloc(sizeof *a);
    ck_assert_ptr_nonnull(a);
    *a = i;
    fs[i] = evx_run_on_executor(lg.ex, call_fn, a, count_arg_free, count_result_free);
    ck_assert_ptr_nonnull(fs[i]);
    ck_assert_int_eq(evx_future_status(fs[i]), EVX_PENDING);
    ck_assert_int_eq(evx_future_on_done(fs[i], on_settled, NULL), EVX_OK);
  }
  ck_assert_int_eq(evx_executor_shutdown(lg.ex, EVX_SHUTDOWN_CANCEL), EVX_OK);
  evx_gate_open(&gate, 1);
  evx_executor_free(lg.ex);
  lg.ex = NULL;
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(evx_future_status(fs[i]), EVX_ECANCELED);
    evx_future_release(fs[i]); /* the pending callback batch keeps its own reference */
  }
  ck_assert_int_eq(g_fc.arg_freed, N); /* no worker will use the args any more */
  evx_loop_free(lg.loop);               /* runs the future callbacks */
  ck_assert_int_eq(g_fc.settled_cancelled, N);
  ck_assert_int_eq(g_fc.settled_ok + g_fc.settled_other, 0);
  ck_assert_int_eq(g_fc.result_freed, 0); /* no call ran, so no result exists */
  totals t = ledger_check(&lg);
  ck_assert_int_eq(t.ran, 1);
  evx_gate_destroy(&gate);
  free(lg.slots);
}
END_TEST

/* ---- racing: producers hammer the pool while the loop stops ------------ */

#define PRODUCERS 2
#define PER_PRODUCER 3000

#define BUSY_RETRIES 200

typedef struct prod_ctx {
  ledger *lg;
  evx_executor *ex;
  int id;
  int busy_retries; /* EVX_EBUSY answers that were retried */
} prod_ctx;

static void *producer(void *arg) {
  prod_ctx *p = arg;
  for (int i = 0; i < PER_PRODUCER; i++) {
    /* Back off on a full queue like a well-behaved client, a bounded number
     * of times; the slot records the final answer. */
    slot *s = ledger_take(p->lg);
    for (int tries = 0; submit_slot(p->ex, NULL, job_work, s) == EVX_EBUSY && tries < BUSY_RETRIES;
         tries++) {
      p->busy_retries++;
      sched_yield();
    }
    /* Stop the loop half way, while the pool is saturated. */
    if (p->id == 0 && i == PER_PRODUCER / 2) evx_loop_stop(p->lg->loop);
  }
  return NULL;
}

START_TEST(shutdown_races_producers) {
  int how = _i == 0 ? EVX_SHUTDOWN_DRAIN : EVX_SHUTDOWN_CANCEL;
  ledger lg;
  /* Follow-ups are at most one per job. */
  ledger_init(&lg, PRODUCERS * PER_PRODUCER * 2);
  lg.loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(lg.loop);
  lg.ex = evx_executor_new(lg.loop, &(evx_executor_opts){.threads = 3, .max_queue = 64});
  ck_assert_ptr_nonnull(lg.ex);
  lg.followup_every = 4;
  lg.deferred_every = 3;

  pthread_t th[PRODUCERS];
  prod_ctx pc[PRODUCERS];
  for (int i = 0; i < PRODUCERS; i++) {
    pc[i] = (prod_ctx){.lg = &lg, .ex = lg.ex, .id = i};
    ck_assert_int_eq(pthread_create(&th[i], NULL, producer, &pc[i]), 0);
  }
  ck_assert_int_eq(evx_loop_run(lg.loop), EVX_OK);
  /* The producers may still be submitting: shut down under their feet. */
  ck_assert_int_eq(evx_executor_shutdown(lg.ex, how), EVX_OK);
  int busy_retries = 0;
  for (int i = 0; i < PRODUCERS; i++) {
    pthread_join(th[i], NULL);
    busy_retries += pc[i].busy_retries;
  }

  evx_executor_stats s;
  ck_assert_int_eq(evx_executor_stats_get(lg.ex, &s), EVX_OK);
  evx_executor_free(lg.ex);
  lg.ex = NULL;
  totals t = ledger_check(&lg);
  ck_assert_uint_eq(s.submitted, (uint64_t)t.accepted);
  if (how == EVX_SHUTDOWN_DRAIN) ck_assert_int_eq(t.cancelled, 0);
  else ck_assert_uint_eq(s.cancelled, (uint64_t)t.cancelled);

  evx_loop_free(lg.loop);
  ck_assert_int_eq(atomic_load(&lg.deferred_ran), lg.deferred_added);
  /* The loop was never closed while done callbacks ran. */
  ck_assert_int_eq(lg.deferred_refused, 0);
  fprintf(stderr,
          "shutdown_load how=%s jobs=%d accepted=%d ran=%d cancelled=%d busy=%d closed=%d "
          "busy_retries=%d deferred=%d\n",
          how == EVX_SHUTDOWN_DRAIN ? "drain" : "cancel", atomic_load(&lg.used), t.accepted, t.ran,
          t.cancelled, t.busy, t.closed, busy_retries, lg.deferred_added);
  free(lg.slots);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("shutdown_load");
  TCase *tc = tcase_create("shutdown");
  tcase_add_test(tc, cancel_reports_every_pending_job);
  tcase_add_test(tc, drain_runs_every_accepted_job);
  tcase_add_test(tc, loop_free_reports_jobs_of_live_executor);
  tcase_add_test(tc, futures_settle_on_cancel_shutdown);
  tcase_add_loop_test(tc, shutdown_races_producers, 0, 2);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return evx_test_main(suite()); }
