/* PRIVATE to evexec: never installed, never included by users. */
#ifndef EVX_FUTURE_INTERNAL_H
#define EVX_FUTURE_INTERNAL_H

#include <evexec/future.h>

/* Called by evx_future_cancel after the future failed with EVX_ECANCELED,
 * so the producer feeding it can stop (dequeue a job, drop a waiter...).
 * The hook is cleared before it is called; a producer that settles the
 * future itself must clear it first (evx__future_set_cancel_hook(f, NULL, NULL)). */
typedef void (*evx__cancel_hook)(evx_future *f, void *ctx);
void evx__future_set_cancel_hook(evx_future *f, evx__cancel_hook fn, void *ctx);

/* Undo evx_future_on_done(f, cb, arg) if that callback has not started yet. */
void evx__future_remove_cb(evx_future *f, evx_future_cb cb, void *arg);

/* evx_loop_free, at its very end: free the loop's cached futures; a future
 * released later is freed at once (its memory never touches the loop). */
void evx__fcache_close(evx_loop *loop);

#endif
