/* evx_strand: one job at a time, in submission order, on a pool of 4 threads,
 * interleaved with plain jobs; strand_free cancels waiting jobs; strand jobs
 * count against max_queue. */
#include "evx_test.h"

#define STRANDS 2
#define PER_STRAND 300
#define PLAIN 300

typedef struct strand_state {
  atomic_int inside;   /* jobs of this strand running now */
  atomic_int max_seen; /* must stay 1 */
  atomic_long next;    /* next expected sequence number */
  atomic_int out_of_order;
  atomic_int ran;
} strand_state;

typedef struct sjob {
  strand_state *st;
  long seq;
} sjob;

typedef struct serial {
  evx_loop *loop;
  strand_state st[STRANDS];
  sjob jobs[STRANDS][PER_STRAND];
  atomic_int plain_ran;
  int done_total;
  int done_not_ok;
  int expect;
  pthread_mutex_t threads_mu;
  pthread_t threads[64];
  int nthreads;
} serial;

static serial *g_s;

static void note_thread(void) {
  pthread_t self = pthread_self();
  pthread_mutex_lock(&g_s->threads_mu);
  int known = 0;
  for (int i = 0; i < g_s->nthreads; i++)
    if (pthread_equal(g_s->threads[i], self)) known = 1;
  if (!known && g_s->nthreads < 64) g_s->threads[g_s->nthreads++] = self;
  pthread_mutex_unlock(&g_s->threads_mu);
}

static void strand_work(void *arg) {
  sjob *j = arg;
  strand_state *st = j->st;
  int now = atomic_fetch_add(&st->inside, 1) + 1;
  int prev = atomic_load(&st->max_seen);
  while (now > prev && !atomic_compare_exchange_weak(&st->max_seen, &prev, now)) {
  }
  if (atomic_load(&st->next) != j->seq) atomic_fetch_add(&st->out_of_order, 1);
  atomic_store(&st->next, j->seq + 1);
  note_thread();
  evx_test_spin_us(20); /* stay inside long enough for an overlap to show */
  atomic_fetch_add(&st->ran, 1);
  atomic_fetch_sub(&st->inside, 1);
}

static void plain_work(void *arg) {
  (void)arg;
  note_thread();
  evx_test_spin_us(20);
  atomic_fetch_add(&g_s->plain_ran, 1);
}

static void count_done(void *arg, int status) {
  (void)arg;
  if (status != EVX_OK) g_s->done_not_ok++;
  if (++g_s->done_total == g_s->expect) evx_loop_stop(g_s->loop);
}


START_TEST(test_serial_in_order) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor_opts o = {.threads = 4, .max_queue = STRANDS * PER_STRAND + PLAIN};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  g_s = calloc(1, sizeof *g_s);
  ck_assert_ptr_nonnull(g_s);
  g_s->loop = loop;
  pthread_mutex_init(&g_s->threads_mu, NULL);
  g_s->expect = STRANDS * PER_STRAND + PLAIN;
  evx_strand *s[STRANDS];
  for (int k = 0; k < STRANDS; k++) {
    s[k] = evx_strand_new(ex);
    ck_assert_ptr_nonnull(s[k]);
  }
  /* Interleave: strand 0, strand 1, plain, strand 0, ... */
  for (int i = 0; i < PER_STRAND; i++) {
    for (int k = 0; k < STRANDS; k++) {
      g_s->jobs[k][i] = (sjob){&g_s->st[k], i};
      ck_assert_int_eq(evx_strand_submit(s[k], strand_work, count_done, &g_s->jobs[k][i]), EVX_OK);
    }
    ck_assert_int_eq(evx_submit(ex, plain_work, count_done, NULL), EVX_OK);
  }
  evx_test_run(loop, 20000);
  ck_assert_int_eq(g_s->done_total, g_s->expect);
  ck_assert_int_eq(g_s->done_not_ok, 0);
  ck_assert_int_eq(atomic_load(&g_s->plain_ran), PLAIN);
  for (int k = 0; k < STRANDS; k++) {
    ck_assert_int_eq(atomic_load(&g_s->st[k].ran), PER_STRAND);
    ck_assert_int_eq(atomic_load(&g_s->st[k].max_seen), 1);
    ck_assert_int_eq(atomic_load(&g_s->st[k].out_of_order), 0);
  }
  ck_assert_int_le(g_s->nthreads, 4);
  evx_test_assert_idle(ex);
  for (int k = 0; k < STRANDS; k++) evx_strand_free(s[k]);
  evx_executor_free(ex);
  pthread_mutex_destroy(&g_s->threads_mu);
  free(g_s);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- strand_free, cancel, max_queue ---------------------------------------- */

