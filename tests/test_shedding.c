/* Load shedding (evx_executor_opts.target_wait_us): a job that would wait
 * longer than the target is refused at the submit (EVX_EBUSY, stats.shed),
 * and a queued job that still waited longer is ended unrun (done:
 * EVX_ETIMEDOUT, stats.expired). Workers are parked on gates; time is the
 * subject only where a deadline must pass. */
#include "evx_test.h"

typedef struct rec {
  evx_loop *loop;
  atomic_int ran;
  int done_calls;
  int status;
  int *total;
  int stop_at;
} rec;

static void rec_work(void *arg) { atomic_fetch_add(&((rec *)arg)->ran, 1); }
static void rec_done(void *arg, int status) {
  rec *r = arg;
  r->done_calls++;
  r->status = status;
  if (++*r->total == r->stop_at) evx_loop_stop(r->loop);
}

static evx_executor *shedding(evx_loop *loop, unsigned threads, unsigned target_us) {
  evx_executor_opts o = {.threads = threads, .name = "shed", .target_wait_us = target_us};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  return ex;
}

/* A job queued behind a parked one past the target: never runs, ETIMEDOUT.
 * (Before the first completion the run time is unknown: it is admitted.) */
START_TEST(test_expired_job_never_runs) {
  evx_loop *loop = evx_loop_new(NULL);
  evx_executor *ex = shedding(loop, 1, 50000);
  evx_gate gate;
  evx_gate_init(&gate);
  int total = 0;
  ck_assert_int_eq(evx_submit(ex, evx_gate_park, NULL, &gate), EVX_OK);
  evx_gate_wait_entered(&gate, 1);
  rec late = {.loop = loop, .total = &total, .stop_at = 1};
  ck_assert_int_eq(evx_submit(ex, rec_work, rec_done, &late), EVX_OK);
  evx_test_sleep_ms(80); /* its deadline passes while the worker is parked */
  evx_gate_open(&gate, 1);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(late.done_calls, 1);
  ck_assert_int_eq(late.status, EVX_ETIMEDOUT);
  ck_assert_int_eq(atomic_load(&late.ran), 0);
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.expired, 1);
  ck_assert_uint_eq(st.cancelled, 1);
  ck_assert_uint_eq(st.completed, 1);
  ck_assert_uint_eq(st.shed, 0);
  evx_test_assert_idle(ex);
  evx_gate_destroy(&gate);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* With a known run time R (300 ms, more on a busy machine) and the one
 * worker busy, the worst-case wait of a job with k jobs ahead is (k + 1) * R:
 * with an 880 ms target, two are admitted (R, 2R) and the third (3R >= 900 ms)
 * is refused at once; its done never runs. The second stays admitted while
 * the sleep overshoots by up to 140 ms (a 40 ms run and 100 ms target failed
 * on a loaded machine). Without the option, the same submits are all accepted. */
static void sleep300_work(void *arg) {
  evx_test_sleep_ms(300);
  rec_work(arg);
}

START_TEST(test_shed_at_submit) {
  evx_loop *loop = evx_loop_new(NULL);
  evx_executor *ex = shedding(loop, 1, 880000);
  int total = 0;
  rec warm = {.loop = loop, .total = &total, .stop_at = 1};
  ck_assert_int_eq(evx_submit(ex, sleep300_work, rec_done, &warm), EVX_OK);
  evx_test_run(loop, 5000); /* one run time is known now */

  evx_gate gate;
  evx_gate_init(&gate);
  ck_assert_int_eq(evx_submit(ex, evx_gate_park, NULL, &gate), EVX_OK);
  evx_gate_wait_entered(&gate, 1);
  rec a = {.loop = loop, .total = &total, .stop_at = 3}, b = a, c = a;
  ck_assert_int_eq(evx_submit(ex, rec_work, rec_done, &a), EVX_OK);
  ck_assert_int_eq(evx_submit(ex, rec_work, rec_done, &b), EVX_OK);
  uint64_t t0 = evx_now_ns();
  ck_assert_int_eq(evx_submit(ex, rec_work, rec_done, &c), EVX_EBUSY);
  ck_assert_uint_lt(evx_now_ns() - t0, 10000000u); /* refused at once */
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.shed, 1);
  ck_assert_uint_eq(st.rejected, 1);
  evx_gate_open(&gate, 1);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(c.done_calls, 0); /* a failed submit never calls done */
  ck_assert_int_eq(a.done_calls + b.done_calls, 2);
  evx_test_assert_idle(ex);
  evx_gate_destroy(&gate);
  evx_executor_free(ex);

  /* The reference: no target, same pattern, nothing is refused. */
  ex = shedding(loop, 1, 0);
  total = 0;
  warm = (rec){.loop = loop, .total = &total, .stop_at = 1};
  ck_assert_int_eq(evx_submit(ex, sleep300_work, rec_done, &warm), EVX_OK);
  evx_test_run(loop, 5000);
  evx_gate_init(&gate);
  ck_assert_int_eq(evx_submit(ex, evx_gate_park, NULL, &gate), EVX_OK);
  evx_gate_wait_entered(&gate, 1);
  a = b = c = (rec){.loop = loop, .total = &total, .stop_at = 4};
  ck_assert_int_eq(evx_submit(ex, rec_work, rec_done, &a), EVX_OK);
  ck_assert_int_eq(evx_submit(ex, rec_work, rec_done, &b), EVX_OK);
  ck_assert_int_eq(evx_submit(ex, rec_work, rec_done, &c), EVX_OK);
  evx_gate_open(&gate, 1);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(c.status, EVX_OK);
  evx_gate_destroy(&gate);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* A free worker means no wait: never shed, whatever the run time; with
 * both workers busy the next job may wait a whole run time (~88 ms, the
 * EWMA of 100 and ~0) > 40 ms: shed. */
