/* evx_executor_shutdown / evx_executor_free: DRAIN, CANCEL, ECLOSED after,
 * free with pending jobs, and the accounting rule accepted = ran + cancelled. */
#include "evx_test.h"

#include <sched.h>

typedef struct job {
  atomic_int ran;
  int done_calls;
  int status;
} job;

typedef struct ctx {
  evx_loop *loop;
  evx_gate gate;
  int done_total;
  int done_ok;
  int done_cancelled;
  int stop_at;
  int open_at_cancelled; /* open the gate (n_parked) once this many were cancelled */
  unsigned n_parked;
  int in_call; /* set around shutdown/free calls that must not call done inline */
  int done_inside_call;
} ctx;

static ctx g;

static void job_work(void *arg) { atomic_fetch_add(&((job *)arg)->ran, 1); }
static void park_work(void *arg) {
  atomic_fetch_add(&((job *)arg)->ran, 1);
  evx_gate_park(&g.gate);
}
static void job_done(void *arg, int status) {
  job *j = arg;
  j->done_calls++;
  j->status = status;
  if (g.in_call) g.done_inside_call++;
  g.done_total++;
  if (status == EVX_OK) g.done_ok++;
  if (status == EVX_ECANCELED) g.done_cancelled++;
  if (g.open_at_cancelled > 0 && g.done_cancelled == g.open_at_cancelled) evx_gate_open(&g.gate, g.n_parked);
  if (g.done_total == g.stop_at) evx_loop_stop(g.loop);
}

static void ctx_init(evx_loop *loop) {
  memset(&g, 0, sizeof g);
  g.loop = loop;
  evx_gate_init(&g.gate);
}

/* Park `n` workers (jobs parked[0..n)) and queue `m` more (queued[0..m)). */
static void park_and_queue(evx_executor *ex, job *parked, unsigned n, job *queued, unsigned m) {
  for (unsigned i = 0; i < n; i++) ck_assert_int_eq(evx_submit(ex, park_work, job_done, &parked[i]), EVX_OK);
  evx_gate_wait_entered(&g.gate, n);
  g.n_parked = n;
  for (unsigned i = 0; i < m; i++) ck_assert_int_eq(evx_submit(ex, job_work, job_done, &queued[i]), EVX_OK);
}

static void check_closed(evx_executor *ex) {
  job never = {0};
  evx_job *h = NULL;
  ck_assert_int_eq(evx_submit(ex, job_work, job_done, &never), EVX_ECLOSED);
  ck_assert_int_eq(evx_submit_job(ex, job_work, job_done, &never, &h), EVX_ECLOSED);
  evx_test_run_once(g.loop);
  ck_assert_int_eq(atomic_load(&never.ran), 0);
  ck_assert_int_eq(never.done_calls, 0);
}

static evx_executor *two_threads(evx_loop *loop) {
  evx_executor_opts o = {.threads = 2, .max_queue = 64};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  return ex;
}

#define Q 10

START_TEST(test_drain_runs_every_job) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  ctx_init(loop);
  evx_executor *ex = two_threads(loop);
  job parked[2] = {0}, queued[Q] = {0};
  park_and_queue(ex, parked, 2, queued, Q);
  g.in_call = 1;
  uint64_t t0 = evx_now_ns();
  ck_assert_int_eq(evx_executor_shutdown(ex, EVX_SHUTDOWN_DRAIN), EVX_OK);
  ck_assert_uint_lt(evx_test_ms_since(t0), 1000); /* never blocks on the parked pool */
  g.in_call = 0;
  /* Closed at once, while the accepted jobs still wait. */
  job never = {0};
  ck_assert_int_eq(evx_submit(ex, job_work, job_done, &never), EVX_ECLOSED);
  evx_gate_open(&g.gate, 2);
  g.stop_at = Q + 2;
  evx_test_run(loop, 10000);
  ck_assert_int_eq(g.done_inside_call, 0);
  ck_assert_int_eq(g.done_ok, Q + 2);
  for (int i = 0; i < Q; i++) {
    ck_assert_int_eq(atomic_load(&queued[i].ran), 1);
    ck_assert_int_eq(queued[i].done_calls, 1);
    ck_assert_int_eq(queued[i].status, EVX_OK);
  }
  ck_assert_int_eq(never.done_calls, 0);
  check_closed(ex);
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.completed, Q + 2);
  ck_assert_uint_eq(st.cancelled, 0);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_gate_destroy(&g.gate);
  evx_test_free_loop(loop);
}
END_TEST

