/* evx_executor fast paths: jobs submitted from done() callbacks (the batched
 * path) and workers that spin before sleeping (opts.spin_us).
 *
 * Inside an executor's drain, evx_submit defers jobs without a lock and
 * splices them onto the run queue in batches (see executor/executor.c).
 * These tests pin the guarantees of executor.h on that path: exactly-once
 * done(), exact max_queue / EVX_EBUSY, cancel, shutdown (from the drain and
 * from another thread, DRAIN and CANCEL), free, and stats seen from done().
 * Workers are parked on gates; a done() is triggered deterministically by
 * cancelling a queued job, so its callback runs in a drain while both
 * workers are held. The spin tests check that a spinning worker never
 * strands a job or delays a shutdown. */
#include "evx_test.h"

#include <pthread.h>
#include <string.h>
#include <unistd.h>

/* ---- helpers -------------------------------------------------------------- */

static int g_timed_out;

static void on_timeout(void *arg) {
  g_timed_out = 1;
  evx_loop_stop(arg);
}

/* Run the loop until a callback stops it; fail if that takes over `ms`. */
static void run_loop(evx_loop *loop, uint64_t ms) {
  g_timed_out = 0;
  evx_timer *t = evx_call_later(loop, ms, on_timeout, loop);
  ck_assert_ptr_nonnull(t);
  ck_assert_int_eq(evx_loop_run(loop), EVX_OK);
  ck_assert_int_eq(g_timed_out, 0);
  evx_timer_cancel(t);
}

static void noop_work(void *arg) { (void)arg; }

/* A job whose work and done are counted. */
typedef struct job {
  atomic_int runs;
  int done_calls;
  int status;
} job;

static void job_work(void *arg) { atomic_fetch_add(&((job *)arg)->runs, 1); }

/* Shared state of one test (each test runs in its own process). */
static struct {
  evx_loop *loop;
  evx_executor *ex;
  evx_gate gate;
  int dones;       /* done() calls of every kind */
  int stop_at;     /* stop the loop when dones reaches this */
  job jobs[64];
  int njobs;       /* jobs[] submitted from the trigger */
  int rc_after;    /* a submit made after shutdown, from done() */
  evx_executor_stats st;
} g;

static void count_done(void *arg, int status) {
  job *j = arg;
  if (j) {
    j->done_calls++;
    j->status = status;
  }
  if (++g.dones == g.stop_at) evx_loop_stop(g.loop);
}

static void park_done(void *arg, int status) {
  (void)arg;
  ck_assert_int_eq(status, EVX_OK);
  count_done(NULL, status);
}

/* Two workers parked on g.gate, and a queued job whose cancellation runs
 * `trigger` as a done() callback inside a drain once the loop runs. */
static void setup(unsigned max_queue, evx_done_fn trigger) {
  memset(&g, 0, sizeof g);
  g.loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(g.loop);
  evx_executor_opts o = {.threads = 2, .max_queue = max_queue};
  g.ex = evx_executor_new(g.loop, &o);
  ck_assert_ptr_nonnull(g.ex);
  evx_gate_init(&g.gate);
  for (int i = 0; i < 2; i++)
    ck_assert_int_eq(evx_submit(g.ex, evx_gate_park, park_done, &g.gate), EVX_OK);
  evx_gate_wait_entered(&g.gate, 2);
  evx_job *h = NULL;
  ck_assert_int_eq(evx_submit_job(g.ex, noop_work, trigger, NULL, &h), EVX_OK);
  ck_assert_int_eq(evx_job_cancel(h), EVX_OK);
}

static void teardown_all(void) {
  evx_executor_free(g.ex);
  evx_loop_free(g.loop);
  evx_gate_destroy(&g.gate);
}

/* Submit n counted jobs from the trigger; all must be accepted. */
static void submit_n(int n) {
  for (int i = 0; i < n; i++) {
    ck_assert_int_eq(evx_submit(g.ex, job_work, count_done, &g.jobs[g.njobs]), EVX_OK);
    g.njobs++;
  }
}

static void release_workers(void *arg) {
  (void)arg;
  evx_gate_open(&g.gate, 2);
}

/* ---- a chain of jobs, each submitted by the previous one's done() --------- */

#define CHAIN_TOTAL 20000
#define CHAIN_WINDOW 64

static struct {
  evx_loop *loop;
  evx_executor *ex;
  int submitted, done_ok, done_bad;
  atomic_int work_runs;
} c;

