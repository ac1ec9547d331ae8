/*
 * Coroutines: evx_go, evx_await, evx_await_job, evx_sleep.
 *
 * DESIGN
 * - A coroutine is a struct plus an mmap'd stack with a PROT_NONE guard page
 *   below it. Loop thread only, so no locks. The thread-local `evx__cur` is
 *   the running coroutine (NULL: the thread's own stack, "main").
 * - States: RUNNING (on the CPU, or suspended inside a nested evx_go it
 *   called), SUSPENDED (parked in evx__coro_yield), DONE (fn returned; the
 *   stack is dead). resume() records where it came from in co->caller, so a
 *   coroutine always yields back to whoever resumed it last: evx_go's caller
 *   on the first run, the loop afterwards.
 * - Wakeups: a suspended coroutine is resumed either directly from a loop
 *   callback that ran in main context (a future's on_done, a timer, a job's
 *   done: the cheap path), or through its embedded deferred node (interrupts,
 *   which must not run coroutine code inside the caller's call). Invariant:
 *   while wake_queued is set, only that node resumes the coroutine, so a
 *   coroutine never finishes while its node is still queued.
 * - Interrupts are sticky: co->err is set once (ECANCELED by cancelling its
 *   future, EGONE by the HTTP layer, ECLOSED by evx_loop_free) and every
 *   await returns it at once from then on. The future being awaited is then
 *   cancelled (asyncio's rule), which dequeues jobs and removes waiters.
 * - Ownership: the coroutine holds one reference to its future and resolves
 *   it when fn returns; evx_go's caller gets another. A detached coroutine
 *   (evx__go_detached: HTTP handlers) has no future at all, which saves a
 *   future's allocation, resolve and free per request. The struct and stack of
 *   a finished coroutine go to its loop's pool (at most EVX__CORO_POOL_MAX of
 *   them), reused by the next evx_go with the same stack size; the pool is
 *   unmapped by evx_loop_free.
 * - Sanitizers: every switch is announced to ASan (start/finish_switch_fiber)
 *   and TSan (one fiber per coroutine); valgrind knows each stack
 *   (VALGRIND_STACK_REGISTER). A reused stack is unpoisoned for ASan first.
 * - Overflow: one process-wide SIGSEGV/SIGBUS handler on an alternate signal
 *   stack (one per thread that ran evx_go) recognises a fault inside the
 *   running coroutine's guard page, prints what happened and lets the signal
 *   kill the process; any other fault goes to the previous handler.
 */
#include "coro-internal.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "coro-switch.h"
#include "future-internal.h"
#include "loop-internal.h"

#include "sanitize-internal.h"

#ifdef EVX__ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef EVX__TSAN
#include <sanitizer/tsan_interface.h>
#endif
#ifdef EVX__VALGRIND
#include <valgrind/valgrind.h>
#endif

#define EVX__CORO_POOL_MAX 256
#define EVX__CORO_STACK_MAX ((size_t)256 * 1024 * 1024)

enum { EVX__CO_RUNNING, EVX__CO_SUSPENDED, EVX__CO_DONE };

struct evx__coro {
  evx__ctx ctx;     /* this coroutine's saved context while it does not run */
  evx__ctx *caller; /* where it yields to: set by every resume */
  evx_loop *loop;
  struct evx__coro_home *cl;
  evx_coro_fn fn;
  void *arg;
  evx_free_fn result_free;
  evx_future *f; /* the coroutine's reference to its own future; NULL: detached */
  int state;
  int err;         /* sticky interruption reason, 0 while none */
  int wake_queued; /* wake_node is on the loop's deferred list */
  evx__cbnode wake_node;
  evx__list link;         /* in cl->live until fn returned */
  struct evx__coro *next; /* in cl->pool */
  /* The stack: map = guard page + stack, stack_lo = map + page. */
  void *map;
  size_t map_size;
  char *stack_lo;
  size_t stack_size;
#ifdef EVX__VALGRIND
  unsigned vg_id;
#endif
#ifdef EVX__ASAN
  void *asan_fake;           /* ASan's fake stack of this coroutine while switched out */
  const void *caller_bottom; /* the stack it yields to */
  size_t caller_size;
#endif
#ifdef EVX__TSAN
  void *tsan_fiber;
  void *tsan_caller;
#endif
};

/* Per-loop state: a loop member (the ownership rule, evx-private.h) moved to
 * the newest place at every evx_go, so evx_loop_free closes coroutines
 * before the executors and servers they use. It outlives its on_free while
 * coroutines still wait for running jobs: the last one to end frees it. */
