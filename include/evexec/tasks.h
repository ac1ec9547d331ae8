/**
 * @file tasks.h
 * evx_tasks: durable deferred tasks - Celery/RQ for evexec (optional library
 * evexec_tasks; CMake evexec::evexec_tasks, pkg-config evexec_tasks).
 *
 * A task is a name plus payload bytes. The loop thread enqueues it; the
 * returned future resolves once the task is durable (committed to SQLite,
 * acknowledged by Redis, or committed to a Redis queue's outbox). A handler
 * registered under that name later runs it on a worker thread of the
 * queue's own executor - in this process, or in another process (another
 * machine, with the Redis backend) that opened the same queue.
 *
 * Backends, chosen by URL at evx_tasks_open:
 *  - "sqlite:PATH"   the embedded default: a table in the SQLite database at
 *                    PATH (WAL). The enqueues of one loop iteration are
 *                    group-committed in one transaction on the writer thread.
 *                    With opts->db the tasks live in the application's own
 *                    database (its writer thread), and evx_tasks_enqueue_sql
 *                    adds a task inside the application's own transaction.
 *  - "redis://HOST:PORT/DB", "unix:/path/redis.sock?db=N"
 *                    Redis Streams with a consumer group: workers on other
 *                    machines run the handlers. With opts->db the
 *                    application's database is a local outbox: enqueues (and
 *                    evx_tasks_enqueue_sql, in the application's transaction)
 *                    commit there and are forwarded to Redis, so they survive
 *                    Redis being down; without it enqueue fails with EVX_EIO
 *                    while Redis is down. See docs/TASKS.md.
 *
 * Delivery is at-least-once: a delivered task is leased for
 * opts->visibility_ms; a lease not completed in time (the process was killed,
 * the handler hung) is delivered again, with the attempt count raised.
 * Handlers must therefore be idempotent (docs/TASKS.md says how). A handler
 * answers DONE, RETRY (with backoff: exponential with jitter, up to the
 * task's max attempts) or FAIL (permanent). A task that failed for good or
 * ran out of attempts moves to the dead-letter store with its last error,
 * where it can be listed, retried and purged (API below, and the evx-tasks
 * command-line tool). Nothing is dropped silently: every way a task can end
 * other than DONE ends in the dead-letter store.
 *
 * Threads: every function is loop-thread only (EVX_EINVAL / a failed future
 * from another thread while the loop runs), except the evx_task_* accessors
 * (a handler's worker thread) and evx_tasks_enqueue_sql (the thread running
 * an evx_sqlite_call on the tasks database).
 *
 * Life cycle: evx_tasks_open -> evx_tasks_register (any number) ->
 * evx_tasks_start (begins leasing, if the role consumes) -> ... ->
 * evx_tasks_shutdown (future) -> evx_tasks_free. The queue is a member of its
 * loop: evx_loop_free frees a queue the application did not free.
 */
#ifndef EVEXEC_TASKS_H
#define EVEXEC_TASKS_H

#include <evexec/common.h>
#include <evexec/future.h>
#include <evexec/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct evx_tasks evx_tasks;
/** A task as its handler sees it; borrowed, valid until the handler returns. */
typedef struct evx_task evx_task;
struct evx_sqlite;
struct sqlite3;

/** What a handler answers. Any other value is treated as EVX_TASK_RETRY with
 *  the error "handler returned invalid result N" (logged and counted). */
typedef enum evx_task_result {
  EVX_TASK_DONE = 0,  /**< completed: acknowledged, removed */
  EVX_TASK_RETRY = 1, /**< failed this time: retried after backoff, or dead when out of attempts */
  EVX_TASK_FAIL = 2   /**< failed for good: moved to the dead-letter store now */
} evx_task_result;

/** A task handler. Runs on a worker thread of the queue; may block. It must
 *  not call loop-thread-only functions (use evx_add_callback). */
typedef evx_task_result (*evx_task_fn)(evx_task *task, void *arg);

/** Which half of the work this process does. */
typedef enum evx_tasks_role {
  EVX_TASKS_ROLE_ALL = 0,     /**< enqueue and run handlers (default) */
  EVX_TASKS_ROLE_PRODUCER = 1, /**< enqueue only (a web process); never leases */
  EVX_TASKS_ROLE_WORKER = 2   /**< run handlers only (a worker process); may still enqueue */
} evx_tasks_role;

/** evx_tasks_opts.synchronous (SQLite backend; ignored by Redis). */
#define EVX_TASKS_SYNC_FULL 0   /**< PRAGMA synchronous=FULL: durable across power loss (default) */
#define EVX_TASKS_SYNC_NORMAL 1 /**< synchronous=NORMAL: durable across a process crash, not power loss */