/* CANCEL: the queued jobs' done(EVX_ECANCELED) arrive while the running jobs
 * are still parked (the gate is opened by the last cancelled done), then the
 * running jobs finish with EVX_OK. */
START_TEST(test_cancel_cancels_queued) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  ctx_init(loop);
  evx_executor *ex = two_threads(loop);
  job parked[2] = {0}, queued[Q] = {0};
  park_and_queue(ex, parked, 2, queued, Q);
  g.in_call = 1;
  ck_assert_int_eq(evx_executor_shutdown(ex, EVX_SHUTDOWN_CANCEL), EVX_OK);
  g.in_call = 0;
  ck_assert_int_eq(g.done_total, 0); /* later, never inside the call */
  job never = {0};
  ck_assert_int_eq(evx_submit(ex, job_work, job_done, &never), EVX_ECLOSED);
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.queued, 0);
  ck_assert_uint_eq(st.running, 2);
  g.open_at_cancelled = Q;
  g.stop_at = Q + 2;
  evx_test_run(loop, 10000);
  ck_assert_int_eq(g.done_cancelled, Q);
  ck_assert_int_eq(g.done_ok, 2);
  for (int i = 0; i < Q; i++) {
    ck_assert_int_eq(atomic_load(&queued[i].ran), 0);
    ck_assert_int_eq(queued[i].done_calls, 1);
    ck_assert_int_eq(queued[i].status, EVX_ECANCELED);
  }
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(parked[i].done_calls, 1);
    ck_assert_int_eq(parked[i].status, EVX_OK);
  }
  check_closed(ex);
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.cancelled, Q);
  ck_assert_uint_eq(st.completed, 2);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_gate_destroy(&g.gate);
  evx_test_free_loop(loop);
}
END_TEST

/* CANCEL cancels every job that has not started, including jobs queued
 * behind a running one on a single worker (A parked, then B parks, C..F wait). */
START_TEST(test_cancel_behind_running_job) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  ctx_init(loop);
  evx_executor_opts o = {.threads = 1};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  job a = {0}, b = {0}, rest[4] = {0};
  ck_assert_int_eq(evx_submit(ex, park_work, job_done, &a), EVX_OK);
  evx_gate_wait_entered(&g.gate, 1);
  ck_assert_int_eq(evx_submit(ex, park_work, job_done, &b), EVX_OK);
  for (int i = 0; i < 4; i++) ck_assert_int_eq(evx_submit(ex, job_work, job_done, &rest[i]), EVX_OK);
  evx_gate_open(&g.gate, 1);
  evx_gate_wait_entered(&g.gate, 1); /* B runs; the 4 others have not started */
  ck_assert_int_eq(evx_executor_shutdown(ex, EVX_SHUTDOWN_CANCEL), EVX_OK);
  g.n_parked = 1;
  g.open_at_cancelled = 4;
  g.stop_at = 6;
  evx_test_run(loop, 5000);
  ck_assert_int_eq(a.status, EVX_OK);
  ck_assert_int_eq(b.status, EVX_OK);
  for (int i = 0; i < 4; i++) {
    ck_assert_int_eq(rest[i].status, EVX_ECANCELED);
    ck_assert_int_eq(atomic_load(&rest[i].ran), 0);
  }
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_gate_destroy(&g.gate);
  evx_test_free_loop(loop);
}
END_TEST

