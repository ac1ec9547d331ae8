/*
 * evx_future: loop-thread futures, all, with_timeout (run_on_executor is
 * executor/run.c).
 *
 * DESIGN
 * - Loop thread only, so no locks. Reference counted: every party that may
 *   touch a future later (the caller, a queued job, a pending callback
 *   batch, a combinator) holds a reference.
 * - Settling (resolve/fail/cancel) happens once: status leaves EVX_PENDING
 *   exactly once, and a later settle attempt answers EVX_EINVAL.
 * - Callbacks never run inside the call that registers them or settles the
 *   future: settling queues the future's embedded `defer` node on the loop's
 *   deferred list (holding a reference), and that node runs every callback
 *   registered so far, in order. Callbacks registered after it ran queue it
 *   again. So each callback runs exactly once.
 * - A result that arrives for a future that is already done (cancelled) is
 *   freed by whoever brought it; nobody else sees it.
 * - Memory: a freed future goes to its loop's free list (evx__fcache, at most
 *   EVX__FCACHE_MAX of them) and the next evx_future_new on that loop takes
 *   it back, so a steady stream of futures (a coroutine handoff: one per
 *   queue get and per wait) does not call the allocator. The list is a
 *   separate object held by the loop and by every live future made from it:
 *   evx_loop_free closes it (frees the cached futures), and a future released
 *   after that is freed at once, the last one out freeing the list. Cached
 *   futures are poisoned for ASan and marked inaccessible for valgrind, so a
 *   use after the last release is still reported.
 */
#include "future-internal.h"

#include <string.h>

#include "sanitize-internal.h"
#ifdef EVX__ASAN
#include <sanitizer/asan_interface.h>
#endif
#ifdef EVX__VALGRIND
#include <valgrind/memcheck.h>
#endif

#define EVX__FCACHE_MAX 64

static void evx__future_run_cbs(void *arg);

/* The part of a cached future that is off limits until it is reused. */
#define EVX__FCACHE_POISON_AT sizeof(evx_future *)

static void evx__fcache_mark_free(evx_future *f) {
  (void)f;
#ifdef EVX__ASAN
  ASAN_POISON_MEMORY_REGION((char *)f + EVX__FCACHE_POISON_AT, sizeof *f - EVX__FCACHE_POISON_AT);
#endif
#ifdef EVX__VALGRIND
  VALGRIND_MAKE_MEM_NOACCESS((char *)f + EVX__FCACHE_POISON_AT, sizeof *f - EVX__FCACHE_POISON_AT);
#endif
}

static void evx__fcache_mark_used(evx_future *f) {
  (void)f;
#ifdef EVX__ASAN
  ASAN_UNPOISON_MEMORY_REGION(f, sizeof *f);
#endif
#ifdef EVX__VALGRIND
  VALGRIND_MAKE_MEM_UNDEFINED(f, sizeof *f);
#endif
}

void evx__fcache_close(evx_loop *loop) {
  evx__loop_hot *h = evx__loop_hot_of(loop);
  evx__fcache *c = h->fcache;
  if (!c) return;
  h->fcache = NULL;
  c->closed = 1;
  while (c->top) {
    evx_future *f = c->top;
    c->top = f->next_free;
    evx__fcache_mark_used(f);
    evx_free(f);
  }
  c->n = 0;
  if (--c->refs == 0) evx_free(c);
}

evx_future *evx_future_new(evx_loop *loop) {
  if (!loop || !evx__loop_thread_ok(loop)) return evx__ctor_fail(EVX_EINVAL);
  evx__loop_hot *h = evx__loop_hot_of(loop);
  evx__fcache *c = h->fcache;
  if (!c) {
    if (!(c = evx_calloc(1, sizeof *c))) return evx__ctor_fail(EVX_ENOMEM);
    c->refs = 1; /* the loop's, dropped by evx__fcache_close */
    h->fcache = c;
  }
  evx_future *f = c->top;
  if (f) {
    c->top = f->next_free;
    c->n--;
    evx__fcache_mark_used(f);
  } else if (!(f = evx_malloc(sizeof *f))) {
    /* malloc, not calloc: glibc's calloc bypasses its per-thread cache. */
    return evx__ctor_fail(EVX_ENOMEM);
  }
  /* Field by field: inline_cbs needs no zeroing, and a whole-struct zero
   * is a `rep stos` that costs more than the rest of the call. */
  f->next_free = NULL;
  f->cache = c;
  c->refs++;
  f->loop = loop;
  f->refs = 1;
  f->status = EVX_PENDING;
  f->result = NULL;
  f->result_free = NULL;
  f->source = NULL;
  f->cbs = f->inline_cbs;
  f->ncbs = f->next_cb = 0;
  f->cap = sizeof f->inline_cbs / sizeof f->inline_cbs[0];
  f->defer = (evx__cbnode){.fn = evx__future_run_cbs, .arg = f};
  f->defer_queued = 0;
  f->cancel_hook = NULL;
  f->cancel_ctx = NULL;
  return f;
}

