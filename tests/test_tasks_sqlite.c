/* ext/tasks on its embedded backend (sqlite:PATH): the shared cases of
 * tests/tasks_suite.h, plus what only SQLite does - a task enqueued in the
 * application's own transaction (evx_tasks_enqueue_sql), corrupt rows, the
 * tables as the crash tests and the evx-tasks tool see them. */
#include <evexec/sqlite.h>
#include <evexec/tasks.h>
#include <sqlite3.h>
#include <unistd.h>

#include "evx_test.h"

static char ts_dir[64];
static char ts_path[128];
static char ts_url[160];

static void ts_backend_setup(void) {
  snprintf(ts_dir, sizeof ts_dir, "/tmp/evx_tasks_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(ts_dir));
  snprintf(ts_path, sizeof ts_path, "%s/tasks.db", ts_dir);
  snprintf(ts_url, sizeof ts_url, "sqlite:%s", ts_path);
}

static void ts_backend_teardown(void) {
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", ts_dir);
  ck_assert_int_eq(system(cmd), 0);
}

static const char *ts_backend_url(void) { return ts_url; }
static void ts_backend_opts(evx_tasks_opts *o) { (void)o; }

#include "tasks_suite.h"

/* ---- SQLite only ------------------------------------------------------------ */

/* Run one SQL statement on the file directly (another connection), like an
 * operator or a corrupting bug would. */
static void raw_exec(const char *sql) {
  sqlite3 *db = NULL;
  ck_assert_int_eq(sqlite3_open(ts_path, &db), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  char *msg = NULL;
  int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
  ck_assert_msg(rc == SQLITE_OK, "%s: %s", sql, msg ? msg : "");
  sqlite3_close(db);
}

static long long raw_count(const char *sql) {
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  ck_assert_int_eq(sqlite3_open(ts_path, &db), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
  ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
  long long n = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return n;
}

static const char app_schema[] =
    "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, title TEXT NOT NULL);";

typedef struct app_tx {
  evx_tasks *q;
  int rollback;
  int enq_rc;
  char *id;
  int done;
  int status;
} app_tx;

/* The application's transaction: a row and its task, together. */
static int app_tx_fn(sqlite3 *conn, void *arg) {
  app_tx *tx = arg;
  if (sqlite3_exec(conn, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) return EVX_EIO;
  sqlite3_exec(conn, "INSERT INTO notes (title) VALUES ('hello')", NULL, NULL, NULL);
  evx_task_opts to = {.key = "note-hello"};
  tx->enq_rc = evx_tasks_enqueue_sql(tx->q, conn, "t", "n=1", 3, &to, &tx->id);
  sqlite3_exec(conn, tx->rollback || tx->enq_rc ? "ROLLBACK" : "COMMIT", NULL, NULL, NULL);
  return EVX_OK;
}

static void app_tx_done(void *arg, int status) {
  app_tx *tx = arg;
  tx->status = status;
  tx->done = 1;
}

static void run_app_tx(evx_sqlite *db, app_tx *tx) {
  ck_assert_int_eq(evx_sqlite_call(db, EVX_SQL_WRITE, app_tx_fn, app_tx_done, tx), EVX_OK);
  evx_test_run_until_count(ts_loop, &tx->done, 1, 10000);
  ck_assert_int_eq(tx->status, EVX_OK);
}

START_TEST(enqueue_in_app_transaction) {
  ts_begin(TS_DONE);
  evx_sqlite_opts so = {.readers = 1, .schema = app_schema, .synchronous_full = 1};
  evx_sqlite *db = NULL;
  ck_assert_int_eq(evx_sqlite_open(ts_loop, ts_path, &so, &db, NULL), EVX_OK);
  evx_tasks_opts o = ts_opts();
  o.db = db;
  evx_tasks *q = ts_open_started(&o);

  /* Rolled back: neither the row nor the task exists. */
  app_tx tx = {.q = q, .rollback = 1};
  run_app_tx(db, &tx);
  ck_assert_int_eq(tx.enq_rc, EVX_OK);
  ck_assert_ptr_nonnull(tx.id);
  evx_free(tx.id);
  ts_run_for(50);
  ck_assert_int_eq(atomic_load(&ts.runs), 0);
  ck_assert_int_eq(raw_count("SELECT count(*) FROM notes"), 0);
  ck_assert_int_eq(raw_count("SELECT count(*) FROM evx_tasks"), 0);
  ck_assert_int_eq(raw_count("SELECT count(*) FROM evx_tasks_keys"), 0);

  /* Committed: both, and the task runs without waiting for a poll. */
  app_tx tx2 = {.q = q};
  run_app_tx(db, &tx2);
  ck_assert_int_eq(tx2.enq_rc, EVX_OK);
  ts_run_until(&ts.dones, 1, 10000);
  ck_assert_int_eq(raw_count("SELECT count(*) FROM notes"), 1);
  /* The same key again: the first task's id, nothing added. */
  app_tx tx3 = {.q = q};
  run_app_tx(db, &tx3);
  ck_assert_str_eq(tx2.id, tx3.id);
  evx_free(tx2.id);
  evx_free(tx3.id);
  ts_run_for(50);
  ck_assert_int_eq(atomic_load(&ts.runs), 1);
  ts_wait_counts(q, 0, 0, 0, 0);
  evx_tasks_stats s = ts_stats(q);
  ck_assert_uint_eq(s.deduplicated, 1);

  /* Plain enqueues go through the application's writer too. */
  char *id = ts_enqueue_wait(q, "t", 2, NULL);
  evx_free(id);
  ts_run_until(&ts.dones, 2, 10000);
  ts_shutdown_free(q, 1000);
  evx_sqlite_close(db);
  ts_end();
}
END_TEST

static int wrong_conn_fn(sqlite3 *conn, void *arg) {
  app_tx *tx = arg;
  tx->enq_rc = evx_tasks_enqueue_sql(tx->q, conn, "t", "n=1", 3, NULL, &tx->id);
  return EVX_OK;
}

START_TEST(enqueue_sql_wrong_database) {
  ts_begin(TS_DONE);
  char other[160];
  snprintf(other, sizeof other, "%s/other.db", ts_dir);
  evx_sqlite *db = NULL;
  evx_sqlite_opts so = {.readers = 1};
  ck_assert_int_eq(evx_sqlite_open(ts_loop, other, &so, &db, NULL), EVX_OK);
  evx_tasks_opts o = ts_opts();
  evx_tasks *q = ts_open_started(&o);
  app_tx tx = {.q = q};
  ck_assert_int_eq(evx_sqlite_call(db, EVX_SQL_WRITE, wrong_conn_fn, app_tx_done, &tx), EVX_OK);
  evx_test_run_until_count(ts_loop, &tx.done, 1, 10000);
  ck_assert_int_eq(tx.enq_rc, EVX_EINVAL);
  ck_assert_ptr_null(tx.id);
  ck_assert_int_eq(evx_tasks_enqueue_sql(q, NULL, "t", "x", 1, NULL, NULL), EVX_EINVAL);
  ts_shutdown_free(q, 1000);
  evx_sqlite_close(db);
  ts_end();
}
END_TEST

/* Rows the queue cannot deliver go to the dead-letter store, named, and the
 * queue keeps working. */
START_TEST(corrupt_rows) {
  ts_begin(TS_DONE);
  evx_tasks_opts o = ts_opts();
  evx_tasks_opts po = o;
  po.role = EVX_TASKS_ROLE_PRODUCER; /* creates the tables, never leases */
  ts_shutdown_free(ts_open_with(&po), 0);
  raw_exec("INSERT INTO evx_tasks (queue, name, payload, attempts, max_attempts, backoff_ms,"
           " due_ms, lease, enqueued_ms) VALUES"
           " ('default', 'bad name!', x'01', 0, 5, 10, 0, 0, 0),"
           " ('default', 't', x'', 0, 5, 10, 0, 0, 0),"
           " ('default', 't', 42, 0, 5, 10, 0, 0, 0),"
           " ('default', 't', 'n=2', 0, -3, 10, 0, 0, 0)");
  evx_tasks *q = ts_open_started(&o);
  ts_wait_counts(q, 0, 0, 0, 4);
  evx_task_list *l = ts_dead(q);
  ck_assert_uint_eq(l->n, 4);
  for (size_t i = 0; i < l->n; i++)
    ck_assert_msg(l->items[i].last_error && strstr(l->items[i].last_error, "corrupt row: "),
                  "%s", l->items[i].last_error ? l->items[i].last_error : "(null)");
  evx_task_list_free(l);
  ck_assert_int_eq(atomic_load(&ts.runs), 0);
  char *id = ts_enqueue_wait(q, "t", 1, NULL);
  evx_free(id);
  ts_run_until(&ts.dones, 1, 10000);
  ck_assert_uint_eq(ts_dead_change(q, 0, NULL), 4);
  ts_shutdown_free(q, 1000);
  ck_assert_int_eq(raw_count("SELECT count(*) FROM evx_tasks"), 0);
  ck_assert_int_eq(raw_count("SELECT count(*) FROM evx_tasks_dead"), 0);
  ts_end();
}
END_TEST

/* synchronous=NORMAL is accepted and works the same way. */
START_TEST(synchronous_normal) {
  ts_begin(TS_DONE);
  evx_tasks_opts o = ts_opts();
  o.synchronous = EVX_TASKS_SYNC_NORMAL;
  evx_tasks *q = ts_open_started(&o);
  char *id = ts_enqueue_wait(q, "t", 1, NULL);
  evx_free(id);
  ts_run_until(&ts.dones, 1, 10000);
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

/* The options follow the sized scheme of common.h: a caller compiled with a
 * longer struct that sets a field this library does not know is refused,
 * one that leaves it zero is served, and the plain function (its address)
 * reads the first layout. */
START_TEST(opts_sized) {
  ts_begin(TS_DONE);
  struct {
    evx_tasks_opts base;
    int future_field;
  } n;
  memset(&n, 0, sizeof n); /* the tail padding too: the library reads every byte past its struct */
  n.base = ts_opts();
  n.future_field = 1;
  n.base.role = EVX_TASKS_ROLE_PRODUCER;
  evx_tasks *q = NULL;
  char *msg = NULL;
  ck_assert_int_eq(evx_tasks_open_sized(ts_loop, ts_url, &n.base, &q, &msg, sizeof n), EVX_EINVAL);
  ck_assert_ptr_null(q);
  ck_assert_ptr_nonnull(msg);
  ck_assert_ptr_nonnull(strstr(msg, "does not know"));
  evx_free(msg);
  n.future_field = 0;
  ck_assert_int_eq(evx_tasks_open_sized(ts_loop, ts_url, &n.base, &q, &msg, sizeof n), EVX_OK);
  ck_assert_ptr_null(msg);
  ts_shutdown_free(q, 0);
  int (*plain)(evx_loop *, const char *, const evx_tasks_opts *, evx_tasks **, char **) =
      evx_tasks_open;
  q = NULL;
  ck_assert_int_eq(plain(ts_loop, ts_url, &n.base, &q, NULL), EVX_OK);
  ts_shutdown_free(q, 0);
  ts_end();
}
END_TEST

int main(void) {
  Suite *s = suite_create("tasks_sqlite");
  ts_suite_add(s);
  TCase *tc = evx_test_tcase(s, "sqlite", 60);
  tcase_add_test(tc, enqueue_in_app_transaction);
  tcase_add_test(tc, enqueue_sql_wrong_database);
  tcase_add_test(tc, corrupt_rows);
  tcase_add_test(tc, synchronous_normal);
  tcase_add_test(tc, opts_sized);
  return evx_test_main(s);
}
