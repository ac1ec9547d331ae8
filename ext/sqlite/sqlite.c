/*
 * evx_sqlite: SQLite on two executors.
 *
 * DESIGN
 *  - Connections belong to threads. A worker thread opens its connection the
 *    first time it runs a job for this database and stores it under the
 *    database's pthread key; the key's destructor closes it when the thread
 *    exits, which happens inside evx_executor_free() at evx_sqlite_close().
 *    So a connection is only ever touched by the thread that opened it, and
 *    connections are opened SQLITE_OPEN_NOMUTEX (no per-call mutex needed).
 *    Each worker thread belongs to exactly one executor, so a thread's
 *    connection is either a reader (query_only) or the writer, never both.
 *  - Writes go to a one-thread executor: a serial queue by construction, in
 *    submission order, one connection, so writers never contend for the WAL
 *    write lock among themselves. Readers run in parallel under WAL.
 *  - A job is allocated on the submitting thread together with its result,
 *    so the callback always has a result to report, even ECANCELED.
 *    Ownership moves: submitter -> executor (job) -> done on the loop thread
 *    (hands `res` to the user callback, frees the job).
 *  - Each connection caches prepared statements by SQL text (small LRU), so
 *    the hot statements of a service are prepared once per thread.
 *  - Cancellation reaches running statements: each connection's progress
 *    handler asks evx_job_cancelled() every SQL_PROGRESS_OPS VM steps, so a
 *    query whose job was cancelled while it ran (evx_future_cancel on
 *    evx_sqlite_query_future's future, e.g. when the client left) stops with
 *    SQLITE_INTERRUPT instead of running to the end.
 *
 * Lifetime: evx_sqlite outlives its worker threads (close joins them before
 * freeing), so the key destructor may touch db->nconns.
 */
#include <evexec/sqlite.h>

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "evx-private.h"

#define SQL_CACHE_SIZE 32
#define SQL_MAX_READERS 256

typedef struct sql_cached {
  char *sql;          /* key (owned) */
  sqlite3_stmt *stmt; /* prepared on the owning connection */
  uint64_t used;      /* LRU clock */
} sql_cached;

/* One thread's connection. Owned by the thread (pthread key value). */
typedef struct sql_conn {
  sqlite3 *conn;
  struct evx_sqlite *db;
  uint64_t clock;
  sql_cached cache[SQL_CACHE_SIZE];
} sql_conn;

struct evx_sqlite {
  evx_loop *loop;
  evx__loop_member member; /* registered after the executors: closed before them */
  char *path;
  unsigned busy_timeout_ms;
  int synchronous_full;
  evx_executor *readers;
  evx_executor *writer;
  pthread_key_t key;  /* -> sql_conn of the calling worker thread */
  atomic_uint nconns; /* connections open now */
  int shut;           /* loop thread: evx_sqlite_shutdown was called */
};

/* ---- values and results ------------------------------------------------ */

evx_sql_value evx_sql_null(void) {
  evx_sql_value v;
  memset(&v, 0, sizeof v);
  v.type = EVX_SQL_NULL;
  return v;
}

evx_sql_value evx_sql_int(int64_t i) {
  evx_sql_value v = evx_sql_null();
  v.type = EVX_SQL_INT;
  v.v.i = i;
  return v;
}

evx_sql_value evx_sql_real(double d) {
  evx_sql_value v = evx_sql_null();
  v.type = EVX_SQL_REAL;
  v.v.d = d;
  return v;
}

evx_sql_value evx_sql_textn(const char *s, size_t len) {
  evx_sql_value v = evx_sql_null();
  if (!s) return v;
  v.type = EVX_SQL_TEXT;
  v.v.s.p = s;
  v.v.s.len = len;
  return v;
}

evx_sql_value evx_sql_text(const char *s) { return evx_sql_textn(s, s ? strlen(s) : 0); }

evx_sql_value evx_sql_blob(const void *p, size_t len) {
  evx_sql_value v = evx_sql_null();
  v.type = EVX_SQL_BLOB;
  v.v.s.p = p ? (const char *)p : "";
  v.v.s.len = p ? len : 0;
  return v;
}

void evx_sql_result_free(evx_sql_result *res) {
  if (!res) return;
  if (res->cells) {
    size_t n = res->nrows * res->ncols;
    for (size_t i = 0; i < n; i++) {
      evx_sql_value *c = &res->cells[i];
      if (c->type == EVX_SQL_TEXT || c->type == EVX_SQL_BLOB) evx_free((void *)c->v.s.p);
    }
    evx_free(res->cells);
  }
  if (res->colnames) {
    for (size_t i = 0; i < res->ncols; i++) evx_free(res->colnames[i]);
    evx_free(res->colnames);
  }
  evx_free(res->errmsg);
  evx_free(res);
}

