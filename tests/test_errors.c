/* The error table (evx_strerror / evx_err_name) and the rule that every public
 * call answers NULL / invalid arguments with EVX_EINVAL (or NULL) and never
 * crashes. */
#include "evx_test.h"

#include <limits.h>

typedef struct code {
  int value;
  const char *name;
  const char *msg;
} code;

static const code codes[] = {
#define X(name, value, msg) {value, "EVX_" #name, msg},
    EVX_ERRNO_MAP(X)
#undef X
};
enum { NCODES = sizeof codes / sizeof codes[0] };

START_TEST(test_every_code) {
  ck_assert_int_ge(NCODES, 9);
  for (int i = 0; i < NCODES; i++) {
    const char *m = evx_strerror(codes[i].value);
    const char *n = evx_err_name(codes[i].value);
    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_nonnull(n);
    ck_assert_str_eq(m, codes[i].msg);
    ck_assert_str_eq(n, codes[i].name);
    /* Codes are distinct, and OK is the only non-negative one. */
    for (int k = 0; k < i; k++) ck_assert_int_ne(codes[i].value, codes[k].value);
    if (codes[i].value != 0) ck_assert_int_lt(codes[i].value, 0);
  }
  ck_assert_str_eq(evx_err_name(EVX_OK), "EVX_OK");
  ck_assert_str_eq(evx_err_name(EVX_EBUSY), "EVX_EBUSY");
  ck_assert_str_eq(evx_err_name(EVX_ECLOSED), "EVX_ECLOSED");
  ck_assert_str_eq(evx_strerror(EVX_ETIMEDOUT), "timed out");
  ck_assert_int_eq(EVX_PENDING > 0, 1); /* never confused with an error */
  /* a future's status is printed with the same functions */
  ck_assert_str_eq(evx_err_name(EVX_PENDING), "EVX_PENDING");
  ck_assert_str_eq(evx_strerror(EVX_PENDING), "pending");
  ck_assert_str_eq(evx_err_name(EVX_EADDRINUSE), "EVX_EADDRINUSE");
}
END_TEST

START_TEST(test_unknown_codes) {
  static const int unknown[] = {2, 100, -99, -100, -1000, INT_MIN, INT_MAX};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
    ck_assert_str_eq(evx_strerror(unknown[i]), "unknown error");
    ck_assert_str_eq(evx_err_name(unknown[i]), "EVX_UNKNOWN");
  }
}
END_TEST

