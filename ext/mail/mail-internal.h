/* Private to ext/mail (evexec_mail): never installed, never included by users.
 *
 * message.c  - address parsing and RFC 5322 formatting (pure, any thread)
 * transport.c - the two transports (run on the mailer's worker threads)
 * mail.c     - the mailer: queue, retries on loop timers, logging
 */
#ifndef EVX_MAIL_INTERNAL_H
#define EVX_MAIL_INTERNAL_H

#include <evexec/mail.h>

#include "evx-private.h"

/* The envelope of a message: bare addr-specs ("a@b", without <>). */
typedef struct evx__mail_env {
  char *from;   /* owned */
  char **rcpt;  /* owned array of owned strings */
  size_t nrcpt;
} evx__mail_env;

/* Fill env from msg (from defaults to default_from, then "evexec@localhost").
 * EVX_EINVAL for a bad or missing address, EVX_ENOMEM. On error env is empty. */
int evx__mail_envelope(const evx_mail_msg *msg, const char *default_from, evx__mail_env *env);
void evx__mail_env_free(evx__mail_env *env);

/* Non-zero when `addr` is a bare address we accept: local@domain, printable
 * ASCII or UTF-8, no spaces, controls, quotes, commas or angle brackets. */
int evx__mail_addr_ok(const char *addr);

/* Non-zero when `id` is a Message-ID we accept: "<left@right>", printable
 * ASCII without spaces or inner <>, one '@' with text on both sides, 5..250 bytes. */
int evx__mail_msgid_ok(const char *id);

/* Transport settings; strings borrowed from the mailer, which outlives every attempt. */
typedef struct evx__mail_transport {
  const char *smtp_url; /* NULL: spool */
  const char *spool_dir;
  const char *username;
  const char *password;
  int require_tls;
  long timeout_ms;
} evx__mail_transport;

/* Result of one delivery attempt. */
typedef struct evx__mail_outcome {
  int status;        /* EVX_OK or EVX_EIO */
  int permanent;     /* non-zero: do not retry (SMTP 5xx) */
  long smtp_code;    /* last SMTP reply code, 0 if none */
  char detail[512];  /* failure reason, or the spool file on success */
} evx__mail_outcome;

/* One attempt; blocking; worker thread. `seq` makes spool names unique. */
void evx__mail_deliver(const evx__mail_transport *t, const evx__mail_env *env, const char *text,
                       size_t len, uint64_t seq, evx__mail_outcome *out);

/* Once per process, before any attempt (curl_global_init); thread-safe. */
int evx__mail_global_init(void);

/* mkdir -p; 0 or -1 with errno. */
int evx__mail_mkdirs(const char *dir);

#endif