/** Queue options. Zero fields take the defaults. */
typedef struct evx_tasks_opts {
  const char *queue;       /**< queue name (several queues may share a database / Redis); default "default"; copied */
  evx_tasks_role role;     /**< default EVX_TASKS_ROLE_ALL */
  unsigned workers;        /**< handler threads; default 2 */
  size_t max_pending;      /**< tasks not yet completed (ready + delayed + leased) before enqueue answers
                                EVX_EBUSY; default 100000 */
  size_t max_payload;      /**< largest payload in bytes; default 1 MiB, at most 64 MiB */
  uint32_t visibility_ms;  /**< lease length; default 30000 */
  unsigned max_attempts;   /**< default for tasks that do not set theirs; default 5 */
  uint32_t backoff_ms;     /**< first retry delay; doubled per attempt, with jitter; default 1000 */
  uint32_t backoff_max_ms; /**< retry delay cap; default 300000 */
  uint32_t poll_ms;        /**< how often an idle worker looks for due tasks; default 200 */
  int synchronous;         /**< EVX_TASKS_SYNC_FULL (default) or EVX_TASKS_SYNC_NORMAL */
  /** SQLite backend: keep the tasks in this already open database (the
   *  application's), written on its writer thread; the URL's PATH must name
   *  the same file. Redis backend: a local outbox - enqueues (and
   *  evx_tasks_enqueue_sql) are committed to this database first (its writer
   *  thread, group-committed) and forwarded to Redis in order, each with an
   *  idempotency key, so they survive Redis being down; the rows waiting
   *  count against max_pending (docs/TASKS.md, "The outbox"). Borrowed: must
   *  outlive the queue. */
  struct evx_sqlite *db;
} evx_tasks_opts;

/**
 * Open a queue on `url` for `loop`. Blocking (it may touch a file or connect):
 * call it at start-up, on the loop thread.
 * A macro over evx_tasks_open_sized (see "Options structs and the ABI" in
 * common.h); source calling evx_tasks_open(loop, url, opts, out, errmsg) is
 * unchanged.
 * @param loop the loop the queue belongs to (borrowed; must outlive it).
 * @param url the backend (see above: "sqlite:PATH", "redis://...",
 *        "unix:..."); read during the call only.
 * @param ... the three arguments after url, `opts, out, errmsg`:
 *        - `opts`: options or NULL for the defaults; copied;
 *        - `out`: receives the queue, owned by the caller (evx_tasks_free);
 *        - `errmsg`: if not NULL, receives NULL or a message saying why it
 *          failed, to free with evx_free().
 * @return EVX_OK; EVX_EINVAL (NULL loop/url/out, unknown scheme, bad option,
 *         wrong thread); EVX_EIO (the backend could not be opened: *errmsg);
 *         EVX_ENOMEM. A Redis server that is down at open is not an error:
 *         the queue reconnects with backoff (enqueue answers EVX_EIO
 *         meanwhile, or goes to the outbox with opts->db). An option this
 *         version of evexec_tasks does not know, set non-zero, is EVX_EINVAL
 *         too.
 */
#define evx_tasks_open(loop, url, ...) \
  evx_tasks_open_sized((loop), (url), __VA_ARGS__, sizeof(evx_tasks_opts))
EVX_API int evx_tasks_open_sized(evx_loop *loop, const char *url, const evx_tasks_opts *opts,
                                 evx_tasks **out, char **errmsg, size_t opts_size);
/** The function behind the macro, for its address: reads the first layout of the options. */
EVX_API int(evx_tasks_open)(evx_loop *loop, const char *url, const evx_tasks_opts *opts,
                            evx_tasks **out, char **errmsg);

/**
 * Register the handler for tasks called `name` (copied; 1..128 bytes of
 * [A-Za-z0-9_.:-]). Before or after evx_tasks_start.
 * @return EVX_OK; EVX_EINVAL (NULL, bad name, name already registered).
 */
EVX_API int evx_tasks_register(evx_tasks *q, const char *name, evx_task_fn fn, void *arg);

/**
 * Start leasing and running tasks (roles ALL and WORKER; a no-op for
 * PRODUCER). Tasks left by an earlier process - ready, in backoff, or leased
 * by a process that died - are resumed from where they were.
 * @return EVX_OK; EVX_EINVAL (NULL, started twice, shut down).
 */
EVX_API int evx_tasks_start(evx_tasks *q);

