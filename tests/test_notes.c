/* The notes service end to end: the real evx_notes binary, a real SQLite
 * file, a real SMTP server (aiosmtpd) on loopback, libcurl as the client. */
#include <pthread.h>
#include <sqlite3.h>

#include "evx_test.h"
#include "test_notes_server.h"
#include "test_notes_smtp.h"

static notes_server S;
static nt_resp R;

static void setup(void) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  memset(&S, 0, sizeof S);
}

static void teardown(void) { nt_cleanup(&S); }

static void stop_clean(void) {
  int code = nt_stop(&S);
  ck_assert_msg(code == 0, "server exit status %d; log:\n%s", code, nt_log(&S));
  ck_assert_ptr_nonnull(strstr(nt_log(&S), "evx_notes: stopped"));
}

/* ---- create and read -------------------------------------------------------------------- */

START_TEST(test_post_then_get) {
  nt_start(&S, NULL);
  ck_assert_int_eq(nt_http(&S, "POST", "/notes", "{\"title\":\"Groceries\",\"body\":\"milk, eggs\"}", &R), 201);
  ck_assert_ptr_nonnull(strstr(R.headers, "Location: /notes/1\r\n"));
  ck_assert_ptr_nonnull(strstr(R.headers, "Content-Type: application/json"));
  ck_assert_ptr_nonnull(strstr(R.body, "{\"id\":1,\"title\":\"Groceries\",\"body\":\"milk, eggs\",\"created_at\":\""));
  char created[64];
  ck_assert_int_eq(nt_http(&S, "POST", "/notes", "{\"title\":\"Zürich ☕\"}", &R), 201);
  ck_assert_ptr_nonnull(strstr(R.body, "\"id\":2,\"title\":\"Zürich ☕\",\"body\":\"\""));

  ck_assert_int_eq(nt_http(&S, "GET", "/notes/1", NULL, &R), 200);
  ck_assert_ptr_nonnull(strstr(R.body, "\"title\":\"Groceries\",\"body\":\"milk, eggs\""));
  const char *c = strstr(R.body, "\"created_at\":\"");
  ck_assert_ptr_nonnull(c);
  snprintf(created, sizeof created, "%.24s", c + 14); /* 2026-01-01T00:00:00.000Z */
  ck_assert_int_eq(created[10], 'T');

  ck_assert_int_eq(nt_http(&S, "GET", "/notes", NULL, &R), 200);
  ck_assert(R.body[0] == '[');
  const char *one = strstr(R.body, "\"id\":1,"), *two = strstr(R.body, "\"id\":2,");
  ck_assert(one && two && one < two);
  ck_assert_int_eq(nt_http(&S, "GET", "/notes?since=1", NULL, &R), 200);
  ck_assert_ptr_null(strstr(R.body, "\"id\":1,"));
  ck_assert_ptr_nonnull(strstr(R.body, "\"id\":2,"));
  ck_assert_int_eq(nt_http(&S, "GET", "/notes?limit=1", NULL, &R), 200);
  ck_assert_ptr_null(strstr(R.body, "\"id\":2,"));

  /* It is a real SQLite file (WAL mode), readable by anyone. */
  sqlite3 *db;
  ck_assert_int_eq(sqlite3_open_v2(S.db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
  sqlite3_stmt *st;
  ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT title, body, created_at FROM notes WHERE id = 1", -1, &st, NULL), SQLITE_OK);
  ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
  ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), "Groceries");
  ck_assert_str_eq((const char *)sqlite3_column_text(st, 1), "milk, eggs");
  ck_assert_str_eq((const char *)sqlite3_column_text(st, 2), created);
  sqlite3_finalize(st);
  ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
  ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
  ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), "wal");
  sqlite3_finalize(st);
  sqlite3_close(db);

  /* One access-log line per request. */
  const char *log = nt_log(&S);
  ck_assert_int_eq(nt_count(log, "POST /notes 201 "), 2);
  ck_assert_int_eq(nt_count(log, "GET /notes/1 200 "), 1);
  stop_clean();

  /* Restart on the same file: the notes are still there, ids continue. */
  nt_start_in(&S, NULL);
  ck_assert_ptr_nonnull(strstr(nt_log(&S), "latest note 2)"));
  ck_assert_int_eq(nt_http(&S, "GET", "/notes/2", NULL, &R), 200);
  ck_assert_int_eq(nt_http(&S, "POST", "/notes", "{\"title\":\"third\"}", &R), 201);
  ck_assert_ptr_nonnull(strstr(R.body, "\"id\":3,"));
  stop_clean();
}
END_TEST