const evx_sql_value *evx_sql_cell(const evx_sql_result *res, size_t row, size_t col) {
  if (!res || !res->cells || row >= res->nrows || col >= res->ncols) return NULL;
  return &res->cells[row * res->ncols + col];
}

int evx_sql_col(const evx_sql_result *res, const char *name) {
  if (!res || !name || !res->colnames) return -1;
  for (size_t i = 0; i < res->ncols && i < (size_t)INT32_MAX; i++)
    if (res->colnames[i] && strcmp(res->colnames[i], name) == 0) return (int)i;
  return -1;
}

int64_t evx_sql_get_int(const evx_sql_result *res, size_t row, size_t col) {
  const evx_sql_value *c = evx_sql_cell(res, row, col);
  if (!c) return 0;
  if (c->type == EVX_SQL_INT) return c->v.i;
  if (c->type == EVX_SQL_REAL) {
    /* Like SQLite: out-of-range reals saturate instead of overflowing (UB). */
    if (c->v.d >= 9223372036854775807.0) return INT64_MAX;
    if (c->v.d <= -9223372036854775808.0) return INT64_MIN;
    if (c->v.d != c->v.d) return 0;
    return (int64_t)c->v.d;
  }
  return 0;
}

double evx_sql_get_real(const evx_sql_result *res, size_t row, size_t col) {
  const evx_sql_value *c = evx_sql_cell(res, row, col);
  if (!c) return 0.0;
  if (c->type == EVX_SQL_REAL) return c->v.d;
  if (c->type == EVX_SQL_INT) return (double)c->v.i;
  return 0.0;
}

const char *evx_sql_get_text(const evx_sql_result *res, size_t row, size_t col) {
  const evx_sql_value *c = evx_sql_cell(res, row, col);
  if (!c || (c->type != EVX_SQL_TEXT && c->type != EVX_SQL_BLOB)) return NULL;
  return c->v.s.p;
}

static void evx__sql_result_error(evx_sql_result *res, int status, int code, const char *msg) {
  res->status = status;
  res->sqlite_code = code;
  evx_free(res->errmsg);
  res->errmsg = evx_strdup(msg ? msg : evx_strerror(status));
}

/* ---- per-thread connections -------------------------------------------- */

static void evx__sql_conn_close(sql_conn *c) {
  for (size_t i = 0; i < SQL_CACHE_SIZE; i++) {
    if (c->cache[i].stmt) sqlite3_finalize(c->cache[i].stmt);
    evx_free(c->cache[i].sql);
  }
  sqlite3_close_v2(c->conn);
  atomic_fetch_sub(&c->db->nconns, 1);
  evx_free(c);
}

/* pthread key destructor: runs on the worker thread as it exits. */
static void evx__sql_conn_key_destructor(void *p) {
  if (p) evx__sql_conn_close(p);
}

static int evx__sql_conn_exec(sqlite3 *conn, const char *sql, char **errmsg) {
  char *msg = NULL;
  int rc = sqlite3_exec(conn, sql, NULL, NULL, &msg);
  if (rc != SQLITE_OK && errmsg) {
    *errmsg = evx_strdup(msg ? msg : sqlite3_errstr(rc));
  }
  sqlite3_free(msg);
  return rc;
}

/* Every connection's progress handler: a running statement of a job that
 * evx_job_cancel asked to stop (its client left, its future was cancelled)
 * is interrupted (SQLITE_INTERRUPT; the result says EVX_ECANCELED). On a
 * thread that runs no job (opening on the loop thread) it never fires. */
static int evx__sql_conn_progress(void *arg) {
  (void)arg;
  return evx_job_cancelled();
}
#define SQL_PROGRESS_OPS 1000 /* VM steps between checks: well under a millisecond */

/* Open a connection with the common settings. On failure returns NULL and,
 * when errmsg is not NULL, a message to evx_free. */
