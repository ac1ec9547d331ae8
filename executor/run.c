/*
 * evx_run_on_executor: Tornado's run_on_executor - a job whose outcome
 * settles a future. Built on the public executor and future calls plus the
 * future's cancel hook, so core/ (futures) needs nothing of executor/.
 */
#include <evexec/future.h>

#include "future-internal.h"
#include "loop-internal.h"

typedef struct evx__call {
  evx_future *f;
  evx_call_fn fn;
  void *arg;
  evx_free_fn arg_free;
  evx_free_fn result_free;
  void *result; /* written by the worker, read on the loop after done */
  int rc;
  evx_job *job;
} evx__call;

static void evx__call_work(void *p) {
  evx__call *c = p;
  c->result = NULL;
  c->rc = c->fn(c->arg, &c->result);
}

static void evx__call_done(void *p, int status) {
  evx__call *c = p;
  evx_future *f = c->f;
  evx__future_set_cancel_hook(f, NULL, NULL); /* ours, if a cancel did not clear it */
  if (status == EVX_OK && c->rc == EVX_OK) {
    if (evx_future_resolve(f, c->result, c->result_free) != EVX_OK && c->result && c->result_free)
      c->result_free(c->result); /* nobody wants it any more */
  } else {
    int err = status != EVX_OK ? status : c->rc < 0 ? c->rc : EVX_EIO;
    (void)evx_future_fail(f, err);
  }
  if (c->arg_free) c->arg_free(c->arg);
  evx_future_release(f);
  evx_free(c);
}

static void evx__call_cancel(evx_future *f, void *ctx) {
  (void)f;
  evx__call *c = ctx;
  /* EVX_EBUSY: it runs; evx__call_done frees its result. */
  (void)evx_job_cancel(c->job);
}

evx_future *evx_run_on_executor(evx_executor *ex, evx_call_fn fn, void *arg, evx_free_fn arg_free,
                                evx_free_fn result_free) {
  if (!ex || !fn) return NULL;
  evx_future *f = evx_future_new(evx_executor_loop(ex));
  if (!f) return NULL;
  evx__call *c = evx_calloc(1, sizeof *c);
  int rc = EVX_ENOMEM;
  if (c) {
    *c = (evx__call){.f = f, .fn = fn, .arg = arg, .arg_free = arg_free, .result_free = result_free};
    evx_future_ref(f); /* the job's reference */
    rc = evx_submit_job(ex, evx__call_work, evx__call_done, c, &c->job);
    if (rc == EVX_OK) {
      evx__future_set_cancel_hook(f, evx__call_cancel, c);
      return f;
    }
    evx_future_release(f); /* the job's reference back: the caller's remains */
    evx_free(c);
  }
  (void)evx_future_fail(f, rc);
  if (arg_free) arg_free(arg);
  return f;
}
