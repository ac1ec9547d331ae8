/* ext/sqlite: connection per worker thread, WAL, a serial writer, typed
 * results, errors with SQLite's message, backpressure, cancel, shutdown. */
#include <evexec/sqlite.h>

#include <dirent.h>
#include <pthread.h>
#include <sqlite3.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "evx_test.h"

/* ---- fixture: a fresh loop and a temp folder per test -------------------- */

static evx_loop *loop;
static char dir[64];
static char path[128];

static void setup(void) {
  snprintf(dir, sizeof dir, "/tmp/evx_sqlite_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/test.db", dir);
  loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
}

static void teardown(void) {
  evx_loop_free(loop);
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  ck_assert_int_eq(system(cmd), 0);
}

static void fail_timeout(void *arg) {
  (void)arg;
  ck_abort_msg("test timed out waiting for the loop");
}

/* Run the loop until a callback stops it (bounded by a 10 s guard timer). */
static void run_loop(void) {
  evx_timer *guard = evx_call_later(loop, 10000, fail_timeout, NULL);
  ck_assert_ptr_nonnull(guard);
  ck_assert_int_eq(evx_loop_run(loop), EVX_OK);
  evx_timer_cancel(guard);
}

static const char *schema =
    "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB,"
    " n INTEGER, u TEXT UNIQUE);";

static evx_sqlite *open_db(unsigned readers, size_t max_queue) {
  evx_sqlite_opts o = {.readers = readers, .max_queue = max_queue, .schema = schema};
  evx_sqlite *db = NULL;
  char *msg = NULL;
  int err = evx_sqlite_open(loop, path, &o, &db, &msg);
  ck_assert_msg(err == EVX_OK, "open: %s %s", evx_strerror(err), msg ? msg : "");
  ck_assert_ptr_null(msg);
  return db;
}

/* Collects results; stops the loop once `want` arrived. */
typedef struct collect {
  evx_sql_result *res[1100];
  int n, want;
} collect;

static void collect_cb(evx_sql_result *res, void *arg) {
  collect *c = arg;
  ck_assert_ptr_nonnull(res);
  ck_assert_int_lt(c->n, 1100);
  c->res[c->n++] = res;
  if (c->n == c->want) evx_loop_stop(loop);
}

static void collect_free(collect *c) {
  for (int i = 0; i < c->n; i++) evx_sql_result_free(c->res[i]);
  c->n = 0;
}

/* One query, run to completion; the caller frees the result. */
static evx_sql_result *query(evx_sqlite *db, evx_sql_mode mode, const char *sql,
                             const evx_sql_value *p, size_t n) {
  collect c = {.want = 1};
  ck_assert_int_eq(evx_sqlite_query(db, mode, sql, p, n, collect_cb, &c), EVX_OK);
  run_loop();
  ck_assert_int_eq(c.n, 1);
  return c.res[0];
}

/* File descriptors of this process open on the database or its -wal/-shm. */
static int open_db_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  ck_assert_ptr_nonnull(d);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    char link[300], target[512];
    snprintf(link, sizeof link, "/proc/self/fd/%s", e->d_name);
    ssize_t len = readlink(link, target, sizeof target - 1);
    if (len <= 0) continue;
    target[len] = '\0';
    if (strstr(target, path)) n++;
  }
  closedir(d);
  return n;
}

/* ---- open ------------------------------------------------------------------ */

START_TEST(test_open_errors) {
  evx_sqlite *db = (evx_sqlite *)1;
  char *msg = NULL;
  ck_assert_int_eq(evx_sqlite_open(NULL, path, NULL, &db, &msg), EVX_EINVAL);
  ck_assert_int_eq(evx_sqlite_open(loop, NULL, NULL, &db, &msg), EVX_EINVAL);
  ck_assert_int_eq(evx_sqlite_open(loop, path, NULL, NULL, &msg), EVX_EINVAL);
  ck_assert_int_eq(evx_sqlite_open(loop, ":memory:", NULL, &db, &msg), EVX_EINVAL);
  ck_assert_ptr_null(db);
  ck_assert_ptr_nonnull(msg);
  evx_free(msg);

  char bad[200];
  snprintf(bad, sizeof bad, "%s/no/such/dir/x.db", dir);
  ck_assert_int_eq(evx_sqlite_open(loop, bad, NULL, &db, &msg), EVX_EIO);
  ck_assert_ptr_nonnull(msg);
  ck_assert_msg(strstr(msg, "unable to open") != NULL, "message: %s", msg);
  evx_free(msg);

  evx_sqlite_opts o = {.schema = "CREATE TABLE x (a INT); CREATE TABLEE y (b INT);"};
  ck_assert_int_eq(evx_sqlite_open(loop, path, &o, &db, &msg), EVX_EIO);
  ck_assert_ptr_nonnull(msg);
  ck_assert_msg(strstr(msg, "syntax error") != NULL, "message: %s", msg);
  evx_free(msg);

  evx_sqlite_opts many = {.readers = 100000};
  ck_assert_int_eq(evx_sqlite_open(loop, path, &many, &db, NULL), EVX_EINVAL);
}
END_TEST

START_TEST(test_wal_mode) {
  evx_sqlite *db = open_db(2, 0);
  evx_sql_result *r = query(db, EVX_SQL_READ, "PRAGMA journal_mode", NULL, 0);
  ck_assert_int_eq(r->status, EVX_OK);
  ck_assert_str_eq(evx_sql_get_text(r, 0, 0), "wal");
  evx_sql_result_free(r);
  r = query(db, EVX_SQL_READ, "PRAGMA busy_timeout", NULL, 0);
  ck_assert_int_eq(evx_sql_get_int(r, 0, 0), 5000);
  evx_sql_result_free(r);
  evx_sqlite_close(db);
}
END_TEST

/* ---- typed round trip --------------------------------------------------------- */

