/*
 * evx_notes: a small notes service on evexec - SQLite on worker threads, a
 * "new note" mail sent after the response is finished, long polling, and
 * Prometheus metrics. The demo behind `make demo`.
 *
 * Start-up: open the database (WAL, schema), the mailer and the mail task
 * queue (which resumes the mail a previous process left), read the highest
 * note id, then bind and serve. Shutdown (SIGINT/SIGTERM): stop accepting,
 * answer the long polls, let running mail deliveries and queued queries
 * finish, leave the mail not sent yet durable for the next start, exit 0. A
 * second signal, or the --drain-timeout, cancels what is left.
 */
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "notes.h"

static notes_app app;
static struct event *drain_ev;
static uint64_t stop_ns;
static evx_future *shut_f; /* evx_http_shutdown's: settles once every client got its answer */
static int exit_code;

/* ---- configuration -------------------------------------------------------------- */

static void usage(FILE *f) {
  fprintf(f,
          "usage: evx_notes [options]\n"
          "  --host ADDR          listen address (NOTES_HOST; default 127.0.0.1)\n"
          "  --port N             port, 0 for any free one (NOTES_PORT; default 8080)\n"
          "  --threads N          SQLite reader threads (NOTES_THREADS; default 4)\n"
          "  --max-queue N        queries waiting per pool before 503 (default 1024)\n"
          "  --db PATH            SQLite database file (NOTES_DB; default notes.db)\n"
          "  --spool DIR          where mail goes without SMTP (NOTES_SPOOL; default spool)\n"
          "  --smtp URL           send mail via SMTP, e.g. smtp://127.0.0.1:2525\n"
          "                       (NOTES_SMTP_URL; default: write .eml files to the spool)\n"
          "  --mail-to ADDR       recipient of \"new note\" mail (NOTES_MAIL_TO; default notes@localhost)\n"
          "  --mail-from ADDR     sender (default \"evexec notes <notes@localhost>\")\n"
          "  --mail-threads N     mail delivery threads, 1 or 2 (default 1)\n"
          "  --tasks URL          durable store of the mail tasks (NOTES_TASKS; default\n"
          "                       sqlite:DB, the notes database: a note and its mail commit\n"
          "                       together)\n"
          "  --mail-attempts N    delivery attempts per mail, then the dead-letter store (default 5)\n"
          "  --mail-backoff MS    delay before the first retry, doubling, with jitter (default 1000)\n"
          "  --mail-timeout MS    time limit of one SMTP attempt (default 10000)\n"
          "  --poll-timeout MS    longest long poll (default 30000)\n"
          "  --drain-timeout MS   grace period at shutdown (default 10000)\n"
          "  --role ROLE          web (serve, enqueue mail), worker (only send the mail of\n"
          "                       a shared --tasks redis://... queue) or all (default)\n"
          "  --no-mail            no \"new note\" mail (no mailer, no task queue)\n"
          "  --quiet              no access log\n"
          "  --help\n"
          "routes: POST /notes  GET /notes  GET /notes/{id}  GET /notes/wait?since=ID  GET /metrics\n");
}

static int parse_long(const char *name, const char *s, long min, long max, long *out) {
  char *end;
  long v = strtol(s, &end, 10);
  if (!*s || *end || v < min || v > max) {
    fprintf(stderr, "evx_notes: %s must be %ld..%ld (got \"%s\")\n", name, min, max, s);
    return -1;
  }
  *out = v;
  return 0;
}

static const char *env_or(const char *name, const char *def) {
  const char *v = getenv(name);
  return v && *v ? v : def;
}

