/* evx_executor: where work and done run, several pools, options, EBUSY
 * backpressure, statistics, submit from other threads. */
#include "evx_test.h"

/* ---- work on a worker, done on the loop thread, exactly once ------------- */

#define WD_JOBS 100
typedef struct wd_job {
  pthread_t work_thread;
  atomic_int work_calls;
  atomic_int work_in_loop_thread;
  int done_calls;
  int done_status;
  int done_inside_submit;
} wd_job;

typedef struct wd {
  evx_loop *loop;
  evx_executor *ex;
  pthread_t loop_thread;
  int in_submit; /* set around every evx_submit made on the loop thread */
  int done_total;
  int done_wrong_thread;
  wd_job jobs[WD_JOBS];
} wd;

static wd g_wd;

static void wd_work(void *arg) {
  wd_job *j = arg;
  j->work_thread = pthread_self();
  atomic_store(&j->work_in_loop_thread, evx_loop_in_thread(g_wd.loop));
  atomic_fetch_add(&j->work_calls, 1);
}

static void wd_done(void *arg, int status) {
  wd_job *j = arg;
  if (!pthread_equal(pthread_self(), g_wd.loop_thread) || !evx_loop_in_thread(g_wd.loop))
    g_wd.done_wrong_thread++;
  j->done_calls++;
  j->done_status = status;
  j->done_inside_submit = g_wd.in_submit;
  if (++g_wd.done_total == WD_JOBS) evx_loop_stop(g_wd.loop);
}

/* Half the jobs are submitted from a loop callback, half before the run. */
static void wd_submit_half_cb(void *arg) {
  (void)arg;
  for (int i = WD_JOBS / 2; i < WD_JOBS; i++) {
    g_wd.in_submit = 1;
    int rc = evx_submit(g_wd.ex, wd_work, wd_done, &g_wd.jobs[i]);
    g_wd.in_submit = 0;
    ck_assert_int_eq(rc, EVX_OK);
  }
}

START_TEST(test_work_on_worker_done_on_loop) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor_opts o = {.threads = 3};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  memset(&g_wd, 0, sizeof g_wd);
  g_wd.loop = loop;
  g_wd.ex = ex;
  g_wd.loop_thread = pthread_self();
  for (int i = 0; i < WD_JOBS / 2; i++) {
    g_wd.in_submit = 1;
    int rc = evx_submit(ex, wd_work, wd_done, &g_wd.jobs[i]);
    g_wd.in_submit = 0;
    ck_assert_int_eq(rc, EVX_OK);
  }
  ck_assert_int_eq(evx_add_callback(loop, wd_submit_half_cb, NULL), EVX_OK);
  evx_test_run(loop, 10000);
  ck_assert_int_eq(g_wd.done_total, WD_JOBS);
  ck_assert_int_eq(g_wd.done_wrong_thread, 0);
  for (int i = 0; i < WD_JOBS; i++) {
    wd_job *j = &g_wd.jobs[i];
    ck_assert_int_eq(atomic_load(&j->work_calls), 1);
    ck_assert_int_eq(j->done_calls, 1);
    ck_assert_int_eq(j->done_status, EVX_OK);
    ck_assert_int_eq(j->done_inside_submit, 0);
    ck_assert(!pthread_equal(j->work_thread, g_wd.loop_thread));
    ck_assert_int_eq(atomic_load(&j->work_in_loop_thread), 0);
  }
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* done == NULL is allowed: work still runs exactly once. */
typedef struct nodone {
  evx_loop *loop;
  atomic_int ran;
} nodone;

static void nodone_work(void *arg) {
  nodone *n = arg;
  atomic_fetch_add(&n->ran, 1);
  evx_add_callback(n->loop, evx_test_stop_cb, n->loop);
}

START_TEST(test_null_done) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor *ex = evx_executor_new(loop, NULL);
  ck_assert_ptr_nonnull(ex);
  nodone n = {.loop = loop};
  ck_assert_int_eq(evx_submit(ex, nodone_work, NULL, &n), EVX_OK);
  evx_test_run(loop, 5000);
  evx_executor_free(ex); /* joins the worker: its completion is settled */
  ck_assert_int_eq(atomic_load(&n.ran), 1);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- several executors on one loop ---------------------------------------- */

#define SE_EXECS 3
#define SE_JOBS 60
#define SE_MAX_THREADS 16

typedef struct se_exec {
  pthread_mutex_t mu;
  pthread_t seen[SE_MAX_THREADS];
  int nseen;
  int overflow;
} se_exec;