START_TEST(test_types_roundtrip) {
  evx_sqlite *db = open_db(2, 0);
  static const char blob[] = {0, 1, 2, 'x', 0, (char)0xff};
  const char *evil = "x'); DROP TABLE t; --";
  evx_sql_value p[] = {evx_sql_int(-9007199254740993LL), evx_sql_real(2.5),
                       evx_sql_textn("h\0llo", 5), evx_sql_blob(blob, sizeof blob),
                       evx_sql_null(), evx_sql_text(evil)};
  evx_sql_result *r =
      query(db, EVX_SQL_WRITE, "INSERT INTO t (i, r, s, b, n, u) VALUES (?, ?, ?, ?, ?, ?)", p, 6);
  ck_assert_msg(r->status == EVX_OK, "%s", r->errmsg ? r->errmsg : "");
  ck_assert_ptr_null(r->errmsg);
  ck_assert_int_eq(r->changes, 1);
  ck_assert_int_eq(r->last_insert_rowid, 1);
  ck_assert_int_eq(r->nrows, 0);
  evx_sql_result_free(r);

  evx_sql_value id = evx_sql_int(1);
  r = query(db, EVX_SQL_READ, "SELECT id, i, r, s, b, n, u FROM t WHERE id = ?1", &id, 1);
  ck_assert_int_eq(r->status, EVX_OK);
  ck_assert_int_eq(r->nrows, 1);
  ck_assert_int_eq(r->ncols, 7);
  ck_assert_str_eq(r->colnames[3], "s");
  ck_assert_int_eq(evx_sql_col(r, "u"), 6);
  ck_assert_int_eq(evx_sql_col(r, "nope"), -1);
  ck_assert_int_eq(evx_sql_cell(r, 0, 1)->type, EVX_SQL_INT);
  ck_assert(evx_sql_get_int(r, 0, 1) == -9007199254740993LL);
  ck_assert_int_eq(evx_sql_cell(r, 0, 2)->type, EVX_SQL_REAL);
  ck_assert(evx_sql_get_real(r, 0, 2) == 2.5);
  ck_assert_int_eq(evx_sql_get_int(r, 0, 2), 2);
  const evx_sql_value *s = evx_sql_cell(r, 0, 3);
  ck_assert_int_eq(s->type, EVX_SQL_TEXT);
  ck_assert_uint_eq(s->v.s.len, 5);
  ck_assert(memcmp(s->v.s.p, "h\0llo", 6) == 0); /* NUL-terminated too */
  const evx_sql_value *b = evx_sql_cell(r, 0, 4);
  ck_assert_int_eq(b->type, EVX_SQL_BLOB);
  ck_assert_uint_eq(b->v.s.len, sizeof blob);
  ck_assert(memcmp(b->v.s.p, blob, sizeof blob) == 0);
  ck_assert_int_eq(evx_sql_cell(r, 0, 5)->type, EVX_SQL_NULL);
  ck_assert_ptr_null(evx_sql_get_text(r, 0, 5));
  ck_assert_str_eq(evx_sql_get_text(r, 0, 6), evil); /* stored verbatim, never executed */
  ck_assert_ptr_null(evx_sql_cell(r, 1, 0));
  ck_assert_ptr_null(evx_sql_cell(r, 0, 7));
  evx_sql_result_free(r);

  r = query(db, EVX_SQL_READ, "SELECT count(*) AS c FROM sqlite_master WHERE name = 't'", NULL, 0);
  ck_assert_int_eq(evx_sql_get_int(r, 0, 0), 1);
  evx_sql_result_free(r);
  evx_sqlite_close(db);
}
END_TEST

START_TEST(test_many_rows) {
  evx_sqlite *db = open_db(2, 0);
  evx_sql_result *r = query(db, EVX_SQL_READ,
                            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c"
                            " WHERE x < ?) SELECT x, printf('row %d', x) FROM c",
                            (evx_sql_value[]){evx_sql_int(5000)}, 1);
  ck_assert_int_eq(r->status, EVX_OK);
  ck_assert_uint_eq(r->nrows, 5000);
  for (size_t i = 0; i < r->nrows; i++) {
    ck_assert_int_eq(evx_sql_get_int(r, i, 0), (int64_t)i + 1);
    char want[32];
    snprintf(want, sizeof want, "row %zu", i + 1);
    ck_assert_str_eq(evx_sql_get_text(r, i, 1), want);
  }
  evx_sql_result_free(r);
  evx_sqlite_close(db);
}
END_TEST

/* ---- errors carry SQLite's message --------------------------------------- */

START_TEST(test_errors) {
  evx_sqlite *db = open_db(2, 0);
  evx_sql_result *r = query(db, EVX_SQL_READ, "SELEC 1", NULL, 0);
  ck_assert_int_eq(r->status, EVX_EIO);
  ck_assert_int_eq(r->sqlite_code, SQLITE_ERROR);
  ck_assert_msg(strstr(r->errmsg, "syntax error") != NULL, "%s", r->errmsg);
  ck_assert_uint_eq(r->nrows, 0);
  evx_sql_result_free(r);

  r = query(db, EVX_SQL_READ, "SELECT * FROM t WHERE id = ? AND i = ?",
            (evx_sql_value[]){evx_sql_int(1)}, 1);
  ck_assert_int_eq(r->status, EVX_EINVAL);
  ck_assert_msg(strstr(r->errmsg, "2 parameter") != NULL, "%s", r->errmsg);
  evx_sql_result_free(r);

  r = query(db, EVX_SQL_WRITE, "DELETE FROM t; DROP TABLE t", NULL, 0);
  ck_assert_int_eq(r->status, EVX_EINVAL);
  ck_assert_msg(strstr(r->errmsg, "more than one") != NULL, "%s", r->errmsg);
  evx_sql_result_free(r);

  r = query(db, EVX_SQL_READ, "   ", NULL, 0);
  ck_assert_int_eq(r->status, EVX_EINVAL);
  evx_sql_result_free(r);

  /* A trailing semicolon and comment are one statement. */
  r = query(db, EVX_SQL_READ, "SELECT 7; -- done", NULL, 0);
  ck_assert_int_eq(r->status, EVX_OK);
  ck_assert_int_eq(evx_sql_get_int(r, 0, 0), 7);
  evx_sql_result_free(r);

  /* Writes sent to a reader fail: reader connections are query_only. */
  r = query(db, EVX_SQL_READ, "INSERT INTO t (i) VALUES (1)", NULL, 0);
  ck_assert_int_eq(r->status, EVX_EIO);
  ck_assert_msg(strstr(r->errmsg, "readonly") != NULL, "%s", r->errmsg);
  evx_sql_result_free(r);

  evx_sql_value u = evx_sql_text("same");
  r = query(db, EVX_SQL_WRITE, "INSERT INTO t (u) VALUES (?)", &u, 1);
  ck_assert_int_eq(r->status, EVX_OK);
  evx_sql_result_free(r);
  r = query(db, EVX_SQL_WRITE, "INSERT INTO t (u) VALUES (?)", &u, 1);
  ck_assert_int_eq(r->status, EVX_ECONSTRAINT); /* recognisable without SQLite's code 19 */
  ck_assert_int_eq(r->sqlite_code, SQLITE_CONSTRAINT_UNIQUE);
  ck_assert_msg(strstr(r->errmsg, "UNIQUE") != NULL, "%s", r->errmsg);
  evx_sql_result_free(r);

  /* Synchronous argument errors: the callback is never called. */
  collect c = {.want = 1};
  ck_assert_int_eq(evx_sqlite_query(NULL, EVX_SQL_READ, "SELECT 1", NULL, 0, collect_cb, &c),
                   EVX_EINVAL);
  ck_assert_int_eq(evx_sqlite_query(db, EVX_SQL_READ, NULL, NULL, 0, collect_cb, &c), EVX_EINVAL);
  ck_assert_int_eq(evx_sqlite_query(db, EVX_SQL_READ, "SELECT ?", NULL, 1, collect_cb, &c),
                   EVX_EINVAL);
  ck_assert_int_eq(evx_sqlite_query(db, (evx_sql_mode)7, "SELECT 1", NULL, 0, collect_cb, &c),
                   EVX_EINVAL);
  ck_assert_int_eq(c.n, 0);
  evx_sqlite_close(db);
}
END_TEST

