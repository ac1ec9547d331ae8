/* evx_add_callback: never inline, FIFO per producer, coalesced batches,
 * callbacks added around a stop. */
#include "evx_test.h"

/* ---- never inline --------------------------------------------------------- */

typedef struct inline_check {
  evx_loop *loop;
  int later_ran;
  int ran_inside_add; /* later_ran observed right after add returned */
  pthread_t loop_thread;
  int wrong_thread;
} inline_check;

static void later_cb(void *arg) {
  inline_check *c = arg;
  if (!pthread_equal(pthread_self(), c->loop_thread)) c->wrong_thread++;
  c->later_ran++;
  evx_loop_stop(c->loop);
}

static void adder_cb(void *arg) {
  inline_check *c = arg;
  ck_assert_int_eq(evx_add_callback(c->loop, later_cb, c), EVX_OK);
  c->ran_inside_add = c->later_ran;
}

START_TEST(test_never_inline) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  inline_check c = {.loop = loop, .loop_thread = pthread_self()};
  /* From the loop thread before the run... */
  ck_assert_int_eq(evx_add_callback(loop, adder_cb, &c), EVX_OK);
  ck_assert_int_eq(c.later_ran, 0);
  /* ...and from a callback while it runs. */
  evx_test_run(loop, 5000);
  ck_assert_int_eq(c.ran_inside_add, 0);
  ck_assert_int_eq(c.later_ran, 1);
  ck_assert_int_eq(c.wrong_thread, 0);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- FIFO from one producer ----------------------------------------------- */

#define FIFO_N 20000

typedef struct fifo {
  evx_loop *loop;
  long next;
  long bad;
  long total;
  long expect_total;
} fifo;

static fifo g_fifo;

static void fifo_cb(void *arg) {
  long seq = (long)(intptr_t)arg;
  if (seq != g_fifo.next) g_fifo.bad++;
  g_fifo.next = seq + 1;
  if (++g_fifo.total == g_fifo.expect_total) evx_loop_stop(g_fifo.loop);
}

START_TEST(test_fifo_loop_thread) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  g_fifo = (fifo){.loop = loop, .expect_total = FIFO_N};
  for (long i = 0; i < FIFO_N; i++)
    ck_assert_int_eq(evx_add_callback(loop, fifo_cb, (void *)(intptr_t)i), EVX_OK);
  evx_test_run(loop, 10000);
  ck_assert_int_eq(g_fifo.bad, 0);
  ck_assert_int_eq(g_fifo.total, FIFO_N);
  evx_test_free_loop(loop);
}
END_TEST

static void *fifo_producer(void *arg) {
  evx_loop *loop = arg;
  for (long i = 0; i < FIFO_N; i++) {
    int rc = evx_add_callback(loop, fifo_cb, (void *)(intptr_t)i);
    if (rc != EVX_OK) return (void *)(intptr_t)rc;
  }
  return NULL;
}

START_TEST(test_fifo_other_thread) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  g_fifo = (fifo){.loop = loop, .expect_total = FIFO_N};
  pthread_t t;
  ck_assert_int_eq(pthread_create(&t, NULL, fifo_producer, loop), 0);
  evx_test_run(loop, 10000); /* runs concurrently with the producer */
  void *rc;
  pthread_join(t, &rc);
  ck_assert_ptr_null(rc);
  ck_assert_int_eq(g_fifo.bad, 0);
  ck_assert_int_eq(g_fifo.total, FIFO_N);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- coalescing ----------------------------------------------------------- */

#define BURST 5000
static int g_burst_ran;
static void burst_cb(void *arg) {
  (void)arg;
  g_burst_ran++;
}

/* A burst queued before the run is drained by the run's first iteration. */
START_TEST(test_burst_one_iteration) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  g_burst_ran = 0;
  for (int i = 0; i < BURST; i++) ck_assert_int_eq(evx_add_callback(loop, burst_cb, NULL), EVX_OK);
  evx_test_run_once(loop);
  ck_assert_int_eq(g_burst_ran, BURST);
  evx_test_free_loop(loop);
}
END_TEST

static void *burst_producer(void *arg) {
  evx_loop *loop = arg;
  for (int i = 0; i < BURST; i++)
    if (evx_add_callback(loop, burst_cb, NULL) != EVX_OK) return (void *)1;
  return NULL;
}

/* The same burst from another thread, while the loop is not running. */
START_TEST(test_burst_from_thread_one_iteration) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  g_burst_ran = 0;
  /* One run first, so the loop has a "loop thread" and is idle afterwards. */
  evx_test_run_once(loop);
  pthread_t t;
  ck_assert_int_eq(pthread_create(&t, NULL, burst_producer, loop), 0);
  void *rc;
  pthread_join(t, &rc);
  ck_assert_ptr_null(rc);
  evx_test_run_once(loop);
  ck_assert_int_eq(g_burst_ran, BURST);
  evx_test_free_loop(loop);
}
END_TEST

