/*
 * The embedded backend of evx_tasks: "sqlite:PATH".
 *
 * DESIGN
 *  - Tables (created at open, shared by every queue of the database):
 *      evx_tasks       waiting tasks: ready (lease = 0, due_ms <= now), delayed
 *                      (lease = 0, due_ms > now), leased (lease != 0, due_ms =
 *                      lease expiry). An expired lease is simply due again.
 *      evx_tasks_dead  the dead-letter store, same ids, with died_ms and last_error.
 *      evx_tasks_keys  idempotency keys -> task id, kept after the task completed;
 *                      purging a dead task forgets its key.
 *  - Every op becomes an `sq_op` on one list (core->head, under core->mu).
 *    The first op of a loop iteration arms a 0 ms timer; its callback submits
 *    one writer job (evx_sqlite_call on the writer thread: our own database,
 *    or the application's opts->db). The job takes the whole list when it
 *    starts - everything added until then, over several loop iterations when
 *    the writer was busy - and runs it in ONE transaction (group commit).
 *    The job's done callback (loop thread) delivers the completions in list
 *    order, which is the order the ops were applied.
 *  - A failed statement fails its op; a failed transaction (BEGIN, COMMIT, or
 *    SQLite rolling back by itself) fails every op of the job with EVX_EIO,
 *    and nothing of it is stored.
 *  - Lifetime: `sq_core` (the list, its mutex and the job count) is shared
 *    with the jobs by reference count, so a job that runs after the queue
 *    was freed finds the list closed, takes nothing and touches nothing
 *    else. free() waits for the writer to apply what is queued (bounded),
 *    delivers the outcome of every applied op, fails the rest with
 *    EVX_ECLOSED and orphans the jobs still in the pipeline.
 *  - Lock order: core->mu only; never held across SQLite calls.
 */
#include "tasks-backend.h"

#include <errno.h>
#include <evexec/sqlite.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FREE_WAIT_MS 10000

static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS evx_tasks ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " queue TEXT NOT NULL, name TEXT NOT NULL, payload BLOB NOT NULL, key TEXT,"
    " attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,"
    " backoff_ms INTEGER NOT NULL, due_ms INTEGER NOT NULL,"
    " lease INTEGER NOT NULL DEFAULT 0, enqueued_ms INTEGER NOT NULL, last_error TEXT);"
    "CREATE INDEX IF NOT EXISTS evx_tasks_due ON evx_tasks(queue, due_ms);"
    "CREATE TABLE IF NOT EXISTS evx_tasks_dead ("
    " id INTEGER PRIMARY KEY, queue TEXT, name TEXT, payload BLOB, key TEXT,"
    " attempts INTEGER, max_attempts INTEGER, backoff_ms INTEGER,"
    " enqueued_ms INTEGER, died_ms INTEGER, last_error TEXT);"
    "CREATE INDEX IF NOT EXISTS evx_tasks_dead_q ON evx_tasks_dead(queue, died_ms);"
    "CREATE TABLE IF NOT EXISTS evx_tasks_keys ("
    " queue TEXT NOT NULL, key TEXT NOT NULL, id INTEGER NOT NULL, created_ms INTEGER NOT NULL,"
    " PRIMARY KEY (queue, key)) WITHOUT ROWID;";

/* Columns copied from evx_tasks into evx_tasks_dead. */
#define DEAD_COLS "id, queue, name, payload, key, attempts, max_attempts, backoff_ms, enqueued_ms"

enum {
  OP_ENQ,
  OP_LEASE,
  OP_SETTLE,
  OP_RELEASE,
  OP_COUNT,
  OP_NUDGE,
  OP_DEAD_LIST,
  OP_DEAD_RETRY,
  OP_DEAD_PURGE
};

typedef struct sq_op {
  struct sq_op *next;
  int kind;
  int status;
  char *err;
  evx__task_enq *e; /* ENQ */
  char *id;         /* ENQ: the stored id */
  int dedup;
  size_t max;       /* LEASE max, DEAD_LIST limit */
  uint32_t vis;
  evx__task_rec **recs;
  size_t n;
  evx__task_rec *r; /* SETTLE / RELEASE */
  int res;
  uint64_t delay;
  uint64_t c[4];    /* COUNT */
  evx_future *f;    /* DEAD_* (one reference) */
  int64_t target;   /* DEAD_RETRY/PURGE: id, or 0 for all */
  evx_task_list *list;
  uint64_t changed;
} sq_op;

typedef struct sq_job sq_job;

typedef struct sq_core {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  sq_op *head, *tail; /* ops not taken by a job yet */
  int armed;          /* a flush timer or a job will take the list */
  int closed;         /* free() ran: jobs take nothing */
  int running;        /* a job is applying ops now */
  sq_job *jobs, *jobs_tail; /* submitted jobs whose done has not run, oldest first (mu) */
  atomic_int refs;
  /* constant after open, read by jobs */
  char *queue;
  int sync;           /* PRAGMA synchronous value to apply: 2 FULL, 1 NORMAL */
  int borrowed;       /* the connection is the application's: restore its synchronous */
  int outbox;         /* the local outbox of a Redis queue (evx__tasks_outbox_open) */
  char id_prefix[40]; /* outbox: prefix of the task ids it hands out ("o<tag>-") */
} sq_core;

struct sq_job {
  sq_job *prev, *next; /* core->jobs while linked */
  int linked;
  struct sq_state *s; /* NULL once orphaned */
  sq_core *core;
  sq_op *ops;         /* taken at start */
  int ran;            /* ops applied (under mu) */
};

typedef struct sq_state {
  evx_tasks *q;
  evx_loop *loop;
  evx_sqlite *db;
  int own_db;
  char *path;      /* as given */
  char *abs_path;  /* realpath, to recognise the connection of enqueue_sql */
  sq_core *core;
  evx_timer *flush_timer;
  evx_timer *closed_timer;
  int shut;
  int closed_said; /* evx__tasks_backend_closed was called */
  /* outbox: lease/settle/count/nudge completions and closed go here instead
   * of to the layer (enqueue completions still settle the layer's futures) */
  const evx__tasks_outbox_sink *sink;
} sq_state;

static void job_link(sq_core *c, sq_job *j) {
  j->next = NULL;
  j->prev = c->jobs_tail;
  if (c->jobs_tail)
    c->jobs_tail->next = j;
  else
    c->jobs = j;
  c->jobs_tail = j;
  j->linked = 1;
}

static void job_unlink(sq_core *c, sq_job *j) {
  if (!j->linked) return;
  if (j->prev)
    j->prev->next = j->next;
  else
    c->jobs = j->next;
  if (j->next)
    j->next->prev = j->prev;
  else
    c->jobs_tail = j->prev;
  j->prev = j->next = NULL;
  j->linked = 0;
}

static void core_unref(sq_core *c) {
  if (atomic_fetch_sub(&c->refs, 1) != 1) return;
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->cv);
  evx_free(c->queue);
  evx_free(c);
}

