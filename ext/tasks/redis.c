/* evx__redis: an asynchronous hiredis connection on the loop's event_base.
 *
 * DESIGN
 * One redisAsyncContext at a time (r->ac), attached to the loop's own
 * event_base with hiredis' libevent adapter: its socket is one more event on
 * the loop, no thread. Every new context first queues its set-up commands
 * (AUTH, SELECT, SCRIPT LOAD per script); the reply to the last one makes the
 * connection READY. Commands from users are refused (EVX_EIO) unless READY,
 * so nothing is queued into a connection that is not there.
 *
 * Each command carries a small evx__redis_op (callback, arg, and the
 * connection generation it was sent on). hiredis calls it exactly once: with
 * the reply, or with NULL when the context is freed (disconnect, error,
 * redisAsyncFree). Losing a context for any reason goes through lost(),
 * which schedules the reconnect; the context itself is freed only by hiredis
 * (after its disconnect callback) or by drop() outside hiredis' callbacks.
 *
 * A watchdog timer (every 100 ms) drops a connection whose connect did not
 * finish in time, or that owes replies and made no progress for
 * cmd_timeout_ms (a server that stopped answering: SIGSTOP, a dead host).
 */
#include "redis-internal.h"

#include <evexec/evexec.h>

#include <adapters/libevent.h>
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { EVX__REDIS_DOWN, EVX__REDIS_CONNECTING, EVX__REDIS_READY };

#define EVX__REDIS_MAX_SCRIPTS 16

struct evx__redis {
  evx_loop *loop;
  evx__redis_opts o;
  char ip[INET6_ADDRSTRLEN];
  int port;
  char path[256];
  int db;
  char password[128];
  size_t nscripts;
  char sha[EVX__REDIS_MAX_SCRIPTS][41];

  redisAsyncContext *ac; /* current context or NULL */
  int state;
  unsigned gen;          /* generation of the current context */
  unsigned setup_left;   /* set-up replies still owed on the current context */
  size_t pending;        /* user replies owed on the current context */
  uint64_t since_ns;     /* connect start, or last progress while replies are owed */
  unsigned backoff_ms;   /* next reconnect delay */
  unsigned connects;
  uint32_t rng;
  int closing;
  evx_timer *reconnect;
  evx_timer *watchdog;
  int down_logged;       /* one log line per outage, not per attempt */
};

typedef struct evx__redis_op {
  evx__redis *r;
  unsigned gen;
  int setup; /* a set-up command: counts toward READY, not toward pending */
  evx__redis_reply_fn fn;
  void *arg;
} evx__redis_op;

static void connect_now(evx__redis *r);

static void log_line(const evx__redis *r, const char *what, const char *detail) {
  fprintf(stderr, "evexec %s: %s%s%s\n", r->o.name, what, detail ? ": " : "", detail ? detail : "");
}

/* ---- URL ------------------------------------------------------------------ */

static int url_err(char **errmsg, const char *url, const char *why) {
  if (errmsg) {
    size_t n = strlen(url) + strlen(why) + 32;
    *errmsg = evx_malloc(n);
    if (*errmsg) snprintf(*errmsg, n, "bad Redis URL \"%s\": %s", url, why);
  }
  return EVX_EINVAL;
}

static int parse_db(const char *s, const char *end, int *db) {
  if (s == end) return -1;
  long v = 0;
  for (const char *p = s; p < end; p++) {
    if (!isdigit((unsigned char)*p) || v > 100000) return -1;
    v = v * 10 + (*p - '0');
  }
  *db = (int)v;
  return 0;
}