typedef struct evx__coro_home {
  evx__loop_member member;
  evx__list live;   /* coroutines whose fn has not returned */
  evx__coro *pool;  /* finished ones kept with their stacks */
  size_t npool;
  int closing;      /* evx_loop_free started: interrupt, refuse evx_go */
  int in_close;     /* evx__coro_loop_close is iterating: it frees cl itself */
} evx__coro_home;

/* EVX__TLS_FAST (common-internal.h): read on every await. */
static _Thread_local evx__coro *evx__cur EVX__TLS_FAST;
static _Thread_local evx__ctx evx__main_ctx EVX__TLS_FAST;
#ifdef EVX__ASAN
static _Thread_local void *evx__main_asan_fake;
#endif

static size_t evx__page_size(void) {
  static size_t page;
  if (!page) {
    long p = sysconf(_SC_PAGESIZE);
    page = p > 0 ? (size_t)p : 4096;
  }
  return page;
}

/* ---- guard page overflow handler ---------------------------------------- */

static struct sigaction evx__prev_segv, evx__prev_bus;
static pthread_once_t evx__sig_once = PTHREAD_ONCE_INIT;
static _Thread_local int evx__altstack_done;

static void evx__sig_write(const char *s) {
  size_t n = strlen(s);
  while (n > 0) {
    ssize_t w = write(2, s, n);
    if (w <= 0) {
      if (w < 0 && errno == EINTR) continue;
      return;
    }
    s += w;
    n -= (size_t)w;
  }
}

static void evx__sig_write_size(size_t v) {
  char buf[32];
  char *p = buf + sizeof buf - 1;
  *p = '\0';
  do {
    *--p = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  evx__sig_write(p);
}

static void evx__on_fault(int sig, siginfo_t *si, void *uctx) {
  evx__coro *co = evx__cur;
  uintptr_t a = (uintptr_t)si->si_addr;
  if (co && a >= (uintptr_t)co->map && a < (uintptr_t)co->stack_lo) {
    evx__sig_write("evexec: coroutine stack overflow: the coroutine ran into the guard page below "
                   "its stack of ");
    evx__sig_write_size(co->stack_size);
    evx__sig_write(" bytes (raise evx_coro_opts.stack_size); aborting with ");
    evx__sig_write(sig == SIGBUS ? "SIGBUS\n" : "SIGSEGV\n");
    /* Returning re-runs the faulting access, which now kills the process. */
    signal(sig, SIG_DFL);
    return;
  }
  struct sigaction *prev = sig == SIGBUS ? &evx__prev_bus : &evx__prev_segv;
  if ((prev->sa_flags & SA_SIGINFO) && prev->sa_sigaction) {
    prev->sa_sigaction(sig, si, uctx);
  } else if (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN) {
    prev->sa_handler(sig);
  } else {
    signal(sig, SIG_DFL); /* re-fault with the default action */
  }
}

static void evx__sig_install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = evx__on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &evx__prev_segv);
  sigaction(SIGBUS, &sa, &evx__prev_bus);
}

/* The fault handler needs a stack that is not the overflowing one. A thread
 * that already has an alternate stack (ASan installs one) keeps it; ours is
 * mapped once per thread and never unmapped (a thread may still fault). */
static void evx__sig_prepare_thread(void) {
  if (evx__altstack_done) return;
  evx__altstack_done = 1;
  pthread_once(&evx__sig_once, evx__sig_install);
  stack_t old;
  if (sigaltstack(NULL, &old) == 0 && !(old.ss_flags & SS_DISABLE)) return;
  size_t size = 64 * 1024;
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return;
  stack_t ss = {.ss_sp = p, .ss_size = size, .ss_flags = 0};
  if (sigaltstack(&ss, NULL) != 0) munmap(p, size);
}

/* ---- stacks and the per-loop pool --------------------------------------- */