static void op_free(sq_op *op) {
  evx_free(op->err);
  evx_free(op->id);
  if (op->recs) {
    for (size_t i = 0; i < op->n; i++) evx__task_rec_free(op->recs[i]);
    evx_free(op->recs);
  }
  evx_task_list_free(op->list);
  evx_free(op);
}

/* ---- SQL helpers (writer thread) ------------------------------------------- */

static int is_busy(int rc) {
  int p = rc & 0xff;
  return p == SQLITE_BUSY || p == SQLITE_LOCKED;
}

static void op_fail(sq_op *op, int status, const char *msg) {
  if (op->status == EVX_OK) op->status = status;
  if (!op->err && msg) op->err = evx_strdup(msg);
}

static void op_sqlfail(sq_op *op, sqlite3 *conn, int rc) {
  op_fail(op, is_busy(rc) ? EVX_EBUSY : (rc & 0xff) == SQLITE_NOMEM ? EVX_ENOMEM : EVX_EIO,
          sqlite3_errmsg(conn));
}

static sqlite3_stmt *prep(sqlite3 *conn, const char *sql) {
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(conn, sql, -1, &st, NULL) != SQLITE_OK) {
    sqlite3_finalize(st);
    return NULL;
  }
  return st;
}

/* Run a statement without rows; returns the SQLite code (SQLITE_DONE on success). */
static int step_done(sqlite3_stmt *st) {
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
  }
  return rc;
}

static int exec(sqlite3 *conn, const char *sql) {
  return sqlite3_exec(conn, sql, NULL, NULL, NULL);
}

static char *col_text(sqlite3_stmt *st, int i) {
  if (sqlite3_column_type(st, i) == SQLITE_NULL) return NULL;
  const unsigned char *t = sqlite3_column_text(st, i);
  return t ? evx_strdup((const char *)t) : NULL;
}

static char *id_text(int64_t id) {
  char buf[32];
  snprintf(buf, sizeof buf, "%lld", (long long)id);
  return evx_strdup(buf);
}

/* The id an enqueue answers: the rowid, behind the outbox's prefix. */
static char *enq_id_text(const sq_core *c, int64_t id) {
  char buf[80];
  snprintf(buf, sizeof buf, "%s%lld", c->id_prefix, (long long)id);
  return evx_strdup(buf);
}

/* Strictly a positive decimal rowid. */
static int parse_id(const char *s, int64_t *out) {
  if (!s || !*s) return -1;
  for (const char *p = s; *p; p++)
    if (*p < '0' || *p > '9') return -1;
  errno = 0;
  char *end;
  long long v = strtoll(s, &end, 10);
  if (errno || *end || v <= 0) return -1;
  *out = v;
  return 0;
}

/* ---- ops (writer thread, inside the job's transaction) ------------------------ */

/* Insert e (or find its key); shared by the batch and by enqueue_sql. */
static int do_enqueue(sqlite3 *conn, const char *queue, const evx__task_enq *e, int64_t *id,
                      int *dedup, int *rc_out) {
  int rc = SQLITE_OK;
  *dedup = 0;
  sqlite3_stmt *st;
  if (e->rec.key) {
    st = prep(conn, "SELECT id FROM evx_tasks_keys WHERE queue = ?1 AND key = ?2");
    if (!st) goto fail_conn;
    sqlite3_bind_text(st, 1, queue, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, e->rec.key, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      *id = sqlite3_column_int64(st, 0);
      *dedup = 1;
      sqlite3_finalize(st);
      return 0;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) goto fail;
  }
  st = prep(conn,
            "INSERT INTO evx_tasks (queue, name, payload, key, attempts, max_attempts, backoff_ms,"
            " due_ms, lease, enqueued_ms) VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7, 0, ?8)");
  if (!st) goto fail_conn;
  sqlite3_bind_text(st, 1, queue, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, e->rec.name, -1, SQLITE_STATIC);
  sqlite3_bind_blob64(st, 3, e->rec.payload, e->rec.len, SQLITE_STATIC);
  if (e->rec.key)
    sqlite3_bind_text(st, 4, e->rec.key, -1, SQLITE_STATIC);
  else
    sqlite3_bind_null(st, 4);
  sqlite3_bind_int64(st, 5, e->rec.max_attempts);
  sqlite3_bind_int64(st, 6, e->rec.backoff_ms);
  sqlite3_bind_int64(st, 7, e->due_ms);
  sqlite3_bind_int64(st, 8, e->rec.enqueued_ms);
  rc = step_done(st);
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) goto fail;
  *id = sqlite3_last_insert_rowid(conn);
  if (e->rec.key) {
    st = prep(conn, "INSERT INTO evx_tasks_keys (queue, key, id, created_ms) VALUES (?1, ?2, ?3, ?4)");
    if (!st) goto fail_conn;
    sqlite3_bind_text(st, 1, queue, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, e->rec.key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, *id);
    sqlite3_bind_int64(st, 4, e->rec.enqueued_ms);
    rc = step_done(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) goto fail;
  }
  return 0;
fail_conn:
  rc = sqlite3_extended_errcode(conn);
fail:
  *rc_out = rc;
  return -1;
}

static void run_enq(sqlite3 *conn, sq_core *c, sq_op *op) {
  int64_t id = 0;
  int rc = 0;
  if (do_enqueue(conn, c->queue, op->e, &id, &op->dedup, &rc) != 0) {
    op_sqlfail(op, conn, rc);
    return;
  }
  op->id = enq_id_text(c, id);
  if (!op->id) op_fail(op, EVX_ENOMEM, NULL);
}

/* Move rows of evx_tasks selected by `where` (binding ?1 queue, ?2 id or
 * now...) to the dead-letter store. Returns the SQLite code of the last step. */
static int move_dead(sqlite3 *conn, int64_t id, int64_t lease, int64_t now, const char *err) {
  sqlite3_stmt *st =
      prep(conn, "INSERT OR REPLACE INTO evx_tasks_dead (" DEAD_COLS ", died_ms, last_error)"
                 " SELECT " DEAD_COLS ", ?3, ?4 FROM evx_tasks WHERE id = ?1 AND lease = ?2");
  if (!st) return sqlite3_extended_errcode(conn);
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int64(st, 2, lease);
  sqlite3_bind_int64(st, 3, now);
  if (err)
    sqlite3_bind_text(st, 4, err, -1, SQLITE_TRANSIENT);
  else
    sqlite3_bind_null(st, 4);
  int rc = step_done(st);
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) return rc;
  if (sqlite3_changes(conn) == 0) return SQLITE_NOTFOUND;
  st = prep(conn, "DELETE FROM evx_tasks WHERE id = ?1 AND lease = ?2");
  if (!st) return sqlite3_extended_errcode(conn);
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int64(st, 2, lease);
  rc = step_done(st);
  sqlite3_finalize(st);
  return rc;
}

