/**
 * @file executor.h
 * evx_executor: Tornado's ThreadPoolExecutor - a fixed pool of worker threads
 * with a bounded queue. `work` runs on a worker; `done` runs on the loop thread.
 *
 * Guarantees:
 *  - `done(arg, status)` runs exactly once per accepted job, on the loop
 *    thread, never inside the call that submitted it. status is EVX_OK when
 *    `work` ran, EVX_ECANCELED when the job was cancelled before it started,
 *    EVX_ETIMEDOUT when it waited longer than opts.target_wait_us and was
 *    ended without running (only with that option set).
 *  - A call that fails (any non-zero return) never calls `work` or `done`.
 *  - A full queue answers EVX_EBUSY at once; submit never blocks.
 *  - Completions are posted to the loop in batches with one wakeup per batch.
 */
#ifndef EVEXEC_EXECUTOR_H
#define EVEXEC_EXECUTOR_H

#include <evexec/common.h>
#include <evexec/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Runs on a worker thread. May block. Must not call loop-thread-only APIs. */
typedef void (*evx_work_fn)(void *arg);
/** Runs on the loop thread. status: EVX_OK, EVX_ECANCELED or EVX_ETIMEDOUT (see above). */
typedef void (*evx_done_fn)(void *arg, int status);

typedef struct evx_executor evx_executor;
/**
 * A handle to one accepted job (see evx_submit_job). It is an encoded id (a
 * slot and a generation), not the job's address: once the job's `done` has
 * returned the handle is stale, and evx_job_cancel on it answers EVX_EINVAL -
 * it never reaches the memory, nor a later job that reuses it.
 */
typedef struct evx_job evx_job;
/** A serial queue over an executor: its jobs run one at a time, in order. */
typedef struct evx_strand evx_strand;

/** Executor options. Zero fields take the defaults. */
typedef struct evx_executor_opts {
  unsigned threads;  /**< worker threads; default 4 */
  /**
   * Jobs waiting (not running) before EVX_EBUSY; default 4096. Exact, except
   * that while the loop thread runs this executor's `done` callbacks it
   * holds up to 31 slots in advance for the jobs they submit: a submit from
   * another thread meanwhile may see EVX_EBUSY that many jobs early.
   */
  size_t max_queue;
  const char *name;  /**< for logs, metrics and thread names; copied; default "evx" */
  /**
   * Latency for CPU: a worker that runs out of jobs first polls for new ones
   * for up to this many microseconds before it sleeps, so a job submitted
   * meanwhile starts without a thread wakeup. At most one worker of the
   * executor spins at a time, burning up to one core while it does.
   * Default 0 (sleep at once); at most 1000000.
   */
  unsigned spin_us;
  /**
   * Load shedding: the queue wait a job may have, in microseconds; 0 (the
   * default): off, jobs wait as long as the queue makes them. When set:
   *  - a submit whose job would wait longer - estimated from the jobs ahead,
   *    the workers and the recent run times (an average over about the last
   *    8 jobs) - answers EVX_EBUSY at once (counted in stats `rejected` and
   *    `shed`): the HTTP handler answers 503 with evx_request_reply_busy;
   *  - a queued job that has still waited longer when a worker takes it is
   *    not run: its `done` gets EVX_ETIMEDOUT (counted in `cancelled` and
   *    `expired`). Until the first job completed the run time is unknown, so
   *    only this deadline sheds load.
   * So a job that runs has waited at most about this long, and overload is
   * refused at the door instead of queueing until clients time out (the
   * CoDel idea, as a per-job deadline like folly's expiring tasks). Jobs
   * submitted from `done` callbacks, strands included, are treated the
   * same. At most 600000000 (10 minutes).
   */
  unsigned target_wait_us;
} evx_executor_opts;

#define EVX_SHUTDOWN_DRAIN 0  /**< run every accepted job, then stop the workers */
#define EVX_SHUTDOWN_CANCEL 1 /**< cancel jobs not started; running jobs finish */

/**
 * Create an executor bound to `loop` and start its threads. Loop thread only.
 * A macro over evx_executor_new_sized (see "Options structs and the ABI" in
 * common.h); source calling evx_executor_new(loop, opts) is unchanged.
 * @param loop the loop whose thread runs the `done` callbacks (borrowed;
 *        must outlive the executor).
 * @param ... `opts`, the one argument after loop: options, or NULL for the
 *        defaults; copied.
 * @return the executor, owned by the caller (evx_executor_free; the loop frees
 *         any left at evx_loop_free), or NULL with evx_last_error() saying
 *         why: EVX_EINVAL (NULL loop, wrong thread, threads > 1024,
 *         spin_us > 1000000, target_wait_us > 600000000, a field this library
 *         does not know),
 *         EVX_ENOMEM, EVX_EIO (a thread could not be started).
 */
