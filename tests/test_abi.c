/* The public surface that can grow (common.h, "Options structs and the
 * ABI"): constructors read only the options bytes the caller was compiled
 * with, refuse fields they do not know, keep a plain function for the first
 * layout; a failed constructor says why through evx_last_error(). */
#include "test_http_util.h"

#include <stddef.h>

/* A struct as a program built against a newer header would pass: today's
 * options followed by one field this library does not know. */
typedef struct newer_executor_opts {
  evx_executor_opts base;
  uint64_t future_field;
} newer_executor_opts;

START_TEST(test_executor_sizes) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_executor_stats st;

  /* A caller that only knows `threads` (a struct cut after it): the rest,
   * including name, takes the defaults - never read past opts_size. */
  evx_executor_opts o = {.threads = 3, .max_queue = 7, .name = "not-read"};
  evx_executor *ex = evx_executor_new_sized(loop, &o, offsetof(evx_executor_opts, max_queue));
  ck_assert_ptr_nonnull(ex);
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.threads, 3);
  ck_assert_str_eq(evx_executor_name(ex), "evx");
  evx_executor_free(ex);

  /* Newer header, field left at zero: works. Set: refused, with the reason. */
  newer_executor_opts n = {.base = {.threads = 2, .name = "newer"}};
  ex = evx_executor_new_sized(loop, &n.base, sizeof n);
  ck_assert_ptr_nonnull(ex);
  ck_assert_str_eq(evx_executor_name(ex), "newer");
  evx_executor_free(ex);
  n.future_field = 1;
  ck_assert_ptr_null(evx_executor_new_sized(loop, &n.base, sizeof n));
  ck_assert_int_eq(evx_last_error(), EVX_EINVAL);

  /* The macro passes today's size; compound literals still work through it. */
  ex = evx_executor_new(loop, &(evx_executor_opts){.threads = 1, .name = "lit"});
  ck_assert_ptr_nonnull(ex);
  ck_assert_str_eq(evx_executor_name(ex), "lit");
  evx_executor_free(ex);

  /* The plain function exists (address taken, old binaries) and reads the
   * first layout. */
  evx_executor *(*plain)(evx_loop *, const evx_executor_opts *) = evx_executor_new;
  ex = plain(loop, &(evx_executor_opts){.threads = 1, .name = "plain"});
  ck_assert_ptr_nonnull(ex);
  ck_assert_str_eq(evx_executor_name(ex), "plain");
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

static void *coro_body(void *arg) { return arg; }

static void *fail_elsewhere(void *arg) {
  if (!evx_http_new(NULL, NULL)) *(int *)arg = evx_last_error();
  return NULL;
}

/* issue #14: evx_executor_new with 5000 threads returned a bare NULL. */
START_TEST(test_constructors_say_why) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  ck_assert_ptr_null(evx_executor_new(loop, &(evx_executor_opts){.threads = 5000}));
  ck_assert_int_eq(evx_last_error(), EVX_EINVAL);
  ck_assert_ptr_null(evx_executor_new(NULL, NULL));
  ck_assert_int_eq(evx_last_error(), EVX_EINVAL);
  ck_assert_ptr_null(evx_strand_new(NULL));
  ck_assert_int_eq(evx_last_error(), EVX_EINVAL);
  ck_assert_ptr_null(evx_http_new(NULL, NULL));
  ck_assert_int_eq(evx_last_error(), EVX_EINVAL);
  ck_assert_ptr_null(evx_future_new(NULL));
  ck_assert_int_eq(evx_last_error(), EVX_EINVAL);
  ck_assert_ptr_null(evx_condition_new(NULL));
  ck_assert_int_eq(evx_last_error(), EVX_EINVAL);
  ck_assert_ptr_null(evx_call_later(loop, 1, NULL, NULL));
  ck_assert_int_eq(evx_last_error(), EVX_EINVAL);
  ck_assert_ptr_null(evx_queue_new(NULL, 0));
  ck_assert_int_eq(evx_last_error(), EVX_EINVAL);
  ck_assert_ptr_null(evx_go(loop, NULL, NULL, NULL));
  ck_assert_int_eq(evx_last_error(), EVX_EINVAL);
  struct {
    evx_coro_opts base;
    int future_field;
  } co = {.future_field = 1};
  ck_assert_ptr_null(evx_go_sized(loop, coro_body, NULL, &co.base, sizeof co));
  ck_assert_int_eq(evx_last_error(), EVX_EINVAL);
  ck_assert_ptr_null(evx_go(loop, coro_body, NULL, &(evx_coro_opts){.stack_size = (size_t)1 << 40}));
  ck_assert_int_eq(evx_last_error(), EVX_EINVAL);

  /* Out of memory says so: fail every allocation from now on. */
  evx_test_alloc_fail_at(1, 1);
  ck_assert_ptr_null(evx_executor_new(loop, NULL));
  ck_assert_int_eq(evx_last_error(), EVX_ENOMEM);
  ck_assert_ptr_null(evx_future_new(loop));
  ck_assert_int_eq(evx_last_error(), EVX_ENOMEM);
  ck_assert_ptr_null(evx_loop_new(NULL));
  ck_assert_int_eq(evx_last_error(), EVX_ENOMEM);
  evx_test_alloc_fail_at(0, 0);

  /* Thread-local: another thread's failure is not ours. */
  pthread_t th;
  int theirs = 0;
  ck_assert_int_eq(pthread_create(&th, NULL, fail_elsewhere, &theirs), 0);
  pthread_join(th, NULL);
  ck_assert_int_eq(theirs, EVX_EINVAL);
  ck_assert_int_eq(evx_last_error(), EVX_ENOMEM);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_http_sizes) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_http_opts o = {.max_held = 3};
  evx_http *h = evx_http_new_sized(loop, &o, sizeof o);
  ck_assert_ptr_nonnull(h);
  evx_http_free(h);
  struct {
    evx_http_opts base;
    int future_field;
  } n = {.base = {.max_held = 3}, .future_field = 1};
  ck_assert_ptr_null(evx_http_new_sized(loop, &n.base, sizeof n));
  ck_assert_int_eq(evx_last_error(), EVX_EINVAL);
  evx_http *(*plain)(evx_loop *, const evx_http_opts *) = evx_http_new;
  h = plain(loop, NULL);
  ck_assert_ptr_nonnull(h);
  evx_http_free(h);
  evx_test_free_loop(loop);
}
END_TEST

static Suite *abi_suite(void) {
  Suite *s = suite_create("abi");
  TCase *tc = evx_test_tcase(s, "abi", 20);
  tcase_add_test(tc, test_executor_sizes);
  tcase_add_test(tc, test_constructors_say_why);
  tcase_add_test(tc, test_http_sizes);
  return s;
}

int main(void) { return evx_test_main(abi_suite()); }