/* DRAIN, then CANCEL: what is still waiting gets cancelled. Shutdown again is fine. */
START_TEST(test_cancel_after_drain) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  ctx_init(loop);
  evx_executor *ex = two_threads(loop);
  job parked[2] = {0}, queued[Q] = {0};
  park_and_queue(ex, parked, 2, queued, Q);
  ck_assert_int_eq(evx_executor_shutdown(ex, EVX_SHUTDOWN_DRAIN), EVX_OK);
  ck_assert_int_eq(evx_executor_shutdown(ex, EVX_SHUTDOWN_CANCEL), EVX_OK);
  ck_assert_int_eq(evx_executor_shutdown(ex, EVX_SHUTDOWN_CANCEL), EVX_OK);
  ck_assert_int_eq(evx_executor_shutdown(ex, EVX_SHUTDOWN_DRAIN), EVX_OK);
  g.open_at_cancelled = Q;
  g.stop_at = Q + 2;
  evx_test_run(loop, 10000);
  ck_assert_int_eq(g.done_cancelled, Q);
  ck_assert_int_eq(g.done_ok, 2);
  for (int i = 0; i < Q; i++) ck_assert_int_eq(atomic_load(&queued[i].ran), 0);
  check_closed(ex);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_gate_destroy(&g.gate);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_shutdown_invalid) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  ctx_init(loop);
  evx_executor *ex = two_threads(loop);
  ck_assert_int_eq(evx_executor_shutdown(NULL, EVX_SHUTDOWN_DRAIN), EVX_EINVAL);
  ck_assert_int_eq(evx_executor_shutdown(ex, 2), EVX_EINVAL);
  ck_assert_int_eq(evx_executor_shutdown(ex, -1), EVX_EINVAL);
  /* An invalid shutdown changed nothing: the executor still accepts work. */
  job j = {0};
  g.stop_at = 1;
  ck_assert_int_eq(evx_submit(ex, job_work, job_done, &j), EVX_OK);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(j.status, EVX_OK);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_gate_destroy(&g.gate);
  evx_test_free_loop(loop);
}
END_TEST

/* The parked jobs of the free tests hold their workers until the queue has
 * been filled with `fill` jobs and then emptied again, i.e. until
 * evx_executor_free's implied CANCEL took the waiting jobs (nothing else can
 * take them: every worker is held). The executor is alive meanwhile (free
 * waits for its workers). Bounded: gives up after 10 s and records it. */
typedef struct hold {
  evx_executor *ex;
  uint64_t fill;
  atomic_int gave_up;
  atomic_int ran;
} hold;

static void hold_until_queue_empty(void *arg) {
  hold *h = arg;
  atomic_fetch_add(&h->ran, 1);
  sem_post(&g.gate.entered);
  uint64_t deadline = evx_now_ns() + 10ull * 1000000000ull;
  int filled = 0;
  for (;;) {
    evx_executor_stats st;
    if (evx_executor_stats_get(h->ex, &st) == EVX_OK) {
      if (!filled && st.queued == h->fill) {
        filled = 1;
        sem_post(&g.gate.entered); /* the test frees only after both saw it */
      }
      if (filled && st.queued == 0) return;
    }
    if (evx_now_ns() > deadline) {
      atomic_store(&h->gave_up, 1);
      return;
    }
    evx_test_sleep_ms(1);
  }
}

static void hold_done(void *arg, int status) {
  (void)arg;
  if (g.in_call) g.done_inside_call++;
  g.done_total++;
  if (status == EVX_OK) g.done_ok++;
}

/* Free with pending jobs = shutdown CANCEL + wait: the queued jobs are
 * cancelled, the running ones finish, and every done is called inside free. */
START_TEST(test_free_with_pending) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  ctx_init(loop);
  evx_executor *ex = two_threads(loop);
  hold h = {.ex = ex, .fill = Q};
  ck_assert_int_eq(evx_submit(ex, hold_until_queue_empty, hold_done, &h), EVX_OK);
  ck_assert_int_eq(evx_submit(ex, hold_until_queue_empty, hold_done, &h), EVX_OK);
  evx_gate_wait_entered(&g.gate, 2);
  job queued[Q] = {0};
  for (int i = 0; i < Q; i++) ck_assert_int_eq(evx_submit(ex, job_work, job_done, &queued[i]), EVX_OK);
  evx_gate_wait_entered(&g.gate, 2); /* both holders saw the full queue */
  g.in_call = 1;
  evx_executor_free(ex);
  g.in_call = 0;
  ck_assert_int_eq(atomic_load(&h.gave_up), 0);
  /* Every done was called inside free: nothing is left for a loop that may never run. */
  ck_assert_int_eq(g.done_inside_call, Q + 2);
  ck_assert_int_eq(g.done_total, Q + 2);
  ck_assert_int_eq(g.done_ok, 2);
  ck_assert_int_eq(g.done_cancelled, Q);
  for (int i = 0; i < Q; i++) {
    ck_assert_int_eq(queued[i].done_calls, 1);
    ck_assert_int_eq(queued[i].status, EVX_ECANCELED);
    ck_assert_int_eq(atomic_load(&queued[i].ran), 0);
  }
  evx_gate_destroy(&g.gate);
  evx_test_free_loop(loop);
}
END_TEST