/* Validate a leased row; NULL when fine, else what is wrong. */
static const char *row_problem(sqlite3_stmt *st) {
  if (sqlite3_column_type(st, 1) != SQLITE_TEXT) return "the name is not text";
  const char *name = (const char *)sqlite3_column_text(st, 1);
  if (!evx__tasks_name_ok(name, (size_t)sqlite3_column_bytes(st, 1)))
    return "the name is not 1..128 bytes of [A-Za-z0-9_.:-]";
  int pt = sqlite3_column_type(st, 2);
  if ((pt != SQLITE_BLOB && pt != SQLITE_TEXT) || sqlite3_column_bytes(st, 2) <= 0)
    return "the payload is empty or not bytes";
  int kt = sqlite3_column_type(st, 3);
  if (kt != SQLITE_NULL && kt != SQLITE_TEXT) return "the key is not text";
  for (int i = 4; i <= 7; i++)
    if (sqlite3_column_type(st, i) != SQLITE_INTEGER) return "a counter is not an integer";
  int64_t att = sqlite3_column_int64(st, 4), max = sqlite3_column_int64(st, 5);
  int64_t back = sqlite3_column_int64(st, 6);
  if (att < 1 || att > UINT_MAX || max < 1 || max > UINT_MAX || back < 0 || back > UINT32_MAX)
    return "attempts, max_attempts or backoff_ms is out of range";
  return NULL;
}

/* Poison pills: an expired lease on the last attempt is not delivered again
 * (a handler that kills its process would do it forever). 0, or op failed. */
static int bury_poison(sqlite3 *conn, sq_core *c, sq_op *op, int64_t now) {
  sqlite3_stmt *st = prep(
      conn, "SELECT id, lease, attempts, max_attempts, last_error FROM evx_tasks WHERE id IN"
            " (SELECT id FROM evx_tasks WHERE queue = ?1 AND due_ms <= ?2 ORDER BY due_ms, id"
            " LIMIT ?3) AND lease <> 0 AND attempts >= max_attempts");
  if (!st) {
    op_sqlfail(op, conn, sqlite3_extended_errcode(conn));
    return -1;
  }
  sqlite3_bind_text(st, 1, c->queue, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, now);
  sqlite3_bind_int64(st, 3, (sqlite3_int64)op->max);
  /* Collect first, move after: no writes under an open read of the table. */
  typedef struct { int64_t id, lease; char err[1400]; } poison;
  poison *pz = NULL;
  size_t npz = 0, cappz = 0;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (npz == cappz) {
      size_t ncap = cappz ? cappz * 2 : 4;
      poison *np = evx_realloc(pz, ncap * sizeof *np);
      if (!np) {
        rc = SQLITE_NOMEM;
        break;
      }
      pz = np;
      cappz = ncap;
    }
    poison *p = &pz[npz++];
    const unsigned char *last = sqlite3_column_text(st, 4);
    p->id = sqlite3_column_int64(st, 0);
    p->lease = sqlite3_column_int64(st, 1);
    snprintf(p->err, sizeof p->err,
             "lease expired on delivery %lld of %lld (the handler hung or its process died)%s%.1024s",
             (long long)sqlite3_column_int64(st, 2), (long long)sqlite3_column_int64(st, 3),
             last ? "; last error: " : "", last ? (const char *)last : "");
  }
  sqlite3_finalize(st);
  for (size_t i = 0; rc == SQLITE_DONE && i < npz; i++) {
    int mrc = move_dead(conn, pz[i].id, pz[i].lease, now, pz[i].err);
    if (mrc != SQLITE_DONE && mrc != SQLITE_NOTFOUND) rc = mrc;
  }
  evx_free(pz);
  if (rc != SQLITE_DONE) {
    op_sqlfail(op, conn, rc);
    return -1;
  }
  return 0;
}

/* By rowid (the outbox's records, whose ids are rowids). */
static int rec_cmp(const void *a, const void *b) {
  long long x = strtoll((*(evx__task_rec *const *)a)->id, NULL, 10);
  long long y = strtoll((*(evx__task_rec *const *)b)->id, NULL, 10);
  return (x > y) - (x < y);
}

static void run_lease(sqlite3 *conn, sq_core *c, sq_op *op, int64_t now, int64_t token) {
  /* The outbox has no poison pills: its leases are forwarding attempts (the
   * task has not run), never dead-lettered. */
  if (!c->outbox && bury_poison(conn, c, op, now) != 0) return;
  /* The outbox forwards in enqueue order (rowid): a row given back after a
   * failed forward goes out before the rows enqueued after it. */
  int rc;
  sqlite3_stmt *st = prep(conn, c->outbox
                ? "UPDATE evx_tasks SET attempts = attempts + 1, lease = ?4, due_ms = ?5 WHERE id IN"
                  " (SELECT id FROM evx_tasks WHERE queue = ?1 AND due_ms <= ?2 ORDER BY id"
                  " LIMIT ?3) RETURNING id, name, payload, key, attempts, max_attempts, backoff_ms,"
                  " enqueued_ms, last_error"
                : "UPDATE evx_tasks SET attempts = attempts + 1, lease = ?4, due_ms = ?5 WHERE id IN"
                  " (SELECT id FROM evx_tasks WHERE queue = ?1 AND due_ms <= ?2 ORDER BY due_ms, id"
                  " LIMIT ?3) RETURNING id, name, payload, key, attempts, max_attempts, backoff_ms,"
                  " enqueued_ms, last_error");
  if (!st) {
    op_sqlfail(op, conn, sqlite3_extended_errcode(conn));
    return;
  }
  sqlite3_bind_text(st, 1, c->queue, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, now);
  sqlite3_bind_int64(st, 3, (sqlite3_int64)op->max);
  sqlite3_bind_int64(st, 4, token);
  sqlite3_bind_int64(st, 5, now + (int64_t)op->vis);
  op->recs = evx_calloc(op->max ? op->max : 1, sizeof *op->recs);
  int64_t *bad = evx_calloc(op->max ? op->max : 1, sizeof *bad);
  const char **why = evx_calloc(op->max ? op->max : 1, sizeof *why);
  size_t nbad = 0;
  char tokbuf[32];
  snprintf(tokbuf, sizeof tokbuf, "%lld", (long long)token);
  if (!op->recs || !bad || !why) {
    op_fail(op, EVX_ENOMEM, NULL);
    goto out;
  }
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (op->n + nbad >= op->max) continue; /* cannot happen: LIMIT */
    const char *problem = row_problem(st);
    if (problem) {
      why[nbad] = problem;
      bad[nbad++] = sqlite3_column_int64(st, 0);
      continue;
    }
    evx__task_rec *r = evx__task_rec_new();
    if (!r) {
      op_fail(op, EVX_ENOMEM, NULL);
      continue;
    }
    op->recs[op->n++] = r;
    r->id = id_text(sqlite3_column_int64(st, 0));
    r->name = col_text(st, 1);
    r->len = (size_t)sqlite3_column_bytes(st, 2);
    r->payload = evx_malloc(r->len);
    if (r->payload) memcpy(r->payload, sqlite3_column_blob(st, 2), r->len);
    r->key = col_text(st, 3);
    r->attempt = (unsigned)sqlite3_column_int64(st, 4);
    r->max_attempts = (unsigned)sqlite3_column_int64(st, 5);
    r->backoff_ms = (uint32_t)sqlite3_column_int64(st, 6);
    r->enqueued_ms = sqlite3_column_int64(st, 7);
    r->last_error = col_text(st, 8);
    r->lease = evx_strdup(tokbuf);
    if (!r->id || !r->name || !r->payload || !r->lease ||
        (sqlite3_column_type(st, 3) != SQLITE_NULL && !r->key))
      op_fail(op, EVX_ENOMEM, NULL);
  }
  if (rc != SQLITE_DONE) {
    op_sqlfail(op, conn, rc);
    goto out;
  }
  sqlite3_reset(st);
  /* RETURNING has no order (and a failed op delivers no records) */
  if (c->outbox && op->status == EVX_OK) qsort(op->recs, op->n, sizeof *op->recs, rec_cmp);
  for (size_t i = 0; i < nbad; i++) {
    char err[200];
    snprintf(err, sizeof err, "corrupt row: %s", why[i]);
    fprintf(stderr, "evx_tasks %s: task %lld: %s; moved to the dead-letter store\n", c->queue,
            (long long)bad[i], err);
    rc = move_dead(conn, bad[i], token, now, err);
    if (rc != SQLITE_DONE) {
      op_sqlfail(op, conn, rc);
      break;
    }
  }