int evx__redis_parse_url(const char *url, evx__redis_addr *a, char **errmsg) {
  if (errmsg) *errmsg = NULL;
  if (!url || !a) return EVX_EINVAL;
  memset(a, 0, sizeof *a);
  a->port = 6379;
  if (strncmp(url, "unix:", 5) == 0) {
    const char *p = url + 5;
    if (strncmp(p, "//", 2) == 0) p += 2; /* unix:///path too */
    const char *q = strchr(p, '?');
    size_t n = q ? (size_t)(q - p) : strlen(p);
    if (n == 0 || p[0] != '/') return url_err(errmsg, url, "the socket path must be absolute");
    if (n >= sizeof a->path) return url_err(errmsg, url, "socket path too long");
    memcpy(a->path, p, n);
    if (q) {
      if (strncmp(q, "?db=", 4) != 0 || parse_db(q + 4, q + strlen(q), &a->db) != 0)
        return url_err(errmsg, url, "expected ?db=N after the path");
    }
    return EVX_OK;
  }
  if (strncmp(url, "redis://", 8) != 0)
    return url_err(errmsg, url, "expected redis://HOST:PORT/DB or unix:/PATH?db=N");
  const char *p = url + 8;
  const char *at = strchr(p, '@');
  const char *slash = strchr(p, '/');
  if (at && (!slash || at < slash)) { /* [user]:password@ */
    const char *colon = memchr(p, ':', (size_t)(at - p));
    if (!colon) return url_err(errmsg, url, "expected :PASSWORD@ before the host");
    size_t n = (size_t)(at - colon - 1);
    if (n >= sizeof a->password) return url_err(errmsg, url, "password too long");
    memcpy(a->password, colon + 1, n);
    p = at + 1;
  }
  const char *end = slash ? slash : p + strlen(p);
  const char *hend = end;
  const char *hp = p;
  if (*p == '[') { /* [IPv6]:port */
    const char *rb = memchr(p, ']', (size_t)(end - p));
    if (!rb) return url_err(errmsg, url, "unclosed [ in the host");
    hp = p + 1;
    hend = rb;
    p = rb + 1;
  } else {
    const char *colon = memchr(p, ':', (size_t)(end - p));
    hend = colon ? colon : end;
    p = hend;
  }
  size_t hn = (size_t)(hend - hp);
  if (hn == 0) return url_err(errmsg, url, "no host");
  if (hn >= sizeof a->host) return url_err(errmsg, url, "host too long");
  memcpy(a->host, hp, hn);
  if (p < end) {
    if (*p != ':') return url_err(errmsg, url, "junk after the host");
    int port;
    if (parse_db(p + 1, end, &port) != 0 || port < 1 || port > 65535)
      return url_err(errmsg, url, "bad port");
    a->port = port;
  }
  if (slash && slash[1] && parse_db(slash + 1, slash + strlen(slash), &a->db) != 0)
    return url_err(errmsg, url, "the database must be a number");
  return EVX_OK;
}

/* ---- connection ------------------------------------------------------------ */

static unsigned jitter(evx__redis *r, unsigned ms) { /* ms/2 .. ms */
  r->rng ^= r->rng << 13;
  r->rng ^= r->rng >> 17;
  r->rng ^= r->rng << 5;
  return ms / 2 + (ms > 1 ? r->rng % (ms / 2 + 1) : 0);
}

static void reconnect_cb(void *arg) {
  evx__redis *r = arg;
  r->reconnect = NULL;
  connect_now(r);
}

/* The current context is gone (hiredis frees it, or drop() did). */
static void lost(evx__redis *r, const char *why) {
  int was_ready = r->state == EVX__REDIS_READY;
  r->ac = NULL;
  r->state = EVX__REDIS_DOWN;
  r->pending = 0;
  r->setup_left = 0;
  r->gen++;
  if (!r->down_logged) {
    log_line(r, was_ready ? "connection lost, reconnecting" : "cannot connect, retrying", why);
    r->down_logged = 1;
  }
  if (was_ready && r->o.on_state) r->o.on_state(r, 0, r->o.arg);
  if (r->closing || r->reconnect) return;
  unsigned delay = jitter(r, r->backoff_ms);
  r->backoff_ms = r->backoff_ms * 2 > r->o.backoff_max_ms ? r->o.backoff_max_ms : r->backoff_ms * 2;
  r->reconnect = evx_call_later(r->loop, delay, reconnect_cb, r);
  /* no memory for the timer: the watchdog reconnects (state DOWN, no timer) */
}