static void chain_work(void *arg) {
  (void)arg;
  atomic_fetch_add(&c.work_runs, 1);
}

static void chain_done(void *arg, int status) {
  if (status == EVX_OK)
    c.done_ok++;
  else
    c.done_bad++;
  if (c.submitted < CHAIN_TOTAL) {
    ck_assert_int_eq(evx_submit(c.ex, chain_work, chain_done, arg), EVX_OK);
    c.submitted++;
  }
  if (c.done_ok + c.done_bad == CHAIN_TOTAL) evx_loop_stop(c.loop);
}

START_TEST(test_chain_exactly_once) {
  memset(&c, 0, sizeof c);
  c.loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(c.loop);
  evx_executor_opts o = {.threads = 2};
  c.ex = evx_executor_new(c.loop, &o);
  ck_assert_ptr_nonnull(c.ex);
  for (int i = 0; i < CHAIN_WINDOW; i++) {
    ck_assert_int_eq(evx_submit(c.ex, chain_work, chain_done, NULL), EVX_OK);
    c.submitted++;
  }
  run_loop(c.loop, 20000);
  ck_assert_int_eq(c.done_ok, CHAIN_TOTAL);
  ck_assert_int_eq(c.done_bad, 0);
  ck_assert_int_eq(atomic_load(&c.work_runs), CHAIN_TOTAL);
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(c.ex, &st), EVX_OK);
  ck_assert_uint_eq(st.submitted, CHAIN_TOTAL);
  ck_assert_uint_eq(st.completed, CHAIN_TOTAL);
  ck_assert_uint_eq(st.queued, 0);
  ck_assert_uint_eq(st.running, 0);
  evx_executor_free(c.ex);
  evx_loop_free(c.loop);
}
END_TEST

/* ---- max_queue is exact from done(), and stats see deferred jobs ---------- */

#define CAP 8

static void trigger_fill(void *arg, int status) {
  (void)arg;
  ck_assert_int_eq(status, EVX_ECANCELED);
  submit_n(3);
  /* The drain's own stats splice first: the three jobs are queued. */
  ck_assert_int_eq(evx_executor_stats_get(g.ex, &g.st), EVX_OK);
  ck_assert_uint_eq(g.st.queued, 3);
  submit_n(CAP - 3);
  ck_assert_int_eq(evx_submit(g.ex, noop_work, count_done, NULL), EVX_EBUSY);
  ck_assert_int_eq(evx_submit(g.ex, noop_work, count_done, NULL), EVX_EBUSY);
  ck_assert_int_eq(evx_executor_stats_get(g.ex, &g.st), EVX_OK);
  ck_assert_uint_eq(g.st.queued, CAP);
  ck_assert_uint_eq(g.st.rejected, 2);
  ck_assert_int_eq(evx_add_callback(g.loop, release_workers, NULL), EVX_OK);
}

START_TEST(test_max_queue_exact_in_done) {
  setup(CAP, trigger_fill);
  g.stop_at = 2 + CAP; /* parked + filled (the trigger's done is not counted) */
  run_loop(g.loop, 10000);
  ck_assert_int_eq(g.njobs, CAP);
  for (int i = 0; i < CAP; i++) {
    ck_assert_int_eq(atomic_load(&g.jobs[i].runs), 1);
    ck_assert_int_eq(g.jobs[i].done_calls, 1);
    ck_assert_int_eq(g.jobs[i].status, EVX_OK);
  }
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(g.ex, &st), EVX_OK);
  ck_assert_uint_eq(st.submitted, 2 + 1 + CAP);
  ck_assert_uint_eq(st.cancelled, 1);
  ck_assert_uint_eq(st.rejected, 2);
  ck_assert_uint_eq(st.queued, 0);
  teardown_all();
}
END_TEST

/* ---- cancel a job that done() just submitted ------------------------------ */

static void trigger_cancel(void *arg, int status) {
  (void)arg;
  (void)status;
  submit_n(2);
  evx_job *h = NULL;
  ck_assert_int_eq(evx_submit_job(g.ex, job_work, count_done, &g.jobs[g.njobs], &h), EVX_OK);
  g.njobs++;
  submit_n(1);
  ck_assert_int_eq(evx_job_cancel(h), EVX_OK);
  ck_assert_int_eq(g.jobs[2].done_calls, 0); /* never inside the cancel call */
  ck_assert_int_eq(evx_add_callback(g.loop, release_workers, NULL), EVX_OK);
}

