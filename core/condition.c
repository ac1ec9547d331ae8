/*
 * evx_condition: long-poll waits as futures. Loop thread only.
 *
 * DESIGN: each waiter is a node on the condition's FIFO holding one
 * reference to its future, plus an optional timeout timer. A waiter leaves
 * the list exactly once - by notify (resolve), timeout (EVX_ETIMEDOUT),
 * cancel of its future (hook), or free (EVX_ECLOSED) - and whichever way it
 * leaves first clears the others (timer cancelled, hook cleared), so a
 * cancelled waiter costs nothing afterwards.
 */
#include <evexec/condition.h>

#include "future-internal.h"
#include "loop-internal.h"

#include <stdio.h>

struct evx_condition {
  evx_loop *loop;
  evx__list waiters;
  size_t n;
};

typedef struct evx__waiter {
  evx__list link;
  evx_condition *c;
  evx_future *f;
  evx_timer *timer;
} evx__waiter;

/* Take the waiter off the condition and drop everything that points at it. */
static void evx__waiter_remove(evx__waiter *w) {
  evx__list_remove(&w->link);
  w->c->n--;
  if (w->timer) evx_timer_cancel(w->timer);
  evx__future_set_cancel_hook(w->f, NULL, NULL);
}

static void evx__waiter_end(evx__waiter *w, int status) {
  evx__waiter_remove(w);
  if (status == EVX_OK) (void)evx_future_resolve(w->f, NULL, NULL);
  else (void)evx_future_fail(w->f, status);
  evx_future_release(w->f);
  evx_free(w);
}

static void evx__waiter_timeout(void *arg) {
  evx__waiter *w = arg;
  w->timer = NULL; /* fired: it frees itself */
  evx__waiter_end(w, EVX_ETIMEDOUT);
}

static void evx__waiter_cancel(evx_future *f, void *ctx) {
  (void)f;
  evx__waiter *w = ctx;
  evx__waiter_remove(w);
  evx_future_release(w->f);
  evx_free(w);
}

evx_condition *evx_condition_new(evx_loop *loop) {
  if (!loop || !evx__loop_thread_ok(loop)) return evx__ctor_fail(EVX_EINVAL);
  evx_condition *c = evx_calloc(1, sizeof *c);
  if (!c) return evx__ctor_fail(EVX_ENOMEM);
  c->loop = loop;
  evx__list_init(&c->waiters);
  return c;
}

evx_future *evx_condition_wait(evx_condition *c, uint64_t timeout_ms) {
  if (!c) return NULL;
  evx_future *f = evx_future_new(c->loop);
  if (!f) return NULL;
  evx__waiter *w = evx_calloc(1, sizeof *w);
  if (!w) goto fail;
  w->c = c;
  w->f = f;
  if (timeout_ms) {
    w->timer = evx_call_later(c->loop, timeout_ms, evx__waiter_timeout, w);
    if (!w->timer) goto fail;
  }
  evx_future_ref(f);
  evx__list_insert_tail(&c->waiters, &w->link);
  c->n++;
  evx__future_set_cancel_hook(f, evx__waiter_cancel, w);
  return f;

fail:
  evx_free(w);
  evx_future_release(f);
  return NULL;
}

int evx_condition_notify(evx_condition *c, size_t n) {
  if (!c || !evx__loop_thread_ok(c->loop)) return EVX_EINVAL;
  int woken = 0;
  while (n-- > 0 && !evx__list_empty(&c->waiters) && woken < INT32_MAX) {
    evx__waiter_end(EVX__CONTAINER_OF(c->waiters.next, evx__waiter, link), EVX_OK);
    woken++;
  }
  return woken;
}

int evx_condition_notify_all(evx_condition *c) { return evx_condition_notify(c, SIZE_MAX); }

size_t evx_condition_waiters(const evx_condition *c) { return c ? c->n : 0; }

void evx_condition_free(evx_condition *c) {
  if (!c) return;
  if (!evx__loop_thread_ok(c->loop)) {
    /* Off the loop thread it would race the loop over the waiters' futures. */
    fprintf(stderr, "evexec: evx_condition_free called off the loop thread; ignored\n");
    return;
  }
  while (!evx__list_empty(&c->waiters))
    evx__waiter_end(EVX__CONTAINER_OF(c->waiters.next, evx__waiter, link), EVX_ECLOSED);
  evx_free(c);
}