typedef struct se_job {
  se_exec *e;
  int idx;
} se_job;

static se_exec g_se[SE_EXECS];
static int g_se_done;
static evx_loop *g_se_loop;

static void se_work(void *arg) {
  se_job *j = arg;
  se_exec *e = j->e;
  pthread_t self = pthread_self();
  pthread_mutex_lock(&e->mu);
  int known = 0;
  for (int i = 0; i < e->nseen; i++)
    if (pthread_equal(e->seen[i], self)) known = 1;
  if (!known) {
    if (e->nseen < SE_MAX_THREADS)
      e->seen[e->nseen++] = self;
    else
      e->overflow = 1;
  }
  pthread_mutex_unlock(&e->mu);
  evx_test_spin_us(50); /* let other workers of the pool pick up jobs */
}

static void se_done(void *arg, int status) {
  (void)arg;
  ck_assert_int_eq(status, EVX_OK);
  if (++g_se_done == SE_EXECS * SE_JOBS) evx_loop_stop(g_se_loop);
}

START_TEST(test_several_executors) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  g_se_loop = loop;
  static const unsigned threads[SE_EXECS] = {1, 2, 3};
  static const char *names[SE_EXECS] = {"one", "two", "three"};
  evx_executor *ex[SE_EXECS];
  static se_job jobs[SE_EXECS][SE_JOBS];
  for (int e = 0; e < SE_EXECS; e++) {
    pthread_mutex_init(&g_se[e].mu, NULL);
    evx_executor_opts o = {.threads = threads[e], .name = names[e]};
    ex[e] = evx_executor_new(loop, &o);
    ck_assert_ptr_nonnull(ex[e]);
    ck_assert_ptr_eq(evx_executor_loop(ex[e]), loop);
    ck_assert_str_eq(evx_executor_name(ex[e]), names[e]);
  }
  for (int i = 0; i < SE_JOBS; i++)
    for (int e = 0; e < SE_EXECS; e++) {
      jobs[e][i] = (se_job){&g_se[e], i};
      ck_assert_int_eq(evx_submit(ex[e], se_work, se_done, &jobs[e][i]), EVX_OK);
    }
  evx_test_run(loop, 10000);
  ck_assert_int_eq(g_se_done, SE_EXECS * SE_JOBS);
  /* Each pool used at most its own thread count, and no thread served two pools. */
  for (int e = 0; e < SE_EXECS; e++) {
    ck_assert_int_eq(g_se[e].overflow, 0);
    ck_assert_int_ge(g_se[e].nseen, 1);
    ck_assert_int_le(g_se[e].nseen, (int)threads[e]);
    for (int f = e + 1; f < SE_EXECS; f++)
      for (int i = 0; i < g_se[e].nseen; i++)
        for (int k = 0; k < g_se[f].nseen; k++)
          ck_assert(!pthread_equal(g_se[e].seen[i], g_se[f].seen[k]));
  }
  for (int e = 0; e < SE_EXECS; e++) {
    evx_executor_stats st;
    ck_assert_int_eq(evx_executor_stats_get(ex[e], &st), EVX_OK);
    ck_assert_uint_eq(st.threads, threads[e]);
    ck_assert_uint_eq(st.submitted, SE_JOBS);
    ck_assert_uint_eq(st.completed, SE_JOBS);
    evx_test_assert_idle(ex[e]);
  }
  /* Free in a different order than created. */
  evx_executor_free(ex[1]);
  evx_executor_free(ex[0]);
  evx_executor_free(ex[2]);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- defaults and options -------------------------------------------------- */

typedef struct fill {
  evx_loop *loop;
  evx_gate *gate; /* for fill_park */
  int done_ok;
  int done_total;
  int expect;
} fill;

static void fill_nop(void *arg) { (void)arg; }
static void fill_park(void *arg) { evx_gate_park(((fill *)arg)->gate); }
static void fill_done(void *arg, int status) {
  fill *f = arg;
  if (status == EVX_OK) f->done_ok++;
  if (++f->done_total == f->expect) evx_loop_stop(f->loop);
}

/* Park every worker, then fill the queue to exactly `max_queue` jobs: the next
 * submit answers EVX_EBUSY at once, and neither its work nor its done runs.
 * Returns after every accepted job's done ran. */