/* Parameters are copied: the caller's buffers may change right after the call. */
START_TEST(test_params_copied) {
  evx_sqlite *db = open_db(1, 0);
  char buf[16];
  strcpy(buf, "first");
  collect c = {.want = 1};
  evx_sql_value p = evx_sql_text(buf);
  ck_assert_int_eq(evx_sqlite_query(db, EVX_SQL_READ, "SELECT ?", &p, 1, collect_cb, &c), EVX_OK);
  strcpy(buf, "XXXXXXXXXX");
  run_loop();
  ck_assert_str_eq(evx_sql_get_text(c.res[0], 0, 0), "first");
  collect_free(&c);
  evx_sqlite_close(db);
}
END_TEST

/* ---- one connection per thread ---------------------------------------------- */

typedef struct conn_seen {
  evx_gate *gate;
  pthread_mutex_t lock;
  pthread_t threads[16];
  struct sqlite3 *conns[16];
  int n;
  int dones;
  int want;
} conn_seen;

static int record_conn(struct sqlite3 *conn, void *arg) {
  conn_seen *s = arg;
  pthread_mutex_lock(&s->lock);
  s->threads[s->n] = pthread_self();
  s->conns[s->n] = conn;
  s->n++;
  pthread_mutex_unlock(&s->lock);
  if (s->gate) evx_gate_park(s->gate);
  return 42;
}

static void record_done(void *arg, int status) {
  conn_seen *s = arg;
  ck_assert_int_eq(status, 42);
  if (++s->dones == s->want) evx_loop_stop(loop);
}

static void *open_gate_later(void *arg) {
  evx_gate *g = arg;
  evx_gate_wait_entered(g, 4);
  evx_gate_open(g, 4);
  return NULL;
}

START_TEST(test_connection_per_thread) {
  evx_sqlite *db = open_db(4, 0);
  ck_assert_uint_eq(evx_sqlite_connections(db), 0); /* lazily opened */
  evx_gate gate;
  evx_gate_init(&gate);
  conn_seen s = {.gate = &gate, .want = 4};
  pthread_mutex_init(&s.lock, NULL);
  /* Four parked jobs occupy the four reader threads at once. */
  for (int i = 0; i < 4; i++)
    ck_assert_int_eq(evx_sqlite_call(db, EVX_SQL_READ, record_conn, record_done, &s), EVX_OK);
  pthread_t opener;
  pthread_create(&opener, NULL, open_gate_later, &gate);
  run_loop();
  pthread_join(opener, NULL);
  ck_assert_int_eq(s.n, 4);
  for (int i = 0; i < 4; i++)
    for (int j = i + 1; j < 4; j++) {
      ck_assert(!pthread_equal(s.threads[i], s.threads[j]));
      ck_assert_ptr_ne(s.conns[i], s.conns[j]);
    }
  ck_assert_uint_eq(evx_sqlite_connections(db), 4);

  /* More jobs: every thread keeps using its own connection. */
  s.gate = NULL;
  s.want = 4 + 12;
  for (int i = 0; i < 12; i++)
    ck_assert_int_eq(evx_sqlite_call(db, EVX_SQL_READ, record_conn, record_done, &s), EVX_OK);
  run_loop();
  ck_assert_int_eq(s.n, 16);
  for (int i = 4; i < 16; i++) {
    int found = 0;
    for (int j = 0; j < 4; j++)
      if (pthread_equal(s.threads[i], s.threads[j])) {
        ck_assert_ptr_eq(s.conns[i], s.conns[j]);
        found = 1;
      }
    ck_assert(found);
  }
  ck_assert_uint_eq(evx_sqlite_connections(db), 4);
  evx_sql_result *r = query(db, EVX_SQL_WRITE, "INSERT INTO t (i) VALUES (1)", NULL, 0);
  evx_sql_result_free(r);
  ck_assert_uint_eq(evx_sqlite_connections(db), 5);

  /* Close joins the threads, which close their connections as they exit:
   * afterwards no file descriptor of this process refers to the database. */
  ck_assert_int_gt(open_db_fds(), 0);
  evx_sqlite_close(db);
  ck_assert_int_eq(open_db_fds(), 0);
  evx_gate_destroy(&gate);
  pthread_mutex_destroy(&s.lock);
}
END_TEST

/* ---- reads run while a write holds the write lock ---------------------------- */

static evx_gate wgate;

static int slow_write(struct sqlite3 *conn, void *arg) {
  (void)arg;
  char *msg = NULL;
  int rc = sqlite3_exec(conn, "BEGIN IMMEDIATE; INSERT INTO t (i) VALUES (100);", NULL, NULL, &msg);
  sqlite3_free(msg);
  if (rc != SQLITE_OK) return EVX_EIO;
  evx_gate_park(&wgate); /* holding the write lock, uncommitted */
  rc = sqlite3_exec(conn, "COMMIT", NULL, NULL, NULL);
  return rc == SQLITE_OK ? EVX_OK : EVX_EIO;
}

typedef struct par {
  int reads_done, write_done, second_write_done;
  int64_t seen[8];
  int write_status;
} par;
static par P;

static void par_read_cb(evx_sql_result *res, void *arg) {
  (void)arg;
  ck_assert_int_eq(res->status, EVX_OK);
  ck_assert_int_eq(P.write_done, 0);
  P.seen[P.reads_done++] = evx_sql_get_int(res, 0, 0);
  evx_sql_result_free(res);
  /* Every read finished while the writer was parked: release it now. */
  if (P.reads_done == 8) evx_gate_open(&wgate, 1);
}

static void par_write_done(void *arg, int status) {
  (void)arg;
  P.write_status = status;
  P.write_done = 1;
}

static void par_second_cb(evx_sql_result *res, void *arg) {
  (void)arg;
  /* Queued behind the parked write on the writer: runs after it. */
  ck_assert_int_eq(P.write_done, 1);
  ck_assert_int_eq(res->status, EVX_OK);
  P.second_write_done = 1;
  evx_sql_result_free(res);
  evx_loop_stop(loop);
}

