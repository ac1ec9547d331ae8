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
 * Cost: a wait that is satisfied at once and resolves with NULL (a put with
 * room, an acquire with a free slot, a wait on a set event) returns another
 * reference to the object's one resolved future instead of a new one, and
 * waiter nodes are recycled per object, so a coroutine handoff through a
 * queue allocates only the futures that carry an item or really wait. The
 * shared future is reference counted, so it outlives the object as long as
 * a caller holds it.
 */
#include <evexec/sync.h>

#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "future-internal.h"
#include "loop-internal.h"

/* What every object shares: its loop, its resolved-with-NULL future
 * (created on first use) and its recycled waiter nodes. */
typedef struct evx__sw evx__sw;
typedef struct evx__sync {
  evx_loop *loop;
  evx_future *done;
  evx__sw *spare;
  size_t nspare;
} evx__sync;

#define EVX__SYNC_SPARE_MAX 16

struct evx__sw {
  evx__list link;
  evx__sync *home;
  evx_future *f;
  void *item; /* a pending put's item */
  evx__sw *next_spare;
};

static void evx__sw_recycle(evx__sw *w) {
  evx__sync *h = w->home;
  if (h->nspare < EVX__SYNC_SPARE_MAX) {
    w->next_spare = h->spare;
    h->spare = w;
    h->nspare++;
  } else {
    evx_free(w);
  }
}

static void evx__sw_cancelled(evx_future *f, void *ctx) {
  (void)f;
  evx__sw *w = ctx;
  evx__list_remove(&w->link);
  evx__future_unref(w->f);
  evx__sw_recycle(w);
}

/* A pending future with a waiter at the tail of `list`; NULL on ENOMEM. */
static evx_future *evx__sw_add(evx__sync *h, evx__list *list, void *item) {
  evx_future *f = evx_future_new(h->loop);
  if (!f) return NULL;
  evx__sw *w = h->spare;
  if (w) {
    h->spare = w->next_spare;
    h->nspare--;
  } else if (!(w = evx_malloc(sizeof *w))) {
    evx_future_release(f);
    return NULL;
  }
  w->home = h;
  w->f = evx__future_ref(f);
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
  evx__future_unref(w->f);
  evx__sw_recycle(w);
}

static void evx__sync_close(evx__list *list) {
  while (!evx__list_empty(list)) evx__sw_end(list, EVX_ECLOSED, NULL);
}

static void evx__sync_free(evx__sync *h) {
  while (h->spare) {
    evx__sw *w = h->spare;
    h->spare = w->next_spare;
    evx_free(w);
  }
  evx_future_release(h->done);
}

/* The object's resolved future (NULL result), one more reference. */
static evx_future *evx__resolved(evx__sync *h) {
  if (!h->done) {
    h->done = evx_future_new(h->loop);
    if (!h->done) return NULL;
    (void)evx_future_resolve(h->done, NULL, NULL);
  }
  return evx__future_ref(h->done);
}

/* ---- event -------------------------------------------------------------- */

struct evx_event {
  evx__sync h;
  int set;
  evx__list waiters;
};

evx_event *evx_event_new(evx_loop *loop) {
  if (!loop || !evx__loop_thread_ok(loop)) return evx__ctor_fail(EVX_EINVAL);
  evx_event *e = evx_calloc(1, sizeof *e);
  if (!e) return evx__ctor_fail(EVX_ENOMEM);
  e->h.loop = loop;
  evx__list_init(&e->waiters);
  return e;
}

int evx_event_set(evx_event *e) {
  if (!e || !evx__loop_thread_ok(e->h.loop)) return EVX_EINVAL;
  e->set = 1;
  while (!evx__list_empty(&e->waiters)) evx__sw_end(&e->waiters, EVX_OK, NULL);
  return EVX_OK;
}

int evx_event_clear(evx_event *e) {
  if (!e || !evx__loop_thread_ok(e->h.loop)) return EVX_EINVAL;
  e->set = 0;
  return EVX_OK;
}

int evx_event_is_set(const evx_event *e) { return e && e->set; }

evx_future *evx_event_wait(evx_event *e) {
  if (!e || !evx__loop_thread_ok(e->h.loop)) return NULL;
  return e->set ? evx__resolved(&e->h) : evx__sw_add(&e->h, &e->waiters, NULL);
}

/* The frees' thread check: off the loop thread a free would race the loop
 * over the waiters' futures, so it is refused (one line on stderr; the
 * object stays usable and owned by the caller). */
