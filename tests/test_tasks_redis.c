/* ext/tasks on Redis Streams (redis://HOST:PORT/DB): the shared cases of
 * tests/tasks_suite.h against a real redis-server started per test, plus
 * what only Redis does - the server going away and coming back, entries
 * written by hand, and worker processes on one queue (one killed mid-task). */
#include <evexec/sqlite.h>
#include <evexec/tasks.h>
#include <sqlite3.h>
#include <sys/wait.h>

#include "evx_test.h"
#include "evx_test_redis.h"

static evx_redis ts_srv;

static void ts_backend_setup(void) { ck_assert_int_eq(evx_redis_start(&ts_srv), 0); }
static void ts_backend_teardown(void) { evx_redis_free(&ts_srv); }
static const char *ts_backend_url(void) { return ts_srv.url; }
static void ts_backend_opts(evx_tasks_opts *o) { (void)o; }

#include "tasks_suite.h"

/* ---- Redis only ------------------------------------------------------------- */

#define STREAM "evx:{default}:s"

static long long xlen(const char *key) { return evx_redis_int(&ts_srv, "XLEN %s", key); }

/* Redis is down: the loop keeps running, enqueue fails at once with EVX_EIO
 * (no outbox configured), stats count the refusals; once Redis is back the
 * queue reconnects by itself and the tasks run. */
START_TEST(redis_down_enqueue_fails_fast) {
  ts_begin(TS_DONE);
  evx_tasks_opts o = ts_opts();
  evx_tasks *q = ts_open_started(&o);
  evx_free(ts_enqueue_wait(q, "t", 1, NULL));
  ts_run_until(&ts.dones, 1, 10000);

  evx_redis_stop(&ts_srv);
  ts_run_for(100); /* the queue notices */
  for (int i = 0; i < 3; i++) {
    uint64_t t0 = evx_now_ns();
    evx_future *f = ts_enqueue(q, "t", 2, NULL);
    ck_assert_ptr_nonnull(f);
    ck_assert(evx_future_is_done(f)); /* settled when enqueue returns */
    ck_assert_int_eq(evx_future_status(f), EVX_EIO);
    ck_assert_uint_lt(evx_test_ms_since(t0), 50);
    evx_future_release(f);
    ts_run_for(100); /* and the loop keeps running meanwhile */
  }
  ck_assert_uint_ge(ts_stats(q).rejected, 3);

  ck_assert_int_eq(evx_redis_restart(&ts_srv), 0);
  /* reconnects with backoff (at most 2 s apart) */
  uint64_t t0 = evx_now_ns();
  for (;;) {
    evx_future *f = ts_enqueue(q, "t", 3, NULL);
    int st = ts_wait(f, 10000);
    evx_future_release(f);
    if (st == EVX_OK) break;
    ck_assert_int_eq(st, EVX_EIO);
    ck_assert_uint_lt(evx_test_ms_since(t0), 5000);
    ts_run_for(20);
  }
  ts_run_until(&ts.dones, 2, 10000);
  ck_assert_int_eq(atomic_load(&ts.seen[3]), 1);
  ck_assert_int_eq(atomic_load(&ts.seen[2]), 0); /* refused: never stored */
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

/* What evx_tasks_enqueue_sql saw, on the application database's writer. */
typedef struct sql_try {
  evx_tasks *q;
  int enq_rc;
  char *id;
  long long objects; /* tables, indexes, ... in the application database */
  int done;
  int status;
} sql_try;

static int sql_try_fn(sqlite3 *conn, void *arg) {
  sql_try *t = arg;
  t->enq_rc = evx_tasks_enqueue_sql(t->q, conn, "t", "n=9", 3, NULL, &t->id);
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(conn, "SELECT count(*) FROM sqlite_master", -1, &st, NULL) != SQLITE_OK)
    return EVX_EIO;
  t->objects = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
  sqlite3_finalize(st);
  return EVX_OK;
}

static void sql_try_done(void *arg, int status) {
  sql_try *t = arg;
  t->status = status;
  t->done = 1;
}

/* opts.db on a Redis queue is not an outbox: the database is never touched
 * (no table is created in it), evx_tasks_enqueue_sql answers EVX_EINVAL, and
 * with Redis down an enqueue fails at once with EVX_EIO - nothing is kept
 * locally to be forwarded later. */
