/**
 * @file mail.h
 * evx_mailer: send mail from the loop without blocking it (optional library
 * evexec_mail, over libcurl).
 *
 * The Tornado pattern "finish() the response, then send the mail": a handler
 * calls evx_request_finish() and then evx_mail_send(); the message is built
 * at once (so a bad address is an immediate EVX_EINVAL), and the delivery
 * runs on the mailer's own small executor (one or two threads), never on the
 * loop and never on the request pool.
 *
 * Delivery attempts that fail are retried with exponential backoff - a timer
 * on the loop (evx_call_later), not a sleep on a worker - up to max_attempts;
 * then the mail is logged as failed with the reason. SMTP 5xx replies are
 * permanent and not retried.
 *
 * Transports:
 *  - SMTP (opts.smtp_url "smtp://host:port", or "smtps://"): libcurl.
 *  - spool (no smtp_url): each message is written as `<spool_dir>/<time>-<seq>.eml`
 *    (written to a temporary name, then renamed, so a reader never sees half
 *    a file). Needs nothing running; used by the demo.
 *
 * Threads: every function here is loop-thread only, except evx_mail_format
 * (any thread) and evx_mailer_stats_get (any thread).
 *
 * This header is not included by evexec.h; link evexec_mail
 * (CMake: evexec::evexec_mail).
 */
#ifndef EVEXEC_MAIL_H
#define EVEXEC_MAIL_H

#include <evexec/executor.h>
#include <evexec/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A message to send. Every string is borrowed for the duration of the call. */
typedef struct evx_mail_msg {
  const char *from;    /**< "addr" or "Name <addr>"; NULL: the mailer's default
                            (evx_mail_format alone: "evexec@localhost") */
  const char *to;      /**< one or more addresses separated by commas; required */
  const char *subject; /**< UTF-8; RFC 2047-encoded when not short plain ASCII, which
                            includes any CR, LF or other control byte (encoded as
                            given, never a header break, never a reason to refuse) */
  const char *body;    /**< UTF-8 text; LF, CR or CRLF line ends (sent as CRLF); may be NULL */
  /** The Message-ID to use, with its <>: "<left@right>", printable ASCII
   *  without spaces, at most 250 bytes. A mail sent again with the same id
   *  is recognisable downstream as the same mail (a durable task's
   *  idempotency key, redelivered at least once). NULL: a fresh one. */
  const char *message_id;
} evx_mail_msg;

/**
 * Build the RFC 5322 text of `msg`: Date, From, To, Subject, Message-ID,
 * MIME-Version and Content-* headers, CRLF line ends throughout, body
 * 8bit or quoted-printable (when a line exceeds 998 bytes). Any thread.
 * @param msg the message (borrowed for the call); msg->from NULL gives
 *        "evexec@localhost".
 * @param hostname domain of the Message-ID (NULL: "localhost").
 * @param out receives the text (NUL-terminated; evx_free it).
 * @param message_id if not NULL, receives the Message-ID with its <> (evx_free it).
 * @return EVX_OK; EVX_EINVAL (NULL msg/out, no recipient, an address
 *         without '@' or with spaces or <>, From or To containing CR/LF);
 *         EVX_ENOMEM. On error nothing is stored.
 */
EVX_API int evx_mail_format(const evx_mail_msg *msg, const char *hostname, char **out,
                            char **message_id);

/** Log levels passed to evx_mail_log_fn. */
enum { EVX_MAIL_INFO = 0, EVX_MAIL_WARN = 1, EVX_MAIL_ERROR = 2 };

/** A log line (no newline), on the loop thread. `line` is borrowed for the call. */
typedef void (*evx_mail_log_fn)(void *arg, int level, const char *line);

/**
 * The final outcome of one mail, on the loop thread: status EVX_OK (sent or
 * spooled), EVX_EIO (every attempt failed, or a permanent SMTP error) or
 * EVX_ECANCELED (the mailer was shut down with CANCEL or freed first).
 * `reason` is NULL on success, else a message borrowed for the call.
 */
typedef void (*evx_mail_done_fn)(void *arg, int status, const char *reason);