START_TEST(test_cancel_deferred) {
  setup(0, trigger_cancel);
  g.stop_at = 2 + 4;
  run_loop(g.loop, 10000);
  for (int i = 0; i < 4; i++) {
    ck_assert_int_eq(g.jobs[i].done_calls, 1);
    ck_assert_int_eq(atomic_load(&g.jobs[i].runs), i == 2 ? 0 : 1);
    ck_assert_int_eq(g.jobs[i].status, i == 2 ? EVX_ECANCELED : EVX_OK);
  }
  teardown_all();
}
END_TEST

/* ---- shutdown from done(): CANCEL and DRAIN ------------------------------- */

static int g_how;

static void trigger_shutdown(void *arg, int status) {
  (void)arg;
  (void)status;
  submit_n(5);
  ck_assert_int_eq(evx_executor_shutdown(g.ex, g_how), EVX_OK);
  g.rc_after = evx_submit(g.ex, noop_work, count_done, NULL);
  ck_assert_int_eq(evx_add_callback(g.loop, release_workers, NULL), EVX_OK);
}

static void check_shutdown_outcome(void) {
  ck_assert_int_eq(g.rc_after, EVX_ECLOSED);
  for (int i = 0; i < g.njobs; i++) {
    ck_assert_int_eq(g.jobs[i].done_calls, 1);
    if (g_how == EVX_SHUTDOWN_CANCEL) {
      ck_assert_int_eq(g.jobs[i].status, EVX_ECANCELED);
      ck_assert_int_eq(atomic_load(&g.jobs[i].runs), 0);
    } else {
      ck_assert_int_eq(g.jobs[i].status, EVX_OK);
      ck_assert_int_eq(atomic_load(&g.jobs[i].runs), 1);
    }
  }
}

START_TEST(test_shutdown_cancel_in_done) {
  g_how = EVX_SHUTDOWN_CANCEL;
  setup(0, trigger_shutdown);
  g.stop_at = 2 + 5;
  run_loop(g.loop, 10000);
  ck_assert_int_eq(g.njobs, 5);
  check_shutdown_outcome();
  teardown_all();
}
END_TEST

START_TEST(test_shutdown_drain_in_done) {
  g_how = EVX_SHUTDOWN_DRAIN;
  setup(0, trigger_shutdown);
  g.stop_at = 2 + 5;
  run_loop(g.loop, 10000);
  ck_assert_int_eq(g.njobs, 5);
  check_shutdown_outcome();
  teardown_all();
}
END_TEST

/* ---- shutdown from another thread while done() holds deferred jobs -------- */

static struct {
  sem_t go, done;
  pthread_t tid;
} h;

static void *shutdown_thread(void *arg) {
  (void)arg;
  sem_wait(&h.go);
  evx_executor_shutdown(g.ex, g_how);
  sem_post(&h.done);
  return NULL;
}

static void trigger_remote_shutdown(void *arg, int status) {
  (void)arg;
  (void)status;
  /* The drain's first submit is queued at once (idle workers may run it);
   * the next three stay deferred until this done() returns. */
  ck_assert_int_eq(evx_submit(g.ex, noop_work, count_done, NULL), EVX_OK);
  submit_n(3);
  /* Another thread shuts the executor down while the three jobs are still
   * deferred by this drain; this callback waits for it (test only). */
  sem_post(&h.go);
  sem_wait(&h.done);
  /* Idle workers now see `closed`; with DRAIN they must still wait for the
   * splice below instead of exiting. Give a wrong implementation the time to
   * exit - correct code does not depend on this pause. */
  if (g_how == EVX_SHUTDOWN_DRAIN) usleep(20000);
  /* The shutdown happened before this submit: it must be refused. */
  g.rc_after = evx_submit(g.ex, noop_work, count_done, NULL);
}

