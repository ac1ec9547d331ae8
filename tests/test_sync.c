/* evx_event, evx_semaphore, evx_queue: waits as futures (callbacks and
 * coroutines), FIFO service, cancelled waiters leave at once, free fails
 * pending waiters with EVX_ECLOSED. */
#include "evx_test.h"

static evx_loop *new_loop(void) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  return loop;
}

static int g_done;
static int g_order[64];
static void order_cb(evx_future *f, void *arg) {
  (void)f;
  g_order[g_done++] = (int)(intptr_t)arg;
}

/* ---- event -------------------------------------------------------------- */

START_TEST(test_event) {
  evx_loop *loop = new_loop();
  g_done = 0;
  evx_event *e = evx_event_new(loop);
  ck_assert_int_eq(evx_event_is_set(e), 0);
  evx_future *w1 = evx_event_wait(e), *w2 = evx_event_wait(e), *gone = evx_event_wait(e);
  ck_assert_int_eq(evx_future_status(w1), EVX_PENDING);
  ck_assert_int_eq(evx_future_on_done(w1, order_cb, (void *)1), EVX_OK);
  ck_assert_int_eq(evx_future_on_done(w2, order_cb, (void *)2), EVX_OK);
  ck_assert_int_eq(evx_future_cancel(gone), EVX_OK); /* leaves at once */
  ck_assert_int_eq(evx_event_set(e), EVX_OK);
  ck_assert_int_eq(evx_future_status(w1), EVX_OK);
  ck_assert_int_eq(evx_future_status(gone), EVX_ECANCELED);
  evx_test_run_until_count(loop, &g_done, 2, 5000);
  ck_assert_int_eq(g_order[0], 1);
  ck_assert_int_eq(g_order[1], 2);
  evx_future *now = evx_event_wait(e); /* set: resolved at once */
  ck_assert_int_eq(evx_future_status(now), EVX_OK);
  ck_assert_int_eq(evx_event_clear(e), EVX_OK);
  evx_future *later = evx_event_wait(e);
  ck_assert_int_eq(evx_future_status(later), EVX_PENDING);
  evx_event_free(e);
  ck_assert_int_eq(evx_future_status(later), EVX_ECLOSED);
  ck_assert_ptr_null(evx_event_wait(NULL));
  ck_assert_int_eq(evx_event_set(NULL), EVX_EINVAL);
  evx_future *all[] = {w1, w2, gone, now, later};
  for (int i = 0; i < 5; i++) evx_future_release(all[i]);
  evx_test_run_once(loop);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- semaphore ---------------------------------------------------------- */

START_TEST(test_semaphore) {
  evx_loop *loop = new_loop();
  evx_semaphore *s = evx_semaphore_new(loop, 2);
  evx_future *a = evx_semaphore_acquire(s), *b = evx_semaphore_acquire(s);
  ck_assert_int_eq(evx_future_status(a), EVX_OK);
  ck_assert_int_eq(evx_future_status(b), EVX_OK);
  ck_assert_uint_eq(evx_semaphore_value(s), 0);
  evx_future *c = evx_semaphore_acquire(s), *d = evx_semaphore_acquire(s),
             *e = evx_semaphore_acquire(s);
  ck_assert_int_eq(evx_future_status(c), EVX_PENDING);
  ck_assert_int_eq(evx_future_cancel(d), EVX_OK); /* d leaves: it gets nothing */
  ck_assert_int_eq(evx_semaphore_release(s), EVX_OK);
  ck_assert_int_eq(evx_future_status(c), EVX_OK); /* oldest first */
  ck_assert_int_eq(evx_future_status(e), EVX_PENDING);
  ck_assert_int_eq(evx_semaphore_release(s), EVX_OK);
  ck_assert_int_eq(evx_future_status(e), EVX_OK);
  ck_assert_uint_eq(evx_semaphore_value(s), 0);
  for (int i = 0; i < 3; i++) ck_assert_int_eq(evx_semaphore_release(s), EVX_OK);
  ck_assert_uint_eq(evx_semaphore_value(s), 3);
  evx_semaphore_free(s);
  s = evx_semaphore_new(loop, 0);
  evx_future *closed = evx_semaphore_acquire(s);
  evx_semaphore_free(s);
  ck_assert_int_eq(evx_future_status(closed), EVX_ECLOSED);
  ck_assert_int_eq(evx_semaphore_release(NULL), EVX_EINVAL);
  evx_future *all[] = {a, b, c, d, e, closed};
  for (int i = 0; i < 6; i++) evx_future_release(all[i]);
  evx_test_run_once(loop);
  evx_test_free_loop(loop);
}
END_TEST

/* A lock (value 1) serialises coroutines across awaits. */
typedef struct locked {
  evx_semaphore *lock;
  int inside, max_inside, done;
} locked;

static void *locked_fn(void *arg) {
  locked *l = arg;
  evx_future *f = evx_semaphore_acquire(l->lock);
  ck_assert_int_eq(evx_await(f), EVX_OK);
  evx_future_release(f);
  if (++l->inside > l->max_inside) l->max_inside = l->inside;
  ck_assert_int_eq(evx_sleep(1), EVX_OK);
  l->inside--;
  evx_semaphore_release(l->lock);
  l->done++;
  return NULL;
}

START_TEST(test_semaphore_as_lock) {
  evx_loop *loop = new_loop();
  locked l = {.lock = evx_semaphore_new(loop, 1)};
  for (int i = 0; i < 5; i++) evx_future_release(evx_go(loop, locked_fn, &l, NULL));
  evx_test_run_until_count(loop, &l.done, 5, 5000);
  ck_assert_int_eq(l.max_inside, 1);
  evx_test_run_once(loop);
  evx_semaphore_free(l.lock);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- queue -------------------------------------------------------------- */

static int X[8];

START_TEST(test_queue_bounded) {
  evx_loop *loop = new_loop();
  evx_queue *q = evx_queue_new(loop, 1);
  evx_future *p1 = evx_queue_put(q, &X[1]);
  ck_assert_int_eq(evx_future_status(p1), EVX_OK); /* room */
  evx_future *p2 = evx_queue_put(q, &X[2]), *p3 = evx_queue_put(q, &X[3]);
  evx_future *p4 = evx_queue_put(q, &X[4]);
  ck_assert_int_eq(evx_future_status(p2), EVX_PENDING); /* full */
  ck_assert_int_eq(evx_future_cancel(p3), EVX_OK);     /* X[3] is never delivered */
  ck_assert_uint_eq(evx_queue_size(q), 1);
  evx_future *g1 = evx_queue_get(q);
  ck_assert_ptr_eq(evx_future_result(g1), &X[1]);
  ck_assert_int_eq(evx_future_status(p2), EVX_OK); /* the get made room */
  ck_assert_int_eq(evx_future_status(p4), EVX_PENDING);
  evx_future *g2 = evx_queue_get(q), *g4 = evx_queue_get(q);
  ck_assert_ptr_eq(evx_future_take(g2), &X[2]);
  ck_assert_ptr_eq(evx_future_result(g4), &X[4]);
  ck_assert_int_eq(evx_future_status(p4), EVX_OK);
  ck_assert_uint_eq(evx_queue_size(q), 0);
  /* Empty: gets wait; a cancelled getter leaves, the put goes to the next. */
  evx_future *w1 = evx_queue_get(q), *w2 = evx_queue_get(q);
  ck_assert_int_eq(evx_future_status(w1), EVX_PENDING);
  ck_assert_int_eq(evx_future_cancel(w1), EVX_OK);
  evx_future *p5 = evx_queue_put(q, &X[5]);
  ck_assert_int_eq(evx_future_status(p5), EVX_OK);
  ck_assert_ptr_eq(evx_future_result(w2), &X[5]);
  ck_assert_uint_eq(evx_queue_size(q), 0);
  /* Free fails pending waiters. */
  evx_future *p6 = evx_queue_put(q, &X[6]), *p7 = evx_queue_put(q, &X[7]);
  ck_assert_int_eq(evx_future_status(p6), EVX_OK);
  evx_queue_free(q);
  ck_assert_int_eq(evx_future_status(p7), EVX_ECLOSED);
  q = evx_queue_new(loop, 0);
  evx_future *closed = evx_queue_get(q);
  evx_queue_free(q);
  ck_assert_int_eq(evx_future_status(closed), EVX_ECLOSED);
  ck_assert_ptr_null(evx_queue_get(NULL));
  ck_assert_ptr_null(evx_queue_put(NULL, NULL));
  evx_future *all[] = {p1, p2, p3, p4, g1, g2, g4, w1, w2, p5, p6, p7, closed};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) evx_future_release(all[i]);
  evx_test_run_once(loop);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_queue_unbounded_fifo) {
  evx_loop *loop = new_loop();
  evx_queue *q = evx_queue_new(loop, 0);
  for (intptr_t i = 0; i < 1000; i++) {
    evx_future *p = evx_queue_put(q, (void *)(i + 1));
    ck_assert_int_eq(evx_future_status(p), EVX_OK);
    evx_future_release(p);
    if (i % 3 == 0) { /* interleave gets so the ring wraps */
      evx_future *g = evx_queue_get(q);
      ck_assert_int_eq(evx_future_status(g), EVX_OK);
      evx_future_release(g);
    }
  }
  ck_assert_uint_eq(evx_queue_size(q), 1000 - 334);
  intptr_t expect = 1;
  while (evx_queue_size(q)) {
    evx_future *g = evx_queue_get(q);
    intptr_t v = (intptr_t)evx_future_result(g);
    ck_assert_int_gt(v, expect);
    expect = v;
    evx_future_release(g);
  }
  ck_assert_int_eq(expect, 1000);
  evx_queue_free(q);
  evx_test_free_loop(loop);
}
END_TEST

/* Producer and consumer coroutines through a queue of size 1, in order. */
#define NITEMS 2000
typedef struct pc {
  evx_queue *q;
  int got, bad, done;
} pc;

static void *producer(void *arg) {
  pc *p = arg;
  for (intptr_t i = 1; i <= NITEMS; i++) {
    evx_future *f = evx_queue_put(p->q, (void *)i);
    if (evx_await(f) != EVX_OK) p->bad++;
    evx_future_release(f);
  }
  p->done++;
  return NULL;
}

static void *consumer(void *arg) {
  pc *p = arg;
  for (intptr_t i = 1; i <= NITEMS; i++) {
    evx_future *f = evx_queue_get(p->q);
    if (evx_await(f) != EVX_OK || (intptr_t)evx_future_result(f) != i) p->bad++;
    evx_future_release(f);
    p->got++;
  }
  p->done++;
  return NULL;
}

START_TEST(test_queue_coroutines) {
  evx_loop *loop = new_loop();
  pc p = {.q = evx_queue_new(loop, 1)};
  evx_future_release(evx_go(loop, consumer, &p, NULL));
  evx_future_release(evx_go(loop, producer, &p, NULL));
  evx_test_run_until_count(loop, &p.done, 2, 10000);
  ck_assert_int_eq(p.got, NITEMS);
  ck_assert_int_eq(p.bad, 0);
  evx_test_run_once(loop);
  evx_queue_free(p.q);
  evx_test_free_loop(loop);
}
END_TEST

/* An interrupted coroutine's queue wait leaves the queue at once. */
typedef struct qi {
  evx_queue *q;
  int st;
} qi;

static void *getter(void *arg) {
  qi *x = arg;
  evx_future *f = evx_queue_get(x->q);
  x->st = evx_await(f);
  evx_future_release(f);
  return NULL;
}

START_TEST(test_queue_interrupted_getter) {
  evx_loop *loop = new_loop();
  qi x = {.q = evx_queue_new(loop, 1), .st = 99};
  evx_future *co = evx_go(loop, getter, &x, NULL);
  evx_future_cancel(co);
  evx_test_run_once(loop);
  ck_assert_int_eq(x.st, EVX_ECANCELED);
  evx_future *p = evx_queue_put(x.q, &X[0]); /* nobody waits: it stays queued */
  ck_assert_uint_eq(evx_queue_size(x.q), 1);
  evx_future_release(p);
  evx_future_release(co);
  evx_queue_free(x.q);
  evx_test_run_once(loop);
  evx_test_free_loop(loop);
}
END_TEST

Suite *sync_suite(void);
Suite *sync_suite(void) {
  Suite *s = suite_create("sync");
  TCase *tc = evx_test_tcase(s, "sync", 30);
  tcase_add_test(tc, test_event);
  tcase_add_test(tc, test_semaphore);
  tcase_add_test(tc, test_semaphore_as_lock);
  tcase_add_test(tc, test_queue_bounded);
  tcase_add_test(tc, test_queue_unbounded_fifo);
  tcase_add_test(tc, test_queue_coroutines);
  tcase_add_test(tc, test_queue_interrupted_getter);
  return s;
}

int main(void) { return evx_test_main(sync_suite()); }