/** Mailer options. Zero fields take the defaults. Strings are copied. */
typedef struct evx_mailer_opts {
  const char *smtp_url;    /**< NULL/"": spool transport */
  const char *spool_dir;   /**< spool folder, created if missing; default "spool" */
  const char *from;        /**< default sender; default "evexec@localhost" */
  const char *hostname;    /**< Message-ID domain and SMTP HELO; default "localhost" */
  const char *username;    /**< SMTP AUTH user; NULL: no AUTH */
  const char *password;    /**< SMTP AUTH password */
  int require_tls;         /**< non-zero: STARTTLS is required on smtp:// (else tried) */
  unsigned threads;        /**< delivery threads, 1 or 2; default 1 */
  size_t max_queue;        /**< attempts waiting before EVX_EBUSY; default 1024 */
  unsigned max_attempts;   /**< attempts per mail (>= 1); default 5 */
  uint64_t backoff_ms;     /**< delay before the 2nd attempt; doubles each time; default 500 */
  uint64_t backoff_max_ms; /**< cap on the delay; default 30000 */
  long timeout_ms;         /**< per-attempt SMTP timeout (connect and whole transfer); default 10000 */
  evx_mail_log_fn log;     /**< NULL: warnings and errors on stderr (retries, failures,
                                refused mail); a delivered mail is only counted */
  void *log_arg;
  const char *name;        /**< executor name; default "mail" */
} evx_mailer_opts;

typedef struct evx_mailer evx_mailer;

/**
 * Create a mailer bound to `loop` and start its delivery threads.
 * Loop thread only. Creates the spool folder when the spool transport is
 * used (blocking, once, at start-up).
 * A macro over evx_mailer_new_sized (see "Options structs and the ABI" in
 * common.h); source calling evx_mailer_new(loop, opts) is unchanged.
 * @param loop the loop the mailer belongs to (borrowed; must outlive it).
 * @param ... `opts`, the one argument after loop: options or NULL for the
 *        defaults; copied, strings included.
 * @return the mailer, owned by the caller (evx_mailer_free; evx_loop_free
 *         frees one left open), or NULL with evx_last_error() saying why:
 *         EVX_EINVAL (NULL loop, wrong thread, threads > 2, an option this
 *         library does not know), EVX_EIO (a spool folder that cannot be
 *         created, libcurl's global init, a thread that cannot be started),
 *         EVX_ENOMEM.
 */
#define evx_mailer_new(loop, ...) \
  evx_mailer_new_sized((loop), (__VA_ARGS__), sizeof(evx_mailer_opts))
EVX_API evx_mailer *evx_mailer_new_sized(evx_loop *loop, const evx_mailer_opts *opts,
                                         size_t opts_size);
/** The function behind the macro, for its address: reads the first layout of the options. */
EVX_API evx_mailer *(evx_mailer_new)(evx_loop *loop, const evx_mailer_opts *opts);

/**
 * Queue a mail. Loop thread only. The message is formatted now (see
 * evx_mail_format); delivery happens on the mailer's threads.
 * @param m the mailer.
 * @param msg the message (borrowed for the call: it is formatted now);
 *        msg->from NULL takes the mailer's default sender.
 * @param done final outcome, called exactly once on the loop thread - never
 *        inside this call - when this returns EVX_OK; may be NULL.
 * @param arg passed to done; borrowed, so it must stay valid until done ran.
 * @param message_id if not NULL, receives the Message-ID (evx_free it).
 * A message refused as bad (EVX_EINVAL) or for lack of memory is also
 * logged at EVX_MAIL_ERROR through the mailer's log, one line per mail.
 * @return EVX_OK; EVX_EINVAL (NULL mailer/msg, bad message); EVX_EBUSY
 *         (delivery queue full); EVX_ECLOSED (after evx_mailer_shutdown);
 *         EVX_ENOMEM. On error `done` is never called.
 */
EVX_API int evx_mail_send(evx_mailer *m, const evx_mail_msg *msg, evx_mail_done_fn done,
                          void *arg, char **message_id);

