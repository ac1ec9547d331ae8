/* evx_submit_job + evx_job_cancel: cancel a queued job, a running job, a
 * finished job; misuse; cancel from the wrong thread. */
#include "evx_test.h"

typedef struct job {
  evx_loop *loop;
  evx_gate *gate;   /* park_work parks here */
  atomic_int ran;   /* work calls */
  int done_calls;
  int status;
  int *total;       /* shared done counter */
  int stop_at;      /* stop the loop when *total reaches it */
} job;

static void nop_work(void *arg) { atomic_fetch_add(&((job *)arg)->ran, 1); }
static void park_work(void *arg) {
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

static evx_executor *one_thread(evx_loop *loop) {
  evx_executor_opts o = {.threads = 1, .name = "cancel"};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  return ex;
}

START_TEST(test_cancel_queued) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor *ex = one_thread(loop);
  evx_gate gate;
  evx_gate_init(&gate);
  int total = 0;
  job parked = {.loop = loop, .gate = &gate, .total = &total, .stop_at = 3};
  job victim = parked, after = parked;
  ck_assert_int_eq(evx_submit(ex, park_work, job_done, &parked), EVX_OK);
  evx_gate_wait_entered(&gate, 1);
  evx_job *vj = NULL, *aj = NULL;
  ck_assert_int_eq(evx_submit_job(ex, nop_work, job_done, &victim, &vj), EVX_OK);
  ck_assert_int_eq(evx_submit_job(ex, nop_work, job_done, &after, &aj), EVX_OK);
  ck_assert_ptr_nonnull(vj);
  ck_assert_ptr_nonnull(aj);
  ck_assert_ptr_ne(vj, aj);

  ck_assert_int_eq(evx_job_cancel(vj), EVX_OK);
  ck_assert_int_eq(victim.done_calls, 0); /* done comes later, not inside cancel */

  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.queued, 1);
  ck_assert_uint_eq(st.cancelled, 1);

  evx_gate_open(&gate, 1);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(total, 3);
  ck_assert_int_eq(victim.done_calls, 1);
  ck_assert_int_eq(victim.status, EVX_ECANCELED);
  ck_assert_int_eq(atomic_load(&victim.ran), 0);
  ck_assert_int_eq(after.done_calls, 1);
  ck_assert_int_eq(after.status, EVX_OK);
  ck_assert_int_eq(atomic_load(&after.ran), 1);
  ck_assert_int_eq(parked.status, EVX_OK);
  evx_test_assert_idle(ex);
  evx_gate_destroy(&gate);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* The cancelled job's done is delivered while the worker is still parked:
 * cancelling never waits for the pool. */
typedef struct while_parked {
  evx_loop *loop;
  evx_executor *ex;
  evx_gate *gate;
  job *victim;
  int total;
} while_parked;

static void wp_cancel_cb(void *arg) {
  while_parked *w = arg;
  evx_job *vj = NULL;
  ck_assert_int_eq(evx_submit_job(w->ex, nop_work, job_done, w->victim, &vj), EVX_OK);
  ck_assert_int_eq(evx_job_cancel(vj), EVX_OK);
  ck_assert_int_eq(w->victim->done_calls, 0);
}