typedef struct job {
  evx_loop *loop;
  evx_gate *gate;
  atomic_int ran;
  int done_calls;
  int status;
  int *total;
  int stop_at;
} job;

static void job_work(void *arg) { atomic_fetch_add(&((job *)arg)->ran, 1); }
static void job_park(void *arg) {
  job *j = arg;
  atomic_fetch_add(&j->ran, 1);
  evx_gate_park(j->gate);
}
static void job_done(void *arg, int status) {
  job *j = arg;
  j->done_calls++;
  j->status = status;
  if (++*j->total == j->stop_at) evx_loop_stop(j->loop);
}

#define W 5

/* The strand's first job runs (parked); W more wait in the strand although a
 * second worker is idle. strand_free cancels the W; the running one finishes. */
START_TEST(test_strand_free_cancels_waiting) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor_opts o = {.threads = 2};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  evx_strand *s = evx_strand_new(ex);
  ck_assert_ptr_nonnull(s);
  evx_gate gate;
  evx_gate_init(&gate);
  int total = 0;
  job first = {.loop = loop, .gate = &gate, .total = &total, .stop_at = W + 1};
  job waiting[W];
  ck_assert_int_eq(evx_strand_submit(s, job_park, job_done, &first), EVX_OK);
  evx_gate_wait_entered(&gate, 1);
  for (int i = 0; i < W; i++) {
    waiting[i] = (job){.loop = loop, .total = &total, .stop_at = -1};
    ck_assert_int_eq(evx_strand_submit(s, job_work, job_done, &waiting[i]), EVX_OK);
  }
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.running, 1);
  ck_assert_uint_eq(st.queued, W); /* strand queues count as queued */

  evx_strand_free(s);
  /* The W cancelled dones arrive while `first` is still parked. */
  evx_test_run_until_count(loop, &total, W, 5000);
  ck_assert_int_eq(total, W);
  ck_assert_int_eq(first.done_calls, 0);
  for (int i = 0; i < W; i++) {
    ck_assert_int_eq(waiting[i].done_calls, 1);
    ck_assert_int_eq(waiting[i].status, EVX_ECANCELED);
    ck_assert_int_eq(atomic_load(&waiting[i].ran), 0);
  }
  evx_gate_open(&gate, 1);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(first.done_calls, 1);
  ck_assert_int_eq(first.status, EVX_OK);
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.cancelled, W);
  evx_test_assert_idle(ex);
  evx_gate_destroy(&gate);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* strand_free when no strand job runs yet: its first job is queued on the
 * executor (behind a parked plain job), the others wait on the strand. None
 * of them is running, so all are cancelled; the plain job is not touched. */
START_TEST(test_strand_free_cancels_not_started_head) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor_opts o = {.threads = 1};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  evx_strand *s = evx_strand_new(ex);
  ck_assert_ptr_nonnull(s);
  evx_gate gate;
  evx_gate_init(&gate);
  int total = 0;
  job plain = {.loop = loop, .gate = &gate, .total = &total, .stop_at = -1};
  ck_assert_int_eq(evx_submit(ex, job_park, job_done, &plain), EVX_OK);
  evx_gate_wait_entered(&gate, 1);
  job sj[3];
  for (int i = 0; i < 3; i++) {
    sj[i] = (job){.loop = loop, .total = &total, .stop_at = -1};
    ck_assert_int_eq(evx_strand_submit(s, job_work, job_done, &sj[i]), EVX_OK);
  }
  evx_strand_free(s);
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.queued, 0);
  ck_assert_uint_eq(st.cancelled, 3);
  evx_test_run_until_count(loop, &total, 3, 5000); /* the 3 cancelled dones, plain still parked */
  evx_gate_open(&gate, 1);
  evx_test_run_until_count(loop, &total, 4, 5000);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(sj[i].done_calls, 1);
    ck_assert_int_eq(sj[i].status, EVX_ECANCELED);
    ck_assert_int_eq(atomic_load(&sj[i].ran), 0);
  }
  ck_assert_int_eq(plain.status, EVX_OK);
  evx_test_assert_idle(ex);
  evx_gate_destroy(&gate);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* Cancelling one waiting strand job: it never runs; the rest keep their order. */
static job *g_order[8];
static atomic_int g_norder;
static void ordered_work(void *arg) {
  job *j = arg;
  atomic_fetch_add(&j->ran, 1);
  g_order[atomic_fetch_add(&g_norder, 1)] = j;
}