/**
 * Check a mail as evx_mail_send would (addresses, header bytes), without
 * queueing it: for a handler that must answer 422 for a bad address before
 * it finishes the request, and then sends the mail after the response
 * (the mail is deferred work: `check -> 422 | finish -> send`). Loop thread
 * only; logs nothing.
 * @return EVX_OK (evx_mail_send will accept it unless the queue is full or
 *         the mailer closed); EVX_EINVAL (NULL, no recipient, a bad sender
 *         or recipient address, CR/LF in a header); EVX_ENOMEM.
 */
EVX_API int evx_mail_check(evx_mailer *m, const evx_mail_msg *msg);

/**
 * Deliver one mail now, blocking, with one attempt through the mailer's
 * transport (SMTP or spool) and no retry: for a durable task handler
 * (ext/tasks), whose queue does the retries and keeps the mail across
 * crashes. Any thread; meant for worker threads (never the loop thread, which
 * must not block: EVX_EINVAL on the thread evx_loop_in_thread names).
 * Counted in the mailer's stats (attempts, sent, failed); not logged (the log is a
 * loop-thread callback): the reason goes to `err`, for the task to keep.
 * @param m the mailer whose transport, sender and hostname are used.
 * @param msg the message (borrowed for the call); msg->from NULL takes the
 *        mailer's default sender.
 * @param err if not NULL, receives the failure reason (NUL-terminated, cut to
 *        errlen); not written on success.
 * @param errlen the size of err in bytes; 0: nothing is written.
 * @return EVX_OK (delivered or spooled); EVX_EIO (a failure worth retrying:
 *         connection, timeout, SMTP 4xx); EVX_EINVAL (bad message, SMTP 5xx:
 *         retrying will not help); EVX_ENOMEM.
 */
EVX_API int evx_mail_deliver_now(evx_mailer *m, const evx_mail_msg *msg, char *err, size_t errlen);

/**
 * Stop accepting mail (evx_mail_send answers EVX_ECLOSED). Loop thread only.
 * DRAIN: every accepted mail still reaches its final outcome, including its
 * retries. CANCEL: retries waiting on a timer and attempts not started end
 * with EVX_ECANCELED (logged); an attempt that is running finishes.
 * Never blocks. CANCEL after DRAIN is allowed.
 * @return EVX_OK or EVX_EINVAL.
 */
EVX_API int evx_mailer_shutdown(evx_mailer *m, int how);

/** Mails accepted and not yet at their final outcome. 0 for NULL. */
EVX_API size_t evx_mailer_pending(const evx_mailer *m);

/** Counters since creation. */
typedef struct evx_mailer_stats {
  uint64_t accepted;  /**< evx_mail_send calls that returned EVX_OK */
  uint64_t sent;      /**< delivered (or spooled) */
  uint64_t failed;    /**< gave up: attempts exhausted or permanent error */
  uint64_t cancelled; /**< ended by shutdown(CANCEL) or free */
  uint64_t attempts;  /**< delivery attempts that ran */
  uint64_t retries;   /**< retries scheduled */
  uint64_t pending;   /**< as evx_mailer_pending */
} evx_mailer_stats;

/** Copy the counters. Any thread. @return EVX_OK or EVX_EINVAL. */
EVX_API int evx_mailer_stats_get(evx_mailer *m, evx_mailer_stats *out);

/** The delivery executor (borrowed; for metrics). NULL for NULL. */
EVX_API evx_executor *evx_mailer_executor(evx_mailer *m);

/**
 * Free the mailer: implies evx_mailer_shutdown(m, EVX_SHUTDOWN_CANCEL), waits
 * for a running attempt, and calls every `done` still owed (with
 * EVX_ECANCELED unless its attempt just succeeded or failed for good).
 * Loop thread only, or after the loop stopped (evx_loop_free calls it for
 * a mailer left open); not from inside one of m's own `done` or log callbacks (defer it with
 * evx_add_callback). NULL accepted.
 */
EVX_API void evx_mailer_free(evx_mailer *m);

#ifdef __cplusplus
}
#endif
#endif /* EVEXEC_MAIL_H */