/** Per-task options. Zero fields take the queue's defaults. */
typedef struct evx_task_opts {
  uint64_t delay_ms;     /**< run no earlier than this many ms from now; default 0 */
  unsigned max_attempts; /**< deliveries before the task is dead; 0: the queue's */
  uint32_t backoff_ms;   /**< first retry delay; 0: the queue's */
  /** Idempotency key (copied; at most 200 bytes), or NULL. A second enqueue
   *  with a key already used by a task of this queue adds nothing and
   *  resolves with the first task's id. Keys are remembered until the task
   *  is purged (SQLite) or for 7 days (Redis). */
  const char *key;
} evx_task_opts;

/**
 * Enqueue a task. Loop thread only.
 * @param q the queue.
 * @param name the task's name (copied): 1..128 bytes of [A-Za-z0-9_.:-]; in
 *        role ALL a handler must be registered for it.
 * @param payload copied before this returns; 1..opts.max_payload bytes.
 * @param len the payload's length in bytes.
 * @param opts per-task options, or NULL.
 * @return a future (one reference for the caller) that resolves, once the
 *         task is durable, with its id: a NUL-terminated string owned by the
 *         future (evx_future_take it and evx_free it to keep it). It fails
 *         with EVX_EINVAL (empty or oversized payload, bad name, a name no
 *         handler is registered for in role ALL), EVX_EBUSY (max_pending
 *         reached - answer 503), EVX_ECLOSED (shut down), EVX_EIO (the
 *         backend failed, or Redis is unreachable without an outbox) or
 *         EVX_ENOMEM; such failures are already settled when this returns.
 *         NULL only for a NULL queue, wrong thread or no memory for the future.
 *         A failed enqueue stored nothing.
 */
EVX_API evx_future *evx_tasks_enqueue(evx_tasks *q, const char *name, const void *payload,
                                      size_t len, const evx_task_opts *opts);

/**
 * Enqueue inside the application's own SQLite transaction (a queue with
 * opts->db: the SQLite backend, or the Redis backend's outbox): call it from
 * an evx_sqlite_call(db, EVX_SQL_WRITE, ...) function with that call's
 * connection, where db is the queue's opts->db; the task commits or rolls
 * back with the application's rows (on Redis: it is forwarded after the
 * commit). Runs on that worker thread. Without opts->db: EVX_EINVAL.
 * @param q the queue.
 * @param conn the connection evx_sqlite_call gave fn (the queue's opts->db
 *        writer), inside the application's transaction.
 * @param name the task's name (copied): 1..128 bytes of [A-Za-z0-9_.:-]; in
 *        role ALL a handler must be registered for it.
 * @param payload copied before this returns; 1..opts.max_payload bytes.
 * @param len the payload's length in bytes.
 * @param opts per-task options, or NULL.
 * @param id_out if not NULL, receives the task id (free with evx_free), or
 *        the first task's id when the idempotency key was already used.
 * @return EVX_OK; EVX_EINVAL (as evx_tasks_enqueue, or conn is not the
 *         queue's database, no opts->db); EVX_EBUSY (max_pending);
 *         EVX_EIO (SQLite error; the caller should roll back); EVX_ENOMEM.
 */
EVX_API int evx_tasks_enqueue_sql(evx_tasks *q, struct sqlite3 *conn, const char *name,
                                  const void *payload, size_t len, const evx_task_opts *opts,
                                  char **id_out);

