/* PRIVATE to evexec: never installed, never included by users. */
#ifndef EVX_FUTURE_INTERNAL_H
#define EVX_FUTURE_INTERNAL_H

#include <evexec/future.h>

#include "loop-internal.h"

/* Called by evx_future_cancel after the future failed with EVX_ECANCELED,
 * so the producer feeding it can stop (dequeue a job, drop a waiter...).
 * The hook is cleared before it is called; a producer that settles the
 * future itself must clear it first (evx__future_set_cancel_hook(f, NULL, NULL)). */
typedef void (*evx__cancel_hook)(evx_future *f, void *ctx);

/* The future itself (future.c owns every field): visible here so that
 * core/'s hot paths (evx_await, the queue) read its state and count its
 * references inline. Loop thread only. */
typedef struct evx__fcb {
  evx_future_cb cb;
  void *arg;
} evx__fcb;

/* A loop's free list of futures. Loop thread only (like the futures). refs:
 * one for the loop until evx__fcache_close, plus one per live future made
 * while it was open; a cached future holds none. */
typedef struct evx__fcache {
  size_t refs;
  int closed;      /* the loop is gone: freed futures go straight to evx_free */
  evx_future *top; /* cached futures, linked through next_free */
  size_t n;
} evx__fcache;

struct evx_future {
  evx_future *next_free; /* first: in cache->top's list while cached (the rest is poisoned) */
  evx__fcache *cache;
  evx_loop *loop;
  unsigned refs;
  int status;
  void *result;
  evx_free_fn result_free;
  evx_future *source; /* with_timeout: the mirrored future that owns the result */
  evx__fcb *cbs;
  size_t ncbs, cap, next_cb; /* cbs[next_cb..ncbs) have not run yet */
  evx__fcb inline_cbs[2];
  evx__cbnode defer;
  int defer_queued;
  evx__cancel_hook cancel_hook;
  void *cancel_ctx;
};

static inline void evx__future_set_cancel_hook(evx_future *f, evx__cancel_hook fn, void *ctx) {
  f->cancel_hook = fn;
  f->cancel_ctx = ctx;
}

/* evx_future_is_done / evx_future_ref / evx_future_release for a non-NULL f. */
static inline int evx__future_done(const evx_future *f) { return f->status != EVX_PENDING; }
static inline evx_future *evx__future_ref(evx_future *f) {
  f->refs++;
  return f;
}
void evx__future_destroy(evx_future *f); /* the last reference went */
static inline void evx__future_unref(evx_future *f) {
  if (--f->refs == 0) evx__future_destroy(f);
}

/* Undo evx_future_on_done(f, cb, arg) if that callback has not started yet. */
void evx__future_remove_cb(evx_future *f, evx_future_cb cb, void *arg);

/* evx_loop_free, at its very end: free the loop's cached futures; a future
 * released later is freed at once (its memory never touches the loop). */
void evx__fcache_close(evx_loop *loop);

#endif
