/*
 * evx_event, evx_semaphore, evx_queue: Tornado's locks and queues as futures.
 *
 * DESIGN: loop thread only, no locks. Each pending wait is a waiter node on
 * its object's FIFO holding one reference to its future. A waiter leaves the
 * list exactly once - served (resolved), cancelled (its future's cancel hook:
 * the node is dropped and nothing is taken for it), or closed by _free
 * (EVX_ECLOSED) - and clears the other ways out as it leaves.
 * Invariants: an event with waiters is clear; a semaphore with waiters has
 * value 0; a queue with getters is empty, and one with putters is full.
 */
#include <evexec/sync.h>

#include <limits.h>
#include <string.h>

#include "future-internal.h"
#include "loop-internal.h"

typedef struct evx__sw {
  evx__list link;
  evx_future *f;
  void *item; /* a pending put's item */
} evx__sw;

static void evx__sw_cancelled(evx_future *f, void *ctx) {
  (void)f;
  evx__sw *w = ctx;
  evx__list_remove(&w->link);
  evx_future_release(w->f);
  evx_free(w);
}

/* A pending future with a waiter at the tail of `list`; NULL on ENOMEM. */
static evx_future *evx__sw_add(evx_loop *loop, evx__list *list, void *item) {
  evx_future *f = evx_future_new(loop);
  if (!f) return NULL;
  evx__sw *w = evx_malloc(sizeof *w);
  if (!w) {
    evx_future_release(f);
    return NULL;
  }
  w->f = evx_future_ref(f);
  w->item = item;
  evx__list_insert_tail(list, &w->link);
  evx__future_set_cancel_hook(f, evx__sw_cancelled, w);
  return f;
}

/* Take the oldest waiter off `list` and settle it (status < 0: fail). */
static void evx__sw_end(evx__list *list, int status, void *result) {
  evx__sw *w = EVX__CONTAINER_OF(evx__list_pop_head(list), evx__sw, link);
  evx__future_set_cancel_hook(w->f, NULL, NULL);
  if (status == EVX_OK) (void)evx_future_resolve(w->f, result, NULL);
  else (void)evx_future_fail(w->f, status);
  evx_future_release(w->f);
  evx_free(w);
}

static void evx__sw_close_all(evx__list *list) {
  while (!evx__list_empty(list)) evx__sw_end(list, EVX_ECLOSED, NULL);
}

/* An already resolved future. */
static evx_future *evx__resolved(evx_loop *loop, void *result) {
  evx_future *f = evx_future_new(loop);
  if (f) (void)evx_future_resolve(f, result, NULL);
  return f;
}

/* ---- event -------------------------------------------------------------- */

struct evx_event {
  evx_loop *loop;
  int set;
  evx__list waiters;
};

evx_event *evx_event_new(evx_loop *loop) {
  if (!loop || !evx__loop_thread_ok(loop)) return NULL;
  evx_event *e = evx_calloc(1, sizeof *e);
  if (!e) return NULL;
  e->loop = loop;
  evx__list_init(&e->waiters);
  return e;
}

int evx_event_set(evx_event *e) {
  if (!e || !evx__loop_thread_ok(e->loop)) return EVX_EINVAL;
  e->set = 1;
  while (!evx__list_empty(&e->waiters)) evx__sw_end(&e->waiters, EVX_OK, NULL);
  return EVX_OK;
}

int evx_event_clear(evx_event *e) {
  if (!e || !evx__loop_thread_ok(e->loop)) return EVX_EINVAL;
  e->set = 0;
  return EVX_OK;
}

int evx_event_is_set(const evx_event *e) { return e && e->set; }

evx_future *evx_event_wait(evx_event *e) {
  if (!e || !evx__loop_thread_ok(e->loop)) return NULL;
  return e->set ? evx__resolved(e->loop, NULL) : evx__sw_add(e->loop, &e->waiters, NULL);
}

void evx_event_free(evx_event *e) {
  if (!e) return;
  evx__sw_close_all(&e->waiters);
  evx_free(e);
}

/* ---- semaphore ---------------------------------------------------------- */

struct evx_semaphore {
  evx_loop *loop;
  unsigned value;
  evx__list waiters;
};

evx_semaphore *evx_semaphore_new(evx_loop *loop, unsigned value) {
  if (!loop || !evx__loop_thread_ok(loop)) return NULL;
  evx_semaphore *s = evx_calloc(1, sizeof *s);
  if (!s) return NULL;
  s->loop = loop;
  s->value = value;
  evx__list_init(&s->waiters);
  return s;
}

