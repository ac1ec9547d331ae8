/* ext/tasks: the local outbox in front of a Redis queue (opts.db on a
 * redis:// URL), against a real redis-server started per test: the shared
 * cases of tests/tasks_suite.h through the outbox, then what only the outbox
 * does - enqueue_sql in the application's transaction (rollback: nothing
 * runs; commit: runs once), enqueues while Redis is down (they succeed and
 * run once it is back), a producer SIGKILLed right after its commit (the
 * task is forwarded by the next process and runs once), a row forwarded
 * twice (the forwarding key makes the second a no-op), and max_pending
 * bounding the outbox. */
#include <evexec/sqlite.h>
#include <evexec/tasks.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>

#include "evx_test.h"
#include "evx_test_redis.h"

static evx_redis ts_srv;
static evx_sqlite *ob_db; /* the application's database, opened on ts_loop by ts_opts() */
static char ob_path[320];

static void ts_backend_setup(void) {
  ck_assert_int_eq(evx_redis_start(&ts_srv), 0);
  snprintf(ob_path, sizeof ob_path, "%s/app.db", ts_srv.dir);
  ob_db = NULL;
}
static void ts_backend_teardown(void) {
  ob_db = NULL; /* closed by evx_loop_free (a loop member) */
  evx_redis_free(&ts_srv);
}
static const char *ts_backend_url(void) { return ts_srv.url; }
static evx_loop *ts_loop; /* the test's loop (tasks_suite.h) */
static void ts_backend_opts(evx_tasks_opts *o) {
  if (!ob_db) {
    evx_sqlite_opts so = {.readers = 1,
                          .schema = "CREATE TABLE IF NOT EXISTS notes (n INTEGER NOT NULL);"};
    ck_assert_int_eq(evx_sqlite_open(ts_loop, ob_path, &so, &ob_db, NULL), EVX_OK);
  }
  o->db = ob_db;
}

#include "tasks_suite.h" /* declares ts_loop again (one tentative definition) */
#define LOOP ts_loop

#define STREAM "evx:{default}:s"

static long long xlen(const char *key) { return evx_redis_int(&ts_srv, "XLEN %s", key); }

/* ---- the application's transaction ------------------------------------------------ */

typedef struct tx {
  evx_tasks *q;
  int n;        /* payload "n=<n>" */
  int commit;   /* COMMIT, else ROLLBACK */
  int enq_rc;
  char *id;
  int done, status;
  int kill_after; /* the producer process: SIGKILL itself once committed */
} tx;

static int tx_fn(sqlite3 *conn, void *arg) {
  tx *t = arg;
  if (sqlite3_exec(conn, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) return EVX_EIO;
  char sql[64];
  snprintf(sql, sizeof sql, "INSERT INTO notes (n) VALUES (%d)", t->n);
  int rc = sqlite3_exec(conn, sql, NULL, NULL, NULL) == SQLITE_OK ? EVX_OK : EVX_EIO;
  char p[32];
  int len = snprintf(p, sizeof p, "n=%d", t->n);
  t->enq_rc = evx_tasks_enqueue_sql(t->q, conn, "t", p, (size_t)len, NULL, &t->id);
  sqlite3_exec(conn, t->commit && rc == EVX_OK && t->enq_rc == EVX_OK ? "COMMIT" : "ROLLBACK",
               NULL, NULL, NULL);
  return rc;
}

static void tx_done(void *arg, int status) {
  tx *t = arg;
  if (t->kill_after) raise(SIGKILL); /* committed: die before anything else happens */
  t->status = status;
  t->done = 1;
}

static void run_tx(tx *t) {
  ck_assert_int_eq(evx_sqlite_call(ob_db, EVX_SQL_WRITE, tx_fn, tx_done, t), EVX_OK);
  evx_test_run_until_count(LOOP, &t->done, 1, 10000);
  ck_assert_int_eq(t->status, EVX_OK);
}

/* Rows of one table (on the writer: sees every commit). */
typedef struct rows {
  const char *sql;
  long long n;
  int done;
} rows;

static int rows_fn(sqlite3 *conn, void *arg) {
  rows *r = arg;
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(conn, r->sql, -1, &st, NULL) != SQLITE_OK) return EVX_EIO;
  r->n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
  sqlite3_finalize(st);
  return EVX_OK;
}

