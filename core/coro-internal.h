/* PRIVATE to evexec: never installed, never included by users.
 * Coroutine internals shared with the loop (teardown) and the HTTP layer
 * (interrupting a handler whose client left). */
#ifndef EVX_CORO_INTERNAL_H
#define EVX_CORO_INTERNAL_H

#include <evexec/coro.h>

typedef struct evx__coro evx__coro;

/* The coroutine running on this thread, or NULL outside coroutines. */
evx__coro *evx__coro_current(void);

/* Interrupt co (loop thread): its pending await and every later one return
 * err (EVX_ECANCELED, EVX_EGONE, EVX_ECLOSED); the first reason sticks. A
 * suspended co is resumed later in this loop iteration, never inside this
 * call. co must not have returned yet (the caller tracks that). */
void evx__coro_interrupt(evx__coro *co, int err);

#endif
