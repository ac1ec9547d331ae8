/**
 * @file future.h
 * evx_future: Tornado's Future on the loop thread, plus run_on_executor,
 * gen.multi (evx_future_all) and with_timeout.
 *
 * Every function here is loop-thread only, and returns EVX_EINVAL / NULL
 * when called from another thread while the loop runs.
 *
 * Ownership: futures are reference counted. A function that returns a
 * future gives the caller one reference, to drop with evx_future_release().
 * Releasing does not cancel: a pending job or timer keeps its own reference.
 * A resolved future owns its result and frees it with the destructor given
 * at resolve time when the last reference goes, unless someone took it
 * with evx_future_take(). A result that arrives after the future was
 * cancelled is freed at once; nobody sees it and no callback fires twice.
 */
#ifndef EVEXEC_FUTURE_H
#define EVEXEC_FUTURE_H

#include <evexec/common.h>
#include <evexec/executor.h>
#include <evexec/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct evx_future evx_future;

/** Called on the loop thread once the future is done. */
typedef void (*evx_future_cb)(evx_future *f, void *arg);

/** evx_future_status() of a future that is not done yet. */
#define EVX_PENDING 1

/** A new pending future; the caller holds one reference. NULL on NULL loop / ENOMEM / wrong thread. */
EVX_API evx_future *evx_future_new(evx_loop *loop);

/** Take another reference. Returns f. */
EVX_API evx_future *evx_future_ref(evx_future *f);

/** Drop a reference; the last one frees the future and its result. NULL accepted. */
EVX_API void evx_future_release(evx_future *f);

/**
 * Resolve with a result; the future takes ownership of `result` and frees it
 * with `result_free` (may be NULL) when nobody took it.
 * @return EVX_OK; EVX_EINVAL when f is NULL or already done - the caller
 *         then keeps ownership of `result`.
 */
EVX_API int evx_future_resolve(evx_future *f, void *result, evx_free_fn result_free);

/** Fail with a negative error code. @return EVX_OK, or EVX_EINVAL (NULL, done, err >= 0). */
EVX_API int evx_future_fail(evx_future *f, int err);

/**
 * Cancel: the future fails with EVX_ECANCELED, and whatever feeds it is told:
 * an executor job that has not started is cancelled, a condition wait is
 * removed, a timeout timer is stopped.
 * @return EVX_OK; EVX_EINVAL when NULL or already done.
 */
EVX_API int evx_future_cancel(evx_future *f);

/** Non-zero once resolved, failed or cancelled. */
EVX_API int evx_future_is_done(const evx_future *f);

/** EVX_PENDING, EVX_OK (resolved) or the negative error it failed with. EVX_EINVAL for NULL. */
EVX_API int evx_future_status(const evx_future *f);

/** The result (borrowed, owned by the future), or NULL when not resolved or taken. */
EVX_API void *evx_future_result(const evx_future *f);

/**
 * Take ownership of the result: the caller must free it (with the destructor
 * it was resolved with); the future forgets it. NULL when there is none.
 */
EVX_API void *evx_future_take(evx_future *f);

/**
 * Call cb(f, arg) on the loop thread after f is done - in a later loop
 * iteration, never inside this call nor inside resolve/fail/cancel. Callbacks
 * run in the order they were added. The future stays alive until they ran.
 * @return EVX_OK; EVX_EINVAL (NULL f or cb); EVX_ENOMEM (cb will not be called).
 */
EVX_API int evx_future_on_done(evx_future *f, evx_future_cb cb, void *arg);

/** The loop the future belongs to (borrowed). */
EVX_API evx_loop *evx_future_loop(const evx_future *f);

/**
 * A blocking call for a worker thread: return EVX_OK and set *result (owned
 * by the caller of evx_run_on_executor from then on), or return a negative
 * error code (then *result is ignored).
 */
typedef int (*evx_call_fn)(void *arg, void **result);

/**
 * Tornado's run_on_executor: run fn(arg, &result) on a worker of `ex`, and
 * resolve the returned future with the result on the loop thread (or fail it
 * with fn's error code).
 * @param ex the executor whose worker runs fn; the future belongs to ex's loop.
 * @param fn the blocking call, run once on a worker thread (never when the
 *        job is cancelled before it starts or cannot be submitted).
 * @param arg passed to fn; it must stay valid while fn may run, which can
 *        outlast a cancelled future - arg_free, when given, marks the end.
 * @param arg_free called on the loop thread once no worker uses `arg` any more
 *        (after fn returned, or when the job was cancelled); may be NULL.
 * @param result_free the result's destructor, given to the future with the
 *        result (see evx_future_resolve); also frees a result that arrives
 *        after the future was cancelled. May be NULL.
 * @return a future (one reference for the caller). When the job cannot be
 *         submitted, the future is already failed with the reason (EVX_EBUSY,
 *         EVX_ECLOSED, EVX_ENOMEM) and fn never runs; arg_free is then called
 *         before this returns. NULL only for NULL ex/fn, wrong thread, or out of
 *         memory for the future itself (then arg_free is not called).
 */
EVX_API evx_future *evx_run_on_executor(evx_executor *ex, evx_call_fn fn, void *arg,
                                        evx_free_fn arg_free, evx_free_fn result_free);

/**
 * gen.multi: a future that resolves (with a NULL result) when every one of the
 * n futures resolved, or fails with the first failure's code as soon as one
 * fails. It holds references to the inputs; the caller keeps its own. Cancelling
 * it does not cancel the inputs. n == 0 gives a future that is already resolved.
 * @param loop the loop every input belongs to.
 * @param futures an array of n futures (borrowed: the array is read during
 *        the call only); may be NULL when n is 0.
 * @param n the number of futures.
 * @return a future (one reference), or NULL (NULL loop, NULL array with n > 0,
 *         a NULL element, a future of another loop, wrong thread, out of memory).
 */
EVX_API evx_future *evx_future_all(evx_loop *loop, evx_future *const *futures, size_t n);

/**
 * with_timeout: a future that mirrors f, or fails with EVX_ETIMEDOUT when f is
 * not done after `ms` milliseconds. f is not cancelled on timeout. The mirror's
 * result is f's (evx_future_result borrows it; evx_future_take takes it from f).
 * The mirror keeps f alive until f is done.
 * @return a future (one reference), or NULL (NULL f, out of memory).
 */
EVX_API evx_future *evx_future_with_timeout(evx_future *f, uint64_t ms);

#ifdef __cplusplus
}
#endif
#endif /* EVEXEC_FUTURE_H */
