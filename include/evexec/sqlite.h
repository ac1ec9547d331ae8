/**
 * @file sqlite.h
 * evx_sqlite: SQLite on worker pools (optional library evexec_sqlite).
 *
 * One database, opened for one loop, gets two executors:
 *  - a reader pool (N threads). Each reader thread lazily opens its OWN
 *    connection the first time it runs a query and keeps it in thread-local
 *    storage until the thread exits (at evx_sqlite_close). A connection is
 *    never used by two threads. Reader connections are `query_only`: a write
 *    sent to the readers fails with SQLite's "attempt to write a readonly
 *    database".
 *  - one writer thread with its own connection. Every write goes through it
 *    in submission order (a serial queue), so writes never fight each other
 *    for the database lock, and readers (WAL mode) never block the writer nor
 *    the writer the readers.
 * Every connection has `busy_timeout` set, so a checkpoint or an outside
 * process holding the lock makes a query wait, not fail at once.
 *
 * Queries take bound parameters (never SQL built from strings) and hand the
 * loop thread a materialised, typed result (rows x columns) that the receiver
 * owns and frees with evx_sql_result_free(). SQLite errors come back as a
 * status plus SQLite's own message.
 *
 * This header is not included by evexec.h; link evexec_sqlite
 * (CMake: evexec::evexec_sqlite).
 */
#ifndef EVEXEC_SQLITE_H
#define EVEXEC_SQLITE_H

#include <evexec/executor.h>
#include <evexec/future.h>
#include <evexec/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Value types; the same as SQLite's storage classes. */
typedef enum evx_sql_type {
  EVX_SQL_NULL = 0,
  EVX_SQL_INT = 1,  /**< 64-bit integer: v.i */
  EVX_SQL_REAL = 2, /**< double: v.d */
  EVX_SQL_TEXT = 3, /**< UTF-8 text: v.s.p (NUL-terminated) and v.s.len (bytes, without the NUL) */
  EVX_SQL_BLOB = 4  /**< bytes: v.s.p and v.s.len */
} evx_sql_type;

/**
 * One typed value: a query parameter or a result cell.
 * As a parameter, text/blob pointers are borrowed and copied by the query
 * call, so the caller may free them as soon as the call returns.
 * In a result, text/blob bytes are owned by the result.
 */
typedef struct evx_sql_value {
  evx_sql_type type;
  union {
    int64_t i;
    double d;
    struct {
      const char *p;
      size_t len;
    } s;
  } v;
} evx_sql_value;

/** Parameter constructors (by value; nothing is allocated). */
EVX_API evx_sql_value evx_sql_null(void);
EVX_API evx_sql_value evx_sql_int(int64_t i);
EVX_API evx_sql_value evx_sql_real(double d);
/** Text parameter; s may be NULL (gives SQL NULL). The bytes are copied by the query call. */
EVX_API evx_sql_value evx_sql_text(const char *s);
/** Text parameter of `len` bytes (need not be NUL-terminated). */
EVX_API evx_sql_value evx_sql_textn(const char *s, size_t len);
EVX_API evx_sql_value evx_sql_blob(const void *p, size_t len);

/**
 * A materialised query result, owned by whoever received it; free it with
 * evx_sql_result_free(). When status != EVX_OK the row data is empty.
 */
typedef struct evx_sql_result {
  /** EVX_OK; EVX_ECONSTRAINT (a UNIQUE, PRIMARY KEY, FOREIGN KEY, NOT NULL
   *  or CHECK constraint failed: answer 409/422; sqlite_code says which);
   *  EVX_ELOCKED (SQLITE_BUSY/SQLITE_LOCKED after busy_timeout - never
   *  EVX_EBUSY, which only means "queue full" at submit); EVX_EIO (any other
   *  SQLite error: see sqlite_code and errmsg); EVX_EINVAL (wrong number of
   *  parameters, empty or multi-statement SQL); EVX_ENOMEM; EVX_ECANCELED
   *  (the query never ran: database closed, or evx_job_cancel). */
  int status;
  int sqlite_code;     /**< SQLite's extended result code (0 when status is not from SQLite) */
  char *errmsg;        /**< NULL on success; else a NUL-terminated message (owned) */
  size_t ncols;        /**< columns */
  size_t nrows;        /**< rows */
  char **colnames;     /**< ncols names (owned) */
  evx_sql_value *cells; /**< nrows * ncols cells, row-major (owned) */
  int64_t changes;     /**< rows changed by a write (sqlite3_changes64) */
  int64_t last_insert_rowid; /**< the connection's last insert rowid after the statement */
  uint64_t wait_ns;    /**< time the query waited in the queue */
  uint64_t run_ns;     /**< time it ran on the worker */
} evx_sql_result;