static evx__coro *evx__coro_alloc(size_t stack_size) {
  evx__coro *co = evx_calloc(1, sizeof *co);
  if (!co) return NULL;
  size_t page = evx__page_size();
  co->map_size = stack_size + page;
  co->map = mmap(NULL, co->map_size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (co->map == MAP_FAILED) {
    evx_free(co);
    return NULL;
  }
  if (mprotect(co->map, page, PROT_NONE) != 0) {
    munmap(co->map, co->map_size);
    evx_free(co);
    return NULL;
  }
  co->stack_lo = (char *)co->map + page;
  co->stack_size = stack_size;
#ifdef EVX__VALGRIND
  co->vg_id = VALGRIND_STACK_REGISTER(co->stack_lo, co->stack_lo + stack_size);
#endif
  return co;
}

static void evx__coro_unmap(evx__coro *co) {
#ifdef EVX__VALGRIND
  VALGRIND_STACK_DEREGISTER(co->vg_id);
#endif
#ifdef EVX__ASAN
  ASAN_UNPOISON_MEMORY_REGION(co->stack_lo, co->stack_size);
#endif
  munmap(co->map, co->map_size);
  evx_free(co);
}

static void evx__coro_loop_close(evx__loop_member *m);

static evx__coro_home *evx__coro_loop_get(evx_loop *loop) {
  evx__loop_member *m = evx__loop_member_find(loop, evx__coro_loop_close);
  evx__coro_home *cl = m ? EVX__CONTAINER_OF(m, evx__coro_home, member) : NULL;
  if (!cl) {
    cl = evx_calloc(1, sizeof *cl);
    if (!cl) return NULL;
    evx__list_init(&cl->live);
  } else {
    evx__loop_member_remove(&cl->member); /* re-added as the newest below */
  }
  evx__loop_member_add(loop, &cl->member, NULL, evx__coro_loop_close);
  return cl;
}

static void evx__coro_loop_release(evx__coro_home *cl) {
  while (cl->pool) {
    evx__coro *co = cl->pool;
    cl->pool = co->next;
    evx__coro_unmap(co);
  }
  evx_free(cl);
}

/* ---- switching ---------------------------------------------------------- */

static void evx__coro_reap(evx__coro *co);

/* Run co (SUSPENDED or new) until it yields or returns. Main context or a
 * coroutine calling evx_go. */
static void evx__coro_resume(evx__coro *co) {
  evx__coro *prev = evx__cur;
  evx__ctx *from = prev ? &prev->ctx : &evx__main_ctx;
  co->caller = from;
  co->state = EVX__CO_RUNNING;
  evx__cur = co;
#ifdef EVX__ASAN
  void **fake = prev ? &prev->asan_fake : &evx__main_asan_fake;
  __sanitizer_start_switch_fiber(fake, co->stack_lo, co->stack_size);
#endif
#ifdef EVX__TSAN
  co->tsan_caller = __tsan_get_current_fiber();
  __tsan_switch_to_fiber(co->tsan_fiber, 0);
#endif
  evx__ctx_switch(from, &co->ctx);
#ifdef EVX__ASAN
  __sanitizer_finish_switch_fiber(*fake, NULL, NULL);
#endif
  evx__cur = prev;
  if (co->state == EVX__CO_DONE) evx__coro_reap(co);
}

/* Park the running coroutine until something resumes it. */
void evx__coro_yield(evx__coro *co) {
  co->state = EVX__CO_SUSPENDED;
#ifdef EVX__ASAN
  __sanitizer_start_switch_fiber(&co->asan_fake, co->caller_bottom, co->caller_size);
#endif
#ifdef EVX__TSAN
  __tsan_switch_to_fiber(co->tsan_caller, 0);
#endif
  evx__ctx_switch(&co->ctx, co->caller);
#ifdef EVX__ASAN
  __sanitizer_finish_switch_fiber(co->asan_fake, &co->caller_bottom, &co->caller_size);
#endif
}

static void evx__coro_entry(void *p) {
  evx__coro *co = p;
#ifdef EVX__ASAN
  __sanitizer_finish_switch_fiber(NULL, &co->caller_bottom, &co->caller_size);
#endif
  void *result = co->fn(co->arg);
  evx__list_remove(&co->link);
  if (co->f) evx__future_set_cancel_hook(co->f, NULL, NULL);
  if ((!co->f || evx_future_resolve(co->f, result, co->result_free) != EVX_OK) && result &&
      co->result_free)
    co->result_free(result); /* detached, or the future was cancelled: nobody takes it */
  co->state = EVX__CO_DONE;
#ifdef EVX__ASAN
  __sanitizer_start_switch_fiber(NULL, co->caller_bottom, co->caller_size); /* this stack ends */
#endif
#ifdef EVX__TSAN
  __tsan_switch_to_fiber(co->tsan_caller, 0);
#endif
  evx__ctx_switch(&co->ctx, co->caller);
  abort(); /* a DONE coroutine is never resumed */
}

/* fn returned and we are back on the resumer's stack: recycle co. */
static void evx__coro_reap(evx__coro *co) {
  evx__coro_home *cl = co->cl;
  evx_future_release(co->f);
  co->f = NULL;
#ifdef EVX__TSAN
  __tsan_destroy_fiber(co->tsan_fiber);
  co->tsan_fiber = NULL;
#endif
  if (!cl->closing && cl->npool < EVX__CORO_POOL_MAX) {
    co->next = cl->pool;
    cl->pool = co;
    cl->npool++;
  } else {
    evx__coro_unmap(co);
  }
  if (cl->closing && !cl->in_close && evx__list_empty(&cl->live))
    evx__coro_loop_release(cl); /* the last one out */
}

static void evx__coro_wake_node(void *arg) {
  evx__coro *co = arg;
  co->wake_queued = 0;
  if (co->state == EVX__CO_SUSPENDED) evx__coro_resume(co);
}

/* Resume a suspended co: at once when `direct` and called from a loop
 * callback in main context, else later in this iteration. */
void evx__coro_wake(evx__coro *co, int direct) {
  if (co->state != EVX__CO_SUSPENDED || co->wake_queued) return;
  if (direct && !evx__cur) {
    evx__coro_resume(co);
    return;
  }
  co->wake_queued = 1;
  evx__loop_defer(co->loop, &co->wake_node);
}

evx__coro *evx__coro_current(void) { return evx__cur; }
int evx__coro_err(const evx__coro *co) { return co->err; }
evx_loop *evx__coro_loop(const evx__coro *co) { return co->loop; }

void evx__coro_interrupt(evx__coro *co, int err) {
  if (!co || co->state == EVX__CO_DONE) return;
  if (!co->err) co->err = err;
  evx__coro_wake(co, 0);
}

static void evx__coro_cancel_hook(evx_future *f, void *ctx) {
  (void)f;
  evx__coro_interrupt(ctx, EVX_ECANCELED);
}

/* ---- public API --------------------------------------------------------- */

static int evx__coro_spawn(evx_loop *loop, size_t size, evx_coro_fn fn, void *arg,
                           evx_free_fn result_free, evx_future *f);

evx_future *evx_go_sized(evx_loop *loop, evx_coro_fn fn, void *arg, const evx_coro_opts *opts_in,
                         size_t opts_size) {
  if (!loop || !fn || !evx__loop_thread_ok(loop) || evx__loop_freeing(loop))
    return evx__ctor_fail(EVX_EINVAL);
  evx_coro_opts o;
  if (evx__opts_copy(&o, sizeof o, opts_in, opts_size) != EVX_OK) return evx__ctor_fail(EVX_EINVAL);
  const evx_coro_opts *opts = &o;
  size_t size = opts && opts->stack_size ? opts->stack_size : EVX_CORO_STACK_DEFAULT;
  if (size > EVX__CORO_STACK_MAX) return evx__ctor_fail(EVX_EINVAL);
  if (size < EVX_CORO_STACK_MIN) size = EVX_CORO_STACK_MIN;
  size_t page = evx__page_size();
  size = (size + page - 1) / page * page;
  evx_future *f = evx_future_new(loop);
  if (!f) return NULL; /* evx_future_new said why */
  int rc = evx__coro_spawn(loop, size, fn, arg, opts ? opts->result_free : NULL, f);
  if (rc != EVX_OK) {
    evx_future_release(f);
    return evx__ctor_fail(rc);
  }
  return f;
}

int evx__go_detached(evx_loop *loop, evx_coro_fn fn, void *arg) {
  if (!loop || !fn || !evx__loop_thread_ok(loop) || evx__loop_freeing(loop)) return EVX_EINVAL;
  size_t page = evx__page_size();
  return evx__coro_spawn(loop, (EVX_CORO_STACK_DEFAULT + page - 1) / page * page, fn, arg, NULL,
                         NULL);
}

/* Start fn(arg) on a stack of `size` bytes (page-rounded) and run it until it
 * first suspends or returns. f (NULL: detached) gets the coroutine's
 * reference and its cancel hook. EVX_ENOMEM: fn never runs. */
static int evx__coro_spawn(evx_loop *loop, size_t size, evx_coro_fn fn, void *arg,
                           evx_free_fn result_free, evx_future *f) {
  evx__coro_home *cl = evx__coro_loop_get(loop);
  if (!cl) return EVX_ENOMEM;
  evx__coro *co = NULL;
  for (evx__coro **pp = &cl->pool; *pp; pp = &(*pp)->next) {
    if ((*pp)->stack_size == size) {
      co = *pp;
      *pp = co->next;
      cl->npool--;
#ifdef EVX__ASAN
      ASAN_UNPOISON_MEMORY_REGION(co->stack_lo, co->stack_size); /* old frames' redzones */
#endif
      break;
    }
  }
  if (!co) co = evx__coro_alloc(size);
  if (!co) return EVX_ENOMEM; /* the stack (mmap) or its record */
#ifdef EVX__TSAN
  co->tsan_fiber = __tsan_create_fiber(0);
#endif
  evx__sig_prepare_thread();
  co->loop = loop;
  co->cl = cl;
  co->fn = fn;
  co->arg = arg;
  co->result_free = result_free;
  co->f = evx_future_ref(f); /* NULL stays NULL */
  co->err = 0;
  co->wake_queued = 0;
  co->next = NULL;
  co->wake_node = (evx__cbnode){.fn = evx__coro_wake_node, .arg = co, .owned = 1};
  if (f) evx__future_set_cancel_hook(f, evx__coro_cancel_hook, co);
  evx__ctx_make(&co->ctx, co->stack_lo, co->stack_size, evx__coro_entry, co);
  evx__list_insert_tail(&cl->live, &co->link);
  evx__coro_resume(co);
  return EVX_OK;
}

/* The first layout of evx_coro_opts (what the plain evx_go reads). */
#define EVX__CORO_OPTS_V0 (offsetof(evx_coro_opts, result_free) + sizeof(evx_free_fn))

evx_future *(evx_go)(evx_loop *loop, evx_coro_fn fn, void *arg, const evx_coro_opts *opts) {
  return evx_go_sized(loop, fn, arg, opts, EVX__CORO_OPTS_V0);
}

int evx_in_coro(void) { return evx__cur != NULL; }

static void evx__await_cb(evx_future *f, void *arg) {
  (void)f;
  evx__coro_wake(arg, 1);
}

int evx_await(evx_future *f) {
  evx__coro *co = evx__cur;
  if (!co || !f) return EVX_EINVAL;
  if (co->err) return co->err;
  if (evx__future_done(f)) return f->status;
  evx__future_ref(f);
  if (evx_future_on_done(f, evx__await_cb, co) != EVX_OK) {
    evx__future_unref(f);
    return EVX_ENOMEM;
  }
  while (!co->err && !evx__future_done(f)) evx__coro_yield(co);
  /* Woken by an interrupt: our callback may not have run. */
  if (f->next_cb < f->ncbs) evx__future_remove_cb(f, evx__await_cb, co);
  if (co->err) {
    (void)evx_future_cancel(f); /* EVX_EINVAL when it is done: fine */
    evx__future_unref(f);
    return co->err;
  }
  int st = f->status;
  evx__future_unref(f);
  return st;
}

typedef struct evx__sleep {
  evx__coro *co;
  evx_timer *timer;
} evx__sleep;

static void evx__sleep_fired(void *arg) {
  evx__sleep *s = arg;
  s->timer = NULL;
  evx__coro_wake(s->co, 1);
}

int evx_sleep(uint64_t ms) {
  evx__coro *co = evx__cur;
  if (!co) return EVX_EINVAL;
  if (co->err) return co->err;
  evx__sleep s = {.co = co};
  s.timer = evx_call_later(co->loop, ms, evx__sleep_fired, &s);
  if (!s.timer) return EVX_ENOMEM;
  while (!co->err && s.timer) evx__coro_yield(co);
  if (s.timer) evx_timer_cancel(s.timer);
  return co->err ? co->err : EVX_OK;
}

/* ---- loop teardown ------------------------------------------------------ */

/* on_free of the loop member: evx_loop_free interrupts every coroutine with
 * EVX_ECLOSED and resumes it until it returns or parks for a running job
 * (whose done arrives when its executor is freed, later in evx_loop_free;
 * the last coroutine to end then frees cl). evx_go refuses from now on. */
static void evx__coro_loop_close(evx__loop_member *m) {
  evx__coro_home *cl = EVX__CONTAINER_OF(m, evx__coro_home, member);
  cl->closing = 1;
  cl->in_close = 1;
  /* In creation order. Resuming co can only unlink co itself: everything it
   * wakes is deferred and evx_go refuses, so `next` stays valid. */
  for (evx__list *l = cl->live.next, *next; l != &cl->live; l = next) {
    next = l->next;
    evx__coro *co = EVX__CONTAINER_OF(l, evx__coro, link);
    if (!co->err) co->err = EVX_ECLOSED;
    if (co->state == EVX__CO_SUSPENDED && !co->wake_queued) evx__coro_resume(co);
  }
  cl->in_close = 0;
  if (evx__list_empty(&cl->live)) evx__coro_loop_release(cl);
}