static void remote_shutdown_case(int how) {
  g_how = how;
  memset(&g, 0, sizeof g);
  sem_init(&h.go, 0, 0);
  sem_init(&h.done, 0, 0);
  g.loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(g.loop);
  evx_executor_opts o = {.threads = 2};
  g.ex = evx_executor_new(g.loop, &o);
  ck_assert_ptr_nonnull(g.ex);
  evx_gate_init(&g.gate);
  ck_assert_int_eq(pthread_create(&h.tid, NULL, shutdown_thread, NULL), 0);
  /* Workers idle (not parked): a plain job triggers the drain. */
  ck_assert_int_eq(evx_submit(g.ex, noop_work, trigger_remote_shutdown, NULL), EVX_OK);
  g.stop_at = 1 + 3;
  run_loop(g.loop, 10000);
  pthread_join(h.tid, NULL);
  ck_assert_int_eq(g.njobs, 3);
  check_shutdown_outcome();
  teardown_all();
  sem_destroy(&h.go);
  sem_destroy(&h.done);
}

START_TEST(test_remote_shutdown_drain) { remote_shutdown_case(EVX_SHUTDOWN_DRAIN); }
END_TEST

START_TEST(test_remote_shutdown_cancel) { remote_shutdown_case(EVX_SHUTDOWN_CANCEL); }
END_TEST

/* ---- free from done() with deferred jobs ---------------------------------- */

static void trigger_free(void *arg, int status) {
  (void)arg;
  (void)status;
  submit_n(4);
  /* Free shuts down (CANCEL) right here, so none of the four can start;
   * the rest of it waits until this batch of done() callbacks ends. */
  evx_executor_free(g.ex);
  g.ex = NULL;
  evx_gate_open(&g.gate, 2); /* let the parked jobs finish so free can join */
}

START_TEST(test_free_in_done) {
  setup(0, trigger_free);
  g.stop_at = -1; /* the loop stops below */
  ck_assert_int_eq(evx_add_callback(g.loop, evx_test_stop_cb, g.loop), EVX_OK);
  run_loop(g.loop, 10000);
  /* The parked jobs and the four deferred ones were all answered by free. */
  ck_assert_int_eq(g.dones, 2 + 4);
  for (int i = 0; i < 4; i++) {
    ck_assert_int_eq(g.jobs[i].done_calls, 1);
    ck_assert_int_eq(g.jobs[i].status, EVX_ECANCELED);
    ck_assert_int_eq(atomic_load(&g.jobs[i].runs), 0);
  }
  evx_loop_free(g.loop);
  evx_gate_destroy(&g.gate);
}
END_TEST

/* ---- submits from loop callbacks: wakes paid later in the iteration ------- */

static void *open_when_both_entered(void *arg) {
  (void)arg;
  evx_gate_wait_entered(&g.gate, 2);
  evx_gate_open(&g.gate, 2);
  return NULL;
}

static void submit_two_parkers(void *arg) {
  (void)arg;
  for (int i = 0; i < 2; i++)
    ck_assert_int_eq(evx_submit(g.ex, evx_gate_park, park_done, &g.gate), EVX_OK);
}

/* Both idle workers must be woken for jobs a loop callback submitted (the
 * wakes it owes are paid by the executor's event later in the iteration). */
START_TEST(test_loop_callback_submit_wakes_workers) {
  memset(&g, 0, sizeof g);
  g.loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(g.loop);
  evx_executor_opts o = {.threads = 2};
  g.ex = evx_executor_new(g.loop, &o);
  ck_assert_ptr_nonnull(g.ex);
  evx_gate_init(&g.gate);
  pthread_t t;
  ck_assert_int_eq(pthread_create(&t, NULL, open_when_both_entered, NULL), 0);
  ck_assert_int_eq(evx_add_callback(g.loop, submit_two_parkers, NULL), EVX_OK);
  g.stop_at = 2;
  run_loop(g.loop, 10000);
  pthread_join(t, NULL);
  teardown_all();
}
END_TEST

static void submit_then_free(void *arg) {
  (void)arg;
  usleep(20000); /* the workers are asleep by now, so the submit owes a wake (passes either way) */
  ck_assert_int_eq(evx_submit(g.ex, job_work, count_done, &g.jobs[0]), EVX_OK);
  evx_executor_free(g.ex); /* its wake event is pending in this iteration */
  g.ex = NULL;
  ck_assert_int_eq(g.jobs[0].done_calls, 1);
  ck_assert_int_eq(evx_add_callback(g.loop, evx_test_stop_cb, g.loop), EVX_OK);
}

/* Freeing the executor while its wake event is pending removes the event:
 * the loop goes on without touching freed memory (ASan checks). */