/** Free a result and everything it owns. NULL accepted. */
EVX_API void evx_sql_result_free(evx_sql_result *res);

/** The cell at (row, col), or NULL when out of range or res is NULL. Borrowed from res. */
EVX_API const evx_sql_value *evx_sql_cell(const evx_sql_result *res, size_t row, size_t col);

/** Index of the column called `name` (case-sensitive), or -1. */
EVX_API int evx_sql_col(const evx_sql_result *res, const char *name);

/**
 * Cell accessors with conversions like sqlite3_column_*: an INT read as
 * real, a REAL read as int (truncated); NULL, text and blob give 0.
 * Out of range gives 0 / NULL.
 */
EVX_API int64_t evx_sql_get_int(const evx_sql_result *res, size_t row, size_t col);
EVX_API double evx_sql_get_real(const evx_sql_result *res, size_t row, size_t col);
/** Text (or blob) bytes of a cell, borrowed from res; NULL for NULL/numbers/out of range. */
EVX_API const char *evx_sql_get_text(const evx_sql_result *res, size_t row, size_t col);

typedef struct evx_sqlite evx_sqlite;

/** Options for evx_sqlite_open. Zero fields take the defaults. */
typedef struct evx_sqlite_opts {
  unsigned readers;         /**< reader threads; default 4, at most 256 */
  size_t max_queue;         /**< queries waiting per pool before EVX_EBUSY; default 4096 */
  unsigned busy_timeout_ms; /**< PRAGMA busy_timeout on every connection; default 5000 */
  int synchronous_full;     /**< non-zero: PRAGMA synchronous=FULL; default NORMAL (safe in WAL) */
  const char *schema;       /**< SQL run once at open (may hold several statements); may be NULL */
  const char *name;         /**< executor name prefix for metrics/logs; default "sqlite" */
} evx_sqlite_opts;

/**
 * Open (creating if needed) the database at `path` for `loop`: sets WAL mode,
 * runs opts->schema, then starts the reader pool and the writer thread.
 * Blocking (it touches the file): call it at start-up, on the loop thread,
 * before serving.
 * A macro over evx_sqlite_open_sized (see "Options structs and the ABI" in
 * common.h); source calling evx_sqlite_open(loop, path, opts, out, errmsg)
 * is unchanged.
 * @param loop the loop whose thread gets the results (borrowed; must
 *        outlive the database).
 * @param path file name (copied); ":memory:" is refused (the pools need a
 *        shared file).
 * @param ... the three arguments after path, `opts, out, errmsg`:
 *        - `opts`: options, or NULL for the defaults; read during the call
 *          only (schema and name included);
 *        - `out`: receives the handle, owned by the caller
 *          (evx_sqlite_close); NULL on failure;
 *        - `errmsg`: if not NULL, receives NULL or an error message to free
 *          with evx_free().
 * @return EVX_OK; EVX_EINVAL (NULL loop/path/out, ":memory:", wrong thread,
 *         readers > 256, an option this library does not know); EVX_EIO
 *         (SQLite could not open the file, set WAL or run the schema: see
 *         *errmsg); EVX_ENOMEM.
 */
#define evx_sqlite_open(loop, path, ...) \
  evx_sqlite_open_sized((loop), (path), __VA_ARGS__, sizeof(evx_sqlite_opts))