START_TEST(redis_opts_db_is_not_an_outbox) {
  ts_begin(TS_DONE);
  char path[320];
  snprintf(path, sizeof path, "%s/app.db", ts_srv.dir);
  evx_sqlite_opts so = {.readers = 1};
  evx_sqlite *db = NULL;
  ck_assert_int_eq(evx_sqlite_open(ts_loop, path, &so, &db, NULL), EVX_OK);
  evx_tasks_opts o = ts_opts();
  o.db = db;
  evx_tasks *q = ts_open_started(&o);
  evx_free(ts_enqueue_wait(q, "t", 1, NULL)); /* Redis up: a plain Redis queue */
  ts_run_until(&ts.dones, 1, 10000);
  ts_wait_counts(q, 0, 0, 0, 0); /* and acknowledged */

  sql_try t = {.q = q, .enq_rc = -1, .objects = -1};
  ck_assert_int_eq(evx_sqlite_call(db, EVX_SQL_WRITE, sql_try_fn, sql_try_done, &t), EVX_OK);
  evx_test_run_until_count(ts_loop, &t.done, 1, 10000);
  ck_assert_int_eq(t.status, EVX_OK);
  ck_assert_int_eq(t.enq_rc, EVX_EINVAL);
  ck_assert_ptr_null(t.id);
  ck_assert_int_eq(t.objects, 0);

  evx_redis_stop(&ts_srv);
  ts_run_for(100); /* the queue notices */
  evx_future *f = ts_enqueue(q, "t", 2, NULL);
  ck_assert_ptr_nonnull(f);
  ck_assert(evx_future_is_done(f));
  ck_assert_int_eq(evx_future_status(f), EVX_EIO);
  evx_future_release(f);

  ck_assert_int_eq(evx_redis_restart(&ts_srv), 0);
  ts_run_for(300);
  ck_assert_int_eq(atomic_load(&ts.seen[2]), 0); /* refused: not kept, not forwarded */
  ck_assert_int_eq(xlen(STREAM), 0);
  ts_shutdown_free(q, 1000);
  evx_sqlite_close(db);
  ts_end();
}
END_TEST

/* Redis crashes (SIGKILL) and restarts mid-run: every enqueue that was
 * acknowledged runs (appendfsync always); tasks in flight come back. */