static void on_connect(const redisAsyncContext *ac, int status) {
  evx__redis *r = ac->data;
  if (!r || r->ac != ac) return;
  if (status != REDIS_OK) lost(r, ac->errstr[0] ? ac->errstr : "connect failed");
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  evx__redis *r = ac->data;
  if (!r || r->ac != ac) return;
  lost(r, status == REDIS_OK ? "closed" : (ac->errstr[0] ? ac->errstr : "error"));
}

static void op_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  evx__redis_op *op = privdata;
  evx__redis *r = op->r;
  redisReply *rep = reply;
  int current = op->gen == r->gen && r->ac == ac;
  if (op->setup) {
    if (current && rep) {
      if (rep->type == REDIS_REPLY_ERROR) {
        log_line(r, "set-up command failed", rep->str);
        redisAsyncDisconnect(ac); /* reconnect later: AUTH/SELECT may work then */
      } else {
        size_t i = (size_t)(uintptr_t)op->arg;
        if (i < r->nscripts && rep->type == REDIS_REPLY_STRING && rep->len == 40)
          memcpy(r->sha[i], rep->str, 41);
        if (--r->setup_left == 0) {
          r->state = EVX__REDIS_READY;
          r->connects++;
          r->backoff_ms = r->o.backoff_min_ms;
          if (r->down_logged && r->connects > 1) log_line(r, "connected again", NULL);
          r->down_logged = 0;
          r->since_ns = evx_now_ns();
          if (r->o.on_state) r->o.on_state(r, 1, r->o.arg);
        }
      }
    }
    evx_free(op);
    return;
  }
  if (current) {
    if (r->pending) r->pending--;
    r->since_ns = evx_now_ns();
  }
  evx__redis_reply_fn fn = op->fn;
  void *arg = op->arg;
  evx_free(op);
  fn(r, rep, arg);
}

static int send_op(evx__redis *r, int setup, evx__redis_reply_fn fn, void *arg, int argc,
                   const char **argv, const size_t *argvlen) {
  evx__redis_op *op = evx_malloc(sizeof *op);
  if (!op) return EVX_ENOMEM;
  *op = (evx__redis_op){r, r->gen, setup, fn, arg};
  if (redisAsyncCommandArgv(r->ac, op_reply, op, argc, argv, argvlen) != REDIS_OK) {
    evx_free(op);
    return EVX_EIO;
  }
  if (!setup) {
    if (r->pending++ == 0) r->since_ns = evx_now_ns();
  }
  return EVX_OK;
}

static void connect_now(evx__redis *r) {
  if (r->closing || r->ac) return;
  redisAsyncContext *ac =
      r->path[0] ? redisAsyncConnectUnix(r->path) : redisAsyncConnect(r->ip, r->port);
  if (!ac || ac->err) {
    const char *why = ac ? ac->errstr : "out of memory";
    r->ac = NULL;
    r->state = EVX__REDIS_CONNECTING; /* so lost() schedules a retry without on_state */
    lost(r, why);
    if (ac) redisAsyncFree(ac);
    return;
  }
  ac->data = r;
  if (redisLibeventAttach(ac, evx_loop_base(r->loop)) != REDIS_OK) {
    redisAsyncFree(ac);
    r->state = EVX__REDIS_CONNECTING;
    lost(r, "cannot attach to the event base");
    return;
  }
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  if (!r->path[0]) redisEnableKeepAlive(&ac->c);
  r->ac = ac;
  r->gen++;
  r->state = EVX__REDIS_CONNECTING;
  r->since_ns = evx_now_ns();
  r->pending = 0;
  r->setup_left = 0;
  int rc = EVX_OK;
  if (r->password[0]) {
    const char *argv[] = {"AUTH", r->password};
    if ((rc = send_op(r, 1, NULL, (void *)(uintptr_t)SIZE_MAX, 2, argv, NULL)) == EVX_OK)
      r->setup_left++;
  }
  char db[16];
  snprintf(db, sizeof db, "%d", r->db);
  const char *sel[] = {"SELECT", db};
  if (rc == EVX_OK && (rc = send_op(r, 1, NULL, (void *)(uintptr_t)SIZE_MAX, 2, sel, NULL)) == EVX_OK)
    r->setup_left++;
  for (size_t i = 0; rc == EVX_OK && i < r->nscripts; i++) {
    const char *argv[] = {"SCRIPT", "LOAD", r->o.scripts[i]};
    if ((rc = send_op(r, 1, NULL, (void *)(uintptr_t)i, 3, argv, NULL)) == EVX_OK)
      r->setup_left++;
  }
  if (rc != EVX_OK) evx__redis_drop(r);
}