static sqlite3 *evx__sql_conn_open(const char *path, unsigned busy_ms, int query_only, int sync_full,
                          int *code, char **errmsg) {
  sqlite3 *conn = NULL;
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
  int rc = sqlite3_open_v2(path, &conn, flags, NULL);
  if (rc != SQLITE_OK) goto fail;
  sqlite3_extended_result_codes(conn, 1);
  sqlite3_progress_handler(conn, SQL_PROGRESS_OPS, evx__sql_conn_progress, NULL);
  rc = sqlite3_busy_timeout(conn, (int)(busy_ms > INT32_MAX ? INT32_MAX : busy_ms));
  if (rc != SQLITE_OK) goto fail;
  rc = evx__sql_conn_exec(conn, sync_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
                 errmsg);
  if (rc != SQLITE_OK) goto fail_msg;
  if (query_only) {
    rc = evx__sql_conn_exec(conn, "PRAGMA query_only=1", errmsg);
    if (rc != SQLITE_OK) goto fail_msg;
  }
  return conn;
fail:
  if (errmsg) *errmsg = evx_strdup(conn ? sqlite3_errmsg(conn) : sqlite3_errstr(rc));
fail_msg:
  if (code) *code = conn ? sqlite3_extended_errcode(conn) : rc;
  sqlite3_close_v2(conn);
  return NULL;
}

/* The calling worker thread's connection, opened on first use. */
static sql_conn *evx__sql_conn_get(evx_sqlite *db, evx_sql_mode mode, int *code, char **errmsg) {
  sql_conn *c = pthread_getspecific(db->key);
  if (c) return c;
  c = evx_calloc(1, sizeof *c);
  if (!c) {
    *code = SQLITE_NOMEM;
    *errmsg = evx_strdup("out of memory");
    return NULL;
  }
  c->db = db;
  c->conn = evx__sql_conn_open(db->path, db->busy_timeout_ms, mode == EVX_SQL_READ, db->synchronous_full,
                      code, errmsg);
  if (!c->conn) {
    evx_free(c);
    return NULL;
  }
  if (pthread_setspecific(db->key, c) != 0) {
    sqlite3_close_v2(c->conn);
    evx_free(c);
    *code = SQLITE_NOMEM;
    *errmsg = evx_strdup("pthread_setspecific failed");
    return NULL;
  }
  atomic_fetch_add(&db->nconns, 1);
  return c;
}

/* A prepared statement for `sql` on this connection (cached; reset and
 * unbound). On failure fills res and returns NULL. */
static sqlite3_stmt *evx__sql_stmt_get(sql_conn *c, const char *sql, evx_sql_result *res) {
  sql_cached *victim = &c->cache[0];
  for (size_t i = 0; i < SQL_CACHE_SIZE; i++) {
    sql_cached *e = &c->cache[i];
    if (e->sql && strcmp(e->sql, sql) == 0) {
      e->used = ++c->clock;
      return e->stmt;
    }
    if (!e->sql || (victim->sql && e->used < victim->used)) victim = e;
  }
  sqlite3_stmt *stmt = NULL;
  const char *tail = NULL;
  int rc = sqlite3_prepare_v3(c->conn, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, &tail);
  if (rc != SQLITE_OK) {
    evx__sql_result_error(res, rc == SQLITE_NOMEM ? EVX_ENOMEM : EVX_EIO, sqlite3_extended_errcode(c->conn),
                 sqlite3_errmsg(c->conn));
    return NULL;
  }
  if (!stmt) {
    evx__sql_result_error(res, EVX_EINVAL, 0, "empty SQL statement");
    return NULL;
  }
  /* Only whitespace (and comments, which SQLite skips by preparing them to
   * nothing) may follow: one job is one statement. */
  while (tail && *tail) {
    sqlite3_stmt *extra = NULL;
    const char *next = NULL;
    if (sqlite3_prepare_v2(c->conn, tail, -1, &extra, &next) != SQLITE_OK || extra) {
      sqlite3_finalize(extra);
      sqlite3_finalize(stmt);
      evx__sql_result_error(res, EVX_EINVAL, 0, "more than one SQL statement in one query");
      return NULL;
    }
    if (next == tail) break;
    tail = next;
  }
  char *key = evx_strdup(sql);
  if (!key) {
    /* Run it uncached: the caller finalizes statements it did not get from the cache. */
    return stmt;
  }
  if (victim->stmt) sqlite3_finalize(victim->stmt);
  evx_free(victim->sql);
  victim->sql = key;
  victim->stmt = stmt;
  victim->used = ++c->clock;
  return stmt;
}

static int evx__sql_stmt_is_cached(const sql_conn *c, const sqlite3_stmt *stmt) {
  for (size_t i = 0; i < SQL_CACHE_SIZE; i++)
    if (c->cache[i].stmt == stmt) return 1;
  return 0;
}