#define evx_executor_new(loop, ...) \
  evx_executor_new_sized((loop), (__VA_ARGS__), sizeof(evx_executor_opts))
EVX_API evx_executor *evx_executor_new_sized(evx_loop *loop, const evx_executor_opts *opts,
                                             size_t opts_size);
/** The function behind the macro, for its address: reads the first layout of the options. */
EVX_API evx_executor *(evx_executor_new)(evx_loop *loop, const evx_executor_opts *opts);

/**
 * Submit a job. Safe from any thread.
 * @return EVX_OK (done will be called exactly once); EVX_EINVAL (NULL ex or
 *         work; done may be NULL); EVX_EBUSY (queue full); EVX_ECLOSED (after
 *         shutdown); EVX_ENOMEM.
 */
EVX_API int evx_submit(evx_executor *ex, evx_work_fn work, evx_done_fn done, void *arg);

/**
 * Like evx_submit, and stores a handle to the job in *job (which may not be NULL).
 * The handle is owned by the executor and valid until `done` has been called;
 * it is only for evx_job_cancel.
 */
EVX_API int evx_submit_job(evx_executor *ex, evx_work_fn work, evx_done_fn done, void *arg,
                           evx_job **job);

/** evx_submit_wait's timeout meaning "no deadline". */
#define EVX_WAIT_FOREVER ((uint64_t)-1)

/**
 * evx_submit for producer threads that are not the loop thread: when the
 * queue is full it waits for a free slot (a worker taking a job) instead of
 * answering EVX_EBUSY - so a producer needs no sleep-and-retry loop.
 * Waiting producers get slots oldest first. The same rules as evx_submit
 * otherwise: `done` runs on the loop thread, exactly once, only when this
 * returns EVX_OK. The executor must not be freed while a call waits.
 * @param ex the executor.
 * @param work run once on a worker thread, as work(arg).
 * @param done run once on the loop thread afterwards, as done(arg, status)
 *        (see evx_done_fn); may be NULL.
 * @param arg passed to work and done; it must stay valid until done ran
 *        (without done: for as long as work may still run).
 * @param timeout_ms how long to wait for a slot; 0 = try once (as
 *        evx_submit); EVX_WAIT_FOREVER = no deadline.
 * @return EVX_OK; EVX_ETIMEDOUT (still full at the deadline; done is never
 *         called); EVX_ECLOSED (shut down, also while waiting); EVX_EINVAL
 *         (NULL ex/work; called on the thread running the loop, which must
 *         never block; or from one of this executor's own jobs, which could
 *         wait for itself); EVX_ENOMEM; EVX_EBUSY only when load shedding
 *         (target_wait_us) refuses the job at the deadline.
 */
EVX_API int evx_submit_wait(evx_executor *ex, evx_work_fn work, evx_done_fn done, void *arg,
                            uint64_t timeout_ms);

/**
 * Cancel a job. Loop thread only.
 * A job that has not started: `work` will never run and `done(arg,
 * EVX_ECANCELED)` is called in a later loop iteration (not inside this call).
 * A job whose `work` runs now cannot be stopped from outside, but it is asked
 * to: evx_job_cancelled() turns non-zero inside that `work`, which may stop
 * early; its `done` still runs once, with EVX_OK (work ran and returned -
 * its result, if it stopped early, is the work's to mark).
 * @return EVX_OK (cancelled before it started); EVX_EBUSY when the job
 *         already started (if it still runs, it was asked to stop) or
 *         finished (done will report its real outcome); EVX_EINVAL for NULL,
 *         for a stale handle (its `done` already returned) and from another
 *         thread.
 */
EVX_API int evx_job_cancel(evx_job *job);

/**
 * Inside a job's `work`, on its worker thread: non-zero once evx_job_cancel
 * asked the running job to stop (the client left, the future was
 * cancelled). Cheap (a thread-local and an atomic load): poll it in long
 * loops. 0 anywhere else (the loop thread, a thread that is not a worker,
 * a worker between jobs).
 */
EVX_API int evx_job_cancelled(void);

/**
 * Stop accepting jobs: afterwards every submit answers EVX_ECLOSED.
 * DRAIN: every accepted job still runs. CANCEL: jobs not started are
 * cancelled (their `done` gets EVX_ECANCELED); running jobs finish.
 * Never blocks: the `done` callbacks run on the loop thread as the loop runs
 * (or inside evx_executor_free). Calling it again is allowed; CANCEL after
 * DRAIN cancels what is still waiting. Safe from any thread (it takes the
 * executor's lock), including the executor's own jobs.
 * @return EVX_OK, or EVX_EINVAL (NULL, unknown `how`).
 */