START_TEST(test_cancel_done_while_pool_busy) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor *ex = one_thread(loop);
  evx_gate gate;
  evx_gate_init(&gate);
  while_parked w = {.loop = loop, .ex = ex, .gate = &gate};
  job parked = {.loop = loop, .gate = &gate, .total = &w.total, .stop_at = -1};
  job victim = {.loop = loop, .total = &w.total, .stop_at = 1};
  w.victim = &victim;
  ck_assert_int_eq(evx_submit(ex, park_work, job_done, &parked), EVX_OK);
  evx_gate_wait_entered(&gate, 1);
  ck_assert_int_eq(evx_add_callback(loop, wp_cancel_cb, &w), EVX_OK);
  evx_test_run(loop, 5000); /* stops on the victim's done; the worker is still parked */
  ck_assert_int_eq(victim.done_calls, 1);
  ck_assert_int_eq(victim.status, EVX_ECANCELED);
  ck_assert_int_eq(parked.done_calls, 0);
  parked.stop_at = 2;
  evx_gate_open(&gate, 1);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(parked.done_calls, 1);
  ck_assert_int_eq(parked.status, EVX_OK);
  ck_assert_int_eq(atomic_load(&victim.ran), 0);
  evx_test_assert_idle(ex);
  evx_gate_destroy(&gate);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_cancel_running) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor *ex = one_thread(loop);
  evx_gate gate;
  evx_gate_init(&gate);
  int total = 0;
  job running = {.loop = loop, .gate = &gate, .total = &total, .stop_at = 1};
  evx_job *rj = NULL;
  ck_assert_int_eq(evx_submit_job(ex, park_work, job_done, &running, &rj), EVX_OK);
  evx_gate_wait_entered(&gate, 1);
  ck_assert_int_eq(evx_job_cancel(rj), EVX_EBUSY); /* started: too late */
  evx_gate_open(&gate, 1);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(running.done_calls, 1);
  ck_assert_int_eq(running.status, EVX_OK); /* its real outcome */
  ck_assert_int_eq(atomic_load(&running.ran), 1);
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.cancelled, 0);
  ck_assert_uint_eq(st.completed, 1);
  evx_test_assert_idle(ex);
  evx_gate_destroy(&gate);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* A job whose work already returned, but whose done has not run yet (the loop
 * has not run since): cancel answers EBUSY and done reports EVX_OK. */
typedef struct signal_job {
  job j;
  sem_t finished;
} signal_job;

static void signal_work(void *arg) {
  signal_job *s = arg;
  atomic_fetch_add(&s->j.ran, 1);
  sem_post(&s->finished);
}
static void signal_done(void *arg, int status) { job_done(&((signal_job *)arg)->j, status); }

START_TEST(test_cancel_finished) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor *ex = one_thread(loop);
  int total = 0;
  signal_job s = {.j = {.loop = loop, .total = &total, .stop_at = 1}};
  sem_init(&s.finished, 0, 0);
  evx_job *h = NULL;
  ck_assert_int_eq(evx_submit_job(ex, signal_work, signal_done, &s, &h), EVX_OK);
  sem_wait(&s.finished);
  ck_assert_int_eq(evx_job_cancel(h), EVX_EBUSY);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(s.j.done_calls, 1);
  ck_assert_int_eq(s.j.status, EVX_OK);
  sem_destroy(&s.finished);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* Cancelling twice: the second call fails, done still comes exactly once. */
START_TEST(test_cancel_twice) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor *ex = one_thread(loop);
  evx_gate gate;
  evx_gate_init(&gate);
  int total = 0;
  job parked = {.loop = loop, .gate = &gate, .total = &total, .stop_at = 2};
  job victim = parked;
  ck_assert_int_eq(evx_submit(ex, park_work, job_done, &parked), EVX_OK);
  evx_gate_wait_entered(&gate, 1);
  evx_job *vj = NULL;
  ck_assert_int_eq(evx_submit_job(ex, nop_work, job_done, &victim, &vj), EVX_OK);
  ck_assert_int_eq(evx_job_cancel(vj), EVX_OK);
  ck_assert_int_ne(evx_job_cancel(vj), EVX_OK);
  evx_gate_open(&gate, 1);
  evx_test_run(loop, 5000);
  evx_test_run_once(loop); /* room for a wrong second done */
  ck_assert_int_eq(victim.done_calls, 1);
  ck_assert_int_eq(victim.status, EVX_ECANCELED);
  ck_assert_int_eq(atomic_load(&victim.ran), 0);
  ck_assert_int_eq(total, 2);
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.cancelled, 1);
  evx_test_assert_idle(ex);
  evx_gate_destroy(&gate);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* A job has not started until its work is called. One worker: A is parked,
 * then B (parks too), C, D, E are queued. A is released: the worker takes B;
 * C, D, E are still waiting behind B - whatever the pool does internally -
 * so they can be cancelled, and stats count them as queued, not running. */