void evx__redis_drop(evx__redis *r) {
  if (!r || !r->ac) return;
  redisAsyncContext *ac = r->ac;
  int was = r->state;
  r->ac = NULL; /* hiredis' callbacks for ac are no longer current */
  r->gen++;
  redisAsyncFree(ac); /* owed callbacks run with NULL now (or after the current callback) */
  r->state = was;
  lost(r, "dropped");
}

static void watchdog_cb(void *arg) {
  evx__redis *r = arg;
  r->watchdog = NULL;
  uint64_t now = evx_now_ns();
  if (r->state == EVX__REDIS_CONNECTING && r->ac &&
      now - r->since_ns > (uint64_t)r->o.connect_timeout_ms * 1000000u) {
    log_line(r, "connect timed out", NULL);
    evx__redis_drop(r);
  } else if (r->state == EVX__REDIS_READY && r->pending &&
             now - r->since_ns > (uint64_t)r->o.cmd_timeout_ms * 1000000u) {
    log_line(r, "server stopped answering", NULL);
    evx__redis_drop(r);
  } else if (r->state == EVX__REDIS_DOWN && !r->ac && !r->reconnect) {
    connect_now(r);
  }
  if (!r->closing) r->watchdog = evx_call_later(r->loop, 100, watchdog_cb, r);
}

evx__redis *evx__redis_new(evx_loop *loop, const evx__redis_addr *a, const evx__redis_opts *o,
                           char **errmsg) {
  if (errmsg) *errmsg = NULL;
  if (!loop || !a) return NULL;
  evx__redis *r = evx_calloc(1, sizeof *r);
  if (!r) return NULL;
  r->loop = loop;
  if (o) r->o = *o;
  if (!r->o.name) r->o.name = "redis";
  if (!r->o.cmd_timeout_ms) r->o.cmd_timeout_ms = 5000;
  if (!r->o.connect_timeout_ms) r->o.connect_timeout_ms = 2000;
  if (!r->o.backoff_min_ms) r->o.backoff_min_ms = 50;
  if (!r->o.backoff_max_ms) r->o.backoff_max_ms = 2000;
  if (r->o.backoff_max_ms < r->o.backoff_min_ms) r->o.backoff_max_ms = r->o.backoff_min_ms;
  r->backoff_ms = r->o.backoff_min_ms;
  r->rng = ((uint32_t)getpid() * 2654435761u) ^ ((uint32_t)evx_now_ns() | 1u);
  while (r->o.scripts && r->o.scripts[r->nscripts] && r->nscripts < EVX__REDIS_MAX_SCRIPTS)
    r->nscripts++;
  r->port = a->port;
  r->db = a->db;
  snprintf(r->password, sizeof r->password, "%s", a->password);
  if (a->path[0]) {
    snprintf(r->path, sizeof r->path, "%s", a->path);
  } else {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(a->host, NULL, &hints, &res);
    if (gai != 0 || !res) {
      if (errmsg) {
        size_t n = strlen(a->host) + 64;
        *errmsg = evx_malloc(n);
        if (*errmsg) snprintf(*errmsg, n, "cannot resolve Redis host \"%s\": %s", a->host,
                              gai_strerror(gai));
      }
      evx_free(r);
      return NULL;
    }
    void *sa = res->ai_family == AF_INET6 ? (void *)&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr
                                          : (void *)&((struct sockaddr_in *)res->ai_addr)->sin_addr;
    inet_ntop(res->ai_family, sa, r->ip, sizeof r->ip);
    freeaddrinfo(res);
  }
  /* hiredis writes with write(): a server that went away would kill the
   * process with SIGPIPE. Ignore it unless the application chose a handler
   * (writes then fail with EPIPE, which is a lost connection here). */
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);
  r->watchdog = evx_call_later(loop, 100, watchdog_cb, r);
  if (!r->watchdog) {
    evx_free(r);
    return NULL;
  }
  connect_now(r);
  return r;
}