static void check_capacity(evx_loop *loop, evx_executor *ex, unsigned threads, size_t max_queue) {
  evx_gate gate;
  evx_gate_init(&gate);
  evx_executor_stats before;
  ck_assert_int_eq(evx_executor_stats_get(ex, &before), EVX_OK);
  fill f = {.loop = loop, .gate = &gate, .expect = (int)(threads + max_queue)};
  for (unsigned i = 0; i < threads; i++)
    ck_assert_int_eq(evx_submit(ex, fill_park, fill_done, &f), EVX_OK);
  evx_gate_wait_entered(&gate, threads);
  for (size_t i = 0; i < max_queue; i++)
    ck_assert_int_eq(evx_submit(ex, fill_nop, fill_done, &f), EVX_OK);
  fill busy = {.loop = loop, .expect = -1};
  uint64_t t0 = evx_now_ns();
  ck_assert_int_eq(evx_submit(ex, fill_nop, fill_done, &busy), EVX_EBUSY);
  ck_assert_int_eq(evx_submit(ex, fill_nop, fill_done, &busy), EVX_EBUSY);
  ck_assert_uint_lt(evx_test_ms_since(t0), 1000); /* "at once": never waits for room */

  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.threads, threads);
  ck_assert_uint_eq(st.running, threads);
  ck_assert_uint_eq(st.queued, max_queue);
  ck_assert_uint_eq(st.rejected - before.rejected, 2);
  ck_assert_uint_eq(st.submitted - before.submitted, threads + max_queue);

  evx_gate_open(&gate, threads);
  evx_test_run(loop, 20000);
  ck_assert_int_eq(f.done_ok, (int)(threads + max_queue));
  ck_assert_int_eq(busy.done_total, 0);
  /* There is room again. */
  fill g = {.loop = loop, .expect = 1};
  ck_assert_int_eq(evx_submit(ex, fill_nop, fill_done, &g), EVX_OK);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(g.done_ok, 1);
  evx_gate_destroy(&gate);
}

START_TEST(test_defaults) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor *ex = evx_executor_new(loop, NULL);
  ck_assert_ptr_nonnull(ex);
  ck_assert_str_eq(evx_executor_name(ex), "evx");
  ck_assert_ptr_eq(evx_executor_loop(ex), loop);
  check_capacity(loop, ex, 4, 4096); /* threads 4, max_queue 4096 */
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_zero_opts_are_defaults) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor_opts o = {0};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  ck_assert_str_eq(evx_executor_name(ex), "evx");
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.threads, 4);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_opts_validation) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  long live = evx_test_alloc_live();
  evx_executor_opts o = {.threads = 1025};
  ck_assert_ptr_null(evx_executor_new(loop, &o));
  o.threads = 100000;
  ck_assert_ptr_null(evx_executor_new(loop, &o));
  ck_assert_ptr_null(evx_executor_new(NULL, NULL));
  ck_assert_int_eq(evx_test_alloc_live(), live); /* a failed new leaves nothing behind */

  /* The options are copied: the name buffer may change after new. */
  char name[16] = "copied";
  evx_executor_opts ok = {.threads = 1, .max_queue = 1, .name = name};
  evx_executor *ex = evx_executor_new(loop, &ok);
  ck_assert_ptr_nonnull(ex);
  strcpy(name, "changed");
  ok.max_queue = 100;
  ck_assert_str_eq(evx_executor_name(ex), "copied");
  check_capacity(loop, ex, 1, 1); /* max_queue was copied as 1 */
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_max_queue_busy) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor_opts o = {.threads = 2, .max_queue = 5, .name = "small"};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  check_capacity(loop, ex, 2, 5);
  /* Fill it again: backpressure is not a one-shot. */
  check_capacity(loop, ex, 2, 5);
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.rejected, 4);
  ck_assert_uint_eq(st.cancelled, 0);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* A job never waits behind a blocked job while a worker is free. Two workers
 * are parked (A1, A2); B (which blocks) and C, D, E are queued. A1 is
 * released: its worker takes B, which blocks. A2 is released: that worker is
 * free and must run C, D and E while B still blocks. */
typedef struct hol {
  evx_loop *loop;
  evx_gate *gate;
  atomic_int ran;
  int done_calls;
  int *total;
} hol;

static void hol_park(void *arg) { evx_gate_park(((hol *)arg)->gate); }
static void hol_work(void *arg) { atomic_fetch_add(&((hol *)arg)->ran, 1); }
static void hol_done(void *arg, int status) {
  hol *h = arg;
  ck_assert_int_eq(status, EVX_OK);
  h->done_calls++;
  ++*h->total;
}