static int evx__sql_bind_params(sqlite3_stmt *stmt, const evx_sql_value *params, size_t n,
                       evx_sql_result *res) {
  int expected = sqlite3_bind_parameter_count(stmt);
  if ((size_t)expected != n) {
    char msg[128];
    snprintf(msg, sizeof msg, "statement takes %d parameter(s), %zu given", expected, n);
    evx__sql_result_error(res, EVX_EINVAL, SQLITE_RANGE, msg);
    return -1;
  }
  for (size_t i = 0; i < n; i++) {
    int idx = (int)i + 1, rc;
    const evx_sql_value *p = &params[i];
    switch (p->type) {
      case EVX_SQL_INT: rc = sqlite3_bind_int64(stmt, idx, p->v.i); break;
      case EVX_SQL_REAL: rc = sqlite3_bind_double(stmt, idx, p->v.d); break;
      case EVX_SQL_TEXT:
        rc = sqlite3_bind_text64(stmt, idx, p->v.s.p, p->v.s.len, SQLITE_STATIC, SQLITE_UTF8);
        break;
      case EVX_SQL_BLOB: rc = sqlite3_bind_blob64(stmt, idx, p->v.s.p, p->v.s.len, SQLITE_STATIC); break;
      default: rc = sqlite3_bind_null(stmt, idx); break;
    }
    if (rc != SQLITE_OK) {
      evx__sql_result_error(res, EVX_EIO, rc, sqlite3_errstr(rc));
      return -1;
    }
  }
  return 0;
}

/* Copy the current row into res (growing cells geometrically). */
static int evx__sql_take_row(sqlite3_stmt *stmt, evx_sql_result *res, size_t *cap) {
  size_t nc = res->ncols;
  if (nc == 0) {
    res->nrows++;
    return 0;
  }
  if (res->nrows == *cap) {
    size_t ncap = *cap ? *cap * 2 : 16;
    if (nc && ncap > SIZE_MAX / sizeof(evx_sql_value) / nc) return -1;
    evx_sql_value *cells = evx_realloc(res->cells, ncap * nc * sizeof *cells);
    if (!cells) return -1;
    res->cells = cells;
    *cap = ncap;
  }
  evx_sql_value *row = &res->cells[res->nrows * nc];
  for (size_t i = 0; i < nc; i++) {
    int col = (int)i;
    evx_sql_value *v = &row[i];
    memset(v, 0, sizeof *v);
    switch (sqlite3_column_type(stmt, col)) {
      case SQLITE_INTEGER:
        v->type = EVX_SQL_INT;
        v->v.i = sqlite3_column_int64(stmt, col);
        break;
      case SQLITE_FLOAT:
        v->type = EVX_SQL_REAL;
        v->v.d = sqlite3_column_double(stmt, col);
        break;
      case SQLITE_TEXT:
      case SQLITE_BLOB: {
        int is_text = sqlite3_column_type(stmt, col) == SQLITE_TEXT;
        const void *src = is_text ? (const void *)sqlite3_column_text(stmt, col)
                                  : sqlite3_column_blob(stmt, col);
        size_t len = (size_t)sqlite3_column_bytes(stmt, col);
        char *copy = evx_malloc(len + 1);
        if (!copy) {
          /* Keep the row consistent for the destructor: cells [i, nc) are NULL. */
          for (size_t j = i; j < nc; j++) memset(&row[j], 0, sizeof row[j]);
          res->nrows++;
          return -1;
        }
        if (len) memcpy(copy, src, len);
        copy[len] = '\0';
        v->type = is_text ? EVX_SQL_TEXT : EVX_SQL_BLOB;
        v->v.s.p = copy;
        v->v.s.len = len;
        break;
      }
      default: v->type = EVX_SQL_NULL; break;
    }
  }
  res->nrows++;
  return 0;
}