/* 0: run; 1: exit 0 (--help); -1: exit 2 (bad usage). */
static int configure(int argc, char **argv, notes_config *c) {
  *c = (notes_config){.host = env_or("NOTES_HOST", "127.0.0.1"),
                      .port = 8080,
                      .threads = 4,
                      .max_queue = 1024,
                      .db_path = env_or("NOTES_DB", "notes.db"),
                      .spool_dir = env_or("NOTES_SPOOL", "spool"),
                      .smtp_url = env_or("NOTES_SMTP_URL", NULL),
                      .mail_to = env_or("NOTES_MAIL_TO", "notes@localhost"),
                      .mail_from = "evexec notes <notes@localhost>",
                      .mail_threads = 1,
                      .tasks_url = env_or("NOTES_TASKS", NULL),
                      .mail_attempts = 5,
                      .mail_backoff_ms = 1000,
                      .mail_timeout_ms = 10000,
                      .poll_timeout_ms = 30000,
                      .drain_ms = 10000};
  if (getenv("NOTES_PORT") && parse_long("NOTES_PORT", getenv("NOTES_PORT"), 0, 65535, &c->port))
    return -1;
  if (getenv("NOTES_THREADS") &&
      parse_long("NOTES_THREADS", getenv("NOTES_THREADS"), 1, 256, &c->threads))
    return -1;
  enum { O_MAXQ = 256, O_MTO, O_MFROM, O_MTHREADS, O_TASKS, O_MATT, O_MBACK, O_MTIMEOUT, O_POLL, O_DRAIN };
  static const struct option opts[] = {{"host", required_argument, 0, 'H'},
                                       {"port", required_argument, 0, 'p'},
                                       {"threads", required_argument, 0, 't'},
                                       {"max-queue", required_argument, 0, O_MAXQ},
                                       {"db", required_argument, 0, 'd'},
                                       {"spool", required_argument, 0, 's'},
                                       {"smtp", required_argument, 0, 'm'},
                                       {"mail-to", required_argument, 0, O_MTO},
                                       {"mail-from", required_argument, 0, O_MFROM},
                                       {"mail-threads", required_argument, 0, O_MTHREADS},
                                       {"tasks", required_argument, 0, O_TASKS},
                                       {"mail-attempts", required_argument, 0, O_MATT},
                                       {"mail-backoff", required_argument, 0, O_MBACK},
                                       {"mail-timeout", required_argument, 0, O_MTIMEOUT},
                                       {"poll-timeout", required_argument, 0, O_POLL},
                                       {"drain-timeout", required_argument, 0, O_DRAIN},
                                       {"quiet", no_argument, 0, 'q'},
                                       {"no-mail", no_argument, 0, 'M'},
                                       {"role", required_argument, 0, 'R'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  int o, bad = 0;
  while (!bad && (o = getopt_long(argc, argv, "H:p:t:d:s:m:qh", opts, NULL)) != -1) {
    switch (o) {
      case 'H': c->host = optarg; break;
      case 'p': bad = parse_long("--port", optarg, 0, 65535, &c->port); break;
      case 't': bad = parse_long("--threads", optarg, 1, 256, &c->threads); break;
      case O_MAXQ: bad = parse_long("--max-queue", optarg, 1, 1000000, &c->max_queue); break;
      case 'd': c->db_path = optarg; break;
      case 's': c->spool_dir = optarg; break;
      case 'm': c->smtp_url = *optarg ? optarg : NULL; break;
      case O_MTO: c->mail_to = optarg; break;
      case O_MFROM: c->mail_from = optarg; break;
      case O_MTHREADS: bad = parse_long("--mail-threads", optarg, 1, 2, &c->mail_threads); break;
      case O_TASKS: c->tasks_url = optarg; break;
      case O_MATT: bad = parse_long("--mail-attempts", optarg, 1, 100, &c->mail_attempts); break;
      case O_MBACK: bad = parse_long("--mail-backoff", optarg, 1, 3600000, &c->mail_backoff_ms); break;
      case O_MTIMEOUT: bad = parse_long("--mail-timeout", optarg, 1, 3600000, &c->mail_timeout_ms); break;
      case O_POLL: bad = parse_long("--poll-timeout", optarg, 1, 3600000, &c->poll_timeout_ms); break;
      case O_DRAIN: bad = parse_long("--drain-timeout", optarg, 0, 3600000, &c->drain_ms); break;
      case 'q': c->quiet = 1; break;
      case 'M': c->no_mail = 1; break;
      case 'R':
        if (strcmp(optarg, "web") == 0) c->role = EVX_TASKS_ROLE_PRODUCER;
        else if (strcmp(optarg, "worker") == 0) c->role = EVX_TASKS_ROLE_WORKER;
        else if (strcmp(optarg, "all") == 0) c->role = EVX_TASKS_ROLE_ALL;
        else {
          fprintf(stderr, "evx_notes: --role must be web, worker or all (got \"%s\")\n", optarg);
          bad = 1;
        }
        break;
      case 'h': usage(stdout); return 1;
      default: usage(stderr); return -1;
    }
  }
  if (bad) return -1;
  if (optind < argc) {
    fprintf(stderr, "evx_notes: unexpected argument \"%s\"\n", argv[optind]);
    return -1;
  }
  /* Check the addresses now rather than on the first note. */
  evx_mail_msg probe = {.from = c->mail_from, .to = c->mail_to, .subject = "probe"};
  char *text = NULL;
  if (evx_mail_format(&probe, NULL, &text, NULL) != EVX_OK) {
    fprintf(stderr, "evx_notes: bad --mail-to or --mail-from address\n");
    return -1;
  }
  evx_free(text);
  return 0;
}

/* ---- shutdown ----------------------------------------------------------------------- */

/* Order: the server stops taking work and answers everyone (evx_http_shutdown);
 * the mail queue stops leasing and lets running deliveries finish within the
 * grace, leaving the rest durable for the next start (evx_tasks_shutdown);
 * only then the database drains - the queue acknowledges its last tasks
 * through the database's writer, so it closes after the queue. */
static evx_future *tasks_f; /* evx_tasks_shutdown's */
static int db_shut;

static size_t tasks_left(void) {
  evx_tasks_stats ts;
  if (!app.tasks || evx_tasks_stats_get(app.tasks, &ts) != EVX_OK) return 0;
  return (size_t)(ts.ready + ts.delayed + ts.leased);
}

static int idle(void) {
  if (tasks_f && evx_future_is_done(tasks_f) && !db_shut) {
    evx_sqlite_shutdown(app.db, EVX_SHUTDOWN_DRAIN);
    db_shut = 1;
  }
  if (!db_shut) return 0;
  evx_executor_stats r, w;
  evx_executor_stats_get(evx_sqlite_readers(app.db), &r);
  evx_executor_stats_get(evx_sqlite_writer(app.db), &w);
  return (!shut_f || evx_future_is_done(shut_f)) && r.queued + r.running + w.queued + w.running == 0;
}

static void cancel_rest(const char *why) {
  fprintf(stderr, "evx_notes: %s: cancelling queued queries (mail tasks stay durable)\n", why);
  evx_future_release(evx_tasks_shutdown(app.tasks, 0)); /* the grace ends now */
  if (tasks_f && evx_future_is_done(tasks_f)) {
    evx_sqlite_shutdown(app.db, EVX_SHUTDOWN_CANCEL);
    db_shut = 1;
  }
}

static void drain_check(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  (void)arg;
  if (idle()) {
    evx_loop_stop(app.loop);
    return;
  }
  uint64_t spent_ms = (notes_now_ns() - stop_ns) / 1000000;
  if (spent_ms > (uint64_t)app.cfg.drain_ms) {
    cancel_rest("drain timeout");
    /* Requests still held end when the loop stops (finish says ECLOSED). */
    if (spent_ms > (uint64_t)app.cfg.drain_ms + 1000) {
      evx_loop_stop(app.loop);
      return;
    }
  }
  struct timeval tv = {0, 10000};
  evtimer_add(drain_ev, &tv);
}

static void on_signal(int sig, void *arg) {
  (void)arg;
  if (app.stopping) {
    cancel_rest("second signal");
    evx_future_release(evx_http_shutdown(app.http, 0)); /* held requests: 503 now */
    return;
  }
  fprintf(stderr, "evx_notes: signal %d: stopping (%zu mail task(s) not done yet)\n", sig,
          tasks_left());
  app.stopping = 1;
  stop_ns = notes_now_ns();
  /* Every client gets an answer: held requests may finish during the drain
   * timeout, the rest get 503 (docs/GUIDE.md, "Shutdown"). */
  shut_f = evx_http_shutdown(app.http, (uint64_t)app.cfg.drain_ms);
  /* Long polls end now (503); queued queries still run, and the POSTs among
   * them still enqueue their mail in their own transaction. */
  evx_condition_free(app.new_note);
  app.new_note = NULL;
  tasks_f = evx_tasks_shutdown(app.tasks, (uint64_t)app.cfg.drain_ms);
  if (!tasks_f) { /* no queue: nothing to wait for */
    evx_sqlite_shutdown(app.db, EVX_SHUTDOWN_DRAIN);
    db_shut = 1;
  }
  drain_check(-1, 0, NULL);
}

/* ---- start-up -------------------------------------------------------------------------- */

static void on_latest(evx_sql_result *res, void *arg) {
  (void)arg;
  if (res->status != EVX_OK) {
    fprintf(stderr, "evx_notes: cannot read %s: %s\n", app.cfg.db_path,
            res->errmsg ? res->errmsg : evx_strerror(res->status));
    evx_sql_result_free(res);
    exit_code = 1;
    evx_loop_stop(app.loop);
    return;
  }
  app.latest_id = evx_sql_get_int(res, 0, 0);
  evx_sql_result_free(res);
  if (app.stopping) return;
  int rc;
  if (app.cfg.role == EVX_TASKS_ROLE_WORKER) { /* no HTTP: the web processes serve */
    app.port = (int)app.cfg.port;
    if (!app.tasks || (rc = evx_tasks_start(app.tasks)) != EVX_OK) {
      fprintf(stderr, "evx_notes: --role worker needs the mail task queue\n");
      exit_code = 1;
      evx_loop_stop(app.loop);
      return;
    }
    fprintf(stderr, "evx_notes: worker: sending the mail of %s\n",
            app.cfg.tasks_url ? app.cfg.tasks_url : app.cfg.db_path);
    return;
  }
  rc = evx_http_bind(app.http, app.cfg.host, (uint16_t)app.cfg.port);
  if (rc != EVX_OK) {
    fprintf(stderr, "evx_notes: cannot listen on %s:%ld: %s\n", app.cfg.host, app.cfg.port,
            evx_strerror(rc));
    exit_code = 1;
    evx_loop_stop(app.loop);
    return;
  }
  int port = evx_http_port(app.http);
  app.port = port; /* read by the mail tasks' workers: set before the queue starts */
  if (app.tasks && (rc = evx_tasks_start(app.tasks)) != EVX_OK) {
    fprintf(stderr, "evx_notes: cannot start the mail task queue: %s\n", evx_strerror(rc));
    exit_code = 1;
    evx_loop_stop(app.loop);
    return;
  }
  fprintf(stderr,
          "evx_notes: listening on http://%s:%d/ (db %s, %ld reader threads, mail %s%s, "
          "latest note %lld)\n",
          app.cfg.host, port, app.cfg.db_path, app.cfg.threads,
          app.cfg.smtp_url ? "via " : "spooled to ",
          app.cfg.smtp_url ? app.cfg.smtp_url : app.cfg.spool_dir, (long long)app.latest_id);
}

int main(int argc, char **argv) {
  int rc = configure(argc, argv, &app.cfg);
  if (rc) return rc > 0 ? 0 : 2;
  signal(SIGPIPE, SIG_IGN);
  app.started_ns = notes_now_ns();
  app.loop = evx_loop_new(NULL);
  if (!app.loop) return 1;

  evx_sqlite_opts so = {.readers = (unsigned)app.cfg.threads,
                        .max_queue = (size_t)app.cfg.max_queue,
                        .schema = notes_schema,
                        .name = "sqlite"};
  char *msg = NULL;
  rc = evx_sqlite_open(app.loop, app.cfg.db_path, &so, &app.db, &msg);
  if (rc != EVX_OK) {
    fprintf(stderr, "evx_notes: cannot open %s: %s\n", app.cfg.db_path, msg ? msg : evx_strerror(rc));
    evx_free(msg);
    evx_loop_free(app.loop);
    return 1;
  }
  evx_mailer_opts mo = {.smtp_url = app.cfg.smtp_url,
                        .spool_dir = app.cfg.spool_dir,
                        .from = app.cfg.mail_from,
                        .threads = 1, /* unused: deliveries run on the task workers */
                        .max_attempts = (unsigned)app.cfg.mail_attempts,
                        .backoff_ms = (uint64_t)app.cfg.mail_backoff_ms,
                        .timeout_ms = app.cfg.mail_timeout_ms,
                        .log = notes_mail_log,
                        .log_arg = &app,
                        .name = "mail"};
  app.mailer = app.cfg.no_mail ? NULL : evx_mailer_new(app.loop, &mo);
  if (app.mailer) {
    rc = notes_tasks_open(&app, &msg);
    if (rc != EVX_OK) {
      fprintf(stderr, "evx_notes: cannot open the mail task queue: %s\n",
              msg ? msg : evx_strerror(rc));
      evx_free(msg);
      exit_code = 1;
      goto out;
    }
  }
  app.new_note = evx_condition_new(app.loop);
  evx_http_opts ho = {.log = notes_access_log, .log_arg = &app};
  app.http = evx_http_new(app.loop, &ho);
  if ((!app.mailer && !app.cfg.no_mail) || !app.new_note || !app.http || notes_routes(&app) != 0) {
    fprintf(stderr, "evx_notes: start-up failed (%s)\n",
            !app.mailer ? "mailer: cannot create the spool folder or start threads" : "out of memory");
    exit_code = 1;
    goto out;
  }
  if (evx_sqlite_query(app.db, EVX_SQL_READ, "SELECT coalesce(max(id), 0) FROM notes", NULL, 0,
                       on_latest, NULL) != EVX_OK) {
    exit_code = 1;
    goto out;
  }
  struct event_base *base = evx_loop_base(app.loop);
  drain_ev = evtimer_new(base, drain_check, NULL);
  if (!drain_ev || evx_loop_on_signal(app.loop, SIGINT, on_signal, NULL) ||
      evx_loop_on_signal(app.loop, SIGTERM, on_signal, NULL)) {
    exit_code = 1;
  } else {
    evx_loop_run(app.loop);
  }
  if (drain_ev) event_free(drain_ev);
out:
  /* The order of docs/GUIDE.md ("Shutdown"): the pools (their owed callbacks
   * finish the requests still open), the mailer (its owed outcomes are
   * logged), then the server, then the loop. */
  evx_future_release(shut_f);
  evx_future_release(tasks_f);
  evx_tasks_free(app.tasks); /* before the database it writes through */
  evx_sqlite_close(app.db);
  evx_mailer_free(app.mailer);
  evx_http_free(app.http);
  evx_condition_free(app.new_note);
  evx_loop_free(app.loop);
  if (exit_code == 0) fprintf(stderr, "evx_notes: stopped\n");
  return exit_code;
}