START_TEST(test_free_with_wake_pending) {
  memset(&g, 0, sizeof g);
  g.loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(g.loop);
  evx_executor_opts o = {.threads = 2};
  g.ex = evx_executor_new(g.loop, &o);
  ck_assert_ptr_nonnull(g.ex);
  g.stop_at = -1;
  ck_assert_int_eq(evx_add_callback(g.loop, submit_then_free, NULL), EVX_OK);
  run_loop(g.loop, 10000);
  evx_loop_free(g.loop);
}
END_TEST

static sem_t g_ran;

static void post_ran(void *arg) {
  (void)arg;
  sem_post(&g_ran);
}

static void submit_then_stop(void *arg) {
  (void)arg;
  usleep(20000); /* the workers are asleep by now, so the submit owes a wake (passes either way) */
  ck_assert_int_eq(evx_submit(g.ex, post_ran, NULL, NULL), EVX_OK);
  evx_loop_stop(g.loop); /* ends the iteration before the executor's wake event runs */
}

static int g_started_in_callback;

static void submit_and_watch(void *arg) {
  (void)arg;
  usleep(20000); /* the workers are asleep by now (passes either way) */
  ck_assert_int_eq(evx_submit(g.ex, post_ran, count_done, NULL), EVX_OK);
  /* Test only (the loop thread must not wait for the pool): the first
   * submit of an iteration wakes a worker at once, not at its end. */
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 2;
  g_started_in_callback = sem_timedwait(&g_ran, &ts) == 0;
}

START_TEST(test_first_submit_of_iteration_starts_at_once) {
  memset(&g, 0, sizeof g);
  sem_init(&g_ran, 0, 0);
  g.loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(g.loop);
  evx_executor_opts o = {.threads = 2};
  g.ex = evx_executor_new(g.loop, &o);
  ck_assert_ptr_nonnull(g.ex);
  ck_assert_int_eq(evx_add_callback(g.loop, submit_and_watch, NULL), EVX_OK);
  g.stop_at = 1;
  run_loop(g.loop, 10000);
  ck_assert_int_eq(g_started_in_callback, 1);
  evx_executor_free(g.ex);
  evx_loop_free(g.loop);
  sem_destroy(&g_ran);
}
END_TEST

static void watch_from_done(void *arg, int status) {
  (void)status;
  submit_and_watch(arg);
}

/* The same from a done() callback: the first submit of a drain is not held
 * back until the drain ends. */
START_TEST(test_first_submit_of_drain_starts_at_once) {
  memset(&g, 0, sizeof g);
  sem_init(&g_ran, 0, 0);
  g.loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(g.loop);
  evx_executor_opts o = {.threads = 2};
  g.ex = evx_executor_new(g.loop, &o);
  ck_assert_ptr_nonnull(g.ex);
  ck_assert_int_eq(evx_submit(g.ex, noop_work, watch_from_done, NULL), EVX_OK);
  g.stop_at = 1;
  run_loop(g.loop, 10000);
  ck_assert_int_eq(g_started_in_callback, 1);
  evx_executor_free(g.ex);
  evx_loop_free(g.loop);
  sem_destroy(&g_ran);
}
END_TEST

/* A job submitted just before the loop stops still starts while the loop
 * is stopped: evx_loop_run pays the wakes it left owed. */
START_TEST(test_stop_after_submit_still_runs) {
  memset(&g, 0, sizeof g);
  sem_init(&g_ran, 0, 0);
  g.loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(g.loop);
  evx_executor_opts o = {.threads = 2};
  g.ex = evx_executor_new(g.loop, &o);
  ck_assert_ptr_nonnull(g.ex);
  ck_assert_int_eq(evx_add_callback(g.loop, submit_then_stop, NULL), EVX_OK);
  ck_assert_int_eq(evx_loop_run(g.loop), EVX_OK);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 5;
  ck_assert_int_eq(sem_timedwait(&g_ran, &ts), 0);
  evx_executor_free(g.ex);
  evx_loop_free(g.loop);
  sem_destroy(&g_ran);
}
END_TEST

/* ---- bursts of submits from one loop callback (deferred after the first) -- */

#define BURST 100

static void burst_cb(void *arg) {
  (void)arg;
  for (int i = 0; i < BURST; i++)
    ck_assert_int_eq(evx_submit(g.ex, job_work, count_done, &g.jobs[i % 64]), EVX_OK);
  /* The callback's own stats see every job it submitted. */
  ck_assert_int_eq(evx_executor_stats_get(g.ex, &g.st), EVX_OK);
  ck_assert_uint_eq(g.st.submitted, BURST);
  ck_assert_uint_eq(g.st.queued + g.st.running + g.st.completed, BURST);
}