EVX_API int evx_sqlite_open_sized(evx_loop *loop, const char *path, const evx_sqlite_opts *opts,
                                  evx_sqlite **out, char **errmsg, size_t opts_size);
/** The function behind the macro, for its address: reads the first layout of the options. */
EVX_API int(evx_sqlite_open)(evx_loop *loop, const char *path, const evx_sqlite_opts *opts,
                             evx_sqlite **out, char **errmsg);

/** Where a query runs. */
typedef enum evx_sql_mode {
  EVX_SQL_READ = 0, /**< on the reader pool (in parallel, never blocked by the writer) */
  EVX_SQL_WRITE = 1 /**< on the writer thread, in submission order */
} evx_sql_mode;

/**
 * Receives a result on the loop thread. `res` is never NULL and is owned by
 * the callback from then on (free it with evx_sql_result_free).
 */
typedef void (*evx_sql_cb)(evx_sql_result *res, void *arg);

/**
 * Run one SQL statement with bound parameters. Safe from any thread.
 * Parameters bind by position (?1, ?2, ... or named parameters in order of
 * appearance); `nparams` must equal the statement's parameter count.
 * Text and blob parameters are copied before this returns.
 * @param db the database.
 * @param mode EVX_SQL_READ (the reader pool) or EVX_SQL_WRITE (the writer
 *        thread).
 * @param sql one statement (copied).
 * @param params nparams values bound by position (text and blob bytes
 *        copied); may be NULL when nparams is 0.
 * @param nparams the number of params; must equal the statement's
 *        parameter count.
 * @param cb called exactly once on the loop thread when the call returned
 *        EVX_OK, with the result (res->status tells whether the query ran and
 *        succeeded; EVX_ECANCELED when the database closed before it ran).
 *        May be NULL (fire and forget; the result is freed).
 * @param arg passed to cb; borrowed, so it must stay valid until cb ran.
 * @return EVX_OK; EVX_EINVAL (NULL db/sql, nparams > 0 with NULL params,
 *         bad mode); EVX_EBUSY (that pool's queue is full); EVX_ECLOSED (the
 *         database is closing); EVX_ENOMEM. On any error cb is never called.
 */
EVX_API int evx_sqlite_query(evx_sqlite *db, evx_sql_mode mode, const char *sql,
                             const evx_sql_value *params, size_t nparams, evx_sql_cb cb,
                             void *arg);

/**
 * evx_sqlite_query that also stores a handle to the queued query in *job
 * (when job is not NULL): evx_job_cancel(*job) before the query started
 * means it never runs and cb gets res->status == EVX_ECANCELED (in a later
 * loop iteration). The handle is valid until cb was called. Same return
 * values; on error nothing is stored and cb is never called.
 */
EVX_API int evx_sqlite_query_job(evx_sqlite *db, evx_sql_mode mode, const char *sql,
                                 const evx_sql_value *params, size_t nparams, evx_sql_cb cb,
                                 void *arg, evx_job **job);

/**
 * The same as a future. Loop thread only.
 * The future resolves with an evx_sql_result * (owned by the future, freed
 * with evx_sql_result_free; take it with evx_future_take) once the query
 * ran, even when SQLite reported an error - so the outcome is two statuses,
 * the future's and res->status: evx_sql_future_status() folds them into one,
 * and in a coroutine evx_sqlite_await() is this call, the await and that
 * one status together. It fails
 * (EVX_EBUSY, EVX_ECLOSED, EVX_ENOMEM) when the query could not be queued
 * and with EVX_ECANCELED when it was cancelled before it ran (cancelling the
 * future cancels a query that has not started, and interrupts one that runs:
 * it stops within about a thousand SQLite VM steps instead of running to
 * its end - cancel the future when the request's client leaves).
 * A statement interrupted that way reports status EVX_ECANCELED
 * (sqlite_code SQLITE_INTERRUPT); so does one run by evx_sqlite_call's fn
 * when its job is cancelled while it runs (see evx_job_cancel).
 * @return a future (one reference for the caller), or NULL for NULL/invalid
 *         arguments, wrong thread or out of memory.
 */