START_TEST(test_no_head_of_line_blocking) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor_opts o = {.threads = 2};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  evx_gate ga, gb;
  evx_gate_init(&ga);
  evx_gate_init(&gb);
  int total = 0;
  hol a1 = {loop, &ga, 0, 0, &total}, a2 = a1, b = {loop, &gb, 0, 0, &total};
  hol rest[3];
  ck_assert_int_eq(evx_submit(ex, hol_park, hol_done, &a1), EVX_OK);
  ck_assert_int_eq(evx_submit(ex, hol_park, hol_done, &a2), EVX_OK);
  evx_gate_wait_entered(&ga, 2);
  ck_assert_int_eq(evx_submit(ex, hol_park, hol_done, &b), EVX_OK);
  for (int i = 0; i < 3; i++) {
    rest[i] = (hol){loop, NULL, 0, 0, &total};
    ck_assert_int_eq(evx_submit(ex, hol_work, hol_done, &rest[i]), EVX_OK);
  }
  evx_gate_open(&ga, 1);
  evx_gate_wait_entered(&gb, 1); /* B blocks one worker */
  evx_gate_open(&ga, 1);         /* the other worker is free now */
  evx_test_run_until_count(loop, &total, 5, 5000); /* A1, A2, C, D, E */
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(atomic_load(&rest[i].ran), 1);
    ck_assert_int_eq(rest[i].done_calls, 1);
  }
  ck_assert_int_eq(b.done_calls, 0);
  evx_gate_open(&gb, 1);
  evx_test_run_until_count(loop, &total, 6, 5000);
  evx_test_assert_idle(ex);
  evx_gate_destroy(&ga);
  evx_gate_destroy(&gb);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- stats ----------------------------------------------------------------- */

static void sleep_2ms(void *arg) {
  (void)arg;
  evx_test_sleep_ms(2); /* run time is the subject */
}

static uint64_t hist_sum(const uint64_t h[EVX_STATS_BUCKETS]) {
  uint64_t s = 0;
  for (int i = 0; i < EVX_STATS_BUCKETS; i++) s += h[i];
  return s;
}

