/* PRIVATE to evexec_tasks: never installed, never included by users.
 *
 * evx__redis: one asynchronous hiredis connection on an evx_loop's own
 * event_base (hiredis' libevent adapter), that reconnects by itself.
 *
 * States: DOWN -> CONNECTING -> READY -> DOWN ... A connection is READY once
 * the server answered the set-up commands sent first on every new connection
 * (AUTH, SELECT db, SCRIPT LOAD of every script). Commands are accepted only
 * while READY; otherwise evx__redis_cmd answers EVX_EIO at once and the
 * callback is never called, so the caller can fail fast while Redis is away.
 * Losing the connection (error, EOF, a reply that did not come within
 * cmd_timeout_ms, a connect that did not finish within connect_timeout_ms)
 * calls every pending callback with a NULL reply, calls on_state(0), and
 * schedules a reconnect on a loop timer with exponential backoff and jitter
 * (backoff_min_ms .. backoff_max_ms). Nothing here ever blocks the loop: the
 * host name is resolved once, in evx__redis_new (start-up, blocking allowed).
 *
 * Pipelining: hiredis buffers every command issued during one loop callback
 * and writes them together when the socket is writable, so the commands of
 * one loop iteration cost one write and one round trip.
 *
 * Threads: loop thread only. Callbacks run on the loop thread, from inside
 * hiredis' read handler (never inside evx__redis_cmd). A callback may issue
 * new commands; it must not free the connection.
 */
#ifndef EVX_TASKS_REDIS_INTERNAL_H
#define EVX_TASKS_REDIS_INTERNAL_H

#include <evexec/loop.h>
#include <hiredis.h>
#include <stddef.h>

#include "evx-private.h" /* evx_calloc, evx_now_ns... */

/** A parsed redis://[:PASSWORD@]HOST[:PORT][/DB] or unix:PATH[?db=N] URL. */
typedef struct evx__redis_addr {
  char host[256]; /* "" for a unix socket */
  int port;       /* default 6379 */
  char path[256]; /* unix socket path, or "" */
  int db;         /* default 0 */
  char password[128];
} evx__redis_addr;

/** Parse url into *a. EVX_OK, or EVX_EINVAL with *errmsg (evx_free) when not NULL. */
int evx__redis_parse_url(const char *url, evx__redis_addr *a, char **errmsg);

typedef struct evx__redis evx__redis;

/** A reply: NULL when the connection was lost (or freed) before it came.
 *  The reply is hiredis' and is freed after the callback returns. */
typedef void (*evx__redis_reply_fn)(evx__redis *r, redisReply *reply, void *arg);
/** up = 1: the connection became READY (scripts loaded); up = 0: it was lost. */
typedef void (*evx__redis_state_fn)(evx__redis *r, int up, void *arg);

typedef struct evx__redis_opts {
  const char *name;             /* for log lines; default "redis" */
  const char *const *scripts;   /* Lua scripts loaded on every connection; NULL-terminated */
  evx__redis_state_fn on_state; /* or NULL */
  void *arg;
  unsigned cmd_timeout_ms;      /* a reply owed this long drops the connection; default 5000 */
  unsigned connect_timeout_ms;  /* default 2000 */
  unsigned backoff_min_ms;      /* default 50 */
  unsigned backoff_max_ms;      /* default 2000 */
} evx__redis_opts;

/** A connection for loop, connecting at once (the first connect is
 *  asynchronous too: the result is READY later, or a reconnect). Resolves
 *  the host name here (blocking). NULL with *errmsg on a bad address, or
 *  NULL for no memory. */
evx__redis *evx__redis_new(evx_loop *loop, const evx__redis_addr *a, const evx__redis_opts *o,
                           char **errmsg);
/** Free: pending callbacks get a NULL reply first (they must not issue
 *  commands then: evx__redis_closing is true). NULL accepted. */
void evx__redis_free(evx__redis *r);

int evx__redis_ready(const evx__redis *r);
/** Non-zero while evx__redis_free runs the owed callbacks. */
int evx__redis_closing(const evx__redis *r);
/** Replies owed by the server on the current connection. */
size_t evx__redis_pending(const evx__redis *r);
/** Times the connection became READY (1 after the first connect). */
unsigned evx__redis_connects(const evx__redis *r);
/** Drop the current connection now (as if it failed) and reconnect after backoff. */
void evx__redis_drop(evx__redis *r);

/** Blocking (for a free that must deliver what is owed): drive the current
 *  connection on the calling thread until no reply is owed, or timeout_ms.
 *  Callbacks run inside. EVX_OK, or EVX_ETIMEDOUT with replies still owed. */
int evx__redis_flush(evx__redis *r, unsigned timeout_ms);
/** Blocking (start-up): drive the first connect and its set-up until READY,
 *  or timeout_ms. EVX_OK when READY, else EVX_EIO (reconnects go on). */
int evx__redis_wait_ready(evx__redis *r, unsigned timeout_ms);

/** Send one command (binary-safe argv). EVX_OK; EVX_EIO when not READY or
 *  hiredis refused it; EVX_ENOMEM. On failure fn is never called. */
int evx__redis_cmd(evx__redis *r, evx__redis_reply_fn fn, void *arg, int argc,
                   const char **argv, const size_t *argvlen);
/** The SHA1 of script i (hex), once loaded; NULL before the first READY. */
const char *evx__redis_script_sha(const evx__redis *r, size_t i);

#endif
