/* PRIVATE to evexec: never installed, never included by users.
 * The internals that the layers above core/ - executor/, http/ and the
 * optional libraries in ext/ (which link the shared library, hence EVX_API) -
 * are allowed to use. Everything here is prefixed evx__; nothing here is a
 * public promise, and it may change with any release.
 *
 * LOOP MEMBERS AND THE OWNERSHIP RULE
 * Every object bound to a loop that owns threads, sockets or callbacks
 * (executors, HTTP servers, SQLite handles, mailers, task queues,
 * coroutines...) embeds an evx__loop_member and registers it when it is
 * created, with evx__loop_member_add, and unregisters when it is freed,
 * with evx__loop_member_remove. The one rule (documented for users at
 * evx_loop_free in loop.h and in docs/GUIDE.md): evx_loop_free closes
 * every member still registered, newest first (reverse order of creation),
 * by calling its on_free, before it runs the callbacks still queued.
 * Consequences for implementers:
 *  - An object that owns other members (a SQLite handle owns two executors)
 *    registers after creating them, so it is closed before them and frees
 *    them itself; their on_free is then never called.
 *  - on_free is the object's own free/close function: it must leave the
 *    loop usable (it may post and defer callbacks; evx_loop_free runs them
 *    afterwards) and may free other members. The loop unlinks the member
 *    before calling on_free, so evx__loop_member_remove inside it is a no-op.
 *  - on_run_exit (may be NULL) runs when evx_loop_run returns, oldest member
 *    first, on the loop thread: pay work left to later in the iteration
 *    that a stop cut short. It must not add or remove members.
 * All member calls are loop-thread only (or while the loop is not running).
 */
#ifndef EVX_EVX_PRIVATE_H
#define EVX_EVX_PRIVATE_H

#include <evexec/loop.h>

#include "common-internal.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct evx__loop_member evx__loop_member;
typedef void (*evx__member_fn)(evx__loop_member *m);

struct evx_metrics;
struct evx__loop_member {
  evx__list link;             /* in the loop's member list, oldest first */
  evx__member_fn on_run_exit; /* may be NULL */
  evx__member_fn on_free;     /* never NULL */
  /* Adds the member's samples to the text evx_loop_metrics_text builds;
   * NULL: the member has none. Set with evx__loop_member_set_metrics. */
  void (*on_metrics)(evx__loop_member *m, struct evx_metrics *out);
};

/* Register m (embedded in the object; zero-initialised or never added) with
 * loop. on_free must not be NULL. Loop thread only. */
EVX_API void evx__loop_member_add(evx_loop *loop, evx__loop_member *m, evx__member_fn on_run_exit,
                                  evx__member_fn on_free);

/* Export metrics from m (after evx__loop_member_add). Members are asked in
 * the order they were added. Loop thread only. */
EVX_API void evx__loop_member_set_metrics(evx__loop_member *m,
                                          void (*fn)(evx__loop_member *m, struct evx_metrics *out));

/* Call fn(m, arg) for every member, oldest first. fn must not add or
 * remove members. Loop thread only. */
EVX_API void evx__loop_member_foreach(evx_loop *loop, void (*fn)(evx__loop_member *m, void *arg),
                                      void *arg);

/* Unregister m; a no-op when it is not registered (never added, already
 * removed, or being closed by evx_loop_free). Loop thread only. */
EVX_API void evx__loop_member_remove(evx__loop_member *m);

/* 1 when the caller may use loop-thread-only APIs: the loop is not running,
 * or this is the thread running it. Lock-free (one atomic load). */
EVX_API int evx__loop_thread_ok(evx_loop *loop);

#ifdef __cplusplus
}
#endif
#endif