START_TEST(test_reads_parallel_with_write) {
  evx_sqlite *db = open_db(4, 0);
  evx_sql_result_free(query(db, EVX_SQL_WRITE, "INSERT INTO t (i) VALUES (1)", NULL, 0));
  memset(&P, 0, sizeof P);
  evx_gate_init(&wgate);
  ck_assert_int_eq(evx_sqlite_call(db, EVX_SQL_WRITE, slow_write, par_write_done, NULL), EVX_OK);
  ck_assert_int_eq(evx_sqlite_query(db, EVX_SQL_WRITE, "INSERT INTO t (i) VALUES (2)", NULL, 0,
                                    par_second_cb, NULL),
                   EVX_OK);
  evx_gate_wait_entered(&wgate, 1); /* the writer holds the lock now */
  for (int i = 0; i < 8; i++)
    ck_assert_int_eq(evx_sqlite_query(db, EVX_SQL_READ, "SELECT count(*) FROM t", NULL, 0,
                                      par_read_cb, NULL),
                     EVX_OK);
  run_loop();
  ck_assert_int_eq(P.reads_done, 8);
  for (int i = 0; i < 8; i++) ck_assert_int_eq(P.seen[i], 1); /* snapshot before the commit */
  ck_assert_int_eq(P.write_status, EVX_OK);
  ck_assert_int_eq(P.second_write_done, 1);
  evx_sql_result *r = query(db, EVX_SQL_READ, "SELECT i FROM t ORDER BY id", NULL, 0);
  ck_assert_uint_eq(r->nrows, 3);
  ck_assert_int_eq(evx_sql_get_int(r, 1, 0), 100);
  ck_assert_int_eq(evx_sql_get_int(r, 2, 0), 2);
  evx_sql_result_free(r);
  evx_sqlite_close(db);
  evx_gate_destroy(&wgate);
}
END_TEST

/* ---- 1000 writes from 4 threads: none lost, order kept per producer ---------- */

#define PRODUCERS 4
#define PER_PRODUCER 250

typedef struct wres {
  int producer, seq;
  int64_t rowid;
  int status;
} wres;

static wres wr[PRODUCERS * PER_PRODUCER];
static int nwr;
static evx_sqlite *wdb;

static void many_cb(evx_sql_result *res, void *arg) {
  intptr_t tag = (intptr_t)arg;
  wr[nwr].producer = (int)(tag / 10000);
  wr[nwr].seq = (int)(tag % 10000);
  wr[nwr].rowid = res->last_insert_rowid;
  wr[nwr].status = res->status;
  nwr++;
  evx_sql_result_free(res);
  if (nwr == PRODUCERS * PER_PRODUCER) evx_loop_stop(loop);
}

static void *producer(void *arg) {
  int p = (int)(intptr_t)arg;
  for (int i = 0; i < PER_PRODUCER; i++) {
    evx_sql_value v[] = {evx_sql_int(p), evx_sql_int(i)};
    int err = evx_sqlite_query(wdb, EVX_SQL_WRITE, "INSERT INTO t (i, n) VALUES (?, ?)", v, 2,
                               many_cb, (void *)(intptr_t)(p * 10000 + i));
    ck_assert_int_eq(err, EVX_OK);
  }
  return NULL;
}

START_TEST(test_thousand_writes) {
  wdb = open_db(2, 2048);
  nwr = 0;
  pthread_t th[PRODUCERS];
  for (int p = 0; p < PRODUCERS; p++) pthread_create(&th[p], NULL, producer, (void *)(intptr_t)p);
  run_loop();
  for (int p = 0; p < PRODUCERS; p++) pthread_join(th[p], NULL);
  ck_assert_int_eq(nwr, PRODUCERS * PER_PRODUCER);
  int64_t last[PRODUCERS] = {0};
  int next[PRODUCERS] = {0};
  for (int i = 0; i < nwr; i++) {
    ck_assert_int_eq(wr[i].status, EVX_OK);
    int p = wr[i].producer;
    ck_assert_int_eq(wr[i].seq, next[p]); /* callbacks in submission order per producer */
    ck_assert_int_gt(wr[i].rowid, last[p]); /* and the writes happened in that order */
    next[p]++;
    last[p] = wr[i].rowid;
  }
  evx_sql_result *r = query(wdb, EVX_SQL_READ, "SELECT count(*), count(DISTINCT i * 10000 + n) FROM t",
                            NULL, 0);
  ck_assert_int_eq(evx_sql_get_int(r, 0, 0), PRODUCERS * PER_PRODUCER);
  ck_assert_int_eq(evx_sql_get_int(r, 0, 1), PRODUCERS * PER_PRODUCER);
  evx_sql_result_free(r);
  /* The rows of one producer appear in its order. */
  r = query(wdb, EVX_SQL_READ, "SELECT i, n FROM t ORDER BY id", NULL, 0);
  int seen[PRODUCERS] = {0};
  for (size_t i = 0; i < r->nrows; i++) {
    int p = (int)evx_sql_get_int(r, i, 0);
    ck_assert_int_eq(evx_sql_get_int(r, i, 1), seen[p]++);
  }
  evx_sql_result_free(r);
  evx_executor_stats st;
  evx_executor_stats_get(evx_sqlite_writer(wdb), &st);
  ck_assert_uint_eq(st.threads, 1);
  ck_assert_uint_ge(st.completed, PRODUCERS * PER_PRODUCER);
  evx_sqlite_close(wdb);
}
END_TEST

/* ---- futures, cancel, backpressure, shutdown ------------------------------- */

static evx_gate rgate;
static int park_reader(struct sqlite3 *conn, void *arg) {
  (void)conn;
  (void)arg;
  evx_gate_park(&rgate);
  return EVX_OK;
}
static int parked_done;
static void parked_done_cb(void *arg, int status) {
  (void)arg;
  ck_assert_int_eq(status, EVX_OK);
  parked_done++;
}

static void future_cb(evx_future *f, void *arg) {
  int *count = arg;
  (void)f;
  if (--*count == 0) evx_loop_stop(loop);
}