static void evx__sql_run_statement(sql_conn *c, const char *sql, const evx_sql_value *params, size_t n,
                          evx_sql_result *res) {
  sqlite3_stmt *stmt = evx__sql_stmt_get(c, sql, res);
  if (!stmt) return;
  int cached = evx__sql_stmt_is_cached(c, stmt);
  if (evx__sql_bind_params(stmt, params, n, res) != 0) goto out;

  int ncols = sqlite3_column_count(stmt);
  res->ncols = (size_t)(ncols > 0 ? ncols : 0);
  if (res->ncols) {
    res->colnames = evx_calloc(res->ncols, sizeof *res->colnames);
    if (!res->colnames) goto oom;
    for (size_t i = 0; i < res->ncols; i++) {
      const char *name = sqlite3_column_name(stmt, (int)i);
      res->colnames[i] = evx_strdup(name ? name : "");
      if (!res->colnames[i]) goto oom;
    }
  }
  size_t cap = 0;
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    if (evx__sql_take_row(stmt, res, &cap) != 0) goto oom;
  }
  if (rc == SQLITE_DONE) {
    res->status = EVX_OK;
    res->changes = (int64_t)sqlite3_changes64(c->conn);
    res->last_insert_rowid = (int64_t)sqlite3_last_insert_rowid(c->conn);
  } else {
    int ext = sqlite3_extended_errcode(c->conn);
    int prim = ext & 0xff;
    /* EVX_ELOCKED, never EVX_EBUSY: EVX_EBUSY is the pool's "queue full"
     * (answered at submit), which a handler turns into 503 at once. */
    int status = (prim == SQLITE_BUSY || prim == SQLITE_LOCKED) ? EVX_ELOCKED
                 : prim == SQLITE_CONSTRAINT                     ? EVX_ECONSTRAINT
                 : prim == SQLITE_NOMEM                          ? EVX_ENOMEM
                 : prim == SQLITE_INTERRUPT                      ? EVX_ECANCELED
                                                                 : EVX_EIO;
    evx__sql_result_error(res, status, ext, sqlite3_errmsg(c->conn));
  }
  goto out;
oom:
  evx__sql_result_error(res, EVX_ENOMEM, SQLITE_NOMEM, "out of memory materialising the result");
out:
  if (res->status != EVX_OK) {
    /* No rows on failure: the header promises empty row data. */
    if (res->cells) {
      size_t total = res->nrows * res->ncols;
      for (size_t i = 0; i < total; i++) {
        evx_sql_value *v = &res->cells[i];
        if (v->type == EVX_SQL_TEXT || v->type == EVX_SQL_BLOB) evx_free((void *)v->v.s.p);
      }
      evx_free(res->cells);
      res->cells = NULL;
    }
    res->nrows = 0;
  }
  sqlite3_reset(stmt);
  sqlite3_clear_bindings(stmt);
  if (!cached) sqlite3_finalize(stmt);
}

/* ---- jobs --------------------------------------------------------------- */

typedef struct sql_job {
  evx_sqlite *db;
  evx_sql_mode mode;
  const char *sql;           /* points into the same allocation */
  evx_sql_value *params;     /* ditto; text/blob bytes copied behind them */
  size_t nparams;
  evx_sql_cb cb;
  void *arg;
  evx_sql_result *res;       /* preallocated; handed to cb or the future */
  uint64_t submit_ns;
  /* evx_sqlite_call */
  evx_sql_conn_fn fn;
  evx_done_fn done;
  int call_status;
  evx_free_fn arg_free; /* evx_sqlite_call_future: arg's destructor, run with the job's */
} sql_job;

static void evx__sql_job_free(void *p) {
  sql_job *job = p;
  if (!job) return;
  evx_sql_result_free(job->res);
  if (job->arg_free) job->arg_free(job->arg);
  evx_free(job);
}

/* One allocation: job | params[n] | sql\0 | param bytes. */
static sql_job *evx__sql_job_new(evx_sqlite *db, evx_sql_mode mode, const char *sql,
                        const evx_sql_value *params, size_t n) {
  size_t sql_len = strlen(sql);
  size_t bytes = 0;
  for (size_t i = 0; i < n; i++) {
    if (params[i].type == EVX_SQL_TEXT || params[i].type == EVX_SQL_BLOB) {
      if (params[i].v.s.len > SIZE_MAX / 2 - bytes) return NULL;
      bytes += params[i].v.s.len + 1;
    }
  }
  if (n > (SIZE_MAX / 4) / sizeof(evx_sql_value) || sql_len > SIZE_MAX / 4) return NULL;
  size_t total = sizeof(sql_job) + n * sizeof(evx_sql_value) + sql_len + 1 + bytes;
  if (total < bytes) return NULL;
  sql_job *job = evx_calloc(1, total);
  if (!job) return NULL;
  job->res = evx_calloc(1, sizeof *job->res);
  if (!job->res) {
    evx_free(job);
    return NULL;
  }
  job->db = db;
  job->mode = mode;
  job->params = (evx_sql_value *)(job + 1);
  char *sql_copy = (char *)(job->params + n);
  memcpy(sql_copy, sql, sql_len + 1);
  job->sql = sql_copy;
  char *dst = sql_copy + sql_len + 1;
  for (size_t i = 0; i < n; i++) {
    job->params[i] = params[i];
    if (params[i].type == EVX_SQL_TEXT || params[i].type == EVX_SQL_BLOB) {
      size_t len = params[i].v.s.len;
      if (len) memcpy(dst, params[i].v.s.p, len);
      dst[len] = '\0';
      job->params[i].v.s.p = dst;
      dst += len + 1;
    } else if (params[i].type != EVX_SQL_INT && params[i].type != EVX_SQL_REAL) {
      job->params[i].type = EVX_SQL_NULL;
    }
  }
  job->nparams = n;
  job->res->status = EVX_ECANCELED;
  job->submit_ns = evx_now_ns();
  return job;
}