/* Free after DRAIN: every queued job runs first, inside free. */
START_TEST(test_free_after_drain_runs_all) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  ctx_init(loop);
  evx_executor *ex = two_threads(loop);
  job parked[2] = {0}, queued[Q] = {0};
  park_and_queue(ex, parked, 2, queued, Q);
  ck_assert_int_eq(evx_executor_shutdown(ex, EVX_SHUTDOWN_DRAIN), EVX_OK);
  evx_gate_open(&g.gate, 2);
  evx_executor_free(ex);
  ck_assert_int_eq(g.done_total, Q + 2);
  ck_assert_int_eq(g.done_ok, Q + 2);
  for (int i = 0; i < Q; i++) ck_assert_int_eq(atomic_load(&queued[i].ran), 1);
  evx_gate_destroy(&g.gate);
  evx_test_free_loop(loop);
}
END_TEST

/* Free from inside a loop callback while the loop runs. */
static evx_executor *g_free_me;
static void free_cb(void *arg) {
  (void)arg;
  g.in_call = 1;
  evx_executor_free(g_free_me);
  g.in_call = 0;
  evx_loop_stop(g.loop);
}

START_TEST(test_free_from_callback) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  ctx_init(loop);
  evx_executor *ex = two_threads(loop);
  g_free_me = ex;
  job jobs[Q] = {0};
  for (int i = 0; i < Q; i++) ck_assert_int_eq(evx_submit(ex, job_work, job_done, &jobs[i]), EVX_OK);
  ck_assert_int_eq(evx_add_callback(loop, free_cb, NULL), EVX_OK);
  evx_test_run(loop, 10000);
  ck_assert_int_eq(g.done_total, Q);
  for (int i = 0; i < Q; i++) {
    ck_assert_int_eq(jobs[i].done_calls, 1);
    ck_assert_int_eq(atomic_load(&jobs[i].ran), jobs[i].status == EVX_OK);
  }
  evx_gate_destroy(&g.gate);
  evx_test_free_loop(loop);
}
END_TEST

/* evx_executor_free from one of the executor's own done callbacks (loop
 * thread): the other dones of that batch and the cancelled ones still arrive,
 * exactly once, and nothing is used after free (ASan). */
static evx_executor *g_self_free_ex;
static int g_self_freed;
static void self_free_done(void *arg, int status) {
  job_done(arg, status);
  if (!g_self_freed) {
    g_self_freed = 1;
    evx_executor_free(g_self_free_ex);
  }
}

START_TEST(test_free_from_own_done) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  ctx_init(loop);
  evx_executor_opts o = {.threads = 1};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  g_self_free_ex = ex;
  g_self_freed = 0;
  job first = {0}, parked = {0}, queued[Q] = {0};
  ck_assert_int_eq(evx_submit(ex, job_work, self_free_done, &first), EVX_OK);
  ck_assert_int_eq(evx_submit(ex, park_work, job_done, &parked), EVX_OK);
  evx_gate_wait_entered(&g.gate, 1); /* first ran; parked runs now */
  for (int i = 0; i < Q; i++) ck_assert_int_eq(evx_submit(ex, job_work, job_done, &queued[i]), EVX_OK);
  evx_gate_open(&g.gate, 1); /* free (from first's done) waits for it */
  g.stop_at = Q + 2;
  evx_test_run_until_count(loop, &g.done_total, Q + 2, 10000);
  ck_assert_int_eq(g_self_freed, 1);
  ck_assert_int_eq(first.done_calls, 1);
  ck_assert_int_eq(first.status, EVX_OK);
  ck_assert_int_eq(parked.done_calls, 1);
  for (int i = 0; i < Q; i++) {
    ck_assert_int_eq(queued[i].done_calls, 1);
    ck_assert_int_eq(atomic_load(&queued[i].ran), queued[i].status == EVX_OK);
  }
  evx_test_run_once(loop);
  ck_assert_int_eq(g.done_total, Q + 2);
  evx_gate_destroy(&g.gate);
  evx_test_free_loop(loop);
}
END_TEST