EVX_API evx_future *evx_sqlite_query_future(evx_sqlite *db, evx_sql_mode mode, const char *sql,
                                            const evx_sql_value *params, size_t nparams);

/**
 * The one status of a query future (from evx_sqlite_query_future): what the
 * query itself answered when it ran, else why it did not run.
 * @return EVX_PENDING while it is not done; EVX_OK only when the query ran
 *         and succeeded (the rows are in evx_future_result(f)); res->status
 *         when it ran and failed (EVX_ECONSTRAINT, EVX_ELOCKED, EVX_EIO,
 *         EVX_EINVAL, EVX_ENOMEM, EVX_ECANCELED when interrupted while it ran;
 *         the message stays in evx_future_result(f)->errmsg); the future's
 *         failure when it never ran (EVX_EBUSY: the queue was full -
 *         distinct from EVX_ELOCKED, the database was locked; EVX_ECLOSED,
 *         EVX_ENOMEM, EVX_ECANCELED); EVX_EINVAL for NULL or a resolved
 *         future whose result was taken (read res->status then).
 * Loop thread only (like every future call).
 */
EVX_API int evx_sql_future_status(const evx_future *f);

/**
 * Coroutine form of evx_sqlite_query_future: queue the statement, suspend
 * the calling coroutine (coro.h) until it finished, and return ONE status -
 * the same as evx_sql_future_status() would give:
 *
 *     evx_sql_result *r;
 *     int st = evx_sqlite_await(db, EVX_SQL_WRITE, "INSERT ...", p, 2, &r);
 *     if (st == EVX_ECONSTRAINT) answer 409 with r->errmsg;
 *     else if (st == EVX_EBUSY || st == EVX_ELOCKED) answer 503;
 *     else if (st == EVX_OK) use r->last_insert_rowid ...
 *     evx_sql_result_free(r);
 *
 * Interruption follows evx_await: when the coroutine is cancelled, or the
 * client of a coroutine HTTP handler leaves, the query is cancelled (not
 * started: dequeued; running: interrupted within about a thousand SQLite VM
 * steps) and the reason is returned (EVX_ECANCELED / EVX_EGONE /
 * EVX_ECLOSED) with *out NULL. A write that must not be abandoned with its
 * client should be awaited through a future nobody cancels (see
 * evx_sqlite_call_future).
 * @param db the database.
 * @param mode EVX_SQL_READ (the reader pool) or EVX_SQL_WRITE (the writer
 *        thread).
 * @param sql one statement (copied).
 * @param params nparams values bound by position (text and blob bytes
 *        copied); may be NULL when nparams is 0.
 * @param nparams the number of params; must equal the statement's
 *        parameter count.
 * @param out if not NULL, receives the result (owned by the caller, free it
 *        with evx_sql_result_free) whenever the query ran - on success and
 *        on the query's own errors, so r->errmsg and r->sqlite_code stay
 *        reachable - and NULL when it did not run. With out NULL the result
 *        is freed.
 * @return EVX_OK only when the query ran and succeeded; the query's status
 *         (EVX_ECONSTRAINT, EVX_ELOCKED, EVX_EIO, EVX_EINVAL for a parameter
 *         count that does not match, ...) when it ran and failed; EVX_EBUSY
 *         (the pool's queue is full), EVX_ECLOSED (the database is closing)
 *         or EVX_ENOMEM at once when it could not be queued; the
 *         interruption reason; EVX_EINVAL at once outside a coroutine or for
 *         invalid arguments (NULL db/sql, nparams > 0 with NULL params, bad
 *         mode), nothing queued.
 */
EVX_API int evx_sqlite_await(evx_sqlite *db, evx_sql_mode mode, const char *sql,
                             const evx_sql_value *params, size_t nparams, evx_sql_result **out);

/**
 * Escape hatch for work that needs several statements on one connection (a
 * transaction, a bulk load): runs fn(conn, arg) on a worker of the chosen
 * pool, with that thread's connection (do not keep `conn` after fn
 * returns, do not close it, leave no transaction open).
 * fn returns EVX_OK or a negative code. Then done(arg, status) runs on the
 * loop thread: status is fn's return value, EVX_EIO when the thread's
 * connection could not be opened, or EVX_ECANCELED when fn never ran.
 * Safe from any thread. Same return codes as evx_sqlite_query; on error
 * neither fn nor done is called.
 */
