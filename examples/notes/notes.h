/* Private to the notes example (examples/notes): shared by its .c files only.
 *
 * main.c     flags and environment, start-up, signals, clean shutdown
 * handlers.c the routes: POST/GET /notes, GET /notes/{id}, GET /notes/wait
 * metrics.c  the application's own numbers for GET /metrics (evexec adds
 *            every executor's, the HTTP server's and the task queue's)
 * mailtask.c storing a note: its transaction, with the "new note" mail as a
 *            durable task enqueued inside it (ext/tasks), and the mail handler
 *
 * Everything in notes_app is touched on the loop thread only, except what
 * mailtask.c's worker-thread code reads (set before the loop runs) and the
 * atomic mail counters.
 */
#ifndef NOTES_H
#define NOTES_H

#include <evexec/evexec.h>
#include <evexec/http.h>
#include <evexec/mail.h>
#include <evexec/sqlite.h>
#include <evexec/tasks.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

/* Monotonic clock in nanoseconds (uptime, deadlines, request timing). */
static inline uint64_t notes_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

typedef struct notes_config {
  const char *host;         /* --host, NOTES_HOST; default 127.0.0.1 */
  long port;                /* --port, NOTES_PORT; default 8080 (0: any free port) */
  long threads;             /* --threads, NOTES_THREADS: SQLite reader threads; default 4 */
  long max_queue;           /* --max-queue: queries waiting per pool before 503; default 1024 */
  const char *db_path;      /* --db, NOTES_DB; default notes.db */
  const char *spool_dir;    /* --spool, NOTES_SPOOL; default spool */
  const char *smtp_url;     /* --smtp, NOTES_SMTP_URL; default none (spool) */
  const char *mail_to;      /* --mail-to, NOTES_MAIL_TO; default notes@localhost */
  const char *mail_from;    /* --mail-from; default "evexec notes <notes@localhost>" */
  long mail_threads;        /* --mail-threads: 1 or 2; default 1 */
  const char *tasks_url;    /* --tasks URL, NOTES_TASKS: the mail's task store; default sqlite:DB */
  long mail_attempts;       /* --mail-attempts; default 5 */
  long mail_backoff_ms;     /* --mail-backoff MS: first retry delay; default 1000 */
  long mail_timeout_ms;     /* --mail-timeout MS: per SMTP attempt; default 10000 */
  long poll_timeout_ms;     /* --poll-timeout MS: longest long poll; default 30000 */
  long drain_ms;            /* --drain-timeout MS: grace at shutdown; default 10000 */
  int quiet;                /* --quiet: no access log */
  int no_mail;              /* --no-mail: no mailer, no task queue */
  evx_tasks_role role;      /* --role web|worker|all: EVX_TASKS_ROLE_PRODUCER/WORKER/ALL */
} notes_config;

/* Requests counted by method and status, for /metrics. */
enum { NOTES_M_GET, NOTES_M_POST, NOTES_M_OTHER, NOTES_NMETHODS };

typedef struct notes_app {
  notes_config cfg;
  evx_loop *loop;
  evx_http *http;
  evx_sqlite *db;
  evx_mailer *mailer;
  evx_condition *new_note; /* notified after every committed note; NULL while stopping */
  int64_t latest_id;       /* highest committed note id */
  int stopping;
  uint64_t requests[NOTES_NMETHODS][600];
  evx_tasks *tasks;          /* the mail queue (mailtask.c); NULL: no mail */
  int port;                  /* the bound port, for the mail's link */
  atomic_uint_fast64_t mail_sent, mail_failed, mail_retries; /* task outcomes */
  uint64_t started_ns;
} notes_app;

/* handlers.c */
int notes_routes(notes_app *app);
extern const char notes_schema[];

/* metrics.c */
void notes_access_log(void *arg, const evx_http_log_entry *e);
void notes_mail_log(void *arg, int level, const char *line);
/* Register the application's own numbers with the loop's /metrics. */
int notes_metrics_init(notes_app *app);

/* mailtask.c: one POST's note on its way through the writer thread, shared
 * by the handler's coroutine and the transaction's job (refs counts them;
 * loop thread only). The strings are malloc'd; the insert replaces
 * title/body with the stored text. */
typedef struct notes_post {
  notes_app *app;
  char *title, *body, *created_at;
  size_t title_len, body_len, created_len;
  int64_t id;
  char errmsg[256];
  int refs;
  evx_future *stored; /* notes_store: settled when the transaction ended; may be NULL */
} notes_post;
/* A note with copies of title and body, one reference; NULL when out of memory. */
notes_post *notes_post_new(notes_app *app, const char *title, size_t title_len, const char *body,
                           size_t body_len);
/* Drop a reference; the last frees the note and releases p->stored. NULL accepted. */
void notes_post_release(notes_post *p);
/* Coroutine only. Insert the note and enqueue its mail in one transaction
 * on the writer thread (a SQLite task store is the notes database; a Redis
 * one has it as its outbox), then, on the loop thread and whether or not the
 * caller still waits: publish it (latest_id, wake the long polls). Returns the transaction's status (p->id, title, body and
 * created_at are the stored note then, p->errmsg SQLite's message on
 * EVX_EIO), EVX_EBUSY at once when the writer's queue is full, or the
 * interruption reason (EVX_EGONE...) - which never cancels the write. */
int notes_store(notes_post *p);
/* Open the mail task queue (--tasks) and register the handler; main starts
 * it (evx_tasks_start) once the port is known. */
int notes_tasks_open(notes_app *app, char **errmsg);

/* A JSON error reply: {"error": msg}. */
int notes_reply_error(evx_request *req, int status, const char *msg);

#endif