static void rows_done(void *arg, int status) {
  (void)status;
  ((rows *)arg)->done = 1;
}

static long long count_rows(const char *sql) {
  rows r = {sql, -1, 0};
  ck_assert_int_eq(evx_sqlite_call(ob_db, EVX_SQL_WRITE, rows_fn, rows_done, &r), EVX_OK);
  evx_test_run_until_count(LOOP, &r.done, 1, 10000);
  return r.n;
}

#define OUTBOX_ROWS "SELECT count(*) FROM evx_tasks WHERE queue = 'outbox/default'"

/* The outbox as the stats see it (refreshed every 100..1000 ms). */
typedef struct depth_wait {
  evx_tasks *q;
  uint64_t n;
} depth_wait;

static int depth_is(void *arg) {
  depth_wait *w = arg;
  evx_tasks_stats s;
  return evx_tasks_stats_get(w->q, &s) == EVX_OK && s.outbox == w->n;
}

static void wait_depth(evx_tasks *q, uint64_t n) {
  depth_wait w = {q, n};
  evx_test_run_until(LOOP, depth_is, &w, 30000);
}

/* A rolled-back transaction takes its task with it; a committed one runs
 * once, with the id enqueue_sql answered. */
START_TEST(outbox_sql_rollback_and_commit) {
  ts_begin(TS_DONE);
  evx_tasks_opts o = ts_opts();
  evx_tasks *q = ts_open_started(&o);
  tx rb = {.q = q, .n = 1, .commit = 0, .enq_rc = -1};
  run_tx(&rb);
  ck_assert_int_eq(rb.enq_rc, EVX_OK);
  ck_assert_ptr_nonnull(rb.id);
  evx_free(rb.id);
  tx cm = {.q = q, .n = 2, .commit = 1, .enq_rc = -1};
  run_tx(&cm);
  ck_assert_int_eq(cm.enq_rc, EVX_OK);
  ck_assert_ptr_nonnull(cm.id);
  ck_assert_int_eq(cm.id[0], 'o'); /* o<tag>-<rowid> */
  ts_run_until(&ts.dones, 1, 10000);
  ck_assert_int_eq(count_rows("SELECT count(*) FROM notes"), 1);
  ts_wait_counts(q, 0, 0, 0, 0); /* acknowledged */
  wait_depth(q, 0);
  ck_assert_int_eq(count_rows(OUTBOX_ROWS), 0); /* forwarded rows are deleted */
  ck_assert_int_eq(atomic_load(&ts.seen[1]), 0);
  ck_assert_int_eq(atomic_load(&ts.seen[2]), 1);
  /* the Redis entry carries the outbox id, so the handler saw it too */
  ck_assert_int_eq(evx_redis_int(&ts_srv, "EXISTS evx:{default}:f:%s", cm.id), 1);
  evx_free(cm.id);
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

/* Redis stopped: enqueue and enqueue_sql still succeed (into the outbox,
 * depth in the stats and /metrics); once Redis is back every task runs once. */
START_TEST(outbox_redis_down) {
  ts_begin(TS_DONE);
  evx_tasks_opts o = ts_opts();
  evx_tasks *q = ts_open_started(&o);
  evx_redis_stop(&ts_srv);
  enum { N = 20 };
  for (int i = 0; i < N; i++) evx_free(ts_enqueue_wait(q, "t", i, NULL));
  tx t = {.q = q, .n = N, .commit = 1, .enq_rc = -1};
  run_tx(&t);
  ck_assert_int_eq(t.enq_rc, EVX_OK);
  evx_free(t.id);
  wait_depth(q, N + 1);
  ck_assert_int_eq(atomic_load(&ts.runs), 0);
  /* a program built before the field existed gets the layout it knows */
  evx_tasks_stats old, mark;
  memset(&old, 0xab, sizeof old);
  memset(&mark, 0xab, sizeof mark);
  ck_assert_int_eq((evx_tasks_stats_get)(q, &old), EVX_OK);
  ck_assert_uint_eq(old.outbox, mark.outbox); /* not written */
  ck_assert_uint_eq(old.enqueued, N + 1);
  char *text = NULL;
  ck_assert_int_eq(evx_loop_metrics_text(LOOP, &text, NULL), EVX_OK);
  ck_assert_ptr_nonnull(strstr(text, "evx_tasks_outbox{queue=\"default\"} 21"));
  evx_free(text);

  ck_assert_int_eq(evx_redis_restart(&ts_srv), 0);
  ts_run_until(&ts.dones, N + 1, 30000);
  ts_wait_counts(q, 0, 0, 0, 0);
  wait_depth(q, 0);
  for (int i = 0; i <= N; i++) ck_assert_int_eq(atomic_load(&ts.seen[i]), 1);
  ck_assert_int_eq(count_rows(OUTBOX_ROWS), 0);
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

/* A producer process commits a note and its task, and is SIGKILLed at once;
 * the next process on that database forwards the task, which runs once. */
START_TEST(outbox_producer_killed_after_commit) {
  ts_begin(TS_DONE);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    /* the producer: its own loop and connections (nothing of the parent's) */
    evx_loop *loop = evx_loop_new(NULL);
    evx_sqlite *db = NULL;
    evx_sqlite_opts so = {.readers = 1,
                          .schema = "CREATE TABLE IF NOT EXISTS notes (n INTEGER NOT NULL);"};
    if (!loop || evx_sqlite_open(loop, ob_path, &so, &db, NULL) != EVX_OK) _exit(2);
    evx_tasks_opts o = {.role = EVX_TASKS_ROLE_PRODUCER, .db = db, .visibility_ms = 500};
    evx_tasks *q = NULL;
    if (evx_tasks_open(loop, ts_srv.url, &o, &q, NULL) != EVX_OK) _exit(3);
    static tx t;
    t = (tx){.q = q, .n = 7, .commit = 1, .enq_rc = -1, .kill_after = 1};
    if (evx_sqlite_call(db, EVX_SQL_WRITE, tx_fn, tx_done, &t) != EVX_OK) _exit(4);
    evx_loop_run(loop);
    _exit(5); /* not reached: tx_done kills the process */
  }
  int wst = 0;
  ck_assert_int_eq(waitpid(pid, &wst, 0), pid);
  ck_assert(WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL);

  evx_tasks_opts o = ts_opts();
  o.visibility_ms = 500; /* the dead producer may have leased the row */
  evx_tasks *q = ts_open_started(&o);
  ck_assert_int_eq(count_rows("SELECT count(*) FROM notes"), 1);
  ts_run_until(&ts.dones, 1, 30000);
  ts_wait_counts(q, 0, 0, 0, 0);
  wait_depth(q, 0);
  ck_assert_int_eq(count_rows(OUTBOX_ROWS), 0);
  ck_assert_int_eq(atomic_load(&ts.seen[7]), 1);
  ck_assert_int_eq(atomic_load(&ts.runs), 1);
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

/* A crash between the forward and the delete leaves the row in the outbox:
 * it is forwarded again, and its forwarding key makes that a no-op. (The
 * row is put back by hand - the same rowid, as the crash would leave it.) */
typedef struct reinsert {
  const char *id; /* o<tag>-<rowid>, as enqueue answered */
  int rc, done;
} reinsert;

static int reinsert_fn(sqlite3 *conn, void *arg) {
  reinsert *r = arg;
  char sql[400];
  snprintf(sql, sizeof sql,
           "INSERT INTO evx_tasks (id, queue, name, payload, attempts, max_attempts, backoff_ms,"
           " due_ms, lease, enqueued_ms) VALUES (%s, 'outbox/default', 't', 'n=3', 1, 5, 10, 0,"
           " 0, 0)",
           strrchr(r->id, '-') + 1);
  r->rc = sqlite3_exec(conn, sql, NULL, NULL, NULL);
  return EVX_OK;
}

static void reinsert_done(void *arg, int status) {
  reinsert *r = arg;
  (void)status;
  r->done = 1;
}

START_TEST(outbox_forwarded_twice_runs_once) {
  ts_begin(TS_DONE);
  evx_tasks_opts o = ts_opts();
  evx_tasks *q = ts_open_started(&o);
  char *id = ts_enqueue_wait(q, "t", 3, NULL);
  ts_run_until(&ts.dones, 1, 10000);
  ts_wait_counts(q, 0, 0, 0, 0);
  reinsert r = {.id = id, .rc = -1};
  ck_assert_int_eq(evx_sqlite_call(ob_db, EVX_SQL_WRITE, reinsert_fn, reinsert_done, &r), EVX_OK);
  evx_test_run_until_count(LOOP, &r.done, 1, 10000);
  ck_assert_int_eq(r.rc, SQLITE_OK);
  ck_assert_int_eq(count_rows(OUTBOX_ROWS), 1);
  /* the forwarder polls every poll_ms: the row goes, as a duplicate */
  for (int i = 0; i < 3000 && count_rows(OUTBOX_ROWS) != 0; i++) ts_run_for(5);
  ck_assert_int_eq(count_rows(OUTBOX_ROWS), 0);
  ts_wait_counts(q, 0, 0, 0, 0);
  ck_assert_int_eq(xlen(STREAM), 0);
  ck_assert_int_eq(atomic_load(&ts.runs), 1);
  evx_free(id);
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

/* max_pending bounds the outbox: with Redis down, the enqueue past it answers
 * EVX_EBUSY at once (and enqueue_sql too); after Redis is back the kept tasks
 * run and there is room again. */
START_TEST(outbox_full_is_busy) {
  ts_begin(TS_DONE);
  evx_tasks_opts o = ts_opts();
  o.max_pending = 3;
  evx_tasks *q = ts_open_started(&o);
  evx_redis_stop(&ts_srv);
  for (int i = 0; i < 3; i++) evx_free(ts_enqueue_wait(q, "t", i, NULL));
  wait_depth(q, 3);
  evx_future *f = ts_enqueue(q, "t", 3, NULL);
  ck_assert(evx_future_is_done(f));
  ck_assert_int_eq(evx_future_status(f), EVX_EBUSY);
  evx_future_release(f);
  tx t = {.q = q, .n = 4, .commit = 1, .enq_rc = -1};
  run_tx(&t);
  ck_assert_int_eq(t.enq_rc, EVX_EBUSY);
  ck_assert_ptr_null(t.id);
  ck_assert_int_eq(count_rows(OUTBOX_ROWS), 3);

  ck_assert_int_eq(evx_redis_restart(&ts_srv), 0);
  ts_run_until(&ts.dones, 3, 30000);
  wait_depth(q, 0);
  ts_wait_counts(q, 0, 0, 0, 0); /* the count after that sets the backpressure count */
  evx_free(ts_enqueue_wait(q, "t", 5, NULL));
  ts_run_until(&ts.dones, 4, 10000);
  ck_assert_int_eq(atomic_load(&ts.seen[3]), 0);
  ck_assert_int_eq(atomic_load(&ts.seen[4]), 0);
  ck_assert_int_eq(atomic_load(&ts.seen[5]), 1);
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("tasks_outbox");
  ts_suite_add(s);
  TCase *tc = evx_test_tcase(s, "outbox", 60);
  tcase_add_test(tc, outbox_sql_rollback_and_commit);
  tcase_add_test(tc, outbox_redis_down);
  tcase_add_test(tc, outbox_producer_killed_after_commit);
  tcase_add_test(tc, outbox_forwarded_twice_runs_once);
  tcase_add_test(tc, outbox_full_is_busy);
  return s;
}

int main(void) { return evx_test_main(suite()); }
