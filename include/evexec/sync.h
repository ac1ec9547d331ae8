/**
 * @file sync.h
 * Tornado's tornado.locks and tornado.queues on the loop thread: evx_event,
 * evx_semaphore and evx_queue.
 *
 * Every wait is a future (one reference for the caller): await it in a
 * coroutine (evx_await) or add a callback (evx_future_on_done). Waiters are
 * served oldest first. Cancelling a waiting future removes the waiter at once
 * (nothing is acquired, put or taken for it); this is also what happens when
 * the coroutine awaiting it is interrupted. Freeing an object fails its
 * pending waiters with EVX_ECLOSED.
 *
 * Threads: loop thread only; calls from another thread while the loop runs
 * answer EVX_EINVAL / NULL.
 */
#ifndef EVEXEC_SYNC_H
#define EVEXEC_SYNC_H

#include <evexec/future.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct evx_event evx_event;
typedef struct evx_semaphore evx_semaphore;
typedef struct evx_queue evx_queue;

/* ---- event: a flag waiters can wait for (tornado.locks.Event) ------------ */

/** A new, clear event owned by the caller (evx_event_free). NULL on NULL loop / ENOMEM / wrong thread. */
EVX_API evx_event *evx_event_new(evx_loop *loop);

/** Set the flag and resolve every waiter; later waits resolve at once. @return EVX_OK or EVX_EINVAL. */
EVX_API int evx_event_set(evx_event *e);

/** Clear the flag: later waits wait for the next set. @return EVX_OK or EVX_EINVAL. */
EVX_API int evx_event_clear(evx_event *e);

/** Non-zero while the flag is set. 0 for NULL. */
EVX_API int evx_event_is_set(const evx_event *e);

/** A future that resolves (NULL result) once the flag is set - already resolved
 *  when it is set now. NULL on NULL e / ENOMEM / wrong thread. */
EVX_API evx_future *evx_event_wait(evx_event *e);

/** Free; pending waiters fail with EVX_ECLOSED. NULL accepted.
 * Off the loop thread while the loop runs: ignored (one line on stderr). */
EVX_API void evx_event_free(evx_event *e);

/* ---- semaphore (tornado.locks.Semaphore; value 1 is a Lock) -------------- */

/** A semaphore with `value` free slots, owned by the caller. NULL on NULL loop / ENOMEM / wrong thread. */
EVX_API evx_semaphore *evx_semaphore_new(evx_loop *loop, unsigned value);

/**
 * Take a slot: the future resolves (NULL result) once the caller holds it -
 * at once when one is free. The holder gives it back with
 * evx_semaphore_release(). Cancelling a pending acquire takes nothing.
 * NULL on NULL s / ENOMEM / wrong thread.
 */
EVX_API evx_future *evx_semaphore_acquire(evx_semaphore *s);

/** Give a slot back: the oldest waiter gets it, or the value grows.
 *  @return EVX_OK; EVX_EINVAL for NULL, wrong thread, or a value at UINT_MAX. */
EVX_API int evx_semaphore_release(evx_semaphore *s);

/** Free slots now (0 while someone waits). 0 for NULL. */
EVX_API unsigned evx_semaphore_value(const evx_semaphore *s);

/** Free; pending acquires fail with EVX_ECLOSED. NULL accepted.
 * Off the loop thread while the loop runs: ignored (one line on stderr). */
EVX_API void evx_semaphore_free(evx_semaphore *s);

/* ---- queue (tornado.queues.Queue): bounded FIFO of pointers -------------- */

/** A queue holding at most `maxsize` items (0: unbounded), owned by the caller.
 *  NULL on NULL loop / ENOMEM / wrong thread. */
EVX_API evx_queue *evx_queue_new(evx_loop *loop, size_t maxsize);

/**
 * Put an item. The future resolves (NULL result) once the item is in the
 * queue or handed to a getter: at once when there is room, else when a get
 * makes room (puts are served in order). The queue owns nothing: the item
 * is a pointer that passes from the putter to the getter. Cancelling a
 * pending put leaves the item with the caller (it is never delivered).
 * NULL (item not queued) on NULL q / ENOMEM / wrong thread.
 */
EVX_API evx_future *evx_queue_put(evx_queue *q, void *item);

/**
 * Get the oldest item. The future resolves with the item as its result (the
 * caller takes it: evx_future_result / evx_future_take; the future never
 * frees it): at once when the queue holds one, else when one is put.
 * Cancelling a pending get takes nothing. NULL on NULL q / ENOMEM / wrong thread.
 */
EVX_API evx_future *evx_queue_get(evx_queue *q);

/** Items in the queue now (not counting pending puts). 0 for NULL. */
EVX_API size_t evx_queue_size(const evx_queue *q);

/**
 * Free the queue. Pending gets and puts fail with EVX_ECLOSED; items still
 * queued are dropped without being freed (drain the queue first if they own
 * memory). NULL accepted. Off the loop thread while the loop runs: ignored (one line on stderr).
 */
EVX_API void evx_queue_free(evx_queue *q);

#ifdef __cplusplus
}
#endif
#endif /* EVEXEC_SYNC_H */