void evx__redis_free(evx__redis *r) {
  if (!r) return;
  r->closing = 1;
  if (r->reconnect) evx_timer_cancel(r->reconnect);
  if (r->watchdog) evx_timer_cancel(r->watchdog);
  r->reconnect = r->watchdog = NULL;
  if (r->ac) {
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    r->gen++;
    ac->data = NULL;
    redisAsyncFree(ac);
  }
  evx_free(r);
}

int evx__redis_ready(const evx__redis *r) { return r && r->state == EVX__REDIS_READY; }
int evx__redis_closing(const evx__redis *r) { return r && r->closing; }
size_t evx__redis_pending(const evx__redis *r) { return r ? r->pending : 0; }
unsigned evx__redis_connects(const evx__redis *r) { return r ? r->connects : 0; }

int evx__redis_cmd(evx__redis *r, evx__redis_reply_fn fn, void *arg, int argc,
                   const char **argv, const size_t *argvlen) {
  if (!r || !fn || argc < 1 || !argv) return EVX_EINVAL;
  if (r->state != EVX__REDIS_READY || !r->ac || r->closing) return EVX_EIO;
  return send_op(r, 0, fn, arg, argc, argv, argvlen);
}

const char *evx__redis_script_sha(const evx__redis *r, size_t i) {
  if (!r || i >= r->nscripts || !r->sha[i][0]) return NULL;
  return r->sha[i];
}

/* Drive the current connection on the calling thread (blocking) until
 * done(r) holds, the context is gone, or timeout_ms passed. */
static void drive(evx__redis *r, int (*done)(const evx__redis *), unsigned timeout_ms) {
  uint64_t end = evx_now_ns() + (uint64_t)timeout_ms * 1000000u;
  while (r->ac && !done(r)) {
    uint64_t now = evx_now_ns();
    if (now >= end) break;
    redisContext *c = &r->ac->c;
    int connected = (c->flags & REDIS_CONNECTED) != 0;
    /* connecting: writable means the connect finished (hiredis checks it) */
    struct pollfd p = {.fd = c->fd,
                       .events = POLLIN | (!connected || sdslen(c->obuf) ? POLLOUT : 0)};
    int left = (int)((end - now) / 1000000u) + 1;
    if (poll(&p, 1, left) < 0 && errno != EINTR) break;
    if (r->ac && (p.revents & (POLLOUT | POLLERR | POLLHUP))) redisAsyncHandleWrite(r->ac);
    if (r->ac && (p.revents & (POLLIN | POLLHUP | POLLERR))) redisAsyncHandleRead(r->ac);
  }
}

static int no_replies_owed(const evx__redis *r) { return r->pending == 0; }
static int is_ready(const evx__redis *r) { return r->state == EVX__REDIS_READY; }

int evx__redis_flush(evx__redis *r, unsigned timeout_ms) {
  if (!r) return EVX_EINVAL;
  if (r->state == EVX__REDIS_READY) drive(r, no_replies_owed, timeout_ms);
  return r->pending ? EVX_ETIMEDOUT : EVX_OK;
}

int evx__redis_wait_ready(evx__redis *r, unsigned timeout_ms) {
  if (!r) return EVX_EINVAL;
  drive(r, is_ready, timeout_ms);
  return r->state == EVX__REDIS_READY ? EVX_OK : EVX_EIO;
}