START_TEST(test_strand_cancel_one) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor_opts o = {.threads = 2};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  evx_strand *s = evx_strand_new(ex);
  ck_assert_ptr_nonnull(s);
  evx_gate gate;
  evx_gate_init(&gate);
  int total = 0;
  job first = {.loop = loop, .gate = &gate, .total = &total, .stop_at = 5};
  job j[4];
  evx_job *h[4];
  ck_assert_int_eq(evx_strand_submit(s, job_park, job_done, &first), EVX_OK);
  evx_gate_wait_entered(&gate, 1);
  for (int i = 0; i < 4; i++) {
    j[i] = (job){.loop = loop, .total = &total, .stop_at = 5};
    ck_assert_int_eq(evx_strand_submit_job(s, ordered_work, job_done, &j[i], &h[i]), EVX_OK);
  }
  ck_assert_int_eq(evx_job_cancel(h[1]), EVX_OK);
  evx_gate_open(&gate, 1);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(j[1].status, EVX_ECANCELED);
  ck_assert_int_eq(atomic_load(&j[1].ran), 0);
  ck_assert_int_eq(atomic_load(&g_norder), 3);
  ck_assert_ptr_eq(g_order[0], &j[0]);
  ck_assert_ptr_eq(g_order[1], &j[2]);
  ck_assert_ptr_eq(g_order[2], &j[3]);
  for (int i = 0; i < 4; i++) ck_assert_int_eq(j[i].done_calls, 1);
  evx_test_assert_idle(ex);
  evx_strand_free(s);
  evx_gate_destroy(&gate);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* Strand jobs count against max_queue, with plain jobs. */
START_TEST(test_strand_counts_against_max_queue) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor_opts o = {.threads = 1, .max_queue = 3};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  evx_strand *s = evx_strand_new(ex);
  ck_assert_ptr_nonnull(s);
  evx_gate gate;
  evx_gate_init(&gate);
  int total = 0;
  job parked = {.loop = loop, .gate = &gate, .total = &total, .stop_at = 4};
  ck_assert_int_eq(evx_submit(ex, job_park, job_done, &parked), EVX_OK);
  evx_gate_wait_entered(&gate, 1);
  job q[3], busy = {.loop = loop, .total = &total, .stop_at = 4};
  for (int i = 0; i < 2; i++) {
    q[i] = (job){.loop = loop, .total = &total, .stop_at = 4};
    ck_assert_int_eq(evx_strand_submit(s, job_work, job_done, &q[i]), EVX_OK);
  }
  q[2] = (job){.loop = loop, .total = &total, .stop_at = 4};
  ck_assert_int_eq(evx_submit(ex, job_work, job_done, &q[2]), EVX_OK);
  /* 3 waiting (2 in the strand, 1 plain): both kinds are refused now. */
  ck_assert_int_eq(evx_strand_submit(s, job_work, job_done, &busy), EVX_EBUSY);
  evx_job *h = NULL;
  ck_assert_int_eq(evx_strand_submit_job(s, job_work, job_done, &busy, &h), EVX_EBUSY);
  ck_assert_int_eq(evx_submit(ex, job_work, job_done, &busy), EVX_EBUSY);
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.queued, 3);
  ck_assert_uint_eq(st.rejected, 3);
  evx_gate_open(&gate, 1);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(total, 4);
  ck_assert_int_eq(busy.done_calls, 0);
  ck_assert_int_eq(atomic_load(&busy.ran), 0);
  evx_test_assert_idle(ex);
  evx_strand_free(s);
  evx_gate_destroy(&gate);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* A strand whose first job is parked holds its other jobs even when a worker
 * is idle, and they still count against max_queue. */
START_TEST(test_strand_waiting_counts_against_max_queue) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor_opts o = {.threads = 2, .max_queue = 2};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  evx_strand *s = evx_strand_new(ex);
  ck_assert_ptr_nonnull(s);
  evx_gate gate;
  evx_gate_init(&gate);
  int total = 0;
  job first = {.loop = loop, .gate = &gate, .total = &total, .stop_at = 3};
  ck_assert_int_eq(evx_strand_submit(s, job_park, job_done, &first), EVX_OK);
  evx_gate_wait_entered(&gate, 1);
  job q[2], busy = {0};
  for (int i = 0; i < 2; i++) {
    q[i] = (job){.loop = loop, .total = &total, .stop_at = 3};
    ck_assert_int_eq(evx_strand_submit(s, job_work, job_done, &q[i]), EVX_OK);
  }
  ck_assert_int_eq(evx_strand_submit(s, job_work, job_done, &busy), EVX_EBUSY);
  ck_assert_int_eq(evx_submit(ex, job_work, job_done, &busy), EVX_EBUSY);
  evx_gate_open(&gate, 1);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(total, 3);
  ck_assert_int_eq(busy.done_calls, 0);
  evx_test_assert_idle(ex);
  evx_strand_free(s);
  evx_gate_destroy(&gate);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* Shutdown applies to strands: ECLOSED after; DRAIN runs the waiting ones. */
