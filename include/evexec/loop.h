/**
 * @file loop.h
 * evx_loop: Tornado's IOLoop over a libevent event_base.
 *
 * One thread runs the loop (the "loop thread"): every handler, timer, future
 * callback and executor `done` runs there. The calls that are safe from any
 * thread say so ("Safe from any thread") in their comment, and they are
 * these: evx_add_callback() and evx_loop_stop() on a loop; on an
 * executor, which take its lock: the submits (evx_submit, evx_submit_job,
 * evx_strand_submit, evx_strand_submit_job), evx_executor_shutdown and
 * evx_executor_stats_get, and evx_submit_wait, which is for the other
 * threads only (refused on the thread running the loop); inside a job's
 * work, evx_job_cancelled; the optional libraries' queries and counters
 * (sqlite.h, mail.h) and the task accessors tasks.h names; and calls that
 * touch no loop-bound object (evx_strerror, evx_last_error,
 * evx_stats_quantile_us, evx_request_live_count...). Every other call in evexec
 * that takes an evx_loop (or an object bound to one) must be made on the
 * loop thread; the ones that change state or call back refuse a call from
 * another thread with EVX_EINVAL (or NULL; a void free ignores it, with one
 * line on stderr), and changes nothing:
 *  - the loop thread is the thread that called evx_loop_new, until a thread
 *    calls evx_loop_run (then that one, also after the run returns) or
 *    evx_loop_free (then that one);
 *  - a loop over an owned base (evx_loop_new(NULL)) runs only through
 *    evx_loop_run; while it does not run, set-up and teardown calls are
 *    accepted from any thread (e.g. the thread that joined the loop thread);
 *  - a loop over an adopted base may instead be run with event_base_dispatch()
 *    on its loop thread, which evexec cannot observe, so for it the check
 *    holds all the time: a call from any other thread is refused whether or
 *    not the base is being dispatched at that moment.
 */
#ifndef EVEXEC_LOOP_H
#define EVEXEC_LOOP_H

#include <evexec/common.h>