evx_future *evx_future_ref(evx_future *f) {
  if (f) f->refs++;
  return f;
}

void evx_future_release(evx_future *f) {
  if (f) evx__future_unref(f);
}

void evx__future_destroy(evx_future *f) {
  if (f->result && f->result_free) f->result_free(f->result);
  if (f->source) evx_future_release(f->source);
  if (f->cbs != f->inline_cbs) evx_free(f->cbs);
  evx__fcache *c = f->cache;
  if (!c->closed && c->n < EVX__FCACHE_MAX) {
    c->refs--; /* never the last: the loop holds one while it is open */
    f->next_free = c->top;
    c->top = f;
    c->n++;
    evx__fcache_mark_free(f);
    return;
  }
  evx_free(f);
  if (--c->refs == 0) evx_free(c);
}

static void evx__future_run_cbs(void *arg) {
  evx_future *f = arg;
  f->defer_queued = 0;
  while (f->next_cb < f->ncbs) {
    evx__fcb c = f->cbs[f->next_cb++];
    c.cb(f, c.arg);
  }
  f->ncbs = f->next_cb = 0;
  evx_future_release(f);
}

static void evx__future_schedule(evx_future *f) {
  if (f->status == EVX_PENDING || f->defer_queued || f->next_cb >= f->ncbs) return;
  f->defer_queued = 1;
  f->refs++;
  evx__loop_defer(f->loop, &f->defer);
}

static int evx__future_settle(evx_future *f, int status, void *result, evx_free_fn result_free) {
  if (!f || f->status != EVX_PENDING || !evx__loop_thread_ok(f->loop)) return EVX_EINVAL;
  f->status = status;
  f->result = result;
  f->result_free = result_free;
  evx__future_schedule(f);
  return EVX_OK;
}

int evx_future_resolve(evx_future *f, void *result, evx_free_fn result_free) {
  return evx__future_settle(f, EVX_OK, result, result_free);
}

int evx_future_fail(evx_future *f, int err) {
  if (err >= 0) return EVX_EINVAL;
  return evx__future_settle(f, err, NULL, NULL);
}

int evx_future_cancel(evx_future *f) {
  int rc = evx__future_settle(f, EVX_ECANCELED, NULL, NULL);
  if (rc != EVX_OK) return rc;
  evx__cancel_hook hook = f->cancel_hook;
  void *ctx = f->cancel_ctx;
  f->cancel_hook = NULL;
  f->cancel_ctx = NULL;
  if (hook) {
    f->refs++;
    hook(f, ctx);
    evx_future_release(f);
  }
  return EVX_OK;
}

int evx_future_is_done(const evx_future *f) { return f && f->status != EVX_PENDING; }

int evx_future_status(const evx_future *f) { return f ? f->status : EVX_EINVAL; }

void *evx_future_result(const evx_future *f) {
  if (!f || f->status != EVX_OK) return NULL;
  return f->source ? evx_future_result(f->source) : f->result;
}

void *evx_future_take(evx_future *f) {
  if (!f || f->status != EVX_OK || !evx__loop_thread_ok(f->loop)) return NULL;
  if (f->source) return evx_future_take(f->source);
  void *r = f->result;
  f->result = NULL;
  return r;
}

evx_loop *evx_future_loop(const evx_future *f) { return f ? f->loop : NULL; }

int evx_future_on_done(evx_future *f, evx_future_cb cb, void *arg) {
  if (!f || !cb || !evx__loop_thread_ok(f->loop)) return EVX_EINVAL;
  if (f->ncbs == f->cap) {
    size_t cap = f->cap * 2;
    evx__fcb *n = evx_malloc(cap * sizeof *n);
    if (!n) return EVX_ENOMEM;
    memcpy(n, f->cbs, f->ncbs * sizeof *n);
    if (f->cbs != f->inline_cbs) evx_free(f->cbs);
    f->cbs = n;
    f->cap = cap;
  }
  f->cbs[f->ncbs++] = (evx__fcb){cb, arg};
  evx__future_schedule(f);
  return EVX_OK;
}

/* Undo an evx_future_on_done whose callback has not run (a no-op once it ran). */
void evx__future_remove_cb(evx_future *f, evx_future_cb cb, void *arg) {
  for (size_t i = f->next_cb; i < f->ncbs; i++) {
    if (f->cbs[i].cb == cb && f->cbs[i].arg == arg) {
      memmove(&f->cbs[i], &f->cbs[i + 1], (f->ncbs - i - 1) * sizeof f->cbs[0]);
      f->ncbs--;
      return;
    }
  }
}

