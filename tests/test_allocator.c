/* evx_set_allocator: every evexec allocation goes through the hook, and a
 * failing allocator (fail the Nth allocation, for every N along a realistic
 * path) makes each call fail cleanly with EVX_ENOMEM / NULL: nothing leaks,
 * no callback runs for a failed call, every accepted one runs exactly once. */
#include "evx_test.h"

/* ---- counting ----------------------------------------------------------------- */

static void nop_work(void *arg) { (void)arg; }
static void stop_done(void *arg, int status) {
  ck_assert_int_eq(status, EVX_OK);
  evx_loop_stop((evx_loop *)arg);
}

START_TEST(test_counting_allocator) {
  /* The fixture installed the counting allocator. */
  ck_assert_int_eq(atomic_load(&evx_test_alloc.allocs), 0);
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  long after_loop = atomic_load(&evx_test_alloc.allocs);
  ck_assert_int_gt(after_loop, 0); /* the loop itself came from the hook */
  evx_executor_opts o = {.threads = 2, .name = "count"};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  ck_assert_int_gt(atomic_load(&evx_test_alloc.allocs), after_loop);
  ck_assert_int_eq(evx_submit(ex, nop_work, stop_done, loop), EVX_OK);
  evx_test_run(loop, 5000);
  evx_future *f = evx_future_new(loop);
  ck_assert_ptr_nonnull(f);
  evx_condition *c = evx_condition_new(loop);
  ck_assert_ptr_nonnull(c);
  evx_future *w = evx_condition_wait(c, 0);
  ck_assert_ptr_nonnull(w);
  ck_assert_int_gt(evx_test_alloc_live(), 0);
  evx_future_release(w);
  evx_future_release(f);
  evx_condition_free(c);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop); /* balance back to zero */

  /* evx_malloc & co. use the hook too. */
  long before = atomic_load(&evx_test_alloc.allocs);
  void *p = evx_malloc(16);
  void *q = evx_calloc(4, 4);
  char *s = evx_strdup("x");
  ck_assert_ptr_nonnull(p);
  ck_assert_ptr_nonnull(q);
  ck_assert_ptr_nonnull(s);
  p = evx_realloc(p, 4096);
  ck_assert_ptr_nonnull(p);
  ck_assert_int_eq(atomic_load(&evx_test_alloc.allocs), before + 3);
  ck_assert_int_eq(evx_test_alloc_live(), 3);
  evx_free(p);
  evx_free(q);
  evx_free(s);
  ck_assert_int_eq(evx_test_alloc_live(), 0);

  /* All NULL restores the C library's allocator: the hook sees nothing more. */
  ck_assert_int_eq(evx_set_allocator(NULL, NULL, NULL, NULL), EVX_OK);
  before = atomic_load(&evx_test_alloc.allocs);
  p = evx_malloc(16);
  ck_assert_ptr_nonnull(p);
  evx_free(p);
  ck_assert_int_eq(atomic_load(&evx_test_alloc.allocs), before);
  evx_test_alloc_install(); /* for the fixture's teardown check */
}
END_TEST

/* Switching allocators while a loop lives would free its memory through the
 * wrong free (the next free crashed): refused with EVX_EBUSY, unchanged. */
static long other_frees;
static void other_free(void *p) {
  other_frees++;
  free(p);
}

START_TEST(test_switch_refused_while_a_loop_lives) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  ck_assert_int_eq(evx_set_allocator(malloc, realloc, calloc, other_free), EVX_EBUSY);
  ck_assert_int_eq(evx_set_allocator(NULL, NULL, NULL, NULL), EVX_EBUSY); /* restore too */
  ck_assert_int_eq(evx_set_allocator(malloc, NULL, NULL, NULL), EVX_EINVAL);
  /* The set in use again is a no-op, not a switch. */
  ck_assert_int_eq(evx_set_allocator(evx_test__malloc, evx_test__realloc, evx_test__calloc,
                                     evx_test__free),
                   EVX_OK);
  evx_loop *second = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(second);
  evx_loop_free(loop);
  ck_assert_int_eq(evx_set_allocator(malloc, realloc, calloc, other_free), EVX_EBUSY);
  evx_test_free_loop(second); /* every block went back through the counting free */
  ck_assert_int_eq(other_frees, 0);
  /* No loop left: switching works, and the new free is the one used. */
  ck_assert_int_eq(evx_set_allocator(malloc, realloc, calloc, other_free), EVX_OK);
  evx_loop *third = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(third);
  evx_loop_free(third);
  ck_assert_int_gt(other_frees, 0);
  evx_test_alloc_install(); /* for the fixture's teardown check */
}
END_TEST

