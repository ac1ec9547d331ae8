/*
 * evx_mailer: deferred mail with retries.
 *
 * DESIGN
 *  - A mail is a `mail_job` owned by the mailer from evx_mail_send until its
 *    final outcome; the mailer keeps every such job on a list (loop thread
 *    only) so shutdown and free can reach them.
 *  - A job is in exactly one state:
 *      QUEUED   submitted to the executor (an attempt waits or runs);
 *      WAITING  a retry timer is armed on the loop (job->timer != NULL).
 *    Workers only touch the fields of the attempt (`out`) and the immutable
 *    message; the hand-off is the executor's submit/done, which orders memory.
 *  - Backoff is a loop timer (evx_call_later), so a failing server never
 *    occupies a delivery thread while it waits.
 *  - Shutdown DRAIN only closes the door: retries keep running and the
 *    executor stays up until free. CANCEL ends WAITING jobs at once and asks
 *    the executor to cancel QUEUED attempts that have not started.
 *  - Counters are atomics so evx_mailer_stats_get works from any thread.
 */
#include "mail-internal.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

/* Where a mail is between its attempts. */
typedef enum mail_job_state {
  JOB_DECIDING, /* an attempt or retry timer just ended: the next step is being chosen */
  JOB_QUEUED,   /* an attempt is on the executor (queued or running) */
  JOB_WAITING   /* a retry timer is pending */
} mail_job_state;

typedef struct mail_job {
  struct evx_mailer *m;
  struct mail_job *prev, *next; /* mailer list, loop thread */
  evx__mail_env env;
  char *text;
  size_t len;
  char *msgid;
  char *to; /* for log lines */
  unsigned attempt;
  mail_job_state state;
  evx_timer *timer;
  uint64_t seq;
  uint64_t started_ns;
  evx__mail_outcome out; /* written by the worker during an attempt */
  evx_mail_done_fn done;
  void *arg;
} mail_job;

struct evx_mailer {
  evx_loop *loop;
  evx__loop_member member; /* registered after m->ex: closed before it */
  evx_executor *ex;
  evx__mail_transport t;
  char *smtp_url, *spool_dir, *from, *hostname, *username, *password;
  unsigned max_attempts;
  uint64_t backoff_ms, backoff_max_ms;
  evx_mail_log_fn log;
  void *log_arg;
  int closed;     /* no new mail */
  int cancelling; /* no more retries */
  mail_job *head;
  atomic_uint_fast64_t seq;
  atomic_uint_fast64_t accepted, sent, failed, cancelled, attempts, retries, pending;
};

/* Quiet on success: a delivered mail is counted (evx_mailer_stats_get), not
 * logged; retries and failures go to stderr. A log callback sees every line. */
static void evx__mail_default_log(void *arg, int level, const char *line) {
  (void)arg;
  if (level == EVX_MAIL_INFO) return;
  static const char *const names[] = {"info", "warn", "error"};
  fprintf(stderr, "mail %s: %s\n", names[level >= 0 && level <= 2 ? level : 2], line);
}