struct sqlite3;
typedef int (*evx_sql_conn_fn)(struct sqlite3 *conn, void *arg);
EVX_API int evx_sqlite_call(evx_sqlite *db, evx_sql_mode mode, evx_sql_conn_fn fn,
                            evx_done_fn done, void *arg);

/**
 * evx_sqlite_call as a future with one status. Loop thread only.
 * The future resolves (with a NULL result) when fn(conn, arg) returned
 * EVX_OK, and fails with fn's negative return value otherwise (EVX_EIO for
 * a positive one), so `evx_await(f)` in a coroutine is the whole outcome;
 * it fails with EVX_EIO when the worker's connection could not be opened,
 * and EVX_ECANCELED when it was cancelled before fn ran. Cancelling the future cancels fn when it has not
 * started and interrupts the statements fn runs (they fail with
 * SQLITE_INTERRUPT; fn should roll back and return) - the same as
 * evx_sqlite_query_future.
 * To await a write that must complete even when its awaiter goes (a POST
 * whose client left), await `evx_future_all(loop, &f, 1)` instead of f:
 * cancelling that one does not reach f, and evx_future_on_done(f, ...)
 * callbacks registered before still run when fn finished.
 * @param db the database.
 * @param mode EVX_SQL_READ (fn runs on a reader, whose connection is
 *        query_only) or EVX_SQL_WRITE (the writer thread).
 * @param fn run once on that worker as fn(conn, arg), unless cancelled first.
 * @param arg passed to fn; it must stay valid while fn may run, which can
 *        outlast a cancelled future - arg_free, when given, marks the end.
 * @param arg_free called with arg on the loop thread once no worker uses arg
 *        any more (after fn returned, or fn will never run); may be NULL.
 *        It runs when the future settles, possibly before the future's
 *        on_done callbacks: what they read must not be freed by it.
 * @return a future (one reference for the caller). When fn cannot be queued
 *         the future has already failed (EVX_EBUSY, EVX_ECLOSED, EVX_ENOMEM)
 *         and arg_free was called. NULL (arg_free not called) for NULL
 *         db/fn, bad mode, wrong thread or out of memory.
 */
EVX_API evx_future *evx_sqlite_call_future(evx_sqlite *db, evx_sql_mode mode, evx_sql_conn_fn fn,
                                           void *arg, evx_free_fn arg_free);

/** The reader pool (borrowed; for metrics). NULL for NULL. */
EVX_API evx_executor *evx_sqlite_readers(evx_sqlite *db);
/** The writer executor (one thread; borrowed; for metrics). NULL for NULL. */
EVX_API evx_executor *evx_sqlite_writer(evx_sqlite *db);
/** Connections open right now (reader threads that ran a query + the writer). Any thread. */
EVX_API unsigned evx_sqlite_connections(evx_sqlite *db);

/**
 * Stop accepting queries (later calls answer EVX_ECLOSED). DRAIN: every
 * accepted query still runs; CANCEL: queries not started get
 * res->status == EVX_ECANCELED. Never blocks. Loop thread only.
 * @return EVX_OK or EVX_EINVAL.
 */
EVX_API int evx_sqlite_shutdown(evx_sqlite *db, int how);

/**
 * Close: shuts down (DRAIN unless evx_sqlite_shutdown chose otherwise), waits
 * for the worker threads (which close their connections as they exit), runs
 * every callback still owed, and frees db. Loop thread only, or after the
 * loop stopped (evx_loop_free calls it for a handle left open, before it
 * frees the handle's executors). Not from inside one of db's own callbacks (its
 * executors cannot be joined from there): defer it with evx_add_callback.
 * NULL accepted.
 */
EVX_API void evx_sqlite_close(evx_sqlite *db);

#ifdef __cplusplus
}
#endif
#endif /* EVEXEC_SQLITE_H */
