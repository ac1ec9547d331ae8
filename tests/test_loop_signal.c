/* evx_loop_on_signal: the callback runs on the loop thread for each signal,
 * a second registration replaces it, NULL removes it, and bad signals are
 * refused. */
#include "evx_test.h"

#include <signal.h>
#include <unistd.h>

static int hits_a, hits_b;
static pthread_t loop_thread, cb_thread;

static int last_sig;
static void on_a(int sig, void *arg) {
  hits_a++;
  last_sig = sig;
  cb_thread = pthread_self();
  evx_loop_stop(arg);
}
static void on_b(int sig, void *arg) {
  (void)sig;
  hits_b++;
  evx_loop_stop(arg);
}
static void raise_usr1(void *arg) {
  (void)arg;
  kill(getpid(), SIGUSR1);
}

START_TEST(test_signal) {
  hits_a = hits_b = 0;
  loop_thread = pthread_self();
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_int_eq(evx_loop_on_signal(NULL, SIGUSR1, on_a, loop), EVX_EINVAL);
  ck_assert_int_eq(evx_loop_on_signal(loop, SIGKILL, on_a, loop), EVX_EINVAL);
  ck_assert_int_eq(evx_loop_on_signal(loop, 0, on_a, loop), EVX_EINVAL);
  ck_assert_int_eq(evx_loop_on_signal(loop, 100000, on_a, loop), EVX_EINVAL);
  ck_assert_int_eq(evx_loop_on_signal(loop, SIGUSR1, on_a, loop), EVX_OK);
  ck_assert_int_eq(evx_loop_on_signal(loop, SIGUSR2, on_b, loop), EVX_OK);

  ck_assert_ptr_nonnull(evx_call_later(loop, 1, raise_usr1, NULL));
  evx_test_run(loop, 2000);
  ck_assert_int_eq(hits_a, 1);
  ck_assert_int_eq(last_sig, SIGUSR1);
  ck_assert(pthread_equal(cb_thread, loop_thread));

  /* a second signal, a second call */
  ck_assert_ptr_nonnull(evx_call_later(loop, 1, raise_usr1, NULL));
  evx_test_run(loop, 2000);
  ck_assert_int_eq(hits_a, 2);

  /* replaced: SIGUSR1 now calls on_b */
  ck_assert_int_eq(evx_loop_on_signal(loop, SIGUSR1, on_b, loop), EVX_OK);
  ck_assert_ptr_nonnull(evx_call_later(loop, 1, raise_usr1, NULL));
  evx_test_run(loop, 2000);
  ck_assert_int_eq(hits_a, 2);
  ck_assert_int_eq(hits_b, 1);

  /* removed (and removing twice is fine); SIGUSR2 stays registered until the loop is freed */
  ck_assert_int_eq(evx_loop_on_signal(loop, SIGUSR1, NULL, NULL), EVX_OK);
  ck_assert_int_eq(evx_loop_on_signal(loop, SIGUSR1, NULL, NULL), EVX_OK);
  evx_loop_free(loop);
}
END_TEST

static Suite *signal_suite(void) {
  Suite *s = suite_create("loop_signal");
  TCase *tc = evx_test_tcase(s, "signal", 10);
  tcase_add_test(tc, test_signal);
  return s;
}

int main(void) { return evx_test_main(signal_suite()); }