static void evx__mail_log(evx_mailer *m, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void evx__mail_log(evx_mailer *m, int level, const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  m->log(m->log_arg, level, line);
}

static void evx__mail_job_free(mail_job *job) {
  evx__mail_env_free(&job->env);
  evx_free(job->text);
  evx_free(job->msgid);
  evx_free(job->to);
  evx_free(job);
}

static void evx__mail_list_remove(evx_mailer *m, mail_job *job) {
  if (job->prev) job->prev->next = job->next;
  else m->head = job->next;
  if (job->next) job->next->prev = job->prev;
  job->prev = job->next = NULL;
}

/* The one exit of a job: log, count, tell the caller, free. */
static void evx__mail_job_final(mail_job *job, int status, const char *reason) {
  evx_mailer *m = job->m;
  evx__mail_list_remove(m, job);
  atomic_fetch_sub(&m->pending, 1);
  if (status == EVX_OK) {
    atomic_fetch_add(&m->sent, 1);
    double ms = (double)(evx_now_ns() - job->started_ns) / 1e6;
    evx__mail_log(m, EVX_MAIL_INFO, "%s to %s: %s %s (attempt %u/%u, %.1f ms)", job->msgid, job->to,
          m->t.smtp_url ? "sent via" : "spooled to", job->out.detail, job->attempt,
          m->max_attempts, ms);
  } else if (status == EVX_ECANCELED) {
    atomic_fetch_add(&m->cancelled, 1);
    evx__mail_log(m, EVX_MAIL_ERROR, "%s to %s: FAILED: cancelled at shutdown after %u attempt(s)%s%s",
          job->msgid, job->to, job->attempt, reason ? "; last error: " : "", reason ? reason : "");
  } else {
    atomic_fetch_add(&m->failed, 1);
    evx__mail_log(m, EVX_MAIL_ERROR, "%s to %s: FAILED after %u attempt(s): %s", job->msgid, job->to,
          job->attempt, reason ? reason : "unknown error");
  }
  if (status != EVX_OK && !reason)
    reason = status == EVX_ECANCELED ? "cancelled at shutdown" : "delivery failed";
  if (job->done) job->done(job->arg, status, status == EVX_OK ? NULL : reason);
  evx__mail_job_free(job);
}

static void evx__mail_attempt_work(void *arg) {
  mail_job *job = arg;
  evx_mailer *m = job->m;
  evx__mail_deliver(&m->t, &job->env, job->text, job->len, job->seq, &job->out);
}

static void evx__mail_attempt_done(void *arg, int status);
static void evx__mail_retry_cb(void *arg);

static uint64_t evx__mail_backoff_delay(const evx_mailer *m, unsigned attempt) {
  uint64_t d = m->backoff_ms;
  for (unsigned i = 1; i < attempt && d < m->backoff_max_ms; i++) d *= 2;
  return d < m->backoff_max_ms ? d : m->backoff_max_ms;
}

/* After a failed attempt: arm the retry timer, or give up. */
static void evx__mail_after_failure(mail_job *job) {
  evx_mailer *m = job->m;
  const char *reason = job->out.detail[0] ? job->out.detail : "delivery failed";
  if (m->cancelling) {
    evx__mail_job_final(job, EVX_ECANCELED, reason);
    return;
  }
  if (job->out.permanent || job->attempt >= m->max_attempts) {
    evx__mail_job_final(job, EVX_EIO, reason);
    return;
  }
  uint64_t delay = evx__mail_backoff_delay(m, job->attempt);
  job->timer = evx_call_later(m->loop, delay, evx__mail_retry_cb, job);
  if (!job->timer) {
    evx__mail_job_final(job, EVX_EIO, reason);
    return;
  }
  job->state = JOB_WAITING;
  atomic_fetch_add(&m->retries, 1);
  evx__mail_log(m, EVX_MAIL_WARN, "%s to %s: attempt %u/%u failed: %s; retry in %llu ms", job->msgid,
        job->to, job->attempt, m->max_attempts, reason, (unsigned long long)delay);
}

/* Start the next attempt. Returns the submit error (the job is untouched then). */
static int evx__mail_submit_attempt(mail_job *job) {
  memset(&job->out, 0, sizeof job->out);
  job->attempt++;
  job->seq = atomic_fetch_add(&job->m->seq, 1);
  int err = evx_submit(job->m->ex, evx__mail_attempt_work, evx__mail_attempt_done, job);
  if (err) {
    job->attempt--;
    return err;
  }
  job->state = JOB_QUEUED;
  return EVX_OK;
}

static void evx__mail_attempt_done(void *arg, int status) {
  mail_job *job = arg;
  evx_mailer *m = job->m;
  job->state = JOB_DECIDING;
  if (status == EVX_ECANCELED) {
    job->attempt--; /* it never ran */
    evx__mail_job_final(job, EVX_ECANCELED, NULL);
    return;
  }
  atomic_fetch_add(&m->attempts, 1);
  if (job->out.status == EVX_OK)
    evx__mail_job_final(job, EVX_OK, NULL);
  else
    evx__mail_after_failure(job);
}

static void evx__mail_retry_cb(void *arg) {
  mail_job *job = arg;
  job->timer = NULL;
  job->state = JOB_DECIDING;
  int err = evx__mail_submit_attempt(job);
  if (err == EVX_OK) return;
  /* The queue is full or closed: count it as a failed attempt. */
  job->attempt++;
  snprintf(job->out.detail, sizeof job->out.detail, "cannot queue the attempt: %s",
           evx_strerror(err));
  job->out.status = EVX_EIO;
  job->out.permanent = err == EVX_ECLOSED;
  evx__mail_after_failure(job);
}

/* ---- public ----------------------------------------------------------------- */

static char *evx__mail_dup_opt(const char *s, const char *def) {
  return evx_strdup(s && *s ? s : def);
}

/* evx_loop_free closes a mailer left open (see evx-private.h). */
static void evx__mail_mailer_on_free(evx__loop_member *m) {
  evx_mailer_free(EVX__CONTAINER_OF(m, evx_mailer, member));
}

/* The first layout of evx_mailer_opts (what the plain evx_mailer_new reads). */
#define MAILER_OPTS_V0 (offsetof(evx_mailer_opts, name) + sizeof(const char *))

evx_mailer *(evx_mailer_new)(evx_loop *loop, const evx_mailer_opts *opts) {
  return evx_mailer_new_sized(loop, opts, MAILER_OPTS_V0);
}

evx_mailer *evx_mailer_new_sized(evx_loop *loop, const evx_mailer_opts *opts, size_t opts_size) {
  if (!loop || !evx__loop_thread_ok(loop)) return evx__ctor_fail(EVX_EINVAL);
  evx_mailer_opts o;
  if (evx__opts_copy(&o, sizeof o, opts, opts_size) != EVX_OK) return evx__ctor_fail(EVX_EINVAL);
  if (o.threads > 2) return evx__ctor_fail(EVX_EINVAL);
  if (evx__mail_global_init() != EVX_OK) return evx__ctor_fail(EVX_EIO);
  int err = EVX_ENOMEM;
  evx_mailer *m = evx_calloc(1, sizeof *m);
  if (!m) return evx__ctor_fail(EVX_ENOMEM);
  m->loop = loop;
  m->max_attempts = o.max_attempts ? o.max_attempts : 5;
  m->backoff_ms = o.backoff_ms ? o.backoff_ms : 500;
  m->backoff_max_ms = o.backoff_max_ms ? o.backoff_max_ms : 30000;
  if (m->backoff_max_ms < m->backoff_ms) m->backoff_max_ms = m->backoff_ms;
  m->log = o.log ? o.log : evx__mail_default_log;
  m->log_arg = o.log ? o.log_arg : NULL;
  m->spool_dir = evx__mail_dup_opt(o.spool_dir, "spool");
  m->from = evx__mail_dup_opt(o.from, "evexec@localhost");
  m->hostname = evx__mail_dup_opt(o.hostname, "localhost");
  if (!m->spool_dir || !m->from || !m->hostname) goto fail;
  if (o.smtp_url && *o.smtp_url) {
    /* The URL path is curl's HELO name: give it our hostname when empty. */
    const char *scheme = strstr(o.smtp_url, "://");
    const char *path = scheme ? strchr(scheme + 3, '/') : NULL;
    size_t n = strlen(o.smtp_url) + strlen(m->hostname) + 2;
    m->smtp_url = evx_malloc(n);
    if (!m->smtp_url) goto fail;
    if (path && path[1])
      snprintf(m->smtp_url, n, "%s", o.smtp_url);
    else if (path)
      snprintf(m->smtp_url, n, "%s%s", o.smtp_url, m->hostname);
    else
      snprintf(m->smtp_url, n, "%s/%s", o.smtp_url, m->hostname);
  } else if (evx__mail_mkdirs(m->spool_dir) != 0) {
    err = EVX_EIO;
    goto fail;
  }
  if (o.username) {
    m->username = evx_strdup(o.username);
    m->password = evx_strdup(o.password ? o.password : "");
    if (!m->username || !m->password) goto fail;
  }
  m->t.smtp_url = m->smtp_url;
  m->t.spool_dir = m->spool_dir;
  m->t.username = m->username;
  m->t.password = m->password;
  m->t.require_tls = o.require_tls;
  m->t.timeout_ms = o.timeout_ms > 0 ? o.timeout_ms : 10000;
  evx_executor_opts eo = {.threads = o.threads ? o.threads : 1,
                          .max_queue = o.max_queue ? o.max_queue : 1024,
                          .name = o.name && *o.name ? o.name : "mail"};
  m->ex = evx_executor_new(loop, &eo);
  if (!m->ex) {
    err = evx_last_error();
    goto fail;
  }
  evx__loop_member_add(loop, &m->member, NULL, evx__mail_mailer_on_free);
  return m;
fail:
  evx_free(m->smtp_url);
  evx_free(m->spool_dir);
  evx_free(m->from);
  evx_free(m->hostname);
  evx_free(m->username);
  evx_free(m->password);
  evx_free(m);
  return evx__ctor_fail(err);
}

int evx_mail_check(evx_mailer *m, const evx_mail_msg *msg) {
  if (!m || !msg || !evx__loop_thread_ok(m->loop)) return EVX_EINVAL;
  evx_mail_msg full = *msg;
  if (!full.from) full.from = m->from;
  evx__mail_env env;
  memset(&env, 0, sizeof env);
  char *text = NULL;
  int err = evx__mail_envelope(&full, m->from, &env);
  if (!err) err = evx_mail_format(&full, m->hostname, &text, NULL);
  evx__mail_env_free(&env); /* zeroed or filled: either is freed */
  evx_free(text);
  return err;
}

int evx_mail_send(evx_mailer *m, const evx_mail_msg *msg, evx_mail_done_fn done, void *arg,
                  char **message_id) {
  if (!m || !msg) return EVX_EINVAL;
  if (!evx__loop_thread_ok(m->loop)) return EVX_EINVAL;
  if (m->closed) return EVX_ECLOSED;
  mail_job *job = evx_calloc(1, sizeof *job);
  if (!job) return EVX_ENOMEM;
  evx_mail_msg full = *msg;
  if (!full.from) full.from = m->from;
  int err = evx__mail_envelope(&full, m->from, &job->env);
  if (!err) err = evx_mail_format(&full, m->hostname, &job->text, &job->msgid);
  if (!err) {
    job->to = evx_strdup(full.to);
    if (!job->to) err = EVX_ENOMEM;
  }
  if (err) {
    /* A message that cannot be built is lost to the caller's code path: say
     * so here, once per mail, so no mail disappears without a visible error
     * (EBUSY and ECLOSED are load and life-cycle answers the caller handles). */
    char to[201] = "(none)";
    if (full.to) {
      size_t i = 0; /* control bytes shown as '?': one log line stays one line */
      for (; full.to[i] && i < sizeof to - 1; i++)
        to[i] = (unsigned char)full.to[i] < 0x20 ? '?' : full.to[i];
      to[i] = '\0';
    }
    evx__mail_log(m, EVX_MAIL_ERROR, "mail to %s refused: %s (%s)", to,
             err == EVX_EINVAL ? "bad sender or recipient address" : "out of memory",
             evx_err_name(err));
    evx__mail_job_free(job);
    return err;
  }
  if (message_id) {
    *message_id = evx_strdup(job->msgid);
    if (!*message_id) {
      evx__mail_job_free(job);
      return EVX_ENOMEM;
    }
  }
  job->len = strlen(job->text);
  job->m = m;
  job->done = done;
  job->arg = arg;
  job->started_ns = evx_now_ns();
  err = evx__mail_submit_attempt(job);
  if (err) {
    if (message_id) {
      evx_free(*message_id);
      *message_id = NULL;
    }
    evx__mail_job_free(job);
    return err;
  }
  job->next = m->head;
  if (m->head) m->head->prev = job;
  m->head = job;
  atomic_fetch_add(&m->pending, 1);
  atomic_fetch_add(&m->accepted, 1);
  return EVX_OK;
}

static void evx__mail_set_err(char *err, size_t errlen, const char *msg) {
  if (err && errlen) snprintf(err, errlen, "%s", msg);
}

/* One blocking attempt on the caller's thread. Touches only what any thread
 * may: the transport settings and strings (immutable after evx_mailer_new)
 * and the atomic counters. Not the log (a loop-thread callback) nor
 * m->closed / m->cancelling (loop-thread fields): the reason goes to `err`. */
int evx_mail_deliver_now(evx_mailer *m, const evx_mail_msg *msg, char *err, size_t errlen) {
  if (!m || !msg || evx_loop_in_thread(m->loop)) {
    evx__mail_set_err(err, errlen, "invalid call (NULL, or on the loop thread)");
    return EVX_EINVAL;
  }
  evx_mail_msg full = *msg;
  if (!full.from) full.from = m->from;
  evx__mail_env env;
  memset(&env, 0, sizeof env);
  char *text = NULL, *msgid = NULL;
  int rc = evx__mail_envelope(&full, m->from, &env);
  if (!rc) rc = evx_mail_format(&full, m->hostname, &text, &msgid);
  if (rc) {
    evx__mail_set_err(err, errlen, rc == EVX_EINVAL ? "bad sender, recipient or Message-ID"
                                                    : "out of memory");
    evx__mail_env_free(&env);
    return rc;
  }
  evx__mail_outcome out;
  memset(&out, 0, sizeof out);
  evx__mail_deliver(&m->t, &env, text, strlen(text), atomic_fetch_add(&m->seq, 1), &out);
  atomic_fetch_add(&m->attempts, 1);
  if (out.status == EVX_OK) {
    atomic_fetch_add(&m->sent, 1);
    rc = EVX_OK;
  } else {
    const char *reason = out.detail[0] ? out.detail : "delivery failed";
    evx__mail_set_err(err, errlen, reason);
    if (out.permanent) atomic_fetch_add(&m->failed, 1);
    rc = out.permanent ? EVX_EINVAL : EVX_EIO;
  }
  evx__mail_env_free(&env);
  evx_free(text);
  evx_free(msgid);
  return rc;
}

int evx_mailer_shutdown(evx_mailer *m, int how) {
  if (!m || (how != EVX_SHUTDOWN_DRAIN && how != EVX_SHUTDOWN_CANCEL)) return EVX_EINVAL;
  m->closed = 1;
  if (how == EVX_SHUTDOWN_DRAIN) return EVX_OK;
  m->cancelling = 1;
  /* Waiting retries end now; queued attempts are cancelled by the executor
   * (their evx__mail_attempt_done gets EVX_ECANCELED later). */
  mail_job *next;
  for (mail_job *job = m->head; job; job = next) {
    next = job->next;
    if (job->state == JOB_WAITING) {
      evx_timer_cancel(job->timer);
      job->timer = NULL;
      char reason[sizeof job->out.detail];
      memcpy(reason, job->out.detail, sizeof reason);
      evx__mail_job_final(job, EVX_ECANCELED, reason[0] ? reason : NULL);
    }
  }
  return evx_executor_shutdown(m->ex, EVX_SHUTDOWN_CANCEL);
}

size_t evx_mailer_pending(const evx_mailer *m) {
  return m ? (size_t)atomic_load(&((evx_mailer *)m)->pending) : 0;
}

int evx_mailer_stats_get(evx_mailer *m, evx_mailer_stats *out) {
  if (!m || !out) return EVX_EINVAL;
  out->accepted = atomic_load(&m->accepted);
  out->sent = atomic_load(&m->sent);
  out->failed = atomic_load(&m->failed);
  out->cancelled = atomic_load(&m->cancelled);
  out->attempts = atomic_load(&m->attempts);
  out->retries = atomic_load(&m->retries);
  out->pending = atomic_load(&m->pending);
  return EVX_OK;
}

evx_executor *evx_mailer_executor(evx_mailer *m) { return m ? m->ex : NULL; }

void evx_mailer_free(evx_mailer *m) {
  if (!m) return;
  evx__loop_member_remove(&m->member);
  evx_mailer_shutdown(m, EVX_SHUTDOWN_CANCEL);
  /* Waits for a running attempt and runs every evx__mail_attempt_done still owed:
   * each ends its job (cancelling is set, so none re-arms a timer). */
  evx_executor_free(m->ex);
  /* Nothing can be left: WAITING jobs ended in shutdown, QUEUED ones in free. */
  while (m->head) evx__mail_job_final(m->head, EVX_ECANCELED, NULL);
  evx_free(m->smtp_url);
  evx_free(m->spool_dir);
  evx_free(m->from);
  evx_free(m->hostname);
  evx_free(m->username);
  evx_free(m->password);
  evx_free(m);
}