START_TEST(test_bad_requests) {
  nt_start(&S, NULL);
  static const struct {
    const char *body, *msg;
  } bad[] = {
      {"{\"title\":", "invalid JSON: "},
      {"", "invalid JSON: "},
      {"[1,2]", "must be a JSON object"},
      {"{\"body\":\"no title\"}", "\\\"title\\\" must be a string"},
      {"{\"title\":\"\"}", "must not be empty"},
      {"{\"title\":42}", "\\\"title\\\" must be a string"},
      {"{\"title\":\"x\",\"body\":[]}", "\\\"body\\\" must be a string"},
      {"{\"title\":\"a\",\"title\":\"b\"}", "duplicate object key"},
      {"{\"title\":\"nul\\u0000byte\"}", "invalid JSON: \\\\u0000 is not allowed"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ck_assert_int_eq(nt_http(&S, "POST", "/notes", bad[i].body, &R), 400);
    ck_assert_msg(strstr(R.body, "{\"error\":\"") == R.body && strstr(R.body, bad[i].msg),
                  "case %zu: %s", i, R.body);
  }
  char long_title[300];
  snprintf(long_title, sizeof long_title, "{\"title\":\"%0201d\"}", 0);
  ck_assert_int_eq(nt_http(&S, "POST", "/notes", long_title, &R), 400);
  ck_assert_ptr_nonnull(strstr(R.body, "longer than 200 characters"));
  long_title[strlen(long_title) - 3] = '\0'; /* drop 0"}: 200 characters is fine */
  strcat(long_title, "\"}");
  ck_assert_int_eq(nt_http(&S, "POST", "/notes", long_title, &R), 201);
  ck_assert_int_eq(nt_http(&S, "GET", "/notes/7", NULL, &R), 404);
  ck_assert_str_eq(R.body, "{\"error\":\"note 7 not found\"}\n");
  ck_assert_int_eq(nt_http(&S, "GET", "/notes/abc", NULL, &R), 404);
  ck_assert_int_eq(nt_http(&S, "GET", "/notes/-1", NULL, &R), 404);
  ck_assert_int_eq(nt_http(&S, "GET", "/notes/99999999999999999999", NULL, &R), 404);
  ck_assert_int_eq(nt_http(&S, "GET", "/notes?limit=0", NULL, &R), 400);
  ck_assert_int_eq(nt_http(&S, "GET", "/notes?since=x", NULL, &R), 400);
  ck_assert_int_eq(nt_http(&S, "GET", "/notes/wait?timeout=0", NULL, &R), 400);
  ck_assert_int_eq(nt_http(&S, "DELETE", "/notes", NULL, &R), 405);
  ck_assert_int_eq(nt_http(&S, "GET", "/nothing", NULL, &R), 404);
  /* Nothing was stored, and the service still works. */
  ck_assert_int_eq(nt_http(&S, "GET", "/notes", NULL, &R), 200);
  ck_assert_int_eq(nt_count(R.body, "\"id\":"), 1); /* only the 200-character one */
  ck_assert_int_eq(nt_metric(&S, "notes_http_requests_total{method=\"POST\",status=\"400\"}"), 10);
  stop_clean();
}
END_TEST

/* ---- long polling ------------------------------------------------------------------------- */

typedef struct bg_req {
  const char *path;
  nt_resp r;
  long status;
  pthread_t th;
} bg_req;

static void *bg_run(void *arg) {
  bg_req *b = arg;
  b->status = nt_http(&S, "GET", b->path, NULL, &b->r);
  return NULL;
}

START_TEST(test_long_poll_wakes_on_post) {
  const char *extra[] = {"--poll-timeout", "20000", NULL};
  nt_start(&S, extra);
  ck_assert_int_eq(nt_http(&S, "POST", "/notes", "{\"title\":\"before\"}", &R), 201);

  /* A note newer than `since` exists already: answered at once. */
  ck_assert_int_eq(nt_http(&S, "GET", "/notes/wait?since=0", NULL, &R), 200);
  ck_assert_ptr_nonnull(strstr(R.body, "\"title\":\"before\""));
  ck_assert_double_lt(R.secs, 1.0);

  /* Two pollers wait for anything after note 1. */
  bg_req a = {.path = "/notes/wait?since=1"}, b = {.path = "/notes/wait"};
  pthread_create(&a.th, NULL, bg_run, &a);
  pthread_create(&b.th, NULL, bg_run, &b);
  ck_assert_int_eq(nt_wait_metric(&S, "notes_longpoll_waiters", 2, 10000), 2);
  uint64_t t0 = nt_now_ms();
  ck_assert_int_eq(nt_http(&S, "POST", "/notes", "{\"title\":\"wake up\"}", &R), 201);
  pthread_join(a.th, NULL);
  pthread_join(b.th, NULL);
  ck_assert_uint_lt(nt_now_ms() - t0, 5000); /* woken by the POST, not by the 20 s timeout */
  ck_assert_int_eq(a.status, 200);
  ck_assert_int_eq(b.status, 200);
  ck_assert_ptr_nonnull(strstr(a.r.body, "\"id\":2,\"title\":\"wake up\""));
  ck_assert_ptr_null(strstr(a.r.body, "\"before\""));
  ck_assert_ptr_nonnull(strstr(b.r.body, "\"id\":2,\"title\":\"wake up\""));
  nt_resp_free(&a.r);
  nt_resp_free(&b.r);
  ck_assert_int_eq(nt_metric(&S, "notes_longpoll_waiters"), 0);

  /* Nothing new before the timeout: 204. */
  ck_assert_int_eq(nt_http(&S, "GET", "/notes/wait?since=2&timeout=300", NULL, &R), 204);
  ck_assert_double_ge(R.secs, 0.29);
  ck_assert_uint_eq(R.len, 0);
  stop_clean();
}
END_TEST

/* A client that gives up on a long poll is dropped from the condition. */
START_TEST(test_long_poll_client_leaves) {
  nt_start(&S, NULL);
  CURL *c = nt_easy(&S, "GET", "/notes/wait", NULL, &R);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 300L);
  ck_assert_int_eq(curl_easy_perform(c), CURLE_OPERATION_TIMEDOUT);
  curl_easy_cleanup(c);
  ck_assert_int_eq(nt_wait_metric(&S, "notes_longpoll_waiters", 0, 5000), 0);
  char gone[64], held[64];
  snprintf(gone, sizeof gone, "evx_http_gone_total{port=\"%d\"}", S.port);
  snprintf(held, sizeof held, "evx_http_held{port=\"%d\"}", S.port);
  ck_assert_int_eq(nt_wait_metric(&S, gone, 1, 5000), 1);
  ck_assert_int_eq(nt_metric(&S, held), 0);
  stop_clean();
}
END_TEST

