/* Storing a note (notes_store), and its "new note" mail as a durable task
 * (ext/tasks).
 *
 * POST /notes inserts the note and enqueues its mail task in ONE SQLite
 * transaction on the writer thread (notes_store): the note and its mail
 * commit together or not at all, so a crash can lose neither half. The task
 * handler (note_mail_task, on the task queue's worker threads) makes one
 * delivery attempt with evx_mail_deliver_now; the queue keeps the mail across
 * crashes and restarts, retries it with backoff (--mail-attempts,
 * --mail-backoff), and moves it to the dead-letter store after the last
 * attempt (`evx-tasks dead list` shows it with the SMTP error).
 *
 * At-least-once: a mail whose lease outlived a crash is sent again. Its
 * Message-ID is the task's idempotency key, "<note-ID@evx-notes>", so the copy
 * is recognisable downstream as the same mail.
 *
 * With a Redis task store (--tasks redis://...) the same holds: the queue
 * has the notes database as its local outbox (opts.db), so the mail row
 * commits with the note and is forwarded to Redis afterwards - also while
 * Redis is down, once it is back (docs/TASKS.md, "The outbox").
 * --role web enqueues only; --role worker runs only the mail handlers.
 *
 * Threads: insert_fn runs on the SQLite writer thread,
 * note_mail_task on a task worker; both read only what main.c set before the
 * loop ran (app->cfg, app->port, app->mailer, app->tasks) and touch the
 * atomic counters.
 */
#include <jansson.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "notes.h"

#define NOTE_MAIL_TASK "note_mail"

static const char SQL_INSERT[] =
    "INSERT INTO notes (title, body) VALUES (?1, ?2) RETURNING id, title, body, created_at";

static char *dup_col(sqlite3_stmt *st, int col, size_t *len) {
  const unsigned char *p = sqlite3_column_text(st, col);
  size_t n = (size_t)sqlite3_column_bytes(st, col);
  char *s = malloc(n + 1);
  if (!s) return NULL;
  if (n) memcpy(s, p, n);
  s[n] = '\0';
  *len = n;
  return s;
}

/* The task's payload (malloc'd JSON) and key, "<note-ID@evx-notes>". */
static char *mail_payload(const notes_post *p, char *key, size_t keylen) {
  json_t *doc = json_pack("{s:I, s:s%, s:s%}", "id", (json_int_t)p->id, "title", p->title,
                          p->title_len, "body", p->body, p->body_len);
  char *payload = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
  json_decref(doc);
  snprintf(key, keylen, "<note-%lld@evx-notes>", (long long)p->id);
  return payload;
}

static int enqueue_mail(notes_post *p, sqlite3 *conn) {
  char key[64];
  char *payload = mail_payload(p, key, sizeof key);
  if (!payload) return EVX_ENOMEM;
  evx_task_opts to = {.key = key};
  int rc = evx_tasks_enqueue_sql(p->app->tasks, conn, NOTE_MAIL_TASK, payload, strlen(payload),
                                 &to, NULL);
  free(payload);
  return rc;
}

