/*
 * GET /metrics in the Prometheus text format (version 0.0.4), and the access
 * log that counts requests by method and status.
 *
 * Executors (SQLite readers and writer, mail) export their evx_executor_stats:
 * queued/running gauges; submitted/completed/rejected/cancelled counters;
 * queue-wait and run-time histograms built from evexec's log2 buckets
 * (bucket i holds durations below 2^i microseconds).
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "notes.h"

static const char *const method_names[NOTES_NMETHODS] = {"GET", "POST", "other"};

void notes_access_log(void *arg, const evx_http_log_entry *e) {
  notes_app *app = arg;
  int m = strcmp(e->method, "GET") == 0 ? NOTES_M_GET : strcmp(e->method, "POST") == 0 ? NOTES_M_POST : NOTES_M_OTHER;
  int st = e->status >= 100 && e->status < 600 ? e->status : 0;
  app->requests[m][st]++;
  if (!app->cfg.quiet) evx_http_log_stderr(stderr, e);
}

static void histogram(FILE *f, const char *metric, const char *ex, const uint64_t *hist,
                      uint64_t sum_ns) {
  uint64_t cum = 0;
  /* The last bucket also holds everything longer: it is the +Inf bucket. */
  for (int i = 0; i < EVX_STATS_BUCKETS - 1; i++) {
    cum += hist[i];
    fprintf(f, "%s_bucket{executor=\"%s\",le=\"%g\"} %llu\n", metric, ex,
            (double)(1ULL << i) / 1e6, (unsigned long long)cum);
  }
  cum += hist[EVX_STATS_BUCKETS - 1];
  fprintf(f, "%s_bucket{executor=\"%s\",le=\"+Inf\"} %llu\n", metric, ex, (unsigned long long)cum);
  fprintf(f, "%s_sum{executor=\"%s\"} %.9f\n", metric, ex, (double)sum_ns / 1e9);
  fprintf(f, "%s_count{executor=\"%s\"} %llu\n", metric, ex, (unsigned long long)cum);
}

static void executors(FILE *f, evx_executor *const *exs, size_t n) {
  evx_executor_stats st[4];
  for (size_t i = 0; i < n; i++) evx_executor_stats_get(exs[i], &st[i]);
  static const struct {
    const char *name, *type, *help;
    size_t off;
  } scalars[] = {
      {"evx_executor_threads", "gauge", "Worker threads.", offsetof(evx_executor_stats, threads)},
      {"evx_executor_queued", "gauge", "Jobs waiting in the queue.", offsetof(evx_executor_stats, queued)},
      {"evx_executor_running", "gauge", "Jobs running now.", offsetof(evx_executor_stats, running)},
      {"evx_executor_submitted_total", "counter", "Jobs accepted.", offsetof(evx_executor_stats, submitted)},
      {"evx_executor_completed_total", "counter", "Jobs that ran to the end.", offsetof(evx_executor_stats, completed)},
      {"evx_executor_rejected_total", "counter", "Submits refused because the queue was full (503).", offsetof(evx_executor_stats, rejected)},
      {"evx_executor_cancelled_total", "counter", "Jobs cancelled before they started.", offsetof(evx_executor_stats, cancelled)},
  };
  for (size_t k = 0; k < sizeof scalars / sizeof scalars[0]; k++) {
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", scalars[k].name, scalars[k].help, scalars[k].name,
            scalars[k].type);
    for (size_t i = 0; i < n; i++) {
      const char *p = (const char *)&st[i] + scalars[k].off;
      unsigned long long v = scalars[k].off == offsetof(evx_executor_stats, threads)
                                 ? *(const unsigned *)(const void *)p
                                 : *(const uint64_t *)(const void *)p;
      fprintf(f, "%s{executor=\"%s\"} %llu\n", scalars[k].name, evx_executor_name(exs[i]), v);
    }
  }
  fprintf(f, "# HELP evx_executor_wait_seconds Time jobs waited in the queue.\n"
             "# TYPE evx_executor_wait_seconds histogram\n");
  for (size_t i = 0; i < n; i++)
    histogram(f, "evx_executor_wait_seconds", evx_executor_name(exs[i]), st[i].wait_hist,
              st[i].wait_ns_total);
  fprintf(f, "# HELP evx_executor_run_seconds Time jobs ran on a worker.\n"
             "# TYPE evx_executor_run_seconds histogram\n");
  for (size_t i = 0; i < n; i++)
    histogram(f, "evx_executor_run_seconds", evx_executor_name(exs[i]), st[i].run_hist,
              st[i].run_ns_total);
}