evx_future *evx_semaphore_acquire(evx_semaphore *s) {
  if (!s || !evx__loop_thread_ok(s->loop)) return NULL;
  if (s->value > 0) {
    evx_future *f = evx__resolved(s->loop, NULL);
    if (f) s->value--;
    return f;
  }
  return evx__sw_add(s->loop, &s->waiters, NULL);
}

int evx_semaphore_release(evx_semaphore *s) {
  if (!s || !evx__loop_thread_ok(s->loop)) return EVX_EINVAL;
  if (!evx__list_empty(&s->waiters)) {
    evx__sw_end(&s->waiters, EVX_OK, NULL); /* the slot passes straight on */
    return EVX_OK;
  }
  if (s->value == UINT_MAX) return EVX_EINVAL;
  s->value++;
  return EVX_OK;
}

unsigned evx_semaphore_value(const evx_semaphore *s) { return s ? s->value : 0; }

void evx_semaphore_free(evx_semaphore *s) {
  if (!s) return;
  evx__sw_close_all(&s->waiters);
  evx_free(s);
}

/* ---- queue -------------------------------------------------------------- */

struct evx_queue {
  evx_loop *loop;
  size_t maxsize; /* 0: unbounded */
  void **ring;    /* items[head .. head + count) modulo cap */
  size_t cap, head, count;
  evx__list getters, putters;
};

evx_queue *evx_queue_new(evx_loop *loop, size_t maxsize) {
  if (!loop || !evx__loop_thread_ok(loop)) return NULL;
  evx_queue *q = evx_calloc(1, sizeof *q);
  if (!q) return NULL;
  q->loop = loop;
  q->maxsize = maxsize;
  evx__list_init(&q->getters);
  evx__list_init(&q->putters);
  return q;
}

static int evx__queue_full(const evx_queue *q) { return q->maxsize && q->count >= q->maxsize; }

/* Append; the caller checked there is room. EVX_ENOMEM when the ring cannot grow. */
static int evx__queue_push(evx_queue *q, void *item) {
  if (q->count == q->cap) {
    size_t cap = q->cap ? q->cap * 2 : 8;
    if (q->maxsize && cap > q->maxsize) cap = q->maxsize;
    void **ring = evx_malloc(cap * sizeof *ring);
    if (!ring) return EVX_ENOMEM;
    for (size_t i = 0; i < q->count; i++) ring[i] = q->ring[(q->head + i) % q->cap];
    evx_free(q->ring);
    q->ring = ring;
    q->cap = cap;
    q->head = 0;
  }
  q->ring[(q->head + q->count) % q->cap] = item;
  q->count++;
  return EVX_OK;
}

static void *evx__queue_pop(evx_queue *q) {
  void *item = q->ring[q->head];
  q->head = (q->head + 1) % q->cap;
  q->count--;
  return item;
}

evx_future *evx_queue_put(evx_queue *q, void *item) {
  if (!q || !evx__loop_thread_ok(q->loop)) return NULL;
  if (!evx__list_empty(&q->getters)) { /* the queue is empty: hand it over */
    evx_future *f = evx__resolved(q->loop, NULL);
    if (f) evx__sw_end(&q->getters, EVX_OK, item);
    return f;
  }
  if (evx__queue_full(q)) return evx__sw_add(q->loop, &q->putters, item);
  evx_future *f = evx_future_new(q->loop);
  if (!f) return NULL;
  if (evx__queue_push(q, item) != EVX_OK) {
    evx_future_release(f);
    return NULL;
  }
  (void)evx_future_resolve(f, NULL, NULL);
  return f;
}

evx_future *evx_queue_get(evx_queue *q) {
  if (!q || !evx__loop_thread_ok(q->loop)) return NULL;
  if (q->count == 0) return evx__sw_add(q->loop, &q->getters, NULL);
  evx_future *f = evx_future_new(q->loop);
  if (!f) return NULL;
  void *item = evx__queue_pop(q);
  if (!evx__list_empty(&q->putters)) { /* room for the oldest pending put */
    evx__sw *w = EVX__CONTAINER_OF(q->putters.next, evx__sw, link);
    (void)evx__queue_push(q, w->item); /* a slot was just freed: no allocation */
    evx__sw_end(&q->putters, EVX_OK, NULL);
  }
  (void)evx_future_resolve(f, item, NULL);
  return f;
}

size_t evx_queue_size(const evx_queue *q) { return q ? q->count : 0; }

void evx_queue_free(evx_queue *q) {
  if (!q) return;
  evx__sw_close_all(&q->getters);
  evx__sw_close_all(&q->putters);
  evx_free(q->ring);
  evx_free(q);
}
