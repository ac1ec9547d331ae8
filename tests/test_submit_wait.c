/* evx_submit_wait: a producer thread waits for a free slot instead of
 * sleeping and retrying on EVX_EBUSY; it times out, it is woken by a worker
 * taking a job, shutdown ends the wait with EVX_ECLOSED, and the loop
 * thread is refused (it must never block). Workers are parked on a gate. */
#include "evx_test.h"

#include "executor-internal.h"

static evx_loop *loop;
static evx_executor *ex;
static evx_gate gate;
static atomic_int dones, done_ok;

static void noop(void *arg) { (void)arg; }
static void count_done(void *arg, int status) {
  (void)arg;
  atomic_fetch_add(&dones, 1);
  if (status == EVX_OK) atomic_fetch_add(&done_ok, 1);
}

static int nwaiters(void) {
  pthread_mutex_lock(&ex->lock);
  int n = 0;
  for (evx__list *l = ex->space_waiters.next; l != &ex->space_waiters; l = l->next) n++;
  pthread_mutex_unlock(&ex->lock);
  return n;
}
static int one_waiter(void *arg) {
  (void)arg;
  return nwaiters() == 1;
}
static int dones_are(void *arg) { return atomic_load(&dones) == *(int *)arg; }

typedef struct producer {
  uint64_t timeout_ms;
  int rc;
  uint64_t waited_ms;
} producer;

static void *produce(void *arg) {
  producer *p = arg;
  uint64_t t0 = evx_now_ns();
  p->rc = evx_submit_wait(ex, noop, count_done, NULL, p->timeout_ms);
  p->waited_ms = (evx_now_ns() - t0) / 1000000;
  return NULL;
}

static void setup_full(void) {
  atomic_store(&dones, 0);
  atomic_store(&done_ok, 0);
  loop = evx_loop_new(NULL);
  ex = evx_executor_new(loop, &(evx_executor_opts){.threads = 1, .max_queue = 1, .name = "w"});
  ck_assert_ptr_nonnull(ex);
  evx_gate_init(&gate);
  ck_assert_int_eq(evx_submit(ex, evx_gate_park, count_done, &gate), EVX_OK);
  evx_gate_wait_entered(&gate, 1); /* the only worker is parked */
  ck_assert_int_eq(evx_submit(ex, noop, count_done, NULL), EVX_OK); /* the only slot */
  ck_assert_int_eq(evx_submit(ex, noop, count_done, NULL), EVX_EBUSY);
}

static void stop_cb(void *arg) { evx_loop_stop(arg); }
static void try_on_loop(void *arg) {
  *(int *)arg = evx_submit_wait(ex, noop, count_done, NULL, 1000);
  evx_loop_stop(loop);
}

START_TEST(test_wait_for_slot) {
  setup_full();
  /* on the thread running the loop: refused at once */
  int on_loop = 1;
  evx_add_callback(loop, try_on_loop, &on_loop);
  evx_test_run(loop, 2000);
  ck_assert_int_eq(on_loop, EVX_EINVAL);
  ck_assert_int_eq(evx_submit_wait(NULL, noop, NULL, NULL, 10), EVX_EINVAL);

  /* still full at the deadline: EVX_ETIMEDOUT, done never called */
  producer p = {.timeout_ms = 50};
  pthread_t t;
  pthread_create(&t, NULL, produce, &p);
  pthread_join(t, NULL);
  ck_assert_int_eq(p.rc, EVX_ETIMEDOUT);
  ck_assert_uint_ge(p.waited_ms, 45);
  ck_assert_int_eq(nwaiters(), 0);
  /* timeout 0 tries once */
  p.timeout_ms = 0;
  pthread_create(&t, NULL, produce, &p);
  pthread_join(t, NULL);
  ck_assert_int_eq(p.rc, EVX_EBUSY);

  /* a waiting producer gets the slot the worker frees */
  p.timeout_ms = EVX_WAIT_FOREVER;
  pthread_create(&t, NULL, produce, &p);
  evx_test_run_until(loop, one_waiter, NULL, 5000); /* it is waiting now */
  evx_gate_open(&gate, 1);
  pthread_join(t, NULL);
  ck_assert_int_eq(p.rc, EVX_OK);
  int want = 3; /* the parked job, the queued one, the waiter's */
  evx_test_run_until(loop, dones_are, &want, 5000);
  ck_assert_int_eq(atomic_load(&done_ok), 3);
  evx_executor_stats st;
  evx_executor_stats_get(ex, &st);
  ck_assert_uint_eq(st.submitted, 3);
  evx_executor_free(ex);
  evx_gate_destroy(&gate);
  evx_add_callback(loop, stop_cb, loop);
  evx_loop_run(loop);
  evx_loop_free(loop);
}
END_TEST

START_TEST(test_shutdown_ends_wait) {
  setup_full();
  producer p = {.timeout_ms = 10000};
  pthread_t t;
  pthread_create(&t, NULL, produce, &p);
  evx_test_run_until(loop, one_waiter, NULL, 5000);
  ck_assert_int_eq(evx_executor_shutdown(ex, EVX_SHUTDOWN_CANCEL), EVX_OK);
  pthread_join(t, NULL);
  ck_assert_int_eq(p.rc, EVX_ECLOSED);
  ck_assert_uint_lt(p.waited_ms, 5000);
  evx_gate_open(&gate, 1);
  evx_executor_free(ex); /* the parked job completes, the queued one was cancelled */
  ck_assert_int_eq(atomic_load(&dones), 2);
  ck_assert_int_eq(atomic_load(&done_ok), 1);
  evx_gate_destroy(&gate);
  evx_loop_free(loop);
}
END_TEST

static Suite *wait_suite(void) {
  Suite *s = suite_create("submit_wait");
  TCase *tc = evx_test_tcase(s, "wait", 20);
  tcase_add_test(tc, test_wait_for_slot);
  tcase_add_test(tc, test_shutdown_ends_wait);
  return s;
}

int main(void) { return evx_test_main(wait_suite()); }