START_TEST(test_fail_plain) {
  evx_test_alloc_fail_at(2, 0);
  void *a = evx_malloc(8);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_null(evx_malloc(8)); /* the 2nd attempt fails */
  void *b = evx_malloc(8);           /* and only that one */
  ck_assert_ptr_nonnull(b);
  evx_free(a);
  evx_free(b);
  ck_assert_int_eq(evx_test_alloc_live(), 0);
  /* Sticky: every allocation from the 1st on fails. */
  evx_test_alloc_fail_at(1, 1);
  ck_assert_ptr_null(evx_strdup("x"));
  ck_assert_ptr_null(evx_calloc(1, 1));
  ck_assert_ptr_null(evx_loop_new(NULL));
  ck_assert_int_eq(evx_test_alloc_live(), 0);
  evx_test_alloc_fail_at(0, 0);
}
END_TEST

/* ---- fail the Nth allocation along a realistic path ---------------------------- */

typedef struct path {
  evx_loop *loop;
  evx_executor *ex;
  evx_strand *strand;
  evx_condition *cond;
  evx_future *f, *g, *all, *w, *wt;

  int cb_added, cb_ran;
  int timer_added, timer_ran;
  int jobs_accepted, jobs_done, jobs_done_bad;
  atomic_int jobs_work;
  int strand_accepted, strand_done;
  atomic_int fn_calls;
  int arg_freed, result_freed;
  int f_failed_at_once;
  int on_done_added, on_done_ran;
  int observers;      /* harness on_done observers registered */
  int observers_seen; /* and fired */
  int unexpected;     /* return codes other than OK / ENOMEM / NULL */
  char first_failure[64];
} path;

static path P;

static void note_failure(const char *step) {
  if (!P.first_failure[0]) snprintf(P.first_failure, sizeof P.first_failure, "%s", step);
}

static int settled(void) {
  return P.cb_ran == P.cb_added && P.timer_ran == P.timer_added && P.jobs_done == P.jobs_accepted &&
         P.strand_done == P.strand_accepted && P.on_done_ran == P.on_done_added &&
         P.observers_seen == P.observers && (!P.f || P.f_failed_at_once || P.arg_freed == 1);
}

static void maybe_stop(void) {
  if (settled()) evx_loop_stop(P.loop);
}

static void p_cb(void *arg) {
  (void)arg;
  P.cb_ran++;
  maybe_stop();
}
static void p_timer(void *arg) {
  (void)arg;
  P.timer_ran++;
  maybe_stop();
}
static void p_work(void *arg) {
  (void)arg;
  atomic_fetch_add(&P.jobs_work, 1);
}
static void p_done(void *arg, int status) {
  (void)arg;
  if (status != EVX_OK) P.jobs_done_bad++;
  P.jobs_done++;
  maybe_stop();
}
static void p_strand_done(void *arg, int status) {
  (void)arg;
  if (status != EVX_OK) P.jobs_done_bad++;
  P.strand_done++;
  maybe_stop();
}
static int p_fn(void *arg, void **result) {
  atomic_fetch_add(&P.fn_calls, 1);
  int *r = malloc(sizeof *r); /* the result is ours, not evexec's */
  if (!r) return EVX_ENOMEM;
  *r = *(int *)arg;
  *result = r;
  return EVX_OK;
}
static void p_arg_free(void *p) {
  P.arg_freed++;
  free(p);
  maybe_stop();
}
static void p_result_free(void *p) {
  P.result_freed++;
  free(p);
}
static void p_on_done(evx_future *f, void *arg) {
  (void)f;
  (void)arg;
  P.on_done_ran++;
  maybe_stop();
}
static void p_observe(evx_future *f, void *arg) {
  (void)f;
  (void)arg;
  P.observers_seen++;
  maybe_stop();
}