/* ---- a handler's view of its task (worker thread; borrowed until it returns) ---- */
EVX_API const char *evx_task_id(const evx_task *t);
EVX_API const char *evx_task_name(const evx_task *t);
/** Payload bytes (borrowed); *len receives the length when len is not NULL. */
EVX_API const void *evx_task_payload(const evx_task *t, size_t *len);
/** The idempotency key, or NULL. */
EVX_API const char *evx_task_key(const evx_task *t);
/** 1 on the first delivery, 2 on the next, ... */
EVX_API unsigned evx_task_attempt(const evx_task *t);
EVX_API unsigned evx_task_max_attempts(const evx_task *t);
/** Non-zero once the queue is shutting down past its grace: stop early and answer RETRY. */
EVX_API int evx_task_cancelled(const evx_task *t);
/** The message kept with a RETRY or FAIL answer (printf format; at most 1 KiB kept). */
EVX_API void evx_task_set_error(evx_task *t, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* ---- dead-letter store (loop thread; futures) ---- */

/** One dead task, as listed. */
typedef struct evx_task_info {
  char *id;
  char *name;
  void *payload;
  size_t len;
  char *key;           /**< or NULL */
  unsigned attempts;   /**< deliveries it had */
  char *last_error;    /**< or NULL */
  int64_t enqueued_ms; /**< wall clock, ms since the epoch */
  int64_t died_ms;
} evx_task_info;

typedef struct evx_task_list {
  size_t n;
  evx_task_info *items;
} evx_task_list;

/** Free a list and everything in it. NULL accepted. */
EVX_API void evx_task_list_free(evx_task_list *l);

/** Resolves with an evx_task_list * (owned by the future; free it with
 *  evx_task_list_free after evx_future_take) of up to `limit` dead tasks,
 *  oldest first. NULL only as evx_tasks_enqueue. */
EVX_API evx_future *evx_tasks_dead_list(evx_tasks *q, size_t limit);
/** Move dead task `id` (NULL: every dead task) back to ready with its attempt
 *  count reset. Resolves with a uint64_t * count (owned by the future). */
EVX_API evx_future *evx_tasks_dead_retry(evx_tasks *q, const char *id);
/** Delete dead task `id` (NULL: every dead task). Resolves with a uint64_t * count. */
EVX_API evx_future *evx_tasks_dead_purge(evx_tasks *q, const char *id);

/* ---- metrics ---- */
typedef struct evx_tasks_stats {
  /* backend counts for the whole queue (every process), as of the last refresh
     (every 100..1000 ms: more often while counting is cheap) */
  uint64_t ready, delayed, leased, dead;
  uint64_t counted_ms;   /**< wall clock (ms since the epoch) of that refresh; 0 before the first */
  /* this process's counters since open */
  uint64_t enqueued;   /**< enqueues that became durable */
  uint64_t rejected;   /**< enqueues refused (EVX_EBUSY / EVX_EINVAL / EVX_EIO) */
  uint64_t deduplicated; /**< enqueues answered with an existing task (idempotency key) */
  uint64_t completed;  /**< handlers that answered DONE */
  uint64_t retried;    /**< RETRY answers (and expired leases this process took over) */
  uint64_t failed;     /**< tasks this process moved to the dead-letter store */
  uint64_t redelivered; /**< deliveries with attempt > 1 */
  uint64_t running;    /**< handlers running now */
  uint64_t run_ns_total; /**< handler run time, summed */
  uint64_t run_ns_max;
  uint64_t run_hist[24]; /**< handler run times: bucket i counts runs < 2^i microseconds (last: the rest) */
  /** Redis backend with opts.db: tasks in the local outbox, not yet
   *  forwarded to Redis (this database, last count); 0 otherwise. */
  uint64_t outbox;
} evx_tasks_stats;

/**
 * Fill *out. Loop thread.
 * A macro over evx_tasks_stats_get_sized, which fills the first `out_size`
 * bytes only: fields are only ever appended to evx_tasks_stats, so a program
 * built against older headers gets the layout it knows.
 * @param q the queue.
 * @param out receives the stats.
 * @return EVX_OK or EVX_EINVAL.
 */
#define evx_tasks_stats_get(q, out) \
  evx_tasks_stats_get_sized((q), (out), sizeof(evx_tasks_stats))
/**
 * The function behind evx_tasks_stats_get.
 * @param q the queue.
 * @param out receives the stats.
 * @param out_size sizeof(evx_tasks_stats) as the caller was compiled with;
 *        at least the first layout (up to run_hist).
 * @return EVX_OK or EVX_EINVAL.
 */
EVX_API int evx_tasks_stats_get_sized(evx_tasks *q, evx_tasks_stats *out, size_t out_size);
/** The function behind the macro, for its address: fills the first layout
 *  (up to run_hist). */
EVX_API int(evx_tasks_stats_get)(evx_tasks *q, evx_tasks_stats *out);
/** The queue name (borrowed). */
EVX_API const char *evx_tasks_queue_name(const evx_tasks *q);
/** The handler executor (borrowed; for metrics). NULL for role PRODUCER. */
EVX_API evx_executor *evx_tasks_executor(evx_tasks *q);

/**
 * Stop leasing; let running handlers finish for up to grace_ms (then
 * evx_task_cancelled() turns true for them); leases of tasks not run are
 * released so another worker (or the next start) takes them at once; pending
 * enqueues still become durable or fail. Later enqueues answer EVX_ECLOSED.
 * @return a future (one reference) that resolves once every handler returned
 *         and the backend is idle; NULL for NULL q or wrong thread. A second
 *         call returns a new reference to the same future.
 */
EVX_API evx_future *evx_tasks_shutdown(evx_tasks *q, uint64_t grace_ms);

/**
 * Free the queue: shuts down with grace 0 if not done, waits for running
 * handlers (they cannot be killed; evx_task_cancelled() tells them to stop),
 * settles every owed future, closes the backend. Loop thread only, or after
 * the loop stopped; not from inside one of the queue's own callbacks.
 * NULL accepted.
 */
EVX_API void evx_tasks_free(evx_tasks *q);

#ifdef __cplusplus
}
#endif
#endif /* EVEXEC_TASKS_H */