START_TEST(test_stats_counters) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor_opts o = {.threads = 2, .max_queue = 8};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);

  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.threads, 2);
  ck_assert_uint_eq(st.submitted, 0);
  ck_assert_uint_eq(hist_sum(st.run_hist), 0);
  ck_assert_uint_eq(evx_stats_quantile_us(st.run_hist, 0.5), 0);

  /* Park both workers, queue 8 jobs of 2 ms, hold them >= 20 ms in the queue,
   * get one rejection, cancel one. */
  evx_gate gate;
  evx_gate_init(&gate);
  fill f = {.loop = loop, .gate = &gate, .expect = 10};
  ck_assert_int_eq(evx_submit(ex, fill_park, fill_done, &f), EVX_OK);
  ck_assert_int_eq(evx_submit(ex, fill_park, fill_done, &f), EVX_OK);
  evx_gate_wait_entered(&gate, 2);
  evx_job *victim = NULL;
  ck_assert_int_eq(evx_submit_job(ex, sleep_2ms, fill_done, &f, &victim), EVX_OK);
  ck_assert_ptr_nonnull(victim);
  for (int i = 0; i < 7; i++) ck_assert_int_eq(evx_submit(ex, sleep_2ms, fill_done, &f), EVX_OK);
  ck_assert_int_eq(evx_submit(ex, sleep_2ms, fill_done, &f), EVX_EBUSY);
  ck_assert_int_eq(evx_job_cancel(victim), EVX_OK);

  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.running, 2);
  ck_assert_uint_eq(st.queued, 7);
  ck_assert_uint_eq(st.submitted, 10);
  ck_assert_uint_eq(st.rejected, 1);
  ck_assert_uint_eq(st.cancelled, 1);
  ck_assert_uint_eq(st.completed, 0);

  evx_test_sleep_ms(20); /* queue wait is the subject */
  evx_gate_open(&gate, 2);
  evx_test_run(loop, 10000);
  ck_assert_int_eq(f.done_total, 10);
  ck_assert_int_eq(f.done_ok, 9); /* all but the cancelled one */

  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.queued, 0);
  ck_assert_uint_eq(st.running, 0);
  ck_assert_uint_eq(st.submitted, 10);
  ck_assert_uint_eq(st.completed, 9); /* 2 parked + 7 */
  ck_assert_uint_eq(st.cancelled, 1);
  ck_assert_uint_eq(st.rejected, 1);
  /* Every started job has a wait sample, every completed one a run sample. */
  ck_assert_uint_eq(hist_sum(st.run_hist), st.completed);
  ck_assert_uint_eq(hist_sum(st.wait_hist), st.completed);
  /* 7 jobs ran >= 2 ms each; the queued ones waited >= 20 ms. */
  ck_assert_uint_ge(st.run_ns_total, 7u * 2000000u);
  ck_assert_uint_ge(st.run_ns_max, 2000000u);
  ck_assert_uint_le(st.run_ns_max, st.run_ns_total);
  ck_assert_uint_ge(st.wait_ns_max, 20000000u);
  ck_assert_uint_le(st.wait_ns_max, st.wait_ns_total);
  ck_assert_uint_lt(st.run_ns_max, 60ull * 1000000000ull);
  /* Quantiles: sane, monotonic in q, consistent with the recorded maxima. */
  uint64_t q50 = evx_stats_quantile_us(st.run_hist, 0.5);
  uint64_t q99 = evx_stats_quantile_us(st.run_hist, 0.99);
  uint64_t q100 = evx_stats_quantile_us(st.run_hist, 1.0);
  ck_assert_uint_gt(q50, 0);
  ck_assert_uint_le(q50, q99);
  ck_assert_uint_le(q99, q100);
  ck_assert_uint_ge(q100 * 1000u, st.run_ns_max); /* the max lies below its bucket's edge */
  /* Every job ran >= 2 ms (the parked ones >= 20 ms); 7 of 9 waited >= 20 ms. */
  ck_assert_uint_ge(evx_stats_quantile_us(st.run_hist, 0.9), 2000);
  ck_assert_uint_ge(evx_stats_quantile_us(st.run_hist, 0.1), 2000);
  ck_assert_uint_ge(evx_stats_quantile_us(st.wait_hist, 0.9), 20000);
  ck_assert_uint_ge(evx_stats_quantile_us(st.wait_hist, 0.5), 20000);
  evx_test_assert_idle(ex);
  evx_gate_destroy(&gate);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_stats_quantile) {
  uint64_t h[EVX_STATS_BUCKETS] = {0};
  ck_assert_uint_eq(evx_stats_quantile_us(h, 0.5), 0);
  ck_assert_uint_eq(evx_stats_quantile_us(h, 1.0), 0);
  /* Bucket 0: below 1 us, upper edge 1. */
  h[0] = 10;
  ck_assert_uint_eq(evx_stats_quantile_us(h, 0.5), 1);
  /* Bucket i >= 1 covers [2^(i-1), 2^i) us: upper edge 2^i. */
  memset(h, 0, sizeof h);
  h[2] = 50; /* [2, 4) */
  h[5] = 50; /* [16, 32) */
  ck_assert_uint_eq(evx_stats_quantile_us(h, 0.25), 4);
  ck_assert_uint_eq(evx_stats_quantile_us(h, 0.5), 4);
  ck_assert_uint_eq(evx_stats_quantile_us(h, 0.51), 32);
  ck_assert_uint_eq(evx_stats_quantile_us(h, 1.0), 32);
  memset(h, 0, sizeof h);
  h[11] = 1; /* [1024, 2048) */
  ck_assert_uint_eq(evx_stats_quantile_us(h, 0.99), 2048);
  memset(h, 0, sizeof h);
  h[EVX_STATS_BUCKETS - 1] = 3; /* the last bucket takes everything longer */
  ck_assert_uint_ge(evx_stats_quantile_us(h, 0.5), 1ull << (EVX_STATS_BUCKETS - 2));
}
END_TEST

START_TEST(test_stats_invalid) {
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(NULL, &st), EVX_EINVAL);
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor *ex = evx_executor_new(loop, NULL);
  ck_assert_ptr_nonnull(ex);
  ck_assert_int_eq(evx_executor_stats_get(ex, NULL), EVX_EINVAL);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- submit from other threads --------------------------------------------- */

#define OT_PER_THREAD 500
#define OT_THREADS 2

typedef struct ot {
  evx_loop *loop;
  evx_executor *ex;
  pthread_t loop_thread;
  atomic_int work_calls;
  int done_calls;
  int done_wrong_thread;
  atomic_int submit_fail;
  int expect;
} ot;

static ot g_ot;