/* ---- all ---------------------------------------------------------------- */

typedef struct evx__all {
  evx_future *out;
  evx_future **ins;
  size_t n;
  size_t cbs_left; /* input callbacks still to run; the last one frees this */
  size_t ok_left;  /* inputs still to resolve before out resolves */
} evx__all;

static void evx__all_free(evx__all *a) {
  for (size_t i = 0; i < a->n; i++) evx_future_release(a->ins[i]);
  evx_future_release(a->out);
  evx_free(a->ins);
  evx_free(a);
}

static void evx__all_cb(evx_future *in, void *ctx) {
  evx__all *a = ctx;
  if (!evx_future_is_done(a->out)) {
    int st = evx_future_status(in);
    if (st != EVX_OK) (void)evx_future_fail(a->out, st);
    else if (--a->ok_left == 0) (void)evx_future_resolve(a->out, NULL, NULL);
  }
  if (--a->cbs_left == 0) evx__all_free(a);
}

evx_future *evx_future_all(evx_loop *loop, evx_future *const *futures, size_t n) {
  if (!loop || (n > 0 && !futures)) return NULL;
  for (size_t i = 0; i < n; i++)
    if (!futures[i] || futures[i]->loop != loop) return NULL;
  evx_future *out = evx_future_new(loop);
  if (!out) return NULL;
  if (n == 0) {
    (void)evx_future_resolve(out, NULL, NULL);
    return out;
  }
  evx__all *a = evx_calloc(1, sizeof *a);
  evx_future **ins = evx_calloc(n, sizeof *ins);
  if (!a || !ins) goto fail;
  size_t i;
  for (i = 0; i < n; i++)
    if (evx_future_on_done(futures[i], evx__all_cb, a) != EVX_OK) break;
  if (i < n) {
    while (i-- > 0) evx__future_remove_cb(futures[i], evx__all_cb, a);
    goto fail;
  }
  for (i = 0; i < n; i++) ins[i] = evx_future_ref(futures[i]);
  a->ins = ins;
  a->n = a->cbs_left = a->ok_left = n;
  a->out = evx_future_ref(out);
  return out;

fail:
  evx_free(ins);
  evx_free(a);
  evx_future_release(out);
  return NULL;
}

/* ---- with_timeout ------------------------------------------------------- */

typedef struct evx__wt {
  evx_future *out;
  evx_future *in;
  evx_timer *timer;
} evx__wt;

static void evx__wt_stop_timer(evx__wt *w) {
  if (w->timer) {
    evx_timer_cancel(w->timer);
    w->timer = NULL;
  }
}

static void evx__wt_in_done(evx_future *in, void *ctx) {
  evx__wt *w = ctx;
  evx__wt_stop_timer(w);
  if (w->out->cancel_ctx == w) evx__future_set_cancel_hook(w->out, NULL, NULL);
  if (!evx_future_is_done(w->out)) {
    int st = evx_future_status(in);
    if (st == EVX_OK) {
      w->out->source = evx_future_ref(in);
      (void)evx_future_resolve(w->out, NULL, NULL);
    } else {
      (void)evx_future_fail(w->out, st);
    }
  }
  evx_future_release(w->out);
  evx_future_release(w->in);
  evx_free(w);
}

static void evx__wt_timeout(void *ctx) {
  evx__wt *w = ctx;
  w->timer = NULL;
  if (w->out->cancel_ctx == w) evx__future_set_cancel_hook(w->out, NULL, NULL);
  (void)evx_future_fail(w->out, EVX_ETIMEDOUT);
}

static void evx__wt_cancel(evx_future *out, void *ctx) {
  (void)out;
  evx__wt_stop_timer(ctx);
}

evx_future *evx_future_with_timeout(evx_future *f, uint64_t ms) {
  if (!f) return NULL;
  evx_future *out = evx_future_new(f->loop);
  if (!out) return NULL;
  evx__wt *w = evx_calloc(1, sizeof *w);
  if (!w) goto fail;
  w->out = out;
  w->in = f;
  if (!evx_future_is_done(f)) {
    w->timer = evx_call_later(f->loop, ms, evx__wt_timeout, w);
    if (!w->timer) goto fail;
  }
  if (evx_future_on_done(f, evx__wt_in_done, w) != EVX_OK) {
    evx__wt_stop_timer(w);
    goto fail;
  }
  evx_future_ref(out);
  evx_future_ref(f);
  evx__future_set_cancel_hook(out, evx__wt_cancel, w);
  return out;

fail:
  evx_free(w);
  evx_future_release(out);
  return NULL;
}
