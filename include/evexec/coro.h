/**
 * @file coro.h
 * Coroutines: Tornado's gen.coroutine / async def in C. Stackful coroutines
 * that run on the loop thread and suspend at each await, so a handler reads
 * top to bottom: offload, wait, answer.
 *
 * Model:
 *  - evx_go() starts fn(arg) on its own stack and runs it until its first
 *    suspension (or its end), then returns a future that settles with fn's
 *    result. Every coroutine runs on the thread of its loop, one at a time;
 *    between two awaits a coroutine is never interrupted (no locks needed for
 *    loop-thread data, exactly as in callbacks).
 *  - evx_await() suspends the coroutine until a future settles and returns the
 *    future's status. A future that is already done returns at once without
 *    suspending. Outside a coroutine evx_await() answers EVX_EINVAL at once and
 *    never blocks.
 *  - Interruption: cancelling the future evx_go() returned makes the pending
 *    await return EVX_ECANCELED and every later await (and evx_sleep,
 *    evx_await_job) return EVX_ECANCELED at once, so the coroutine's cleanup
 *    runs and it ends. The future it was waiting on is cancelled too (asyncio's
 *    rule): a queued job is dequeued, a condition / lock / queue waiter leaves,
 *    a running job finishes and its result is freed. A coroutine HTTP handler
 *    gets EVX_EGONE the same way when its client leaves (see
 *    evx_http_route_coro), and evx_loop_free() resumes every coroutine still
 *    suspended with EVX_ECLOSED until it returns: no stack and no frame is left
 *    behind. The first reason sticks: later ones do not replace it.
 *  - Stacks are mmap'd with an inaccessible guard page below each; only the
 *    pages a coroutine touches cost memory, and finished coroutines' stacks are
 *    kept per loop for reuse. Running into the guard page ends the process
 *    with SIGSEGV after a message on stderr naming a coroutine stack overflow
 *    and the stack size (the handler runs on an alternate signal stack).
 *    evexec installs that SIGSEGV/SIGBUS handler at the first evx_go(); faults
 *    elsewhere are passed on to the handler that was there before.
 *
 * Threads: everything here is loop-thread only. The context switch is a few
 * instructions on x86-64 and aarch64 (ucontext elsewhere, or when built with
 * -DEVX_CORO_UCONTEXT=ON); ASan, TSan and valgrind are told about every switch.
 * The floating-point control state (the rounding mode) belongs to each
 * coroutine: one that calls fesetround does not change the loop's.
 */
#ifndef EVEXEC_CORO_H
#define EVEXEC_CORO_H

#include <evexec/common.h>
#include <evexec/executor.h>
#include <evexec/future.h>
#include <evexec/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A coroutine body. Its return value resolves the future evx_go() returned. */
typedef void *(*evx_coro_fn)(void *arg);

/** Default usable stack size of a coroutine: 128 KiB (plus one guard page). */
#define EVX_CORO_STACK_DEFAULT ((size_t)128 * 1024)
/** Smallest stack_size accepted (smaller values are raised to it). */
#define EVX_CORO_STACK_MIN ((size_t)16 * 1024)

/** Coroutine options. Zero fields take the defaults; NULL means all defaults. */
typedef struct evx_coro_opts {
  /** Usable stack bytes, rounded up to whole pages; 0: EVX_CORO_STACK_DEFAULT;
   *  at most 256 MiB. Only touched pages cost memory. */
  size_t stack_size;
  /** Destructor for fn's result when nobody takes it from the future
   *  (evx_future_take); NULL: the result is not freed by evexec. */
  evx_free_fn result_free;
} evx_coro_opts;

/**
 * Start fn(arg) as a coroutine of `loop` and run it until it first suspends
 * or returns; then return. Loop thread only; may be called from a coroutine
 * (the new one runs first, then the caller continues).
 * A macro over evx_go_sized (see "Options structs and the ABI" in common.h);
 * source calling evx_go(loop, fn, arg, opts) is unchanged.
 * @param loop the loop whose thread runs the coroutine.
 * @param fn the coroutine body, called as fn(arg) on its own stack.
 * @param arg passed to fn; it must stay valid for as long as fn uses it.
 * @param ... `opts`, the one argument after arg: options, copied; NULL for
 *        the defaults.
 * @return a future (one reference for the caller) that resolves with fn's
 *         result when fn returns (already resolved if fn returned without
 *         suspending). Cancel it to interrupt the coroutine (see above);
 *         releasing it does not stop the coroutine. NULL (fn never runs) with
 *         evx_last_error() saying why: EVX_EINVAL for a NULL loop or fn,
 *         stack_size > 256 MiB, an option this library does not know, the
 *         wrong thread or a loop being freed; EVX_ENOMEM when the stack or
 *         the future cannot be allocated.
 */
#define evx_go(loop, fn, arg, ...) \
  evx_go_sized((loop), (fn), (arg), __VA_ARGS__, sizeof(evx_coro_opts))
EVX_API evx_future *evx_go_sized(evx_loop *loop, evx_coro_fn fn, void *arg,
                                 const evx_coro_opts *opts, size_t opts_size);
/** The function behind the macro, for its address: reads the first layout of the options. */
EVX_API evx_future *(evx_go)(evx_loop *loop, evx_coro_fn fn, void *arg, const evx_coro_opts *opts);

/**
 * Suspend the calling coroutine until f is done, and return its status:
 * EVX_OK (resolved; read the result with evx_future_result / take) or the
 * negative code it failed with. The caller keeps its reference to f.
 * When the coroutine is interrupted while waiting, returns the reason
 * (EVX_ECANCELED, EVX_EGONE or EVX_ECLOSED) and cancels f; once interrupted,
 * every call returns the reason at once.
 * @return EVX_EINVAL at once outside a coroutine or for a NULL f;
 *         EVX_ENOMEM when the wait cannot be registered.
 */
EVX_API int evx_await(evx_future *f);

/**
 * Tornado's run_on_executor + await: run work(arg) on a worker of ex and
 * suspend until it finished. When the coroutine is interrupted meanwhile, a
 * job that has not started is dequeued (work never runs); a job that runs is
 * waited for, so `arg` (which may live on the coroutine's stack) is never used
 * after this returns. Then the reason is returned.
 * @return EVX_OK after work ran; EVX_EBUSY (queue full) or EVX_ECLOSED
 *         (executor shut down) at once without running work; EVX_ECANCELED /
 *         EVX_EGONE / EVX_ECLOSED when interrupted; EVX_EINVAL outside a
 *         coroutine, for NULL ex or work, or an executor of another loop.
 */
EVX_API int evx_await_job(evx_executor *ex, evx_work_fn work, void *arg);

/**
 * Suspend the calling coroutine for `ms` milliseconds (0: until the next loop
 * iteration: a yield). @return EVX_OK, the interruption reason, or EVX_EINVAL
 * outside a coroutine; EVX_ENOMEM when no timer could be made.
 */
EVX_API int evx_sleep(uint64_t ms);

/** Non-zero when called from inside a coroutine. */
EVX_API int evx_in_coro(void);

#ifdef __cplusplus
}
#endif
#endif /* EVEXEC_CORO_H */