/* Accounting under concurrency: 4 workers, 2 producer threads and the loop
 * thread submit; the loop shuts the executor down with CANCEL half-way.
 * Every accepted job gets exactly one done, accepted = ran + cancelled, and a
 * job's done says EVX_OK exactly when its work ran. */
#define CT_PER_PRODUCER 2000
#define CT_PRODUCERS 2

typedef struct ct {
  evx_executor *ex;
  job jobs[CT_PRODUCERS][CT_PER_PRODUCER];
  atomic_int accepted[CT_PRODUCERS];
  atomic_int closed[CT_PRODUCERS];
  atomic_int other_err;
  sem_t half;
} ct;

static ct *g_ct;

static void ct_work(void *arg) {
  job *j = arg;
  atomic_fetch_add(&j->ran, 1);
  evx_test_spin_us(5);
}
static void ct_done(void *arg, int status) {
  job *j = arg;
  j->done_calls++;
  j->status = status;
  if (++g.done_total == g.stop_at) evx_loop_stop(g.loop);
}

static void *ct_producer(void *arg) {
  int p = (int)(intptr_t)arg;
  int posted_half = 0;
  for (int i = 0; i < CT_PER_PRODUCER; i++) {
    if (i == CT_PER_PRODUCER / 2 && !posted_half) { /* once: i repeats on EBUSY */
      posted_half = 1;
      sem_post(&g_ct->half);
    }
    int rc = evx_submit(g_ct->ex, ct_work, ct_done, &g_ct->jobs[p][i]);
    if (rc == EVX_OK)
      atomic_fetch_add(&g_ct->accepted[p], 1);
    else if (rc == EVX_ECLOSED)
      atomic_fetch_add(&g_ct->closed[p], 1);
    else if (rc == EVX_EBUSY) {
      i--; /* retry: backpressure is not part of this test */
      sched_yield();
    } else
      atomic_fetch_add(&g_ct->other_err, 1);
  }
  return NULL;
}

static void ct_shutdown_cb(void *arg) {
  (void)arg;
  for (int p = 0; p < CT_PRODUCERS; p++) sem_wait(&g_ct->half);
  ck_assert_int_eq(evx_executor_shutdown(g_ct->ex, EVX_SHUTDOWN_CANCEL), EVX_OK);
}

/* Every done may already have run during the first iteration. */
static void ct_check_cb(void *arg) {
  (void)arg;
  if (g.done_total == g.stop_at) evx_loop_stop(g.loop);
}

START_TEST(test_counting) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  ctx_init(loop);
  evx_executor_opts o = {.threads = 4, .max_queue = 256};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  g_ct = calloc(1, sizeof *g_ct);
  ck_assert_ptr_nonnull(g_ct);
  g_ct->ex = ex;
  sem_init(&g_ct->half, 0, 0);
  pthread_t t[CT_PRODUCERS];
  ck_assert_int_eq(evx_add_callback(loop, ct_shutdown_cb, NULL), EVX_OK);
  for (int p = 0; p < CT_PRODUCERS; p++)
    ck_assert_int_eq(pthread_create(&t[p], NULL, ct_producer, (void *)(intptr_t)p), 0);
  /* Run until the shutdown happened, then join the producers. */
  evx_test_run_once(loop);
  for (int p = 0; p < CT_PRODUCERS; p++) pthread_join(t[p], NULL);
  int accepted = 0;
  for (int p = 0; p < CT_PRODUCERS; p++) {
    accepted += atomic_load(&g_ct->accepted[p]);
    ck_assert_int_eq(atomic_load(&g_ct->accepted[p]) + atomic_load(&g_ct->closed[p]), CT_PER_PRODUCER);
    ck_assert_int_ge(atomic_load(&g_ct->accepted[p]), CT_PER_PRODUCER / 2);
  }
  ck_assert_int_eq(atomic_load(&g_ct->other_err), 0);
  g.stop_at = accepted;
  ck_assert_int_eq(evx_add_callback(loop, ct_check_cb, NULL), EVX_OK);
  evx_test_run(loop, 15000);
  ck_assert_int_eq(g.done_total, accepted);
  int ran = 0, cancelled = 0;
  for (int p = 0; p < CT_PRODUCERS; p++)
    for (int i = 0; i < CT_PER_PRODUCER; i++) {
      job *j = &g_ct->jobs[p][i];
      int r = atomic_load(&j->ran);
      ck_assert_int_le(j->done_calls, 1);
      ck_assert_int_le(r, 1);
      if (j->done_calls == 0) {
        ck_assert_int_eq(r, 0); /* rejected with ECLOSED: never ran */
        continue;
      }
      if (j->status == EVX_OK) {
        ck_assert_int_eq(r, 1);
        ran++;
      } else {
        ck_assert_int_eq(j->status, EVX_ECANCELED);
        ck_assert_int_eq(r, 0);
        cancelled++;
      }
    }
  ck_assert_int_eq(ran + cancelled, accepted);
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.submitted, (uint64_t)accepted);
  ck_assert_uint_eq(st.completed, (uint64_t)ran);
  ck_assert_uint_eq(st.cancelled, (uint64_t)cancelled);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  sem_destroy(&g_ct->half);
  free(g_ct);
  evx_gate_destroy(&g.gate);
  evx_test_free_loop(loop);
}
END_TEST

