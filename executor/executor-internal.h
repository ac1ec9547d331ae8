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
  /* Threads blocked in evx_submit_wait for a free slot (evx__space_waiter,
   * oldest first, each on its own condition variable): woken one per slot
   * freed (a job taken or cancelled), all at shutdown. */
  evx__list space_waiters;
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
  /* Queue slots handed to the draining thread (its `slots` plus its
   * `ndeferred`) and not yet spliced. Every submitter admits a job only
   * while nqueued + reserved < max_queue, so max_queue stays exact; the
   * price: another thread may see EVX_EBUSY up to EVX__WAKE_BATCH - 1 jobs
   * early while a drain holds unused slots. Workers of a closed executor
   * wait for reserved == 0 before they exit (the splice that zeroes it
   * broadcasts), so no deferred job is stranded. */
  size_t reserved;
  int closed;
  /* shutdown(CANCEL) ran: deferred jobs spliced afterwards are cancelled
   * instead of queued (they were accepted before the shutdown). */
  int cancel_all;
  evx_job *completed, *completed_tail;
  int posted;      /* post_node is on the loop queue */
  evx_job *free_jobs;
  size_t nfree;
  evx_executor_stats stats;

  evx__cbnode post_node;
  /* `closed`, published for the lock-free deferred submit: stored with
   * release after closed is set; loaded with acquire, so a done() that
   * learnt of a shutdown made on another thread sees the executor closed. */
  atomic_int closed_pub;
  atomic_uint queue_gen; /* bumped under the lock when jobs arrive while a worker spins */
  uint64_t spin_ns;      /* opts.spin_us; constant after creation */

  /* The in-drain fast path (DESIGN in executor.c). These fields belong to
   * the thread running evx__executor_drain(ex) and are touched only by it,
   * without the lock (evx__draining_ex == ex proves the caller is it; a
   * nested drain of another executor leaves them alone). Outside a drain
   * deferred is empty and ndeferred == slots == 0: the drain's end splices
   * everything and gives unused slots back. */
  evx__list deferred;   /* accepted jobs, QUEUED, not yet on ex->queue; counted in
                           reserved, not in nqueued or stats (another thread's
                           stats_get misses them until the splice) */
  size_t ndeferred;     /* length of deferred */
  size_t slots;         /* reserved slots not used yet (reserved = slots + ndeferred) */
  evx_job *lfree;       /* nodes whose done() ran in this drain, or taken from the
                           free list by refill: reused first, back to it at the end */
  size_t drain_submits; /* submits to ex made by this drain so far (the first locks) */

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
/* Lock ex for a call that must count the jobs the caller's own drain
 * deferred (stats, shutdown): splices them first when the caller is ex's
 * draining thread. Returns with the lock held: 1 to evx__post after unlocking. */
int evx__lock_seeing_deferred(evx_executor *ex);

/* strand.c */
/* The strand's active job left it (finished or cancelled): queue the next. */
void evx__strand_advance_locked(evx_strand *s);
/* Cancel every job waiting behind the active one (not the active one).
 * Returns 1 to post. */
int evx__strand_cancel_waiting_locked(evx_strand *s);

/* stats.c */
/* Add one duration to a total, a max and a log2-microsecond histogram. */
/* submit_wait.c: a slot was freed (all = 0) or the executor closed (all = 1):
 * wake evx_submit_wait callers. ex->lock held. */
void evx__space_freed_locked(evx_executor *ex, int all);
/* The executor whose job runs on this thread now, or NULL (executor.c). */
evx_executor *evx__current_executor(void);

/* stats.c: the executor's samples for evx_loop_metrics_text (its loop member's on_metrics). */
struct evx_metrics;
void evx__executor_metrics(evx__loop_member *m, struct evx_metrics *out);
void evx__record(uint64_t *total, uint64_t *max, uint64_t *hist, uint64_t ns);

#endif
