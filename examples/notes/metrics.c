/*
 * The application's own numbers for GET /metrics. evexec serves the route
 * (evx_http_route_metrics in handlers.c) and exports every executor (the
 * SQLite readers and writer, the mailer's) and the HTTP server by itself;
 * this file adds what only the application knows, through one
 * evx_metrics_source: requests by exact status (the server counts classes),
 * long-poll waiters, the latest note id, SQLite connections, mail outcomes.
 */
#include <stdio.h>
#include <string.h>

#include "notes.h"

#include <evexec/metrics.h>

static const char *const method_names[NOTES_NMETHODS] = {"GET", "POST", "other"};

void notes_access_log(void *arg, const evx_http_log_entry *e) {
  notes_app *app = arg;
  int m = strcmp(e->method, "GET") == 0 ? NOTES_M_GET : strcmp(e->method, "POST") == 0 ? NOTES_M_POST : NOTES_M_OTHER;
  int st = e->status >= 100 && e->status < 600 ? e->status : 0;
  app->requests[m][st]++;
  if (!app->cfg.quiet) evx_http_log_stderr(stderr, e);
}

/* The mailer's default log is quiet on success; this demo shows every mail
 * (like every request), unless --quiet. */
void notes_mail_log(void *arg, int level, const char *line) {
  notes_app *app = arg;
  if (level == EVX_MAIL_INFO && app->cfg.quiet) return;
  static const char *const names[] = {"info", "warn", "error"};
  fprintf(stderr, "mail %s: %s\n", names[level >= 0 && level <= 2 ? level : 2], line);
}

static void app_metrics(evx_metrics *out, void *arg) {
  notes_app *app = arg;
  for (int m = 0; m < NOTES_NMETHODS; m++)
    for (int s = 0; s < 600; s++)
      if (app->requests[m][s]) {
        char lb[64];
        snprintf(lb, sizeof lb, "method=\"%s\",status=\"%d\"", method_names[m], s);
        evx_metrics_counter(out, "notes_http_requests_total", "Requests answered, by method and status.",
                            lb, (double)app->requests[m][s]);
      }
  evx_metrics_gauge(out, "notes_longpoll_waiters", "Long polls waiting for a new note.", NULL,
                    (double)evx_condition_waiters(app->new_note));
  evx_metrics_gauge(out, "notes_latest_id", "Highest note id.", NULL, (double)app->latest_id);
  evx_metrics_gauge(out, "notes_db_connections",
                    "Open SQLite connections (one per worker thread that ran a query).", NULL,
                    evx_sqlite_connections(app->db));
  if (app->mailer) {
    /* The mail is a durable task (mailtask.c): these are its outcomes in
     * this process; the queue's own counts (ready, delayed, leased, dead)
     * are the evx_tasks_* series. */
    evx_mailer_stats ms;
    evx_mailer_stats_get(app->mailer, &ms);
    evx_metrics_counter(out, "notes_mail_sent_total", "Mails delivered.", NULL,
                        (double)atomic_load(&app->mail_sent));
    evx_metrics_counter(out, "notes_mail_failed_total",
                        "Mails moved to the dead-letter store (last attempt or permanent error).",
                        NULL, (double)atomic_load(&app->mail_failed));
    evx_metrics_counter(out, "notes_mail_retries_total", "Delivery attempts that will be retried.",
                        NULL, (double)atomic_load(&app->mail_retries));
    evx_metrics_counter(out, "notes_mail_attempts_total", "SMTP (or spool) attempts.", NULL,
                        (double)ms.attempts);
  }
  evx_metrics_gauge(out, "notes_uptime_seconds", "Seconds since start.", NULL,
                    (double)(notes_now_ns() - app->started_ns) / 1e9);
}

int notes_metrics_init(notes_app *app) {
  /* freed with the loop (evx_loop_free frees the sources left registered) */
  return evx_metrics_source_new(app->loop, app_metrics, app) ? 0 : -1;
}