out:
  sqlite3_finalize(st);
  evx_free(bad);
  evx_free((void *)why);
}

static int64_t lease_of(const evx__task_rec *r) {
  return r->lease ? strtoll(r->lease, NULL, 10) : 0;
}

static void run_settle(sqlite3 *conn, sq_op *op, int64_t now) {
  int64_t id = 0, lease = lease_of(op->r);
  if (parse_id(op->r->id, &id) != 0) {
    op_fail(op, EVX_EINVAL, "bad task id");
    return;
  }
  int rc;
  sqlite3_stmt *st = NULL;
  if (op->kind == OP_SETTLE && op->res == EVX_TASK_FAIL) {
    rc = move_dead(conn, id, lease, now, op->r->last_error);
    if (rc == SQLITE_NOTFOUND) op->status = EVX_EGONE;
    else if (rc != SQLITE_DONE) op_sqlfail(op, conn, rc);
    return;
  }
  if (op->kind == OP_RELEASE) {
    st = prep(conn, "UPDATE evx_tasks SET lease = 0, due_ms = ?3, attempts = max(attempts - 1, 0)"
                    " WHERE id = ?1 AND lease = ?2");
    if (st) sqlite3_bind_int64(st, 3, now);
  } else if (op->res == EVX_TASK_DONE) {
    st = prep(conn, "DELETE FROM evx_tasks WHERE id = ?1 AND lease = ?2");
  } else {
    st = prep(conn, "UPDATE evx_tasks SET lease = 0, due_ms = ?3, last_error = ?4"
                    " WHERE id = ?1 AND lease = ?2");
    if (st) {
      sqlite3_bind_int64(st, 3, now + (int64_t)op->delay);
      if (op->r->last_error)
        sqlite3_bind_text(st, 4, op->r->last_error, -1, SQLITE_STATIC);
      else
        sqlite3_bind_null(st, 4);
    }
  }
  if (!st) {
    op_sqlfail(op, conn, sqlite3_extended_errcode(conn));
    return;
  }
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int64(st, 2, lease);
  rc = step_done(st);
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE)
    op_sqlfail(op, conn, rc);
  else if (sqlite3_changes(conn) == 0)
    op->status = EVX_EGONE;
}

static void run_count(sqlite3 *conn, sq_core *c, sq_op *op, int64_t now) {
  sqlite3_stmt *st = prep(conn,
                          "SELECT count(*) FILTER (WHERE due_ms <= ?2),"
                          " count(*) FILTER (WHERE lease = 0 AND due_ms > ?2),"
                          " count(*) FILTER (WHERE lease <> 0 AND due_ms > ?2),"
                          " (SELECT count(*) FROM evx_tasks_dead WHERE queue = ?1)"
                          " FROM evx_tasks WHERE queue = ?1");
  if (!st) {
    op_sqlfail(op, conn, sqlite3_extended_errcode(conn));
    return;
  }
  sqlite3_bind_text(st, 1, c->queue, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, now);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    for (int i = 0; i < 4; i++) op->c[i] = (uint64_t)sqlite3_column_int64(st, i);
  } else {
    op_sqlfail(op, conn, rc);
  }
  sqlite3_finalize(st);
}

static void run_dead_list(sqlite3 *conn, sq_core *c, sq_op *op) {
  sqlite3_stmt *st = prep(conn,
                          "SELECT id, name, payload, key, attempts, last_error, enqueued_ms, died_ms"
                          " FROM evx_tasks_dead WHERE queue = ?1 ORDER BY died_ms, id LIMIT ?2");
  if (!st) {
    op_sqlfail(op, conn, sqlite3_extended_errcode(conn));
    return;
  }
  sqlite3_bind_text(st, 1, c->queue, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, (sqlite3_int64)(op->max > INT64_MAX ? INT64_MAX : op->max));
  op->list = evx_calloc(1, sizeof *op->list);
  size_t cap = 0;
  int rc = SQLITE_DONE;
  while (op->list && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (op->list->n == cap) {
      size_t ncap = cap ? cap * 2 : 16;
      evx_task_info *items = evx_realloc(op->list->items, ncap * sizeof *items);
      if (!items) {
        op_fail(op, EVX_ENOMEM, NULL);
        break;
      }
      op->list->items = items;
      cap = ncap;
    }
    evx_task_info *it = &op->list->items[op->list->n++];
    memset(it, 0, sizeof *it);
    it->id = id_text(sqlite3_column_int64(st, 0));
    it->name = col_text(st, 1);
    it->len = (size_t)sqlite3_column_bytes(st, 2);
    it->payload = evx_malloc(it->len ? it->len : 1);
    if (it->payload && it->len) memcpy(it->payload, sqlite3_column_blob(st, 2), it->len);
    it->key = col_text(st, 3);
    int64_t att = sqlite3_column_int64(st, 4);
    it->attempts = att < 0 ? 0 : att > UINT_MAX ? UINT_MAX : (unsigned)att;
    it->last_error = col_text(st, 5);
    it->enqueued_ms = sqlite3_column_int64(st, 6);
    it->died_ms = sqlite3_column_int64(st, 7);
    if (!it->id || !it->payload) op_fail(op, EVX_ENOMEM, NULL);
  }
  if (!op->list) op_fail(op, EVX_ENOMEM, NULL);
  else if (rc != SQLITE_DONE && rc != SQLITE_ROW) op_sqlfail(op, conn, rc);
  sqlite3_finalize(st);
}

