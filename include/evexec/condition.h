/**
 * @file condition.h
 * evx_condition: tornado.locks.Condition, for long polling. Loop thread only.
 *
 * A waiter is a future. notify resolves waiters oldest first; a waiter whose
 * future is cancelled (for example because its client went away) is removed at
 * once, so a condition that many clients left holds nothing for them.
 */
#ifndef EVEXEC_CONDITION_H
#define EVEXEC_CONDITION_H

#include <evexec/future.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct evx_condition evx_condition;

/** A new condition, owned by the caller (evx_condition_free). NULL on NULL loop / ENOMEM. */
EVX_API evx_condition *evx_condition_new(evx_loop *loop);

/**
 * Wait for a notify. The returned future (one reference for the caller)
 * resolves with a NULL result on notify, fails with EVX_ETIMEDOUT after
 * timeout_ms (0: no timeout) or with EVX_ECLOSED when the condition is freed.
 * Cancel it to stop waiting. NULL on NULL c / ENOMEM / wrong thread.
 */
EVX_API evx_future *evx_condition_wait(evx_condition *c, uint64_t timeout_ms);

/** Wake up to n waiters, oldest first. @return how many were woken (>= 0), or EVX_EINVAL. */
EVX_API int evx_condition_notify(evx_condition *c, size_t n);

/** Wake every waiter. @return how many were woken (>= 0), or EVX_EINVAL. */
EVX_API int evx_condition_notify_all(evx_condition *c);

/** Number of waiters now. 0 for NULL. */
EVX_API size_t evx_condition_waiters(const evx_condition *c);

/**
 * Free; pending waiters fail with EVX_ECLOSED. Loop thread only: from any
 * other thread (a worker) it is refused - nothing is freed, a line goes to
 * stderr. NULL accepted.
 */
EVX_API void evx_condition_free(evx_condition *c);

#ifdef __cplusplus
}
#endif
#endif /* EVEXEC_CONDITION_H */