static void evx__sql_job_run(sql_job *job) {
  uint64_t start = evx_now_ns();
  evx_sql_result *res = job->res;
  res->wait_ns = start - job->submit_ns;
  int code = 0;
  char *msg = NULL;
  sql_conn *c = evx__sql_conn_get(job->db, job->mode, &code, &msg);
  if (!c) {
    res->status = EVX_EIO;
    res->sqlite_code = code;
    res->errmsg = msg ? msg : evx_strdup("cannot open the database");
  } else {
    evx__sql_run_statement(c, job->sql, job->params, job->nparams, res);
  }
  res->run_ns = evx_now_ns() - start;
}

static void evx__sql_query_work(void *arg) { evx__sql_job_run(arg); }

static void evx__sql_query_done(void *arg, int status) {
  sql_job *job = arg;
  evx_sql_result *res = job->res;
  job->res = NULL;
  if (status == EVX_ECANCELED) evx__sql_result_error(res, EVX_ECANCELED, 0, NULL);
  if (job->cb)
    job->cb(res, job->arg);
  else
    evx_sql_result_free(res);
  evx__sql_job_free(job);
}

static int evx__sql_check_query_args(evx_sqlite *db, evx_sql_mode mode, const char *sql,
                            const evx_sql_value *params, size_t nparams) {
  if (!db || !sql || (nparams && !params)) return EVX_EINVAL;
  if (mode != EVX_SQL_READ && mode != EVX_SQL_WRITE) return EVX_EINVAL;
  return EVX_OK;
}

static evx_executor *evx__sql_pool_for(evx_sqlite *db, evx_sql_mode mode) {
  return mode == EVX_SQL_WRITE ? db->writer : db->readers;
}

int evx_sqlite_query_job(evx_sqlite *db, evx_sql_mode mode, const char *sql,
                         const evx_sql_value *params, size_t nparams, evx_sql_cb cb, void *arg,
                         evx_job **handle) {
  int err = evx__sql_check_query_args(db, mode, sql, params, nparams);
  if (err) return err;
  sql_job *job = evx__sql_job_new(db, mode, sql, params, nparams);
  if (!job) return EVX_ENOMEM;
  job->cb = cb;
  job->arg = arg;
  evx_executor *ex = evx__sql_pool_for(db, mode);
  err = handle ? evx_submit_job(ex, evx__sql_query_work, evx__sql_query_done, job, handle)
               : evx_submit(ex, evx__sql_query_work, evx__sql_query_done, job);
  if (err) evx__sql_job_free(job);
  return err;
}

int evx_sqlite_query(evx_sqlite *db, evx_sql_mode mode, const char *sql,
                     const evx_sql_value *params, size_t nparams, evx_sql_cb cb, void *arg) {
  return evx_sqlite_query_job(db, mode, sql, params, nparams, cb, arg, NULL);
}

static int evx__sql_query_call(void *arg, void **result) {
  sql_job *job = arg;
  evx__sql_job_run(job);
  *result = job->res;
  job->res = NULL;
  return EVX_OK;
}

evx_future *evx_sqlite_query_future(evx_sqlite *db, evx_sql_mode mode, const char *sql,
                                    const evx_sql_value *params, size_t nparams) {
  if (evx__sql_check_query_args(db, mode, sql, params, nparams)) return NULL;
  if (!evx__loop_thread_ok(db->loop)) return NULL;
  sql_job *job = evx__sql_job_new(db, mode, sql, params, nparams);
  if (!job) return NULL;
  /* On submit failure evx_run_on_executor calls evx__sql_job_free itself (arg_free);
   * when it returns NULL it did not, so free here. */
  evx_future *f = evx_run_on_executor(evx__sql_pool_for(db, mode), evx__sql_query_call, job, evx__sql_job_free,
                                      (evx_free_fn)evx_sql_result_free);
  if (!f) evx__sql_job_free(job);
  return f;
}

static void evx__sql_call_work(void *arg) {
  sql_job *job = arg;
  int code = 0;
  char *msg = NULL;
  sql_conn *c = evx__sql_conn_get(job->db, job->mode, &code, &msg);
  evx_free(msg);
  job->call_status = c ? job->fn(c->conn, job->arg) : EVX_EIO;
}