START_TEST(redis_restart_loses_no_acked_task) {
  ts_begin(TS_DONE);
  evx_tasks_opts o = ts_opts();
  o.visibility_ms = 300;
  evx_tasks *q = ts_open_with(&o);
  ck_assert_int_eq(evx_tasks_register(q, "t", ts_handler, &ts), EVX_OK);
  enum { N = 400 };
  evx_future *fs[N];
  for (int i = 0; i < N / 2; i++) fs[i] = ts_enqueue(q, "t", i, NULL);
  for (int i = 0; i < N / 2; i++) ck_assert_int_eq(ts_wait(fs[i], 30000), EVX_OK);
  ck_assert_int_eq(evx_tasks_start(q), EVX_OK);
  ts_run_until(&ts.dones, 20, 30000);
  evx_redis_kill(&ts_srv); /* mid-run: leases, acks and enqueues in flight */
  for (int i = N / 2; i < N; i++) fs[i] = ts_enqueue(q, "t", i, NULL);
  ts_run_for(50);
  ck_assert_int_eq(evx_redis_restart(&ts_srv), 0);
  int acked = 0;
  for (int i = 0; i < N; i++) {
    int st = ts_wait(fs[i], 30000);
    ck_assert_msg(st == EVX_OK || st == EVX_EIO, "status %d", st);
    if (st == EVX_OK) acked++;
  }
  ck_assert_int_ge(acked, N / 2);
  /* every acknowledged task runs at least once */
  for (int i = 0; i < N; i++) {
    if (evx_future_status(fs[i]) != EVX_OK) continue;
    for (int w = 0; w < 1000 && atomic_load(&ts.seen[i]) == 0; w++) ts_run_for(10);
    ck_assert_msg(atomic_load(&ts.seen[i]) >= 1, "acknowledged task n=%d never ran", i);
  }
  for (int i = 0; i < N; i++) evx_future_release(fs[i]);
  ts_wait_counts(q, 0, 0, 0, 0);
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

/* Entries written by hand into the stream (redis-cli) that are not tasks
 * are dead-lettered with an error naming the problem; good ones still run. */
START_TEST(redis_malformed_entries) {
  ts_begin(TS_DONE);
  evx_tasks_opts o = ts_opts();
  evx_tasks *q = ts_open_started(&o);
  const char *bad[][2] = {{"XADD " STREAM " * foo bar", "no task name"},
                          {"XADD " STREAM " * n t", "no payload"},
                          {"XADD " STREAM " * n bad/name p x", "bad task name"},
                          {"XADD " STREAM " * n t p x m lots", "not a number"},
                          {"XADD " STREAM " * n t p %b", "no payload"}};
  for (size_t i = 0; i < 5; i++) {
    redisReply *r = i == 4 ? evx_redis_cmd(&ts_srv, bad[i][0], "", (size_t)0)
                           : evx_redis_cmd(&ts_srv, bad[i][0]);
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(r->type, REDIS_REPLY_STRING);
    freeReplyObject(r);
  }
  redisReply *r = evx_redis_cmd(&ts_srv, "XADD " STREAM " * n t p n=7");
  ck_assert_ptr_nonnull(r);
  freeReplyObject(r);
  ts_run_until(&ts.dones, 1, 10000);
  ck_assert_int_eq(atomic_load(&ts.seen[7]), 1);
  ts_wait_counts(q, 0, 0, 0, 5);
  evx_task_list *l = ts_dead(q);
  ck_assert_uint_eq(l->n, 5);
  for (size_t i = 0; i < 5; i++) {
    ck_assert_ptr_nonnull(l->items[i].last_error);
    ck_assert_msg(strstr(l->items[i].last_error, "malformed stream entry") &&
                      strstr(l->items[i].last_error, bad[i][1]),
                  "entry %zu: %s", i, l->items[i].last_error);
  }
  evx_task_list_free(l);
  ck_assert_int_eq(atomic_load(&ts.runs), 1);
  ck_assert_int_eq(xlen(STREAM), 0);
  ts_shutdown_free(q, 1000);
  ts_end();
}
END_TEST

/* ---- worker processes ---------------------------------------------------------- */

/* A worker process's handler records each run in Redis (its own blocking
 * connection per thread): RPUSH starts "<pid> <payload>" before the work,
 * HINCRBY done <payload> after it. */
static _Thread_local redisContext *wk_conn;
static redisContext *wk_conns[16]; /* every thread's, freed at exit (valgrind) */
static pthread_mutex_t wk_mu = PTHREAD_MUTEX_INITIALIZER;
static volatile sig_atomic_t wk_term;

static evx_task_result wk_handler(evx_task *t, void *arg) {
  (void)arg;
  if (!wk_conn) {
    wk_conn = redisConnect("127.0.0.1", ts_srv.port);
    pthread_mutex_lock(&wk_mu);
    for (size_t i = 0; i < 16; i++)
      if (!wk_conns[i]) {
        wk_conns[i] = wk_conn;
        break;
      }
    pthread_mutex_unlock(&wk_mu);
  }
  size_t len;
  const char *p = evx_task_payload(t, &len);
  redisReply *r = redisCommand(wk_conn, "RPUSH starts %d:%b", (int)getpid(), p, len);
  if (r) freeReplyObject(r);
  evx_test_sleep_ms(1); /* the work */
  r = redisCommand(wk_conn, "HINCRBY done %b 1", p, len);
  if (r) freeReplyObject(r);
  return EVX_TASK_DONE;
}

static void wk_on_term(int sig) {
  (void)sig;
  wk_term = 1;
}

typedef struct wk_state {
  evx_loop *loop;
  evx_tasks *q;
  evx_future *shut;
} wk_state;

static void wk_shut_done(evx_future *f, void *arg) {
  (void)f;
  evx_loop_stop(((wk_state *)arg)->loop);
}

static void wk_tick(void *arg) {
  wk_state *w = arg;
  if (wk_term && !w->shut) {
    w->shut = evx_tasks_shutdown(w->q, 5000); /* finish running tasks, release the rest */
    evx_future_on_done(w->shut, wk_shut_done, w);
    return;
  }
  evx_call_later(w->loop, 10, wk_tick, w);
}

/* The body of a worker process: role WORKER until SIGTERM. Exit 0 after a
 * clean shutdown. */
static void worker_main(void) {
  signal(SIGTERM, wk_on_term);
  wk_state w = {0};
  w.loop = evx_loop_new(NULL);
  evx_tasks_opts o = {.role = EVX_TASKS_ROLE_WORKER, .workers = 2, .visibility_ms = 3000,
                      .poll_ms = 20};
  if (!w.loop || evx_tasks_open(w.loop, ts_srv.url, &o, &w.q, NULL) != EVX_OK) _exit(2);
  if (evx_tasks_register(w.q, "mail", wk_handler, NULL) != EVX_OK) _exit(3);
  if (evx_tasks_start(w.q) != EVX_OK) _exit(4);
  evx_call_later(w.loop, 10, wk_tick, &w);
  evx_loop_run(w.loop);
  evx_future_release(w.shut);
  evx_tasks_free(w.q);
  evx_loop_free(w.loop);
  for (size_t i = 0; i < 16; i++)
    if (wk_conns[i]) redisFree(wk_conns[i]);
  _exit(0);
}

static long long starts_by(pid_t pid) {
  redisReply *r = evx_redis_cmd(&ts_srv, "LRANGE starts 0 -1");
  ck_assert_ptr_nonnull(r);
  long long n = 0;
  char prefix[32];
  int pl = snprintf(prefix, sizeof prefix, "%d:", (int)pid);
  for (size_t i = 0; i < r->elements; i++)
    if (strncmp(r->element[i]->str, prefix, (size_t)pl) == 0) n++;
  freeReplyObject(r);
  return n;
}

/* One web process (this one, role PRODUCER) and three worker processes on
 * one queue; 2,000 tasks; one worker is SIGKILLed mid-task. Every task
 * completes; a task runs twice only if the killed worker had it; the other
 * workers stop cleanly on SIGTERM and leave nothing leased. */
START_TEST(redis_worker_processes) {
  ts_begin(TS_DONE);
  pid_t pids[3];
  for (int i = 0; i < 3; i++) {
    pids[i] = fork();
    ck_assert_int_ge(pids[i], 0);
    if (pids[i] == 0) worker_main();
  }
  evx_tasks_opts o = ts_opts();
  o.role = EVX_TASKS_ROLE_PRODUCER;
  evx_tasks *q = ts_open_with(&o);
  enum { NMAX = 2000 };
  /* EVX_TEST_SLOW (valgrind, sanitizers): fewer tasks, same checks */
  const int N = getenv("EVX_TEST_SLOW") ? 300 : NMAX;
  const int kill_after = getenv("EVX_TEST_SLOW") ? 10 : 50;
  static evx_future *fs[NMAX];
  char p[32];
  for (int i = 0; i < N; i++) {
    int len = snprintf(p, sizeof p, "n=%d", i);
    fs[i] = evx_tasks_enqueue(q, "mail", p, (size_t)len, NULL);
    ck_assert_ptr_nonnull(fs[i]);
    if (i % 200 == 199) ts_run_for(5);
  }
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(ts_wait(fs[i], 10000), EVX_OK);
    evx_future_release(fs[i]);
  }
  /* kill worker 0 once it is in the middle of its work */
  for (int w = 0; w < 2000 && starts_by(pids[0]) < kill_after; w++) evx_test_sleep_ms(5);
  ck_assert_int_ge(starts_by(pids[0]), kill_after);
  kill(pids[0], SIGKILL);
  int status;
  ck_assert_int_eq(waitpid(pids[0], &status, 0), pids[0]);
  /* every task completes (the killed worker's leases expire after 3 s; shorter
   * leases expire in a loaded machine's live workers too, which is a
   * legitimate duplicate but not the one this test is about) */
  for (int w = 0; w < 6000 && evx_redis_int(&ts_srv, "HLEN done") < N; w++) evx_test_sleep_ms(5);
  ck_assert_int_eq(evx_redis_int(&ts_srv, "HLEN done"), N);
  for (int i = 1; i < 3; i++) kill(pids[i], SIGTERM);
  for (int i = 1; i < 3; i++) {
    ck_assert_int_eq(waitpid(pids[i], &status, 0), pids[i]);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker %d status %d", i, status);
  }
  /* a task that started more than once had a start in the killed worker */
  redisReply *starts = evx_redis_cmd(&ts_srv, "LRANGE starts 0 -1");
  ck_assert_ptr_nonnull(starts);
  static int runs[NMAX], killed_had[NMAX];
  memset(runs, 0, sizeof runs);
  memset(killed_had, 0, sizeof killed_had);
  for (size_t i = 0; i < starts->elements; i++) {
    int pid, k;
    ck_assert_int_eq(sscanf(starts->element[i]->str, "%d:n=%d", &pid, &k), 2);
    ck_assert(k >= 0 && k < N);
    runs[k]++;
    if (pid == pids[0]) killed_had[k] = 1;
  }
  freeReplyObject(starts);
  int dups = 0;
  for (int k = 0; k < N; k++) {
    ck_assert_int_ge(runs[k], 1);
    if (runs[k] > 1) {
      dups++;
      ck_assert_msg(killed_had[k], "task n=%d ran %d times, none in the killed worker", k, runs[k]);
    }
  }
  ck_assert_int_ge(dups, 1); /* the kill did interrupt work */
  ck_assert_int_eq(xlen(STREAM), 0);
  redisReply *pend = evx_redis_cmd(&ts_srv, "XPENDING " STREAM " evx");
  ck_assert_ptr_nonnull(pend);
  ck_assert_int_eq(pend->element[0]->integer, 0);
  freeReplyObject(pend);
  evx_tasks_free(q);
  ts_end();
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("tasks_redis");
  ts_suite_add(s);
  TCase *tc = evx_test_tcase(s, "redis", 60);
  tcase_add_test(tc, redis_down_enqueue_fails_fast);
  tcase_add_test(tc, redis_opts_db_is_not_an_outbox);
  tcase_add_test(tc, redis_restart_loses_no_acked_task);
  tcase_add_test(tc, redis_malformed_entries);
  tcase_add_test(tc, redis_worker_processes);
  return s;
}

int main(void) { return evx_test_main(suite()); }