/* Writer thread: BEGIN; INSERT ... RETURNING; enqueue the mail; COMMIT. */
static int insert_fn(sqlite3 *conn, void *arg) {
  notes_post *p = arg;
  sqlite3_stmt *st = NULL;
  int rc = EVX_EIO;
  if (sqlite3_exec(conn, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) goto sqlerr;
  if (sqlite3_prepare_v2(conn, SQL_INSERT, -1, &st, NULL) != SQLITE_OK) goto rollback;
  sqlite3_bind_text(st, 1, p->title, (int)p->title_len, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, p->body, (int)p->body_len, SQLITE_STATIC);
  if (sqlite3_step(st) != SQLITE_ROW) goto rollback;
  p->id = sqlite3_column_int64(st, 0);
  char *title = dup_col(st, 1, &p->title_len), *body = dup_col(st, 2, &p->body_len);
  p->created_at = dup_col(st, 3, &p->created_len);
  free(p->title);
  free(p->body);
  p->title = title;
  p->body = body;
  if (!p->title || !p->body || !p->created_at) {
    rc = EVX_ENOMEM;
    goto rollback;
  }
  if (sqlite3_step(st) != SQLITE_DONE) goto rollback;
  sqlite3_finalize(st);
  st = NULL;
  if (p->app->tasks) {
    rc = enqueue_mail(p, conn);
    if (rc != EVX_OK) goto rollback_rc;
  }
  if (sqlite3_exec(conn, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) goto rollback;
  return EVX_OK;
rollback:
  rc = EVX_EIO;
rollback_rc:
  if (rc == EVX_EIO) snprintf(p->errmsg, sizeof p->errmsg, "%s", sqlite3_errmsg(conn));
  sqlite3_finalize(st);
  sqlite3_exec(conn, "ROLLBACK", NULL, NULL, NULL);
  return rc;
sqlerr:
  snprintf(p->errmsg, sizeof p->errmsg, "%s", sqlite3_errmsg(conn));
  return sqlite3_errcode(conn) == SQLITE_BUSY ? EVX_ELOCKED : EVX_EIO;
}

notes_post *notes_post_new(notes_app *app, const char *title, size_t title_len, const char *body,
                           size_t body_len) {
  notes_post *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  *p = (notes_post){.app = app, .title_len = title_len, .body_len = body_len, .refs = 1};
  p->title = malloc(title_len + 1);
  p->body = malloc(body_len + 1);
  if (!p->title || !p->body) {
    notes_post_release(p);
    return NULL;
  }
  memcpy(p->title, title, title_len);
  p->title[title_len] = '\0';
  memcpy(p->body, body, body_len);
  p->body[body_len] = '\0';
  return p;
}

void notes_post_release(notes_post *p) {
  if (!p || --p->refs > 0) return;
  evx_future_release(p->stored);
  free(p->title);
  free(p->body);
  free(p->created_at);
  free(p);
}

/* Loop thread, once the note's transaction ended - whether or not its handler
 * still waits: publish the note (wake the long polls), then settle the
 * handler's wait. */
static void note_stored(void *arg, int status) {
  notes_post *p = arg;
  notes_app *app = p->app;
  if (status == EVX_OK) {
    if (p->id > app->latest_id) app->latest_id = p->id;
    if (app->new_note) evx_condition_notify_all(app->new_note);
    (void)evx_future_resolve(p->stored, NULL, NULL); /* EVX_EINVAL once the handler left */
  } else {
    (void)evx_future_fail(p->stored, status);
  }
  notes_post_release(p); /* the job's reference */
}

/* p->stored is a plain future: the interruption of this wait (EVX_EGONE:
 * the client left) cancels the future only, never the write - note_stored
 * still runs, and holds its reference to p until then. */
int notes_store(notes_post *p) {
  p->stored = evx_future_new(p->app->loop);
  if (!p->stored) return EVX_ENOMEM;
  p->refs++;
  int st = evx_sqlite_call(p->app->db, EVX_SQL_WRITE, insert_fn, note_stored, p);
  if (st != EVX_OK) {
    p->refs--;
    return st;
  }
  return evx_await(p->stored);
}

/* Task worker: one delivery attempt. */
static evx_task_result note_mail_task(evx_task *t, void *arg) {
  notes_app *app = arg;
  size_t len;
  const char *payload = evx_task_payload(t, &len);
  json_error_t jerr;
  json_t *doc = json_loadb(payload, len, 0, &jerr);
  json_int_t id = 0;
  const char *title = NULL, *body = NULL;
  size_t tlen = 0, blen = 0;
  if (!doc || json_unpack(doc, "{s:I, s:s%, s:s%}", "id", &id, "title", &title, &tlen, "body",
                          &body, &blen) != 0) {
    evx_task_set_error(t, "bad note_mail payload: %s", doc ? "missing fields" : jerr.text);
    fprintf(stderr, "evx_notes: mail task %s has a bad payload: moved to the dead-letter store\n",
            evx_task_id(t));
    json_decref(doc);
    atomic_fetch_add(&app->mail_failed, 1);
    return EVX_TASK_FAIL;
  }
  /* Cut long titles at a character boundary. */
  size_t tl = tlen;
  if (tl > 120) {
    tl = 120;
    while (tl > 0 && ((unsigned char)title[tl] & 0xC0) == 0x80) tl--;
  }
  char subject[300];
  snprintf(subject, sizeof subject, "New note #%lld: %.*s%s", (long long)id, (int)tl, title,
           tl < tlen ? "..." : "");
  size_t textlen = tlen + blen + 256;
  char *text = malloc(textlen);
  if (!text) {
    json_decref(doc);
    evx_task_set_error(t, "out of memory");
    return EVX_TASK_RETRY;
  }
  snprintf(text, textlen, "%s\n\n%s\n\n-- \nnote %lld, http://%s:%d/notes/%lld\n", title, body,
           (long long)id, app->cfg.host, app->port, (long long)id);
  evx_mail_msg msg = {.from = app->cfg.mail_from, .to = app->cfg.mail_to, .subject = subject,
                      .body = text, .message_id = evx_task_key(t)};
  char err[512] = "";
  int rc = evx_mail_deliver_now(app->mailer, &msg, err, sizeof err);
  free(text);
  json_decref(doc);
  unsigned attempt = evx_task_attempt(t), max = evx_task_max_attempts(t);
  if (rc == EVX_OK) {
    atomic_fetch_add(&app->mail_sent, 1);
    fprintf(stderr, "evx_notes: mail for note %lld sent via %s (attempt %u)\n", (long long)id,
            app->cfg.smtp_url ? app->cfg.smtp_url : "the spool", attempt);
    return EVX_TASK_DONE;
  }
  evx_task_set_error(t, "%s", err);
  if (rc == EVX_EINVAL || attempt >= max) {
    atomic_fetch_add(&app->mail_failed, 1);
    fprintf(stderr,
            "evx_notes: mail for note %lld FAILED after %u attempt(s): %s (task %s is in the "
            "dead-letter store: evx-tasks dead list)\n",
            (long long)id, attempt, err, evx_task_id(t));
    return EVX_TASK_FAIL;
  }
  atomic_fetch_add(&app->mail_retries, 1);
  fprintf(stderr, "evx_notes: mail for note %lld: attempt %u/%u failed: %s; retrying\n",
          (long long)id, attempt, max, err);
  return EVX_TASK_RETRY;
}

int notes_tasks_open(notes_app *app, char **errmsg) {
  char url[1100];
  if (app->cfg.tasks_url)
    snprintf(url, sizeof url, "%s", app->cfg.tasks_url);
  else
    snprintf(url, sizeof url, "sqlite:%s", app->cfg.db_path);
  int is_sqlite = strncmp(url, "sqlite:", 7) == 0;
  if (is_sqlite && strcmp(url + 7, app->cfg.db_path) != 0) {
    /* The mail commits in the note's own transaction: same file. */
    if (errmsg) *errmsg = NULL;
    fprintf(stderr, "evx_notes: --tasks %s: a SQLite task store must be the notes database (--db %s)\n",
            url, app->cfg.db_path);
    return EVX_EINVAL;
  }
  evx_tasks_opts o = {.queue = "notes-mail",
                      .role = app->cfg.role,
                      .workers = (unsigned)app->cfg.mail_threads,
                      .max_attempts = (unsigned)app->cfg.mail_attempts,
                      .backoff_ms = (uint32_t)app->cfg.mail_backoff_ms,
                      /* One attempt lasts at most --mail-timeout: a lease
                       * still open 5 s after that belongs to a process that
                       * died, and its mail is delivered again. */
                      .visibility_ms = (uint32_t)app->cfg.mail_timeout_ms + 5000,
                      .db = app->db};
  int rc = evx_tasks_open(app->loop, url, &o, &app->tasks, errmsg);
  if (rc != EVX_OK) return rc;
  return evx_tasks_register(app->tasks, NOTE_MAIL_TASK, note_mail_task, app);
}