static void run_dead_change(sqlite3 *conn, sq_core *c, sq_op *op, int64_t now) {
  const char *first =
      op->kind == OP_DEAD_RETRY
          ? "INSERT INTO evx_tasks (id, queue, name, payload, key, attempts, max_attempts,"
            " backoff_ms, due_ms, lease, enqueued_ms, last_error)"
            " SELECT id, queue, name, payload, key, 0, max(coalesce(max_attempts, 1), 1),"
            " coalesce(backoff_ms, 0), ?3, 0, coalesce(enqueued_ms, ?3), last_error"
            " FROM evx_tasks_dead WHERE queue = ?1 AND (?2 = 0 OR id = ?2)"
          : "DELETE FROM evx_tasks_keys WHERE queue = ?1 AND id IN"
            " (SELECT id FROM evx_tasks_dead WHERE queue = ?1 AND (?2 = 0 OR id = ?2))"
            " AND ?3 = ?3";
  const char *second = "DELETE FROM evx_tasks_dead WHERE queue = ?1 AND (?2 = 0 OR id = ?2)";
  for (int i = 0; i < 2; i++) {
    sqlite3_stmt *st = prep(conn, i == 0 ? first : second);
    if (!st) {
      op_sqlfail(op, conn, sqlite3_extended_errcode(conn));
      return;
    }
    sqlite3_bind_text(st, 1, c->queue, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, op->target);
    if (i == 0) sqlite3_bind_int64(st, 3, now);
    int rc = step_done(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
      op_sqlfail(op, conn, rc);
      return;
    }
    if (i == 1) op->changed = (uint64_t)sqlite3_changes(conn);
  }
}

/* Undo what an op computed when its transaction did not commit. */
static void op_unapply(sq_op *op, int status, const char *msg) {
  op->status = EVX_OK;
  op_fail(op, status, msg);
  evx_free(op->id);
  op->id = NULL;
  if (op->recs) {
    for (size_t i = 0; i < op->n; i++) evx__task_rec_free(op->recs[i]);
    evx_free(op->recs);
    op->recs = NULL;
    op->n = 0;
  }
  evx_task_list_free(op->list);
  op->list = NULL;
}

