/* PRIVATE to evexec: never installed, never included by users.
 * The executor's state, shared by executor/executor.c (pool, job queue,
 * drain), executor/strand.c (serial queues) and executor/stats.c (counters).
 * The DESIGN notes, the lock rule and the job life cycle are at the top of
 * executor.c. */
#ifndef EVX_EXECUTOR_INTERNAL_H
#define EVX_EXECUTOR_INTERNAL_H

#include <evexec/executor.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <pthread.h>
#include <stdatomic.h>

#include "handle-internal.h"
#include "loop-internal.h"

#define EVX__DEFAULT_THREADS 4
#define EVX__DEFAULT_MAX_QUEUE 4096
#define EVX__MAX_THREADS 1024
#define EVX__JOB_CACHE_MAX 4096
#define EVX__WAKE_BATCH 32 /* jobs submitted inside a drain per splice and wakeup */
#define EVX__MAX_SPIN_US 1000000
#define EVX__MAX_TARGET_WAIT_US 600000000u /* 10 minutes */

/* JOB_EXPIRED: a worker took it past its deadline (t_queued + the target
 * wait) and ended it without running it; done gets EVX_ETIMEDOUT. */
enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_CANCELLED, JOB_EXPIRED };

struct evx_job {
  evx__list link; /* ex->queue, strand->waiting, or nowhere while running */
  struct evx_job *next_done; /* ex->completed chain, and the free list */
  evx_work_fn work;
  evx_done_fn done;
  void *arg;
  evx_executor *ex;
  evx_strand *strand; /* NULL once the strand is freed */
  uint64_t t_queued;
  int state;
  /* The public handle (evx_submit_job), or 0: live from the submit until
   * done() returned, so a handle kept longer is stale, never this node's
   * next job. Written at submit, dropped by the drain (loop thread). */
  evx__hid hid;
  /* evx_job_cancel reached the job while it ran: its work sees it through
   * evx_job_cancelled(). Set by the loop thread, read by the worker. */
  atomic_int cancel_requested;
};

struct evx_strand {
  evx__list link;    /* ex->strands */
  evx__list waiting; /* jobs behind the active one */
  evx_job *active;   /* queued on ex->queue or running; NULL when idle */
  evx_executor *ex;
};

struct evx_executor {
  evx_loop *loop;
  evx__loop_member member; /* the loop closes a leftover executor (evx-private.h) */
  char *name;
  unsigned nthreads;
  size_t max_queue;
  pthread_t *threads;
  unsigned started;

  pthread_mutex_t lock; /* guards everything below */
  pthread_cond_t work_cv;
  evx__list queue;
  evx__list strands;
  size_t nqueued; /* on ex->queue plus waiting on strands */
  size_t nrunning;
  /* Load shedding (opts.target_wait_us; 0: off): an EWMA (1/8) of run
   * times, written by workers after each job; submits refuse a job whose
   * estimated wait exceeds target_ns, and workers end queued jobs that
   * waited longer (JOB_EXPIRED). target_ns is constant after creation. */
  uint64_t run_ewma_ns;
  uint64_t target_ns;
  unsigned nidle;
  unsigned nspinning;  /* 0 or 1: a worker polls queue_gen instead of sleeping */
  int spin_claimed;    /* a job was left to the spinning worker (no signal sent for it) */
  unsigned wakes_owed; /* signals skipped by submits inside our own drain (see DESIGN) */
  size_t reserved;     /* queue slots handed to the draining thread, not yet spliced */
  int closed;
  int cancel_all; /* shutdown(CANCEL) ran: deferred jobs spliced later are cancelled */
  evx_job *completed, *completed_tail;
  int posted;      /* post_node is on the loop queue */
  evx_job *free_jobs;
  size_t nfree;
  evx_executor_stats stats;

  evx__cbnode post_node;
  atomic_int closed_pub; /* closed, readable without the lock (deferred submits) */
  atomic_uint queue_gen; /* bumped under the lock when jobs arrive while a worker spins */
  uint64_t spin_ns;      /* opts.spin_us; constant after creation */

  /* Owned by the thread running evx__executor_drain(ex), only while it runs
   * (see DESIGN): jobs submitted from our done() callbacks, not yet on queue. */
  evx__list deferred;
  size_t ndeferred;
  size_t slots;       /* reserved slots not used yet */
  evx_job *lfree;     /* nodes whose done() ran in this drain, reused first */
  size_t drain_submits; /* submits to ex made by this drain so far */

  /* Loop thread only. */
  struct event wake_ev; /* pays wakes_owed later in this loop iteration (see DESIGN) */
  int wake_ev_active;   /* wake_ev was made active and has not run yet */
  int draining;       /* inside evx__executor_drain */
  int free_requested; /* evx_executor_free called from one of our done callbacks */
  int freeing;        /* evx_executor_free is tearing down: further free calls are no-ops */
};

/* executor.c. "locked": ex->lock held. */
/* Append a job to the completed list in `state`; returns 1 when the caller
 * must post ex->post_node to the loop (evx__post) after unlocking. */
int evx__complete_locked(evx_executor *ex, evx_job *job, int state);
/* Post ex's completions to the loop (thread-safe; lock not held). */
void evx__post(evx_executor *ex);
/* Put a job on the run queue and wake a worker (owe: leave the wake owed). */
void evx__enqueue_locked(evx_executor *ex, evx_job *job, int owe);
/* Cancel a QUEUED job wherever it waits. Returns 1 to post. */
int evx__cancel_locked(evx_executor *ex, evx_job *job);
/* Every submit: s is NULL for a plain job; handle receives the job if not NULL. */
int evx__submit(evx_executor *ex, evx_strand *s, evx_work_fn work, evx_done_fn done, void *arg,
                evx_job **handle);

/* strand.c */
/* The strand's active job left it (finished or cancelled): queue the next. */
void evx__strand_advance_locked(evx_strand *s);

/* stats.c */
/* Add one duration to a total, a max and a log2-microsecond histogram. */
void evx__record(uint64_t *total, uint64_t *max, uint64_t *hist, uint64_t ns);

#endif