START_TEST(test_cancel_behind_running_job) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor *ex = one_thread(loop);
  evx_gate ga, gb;
  evx_gate_init(&ga);
  evx_gate_init(&gb);
  int total = 0;
  job a = {.loop = loop, .gate = &ga, .total = &total, .stop_at = 5};
  job b = a, c = a, d = a, e = a;
  b.gate = &gb;
  ck_assert_int_eq(evx_submit(ex, park_work, job_done, &a), EVX_OK);
  evx_gate_wait_entered(&ga, 1);
  evx_job *hc, *hd, *he;
  ck_assert_int_eq(evx_submit(ex, park_work, job_done, &b), EVX_OK);
  ck_assert_int_eq(evx_submit_job(ex, nop_work, job_done, &c, &hc), EVX_OK);
  ck_assert_int_eq(evx_submit_job(ex, nop_work, job_done, &d, &hd), EVX_OK);
  ck_assert_int_eq(evx_submit_job(ex, nop_work, job_done, &e, &he), EVX_OK);
  evx_gate_open(&ga, 1);
  evx_gate_wait_entered(&gb, 1); /* B runs; C, D, E have not started */

  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.running, 1);
  ck_assert_uint_eq(st.queued, 3);
  ck_assert_int_eq(evx_job_cancel(hd), EVX_OK);
  ck_assert_int_eq(evx_job_cancel(hc), EVX_OK);

  evx_gate_open(&gb, 1);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(c.status, EVX_ECANCELED);
  ck_assert_int_eq(d.status, EVX_ECANCELED);
  ck_assert_int_eq(atomic_load(&c.ran), 0);
  ck_assert_int_eq(atomic_load(&d.ran), 0);
  ck_assert_int_eq(e.status, EVX_OK);
  ck_assert_int_eq(atomic_load(&e.ran), 1);
  evx_test_assert_idle(ex);
  evx_gate_destroy(&ga);
  evx_gate_destroy(&gb);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* Cancel every other one of many queued jobs. */
#define MANY 200
START_TEST(test_cancel_many) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor_opts o = {.threads = 2, .max_queue = MANY};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  evx_gate gate;
  evx_gate_init(&gate);
  int total = 0;
  static job jobs[MANY];
  job p1 = {.loop = loop, .gate = &gate, .total = &total, .stop_at = MANY + 2};
  job p2 = p1;
  ck_assert_int_eq(evx_submit(ex, park_work, job_done, &p1), EVX_OK);
  ck_assert_int_eq(evx_submit(ex, park_work, job_done, &p2), EVX_OK);
  evx_gate_wait_entered(&gate, 2);
  evx_job *handles[MANY];
  for (int i = 0; i < MANY; i++) {
    jobs[i] = (job){.loop = loop, .total = &total, .stop_at = MANY + 2};
    ck_assert_int_eq(evx_submit_job(ex, nop_work, job_done, &jobs[i], &handles[i]), EVX_OK);
  }
  for (int i = 0; i < MANY; i += 2) ck_assert_int_eq(evx_job_cancel(handles[i]), EVX_OK);
  evx_gate_open(&gate, 2);
  evx_test_run(loop, 10000);
  for (int i = 0; i < MANY; i++) {
    ck_assert_int_eq(jobs[i].done_calls, 1);
    ck_assert_int_eq(jobs[i].status, i % 2 ? EVX_OK : EVX_ECANCELED);
    ck_assert_int_eq(atomic_load(&jobs[i].ran), i % 2);
  }
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.cancelled, MANY / 2);
  ck_assert_uint_eq(st.completed, MANY / 2 + 2);
  evx_test_assert_idle(ex);
  evx_gate_destroy(&gate);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* evx_job_cancel is loop-thread only: called by a worker of another executor
 * while the loop runs, it answers EVX_EINVAL, and the target (still queued
 * behind a parked job at that moment) runs normally. */
typedef struct wrong {
  evx_loop *loop;
  evx_executor *other;
  evx_gate *gate;
  evx_job *target;
  atomic_int rc;
} wrong;

static void wrong_work(void *arg) {
  wrong *w = arg;
  atomic_store(&w->rc, evx_job_cancel(w->target));
}

/* Loop thread, after the worker's attempt: release the parked job. */
static void wrong_done(void *arg, int status) {
  wrong *w = arg;
  ck_assert_int_eq(status, EVX_OK);
  evx_gate_open(w->gate, 1);
}

static void wrong_start_cb(void *arg) {
  wrong *w = arg;
  ck_assert_int_eq(evx_submit(w->other, wrong_work, wrong_done, w), EVX_OK);
}

