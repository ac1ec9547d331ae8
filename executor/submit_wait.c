/*
 * evx_submit_wait: a submit that waits for a free slot, for producer
 * threads that are not the loop thread (the loop thread never blocks, so it
 * gets EVX_EBUSY at once from evx_submit).
 *
 * DESIGN
 * - A waiter queues an evx__space_waiter (its own condition variable) on
 *   ex->space_waiters under ex->lock and sleeps until a worker takes a job or
 *   a job is cancelled (one slot: the oldest waiter is woken), the executor
 *   shuts down (all), or its deadline passes. Woken, it leaves the list and
 *   tries an ordinary submit, so every rule of evx_submit (exact max_queue,
 *   shedding, closed) applies unchanged; a submit that loses the race for
 *   the slot waits again, with the same deadline.
 * - Waiting only starts when the queue is full as seen under the lock, so a
 *   slot freed between the failed submit and the wait is never missed.
 * - Lock order: ex->lock only. The wait uses CLOCK_MONOTONIC.
 */
#include "executor-internal.h"

#include <errno.h>
#include <time.h>

typedef struct evx__space_waiter {
  evx__list link; /* ex->space_waiters */
  pthread_cond_t cv;
  int woken;
} evx__space_waiter;

void evx__space_freed_locked(evx_executor *ex, int all) {
  while (!evx__list_empty(&ex->space_waiters)) {
    evx__space_waiter *w = EVX__CONTAINER_OF(evx__list_pop_head(&ex->space_waiters),
                                             evx__space_waiter, link);
    w->woken = 1;
    pthread_cond_signal(&w->cv);
    if (!all) break;
  }
}

static int evx__full_locked(const evx_executor *ex) {
  return !ex->closed && ex->nqueued + ex->reserved >= ex->max_queue;
}

int evx_submit_wait(evx_executor *ex, evx_work_fn work, evx_done_fn done, void *arg,
                    uint64_t timeout_ms) {
  if (!ex || !work || evx__loop_running_here(ex->loop) || evx__current_executor() == ex)
    return EVX_EINVAL;
  if (timeout_ms == 0) return evx__submit(ex, NULL, work, done, arg, NULL);
  struct timespec deadline;
  clock_gettime(CLOCK_MONOTONIC, &deadline);
  uint64_t ns = (uint64_t)deadline.tv_nsec + (timeout_ms % 1000) * 1000000u;
  deadline.tv_sec += (time_t)(timeout_ms / 1000 + ns / 1000000000u);
  deadline.tv_nsec = (long)(ns % 1000000000u);
  int forever = timeout_ms == EVX_WAIT_FOREVER;

  evx__space_waiter w;
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  int crc = pthread_cond_init(&w.cv, &ca);
  pthread_condattr_destroy(&ca);
  if (crc != 0) return EVX_ENOMEM;
  int rc;
  for (;;) {
    pthread_mutex_lock(&ex->lock);
    int timed_out = 0;
    while (evx__full_locked(ex) && !timed_out) {
      w.woken = 0;
      evx__list_insert_tail(&ex->space_waiters, &w.link);
      while (!w.woken) {
        int e = forever ? pthread_cond_wait(&w.cv, &ex->lock)
                        : pthread_cond_timedwait(&w.cv, &ex->lock, &deadline);
        if (e == ETIMEDOUT && !w.woken) {
          evx__list_remove(&w.link);
          timed_out = 1;
          break;
        }
      }
    }
    pthread_mutex_unlock(&ex->lock);
    if (timed_out) {
      rc = EVX_ETIMEDOUT;
      break;
    }
    rc = evx__submit(ex, NULL, work, done, arg, NULL);
    if (rc != EVX_EBUSY) break;
    /* lost the slot to another submitter (or shed): wait again, same deadline */
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (!forever && (now.tv_sec > deadline.tv_sec ||
                     (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec))) {
      rc = EVX_ETIMEDOUT;
      break;
    }
    if (!evx__full_locked(ex)) { /* shed, not full: no slot event will come; poll gently */
      struct timespec pause = {0, 1000000};
      nanosleep(&pause, NULL);
    }
  }
  pthread_cond_destroy(&w.cv);
  return rc;
}