/* evx_executor_shutdown is safe from any thread: a job's work (a worker
 * thread, while the loop runs) shuts its own executor down; the jobs queued
 * behind it are cancelled and later submits are refused. */
static atomic_int g_shutter_rc;
static evx_executor *g_shutter_ex;
static void shutter_work(void *arg) {
  atomic_fetch_add(&((job *)arg)->ran, 1);
  evx_gate_park(&g.gate);
  atomic_store(&g_shutter_rc, evx_executor_shutdown(g_shutter_ex, EVX_SHUTDOWN_CANCEL));
}
static void open_one(void *arg) {
  (void)arg;
  evx_gate_open(&g.gate, 1);
}

START_TEST(test_shutdown_from_worker) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  ctx_init(loop);
  evx_executor_opts o = {.threads = 1, .max_queue = 64};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  g_shutter_ex = ex;
  atomic_store(&g_shutter_rc, -1);
  job shutter = {0}, queued[Q] = {0};
  ck_assert_int_eq(evx_submit(ex, shutter_work, job_done, &shutter), EVX_OK);
  evx_gate_wait_entered(&g.gate, 1);
  for (int i = 0; i < Q; i++) ck_assert_int_eq(evx_submit(ex, job_work, job_done, &queued[i]), EVX_OK);
  ck_assert_int_eq(evx_add_callback(loop, open_one, NULL), EVX_OK); /* released once the loop runs */
  g.stop_at = Q + 1;
  evx_test_run(loop, 10000);
  ck_assert_int_eq(atomic_load(&g_shutter_rc), EVX_OK);
  ck_assert_int_eq(shutter.done_calls, 1);
  ck_assert_int_eq(shutter.status, EVX_OK);
  ck_assert_int_eq(g.done_cancelled, Q);
  for (int i = 0; i < Q; i++) {
    ck_assert_int_eq(atomic_load(&queued[i].ran), 0);
    ck_assert_int_eq(queued[i].status, EVX_ECANCELED);
  }
  check_closed(ex);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_gate_destroy(&g.gate);
  evx_test_free_loop(loop);
}
END_TEST

static Suite *shutdown_suite(void) {
  Suite *s = suite_create("shutdown");
  TCase *tc = evx_test_tcase(s, "shutdown", 20);
  tcase_add_test(tc, test_drain_runs_every_job);
  tcase_add_test(tc, test_cancel_cancels_queued);
  tcase_add_test(tc, test_cancel_after_drain);
  tcase_add_test(tc, test_cancel_behind_running_job);
  tcase_add_test(tc, test_shutdown_invalid);
  tcase_add_test(tc, test_shutdown_from_worker);
  tc = evx_test_tcase(s, "free", 20);
  tcase_add_test(tc, test_free_with_pending);
  tcase_add_test(tc, test_free_after_drain_runs_all);
  tcase_add_test(tc, test_free_from_callback);
  tcase_add_test(tc, test_free_from_own_done);
  tc = evx_test_tcase(s, "counting", 30);
  tcase_add_test(tc, test_counting);
  return s;
}

int main(void) { return evx_test_main(shutdown_suite()); }