static void ot_work(void *arg) {
  (void)arg;
  atomic_fetch_add(&g_ot.work_calls, 1);
}
static void ot_done(void *arg, int status) {
  (void)arg;
  ck_assert_int_eq(status, EVX_OK);
  if (!pthread_equal(pthread_self(), g_ot.loop_thread)) g_ot.done_wrong_thread++;
  if (++g_ot.done_calls == g_ot.expect) evx_loop_stop(g_ot.loop);
}
static void *ot_producer(void *arg) {
  (void)arg;
  for (int i = 0; i < OT_PER_THREAD; i++)
    if (evx_submit(g_ot.ex, ot_work, ot_done, NULL) != EVX_OK) atomic_fetch_add(&g_ot.submit_fail, 1);
  return NULL;
}
/* Submitting from a worker (inside work) is "any thread" too. */
static void ot_work_submits(void *arg) {
  (void)arg;
  atomic_fetch_add(&g_ot.work_calls, 1);
  for (int i = 0; i < 10; i++)
    if (evx_submit(g_ot.ex, ot_work, ot_done, NULL) != EVX_OK) atomic_fetch_add(&g_ot.submit_fail, 1);
}

START_TEST(test_submit_from_other_threads) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor_opts o = {.threads = 2, .max_queue = OT_THREADS * OT_PER_THREAD + 100};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  memset(&g_ot, 0, sizeof g_ot);
  g_ot.loop = loop;
  g_ot.ex = ex;
  g_ot.loop_thread = pthread_self();
  g_ot.expect = OT_THREADS * OT_PER_THREAD + 1 + 10;
  pthread_t t[OT_THREADS];
  for (int i = 0; i < OT_THREADS; i++) ck_assert_int_eq(pthread_create(&t[i], NULL, ot_producer, NULL), 0);
  ck_assert_int_eq(evx_submit(ex, ot_work_submits, ot_done, NULL), EVX_OK);
  evx_test_run(loop, 20000);
  for (int i = 0; i < OT_THREADS; i++) pthread_join(t[i], NULL);
  ck_assert_int_eq(atomic_load(&g_ot.submit_fail), 0);
  ck_assert_int_eq(g_ot.done_calls, g_ot.expect);
  ck_assert_int_eq(atomic_load(&g_ot.work_calls), g_ot.expect);
  ck_assert_int_eq(g_ot.done_wrong_thread, 0);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_submit_invalid) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor *ex = evx_executor_new(loop, NULL);
  ck_assert_ptr_nonnull(ex);
  int calls = 0;
  ck_assert_int_eq(evx_submit(NULL, fill_nop, fill_done, &calls), EVX_EINVAL);
  ck_assert_int_eq(evx_submit(ex, NULL, fill_done, &calls), EVX_EINVAL);
  evx_job *job = NULL;
  ck_assert_int_eq(evx_submit_job(ex, fill_nop, fill_done, &calls, NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_submit_job(ex, NULL, fill_done, &calls, &job), EVX_EINVAL);
  ck_assert_int_eq(evx_submit_job(NULL, fill_nop, fill_done, &calls, &job), EVX_EINVAL);
  evx_test_run_once(loop);
  ck_assert_int_eq(calls, 0);
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.submitted, 0);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_executor_free(NULL);
  evx_test_free_loop(loop);
}
END_TEST

static Suite *executor_suite(void) {
  Suite *s = suite_create("executor");
  TCase *tc = evx_test_tcase(s, "threads", 20);
  tcase_add_test(tc, test_work_on_worker_done_on_loop);
  tcase_add_test(tc, test_null_done);
  tcase_add_test(tc, test_several_executors);
  tcase_add_test(tc, test_submit_from_other_threads);
  tc = evx_test_tcase(s, "opts", 20);
  tcase_add_test(tc, test_defaults);
  tcase_add_test(tc, test_zero_opts_are_defaults);
  tcase_add_test(tc, test_opts_validation);
  tcase_add_test(tc, test_submit_invalid);
  tc = evx_test_tcase(s, "backpressure", 20);
  tcase_add_test(tc, test_max_queue_busy);
  tcase_add_test(tc, test_no_head_of_line_blocking);
  tc = evx_test_tcase(s, "stats", 20);
  tcase_add_test(tc, test_stats_counters);
  tcase_add_test(tc, test_stats_quantile);
  tcase_add_test(tc, test_stats_invalid);
  return s;
}

int main(void) { return evx_test_main(executor_suite()); }