START_TEST(test_future_and_cancel) {
  evx_sqlite *db = open_db(1, 0);
  evx_gate_init(&rgate);
  evx_future *ok = evx_sqlite_query_future(db, EVX_SQL_READ, "SELECT ? + 1",
                                           (evx_sql_value[]){evx_sql_int(41)}, 1);
  ck_assert_ptr_nonnull(ok);
  int pending = 1;
  evx_future_on_done(ok, future_cb, &pending);
  run_loop();
  ck_assert_int_eq(evx_future_status(ok), EVX_OK);
  evx_sql_result *r = evx_future_result(ok);
  ck_assert_int_eq(r->status, EVX_OK);
  ck_assert_int_eq(evx_sql_get_int(r, 0, 0), 42);
  evx_future_release(ok); /* frees the result */

  /* An SQL error still resolves: the message is in the result. */
  evx_future *bad = evx_sqlite_query_future(db, EVX_SQL_READ, "SELECT * FROM nope", NULL, 0);
  pending = 1;
  evx_future_on_done(bad, future_cb, &pending);
  run_loop();
  r = evx_future_take(bad);
  ck_assert_int_eq(r->status, EVX_EIO);
  ck_assert_msg(strstr(r->errmsg, "no such table") != NULL, "%s", r->errmsg);
  evx_sql_result_free(r);
  evx_future_release(bad);

  /* Park the only reader; a queued future can be cancelled and never runs. */
  ck_assert_int_eq(evx_sqlite_call(db, EVX_SQL_READ, park_reader, parked_done_cb, NULL), EVX_OK);
  evx_gate_wait_entered(&rgate, 1);
  evx_future *cancelled = evx_sqlite_query_future(db, EVX_SQL_READ, "SELECT 1", NULL, 0);
  ck_assert_int_eq(evx_future_cancel(cancelled), EVX_OK);
  ck_assert_int_eq(evx_future_status(cancelled), EVX_ECANCELED);
  evx_future_release(cancelled);
  evx_gate_open(&rgate, 1);
  evx_future *after = evx_sqlite_query_future(db, EVX_SQL_READ, "SELECT 1", NULL, 0);
  pending = 1;
  evx_future_on_done(after, future_cb, &pending);
  run_loop();
  ck_assert_int_eq(parked_done, 1);
  evx_executor_stats st;
  evx_executor_stats_get(evx_sqlite_readers(db), &st);
  ck_assert_uint_eq(st.cancelled, 1);
  evx_future_release(after);
  evx_sqlite_close(db);
  evx_gate_destroy(&rgate);
}
END_TEST

/* Cancellation reaches a running query: cancelling the future of a query
 * that would run for minutes (the request's client left) interrupts it - the
 * reader is free again in milliseconds instead of minutes. */
static evx_sqlite *g_idb;
static int reader_state(void *arg) {
  uint64_t want_running = *(uint64_t *)arg;
  evx_executor_stats st;
  evx_executor_stats_get(evx_sqlite_readers(g_idb), &st);
  return st.running == want_running && (want_running || st.completed >= 1);
}

START_TEST(test_cancel_interrupts_running_query) {
  evx_sqlite *db = g_idb = open_db(1, 0);
  static const char *slow =
      "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 4000000000)"
      " SELECT count(*) FROM c";
  evx_future *f = evx_sqlite_query_future(db, EVX_SQL_READ, slow, NULL, 0);
  ck_assert_ptr_nonnull(f);
  uint64_t one = 1, zero = 0;
  evx_test_run_until(loop, reader_state, &one, 10000); /* it runs */
  uint64_t t0 = evx_now_ns();
  ck_assert_int_eq(evx_future_cancel(f), EVX_OK);
  ck_assert_int_eq(evx_future_status(f), EVX_ECANCELED);
  evx_test_run_until(loop, reader_state, &zero, 10000); /* ... and stops */
  uint64_t ms = evx_test_ms_since(t0);
  ck_assert_msg(ms < 2000, "the interrupted query took %llu ms to stop", (unsigned long long)ms);
  evx_future_release(f);

  /* The connection is fine afterwards, and a query that is not cancelled
   * is not interrupted (the flag belonged to the cancelled job). */
  collect c = {.want = 1};
  ck_assert_int_eq(evx_sqlite_query(db, EVX_SQL_READ,
                                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c"
                                    " WHERE x < 100000) SELECT count(*) FROM c",
                                    NULL, 0, collect_cb, &c),
                   EVX_OK);
  run_loop();
  ck_assert_int_eq(c.res[0]->status, EVX_OK);
  ck_assert_int_eq(evx_sql_get_int(c.res[0], 0, 0), 100000);
  collect_free(&c);
  evx_sqlite_close(db);
}
END_TEST

static int cancelled_cbs, ok_cbs;
static void count_cb(evx_sql_result *res, void *arg) {
  (void)arg;
  if (res->status == EVX_ECANCELED) {
    cancelled_cbs++;
    ck_assert_ptr_nonnull(res->errmsg);
  } else {
    ck_assert_int_eq(res->status, EVX_OK);
    ok_cbs++;
  }
  evx_sql_result_free(res);
}

/* The callback form's handle: a queued query is cancelled, its callback
 * says EVX_ECANCELED and it never runs; a started one cannot be. */
START_TEST(test_query_job_cancel) {
  evx_sqlite *db = open_db(1, 4);
  evx_gate_init(&rgate);
  parked_done = cancelled_cbs = ok_cbs = 0;
  ck_assert_int_eq(evx_sqlite_call(db, EVX_SQL_READ, park_reader, parked_done_cb, NULL), EVX_OK);
  evx_gate_wait_entered(&rgate, 1);
  evx_job *queued = NULL, *kept = NULL;
  ck_assert_int_eq(evx_sqlite_query_job(db, EVX_SQL_READ, "SELECT 1", NULL, 0, count_cb, NULL,
                                        &queued),
                   EVX_OK);
  ck_assert_int_eq(evx_sqlite_query_job(db, EVX_SQL_READ, "SELECT 1", NULL, 0, count_cb, NULL,
                                        &kept),
                   EVX_OK);
  ck_assert_ptr_nonnull(queued);
  ck_assert_int_eq(evx_job_cancel(queued), EVX_OK);
  ck_assert_int_eq(cancelled_cbs, 0); /* later, never inside the cancel */
  evx_job *none = NULL;
  ck_assert_int_eq(evx_sqlite_query_job(NULL, EVX_SQL_READ, "SELECT 1", NULL, 0, count_cb, NULL,
                                        &none),
                   EVX_EINVAL);
  ck_assert_ptr_null(none);
  evx_gate_open(&rgate, 1);
  evx_sqlite_close(db); /* runs the owed callbacks */
  ck_assert_int_eq(cancelled_cbs, 1);
  ck_assert_int_eq(ok_cbs, 1);
  ck_assert_int_eq(parked_done, 1);
  evx_gate_destroy(&rgate);
}
END_TEST