/* Harness-side on_done: not subject to the injected failure. */
static void observe(evx_future *f) {
  evx_test_alloc_pause();
  int rc = evx_future_on_done(f, p_observe, NULL);
  evx_test_alloc_resume();
  ck_assert_int_eq(rc, EVX_OK);
  P.observers++;
}

static void check_rc(const char *step, int rc) {
  if (rc == EVX_ENOMEM)
    note_failure(step);
  else if (rc != EVX_OK)
    P.unexpected++;
}

/* The path. Every step may fail with ENOMEM / NULL; the path goes on with what
 * exists, like a program that handles each error. */
static void run_path(void) {
  memset(&P, 0, sizeof P);
  P.loop = evx_loop_new(NULL);
  if (!P.loop) {
    note_failure("loop_new");
    return;
  }
  evx_executor_opts o = {.threads = 2, .max_queue = 16, .name = "oom"};
  P.ex = evx_executor_new(P.loop, &o);
  if (!P.ex) note_failure("executor_new");

  int rc = evx_add_callback(P.loop, p_cb, NULL);
  check_rc("add_callback", rc);
  P.cb_added = rc == EVX_OK;

  if (evx_call_later(P.loop, 0, p_timer, NULL))
    P.timer_added = 1;
  else
    note_failure("call_later");

  if (P.ex) {
    for (int i = 0; i < 3; i++) {
      rc = evx_submit(P.ex, p_work, p_done, NULL);
      check_rc("submit", rc);
      P.jobs_accepted += rc == EVX_OK;
    }
    evx_job *job = NULL;
    rc = evx_submit_job(P.ex, p_work, p_done, NULL, &job);
    check_rc("submit_job", rc);
    P.jobs_accepted += rc == EVX_OK;

    P.strand = evx_strand_new(P.ex);
    if (!P.strand) note_failure("strand_new");
    else
      for (int i = 0; i < 2; i++) {
        rc = evx_strand_submit(P.strand, p_work, p_strand_done, NULL);
        check_rc("strand_submit", rc);
        P.strand_accepted += rc == EVX_OK;
      }

    int *arg = malloc(sizeof *arg);
    ck_assert_ptr_nonnull(arg);
    *arg = 5;
    P.f = evx_run_on_executor(P.ex, p_fn, arg, p_arg_free, p_result_free);
    if (!P.f) {
      note_failure("run_on_executor(NULL)");
      ck_assert_int_eq(P.arg_freed, 0); /* NULL: arg_free not called, arg is ours */
      free(arg);
    } else if (evx_future_is_done(P.f)) {
      note_failure("run_on_executor(failed)");
      P.f_failed_at_once = 1;
      if (evx_future_status(P.f) != EVX_ENOMEM) P.unexpected++;
      ck_assert_int_eq(P.arg_freed, 1); /* called before the call returned */
    }
  }

  P.g = evx_future_new(P.loop);
  if (!P.g) note_failure("future_new");

  /* Two callbacks on g fill its inline slots, so the ones future_all and
   * with_timeout add must allocate (and roll back when they cannot). */
  for (int i = 0; P.g && i < 2; i++) {
    rc = evx_future_on_done(P.g, p_on_done, NULL);
    check_rc("future_on_done(g)", rc);
    P.on_done_added += rc == EVX_OK;
  }

  if (P.f && P.g) {
    evx_future *in[2] = {P.f, P.g};
    P.all = evx_future_all(P.loop, in, 2);
    if (!P.all) note_failure("future_all");
  }

  if (P.g) {
    P.wt = evx_future_with_timeout(P.g, 60000);
    if (!P.wt) note_failure("with_timeout");
  }

  P.cond = evx_condition_new(P.loop);
  if (!P.cond)
    note_failure("condition_new");
  else {
    P.w = evx_condition_wait(P.cond, 60000);
    if (!P.w) note_failure("condition_wait");
  }

  evx_future *target = P.all ? P.all : P.f;
  if (target) {
    rc = evx_future_on_done(target, p_on_done, NULL);
    check_rc("future_on_done", rc);
    P.on_done_added += rc == EVX_OK;
  }

  /* Drive everything to completion. */
  if (P.g) ck_assert_int_eq(evx_future_resolve(P.g, NULL, NULL), EVX_OK);
  if (P.w) {
    rc = evx_condition_notify_all(P.cond);
    if (rc != 1) P.unexpected++;
  }
  if (P.f) observe(P.f);
  if (P.all) observe(P.all);
  if (P.w) observe(P.w);
  if (P.wt) observe(P.wt);
  if (!settled()) evx_test_run(P.loop, 10000);
}

