/* PRIVATE to evexec: never installed, never included by users.
 * Loop internals shared with core/, executor/ and http/. The part ext/ may
 * use too (loop members, the thread check) is in evx-private.h. */
#ifndef EVX_LOOP_INTERNAL_H
#define EVX_LOOP_INTERNAL_H

#include <evexec/loop.h>

#include <stdatomic.h>

#include "common-internal.h"
#include "evx-private.h"

/* loop->hot.running. STARTING claims the loop for one evx_loop_run; readers
 * treat it like IDLE until the owner is recorded and RUNNING is stored. */
enum evx__run_state { EVX__LOOP_IDLE, EVX__LOOP_RUNNING, EVX__LOOP_STARTING };

struct evx__fcache;

/* The first member of struct evx_loop (loop.c): what core/'s hot paths read
 * inline instead of calling into loop.c - the thread check (once per future
 * call) and the future cache. */
typedef struct evx__loop_hot {
  /* The loop thread, as its evx__thread_me(): set by evx_loop_new,
   * evx_loop_run and evx_loop_free. Atomic, so any thread may compare itself
   * against it at any time without a lock. */
  _Atomic(const void *) owner;
  atomic_int running; /* an evx__run_state */
  /* The base was adopted: the caller may run it with event_base_dispatch(),
   * which evexec cannot see, so the thread check holds whether or not
   * evx_loop_run is running. Constant. */
  int adopted;
  /* future.c's free list of futures (NULL until the first future); loop
   * thread only; closed by evx_loop_free (evx__fcache_close). */
  struct evx__fcache *fcache;
} evx__loop_hot;

static inline evx__loop_hot *evx__loop_hot_of(evx_loop *loop) { return (evx__loop_hot *)(void *)loop; }

/* evx__loop_thread_ok (evx-private.h), inline for the code of the library
 * itself: the loop thread always passes; another thread passes only while an
 * owned base is not running (set-up and teardown around evx_loop_run). An
 * adopted base may be inside event_base_dispatch() on its thread at any
 * moment, which `running` cannot tell, so for it the check never relaxes. */
static inline int evx__loop_thread_ok_inline(evx_loop *loop) {
  evx__loop_hot *h = evx__loop_hot_of(loop);
  if (atomic_load(&h->owner) == evx__thread_me()) return 1;
  return !h->adopted && atomic_load(&h->running) != EVX__LOOP_RUNNING;
}
#define evx__loop_thread_ok(loop) evx__loop_thread_ok_inline(loop)

/* A queued callback. Nodes are either allocated by the loop for
 * evx_add_callback (owned == 0 ... recycled by the loop), or embedded in
 * another object (owned == 1: the embedding object owns the memory, and must
 * not free it while the node is queued - see evx__loop_unpost). */
typedef struct evx__cbnode {
  struct evx__cbnode *next;
  evx_cb fn;
  void *arg;
  int owned;
} evx__cbnode;

/* Thread-safe: queue an embedded node (owned = 1). No allocation; never fails
 * for a live loop. The node must not be queued already. Returns EVX_ECLOSED
 * when the loop is being freed (the node is then not queued). */
int evx__loop_post(evx_loop *loop, evx__cbnode *node);

/* Loop thread only: remove an embedded node from the queue or from the batch
 * being run, if it is there. Used by objects that die while their node is queued. */
void evx__loop_unpost(evx_loop *loop, evx__cbnode *node);

/* Loop thread only: run node->fn(node->arg) later in this loop iteration
 * (after the current callback), without locks. The node is caller-owned and
 * must stay valid until it ran; it must not be on any queue. */
void evx__loop_defer(evx_loop *loop, evx__cbnode *node);

/* 1 only when the calling thread is inside evx_loop_run(loop) right now: a
 * callback posted now runs once the caller returns to the loop. A
 * thread-local check: cheap, and never true on another thread. */
int evx__loop_running_here(evx_loop *loop);

/* The newest registered member closed by on_free, or NULL: for per-loop
 * state of core/ modules that has no owner object of its own (coroutines).
 * Loop thread only. */
evx__loop_member *evx__loop_member_find(evx_loop *loop, evx__member_fn on_free);

/* 1 once evx_loop_free(loop) has started (objects that would register a
 * new member then refuse). */
int evx__loop_freeing(evx_loop *loop);

#endif