/* ---- mail ------------------------------------------------------------------------------------ */

static evx_smtp_sink sink;

static void start_sink(int fail_first) {
  char inbox[160];
  snprintf(inbox, sizeof inbox, "%s/inbox", S.dir);
  ck_assert_int_eq(mkdir(inbox, 0755), 0);
  ck_assert_msg(evx_smtp_sink_start(&sink, inbox, fail_first) == 0,
                "cannot start aiosmtpd (/usr/bin/python3, python3-aiosmtpd)");
}

START_TEST(test_mail_reaches_smtp) {
  snprintf(S.dir, sizeof S.dir, "/tmp/evx_notes_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(S.dir));
  start_sink(0);
  char url[64];
  snprintf(url, sizeof url, "smtp://127.0.0.1:%d", sink.port);
  const char *extra[] = {"--smtp", url, "--mail-to", "Team <team@example.org>", NULL};
  nt_start_in(&S, extra);
  ck_assert_int_eq(nt_http(&S, "POST", "/notes", "{\"title\":\"Lunch at noon\",\"body\":\"room 4\"}", &R), 201);
  char line[1024], from[128], rcpts[256], file[256];
  int at = 0;
  ck_assert_int_eq(evx_smtp_sink_line(&sink, line, sizeof line, 10000), 0);
  ck_assert_int_eq(sscanf(line, "MSG %127s %255s %255s %n", from, rcpts, file, &at), 3);
  ck_assert_str_eq(line + at, "New note #1: Lunch at noon");
  ck_assert_str_eq(from, "notes@localhost");
  ck_assert_str_eq(rcpts, "team@example.org");
  FILE *f = fopen(file, "rb");
  ck_assert_ptr_nonnull(f);
  char msg[4096];
  size_t n = fread(msg, 1, sizeof msg - 1, f);
  msg[n] = '\0';
  fclose(f);
  ck_assert_ptr_nonnull(strstr(msg, "\r\n\r\nLunch at noon\r\n\r\nroom 4\r\n"));
  ck_assert_ptr_nonnull(strstr(msg, "/notes/1\r\n"));
  ck_assert_ptr_nonnull(nt_wait_log(&S, "sent via smtp://127.0.0.1:", 5000));
  ck_assert_int_eq(nt_metric(&S, "notes_mail_sent_total"), 1);
  stop_clean();
  evx_smtp_sink_stop(&sink);
}
END_TEST

/* Nothing listens on the SMTP port: the POST is answered at once (the mail
 * is a durable task), the task is retried with backoff, then moved to the
 * dead-letter store with the error, and the service keeps answering all along. */
START_TEST(test_mail_dead_smtp) {
  int hold = -1;
  int port = evx_dead_port(&hold);
  ck_assert_int_gt(port, 0);
  char url[64];
  snprintf(url, sizeof url, "smtp://127.0.0.1:%d", port);
  const char *extra[] = {"--smtp", url, "--mail-attempts", "4", "--mail-backoff", "100", NULL};
  nt_start(&S, extra);
  uint64_t t0 = nt_now_ms();
  ck_assert_int_eq(nt_http(&S, "POST", "/notes", "{\"title\":\"undeliverable\"}", &R), 201);
  ck_assert_double_lt(R.secs, 0.5);
  int answered = 0;
  /* Backoff 100 + 200 + 400 ms: keep asking while the mailer retries. */
  while (!strstr(nt_log(&S), "FAILED after") && nt_now_ms() - t0 < 15000) {
    ck_assert_int_eq(nt_http(&S, "GET", "/notes/1", NULL, &R), 200);
    ck_assert_double_lt(R.secs, 0.5);
    answered++;
    nt_sleep_ms(20); /* sample the service while the mailer waits */
  }
  const char *log = nt_log(&S);
  ck_assert_msg(strstr(log, "FAILED after 4 attempt(s)") != NULL, "log:\n%s", log);
  ck_assert_ptr_nonnull(strstr(log, "attempt 1/4 failed"));
  ck_assert_ptr_nonnull(strstr(log, "attempt 3/4 failed"));
  ck_assert_ptr_nonnull(strstr(log, "onnect"));
  ck_assert_ptr_nonnull(strstr(log, "dead-letter store"));
  ck_assert_int_ge(answered, 10);
  ck_assert_int_eq(nt_metric(&S, "notes_mail_failed_total"), 1);
  ck_assert_int_eq(nt_metric(&S, "notes_mail_retries_total"), 3);
  ck_assert_int_eq(nt_wait_metric(&S, "evx_tasks_dead{queue=\"notes-mail\"}", 1, 3000), 1);
  stop_clean();
  close(hold);
}
END_TEST

/* SIGKILL with mail pending (the SMTP server is down, the mails wait in
 * backoff): nothing is lost. The restarted server, now with a live SMTP
 * server, delivers every note's mail, each with its Message-ID
 * <note-ID@evx-notes> (the task's idempotency key). */
START_TEST(test_mail_survives_sigkill) {
  int hold = -1;
  int port = evx_dead_port(&hold);
  ck_assert_int_gt(port, 0);
  char url[64];
  snprintf(url, sizeof url, "smtp://127.0.0.1:%d", port);
  /* --mail-timeout 1000: a lease of the killed process expires 6 s after it began. */
  const char *extra[] = {"--smtp", url, "--mail-backoff", "200", "--mail-attempts", "50",
                         "--mail-timeout", "1000", NULL};
  nt_start(&S, extra);
  for (int i = 0; i < 5; i++)
    ck_assert_int_eq(nt_http(&S, "POST", "/notes", "{\"title\":\"kept\"}", &R), 201);
  ck_assert_ptr_nonnull(nt_wait_log(&S, "mail for note 5: attempt 1/50 failed", 5000));
  kill(S.pid, SIGKILL);
  int st;
  waitpid(S.pid, &st, 0);
  S.pid = 0;
  close(hold);

  start_sink(0);
  snprintf(url, sizeof url, "smtp://127.0.0.1:%d", sink.port);
  const char *again[] = {"--smtp", url, "--mail-backoff", "200", "--mail-timeout", "1000", NULL};
  nt_start_in(&S, again);
  int seen[6] = {0};
  for (int n = 0; n < 5; n++) {
    char line[1024], from[128], rcpts[256], file[256];
    int at = 0;
    ck_assert_msg(evx_smtp_sink_line(&sink, line, sizeof line, 20000) == 0, "mail %d missing; log:\n%s",
                  n + 1, nt_log(&S));
    ck_assert_int_eq(sscanf(line, "MSG %127s %255s %255s %n", from, rcpts, file, &at), 3);
    int id = 0;
    ck_assert_int_eq(sscanf(line + at, "New note #%d: kept", &id), 1);
    ck_assert(id >= 1 && id <= 5);
    seen[id]++;
    FILE *f = fopen(file, "rb");
    ck_assert_ptr_nonnull(f);
    char msg[4096];
    size_t k = fread(msg, 1, sizeof msg - 1, f);
    msg[k] = '\0';
    fclose(f);
    char want[64];
    snprintf(want, sizeof want, "\r\nMessage-ID: <note-%d@evx-notes>\r\n", id);
    ck_assert_msg(strstr(msg, want) != NULL, "no %s in\n%s", want, msg);
  }
  for (int id = 1; id <= 5; id++) ck_assert_int_eq(seen[id], 1);
  ck_assert_int_eq(nt_wait_metric(&S, "notes_mail_sent_total", 5, 5000), 5);
  stop_clean();
  evx_smtp_sink_stop(&sink);
}
END_TEST

/* SIGTERM while a mail waits for its retry: the server exits 0 at once (it
 * does not wait out the backoff), the mail stays durable, and the next start
 * delivers it. */
START_TEST(test_sigterm_keeps_mail) {
  snprintf(S.dir, sizeof S.dir, "/tmp/evx_notes_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(S.dir));
  start_sink(1);
  char url[64];
  snprintf(url, sizeof url, "smtp://127.0.0.1:%d", sink.port);
  const char *extra[] = {"--smtp", url, "--mail-backoff", "3000", NULL};
  nt_start_in(&S, extra);
  ck_assert_int_eq(nt_http(&S, "POST", "/notes", "{\"title\":\"last words\"}", &R), 201);
  char line[1024];
  ck_assert_int_eq(evx_smtp_sink_line(&sink, line, sizeof line, 10000), 0);
  ck_assert_str_eq(line, "TEMPFAIL"); /* first attempt refused; the retry is due in ~3 s */
  ck_assert_ptr_nonnull(nt_wait_log(&S, "attempt 1/5 failed", 5000));
  uint64_t t0 = nt_now_ms();
  stop_clean();
  ck_assert_uint_lt(nt_now_ms() - t0, 2500);
  const char *extra2[] = {"--smtp", url, "--mail-backoff", "100", NULL};
  nt_start_in(&S, extra2);
  ck_assert_int_eq(evx_smtp_sink_line(&sink, line, sizeof line, 15000), 0);
  ck_assert_ptr_nonnull(strstr(line, "New note #1: last words"));
  stop_clean();
  evx_smtp_sink_stop(&sink);
}
END_TEST

/* ---- overload and parallel reads ------------------------------------------------------------ */

/* An outside process holds the write lock: the first POST runs on the writer
 * and waits for the lock, the second queues (--max-queue 1), the rest get
 * 503 + Retry-After at once - and reads are answered while the writes wait. */
START_TEST(test_overload_503_and_parallel_reads) {
  /* --no-mail: the mail tasks' leases would share the one writer slot. */
  const char *extra[] = {"--max-queue", "1", "--no-mail", NULL};
  nt_start(&S, extra);
  ck_assert_int_eq(nt_http(&S, "POST", "/notes", "{\"title\":\"seed\"}", &R), 201);
  sqlite3 *lock;
  ck_assert_int_eq(sqlite3_open(S.db, &lock), SQLITE_OK);
  ck_assert_int_eq(sqlite3_exec(lock, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);

  static nt_resp ra, rb;
  CURLM *m = curl_multi_init();
  CURL *a = nt_easy(&S, "POST", "/notes", "{\"title\":\"burst a\"}", &ra);
  CURL *b = nt_easy(&S, "POST", "/notes", "{\"title\":\"burst b\"}", &rb);
  int running = 0;
  curl_multi_add_handle(m, a);
  uint64_t end = nt_now_ms() + 5000;
  /* Drive the client until the server's writer runs POST a (blocked on the lock). */
  while (nt_metric(&S, "evx_executor_running{executor=\"sqlite-write\"}") != 1 && nt_now_ms() < end) {
    curl_multi_perform(m, &running);
    curl_multi_poll(m, NULL, 0, 5, NULL);
  }
  ck_assert_int_eq(nt_metric(&S, "evx_executor_running{executor=\"sqlite-write\"}"), 1);
  curl_multi_add_handle(m, b);
  while (nt_metric(&S, "evx_executor_queued{executor=\"sqlite-write\"}") != 1 && nt_now_ms() < end) {
    curl_multi_perform(m, &running);
    curl_multi_poll(m, NULL, 0, 5, NULL);
  }
  ck_assert_int_eq(nt_metric(&S, "evx_executor_queued{executor=\"sqlite-write\"}"), 1);

  /* The writer is full: more POSTs are refused at once. */
  for (int i = 0; i < 4; i++) {
    ck_assert_int_eq(nt_http(&S, "POST", "/notes", "{\"title\":\"refused\"}", &R), 503);
    ck_assert_ptr_nonnull(strstr(R.headers, "Retry-After: 1\r\n"));
    ck_assert_double_lt(R.secs, 1.0);
  }
  /* Reads run while the writes wait for the lock. */
  ck_assert_int_eq(nt_http(&S, "GET", "/notes", NULL, &R), 200);
  ck_assert_ptr_nonnull(strstr(R.body, "\"seed\""));
  ck_assert_ptr_null(strstr(R.body, "burst"));
  ck_assert_double_lt(R.secs, 1.0);
  ck_assert_int_eq(nt_http(&S, "GET", "/notes/1", NULL, &R), 200);

  ck_assert_int_eq(sqlite3_exec(lock, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(lock);
  end = nt_now_ms() + 8000;
  do {
    curl_multi_perform(m, &running);
    curl_multi_poll(m, NULL, 0, 20, NULL);
  } while (running && nt_now_ms() < end);
  ck_assert_int_eq(running, 0);
  nt_easy_done(a, &ra);
  nt_easy_done(b, &rb);
  ck_assert_int_eq(ra.status, 201);
  ck_assert_int_eq(rb.status, 201);
  ck_assert_ptr_nonnull(strstr(ra.body, "\"id\":2,\"title\":\"burst a\""));
  ck_assert_ptr_nonnull(strstr(rb.body, "\"id\":3,\"title\":\"burst b\""));
  curl_multi_remove_handle(m, a);
  curl_multi_remove_handle(m, b);
  curl_easy_cleanup(a);
  curl_easy_cleanup(b);
  curl_multi_cleanup(m);
  ck_assert_int_eq(nt_metric(&S, "evx_executor_rejected_total{executor=\"sqlite-write\"}"), 4);
  ck_assert_int_eq(nt_metric(&S, "notes_http_requests_total{method=\"POST\",status=\"503\"}"), 4);
  ck_assert_int_eq(nt_http(&S, "GET", "/notes", NULL, &R), 200);
  ck_assert_int_eq(nt_count(R.body, "\"burst "), 2);
  ck_assert_int_eq(nt_count(R.body, "refused"), 0);
  stop_clean();
}
END_TEST

/* POST is a coroutine, but its write is never abandoned: two clients whose
 * notes wait for the writer (one runs, blocked on an outside lock; one is
 * queued) leave; their handlers' waits end, and both notes are stored once
 * the lock goes. Were the write awaited like a read, the client leaving
 * would dequeue the queued one. */
START_TEST(test_post_client_leaves_note_kept) {
  const char *extra[] = {"--no-mail", NULL};
  nt_start(&S, extra);
  sqlite3 *lock;
  ck_assert_int_eq(sqlite3_open(S.db, &lock), SQLITE_OK);
  ck_assert_int_eq(sqlite3_exec(lock, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
  static nt_resp ra, rb;
  CURLM *m = curl_multi_init();
  CURL *a = nt_easy(&S, "POST", "/notes", "{\"title\":\"left a\"}", &ra);
  CURL *b = nt_easy(&S, "POST", "/notes", "{\"title\":\"left b\"}", &rb);
  curl_multi_add_handle(m, a);
  curl_multi_add_handle(m, b);
  int running = 0;
  uint64_t end = nt_now_ms() + 5000;
  while ((nt_metric(&S, "evx_executor_running{executor=\"sqlite-write\"}") != 1 ||
          nt_metric(&S, "evx_executor_queued{executor=\"sqlite-write\"}") != 1) &&
         nt_now_ms() < end) {
    curl_multi_perform(m, &running);
    curl_multi_poll(m, NULL, 0, 5, NULL);
  }
  ck_assert_int_eq(nt_metric(&S, "evx_executor_running{executor=\"sqlite-write\"}"), 1);
  ck_assert_int_eq(nt_metric(&S, "evx_executor_queued{executor=\"sqlite-write\"}"), 1);
  curl_multi_remove_handle(m, a); /* the clients leave: their connections close */
  curl_multi_remove_handle(m, b);
  curl_easy_cleanup(a);
  curl_easy_cleanup(b);
  curl_multi_cleanup(m);
  char gone[64];
  snprintf(gone, sizeof gone, "evx_http_gone_total{port=\"%d\"}", S.port);
  ck_assert_int_eq(nt_wait_metric(&S, gone, 2, 5000), 2);
  ck_assert_int_eq(nt_metric(&S, "evx_executor_cancelled_total{executor=\"sqlite-write\"}"), 0);

  ck_assert_int_eq(sqlite3_exec(lock, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(lock);
  ck_assert_int_eq(nt_wait_metric(&S, "evx_executor_completed_total{executor=\"sqlite-write\"}",
                                  2, 5000),
                   2);
  ck_assert_int_eq(nt_http(&S, "GET", "/notes", NULL, &R), 200);
  ck_assert_int_eq(nt_count(R.body, "\"left "), 2);
  stop_clean();
}
END_TEST

START_TEST(test_metrics_and_flags) {
  nt_start(&S, NULL);
  ck_assert_int_eq(nt_http(&S, "POST", "/notes", "{\"title\":\"m\"}", &R), 201);
  ck_assert_int_eq(nt_http(&S, "GET", "/notes/1", NULL, &R), 200);
  /* The mail goes after the reply: wait for it before taking the snapshot. */
  ck_assert_int_eq(nt_wait_metric(&S, "notes_mail_sent_total", 1, 5000), 1);
  ck_assert_int_eq(nt_http(&S, "GET", "/metrics", NULL, &R), 200);
  ck_assert_ptr_nonnull(strstr(R.headers, "Content-Type: text/plain; version=0.0.4"));
  static const char *const want[] = {
      "# TYPE evx_executor_queued gauge\n",
      "evx_executor_threads{executor=\"sqlite-read\"} 4\n",
      "evx_executor_threads{executor=\"sqlite-write\"} 1\n",
      "evx_executor_threads{executor=\"mail\"} 1\n",
      "evx_executor_running{executor=\"mail\"} 0\n",
      "evx_executor_completed_total{executor=\"sqlite-write\"} ",
      "evx_executor_rejected_total{executor=\"sqlite-read\"} 0\n",
      "evx_executor_cancelled_total{executor=\"sqlite-read\"} 0\n",
      "# TYPE evx_executor_wait_seconds histogram\n",
      "evx_executor_wait_seconds_bucket{executor=\"sqlite-write\",le=\"+Inf\"} ",
      "evx_executor_run_seconds_count{executor=\"sqlite-write\"} ",
      "evx_tasks_enqueued_total{queue=\"notes-mail\"} 1\n",
      "evx_tasks_completed_total{queue=\"notes-mail\"} 1\n",
      "notes_http_requests_total{method=\"POST\",status=\"201\"} 1\n",
      "notes_http_requests_total{method=\"GET\",status=\"200\"} ",
      "notes_latest_id 1\n",
      "notes_mail_sent_total 1\n",
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
    ck_assert_msg(strstr(R.body, want[i]) != NULL, "missing %s", want[i]);
  /* The real parser (python3-prometheus-client) reads the whole text. */
  char mpath[] = "/tmp/evx-notes-metrics-XXXXXX";
  int mfd = mkstemp(mpath);
  ck_assert_int_ge(mfd, 0);
  ck_assert_int_eq(write(mfd, R.body, strlen(R.body)), (ssize_t)strlen(R.body));
  close(mfd);
  char cmd[512];
  snprintf(cmd, sizeof cmd,
           "/usr/bin/python3 %s/prom_check.py %s 'evx_executor_threads|executor=sqlite-read|= 4' "
           "'notes_latest_id||= 1' 'evx_http_responses_total|code=2xx,method=GET,port=%d|>= 1'",
           EVX_TEST_SRC_DIR, mpath, S.port);
  int pst = system(cmd);
  unlink(mpath);
  ck_assert_msg(WIFEXITED(pst) && WEXITSTATUS(pst) == 0, "prom_check failed on /metrics");
  /* Every sample line is "name{labels} number". */
  for (char *line = strtok(R.body, "\n"); line; line = strtok(NULL, "\n")) {
    if (line[0] == '#') continue;
    char *sp = strrchr(line, ' ');
    ck_assert_ptr_nonnull(sp);
    char *end;
    strtod(sp + 1, &end);
    ck_assert_msg(*end == '\0' && end != sp + 1, "bad sample: %s", line);
  }
  stop_clean();

  /* --help and bad flags. */
  ck_assert_int_eq(system(EVX_NOTES_BIN " --help >/dev/null"), 0);
  int st = system(EVX_NOTES_BIN " --port 70000 2>/dev/null");
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2);
  st = system(EVX_NOTES_BIN " --mail-to 'not an address' 2>/dev/null");
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2);
  st = system(EVX_NOTES_BIN " --db /nonexistent/dir/x.db --port 0 2>/dev/null");
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1);
}
END_TEST

Suite *suite(void);
Suite *suite(void) {
  Suite *s = suite_create("notes");
  TCase *tc = tcase_create("notes");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_post_then_get);
  tcase_add_test(tc, test_bad_requests);
  tcase_add_test(tc, test_long_poll_wakes_on_post);
  tcase_add_test(tc, test_long_poll_client_leaves);
  tcase_add_test(tc, test_mail_reaches_smtp);
  tcase_add_test(tc, test_mail_dead_smtp);
  tcase_add_test(tc, test_mail_survives_sigkill);
  tcase_add_test(tc, test_sigterm_keeps_mail);
  tcase_add_test(tc, test_overload_503_and_parallel_reads);
  tcase_add_test(tc, test_post_client_leaves_note_kept);
  tcase_add_test(tc, test_metrics_and_flags);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return evx_test_main(suite()); }