static int evx__sync_free_ok(evx_loop *loop, const char *what) {
  if (evx__loop_thread_ok(loop)) return 1;
  fprintf(stderr, "evexec: %s called off the loop thread; ignored\n", what);
  return 0;
}

void evx_event_free(evx_event *e) {
  if (!e) return;
  if (!evx__sync_free_ok(e->h.loop, "evx_event_free")) return;
  evx__sync_close(&e->waiters);
  evx__sync_free(&e->h);
  evx_free(e);
}

/* ---- semaphore ---------------------------------------------------------- */

struct evx_semaphore {
  evx__sync h;
  unsigned value;
  evx__list waiters;
};

evx_semaphore *evx_semaphore_new(evx_loop *loop, unsigned value) {
  if (!loop || !evx__loop_thread_ok(loop)) return evx__ctor_fail(EVX_EINVAL);
  evx_semaphore *s = evx_calloc(1, sizeof *s);
  if (!s) return evx__ctor_fail(EVX_ENOMEM);
  s->h.loop = loop;
  s->value = value;
  evx__list_init(&s->waiters);
  return s;
}

evx_future *evx_semaphore_acquire(evx_semaphore *s) {
  if (!s || !evx__loop_thread_ok(s->h.loop)) return NULL;
  if (s->value > 0) {
    evx_future *f = evx__resolved(&s->h);
    if (f) s->value--;
    return f;
  }
  return evx__sw_add(&s->h, &s->waiters, NULL);
}

int evx_semaphore_release(evx_semaphore *s) {
  if (!s || !evx__loop_thread_ok(s->h.loop)) return EVX_EINVAL;
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
  if (!evx__sync_free_ok(s->h.loop, "evx_semaphore_free")) return;
  evx__sync_close(&s->waiters);
  evx__sync_free(&s->h);
  evx_free(s);
}

/* ---- queue -------------------------------------------------------------- */

struct evx_queue {
  evx__sync h;
  size_t maxsize; /* 0: unbounded */
  void **ring;    /* items[head .. head + count) modulo cap */
  size_t cap, head, count;
  evx__list getters, putters;
};

evx_queue *evx_queue_new(evx_loop *loop, size_t maxsize) {
  if (!loop || !evx__loop_thread_ok(loop)) return evx__ctor_fail(EVX_EINVAL);
  evx_queue *q = evx_calloc(1, sizeof *q);
  if (!q) return evx__ctor_fail(EVX_ENOMEM);
  q->h.loop = loop;
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
    for (size_t i = 0, j = q->head; i < q->count; i++, j = j + 1 == q->cap ? 0 : j + 1)
      ring[i] = q->ring[j];
    evx_free(q->ring);
    q->ring = ring;
    q->cap = cap;
    q->head = 0;
  }
  size_t tail = q->head + q->count; /* < 2 * cap: one wrap at most, no division */
  q->ring[tail >= q->cap ? tail - q->cap : tail] = item;
  q->count++;
  return EVX_OK;
}

static void *evx__queue_pop(evx_queue *q) {
  void *item = q->ring[q->head];
  q->head = q->head + 1 == q->cap ? 0 : q->head + 1;
  q->count--;
  return item;
}

evx_future *evx_queue_put(evx_queue *q, void *item) {
  if (!q || !evx__loop_thread_ok(q->h.loop)) return NULL;
  if (!evx__list_empty(&q->getters)) { /* the queue is empty: hand it over */
    evx_future *f = evx__resolved(&q->h);
    if (f) evx__sw_end(&q->getters, EVX_OK, item);
    return f;
  }
  if (evx__queue_full(q)) return evx__sw_add(&q->h, &q->putters, item);
  evx_future *f = evx__resolved(&q->h);
  if (!f) return NULL;
  if (evx__queue_push(q, item) != EVX_OK) {
    evx_future_release(f);
    return NULL;
  }
  return f;
}

evx_future *evx_queue_get(evx_queue *q) {
  if (!q || !evx__loop_thread_ok(q->h.loop)) return NULL;
  if (q->count == 0) return evx__sw_add(&q->h, &q->getters, NULL);
  evx_future *f = evx_future_new(q->h.loop);
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
  if (!evx__sync_free_ok(q->h.loop, "evx_queue_free")) return;
  evx__sync_close(&q->getters);
  evx__sync_close(&q->putters);
  evx__sync_free(&q->h);
  evx_free(q->ring);
  evx_free(q);
}