START_TEST(test_backpressure_and_shutdown) {
  evx_sqlite *db = open_db(1, 4);
  evx_gate_init(&rgate);
  parked_done = 0;
  ck_assert_int_eq(evx_sqlite_call(db, EVX_SQL_READ, park_reader, parked_done_cb, NULL), EVX_OK);
  evx_gate_wait_entered(&rgate, 1);
  for (int i = 0; i < 4; i++)
    ck_assert_int_eq(evx_sqlite_query(db, EVX_SQL_READ, "SELECT 1", NULL, 0, count_cb, NULL),
                     EVX_OK);
  /* Queue full: answered at once, the callback is never called. */
  ck_assert_int_eq(evx_sqlite_query(db, EVX_SQL_READ, "SELECT 1", NULL, 0, count_cb, NULL),
                   EVX_EBUSY);
  ck_assert_ptr_null(evx_sqlite_query_future(db, EVX_SQL_READ, NULL, NULL, 0));
  evx_future *busy = evx_sqlite_query_future(db, EVX_SQL_READ, "SELECT 1", NULL, 0);
  ck_assert_int_eq(evx_future_status(busy), EVX_EBUSY);
  evx_future_release(busy);
  /* The writer is a different pool: not affected. */
  evx_sql_result *r = query(db, EVX_SQL_WRITE, "INSERT INTO t (i) VALUES (5)", NULL, 0);
  ck_assert_int_eq(r->status, EVX_OK);
  evx_sql_result_free(r);

  ck_assert_int_eq(evx_sqlite_shutdown(db, EVX_SHUTDOWN_CANCEL), EVX_OK);
  ck_assert_int_eq(evx_sqlite_query(db, EVX_SQL_READ, "SELECT 1", NULL, 0, count_cb, NULL),
                   EVX_ECLOSED);
  ck_assert_int_eq(evx_sqlite_query(db, EVX_SQL_WRITE, "SELECT 1", NULL, 0, count_cb, NULL),
                   EVX_ECLOSED);
  evx_gate_open(&rgate, 1);
  evx_sqlite_close(db); /* runs the owed callbacks */
  ck_assert_int_eq(cancelled_cbs, 4);
  ck_assert_int_eq(ok_cbs, 0);
  ck_assert_int_eq(parked_done, 1);
  evx_gate_destroy(&rgate);
}
END_TEST

/* Queue 50 inserts on db, counted by count_cb. */
static void queue_50_writes(evx_sqlite *db) {
  ok_cbs = cancelled_cbs = 0;
  for (int i = 0; i < 50; i++) {
    evx_sql_value v = evx_sql_int(i);
    ck_assert_int_eq(
        evx_sqlite_query(db, EVX_SQL_WRITE, "INSERT INTO t (i) VALUES (?)", &v, 1, count_cb, NULL),
        EVX_OK);
  }
}

/* Every one of them ran and is in the table. */
static void assert_50_written(void) {
  ck_assert_int_eq(ok_cbs, 50);
  ck_assert_int_eq(cancelled_cbs, 0);
  evx_sqlite *db = open_db(1, 0);
  evx_sql_result *r = query(db, EVX_SQL_READ, "SELECT count(*) FROM t", NULL, 0);
  ck_assert_int_eq(evx_sql_get_int(r, 0, 0), 50);
  evx_sql_result_free(r);
  evx_sqlite_close(db);
}

START_TEST(test_close_drains) {
  evx_sqlite *db = open_db(2, 0);
  queue_50_writes(db);
  evx_sqlite_close(db); /* DRAIN: every accepted write runs */
  assert_50_written();
}
END_TEST

/* ---- busy_timeout: an outside writer holds the lock ------------------------- */