static void evx__sql_call_done(void *arg, int status) {
  sql_job *job = arg;
  if (job->done) job->done(job->arg, status == EVX_ECANCELED ? EVX_ECANCELED : job->call_status);
  evx__sql_job_free(job);
}

/* evx_sqlite_call_future's worker half: fn's status is the future's. */
static int evx__sql_call_future_fn(void *arg, void **result) {
  sql_job *job = arg;
  *result = NULL;
  int code = 0;
  char *msg = NULL;
  sql_conn *c = evx__sql_conn_get(job->db, job->mode, &code, &msg);
  evx_free(msg);
  return c ? job->fn(c->conn, job->arg) : EVX_EIO;
}

evx_future *evx_sqlite_call_future(evx_sqlite *db, evx_sql_mode mode, evx_sql_conn_fn fn,
                                   void *arg, evx_free_fn arg_free) {
  if (!db || !fn || (mode != EVX_SQL_READ && mode != EVX_SQL_WRITE)) return NULL;
  if (!evx__loop_thread_ok(db->loop)) return NULL;
  sql_job *job = evx_calloc(1, sizeof *job);
  if (!job) return NULL;
  *job = (sql_job){.db = db, .mode = mode, .fn = fn, .arg = arg, .arg_free = arg_free};
  /* From here the job owns arg: evx_run_on_executor frees the job (and so
   * arg) on submit failure; when it returns NULL it did not, and arg goes
   * back to the caller untouched. */
  evx_future *f = evx_run_on_executor(evx__sql_pool_for(db, mode), evx__sql_call_future_fn, job,
                                      evx__sql_job_free, NULL);
  if (!f) {
    job->arg_free = NULL;
    evx__sql_job_free(job);
  }
  return f;
}

int evx_sqlite_call(evx_sqlite *db, evx_sql_mode mode, evx_sql_conn_fn fn, evx_done_fn done,
                    void *arg) {
  if (!db || !fn || (mode != EVX_SQL_READ && mode != EVX_SQL_WRITE)) return EVX_EINVAL;
  sql_job *job = evx_calloc(1, sizeof *job);
  if (!job) return EVX_ENOMEM;
  job->db = db;
  job->mode = mode;
  job->fn = fn;
  job->done = done;
  job->arg = arg;
  job->call_status = EVX_ECANCELED;
  int err = evx_submit(evx__sql_pool_for(db, mode), evx__sql_call_work, evx__sql_call_done, job);
  if (err) evx_free(job);
  return err;
}

/* ---- open / close -------------------------------------------------------- */

static void evx__sql_set_err(char **errmsg, const char *msg) {
  if (errmsg && !*errmsg) *errmsg = evx_strdup(msg);
}

/* evx_loop_free closes a handle left open (see evx-private.h). */
static void evx__sqlite_on_free(evx__loop_member *m) {
  evx_sqlite_close(EVX__CONTAINER_OF(m, evx_sqlite, member));
}

/* The first layout of evx_sqlite_opts (what the plain evx_sqlite_open reads). */
#define SQL_OPTS_V0 (offsetof(evx_sqlite_opts, name) + sizeof(const char *))

int(evx_sqlite_open)(evx_loop *loop, const char *path, const evx_sqlite_opts *opts,
                     evx_sqlite **out, char **errmsg) {
  return evx_sqlite_open_sized(loop, path, opts, out, errmsg, SQL_OPTS_V0);
}