START_TEST(test_loop_callback_burst) {
  memset(&g, 0, sizeof g);
  g.loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(g.loop);
  evx_executor_opts o = {.threads = 2};
  g.ex = evx_executor_new(g.loop, &o);
  ck_assert_ptr_nonnull(g.ex);
  ck_assert_int_eq(evx_add_callback(g.loop, burst_cb, NULL), EVX_OK);
  g.stop_at = BURST;
  run_loop(g.loop, 10000);
  int runs = 0, dones = 0;
  for (int i = 0; i < 64; i++) {
    runs += atomic_load(&g.jobs[i].runs);
    dones += g.jobs[i].done_calls;
  }
  ck_assert_int_eq(runs, BURST);
  ck_assert_int_eq(dones, BURST);
  teardown_all();
}
END_TEST

static void fill_from_callback(void *arg) {
  (void)arg;
  submit_n(CAP);
  ck_assert_int_eq(evx_submit(g.ex, noop_work, count_done, NULL), EVX_EBUSY);
  ck_assert_int_eq(evx_executor_stats_get(g.ex, &g.st), EVX_OK);
  ck_assert_uint_eq(g.st.queued, CAP);
  ck_assert_int_eq(evx_add_callback(g.loop, release_workers, NULL), EVX_OK);
}

static void no_trigger(void *arg, int status) {
  (void)arg;
  ck_assert_int_eq(status, EVX_ECANCELED);
}

/* max_queue is exact for a loop callback too (not only for done()). */
START_TEST(test_max_queue_exact_in_callback) {
  setup(CAP, no_trigger);
  ck_assert_int_eq(evx_add_callback(g.loop, fill_from_callback, NULL), EVX_OK);
  g.stop_at = 2 + CAP;
  run_loop(g.loop, 10000);
  for (int i = 0; i < CAP; i++) {
    ck_assert_int_eq(atomic_load(&g.jobs[i].runs), 1);
    ck_assert_int_eq(g.jobs[i].status, EVX_OK);
  }
  teardown_all();
}
END_TEST

static atomic_int g_burst_ran;

static void count_ran(void *arg) {
  (void)arg;
  atomic_fetch_add(&g_burst_ran, 1);
  sem_post(&g_ran);
}

static void burst_then_stop(void *arg) {
  (void)arg;
  for (int i = 0; i < 5; i++) ck_assert_int_eq(evx_submit(g.ex, count_ran, NULL, NULL), EVX_OK);
  evx_loop_stop(g.loop); /* before the iteration's end splices the four deferred ones */
}

/* Jobs a loop callback deferred are spliced when evx_loop_run returns. */
START_TEST(test_stop_with_deferred_jobs) {
  memset(&g, 0, sizeof g);
  sem_init(&g_ran, 0, 0);
  atomic_store(&g_burst_ran, 0);
  g.loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(g.loop);
  evx_executor_opts o = {.threads = 2};
  g.ex = evx_executor_new(g.loop, &o);
  ck_assert_ptr_nonnull(g.ex);
  ck_assert_int_eq(evx_add_callback(g.loop, burst_then_stop, NULL), EVX_OK);
  ck_assert_int_eq(evx_loop_run(g.loop), EVX_OK);
  for (int i = 0; i < 5; i++) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 5;
    ck_assert_int_eq(sem_timedwait(&g_ran, &ts), 0);
  }
  ck_assert_int_eq(atomic_load(&g_burst_ran), 5);
  evx_executor_free(g.ex);
  evx_loop_free(g.loop);
  sem_destroy(&g_ran);
}
END_TEST

/* ---- spin_us --------------------------------------------------------------- */

START_TEST(test_spin_option_limits) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor_opts o = {.threads = 1, .spin_us = 1000001};
  ck_assert_ptr_null(evx_executor_new(loop, &o));
  o.spin_us = 1000000;
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  evx_executor_free(ex);
  evx_loop_free(loop);
}
END_TEST