START_TEST(test_allocator_args) {
  /* Only some functions given: refused, and the allocator stays as it was. */
  ck_assert_int_eq(evx_set_allocator(malloc, NULL, NULL, NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_set_allocator(NULL, realloc, calloc, free), EVX_EINVAL);
  ck_assert_int_eq(evx_set_allocator(malloc, realloc, calloc, NULL), EVX_EINVAL);
  long before = atomic_load(&evx_test_alloc.allocs);
  void *p = evx_malloc(8);
  ck_assert_ptr_nonnull(p);
  ck_assert_int_eq(atomic_load(&evx_test_alloc.allocs), before + 1);
  evx_free(p);
  evx_free(NULL);
  ck_assert_ptr_null(evx_strdup(NULL));
  char *s = evx_strdup("evexec");
  ck_assert_str_eq(s, "evexec");
  evx_free(s);
  uint64_t a = evx_now_ns(), b = evx_now_ns();
  ck_assert_uint_le(a, b);
  ck_assert_uint_gt(a, 0);
}
END_TEST

static void cb(void *arg) { (*(int *)arg)++; }
static void work(void *arg) { (void)arg; }
static void done(void *arg, int status) {
  (void)status;
  (*(int *)arg)++;
}
static void fcb(evx_future *f, void *arg) {
  (void)f;
  (*(int *)arg)++;
}
static int call(void *arg, void **result) {
  (void)arg;
  *result = NULL;
  return 0;
}
static int g_arg_freed;
static void arg_free(void *p) {
  (void)p;
  g_arg_freed++;
}

/* Every public call with NULL (or an invalid value) where an object is
 * expected: an error, never a crash, never a callback. */
START_TEST(test_null_everywhere) {
  int calls = 0;
  evx_job *job = NULL;
  evx_executor_stats st;
  uint64_t hist[EVX_STATS_BUCKETS] = {0};

  /* loop.h */
  ck_assert_int_eq(evx_loop_run(NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_loop_stop(NULL), EVX_EINVAL);
  evx_loop_free(NULL);
  ck_assert_ptr_null(evx_loop_base(NULL));
  ck_assert_int_eq(evx_add_callback(NULL, cb, &calls), EVX_EINVAL);
  ck_assert_int_eq(evx_loop_in_thread(NULL), 0);
  ck_assert_ptr_null(evx_call_later(NULL, 0, cb, &calls));
  ck_assert_int_eq(evx_timer_cancel(NULL), EVX_EINVAL);

  /* executor.h */
  ck_assert_ptr_null(evx_executor_new(NULL, NULL));
  ck_assert_int_eq(evx_submit(NULL, work, done, &calls), EVX_EINVAL);
  ck_assert_int_eq(evx_submit_job(NULL, work, done, &calls, &job), EVX_EINVAL);
  ck_assert_int_eq(evx_job_cancel(NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_executor_shutdown(NULL, EVX_SHUTDOWN_CANCEL), EVX_EINVAL);
  evx_executor_free(NULL);
  ck_assert_ptr_null(evx_executor_loop(NULL));
  ck_assert_ptr_null(evx_executor_name(NULL));
  ck_assert_int_eq(evx_executor_stats_get(NULL, &st), EVX_EINVAL);
  ck_assert_uint_eq(evx_stats_quantile_us(NULL, 0.5), 0);
  ck_assert_uint_eq(evx_stats_quantile_us(hist, 0.5), 0);
  ck_assert_ptr_null(evx_strand_new(NULL));
  ck_assert_int_eq(evx_strand_submit(NULL, work, done, &calls), EVX_EINVAL);
  ck_assert_int_eq(evx_strand_submit_job(NULL, work, done, &calls, &job), EVX_EINVAL);
  evx_strand_free(NULL);

  /* future.h */
  ck_assert_ptr_null(evx_future_new(NULL));
  ck_assert_ptr_null(evx_future_ref(NULL));
  evx_future_release(NULL);
  ck_assert_int_eq(evx_future_resolve(NULL, NULL, NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_future_fail(NULL, EVX_EIO), EVX_EINVAL);
  ck_assert_int_eq(evx_future_cancel(NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_future_is_done(NULL), 0);
  ck_assert_int_eq(evx_future_status(NULL), EVX_EINVAL);
  ck_assert_ptr_null(evx_future_result(NULL));
  ck_assert_ptr_null(evx_future_take(NULL));
  ck_assert_int_eq(evx_future_on_done(NULL, fcb, &calls), EVX_EINVAL);
  ck_assert_ptr_null(evx_future_loop(NULL));
  ck_assert_ptr_null(evx_run_on_executor(NULL, call, NULL, arg_free, NULL));
  ck_assert_ptr_null(evx_future_all(NULL, NULL, 0));
  ck_assert_ptr_null(evx_future_with_timeout(NULL, 1));

  /* condition.h */
  ck_assert_ptr_null(evx_condition_new(NULL));
  ck_assert_ptr_null(evx_condition_wait(NULL, 0));
  ck_assert_int_eq(evx_condition_notify(NULL, 1), EVX_EINVAL);
  ck_assert_int_eq(evx_condition_notify_all(NULL), EVX_EINVAL);
  ck_assert_uint_eq(evx_condition_waiters(NULL), 0);
  evx_condition_free(NULL);

  ck_assert_int_eq(calls, 0);
  ck_assert_int_eq(g_arg_freed, 0);
  ck_assert_int_eq(evx_test_alloc_live(), 0);
}
END_TEST

/* Valid objects, invalid other arguments. */
START_TEST(test_invalid_values) {
  int calls = 0;
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  ck_assert_int_eq(evx_add_callback(loop, NULL, &calls), EVX_EINVAL);
  ck_assert_ptr_null(evx_call_later(loop, 5, NULL, &calls));

  evx_executor_opts bad = {.threads = 1025};
  ck_assert_ptr_null(evx_executor_new(loop, &bad));
  evx_executor_opts o = {.threads = 1};
  evx_executor *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(ex);
  ck_assert_int_eq(evx_submit(ex, NULL, done, &calls), EVX_EINVAL);
  ck_assert_int_eq(evx_submit_job(ex, work, done, &calls, NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_executor_shutdown(ex, 42), EVX_EINVAL);
  ck_assert_int_eq(evx_executor_shutdown(ex, -1), EVX_EINVAL);
  ck_assert_int_eq(evx_executor_stats_get(ex, NULL), EVX_EINVAL);
  evx_strand *s = evx_strand_new(ex);
  ck_assert_ptr_nonnull(s);
  ck_assert_int_eq(evx_strand_submit(s, NULL, done, &calls), EVX_EINVAL);
  ck_assert_int_eq(evx_strand_submit_job(s, work, done, &calls, NULL), EVX_EINVAL);
  ck_assert_ptr_null(evx_run_on_executor(ex, NULL, NULL, arg_free, NULL));

  evx_future *f = evx_future_new(loop);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(evx_future_fail(f, 0), EVX_EINVAL);
  ck_assert_int_eq(evx_future_fail(f, 1), EVX_EINVAL);
  ck_assert_int_eq(evx_future_on_done(f, NULL, NULL), EVX_EINVAL);
  evx_future *holes[3] = {f, NULL, f};
  ck_assert_ptr_null(evx_future_all(loop, holes, 3));

  evx_test_run_once(loop);
  ck_assert_int_eq(evx_future_status(f), EVX_PENDING);
  ck_assert_int_eq(evx_future_cancel(f), EVX_OK);
  evx_future_release(f);
  evx_strand_free(s);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
  ck_assert_int_eq(calls, 0);
  ck_assert_int_eq(g_arg_freed, 0);
}
END_TEST

static Suite *errors_suite(void) {
  Suite *s = suite_create("errors");
  TCase *tc = evx_test_tcase(s, "table", 10);
  tcase_add_test(tc, test_every_code);
  tcase_add_test(tc, test_unknown_codes);
  tcase_add_test(tc, test_allocator_args);
  tc = evx_test_tcase(s, "invalid", 10);
  tcase_add_test(tc, test_null_everywhere);
  tcase_add_test(tc, test_invalid_values);
  return s;
}

int main(void) { return evx_test_main(errors_suite()); }