EVX_API int evx_executor_shutdown(evx_executor *ex, int how);

/**
 * Free the executor. Loop thread only (or after the loop stopped running).
 * Implies evx_executor_shutdown(ex, EVX_SHUTDOWN_CANCEL) when the executor was
 * not shut down yet, waits for the worker threads (jobs that are running
 * finish; with DRAIN every queued job runs first), then calls every `done`
 * still owed - so no accepted job is lost. Strands on it are freed too.
 * NULL is accepted (no-op).
 */
EVX_API void evx_executor_free(evx_executor *ex);

/** The loop the executor posts its completions to (borrowed). NULL for NULL. */
EVX_API evx_loop *evx_executor_loop(evx_executor *ex);

/** The executor's name (borrowed; lives as long as the executor). */
EVX_API const char *evx_executor_name(evx_executor *ex);

#define EVX_STATS_BUCKETS 32

/**
 * A snapshot of an executor's counters. Counts are since creation.
 * Histograms are log2 buckets of microseconds: bucket 0 counts durations
 * below 1 us, bucket i (i >= 1) counts [2^(i-1), 2^i) us; the last bucket
 * also takes everything longer.
 * Jobs that `done` callbacks submit to their own executor are handed to the
 * workers in batches, when the batch of `done` callbacks ends (or every 32
 * jobs): their queue wait counts from then, and a snapshot taken by another
 * thread meanwhile may not count them yet (the loop thread's own snapshot does).
 */
typedef struct evx_executor_stats {
  unsigned threads;       /**< worker threads */
  uint64_t queued;        /**< jobs waiting now (including strand queues) */
  uint64_t running;       /**< jobs running now */
  uint64_t submitted;     /**< jobs accepted */
  uint64_t completed;     /**< jobs whose work ran to the end */
  uint64_t rejected;      /**< submits answered EVX_EBUSY */
  uint64_t cancelled;     /**< jobs ended before they started (cancelled, or expired) */
  uint64_t wait_ns_total; /**< sum of queue waits of started jobs */
  uint64_t run_ns_total;  /**< sum of run times of completed jobs */
  uint64_t wait_ns_max;
  uint64_t run_ns_max;
  uint64_t wait_hist[EVX_STATS_BUCKETS];
  uint64_t run_hist[EVX_STATS_BUCKETS];
  uint64_t shed;    /**< of `rejected`: refused by the target wait (opts.target_wait_us) */
  uint64_t expired; /**< of `cancelled`: waited past the target wait, ended unrun */
} evx_executor_stats;

/**
 * Copy the executor's counters into *out. Safe from any thread.
 * @return EVX_OK or EVX_EINVAL for NULL.
 */
EVX_API int evx_executor_stats_get(evx_executor *ex, evx_executor_stats *out);

/**
 * The value (in microseconds, the upper edge of a bucket) below which the
 * fraction `q` (0..1) of the recorded durations fall; 0 when the histogram is empty.
 */
EVX_API uint64_t evx_stats_quantile_us(const uint64_t hist[EVX_STATS_BUCKETS], double q);

/**
 * Create a strand (serial queue) on an executor. Loop thread only.
 * Jobs submitted to a strand run one at a time, in submission order, on the
 * executor's workers; they count against the executor's max_queue.
 * @return the strand, owned by the caller (evx_strand_free, or freed with the
 *         executor), or NULL (NULL ex, out of memory).
 */
EVX_API evx_strand *evx_strand_new(evx_executor *ex);

/** Submit to a strand. Same contract and return codes as evx_submit. Safe from any thread. */
EVX_API int evx_strand_submit(evx_strand *s, evx_work_fn work, evx_done_fn done, void *arg);

/** Like evx_strand_submit, with a handle for evx_job_cancel. */
EVX_API int evx_strand_submit_job(evx_strand *s, evx_work_fn work, evx_done_fn done, void *arg,
                                  evx_job **job);

/**
 * Free a strand. Loop thread only. Jobs still waiting on it are cancelled
 * (their `done` gets EVX_ECANCELED); a job that is running finishes normally.
 * NULL is accepted. From another thread while the loop runs it is ignored
 * (one line on stderr), as evx_executor_free is.
 */
EVX_API void evx_strand_free(evx_strand *s);

#ifdef __cplusplus
}
#endif
#endif /* EVEXEC_EXECUTOR_H */