START_TEST(test_spin_chain_exactly_once) {
  memset(&c, 0, sizeof c);
  c.loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(c.loop);
  evx_executor_opts o = {.threads = 2, .spin_us = 200};
  c.ex = evx_executor_new(c.loop, &o);
  ck_assert_ptr_nonnull(c.ex);
  for (int i = 0; i < 4; i++) { /* a small window: workers run dry and spin often */
    ck_assert_int_eq(evx_submit(c.ex, chain_work, chain_done, NULL), EVX_OK);
    c.submitted++;
  }
  run_loop(c.loop, 20000);
  ck_assert_int_eq(c.done_ok, CHAIN_TOTAL);
  ck_assert_int_eq(atomic_load(&c.work_runs), CHAIN_TOTAL);
  evx_executor_free(c.ex);
  evx_loop_free(c.loop);
}
END_TEST

/* The first job that arrives during a spin is left to the spinner; the next
 * one must still wake a sleeping worker, or it would wait behind the first. */
START_TEST(test_spin_second_job_wakes_a_sleeper) {
  memset(&g, 0, sizeof g);
  g.loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(g.loop);
  evx_executor_opts o = {.threads = 2, .spin_us = 1000000};
  g.ex = evx_executor_new(g.loop, &o);
  ck_assert_ptr_nonnull(g.ex);
  evx_gate_init(&g.gate);
  /* Let the idle workers settle: one spins (for up to a second), one sleeps.
   * The test passes either way; the pause makes it exercise the spinner. */
  usleep(50000);
  ck_assert_int_eq(evx_submit(g.ex, evx_gate_park, park_done, &g.gate), EVX_OK);
  ck_assert_int_eq(evx_submit(g.ex, evx_gate_park, park_done, &g.gate), EVX_OK);
  evx_gate_wait_entered(&g.gate, 2); /* both run at once: nobody was stranded */
  evx_gate_open(&g.gate, 2);
  g.stop_at = 2;
  run_loop(g.loop, 10000);
  teardown_all();
}
END_TEST

/* A worker spinning for up to a second must notice a shutdown at once. */
START_TEST(test_spin_free_is_prompt) {
  memset(&g, 0, sizeof g);
  g.loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(g.loop);
  evx_executor_opts o = {.threads = 1, .spin_us = 1000000};
  g.ex = evx_executor_new(g.loop, &o);
  ck_assert_ptr_nonnull(g.ex);
  ck_assert_int_eq(evx_submit(g.ex, job_work, count_done, &g.jobs[0]), EVX_OK);
  g.stop_at = 1;
  run_loop(g.loop, 10000);
  usleep(20000); /* the worker that ran it is spinning by now (passes either way) */
  uint64_t t0 = evx_now_ns();
  evx_executor_free(g.ex);
  uint64_t ms = (evx_now_ns() - t0) / 1000000;
  ck_assert_msg(ms < 500, "free waited %llu ms for a spinning worker", (unsigned long long)ms);
  ck_assert_int_eq(g.jobs[0].done_calls, 1);
  evx_loop_free(g.loop);
}
END_TEST

int main(void) {
  Suite *s = suite_create("executor_fast");
  TCase *tc = tcase_create("batch");
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_chain_exactly_once);
  tcase_add_test(tc, test_max_queue_exact_in_done);
  tcase_add_test(tc, test_cancel_deferred);
  tcase_add_test(tc, test_shutdown_cancel_in_done);
  tcase_add_test(tc, test_shutdown_drain_in_done);
  tcase_add_test(tc, test_remote_shutdown_drain);
  tcase_add_test(tc, test_remote_shutdown_cancel);
  tcase_add_test(tc, test_free_in_done);
  suite_add_tcase(s, tc);
  tcase_add_test(tc, test_loop_callback_submit_wakes_workers);
  tcase_add_test(tc, test_free_with_wake_pending);
  tcase_add_test(tc, test_stop_after_submit_still_runs);
  tcase_add_test(tc, test_first_submit_of_iteration_starts_at_once);
  tcase_add_test(tc, test_first_submit_of_drain_starts_at_once);
  tcase_add_test(tc, test_loop_callback_burst);
  tcase_add_test(tc, test_max_queue_exact_in_callback);
  tcase_add_test(tc, test_stop_with_deferred_jobs);
  TCase *sp = tcase_create("spin");
  tcase_set_timeout(sp, 30);
  tcase_add_test(sp, test_spin_option_limits);
  tcase_add_test(sp, test_spin_chain_exactly_once);
  tcase_add_test(sp, test_spin_second_job_wakes_a_sleeper);
  tcase_add_test(sp, test_spin_free_is_prompt);
  suite_add_tcase(s, sp);
  return evx_test_main(s);
}