static int read_sync(sqlite3 *conn) {
  sqlite3_stmt *st = prep(conn, "PRAGMA synchronous");
  int v = -1;
  if (st && sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int(st, 0);
  sqlite3_finalize(st);
  return v;
}

static void set_sync(sqlite3 *conn, int v) {
  char sql[40];
  snprintf(sql, sizeof sql, "PRAGMA synchronous=%d", v);
  exec(conn, sql);
}

static int64_t new_token(void) {
  /* Unique across processes sharing the database: random, never 0. */
  static _Thread_local uint64_t x;
  if (!x) x = (uint64_t)evx_now_ns() ^ ((uint64_t)getpid() << 40) ^ (uint64_t)(uintptr_t)&x;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  int64_t t = (int64_t)(x & INT64_MAX);
  return t ? t : 1;
}

static void apply_ops(sqlite3 *conn, sq_core *c, sq_op *ops) {
  int64_t now = evx__tasks_wall_ms();
  int old_sync = -1;
  if (c->borrowed) {
    old_sync = read_sync(conn);
    if (old_sync != c->sync) set_sync(conn, c->sync);
  }
  int rc = exec(conn, "BEGIN IMMEDIATE");
  if (rc != SQLITE_OK) {
    for (sq_op *op = ops; op; op = op->next) op_sqlfail(op, conn, rc);
    goto out;
  }
  int64_t token = new_token();
  for (sq_op *op = ops; op; op = op->next) {
    switch (op->kind) {
      case OP_ENQ: run_enq(conn, c, op); break;
      case OP_LEASE: run_lease(conn, c, op, now, token); break;
      case OP_SETTLE:
      case OP_RELEASE: run_settle(conn, op, now); break;
      case OP_COUNT: run_count(conn, c, op, now); break;
      case OP_DEAD_LIST: run_dead_list(conn, c, op); break;
      case OP_DEAD_RETRY:
      case OP_DEAD_PURGE: run_dead_change(conn, c, op, now); break;
      default: break; /* OP_NUDGE: nothing to store */
    }
    if (sqlite3_get_autocommit(conn)) break; /* SQLite rolled the transaction back */
  }
  if (sqlite3_get_autocommit(conn)) {
    rc = SQLITE_ABORT;
  } else {
    rc = exec(conn, "COMMIT");
  }
  if (rc != SQLITE_OK) {
    char msg[300];
    snprintf(msg, sizeof msg, "transaction failed: %s",
             rc == SQLITE_ABORT ? "rolled back" : sqlite3_errmsg(conn));
    if (!sqlite3_get_autocommit(conn)) exec(conn, "ROLLBACK");
    for (sq_op *op = ops; op; op = op->next)
      if (op->kind != OP_NUDGE) op_unapply(op, is_busy(rc) ? EVX_EBUSY : EVX_EIO, msg);
  }
out:
  if (c->borrowed && old_sync >= 0 && old_sync != c->sync) set_sync(conn, old_sync);
}

/* ---- jobs ------------------------------------------------------------------------ */

static int job_fn(sqlite3 *conn, void *arg) {
  sq_job *job = arg;
  sq_core *c = job->core;
  pthread_mutex_lock(&c->mu);
  if (c->closed || !c->head) {
    if (!c->closed) c->armed = 0;
    job->ran = 1;
    pthread_mutex_unlock(&c->mu);
    return EVX_OK;
  }
  sq_op *ops = c->head;
  c->head = c->tail = NULL;
  c->armed = 0;
  c->running = 1;
  pthread_mutex_unlock(&c->mu);

  apply_ops(conn, c, ops);

  pthread_mutex_lock(&c->mu);
  job->ops = ops;
  job->ran = 1;
  c->running = 0;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  return EVX_OK;
}

static void deliver(sq_state *s, sq_op *ops);
static void check_closed(sq_state *s);

/* Take every op not taken yet (caller holds mu). */
static sq_op *take_all(sq_core *c) {
  sq_op *ops = c->head;
  c->head = c->tail = NULL;
  c->armed = 0;
  return ops;
}

static void fail_all(sq_state *s, sq_op *ops, int status) {
  for (sq_op *op = ops; op; op = op->next) op_unapply(op, status, NULL);
  deliver(s, ops);
}

static void job_done(void *arg, int status) {
  sq_job *job = arg;
  sq_core *c = job->core;
  sq_state *s = job->s;
  pthread_mutex_lock(&c->mu);
  job_unlink(c, job);
  sq_op *ops = job->ops, *orphans = NULL;
  job->ops = NULL;
  if (s && !job->ran) orphans = take_all(c); /* cancelled or no connection: nobody else will */
  pthread_mutex_unlock(&c->mu);
  evx_free(job);
  if (s) {
    deliver(s, ops);
    if (orphans) fail_all(s, orphans, status == EVX_ECANCELED ? EVX_ECLOSED : EVX_EIO);
    check_closed(s);
  }
  core_unref(c);
}

/* Submit a job that will take the list. Any thread. */
static int submit_job(sq_state *s) {
  sq_job *job = evx_calloc(1, sizeof *job);
  if (!job) return EVX_ENOMEM;
  job->s = s;
  job->core = s->core;
  atomic_fetch_add(&s->core->refs, 1);
  pthread_mutex_lock(&s->core->mu);
  job_link(s->core, job);
  pthread_mutex_unlock(&s->core->mu);
  int err = evx_sqlite_call(s->db, EVX_SQL_WRITE, job_fn, job_done, job);
  if (err) {
    pthread_mutex_lock(&s->core->mu);
    job_unlink(s->core, job);
    pthread_mutex_unlock(&s->core->mu);
    evx_free(job);
    atomic_fetch_sub(&s->core->refs, 1);
  }
  return err;
}

static void flush_cb(void *arg) {
  sq_state *s = arg;
  s->flush_timer = NULL;
  int err = submit_job(s);
  if (err) {
    pthread_mutex_lock(&s->core->mu);
    sq_op *ops = take_all(s->core);
    pthread_mutex_unlock(&s->core->mu);
    fail_all(s, ops, err == EVX_EBUSY ? EVX_EIO : err);
    check_closed(s);
  }
}

/* Queue an op (loop thread). */
static int add_op(sq_state *s, sq_op *op) {
  if (s->shut && op->kind != OP_DEAD_LIST && op->kind != OP_DEAD_RETRY &&
      op->kind != OP_DEAD_PURGE)
    return EVX_ECLOSED;
  sq_core *c = s->core;
  pthread_mutex_lock(&c->mu);
  if (c->closed) {
    pthread_mutex_unlock(&c->mu);
    return EVX_ECLOSED;
  }
  int arm = !c->armed;
  if (arm) {
    if (!s->flush_timer) s->flush_timer = evx_call_later(s->loop, 0, flush_cb, s);
    if (!s->flush_timer) {
      pthread_mutex_unlock(&c->mu);
      return EVX_ENOMEM;
    }
    c->armed = 1;
  }
  if (c->tail)
    c->tail->next = op;
  else
    c->head = op;
  c->tail = op;
  pthread_mutex_unlock(&c->mu);
  return EVX_OK;
}

static sq_op *op_new(int kind) {
  sq_op *op = evx_calloc(1, sizeof *op);
  if (op) op->kind = kind;
  return op;
}

static int add_new(sq_state *s, sq_op *op) {
  if (!op) return EVX_ENOMEM;
  int err = add_op(s, op);
  if (err) evx_free(op);
  return err;
}

static void free_u64(void *p) { evx_free(p); }
static void free_list(void *p) { evx_task_list_free(p); }

/* Completions, in order (loop thread). */
static void deliver(sq_state *s, sq_op *ops) {
  evx_tasks *q = s->q;
  const evx__tasks_outbox_sink *sink = s->sink;
  while (ops) {
    sq_op *op = ops;
    ops = op->next;
    switch (op->kind) {
      case OP_ENQ: {
        int added = op->status == EVX_OK && !op->dedup;
        evx__tasks_enqueued(q, op->e, op->status, op->id, op->dedup);
        if (sink && added) sink->added(sink->arg);
        break;
      }
      case OP_LEASE: {
        evx__task_rec **recs = op->recs;
        size_t n = op->status == EVX_OK ? op->n : 0;
        if (op->status != EVX_OK && recs) {
          for (size_t i = 0; i < op->n; i++) evx__task_rec_free(recs[i]);
        }
        op->recs = NULL;
        op->n = 0;
        if (sink)
          sink->leased(sink->arg, recs, n, op->status);
        else
          evx__tasks_leased(q, recs, n, op->status);
        evx_free(recs);
        break;
      }
      case OP_SETTLE:
      case OP_RELEASE:
        if (sink)
          sink->settled(sink->arg, op->r, op->status);
        else
          evx__tasks_settled(q, op->r, op->status);
        break;
      case OP_COUNT:
        if (sink)
          sink->counted(sink->arg, op->status, op->c[0] + op->c[1] + op->c[2]);
        else
          evx__tasks_counted(q, op->status, op->c[0], op->c[1], op->c[2], op->c[3]);
        break;
      case OP_NUDGE:
        if (sink)
          sink->added(sink->arg);
        else
          evx__tasks_ready(q);
        break;
      case OP_DEAD_LIST:
        if (op->status == EVX_OK && op->list) {
          if (evx_future_resolve(op->f, op->list, free_list) == EVX_OK) op->list = NULL;
        } else {
          evx_future_fail(op->f, op->status ? op->status : EVX_ENOMEM);
        }
        evx_future_release(op->f);
        break;
      default: { /* DEAD_RETRY / DEAD_PURGE */
        uint64_t *n = op->status == EVX_OK ? evx_malloc(sizeof *n) : NULL;
        if (n) {
          *n = op->changed;
          if (evx_future_resolve(op->f, n, free_u64) != EVX_OK) evx_free(n);
        } else {
          evx_future_fail(op->f, op->status ? op->status : EVX_ENOMEM);
        }
        evx_future_release(op->f);
        break;
      }
    }
    if (op->err && op->kind != OP_DEAD_LIST && op->status != EVX_EGONE)
      fprintf(stderr, "evx_tasks %s: %s\n", s->core->queue, op->err);
    op_free(op);
  }
}

/* ---- the backend ops (loop thread) ---------------------------------------------------- */

static int sq_enqueue(void *state, evx__task_enq *e) {
  sq_op *op = op_new(OP_ENQ);
  if (op) op->e = e;
  return add_new(state, op);
}

static int sq_lease(void *state, size_t max, uint32_t vis) {
  sq_op *op = op_new(OP_LEASE);
  if (op) {
    op->max = max ? max : 1;
    op->vis = vis;
  }
  return add_new(state, op);
}

static int sq_settle(void *state, evx__task_rec *r, evx_task_result res, uint64_t delay) {
  sq_op *op = op_new(OP_SETTLE);
  if (op) {
    op->r = r;
    op->res = (int)res;
    op->delay = delay;
  }
  return add_new(state, op);
}

static int sq_release(void *state, evx__task_rec *r) {
  sq_op *op = op_new(OP_RELEASE);
  if (op) op->r = r;
  return add_new(state, op);
}

static int sq_counts(void *state) { return add_new(state, op_new(OP_COUNT)); }

static int sq_dead_list(void *state, size_t limit, evx_future *f) {
  sq_op *op = op_new(OP_DEAD_LIST);
  if (op) {
    op->max = limit;
    op->f = f;
  }
  return add_new(state, op);
}

static int dead_change(void *state, int kind, const char *id, evx_future *f) {
  int64_t target = 0;
  if (id && parse_id(id, &target) != 0) return EVX_EINVAL;
  sq_op *op = op_new(kind);
  if (op) {
    op->target = target;
    op->f = f;
  }
  return add_new(state, op);
}

static int sq_dead_retry(void *state, const char *id, evx_future *f) {
  return dead_change(state, OP_DEAD_RETRY, id, f);
}

static int sq_dead_purge(void *state, const char *id, evx_future *f) {
  return dead_change(state, OP_DEAD_PURGE, id, f);
}

/* enqueue_sql: on the application's writer thread, in its transaction. */
static int sq_enqueue_sql(void *state, struct sqlite3 *conn, evx__task_enq *e, char **id_out,
                          int *dedup) {
  sq_state *s = state;
  const char *file = sqlite3_db_filename(conn, "main");
  if (!s->abs_path || !file || strcmp(file, s->abs_path) != 0) return EVX_EINVAL;
  if (exec(conn, "SAVEPOINT evx_tasks_enqueue") != SQLITE_OK) return EVX_EIO;
  int64_t id = 0;
  int rc = 0;
  if (do_enqueue(conn, s->core->queue, e, &id, dedup, &rc) != 0) {
    exec(conn, "ROLLBACK TO evx_tasks_enqueue");
    exec(conn, "RELEASE evx_tasks_enqueue");
    return is_busy(rc) ? EVX_EBUSY : EVX_EIO;
  }
  if (exec(conn, "RELEASE evx_tasks_enqueue") != SQLITE_OK) return EVX_EIO;
  *id_out = enq_id_text(s->core, id);
  if (!*id_out) return EVX_ENOMEM;
  /* Tell the loop once this transaction can have committed: a writer job
   * runs after the caller's. */
  if (!*dedup) {
    sq_op *op = op_new(OP_NUDGE);
    if (op) {
      sq_core *c = s->core;
      pthread_mutex_lock(&c->mu);
      int closed = c->closed, submit = !c->armed;
      if (!closed) {
        if (c->tail)
          c->tail->next = op;
        else
          c->head = op;
        c->tail = op;
        if (submit) c->armed = 1;
      }
      pthread_mutex_unlock(&c->mu);
      if (closed) {
        evx_free(op);
      } else if (submit && submit_job(s) != EVX_OK) {
        /* The poll finds the task instead; the op waits for the next job. */
        pthread_mutex_lock(&c->mu);
        c->armed = 0;
        pthread_mutex_unlock(&c->mu);
      }
    }
  }
  return EVX_OK;
}

static void closed_cb(void *arg) {
  sq_state *s = arg;
  s->closed_timer = NULL;
  s->closed_said = 1;
  if (s->sink)
    s->sink->closed(s->sink->arg);
  else
    evx__tasks_backend_closed(s->q);
}

static void check_closed(sq_state *s) {
  if (!s->shut || s->closed_said || s->closed_timer) return;
  pthread_mutex_lock(&s->core->mu);
  int idle = !s->core->head && !s->core->jobs && !s->flush_timer;
  pthread_mutex_unlock(&s->core->mu);
  if (!idle) return;
  s->closed_timer = evx_call_later(s->loop, 0, closed_cb, s);
  if (!s->closed_timer) { /* no memory for a timer: say it now */
    s->closed_said = 1;
    if (s->sink)
      s->sink->closed(s->sink->arg);
    else
      evx__tasks_backend_closed(s->q);
  }
}

static void sq_shutdown(void *state) {
  sq_state *s = state;
  s->shut = 1;
  check_closed(s);
}

static void sq_free(void *state) {
  sq_state *s = state;
  if (!s) return;
  sq_core *c = s->core;
  if (s->closed_timer) evx_timer_cancel(s->closed_timer);
  s->closed_timer = NULL;
  int submit = 0;
  if (s->flush_timer) {
    evx_timer_cancel(s->flush_timer);
    s->flush_timer = NULL;
    submit = 1;
  }
  /* Let the writer apply what is queued (settles of handlers that just
   * finished, enqueues in flight), within a bound. */
  if (submit && submit_job(s) != EVX_OK) submit = -1;
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += FREE_WAIT_MS / 1000;
  pthread_mutex_lock(&c->mu);
  while (submit >= 0 && (c->head || c->running)) {
    if (pthread_cond_timedwait(&c->cv, &c->mu, &until) == ETIMEDOUT) break;
  }
  c->closed = 1;
  sq_op *never = take_all(c);
  while (c->running) pthread_cond_wait(&c->cv, &c->mu);
  /* Every job is now either applied (ran) or will take nothing. */
  sq_op *applied = NULL, **tail = &applied;
  sq_job *job;
  while ((job = c->jobs) != NULL) {
    job_unlink(c, job);
    job->s = NULL; /* orphan: its done only frees it */
    *tail = job->ops;
    while (*tail) tail = &(*tail)->next;
    job->ops = NULL;
  }
  pthread_mutex_unlock(&c->mu);
  deliver(s, applied);
  fail_all(s, never, EVX_ECLOSED);
  if (s->own_db) evx_sqlite_close(s->db); /* drains: orphaned jobs free themselves */
  evx_free(s->path);
  free(s->abs_path);
  evx_free(s);
  core_unref(c);
}

/* ---- open ------------------------------------------------------------------------------ */

static int run_schema(const char *path, char **errmsg) {
  sqlite3 *conn = NULL;
  int rc = sqlite3_open_v2(path, &conn, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
  if (rc == SQLITE_OK) rc = sqlite3_busy_timeout(conn, 5000);
  char *msg = NULL;
  if (rc == SQLITE_OK) rc = sqlite3_exec(conn, SCHEMA, NULL, NULL, &msg);
  if (rc != SQLITE_OK && errmsg && !*errmsg) {
    char buf[512];
    snprintf(buf, sizeof buf, "cannot create the task tables in %s: %s", path,
             msg ? msg : conn ? sqlite3_errmsg(conn) : sqlite3_errstr(rc));
    *errmsg = evx_strdup(buf);
  }
  sqlite3_free(msg);
  sqlite3_close_v2(conn);
  return rc == SQLITE_OK ? EVX_OK : EVX_EIO;
}

/* A state with its core, not yet on a database; NULL: no memory. */
static sq_state *state_new(evx_tasks *q, const char *queue, const evx_tasks_opts *opts) {
  sq_state *s = evx_calloc(1, sizeof *s);
  sq_core *c = evx_calloc(1, sizeof *c);
  if (!s || !c) goto oom;
  s->q = q;
  s->loop = evx__tasks_loop(q);
  s->core = c;
  c->queue = evx_strdup(queue);
  if (!c->queue) goto oom;
  if (pthread_mutex_init(&c->mu, NULL) != 0) goto oom;
  if (pthread_cond_init(&c->cv, NULL) != 0) {
    pthread_mutex_destroy(&c->mu);
    goto oom;
  }
  atomic_init(&c->refs, 1);
  c->sync = opts->synchronous == EVX_TASKS_SYNC_NORMAL ? 1 : 2;
  return s;
oom:
  if (c) evx_free(c->queue);
  evx_free(c);
  evx_free(s);
  return NULL;
}

static void state_drop(sq_state *s) {
  core_unref(s->core);
  evx_free(s->path);
  free(s->abs_path);
  evx_free(s);
}

static int sq_open(evx_tasks *q, const char *url, const evx_tasks_opts *opts, void **state,
                   char **errmsg) {
  const char *path = url + strlen("sqlite:");
  if (!*path) {
    if (errmsg && !*errmsg) *errmsg = evx_strdup("sqlite: URL without a path");
    return EVX_EINVAL;
  }
  sq_state *s = state_new(q, opts->queue, opts);
  if (!s || !(s->path = evx_strdup(path))) {
    if (s) state_drop(s);
    return EVX_ENOMEM;
  }
  sq_core *c = s->core;
  int err;
  if (opts->db) {
    c->borrowed = 1;
    s->db = opts->db;
    err = run_schema(path, errmsg);
  } else {
    s->own_db = 1;
    evx_sqlite_opts so = {.readers = 1,
                          .synchronous_full = c->sync == 2,
                          .schema = SCHEMA,
                          .name = "tasks-db"};
    err = evx_sqlite_open(s->loop, path, &so, &s->db, errmsg);
    if (err == EVX_EINVAL) err = EVX_EIO;
  }
  if (err) {
    state_drop(s);
    return err;
  }
  s->abs_path = realpath(path, NULL);
  *state = s;
  return EVX_OK;
}

/* ---- the local outbox of a Redis queue ---------------------------------------------- */

/* The tables and the database's outbox tag, made on the application's writer
 * while evx__tasks_outbox_open waits (it may block: start-up). Shared by the
 * opener and the job's done callback (refs). */
typedef struct ob_setup {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  atomic_int refs;
  int ran, rc;
  char tag[24];
  char *file; /* sqlite3_db_filename, strdup'ed (libc: it becomes s->abs_path) */
  char err[300];
} ob_setup;

static void ob_setup_unref(ob_setup *u) {
  if (atomic_fetch_sub(&u->refs, 1) != 1) return;
  pthread_mutex_destroy(&u->mu);
  pthread_cond_destroy(&u->cv);
  free(u->file);
  evx_free(u);
}

static const char OUTBOX_SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS evx_tasks_outbox_tag (tag TEXT NOT NULL);";

static int ob_setup_fn(sqlite3 *conn, void *arg) {
  ob_setup *u = arg;
  char fresh[24];
  uint64_t x = (uint64_t)evx_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)u;
  x ^= (uint64_t)new_token() << 1;
  snprintf(fresh, sizeof fresh, "%016llx", (unsigned long long)(x * 0x9E3779B97F4A7C15ULL));
  int rc = exec(conn, "BEGIN IMMEDIATE");
  if (rc == SQLITE_OK) rc = exec(conn, SCHEMA);
  if (rc == SQLITE_OK) rc = exec(conn, OUTBOX_SCHEMA);
  sqlite3_stmt *st = NULL;
  if (rc == SQLITE_OK) {
    st = prep(conn, "INSERT INTO evx_tasks_outbox_tag (tag) SELECT ?1"
                    " WHERE NOT EXISTS (SELECT 1 FROM evx_tasks_outbox_tag)");
    if (!st) rc = sqlite3_errcode(conn);
  }
  if (st) {
    sqlite3_bind_text(st, 1, fresh, -1, SQLITE_STATIC);
    rc = step_done(st) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(conn);
    sqlite3_finalize(st);
    st = NULL;
  }
  if (rc == SQLITE_OK) {
    st = prep(conn, "SELECT tag FROM evx_tasks_outbox_tag LIMIT 1");
    rc = st && sqlite3_step(st) == SQLITE_ROW ? SQLITE_OK : sqlite3_errcode(conn);
    if (rc == SQLITE_OK)
      snprintf(u->tag, sizeof u->tag, "%.16s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
  }
  if (rc == SQLITE_OK) rc = exec(conn, "COMMIT");
  if (rc != SQLITE_OK) {
    snprintf(u->err, sizeof u->err, "cannot create the task outbox: %s", sqlite3_errmsg(conn));
    if (!sqlite3_get_autocommit(conn)) exec(conn, "ROLLBACK");
  }
  const char *file = sqlite3_db_filename(conn, "main");
  pthread_mutex_lock(&u->mu);
  u->rc = rc == SQLITE_OK ? EVX_OK : EVX_EIO;
  u->file = file ? strdup(file) : NULL;
  u->ran = 1;
  pthread_cond_broadcast(&u->cv);
  pthread_mutex_unlock(&u->mu);
  return EVX_OK;
}

static void ob_setup_done(void *arg, int status) {
  (void)status;
  ob_setup_unref(arg);
}

int evx__tasks_outbox_open(evx_tasks *q, struct evx_sqlite *db, const evx__tasks_outbox_sink *sink,
                           void **state, char *tag, size_t tag_size, char **errmsg) {
  const evx_tasks_opts *opts = evx__tasks_opts(q);
  char queue[200];
  snprintf(queue, sizeof queue, "outbox/%s", opts->queue); /* never a queue name: no '/' */
  ob_setup *u = evx_calloc(1, sizeof *u);
  if (!u) return EVX_ENOMEM;
  if (pthread_mutex_init(&u->mu, NULL) != 0) {
    evx_free(u);
    return EVX_ENOMEM;
  }
  if (pthread_cond_init(&u->cv, NULL) != 0) {
    pthread_mutex_destroy(&u->mu);
    evx_free(u);
    return EVX_ENOMEM;
  }
  atomic_init(&u->refs, 2);
  if (evx_sqlite_call(db, EVX_SQL_WRITE, ob_setup_fn, ob_setup_done, u) != EVX_OK) {
    atomic_store(&u->refs, 1);
    ob_setup_unref(u);
    if (errmsg && !*errmsg) *errmsg = evx_strdup("cannot reach the outbox database's writer");
    return EVX_EIO;
  }
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += FREE_WAIT_MS / 1000;
  pthread_mutex_lock(&u->mu);
  while (!u->ran && pthread_cond_timedwait(&u->cv, &u->mu, &until) != ETIMEDOUT) {
  }
  int ran = u->ran, rc = u->rc;
  char *file = ran ? u->file : NULL;
  if (ran) u->file = NULL;
  pthread_mutex_unlock(&u->mu);
  if (!ran || rc != EVX_OK || !file) {
    if (errmsg && !*errmsg)
      *errmsg = evx_strdup(!ran ? "the outbox database's writer did not answer within 10 s"
                           : u->err[0] ? u->err : "no memory");
    free(file);
    ob_setup_unref(u);
    return ran && rc == EVX_OK ? EVX_ENOMEM : EVX_EIO;
  }
  snprintf(tag, tag_size, "%s", u->tag);
  ob_setup_unref(u);
  sq_state *s = state_new(q, queue, opts);
  if (!s) {
    free(file);
    return EVX_ENOMEM;
  }
  s->db = db;
  s->abs_path = file;
  s->sink = sink;
  s->core->borrowed = 1;
  s->core->outbox = 1;
  snprintf(s->core->id_prefix, sizeof s->core->id_prefix, "o%s-", tag);
  *state = s;
  return EVX_OK;
}

const evx__tasks_backend evx__tasks_backend_sqlite = {
    .name = "sqlite",
    .open = sq_open,
    .enqueue = sq_enqueue,
    .enqueue_sql = sq_enqueue_sql,
    .lease = sq_lease,
    .settle = sq_settle,
    .release = sq_release,
    .counts = sq_counts,
    .dead_list = sq_dead_list,
    .dead_retry = sq_dead_retry,
    .dead_purge = sq_dead_purge,
    .shutdown = sq_shutdown,
    .free = sq_free,
};
