/* PRIVATE to evexec: never installed, never included by users.
 * Coroutine internals shared with the loop (teardown) and the HTTP layer
 * (interrupting a handler whose client left). */
#ifndef EVX_CORO_INTERNAL_H
#define EVX_CORO_INTERNAL_H

#include <evexec/coro.h>

typedef struct evx__coro evx__coro;

/* evx_go with the default stack, without a future: for a starter that never
 * awaits or cancels the coroutine (an HTTP handler, which its request
 * interrupts). EVX_OK; EVX_EINVAL (not the loop thread, the loop is being
 * freed) or EVX_ENOMEM: fn never ran. */
int evx__go_detached(evx_loop *loop, evx_coro_fn fn, void *arg);

/* The coroutine running on this thread, or NULL outside coroutines. */
evx__coro *evx__coro_current(void);

/* The sticky interruption reason (0: none) and the loop of co. */
int evx__coro_err(const evx__coro *co);
evx_loop *evx__coro_loop(const evx__coro *co);

/* Park the running coroutine co until evx__coro_wake(co) or an interrupt
 * resumes it; callers loop on their own condition (wakes may be spurious). */
void evx__coro_yield(evx__coro *co);

/* Resume a suspended co: at once when `direct` and called from a loop
 * callback outside any coroutine (a future's callback, a timer, a job's
 * done), else later in this loop iteration. No-op unless co is suspended. */
void evx__coro_wake(evx__coro *co, int direct);

/* Interrupt co (loop thread): its pending await and every later one return
 * err (EVX_ECANCELED, EVX_EGONE, EVX_ECLOSED); the first reason sticks. A
 * suspended co is resumed later in this loop iteration, never inside this
 * call. co must not have returned yet (the caller tracks that). */
void evx__coro_interrupt(evx__coro *co, int err);

#endif