static sqlite3 *outside;
static void release_outside(void *arg) {
  (void)arg;
  ck_assert_int_eq(sqlite3_exec(outside, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
}

START_TEST(test_busy_timeout) {
  evx_sqlite_opts o = {.readers = 1, .busy_timeout_ms = 50, .schema = schema};
  evx_sqlite *quick = NULL, *patient = NULL;
  ck_assert_int_eq(evx_sqlite_open(loop, path, &o, &quick, NULL), EVX_OK);
  o.busy_timeout_ms = 5000;
  ck_assert_int_eq(evx_sqlite_open(loop, path, &o, &patient, NULL), EVX_OK);
  ck_assert_int_eq(sqlite3_open(path, &outside), SQLITE_OK);
  ck_assert_int_eq(sqlite3_exec(outside, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);

  /* Held for longer than the 50 ms timeout: the write gives up with EBUSY. */
  evx_sql_result *r = query(quick, EVX_SQL_WRITE, "INSERT INTO t (i) VALUES (1)", NULL, 0);
  ck_assert_int_eq(r->status, EVX_ELOCKED); /* not EVX_EBUSY, the queue-full answer */
  ck_assert_int_eq(r->sqlite_code & 0xff, SQLITE_BUSY);
  ck_assert_ptr_nonnull(r->errmsg);
  ck_assert_uint_ge(r->run_ns, 40 * 1000000ULL);
  evx_sql_result_free(r);
  /* Readers are not blocked by the outside writer (WAL). */
  r = query(quick, EVX_SQL_READ, "SELECT count(*) FROM t", NULL, 0);
  ck_assert_int_eq(r->status, EVX_OK);
  evx_sql_result_free(r);

  /* With a 5 s timeout the write waits for the lock (released after 100 ms). */
  ck_assert_ptr_nonnull(evx_call_later(loop, 100, release_outside, NULL));
  r = query(patient, EVX_SQL_WRITE, "INSERT INTO t (i) VALUES (2)", NULL, 0);
  ck_assert_msg(r->status == EVX_OK, "%s", r->errmsg ? r->errmsg : "");
  ck_assert_uint_ge(r->run_ns, 50 * 1000000ULL);
  evx_sql_result_free(r);
  sqlite3_close(outside);
  evx_sqlite_close(quick);
  evx_sqlite_close(patient);
}
END_TEST

/* ---- one status: evx_sqlite_await, evx_sql_future_status, call_future ----- */

#include <evexec/coro.h>

static int future_done(void *arg) { return evx_future_is_done(arg); }

/* Run fn as a coroutine of the test loop until it returned. */
static void run_coro(evx_coro_fn fn, void *arg) {
  evx_future *f = evx_go(loop, fn, arg, NULL);
  ck_assert_ptr_nonnull(f);
  evx_test_run_until(loop, future_done, f, 10000);
  ck_assert_int_eq(evx_future_status(f), EVX_OK);
  evx_future_release(f);
}

typedef struct await_ctx {
  evx_sqlite *db, *quick; /* quick: busy_timeout 50 ms, one reader, queue of 4 */
} await_ctx;

/* One status per outcome, and the result (with SQLite's message) reachable
 * whenever the query ran: success, a constraint, an SQL error, a locked
 * database (EVX_ELOCKED) and a full queue (EVX_EBUSY, the query never ran)
 * each come back as the single return value. */
static void *await_body(void *arg) {
  await_ctx *c = arg;
  evx_sql_result *r = (evx_sql_result *)1;
  evx_sql_value u = evx_sql_text("once");
  ck_assert_int_eq(evx_sqlite_await(c->db, EVX_SQL_WRITE, "INSERT INTO t (u) VALUES (?)", &u, 1, &r),
                   EVX_OK);
  ck_assert_int_eq(r->status, EVX_OK);
  ck_assert_int_eq(r->changes, 1);
  evx_sql_result_free(r);

  /* A UNIQUE violation is THE status, and its message is still there. */
  ck_assert_int_eq(evx_sqlite_await(c->db, EVX_SQL_WRITE, "INSERT INTO t (u) VALUES (?)", &u, 1, &r),
                   EVX_ECONSTRAINT);
  ck_assert_ptr_nonnull(r);
  ck_assert_int_eq(r->sqlite_code & 0xff, SQLITE_CONSTRAINT);
  ck_assert_msg(strstr(r->errmsg, "UNIQUE") != NULL, "%s", r->errmsg);
  evx_sql_result_free(r);

  /* Without out: the result is freed, the status stays. */
  ck_assert_int_eq(evx_sqlite_await(c->db, EVX_SQL_READ, "SELECT * FROM nope", NULL, 0, NULL),
                   EVX_EIO);
  ck_assert_int_eq(evx_sqlite_await(c->db, EVX_SQL_READ, "SELECT ?", NULL, 0, &r), EVX_EINVAL);
  ck_assert_ptr_nonnull(r); /* it ran: SQLite's parameter count check */
  evx_sql_result_free(r);
  ck_assert_int_eq(evx_sqlite_await(NULL, EVX_SQL_READ, "SELECT 1", NULL, 0, &r), EVX_EINVAL);
  ck_assert_ptr_null(r);

  /* The database locked past busy_timeout: EVX_ELOCKED, SQLite's BUSY inside. */
  ck_assert_int_eq(sqlite3_open(path, &outside), SQLITE_OK);
  ck_assert_int_eq(sqlite3_exec(outside, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
  ck_assert_int_eq(evx_sqlite_await(c->quick, EVX_SQL_WRITE, "INSERT INTO t (i) VALUES (1)", NULL,
                                    0, &r),
                   EVX_ELOCKED);
  ck_assert_int_eq(r->sqlite_code & 0xff, SQLITE_BUSY);
  evx_sql_result_free(r);
  ck_assert_int_eq(sqlite3_exec(outside, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(outside);

  /* The queue full: EVX_EBUSY at once, nothing ran, no result. */
  ck_assert_int_eq(evx_sqlite_call(c->quick, EVX_SQL_READ, park_reader, parked_done_cb, NULL),
                   EVX_OK);
  evx_gate_wait_entered(&rgate, 1);
  for (int i = 0; i < 4; i++)
    ck_assert_int_eq(evx_sqlite_query(c->quick, EVX_SQL_READ, "SELECT 1", NULL, 0, count_cb, NULL),
                     EVX_OK);
  r = (evx_sql_result *)1;
  ck_assert_int_eq(evx_sqlite_await(c->quick, EVX_SQL_READ, "SELECT 1", NULL, 0, &r), EVX_EBUSY);
  ck_assert_ptr_null(r);
  evx_gate_open(&rgate, 1);
  ck_assert_int_eq(evx_sqlite_await(c->db, EVX_SQL_READ, "SELECT count(*) FROM t WHERE u = 'once'",
                                    NULL, 0, &r),
                   EVX_OK);
  ck_assert_int_eq(evx_sql_get_int(r, 0, 0), 1);
  evx_sql_result_free(r);
  return NULL;
}

START_TEST(test_await_one_status) {
  await_ctx c = {.db = open_db(2, 0)};
  evx_sqlite_opts o = {.readers = 1, .max_queue = 4, .busy_timeout_ms = 50, .schema = schema};
  ck_assert_int_eq(evx_sqlite_open(loop, path, &o, &c.quick, NULL), EVX_OK);
  evx_gate_init(&rgate);
  parked_done = cancelled_cbs = ok_cbs = 0;
  evx_sql_result *r = (evx_sql_result *)1;
  /* Outside a coroutine: EVX_EINVAL at once, nothing queued. */
  ck_assert_int_eq(evx_sqlite_await(c.db, EVX_SQL_READ, "SELECT 1", NULL, 0, &r), EVX_EINVAL);
  ck_assert_ptr_null(r);
  run_coro(await_body, &c);
  /* The parked reader and the four queries behind it are on c.quick; the
   * coroutine's last await was on c.db and may end first. */
  evx_test_run_until_count(loop, &parked_done, 1, 10000);
  evx_test_run_until_count(loop, &ok_cbs, 4, 10000);
  ck_assert_int_eq(parked_done, 1);
  ck_assert_int_eq(ok_cbs, 4);
  evx_sqlite_close(c.quick);
  evx_sqlite_close(c.db);
  evx_gate_destroy(&rgate);
}
END_TEST

/* The same statuses through the future form's evx_sql_future_status. */
START_TEST(test_future_one_status) {
  evx_sqlite *db = open_db(1, 0), *small = open_db(1, 1);
  evx_gate_init(&rgate);
  parked_done = cancelled_cbs = ok_cbs = 0;
  ck_assert_int_eq(evx_sql_future_status(NULL), EVX_EINVAL);
  evx_sql_value u = evx_sql_text("x");
  evx_future *f[2];
  for (int i = 0; i < 2; i++)
    f[i] = evx_sqlite_query_future(db, EVX_SQL_WRITE, "INSERT INTO t (u) VALUES (?)", &u, 1);
  ck_assert_int_eq(evx_sql_future_status(f[1]), EVX_PENDING);
  evx_future *all = evx_future_all(loop, f, 2);
  evx_test_run_until(loop, future_done, all, 10000);
  evx_future_release(all);
  ck_assert_int_eq(evx_sql_future_status(f[0]), EVX_OK);
  ck_assert_int_eq(evx_sql_future_status(f[1]), EVX_ECONSTRAINT);
  ck_assert_ptr_nonnull(strstr(((evx_sql_result *)evx_future_result(f[1]))->errmsg, "UNIQUE"));
  evx_sql_result_free(evx_future_take(f[1]));
  ck_assert_int_eq(evx_sql_future_status(f[1]), EVX_EINVAL); /* taken */
  evx_future_release(f[0]);
  evx_future_release(f[1]);

  ck_assert_int_eq(evx_sqlite_call(small, EVX_SQL_READ, park_reader, parked_done_cb, NULL), EVX_OK);
  evx_gate_wait_entered(&rgate, 1);
  ck_assert_int_eq(evx_sqlite_query(small, EVX_SQL_READ, "SELECT 1", NULL, 0, count_cb, NULL),
                   EVX_OK);
  evx_future *busy = evx_sqlite_query_future(small, EVX_SQL_READ, "SELECT 1", NULL, 0);
  ck_assert_int_eq(evx_sql_future_status(busy), EVX_EBUSY);
  evx_future_release(busy);
  evx_gate_open(&rgate, 1);
  evx_sqlite_close(small);
  evx_sqlite_close(db);
  ck_assert_int_eq(ok_cbs, 1);
  evx_gate_destroy(&rgate);
}
END_TEST

/* evx_sqlite_call_future: fn's status is the future's; arg_free runs once
 * on every path; awaited through evx_future_all, a cancelled awaiter does
 * not stop the work. */
static int arg_frees;
static void count_arg_free(void *p) {
  ck_assert_ptr_eq(p, &arg_frees);
  arg_frees++;
}
static int conflicting_insert(struct sqlite3 *conn, void *arg) {
  (void)arg;
  int rc = sqlite3_exec(conn, "INSERT INTO t (u) VALUES ('c'); INSERT INTO t (u) VALUES ('c')",
                        NULL, NULL, NULL);
  return rc == SQLITE_OK ? EVX_OK : (rc & 0xff) == SQLITE_CONSTRAINT ? EVX_ECONSTRAINT : EVX_EIO;
}
static int park_writer(struct sqlite3 *conn, void *arg) {
  (void)conn;
  (void)arg;
  evx_gate_park(&rgate);
  return sqlite3_exec(conn, "INSERT INTO t (u) VALUES ('kept')", NULL, NULL, NULL) == SQLITE_OK
             ? EVX_OK
             : EVX_EIO;
}
static int hook_status = EVX_PENDING;
static void hook_cb(evx_future *f, void *arg) {
  (void)arg;
  hook_status = evx_future_status(f);
}
static int hook_ran(void *arg) {
  (void)arg;
  return hook_status != EVX_PENDING;
}

START_TEST(test_call_future) {
  evx_sqlite *db = open_db(1, 1);
  evx_gate_init(&rgate);
  arg_frees = 0;
  hook_status = EVX_PENDING;
  ck_assert_ptr_null(evx_sqlite_call_future(NULL, EVX_SQL_WRITE, conflicting_insert, NULL, NULL));
  ck_assert_ptr_null(evx_sqlite_call_future(db, EVX_SQL_WRITE, NULL, &arg_frees, count_arg_free));
  ck_assert_int_eq(arg_frees, 0);

  evx_future *f = evx_sqlite_call_future(db, EVX_SQL_WRITE, conflicting_insert, &arg_frees,
                                         count_arg_free);
  evx_test_run_until(loop, future_done, f, 10000);
  ck_assert_int_eq(evx_future_status(f), EVX_ECONSTRAINT);
  ck_assert_int_eq(arg_frees, 1);
  evx_future_release(f);

  /* Shielded: the awaiter's future is cancelled, the write still runs, and
   * a callback on the call's own future sees it succeed. */
  f = evx_sqlite_call_future(db, EVX_SQL_WRITE, park_writer, &arg_frees, count_arg_free);
  ck_assert_int_eq(evx_future_on_done(f, hook_cb, NULL), EVX_OK);
  evx_gate_wait_entered(&rgate, 1);
  evx_future *queued = evx_sqlite_call_future(db, EVX_SQL_WRITE, park_writer, &arg_frees,
                                              count_arg_free);
  evx_future *full = evx_sqlite_call_future(db, EVX_SQL_WRITE, park_writer, &arg_frees,
                                            count_arg_free);
  ck_assert_int_eq(evx_future_status(full), EVX_EBUSY); /* the queue holds one */
  ck_assert_int_eq(arg_frees, 2);
  evx_future_release(full);
  ck_assert_int_eq(evx_future_cancel(queued), EVX_OK); /* not started: never runs */
  evx_future_release(queued);
  evx_future *shield = evx_future_all(loop, &f, 1);
  ck_assert_int_eq(evx_future_cancel(shield), EVX_OK);
  evx_future_release(shield);
  evx_future_release(f);
  evx_gate_open(&rgate, 1);
  evx_test_run_until(loop, hook_ran, NULL, 10000);
  ck_assert_int_eq(hook_status, EVX_OK);
  evx_test_run_until_count(loop, &arg_frees, 4, 10000);
  evx_sql_result *r = query(db, EVX_SQL_READ, "SELECT count(*) FROM t WHERE u = 'kept'", NULL, 0);
  ck_assert_int_eq(evx_sql_get_int(r, 0, 0), 1);
  evx_sql_result_free(r);
  evx_sqlite_close(db);
  evx_gate_destroy(&rgate);
}
END_TEST

/* A handle left open at evx_loop_free is closed by it (the ownership rule:
 * newest first, so before its own executors): DRAIN, every write runs. Were
 * the executors freed first they would cancel the writes not started. */
START_TEST(test_left_open_closed_by_loop_free) {
  queue_50_writes(open_db(2, 0));
  evx_loop_free(loop);
  loop = evx_loop_new(NULL); /* for the check below and the teardown */
  ck_assert_ptr_nonnull(loop);
  assert_50_written();
}
END_TEST

Suite *suite(void);
Suite *suite(void) {
  Suite *s = suite_create("sqlite");
  TCase *tc = tcase_create("sqlite");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_open_errors);
  tcase_add_test(tc, test_wal_mode);
  tcase_add_test(tc, test_types_roundtrip);
  tcase_add_test(tc, test_many_rows);
  tcase_add_test(tc, test_errors);
  tcase_add_test(tc, test_params_copied);
  tcase_add_test(tc, test_connection_per_thread);
  tcase_add_test(tc, test_reads_parallel_with_write);
  tcase_add_test(tc, test_thousand_writes);
  tcase_add_test(tc, test_future_and_cancel);
  tcase_add_test(tc, test_cancel_interrupts_running_query);
  tcase_add_test(tc, test_backpressure_and_shutdown);
  tcase_add_test(tc, test_close_drains);
  tcase_add_test(tc, test_busy_timeout);
  tcase_add_test(tc, test_query_job_cancel);
  tcase_add_test(tc, test_left_open_closed_by_loop_free);
  tcase_add_test(tc, test_await_one_status);
  tcase_add_test(tc, test_future_one_status);
  tcase_add_test(tc, test_call_future);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return evx_test_main(suite()); }