static void sleep400_work(void *arg) {
  evx_test_sleep_ms(400);
  rec_work(arg);
}

/* The warm-up job seeds the run-time average with >= 400 ms, so the
 * estimate for a job behind two busy workers is >= 350 ms (> the 300 ms
 * target: shed), while a job with a free worker is admitted and has 300 ms
 * of slack for the worker's wakeup on a loaded machine (40 ms was not enough). */
START_TEST(test_idle_worker_admits) {
  evx_loop *loop = evx_loop_new(NULL);
  evx_executor *ex = shedding(loop, 2, 300000);
  int total = 0;
  rec warm = {.loop = loop, .total = &total, .stop_at = 1};
  ck_assert_int_eq(evx_submit(ex, sleep400_work, rec_done, &warm), EVX_OK);
  evx_test_run(loop, 5000);
  evx_gate gate;
  evx_gate_init(&gate);
  ck_assert_int_eq(evx_submit(ex, evx_gate_park, NULL, &gate), EVX_OK);
  evx_gate_wait_entered(&gate, 1);
  rec a = {.loop = loop, .total = &total, .stop_at = 2};
  ck_assert_int_eq(evx_submit(ex, rec_work, rec_done, &a), EVX_OK); /* the second worker is free */
  evx_test_run(loop, 5000);
  ck_assert_int_eq(a.status, EVX_OK);
  rec b = {.loop = loop, .total = &total, .stop_at = 99};
  ck_assert_int_eq(evx_submit(ex, evx_gate_park, NULL, &gate), EVX_OK);
  evx_gate_wait_entered(&gate, 1); /* both workers busy now */
  ck_assert_int_eq(evx_submit(ex, rec_work, rec_done, &b), EVX_EBUSY);
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.shed, 1);
  evx_gate_open(&gate, 2);
  evx_executor_free(ex);
  ck_assert_int_eq(b.done_calls, 0);
  evx_gate_destroy(&gate);
  evx_test_free_loop(loop);
}
END_TEST

/* A strand job that waited past the target behind its predecessor expires
 * too, and the strand goes on with the next one. */
START_TEST(test_strand_job_expires_and_strand_continues) {
  evx_loop *loop = evx_loop_new(NULL);
  evx_executor *ex = shedding(loop, 1, 200000);
  evx_strand *s = evx_strand_new(ex);
  ck_assert_ptr_nonnull(s);
  evx_gate gate;
  evx_gate_init(&gate);
  int total = 0;
  ck_assert_int_eq(evx_strand_submit(s, evx_gate_park, NULL, &gate), EVX_OK);
  evx_gate_wait_entered(&gate, 1);
  rec late = {.loop = loop, .total = &total, .stop_at = 2};
  ck_assert_int_eq(evx_strand_submit(s, rec_work, rec_done, &late), EVX_OK);
  evx_test_sleep_ms(250); /* past the 200 ms target; a fresh job then has 200 ms of slack */
  rec fresh = late;
  evx_gate_open(&gate, 1);
  evx_test_run_until_count(loop, &late.done_calls, 1, 5000);
  ck_assert_int_eq(late.status, EVX_ETIMEDOUT);
  ck_assert_int_eq(evx_strand_submit(s, rec_work, rec_done, &fresh), EVX_OK);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(fresh.status, EVX_OK);
  ck_assert_int_eq(atomic_load(&fresh.ran), 1);
  evx_test_assert_idle(ex);
  evx_gate_destroy(&gate);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_bad_target) {
  evx_loop *loop = evx_loop_new(NULL);
  evx_executor_opts o = {.threads = 1, .target_wait_us = 600000001u};
  ck_assert_ptr_null(evx_executor_new(loop, &o));
  evx_test_free_loop(loop);
}
END_TEST

static Suite *shedding_suite(void) {
  Suite *s = suite_create("shedding");
  TCase *tc = evx_test_tcase(s, "core", 20);
  tcase_add_test(tc, test_expired_job_never_runs);
  tcase_add_test(tc, test_shed_at_submit);
  tcase_add_test(tc, test_idle_worker_admits);
  tcase_add_test(tc, test_strand_job_expires_and_strand_continues);
  tcase_add_test(tc, test_bad_target);
  return s;
}

int main(void) { return evx_test_main(shedding_suite()); }
