/*
 * evx_strand: a serial queue over an executor.
 *
 * DESIGN: a strand has at most one job "active" (on ex->queue or running);
 * the rest wait on the strand's own list. The worker that finishes the
 * active job, under ex->lock, moves the next waiting one onto ex->queue.
 * max_queue counts waiting strand jobs too. All strand state is guarded by
 * its executor's lock.
 */
#include <stdio.h>

#include "executor-internal.h"

void evx__strand_advance_locked(evx_strand *s) {
  s->active = NULL;
  evx__list *n = evx__list_pop_head(&s->waiting);
  if (!n) return;
  s->active = EVX__CONTAINER_OF(n, evx_job, link);
  evx__enqueue_locked(s->ex, s->active, 0);
}

int evx__strand_cancel_waiting_locked(evx_strand *s) {
  evx_executor *ex = s->ex;
  int post = 0;
  evx__list *n;
  while ((n = evx__list_pop_head(&s->waiting)) != NULL) {
    ex->nqueued--;
    ex->stats.cancelled++;
    post |= evx__complete_locked(ex, EVX__CONTAINER_OF(n, evx_job, link), JOB_CANCELLED);
  }
  return post;
}

evx_strand *evx_strand_new(evx_executor *ex) {
  if (!ex || !evx__loop_thread_ok(ex->loop)) return evx__ctor_fail(EVX_EINVAL);
  evx_strand *s = evx_calloc(1, sizeof *s);
  if (!s) return evx__ctor_fail(EVX_ENOMEM);
  s->ex = ex;
  evx__list_init(&s->waiting);
  pthread_mutex_lock(&ex->lock);
  evx__list_insert_tail(&ex->strands, &s->link);
  pthread_mutex_unlock(&ex->lock);
  return s;
}

int evx_strand_submit(evx_strand *s, evx_work_fn work, evx_done_fn done, void *arg) {
  if (!s || !work) return EVX_EINVAL;
  return evx__submit(s->ex, s, work, done, arg, NULL);
}

int evx_strand_submit_job(evx_strand *s, evx_work_fn work, evx_done_fn done, void *arg,
                          evx_job **job) {
  if (!s || !work || !job) return EVX_EINVAL;
  return evx__submit(s->ex, s, work, done, arg, job);
}

void evx_strand_free(evx_strand *s) {
  if (!s) return;
  evx_executor *ex = s->ex;
  if (!evx__loop_thread_ok(ex->loop)) {
    /* A job could still be submitted to it, or its done() be running. */
    fprintf(stderr, "evexec: evx_strand_free called off the loop thread; ignored\n");
    return;
  }
  int post = 0;
  pthread_mutex_lock(&ex->lock);
  post |= evx__strand_cancel_waiting_locked(s);
  /* The active job: cancelled too when it has not started (it sits on
   * ex->queue); a running one finishes as a plain job. */
  if (s->active && s->active->state == JOB_QUEUED)
    post |= evx__cancel_locked(ex, s->active); /* advances s: nothing waits any more */
  else if (s->active)
    s->active->strand = NULL;
  evx__list_remove(&s->link);
  pthread_mutex_unlock(&ex->lock);
  if (post) evx__post(ex);
  evx_free(s);
}