/* A burst added by another thread while the loop thread is busy inside a
 * callback: nothing runs on the producer thread or before the busy callback
 * returns; afterwards all of it runs, in order, before the producer's marker. */
typedef struct busy {
  evx_loop *loop;
  sem_t start;
  sem_t produced;
  int seen_at_marker;
  int ran_while_busy;
} busy;

static busy g_busy;

static void busy_marker_cb(void *arg) {
  (void)arg;
  g_busy.seen_at_marker = g_burst_ran;
  evx_loop_stop(g_busy.loop);
}

static void *busy_producer(void *arg) {
  (void)arg;
  sem_wait(&g_busy.start);
  for (int i = 0; i < BURST; i++) evx_add_callback(g_busy.loop, burst_cb, NULL);
  evx_add_callback(g_busy.loop, busy_marker_cb, NULL);
  sem_post(&g_busy.produced);
  return NULL;
}

static void busy_cb(void *arg) {
  (void)arg;
  sem_post(&g_busy.start);
  sem_wait(&g_busy.produced); /* the loop thread is busy while the burst arrives */
  g_busy.ran_while_busy = g_burst_ran;
}

START_TEST(test_burst_while_busy) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  g_burst_ran = 0;
  g_busy.loop = loop;
  g_busy.seen_at_marker = -1;
  g_busy.ran_while_busy = -1;
  sem_init(&g_busy.start, 0, 0);
  sem_init(&g_busy.produced, 0, 0);
  pthread_t t;
  ck_assert_int_eq(pthread_create(&t, NULL, busy_producer, NULL), 0);
  ck_assert_int_eq(evx_add_callback(loop, busy_cb, NULL), EVX_OK);
  evx_test_run(loop, 10000);
  pthread_join(t, NULL);
  ck_assert_int_eq(g_busy.ran_while_busy, 0);
  /* FIFO from one producer: the marker runs after the whole burst. */
  ck_assert_int_eq(g_busy.seen_at_marker, BURST);
  ck_assert_int_eq(g_burst_ran, BURST);
  sem_destroy(&g_busy.start);
  sem_destroy(&g_busy.produced);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- around stop ---------------------------------------------------------- */

typedef struct around_stop {
  evx_loop *loop;
  int b_ran;
  int b_ran_in_run;
  int thread_ran;
} around_stop;

static void as_b_cb(void *arg) { ((around_stop *)arg)->b_ran++; }
static void as_thread_cb(void *arg) { ((around_stop *)arg)->thread_ran++; }

static void *as_producer(void *arg) {
  around_stop *a = arg;
  evx_add_callback(a->loop, as_thread_cb, a);
  return NULL;
}

static void as_a_cb(void *arg) {
  around_stop *a = arg;
  ck_assert_int_eq(evx_loop_stop(a->loop), EVX_OK);
  /* Added after the stop: must not run in this run... */
  ck_assert_int_eq(evx_add_callback(a->loop, as_b_cb, a), EVX_OK);
  /* ...nor one added by another thread after the stop. */
  pthread_t t;
  ck_assert_int_eq(pthread_create(&t, NULL, as_producer, a), 0);
  pthread_join(t, NULL);
}

START_TEST(test_added_during_stop_run_next) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  around_stop a = {.loop = loop};
  ck_assert_int_eq(evx_add_callback(loop, as_a_cb, &a), EVX_OK);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(a.b_ran, 0);
  ck_assert_int_eq(a.thread_ran, 0);
  /* They are kept, and run on the next run. */
  evx_test_run_once(loop);
  ck_assert_int_eq(a.b_ran, 1);
  ck_assert_int_eq(a.thread_ran, 1);
  evx_test_free_loop(loop);
}
END_TEST

/* Kept callbacks also run if the loop is freed instead of run again. */
START_TEST(test_added_during_stop_run_at_free) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  around_stop a = {.loop = loop};
  ck_assert_int_eq(evx_add_callback(loop, as_a_cb, &a), EVX_OK);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(a.b_ran, 0);
  evx_test_free_loop(loop);
  ck_assert_int_eq(a.b_ran, 1);
  ck_assert_int_eq(a.thread_ran, 1);
}
END_TEST

static Suite *callbacks_suite(void) {
  Suite *s = suite_create("callbacks");
  TCase *tc = evx_test_tcase(s, "inline", 10);
  tcase_add_test(tc, test_never_inline);
  tc = evx_test_tcase(s, "fifo", 20);
  tcase_add_test(tc, test_fifo_loop_thread);
  tcase_add_test(tc, test_fifo_other_thread);
  tc = evx_test_tcase(s, "coalescing", 20);
  tcase_add_test(tc, test_burst_one_iteration);
  tcase_add_test(tc, test_burst_from_thread_one_iteration);
  tcase_add_test(tc, test_burst_while_busy);
  tc = evx_test_tcase(s, "stop", 10);
  tcase_add_test(tc, test_added_during_stop_run_next);
  tcase_add_test(tc, test_added_during_stop_run_at_free);
  return s;
}

int main(void) { return evx_test_main(callbacks_suite()); }