START_TEST(test_strand_shutdown) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor_opts o = {.threads = 2};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  evx_strand *s = evx_strand_new(ex);
  ck_assert_ptr_nonnull(s);
  evx_gate gate;
  evx_gate_init(&gate);
  int total = 0;
  job first = {.loop = loop, .gate = &gate, .total = &total, .stop_at = 4};
  ck_assert_int_eq(evx_strand_submit(s, job_park, job_done, &first), EVX_OK);
  evx_gate_wait_entered(&gate, 1);
  job q[3];
  for (int i = 0; i < 3; i++) {
    q[i] = (job){.loop = loop, .total = &total, .stop_at = 4};
    ck_assert_int_eq(evx_strand_submit(s, job_work, job_done, &q[i]), EVX_OK);
  }
  ck_assert_int_eq(evx_executor_shutdown(ex, EVX_SHUTDOWN_DRAIN), EVX_OK);
  job never = {0};
  ck_assert_int_eq(evx_strand_submit(s, job_work, job_done, &never), EVX_ECLOSED);
  evx_gate_open(&gate, 1);
  evx_test_run(loop, 5000);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(q[i].status, EVX_OK);
    ck_assert_int_eq(atomic_load(&q[i].ran), 1);
  }
  ck_assert_int_eq(never.done_calls, 0);
  evx_test_assert_idle(ex);
  /* The strand is not freed explicitly: evx_executor_free frees it. */
  evx_gate_destroy(&gate);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* Executor free with strand jobs waiting: they are cancelled, every done called. */
START_TEST(test_executor_free_with_strand_jobs) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor_opts o = {.threads = 1};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  evx_strand *s = evx_strand_new(ex);
  ck_assert_ptr_nonnull(s);
  int total = 0;
  job q[20];
  for (int i = 0; i < 20; i++) {
    q[i] = (job){.loop = loop, .total = &total, .stop_at = -1};
    ck_assert_int_eq(evx_strand_submit(s, job_work, job_done, &q[i]), EVX_OK);
  }
  evx_executor_free(ex);
  ck_assert_int_eq(total, 20);
  for (int i = 0; i < 20; i++) {
    ck_assert_int_eq(q[i].done_calls, 1);
    ck_assert_int_eq(atomic_load(&q[i].ran), q[i].status == EVX_OK);
    if (q[i].status != EVX_OK) ck_assert_int_eq(q[i].status, EVX_ECANCELED);
  }
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_strand_invalid) {
  ck_assert_ptr_null(evx_strand_new(NULL));
  evx_strand_free(NULL);
  job j = {0};
  evx_job *h = NULL;
  ck_assert_int_eq(evx_strand_submit(NULL, job_work, job_done, &j), EVX_EINVAL);
  ck_assert_int_eq(evx_strand_submit_job(NULL, job_work, job_done, &j, &h), EVX_EINVAL);
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor *ex = evx_executor_new(loop, NULL);
  ck_assert_ptr_nonnull(ex);
  evx_strand *s = evx_strand_new(ex);
  ck_assert_ptr_nonnull(s);
  ck_assert_int_eq(evx_strand_submit(s, NULL, job_done, &j), EVX_EINVAL);
  ck_assert_int_eq(evx_strand_submit_job(s, job_work, job_done, &j, NULL), EVX_EINVAL);
  evx_strand_free(s);
  evx_executor_free(ex);
  ck_assert_int_eq(j.done_calls, 0);
  ck_assert_int_eq(atomic_load(&j.ran), 0);
  evx_test_free_loop(loop);
}
END_TEST

static Suite *strand_suite(void) {
  Suite *s = suite_create("strand");
  TCase *tc = evx_test_tcase(s, "serial", 30);
  tcase_add_test(tc, test_serial_in_order);
  tc = evx_test_tcase(s, "lifecycle", 10);
  tcase_add_test(tc, test_strand_free_cancels_waiting);
  tcase_add_test(tc, test_strand_free_cancels_not_started_head);
  tcase_add_test(tc, test_strand_cancel_one);
  tcase_add_test(tc, test_strand_shutdown);
  tcase_add_test(tc, test_executor_free_with_strand_jobs);
  tcase_add_test(tc, test_strand_invalid);
  tc = evx_test_tcase(s, "max_queue", 10);
  tcase_add_test(tc, test_strand_counts_against_max_queue);
  tcase_add_test(tc, test_strand_waiting_counts_against_max_queue);
  return s;
}

int main(void) { return evx_test_main(strand_suite()); }