START_TEST(test_cancel_wrong_thread) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor *ex = one_thread(loop);
  evx_executor *other = one_thread(loop);
  evx_gate gate;
  evx_gate_init(&gate);
  int total = 0;
  job parked = {.loop = loop, .gate = &gate, .total = &total, .stop_at = 2};
  job target = parked;
  ck_assert_int_eq(evx_submit(ex, park_work, job_done, &parked), EVX_OK);
  evx_gate_wait_entered(&gate, 1);
  wrong w = {.loop = loop, .other = other, .gate = &gate, .rc = 99};
  ck_assert_int_eq(evx_submit_job(ex, nop_work, job_done, &target, &w.target), EVX_OK);
  ck_assert_int_eq(evx_add_callback(loop, wrong_start_cb, &w), EVX_OK);
  evx_test_run(loop, 5000); /* stops after parked and target are done */
  ck_assert_int_eq(atomic_load(&w.rc), EVX_EINVAL);
  ck_assert_int_eq(target.done_calls, 1);
  ck_assert_int_eq(target.status, EVX_OK);
  ck_assert_int_eq(atomic_load(&target.ran), 1);
  evx_test_assert_idle(ex);
  evx_test_assert_idle(other);
  evx_gate_destroy(&gate);
  evx_executor_free(other);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_cancel_invalid) {
  ck_assert_int_eq(evx_job_cancel(NULL), EVX_EINVAL);
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor *ex = one_thread(loop);
  int total = 0;
  job j = {.loop = loop, .total = &total};
  ck_assert_int_eq(evx_submit_job(ex, nop_work, job_done, &j, NULL), EVX_EINVAL);
  evx_test_run_once(loop);
  evx_executor_free(ex); /* joins: a wrongly accepted job would have run by now */
  ck_assert_int_eq(atomic_load(&j.ran), 0);
  ck_assert_int_eq(j.done_calls, 0);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- stale handles ---------------------------------------------------------- */

/* The reported bug: a handle kept after its job's done ran named the recycled
 * node, so cancelling it cancelled a different, later job. Now it is stale:
 * EVX_EINVAL, and the later job runs. */
START_TEST(test_cancel_stale_handle) {
  evx_loop *loop = evx_loop_new(NULL);
  evx_executor *ex = one_thread(loop);
  evx_gate gate;
  evx_gate_init(&gate);
  int total = 0;
  job first = {.loop = loop, .total = &total, .stop_at = 1};
  evx_job *old = NULL;
  ck_assert_int_eq(evx_submit_job(ex, nop_work, job_done, &first, &old), EVX_OK);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(first.done_calls, 1);
  /* A parked job, then a later one queued behind it: it takes the first's node. */
  job parked = {.loop = loop, .gate = &gate, .total = &total, .stop_at = 3};
  job later = parked;
  ck_assert_int_eq(evx_submit(ex, park_work, job_done, &parked), EVX_OK);
  evx_gate_wait_entered(&gate, 1);
  evx_job *lh = NULL;
  ck_assert_int_eq(evx_submit_job(ex, nop_work, job_done, &later, &lh), EVX_OK);
  ck_assert_ptr_ne(lh, old);
  ck_assert_int_eq(evx_job_cancel(old), EVX_EINVAL);
  ck_assert_int_eq(evx_job_cancel(old), EVX_EINVAL);
  evx_gate_open(&gate, 1);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(later.done_calls, 1);
  ck_assert_int_eq(later.status, EVX_OK); /* not cancelled through the old handle */
  ck_assert_int_eq(atomic_load(&later.ran), 1);
  ck_assert_int_eq(evx_job_cancel(lh), EVX_EINVAL); /* its own done ran: stale too */
  ck_assert_int_eq(evx_job_cancel((evx_job *)(uintptr_t)0x12345), EVX_EINVAL); /* never issued */
  evx_test_assert_idle(ex);
  evx_gate_destroy(&gate);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* Inside done the handle is still live (the job finished: EBUSY); after it, stale. */
static evx_job *g_self;
static int g_cancel_in_done;
static void self_cancel_done(void *arg, int status) {
  g_cancel_in_done = evx_job_cancel(g_self);
  job_done(arg, status);
}

START_TEST(test_cancel_from_own_done) {
  evx_loop *loop = evx_loop_new(NULL);
  evx_executor *ex = one_thread(loop);
  int total = 0;
  job j = {.loop = loop, .total = &total, .stop_at = 1};
  ck_assert_int_eq(evx_submit_job(ex, nop_work, self_cancel_done, &j, &g_self), EVX_OK);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(g_cancel_in_done, EVX_EBUSY);
  ck_assert_int_eq(j.status, EVX_OK);
  ck_assert_int_eq(evx_job_cancel(g_self), EVX_EINVAL);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- cancelling a running job: the work is asked to stop ------------------ */

typedef struct stoppable {
  job j;
  sem_t entered;
  atomic_int saw_cancel;
  atomic_int flag_before; /* evx_job_cancelled() at the start: 0 */
} stoppable;

static void stoppable_work(void *arg) {
  stoppable *s = arg;
  atomic_store(&s->flag_before, evx_job_cancelled());
  atomic_fetch_add(&s->j.ran, 1);
  sem_post(&s->entered);
  /* A long job that polls the token (bounded, so a bug fails, not hangs). */
  uint64_t end = evx_now_ns() + 10ull * 1000000000ull;
  while (evx_now_ns() < end) {
    if (evx_job_cancelled()) {
      atomic_store(&s->saw_cancel, 1);
      return;
    }
    evx_test_sleep_ms(1);
  }
}

static void stoppable_done(void *arg, int status) { job_done(&((stoppable *)arg)->j, status); }

START_TEST(test_cancel_running_asks_work_to_stop) {
  evx_loop *loop = evx_loop_new(NULL);
  evx_executor *ex = one_thread(loop);
  int total = 0;
  stoppable s = {.j = {.loop = loop, .total = &total, .stop_at = 1}};
  sem_init(&s.entered, 0, 0);
  evx_job *h = NULL;
  uint64_t t0 = evx_now_ns();
  ck_assert_int_eq(evx_submit_job(ex, stoppable_work, stoppable_done, &s, &h), EVX_OK);
  sem_wait(&s.entered);
  ck_assert_int_eq(evx_job_cancelled(), 0); /* not a worker */
  ck_assert_int_eq(evx_job_cancel(h), EVX_EBUSY); /* it runs: asked to stop */
  evx_test_run(loop, 5000);
  ck_assert_int_eq(atomic_load(&s.saw_cancel), 1);
  ck_assert_int_eq(atomic_load(&s.flag_before), 0);
  ck_assert_uint_lt(evx_test_ms_since(t0), 5000); /* stopped early, not after 10 s */
  ck_assert_int_eq(s.j.done_calls, 1);
  ck_assert_int_eq(s.j.status, EVX_OK); /* work ran and returned */
  /* The flag belongs to that job: the worker's next job starts clean. */
  stoppable next = {.j = {.loop = loop, .total = &total, .stop_at = 2}};
  sem_init(&next.entered, 0, 0);
  evx_job *h2 = NULL;
  ck_assert_int_eq(evx_submit_job(ex, stoppable_work, stoppable_done, &next, &h2), EVX_OK);
  sem_wait(&next.entered);
  ck_assert_int_eq(evx_job_cancel(h2), EVX_EBUSY);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(atomic_load(&next.flag_before), 0);
  ck_assert_int_eq(atomic_load(&next.saw_cancel), 1);
  sem_destroy(&s.entered);
  sem_destroy(&next.entered);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

static Suite *cancel_suite(void) {
  Suite *s = suite_create("cancel");
  TCase *tc = evx_test_tcase(s, "queued", 10);
  tcase_add_test(tc, test_cancel_queued);
  tcase_add_test(tc, test_cancel_done_while_pool_busy);
  tcase_add_test(tc, test_cancel_twice);
  tcase_add_test(tc, test_cancel_many);
  tcase_add_test(tc, test_cancel_behind_running_job);
  tc = evx_test_tcase(s, "started", 10);
  tcase_add_test(tc, test_cancel_running);
  tcase_add_test(tc, test_cancel_finished);
  tcase_add_test(tc, test_cancel_running_asks_work_to_stop);
  tcase_add_test(tc, test_cancel_from_own_done);
  tcase_add_test(tc, test_cancel_stale_handle);
  tc = evx_test_tcase(s, "misuse", 10);
  tcase_add_test(tc, test_cancel_wrong_thread);
  tcase_add_test(tc, test_cancel_invalid);
  return s;
}

int main(void) { return evx_test_main(cancel_suite()); }