#ifdef __cplusplus
extern "C" {
#endif

struct event_base;

/** Opaque loop. */
typedef struct evx_loop evx_loop;

/** A plain callback: runs on the loop thread. */
typedef void (*evx_cb)(void *arg);

/**
 * Create a loop.
 * @param base an event_base to adopt (the caller keeps ownership and must free
 *             it after evx_loop_free), or NULL to create one that the loop owns
 *             (created with EVENT_BASE_FLAG_PRECISE_TIMER; an adopted base keeps
 *             its own clock, which may be libevent's coarse one, so timers on it
 *             can fire up to one tick early). The caller may also run an adopted
 *             base itself with event_base_dispatch() (or event_base_loop()) on
 *             the thread that called evx_loop_new: callbacks and executors work
 *             the same, evx_loop_stop() breaks that loop, and the thread checks
 *             hold as under evx_loop_run (see above). Dispatching it on another
 *             thread is not supported: every loop-thread call made there answers
 *             EVX_EINVAL. An owned base must only be run with evx_loop_run.
 * @return the loop, owned by the caller (free with evx_loop_free), or NULL
 *         with evx_last_error() saying why: EVX_ENOMEM, or EVX_EIO when
 *         libevent or the wakeup channel (an eventfd) cannot be set up.
 */
EVX_API evx_loop *evx_loop_new(struct event_base *base);

/**
 * Run the loop on the calling thread, which becomes the loop thread, until
 * evx_loop_stop(). Callbacks queued before the call run in the first iteration.
 * @return EVX_OK after a stop; EVX_EINVAL for NULL, for a loop already running,
 *         or when called from inside a loop callback; EVX_EIO if libevent fails.
 */
EVX_API int evx_loop_run(evx_loop *loop);

/**
 * Ask the loop to return from evx_loop_run() after the current iteration.
 * Safe from any thread and from callbacks. A stop requested while the loop is
 * not running makes the next evx_loop_run() return after one iteration.
 * Callbacks added after the stop are kept and run on the next evx_loop_run(),
 * or by evx_loop_free().
 * @return EVX_OK, or EVX_EINVAL for NULL.
 */
EVX_API int evx_loop_stop(evx_loop *loop);

/**
 * Free the loop. Must not be called while evx_loop_run() is executing.
 * Order of teardown:
 *  1. The ownership rule for loop-bound objects: every object still bound
 *     to the loop - executors, HTTP servers, SQLite handles, mailers, any
 *     object evexec binds to a loop - is closed by its own free function,
 *     newest first (reverse order of creation): evx_executor_free (shutdown
 *     with CANCEL, wait for running jobs, every `done` is called),
 *     evx_http_free (held requests become EVX_ECLOSED zombies),
 *     evx_sqlite_close, evx_mailer_free. So a server is closed before the
 *     executor created before it, whose `done` callbacks then find its
 *     requests closed. Freeing them yourself first, in any order, is always
 *     allowed; after evx_loop_free every handle to them is dangling;
 *  2. queued callbacks run on the calling thread, and so do callbacks added
 *     meanwhile (by them or by other threads), until the queue is empty;
 *     in the same step the queue closes: from then on evx_add_callback()
 *     answers EVX_ECLOSED. A callback that keeps re-adding itself is cut off
 *     after 1000 rounds (the rest are dropped, with a message on stderr);
 *  3. pending timers are dropped without calling them;
 *  4. the owned event_base is freed (an adopted one is left to the caller).
 * Producer threads must have stopped calling evx_add_callback() before the
 * function returns: a call after that is a use-after-free. NULL is accepted (no-op).
 */
EVX_API void evx_loop_free(evx_loop *loop);

/** The loop's event_base (borrowed; owned as described at evx_loop_new). NULL for NULL. */
EVX_API struct event_base *evx_loop_base(evx_loop *loop);

/**
 * Queue fn(arg) to run on the loop thread in a later iteration - never inside
 * this call. Safe from any thread, including the loop thread.
 * Callbacks from one producer thread run in the order they were added; none is
 * lost or run twice. Wakeups are coalesced: only the producer that finds the
 * queue empty wakes the loop, and the loop runs the whole batch per wakeup.
 * @return EVX_OK; EVX_EINVAL for a NULL loop or fn; EVX_ENOMEM (fn will not be
 *         called); EVX_ECLOSED while evx_loop_free is tearing down.
 */
EVX_API int evx_add_callback(evx_loop *loop, evx_cb fn, void *arg);

/** Non-zero when called on the loop thread (see the top of this file): the thread
 *  running evx_loop_run, or the last one that ran it, or before that the creator. */
EVX_API int evx_loop_in_thread(evx_loop *loop);

/**
 * Opaque timer handle returned by evx_call_later. It is an encoded id (a
 * slot and a generation), not an address: it never points at memory, and a
 * handle kept after its timer fired or was cancelled stays harmless - every
 * call on it answers EVX_EINVAL, and it never names a later timer.
 */
typedef struct evx_timer evx_timer;

/**
 * Run fn(arg) on the loop thread after `ms` milliseconds (0: next iteration).
 * Loop thread only.
 * @return a handle owned by the loop, live until fn is called or the timer is
 *         cancelled (then stale: see evx_timer); or NULL on EVX_EINVAL
 *         (NULL loop/fn, wrong thread) or EVX_ENOMEM (fn will not be called).
 */
EVX_API evx_timer *evx_call_later(evx_loop *loop, uint64_t ms, evx_cb fn, void *arg);

/**
 * Cancel a pending timer: fn will not be called and the handle ends.
 * Loop thread only.
 * @return EVX_OK; EVX_EINVAL (a no-op) for NULL, for a stale handle - a
 *         timer that already fired (also from inside its own fn) or was
 *         cancelled - or from another thread. A stale handle never cancels
 *         another timer, even one created since. Handles of a freed loop
 *         are stale too.
 */
EVX_API int evx_timer_cancel(evx_timer *timer);

/** A signal callback (evx_loop_on_signal): the signal number and the registered arg. Loop thread. */
typedef void (*evx_signal_fn)(int signum, void *arg);

/**
 * Call fn(signum, arg) on the loop thread, as a normal loop callback, each time
 * `signum` arrives while the loop runs (libevent's signal events: the C
 * handler only wakes the loop, so fn may call anything, e.g. stop
 * accepting, drain executors and evx_loop_stop for a graceful exit on
 * SIGINT/SIGTERM). A second call for the same signal replaces fn and arg;
 * fn NULL removes it (the signal's disposition goes back to what it was).
 * Registrations end at evx_loop_free. Loop thread only. One loop per
 * process should watch a given signal (libevent delivers it to one base).
 * @return EVX_OK; EVX_EINVAL (NULL loop, bad signal number, SIGKILL or
 *         SIGSTOP, wrong thread); EVX_ENOMEM; EVX_EIO (libevent could not
 *         install the handler).
 */
EVX_API int evx_loop_on_signal(evx_loop *loop, int signum, evx_signal_fn fn, void *arg);

#ifdef __cplusplus
}
#endif
#endif /* EVEXEC_LOOP_H */