int evx_sqlite_open_sized(evx_loop *loop, const char *path, const evx_sqlite_opts *opts,
                          evx_sqlite **out, char **errmsg, size_t opts_size) {
  if (errmsg) *errmsg = NULL;
  if (out) *out = NULL;
  if (!loop || !path || !out) return EVX_EINVAL;
  if (!*path || strcmp(path, ":memory:") == 0 || strncmp(path, "file::memory:", 13) == 0) {
    evx__sql_set_err(errmsg, "an in-memory database cannot be shared by the worker threads; give a file");
    return EVX_EINVAL;
  }
  if (!evx__loop_thread_ok(loop)) return EVX_EINVAL;
  evx_sqlite_opts o;
  if (evx__opts_copy(&o, sizeof o, opts, opts_size) != EVX_OK) {
    evx__sql_set_err(errmsg, "an option this version of evexec_sqlite does not know is set");
    return EVX_EINVAL;
  }
  if (o.readers > SQL_MAX_READERS) {
    evx__sql_set_err(errmsg, "too many reader threads");
    return EVX_EINVAL;
  }
  if (!o.readers) o.readers = 4;
  if (!o.busy_timeout_ms) o.busy_timeout_ms = 5000;
  const char *name = o.name && *o.name ? o.name : "sqlite";

  /* Set-up connection on this thread: WAL (persistent in the file) and the
   * schema. It is closed before any worker opens its own. */
  int code = 0;
  char *msg = NULL;
  sqlite3 *conn = evx__sql_conn_open(path, o.busy_timeout_ms, 0, o.synchronous_full, &code, &msg);
  if (!conn) {
    if (errmsg) *errmsg = msg; else evx_free(msg);
    return code == SQLITE_NOMEM ? EVX_ENOMEM : EVX_EIO;
  }
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(conn, "PRAGMA journal_mode=WAL", -1, &st, NULL);
  if (rc == SQLITE_OK) rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    evx__sql_set_err(errmsg, sqlite3_errmsg(conn));
    sqlite3_finalize(st);
    sqlite3_close_v2(conn);
    return EVX_EIO;
  }
  const char *jm = (const char *)sqlite3_column_text(st, 0);
  if (!jm || strcmp(jm, "wal") != 0) {
    char buf[160];
    snprintf(buf, sizeof buf, "cannot use WAL mode on %s (journal_mode=%s)", path, jm ? jm : "?");
    evx__sql_set_err(errmsg, buf);
    sqlite3_finalize(st);
    sqlite3_close_v2(conn);
    return EVX_EIO;
  }
  sqlite3_finalize(st);
  if (o.schema && evx__sql_conn_exec(conn, o.schema, &msg) != SQLITE_OK) {
    if (errmsg) *errmsg = msg; else evx_free(msg);
    sqlite3_close_v2(conn);
    return EVX_EIO;
  }
  sqlite3_close_v2(conn);

  evx_sqlite *db = evx_calloc(1, sizeof *db);
  if (!db) return EVX_ENOMEM;
  db->loop = loop;
  db->busy_timeout_ms = o.busy_timeout_ms;
  db->synchronous_full = o.synchronous_full;
  atomic_init(&db->nconns, 0);
  db->path = evx_strdup(path);
  if (!db->path) goto oom;
  if (pthread_key_create(&db->key, evx__sql_conn_key_destructor) != 0) {
    evx_free(db->path);
    evx_free(db);
    evx__sql_set_err(errmsg, "pthread_key_create failed");
    return EVX_ENOMEM;
  }
  size_t nlen = strlen(name) + 8;
  char *ename = evx_malloc(nlen);
  if (!ename) goto oom_key;
  snprintf(ename, nlen, "%s-read", name);
  evx_executor_opts ro = {.threads = o.readers, .max_queue = o.max_queue, .name = ename};
  db->readers = evx_executor_new(loop, &ro);
  snprintf(ename, nlen, "%s-write", name);
  evx_executor_opts wo = {.threads = 1, .max_queue = o.max_queue, .name = ename};
  db->writer = db->readers ? evx_executor_new(loop, &wo) : NULL;
  evx_free(ename);
  if (!db->readers || !db->writer) {
    evx_executor_free(db->readers);
    goto oom_key;
  }
  evx__loop_member_add(loop, &db->member, NULL, evx__sqlite_on_free);
  *out = db;
  return EVX_OK;
oom_key:
  pthread_key_delete(db->key);
oom:
  evx_free(db->path);
  evx_free(db);
  evx__sql_set_err(errmsg, "out of memory or cannot start threads");
  return EVX_ENOMEM;
}

evx_executor *evx_sqlite_readers(evx_sqlite *db) { return db ? db->readers : NULL; }
evx_executor *evx_sqlite_writer(evx_sqlite *db) { return db ? db->writer : NULL; }

unsigned evx_sqlite_connections(evx_sqlite *db) {
  return db ? atomic_load(&db->nconns) : 0;
}

int evx_sqlite_shutdown(evx_sqlite *db, int how) {
  if (!db || (how != EVX_SHUTDOWN_DRAIN && how != EVX_SHUTDOWN_CANCEL)) return EVX_EINVAL;
  int err = evx_executor_shutdown(db->readers, how);
  if (!err) err = evx_executor_shutdown(db->writer, how);
  if (!err) db->shut = 1;
  return err;
}

void evx_sqlite_close(evx_sqlite *db) {
  if (!db) return;
  evx__loop_member_remove(&db->member);
  if (!db->shut) evx_sqlite_shutdown(db, EVX_SHUTDOWN_DRAIN);
  /* Joins the workers: their key destructors close every connection. */
  evx_executor_free(db->readers);
  evx_executor_free(db->writer);
  pthread_key_delete(db->key);
  evx_free(db->path);
  evx_free(db);
}
