/*
 * evx_await_job: run_on_executor + await for coroutines (coro.h). Lives in
 * executor/ because core/ knows no executor (the layering test checks it).
 */
#include <evexec/coro.h>
#include <evexec/executor.h>

#include "coro-internal.h"

/* evx_await_job's wait lives on the coroutine's stack: the coroutine does not
 * return from evx_await_job before `done` ran, so it outlives the job. */
typedef struct evx__jobwait {
  evx__coro *co;
  evx_work_fn work;
  void *arg;
  evx_job *job;
  int done;
  int status;
} evx__jobwait;

static void evx__jobwait_work(void *arg) {
  evx__jobwait *w = arg; /* the worker reads only work and arg */
  w->work(w->arg);
}

static void evx__jobwait_done(void *arg, int status) {
  evx__jobwait *w = arg;
  w->done = 1;
  w->status = status;
  evx__coro_wake(w->co, 1);
}

int evx_await_job(evx_executor *ex, evx_work_fn work, void *arg) {
  evx__coro *co = evx__coro_current();
  if (!co || !ex || !work || evx_executor_loop(ex) != evx__coro_loop(co)) return EVX_EINVAL;
  if (evx__coro_err(co)) return evx__coro_err(co);
  evx__jobwait w = {.co = co, .work = work, .arg = arg};
  int rc = evx_submit_job(ex, evx__jobwait_work, evx__jobwait_done, &w, &w.job);
  if (rc != EVX_OK) return rc;
  int cancelled = 0;
  while (!w.done) {
    if (evx__coro_err(co) && !cancelled) {
      cancelled = 1;
      (void)evx_job_cancel(w.job); /* EVX_EBUSY when it runs: wait for it */
      continue;
    }
    evx__coro_yield(co);
  }
  if (evx__coro_err(co)) return evx__coro_err(co);
  return w.status;
}