static void check_and_free_path(long n) {
  ck_assert_msg(P.unexpected == 0, "N=%ld: unexpected return code (first failure: %s)", n,
                P.first_failure);
  if (P.loop) {
    /* Exactly once for everything accepted, never for what failed. */
    ck_assert_int_eq(P.cb_ran, P.cb_added);
    ck_assert_int_eq(P.timer_ran, P.timer_added);
    ck_assert_int_eq(P.jobs_done, P.jobs_accepted);
    ck_assert_int_eq(P.strand_done, P.strand_accepted);
    ck_assert_int_eq(atomic_load(&P.jobs_work), P.jobs_accepted + P.strand_accepted);
    ck_assert_int_eq(P.jobs_done_bad, 0);
    ck_assert_int_eq(P.on_done_ran, P.on_done_added);
    ck_assert_int_eq(P.observers_seen, P.observers);
    if (P.f && !P.f_failed_at_once) {
      ck_assert_int_eq(evx_future_status(P.f), EVX_OK);
      ck_assert_int_eq(atomic_load(&P.fn_calls), 1);
      ck_assert_int_eq(*(int *)evx_future_result(P.f), 5);
    } else {
      ck_assert_int_eq(atomic_load(&P.fn_calls), 0);
    }
    if (P.f) ck_assert_int_eq(P.arg_freed, 1);
    if (P.all) ck_assert_int_eq(evx_future_status(P.all), evx_future_status(P.f));
    if (P.w) ck_assert_int_eq(evx_future_status(P.w), EVX_OK);
    if (P.wt) ck_assert_int_eq(evx_future_status(P.wt), EVX_OK); /* mirrors g */
    evx_future_release(P.wt);
    evx_future_release(P.w);
    evx_future_release(P.all);
    evx_future_release(P.g);
    evx_future_release(P.f);
    evx_condition_free(P.cond);
    if (P.ex) evx_test_assert_idle(P.ex);
    evx_strand_free(P.strand);
    evx_executor_free(P.ex);
    evx_loop_free(P.loop);
    ck_assert_int_eq(P.result_freed, P.f && !P.f_failed_at_once ? 1 : 0);
  }
  ck_assert_msg(evx_test_alloc_live() == 0, "N=%ld (first failure: %s): %ld block(s) leaked", n,
                P.first_failure, evx_test_alloc_live());
}

/* One pass per N until the path completes without reaching the Nth attempt. */
static void fail_each_allocation(int sticky) {
  long n;
  int completed = 0;
  for (n = 1; n <= 400; n++) {
    evx_test_alloc_fail_at(n, sticky);
    run_path();
    long failures = atomic_load(&evx_test_alloc.failures);
    /* Teardown must not need memory: failures stay injected while freeing. */
    check_and_free_path(n);
    evx_test_alloc_fail_at(0, 0);
    if (failures == 0) {
      ck_assert_msg(P.first_failure[0] == 0, "N=%ld: %s failed without an injected failure", n,
                    P.first_failure);
      completed = 1;
      break;
    }
  }
  ck_assert_msg(completed, "the path needs more than 400 allocations");
  fprintf(stderr, "allocator: %s failure injected at each of %ld allocation(s) of the path\n",
          sticky ? "sticky" : "single", n - 1);
}

START_TEST(test_fail_nth_single) { fail_each_allocation(0); }
END_TEST

START_TEST(test_fail_nth_sticky) { fail_each_allocation(1); }
END_TEST

static Suite *allocator_suite(void) {
  Suite *s = suite_create("allocator");
  TCase *tc = evx_test_tcase(s, "counting", 10);
  tcase_add_test(tc, test_counting_allocator);
  tcase_add_test(tc, test_switch_refused_while_a_loop_lives);
  tcase_add_test(tc, test_fail_plain);
  tc = evx_test_tcase(s, "failing", 60);
  tcase_add_test(tc, test_fail_nth_single);
  tcase_add_test(tc, test_fail_nth_sticky);
  return s;
}

int main(void) { return evx_test_main(allocator_suite()); }