void notes_on_metrics(evx_request *req, void *arg) {
  notes_app *app = arg;
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  if (!f) {
    notes_reply_error(req, 500, "out of memory");
    return;
  }
  evx_executor *exs[4];
  size_t n = 0;
  exs[n++] = evx_sqlite_readers(app->db);
  exs[n++] = evx_sqlite_writer(app->db);
  if (app->mailer) exs[n++] = evx_mailer_executor(app->mailer);
  executors(f, exs, n);

  fprintf(f, "# HELP notes_http_requests_total Requests answered, by method and status.\n"
             "# TYPE notes_http_requests_total counter\n");
  for (int m = 0; m < NOTES_NMETHODS; m++)
    for (int s = 0; s < 600; s++)
      if (app->requests[m][s])
        fprintf(f, "notes_http_requests_total{method=\"%s\",status=\"%d\"} %llu\n",
                method_names[m], s, (unsigned long long)app->requests[m][s]);
  evx_http_stats hs;
  evx_http_stats_get(app->http, &hs);
  fprintf(f,
          "# HELP notes_http_held Requests held open now (long polls, queries in flight).\n"
          "# TYPE notes_http_held gauge\nnotes_http_held %llu\n"
          "# HELP notes_http_gone_total Requests whose client left before the answer.\n"
          "# TYPE notes_http_gone_total counter\nnotes_http_gone_total %llu\n"
          "# HELP notes_http_busy_total Requests refused with 503 because too many were held.\n"
          "# TYPE notes_http_busy_total counter\nnotes_http_busy_total %llu\n",
          (unsigned long long)hs.held, (unsigned long long)hs.gone,
          (unsigned long long)hs.rejected_busy);

  fprintf(f,
          "# HELP notes_longpoll_waiters Long polls waiting for a new note.\n"
          "# TYPE notes_longpoll_waiters gauge\nnotes_longpoll_waiters %zu\n"
          "# HELP notes_latest_id Highest note id.\n"
          "# TYPE notes_latest_id gauge\nnotes_latest_id %lld\n"
          "# HELP notes_db_connections Open SQLite connections (one per worker thread that ran a query).\n"
          "# TYPE notes_db_connections gauge\nnotes_db_connections %u\n",
          evx_condition_waiters(app->new_note), (long long)app->latest_id,
          evx_sqlite_connections(app->db));

  if (app->mailer) {
    evx_mailer_stats ms;
    evx_mailer_stats_get(app->mailer, &ms);
    static const char *const names[] = {"sent", "failed", "cancelled", "retries", "attempts"};
    uint64_t vals[] = {ms.sent, ms.failed, ms.cancelled, ms.retries, ms.attempts};
    for (size_t i = 0; i < 5; i++)
      fprintf(f, "# TYPE notes_mail_%s_total counter\nnotes_mail_%s_total %llu\n", names[i],
              names[i], (unsigned long long)vals[i]);
    fprintf(f,
            "# HELP notes_mail_pending Mails not delivered nor failed yet.\n"
            "# TYPE notes_mail_pending gauge\nnotes_mail_pending %llu\n"
            "# TYPE notes_mail_not_queued_total counter\nnotes_mail_not_queued_total %llu\n",
            (unsigned long long)ms.pending, (unsigned long long)app->mail_not_queued);
  }
  fprintf(f, "# TYPE notes_uptime_seconds gauge\nnotes_uptime_seconds %.3f\n",
          (double)(notes_now_ns() - app->started_ns) / 1e9);
  if (fclose(f) != 0 || !text) {
    free(text);
    notes_reply_error(req, 500, "out of memory");
    return;
  }
  evx_request_finish(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
  free(text);
}
