/* Test-only helpers for the HTTP suites (never installed): a raw-socket
 * HTTP/1.1 client for client threads, and a server fixture that runs the
 * loop on the test's main thread while a client thread talks to it.
 *
 * Rule: the client thread never calls ck_assert (Check asserts belong to the
 * main thread). It records what it saw; the test asserts after the loop
 * stopped. Client sockets have 5 s receive/send timeouts, so a broken server
 * fails a test instead of hanging it. */
#ifndef EVX_TEST_HTTP_UTIL_H
#define EVX_TEST_HTTP_UTIL_H

#include "evx_test.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* ---- client ----------------------------------------------------------- */

static inline int tc_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static inline int tc_send_n(int fd, const void *p, size_t n) {
  const char *s = p;
  while (n) {
    ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    s += w;
    n -= (size_t)w;
  }
  return 0;
}

static inline int tc_send(int fd, const char *s) { return tc_send_n(fd, s, strlen(s)); }

/* Close with a reset instead of a FIN. */
static inline void tc_reset(int fd) {
  struct linger lg = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(fd);
}

typedef struct tc_resp {
  int status;       /* 0 when no complete status line was read */
  char head[8192];  /* status line + headers, NUL-terminated */
  char *body;       /* malloc'd, NUL-terminated (free with tc_resp_free) */
  size_t body_len;
  int chunked;      /* the body came chunked */
  int nchunks;      /* number of data chunks */
  int eof;          /* the server closed after (or instead of) the response */
} tc_resp;

static inline void tc_resp_free(tc_resp *r) {
  free(r->body);
  r->body = NULL;
}

/* A buffered reader over one connection, so pipelined responses can be read
 * one after the other. */
typedef struct tc_conn {
  int fd;
  char buf[65536];
  size_t len;
  int eof;
} tc_conn;

static inline void tc_conn_init(tc_conn *c, int fd) {
  c->fd = fd;
  c->len = 0;
  c->eof = 0;
}

static inline int tc_fill(tc_conn *c) {
  if (c->eof || c->len == sizeof c->buf) return -1;
  ssize_t n;
  do {
    n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) {
    c->eof = 1;
    return -1;
  }
  c->len += (size_t)n;
  return 0;
}

static inline void tc_consume(tc_conn *c, size_t n) {
  memmove(c->buf, c->buf + n, c->len - n);
  c->len -= n;
}

/* Read one line ending in CRLF into out (without CRLF). -1 on EOF/overflow. */
static inline int tc_line(tc_conn *c, char *out, size_t cap) {
  for (;;) {
    for (size_t i = 0; i + 1 < c->len; i++) {
      if (c->buf[i] == '\r' && c->buf[i + 1] == '\n') {
        if (i >= cap) return -1;
        memcpy(out, c->buf, i);
        out[i] = '\0';
        tc_consume(c, i + 2);
        return 0;
      }
    }
    if (tc_fill(c) != 0) return -1;
  }
}

static inline int tc_bytes(tc_conn *c, char *out, size_t n) {
  while (c->len < n)
    if (tc_fill(c) != 0) return -1;
  memcpy(out, c->buf, n);
  tc_consume(c, n);
  return 0;
}

static inline const char *tc_header(const tc_resp *r, const char *name) {
  static __thread char val[1024];
  size_t nl = strlen(name);
  const char *p = strstr(r->head, "\r\n");
  while (p && p[2]) {
    p += 2;
    if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
      const char *v = p + nl + 1;
      while (*v == ' ') v++;
      const char *e = strstr(v, "\r\n");
      size_t l = e ? (size_t)(e - v) : strlen(v);
      if (l >= sizeof val) l = sizeof val - 1;
      memcpy(val, v, l);
      val[l] = '\0';
      return val;
    }
    p = strstr(p, "\r\n");
  }
  return NULL;
}

/* Read one response. head_only: a response to HEAD (no body). 0 or -1. */
static inline int tc_read_resp(tc_conn *c, tc_resp *r, int head_only) {
  memset(r, 0, sizeof *r);
  char line[8192];
  if (tc_line(c, line, sizeof line) != 0) {
    r->eof = c->eof;
    return -1;
  }
  if (sscanf(line, "HTTP/%*d.%*d %d", &r->status) != 1) return -1;
  size_t hl = (size_t)snprintf(r->head, sizeof r->head, "%s\r\n", line);
  for (;;) {
    if (tc_line(c, line, sizeof line) != 0) return -1;
    if (!line[0]) break;
    hl += (size_t)snprintf(r->head + hl, hl < sizeof r->head ? sizeof r->head - hl : 0, "%s\r\n",
                           line);
    if (hl >= sizeof r->head) hl = sizeof r->head - 1;
  }
  const char *te = tc_header(r, "Transfer-Encoding");
  const char *cl = tc_header(r, "Content-Length");
  long clen = cl ? strtol(cl, NULL, 10) : -1;
  r->body = malloc(1);
  r->body[0] = '\0';
  if (head_only || r->status == 204 || r->status == 304) return 0;
  if (te && strcasecmp(te, "chunked") == 0) {
    r->chunked = 1;
    for (;;) {
      if (tc_line(c, line, sizeof line) != 0) return -1;
      long n = strtol(line, NULL, 16);
      if (n < 0) return -1;
      if (n == 0) {
        if (tc_line(c, line, sizeof line) != 0) return -1; /* empty trailer */
        break;
      }
      r->body = realloc(r->body, r->body_len + (size_t)n + 1);
      if (tc_bytes(c, r->body + r->body_len, (size_t)n) != 0) return -1;
      r->body_len += (size_t)n;
      r->body[r->body_len] = '\0';
      r->nchunks++;
      if (tc_line(c, line, sizeof line) != 0) return -1;
    }
  } else if (clen >= 0) {
    r->body = realloc(r->body, (size_t)clen + 1);
    if (tc_bytes(c, r->body, (size_t)clen) != 0) return -1;
    r->body_len = (size_t)clen;
    r->body[clen] = '\0';
  } else {
    while (tc_fill(c) == 0) {
    }
    r->body = realloc(r->body, c->len + 1);
    memcpy(r->body, c->buf, c->len);
    r->body_len = c->len;
    r->body[c->len] = '\0';
    tc_consume(c, c->len);
  }
  return 0;
}

/* Wait (up to 2 s) for the server to close the connection; 1 when it did. */
static inline int tc_wait_eof(tc_conn *c) {
  while (!c->eof) {
    if (c->len == sizeof c->buf) c->len = 0;
    if (tc_fill(c) != 0) break;
  }
  return c->eof;
}

/* One request on a new connection; the response in *r. 0 or -1. */
static inline int tc_request(int port, const char *raw, tc_resp *r) {
  memset(r, 0, sizeof *r);
  int fd = tc_connect(port);
  if (fd < 0) return -1;
  static __thread tc_conn c;
  tc_conn_init(&c, fd);
  int rc = tc_send(fd, raw);
  if (rc == 0) rc = tc_read_resp(&c, r, strncmp(raw, "HEAD ", 5) == 0);
  close(fd);
  return rc;
}

/* GET path with Connection: close. */
static inline int tc_get(int port, const char *path, tc_resp *r) {
  char raw[2048];
  snprintf(raw, sizeof raw, "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", path);
  return tc_request(port, raw, r);
}

/* ---- server fixture --------------------------------------------------- */

/* Sleep for ms on a client thread (only where time is the subject). */
static inline void tc_sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Wait on a semaphore for at most 5 s; 0 when it was posted. */
static inline int tc_sem_wait(sem_t *s) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 5;
  int rc;
  do {
    rc = sem_timedwait(s, &ts);
  } while (rc != 0 && errno == EINTR);
  return rc;
}

typedef struct tc_fixture {
  evx_loop *loop;
  evx_http *http;
  int port;
  pthread_t client;
} tc_fixture;

static inline void tc_fixture_init(tc_fixture *f, const evx_http_opts *opts) {
  f->loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(f->loop);
  f->http = evx_http_new(f->loop, opts);
  ck_assert_ptr_nonnull(f->http);
}

static inline void tc_fixture_bind(tc_fixture *f) {
  ck_assert_int_eq(evx_http_bind(f->http, "127.0.0.1", 0), EVX_OK);
  f->port = evx_http_port(f->http);
  ck_assert_int_gt(f->port, 0);
}

/* Start `client` on its own thread, run the loop until someone stops it
 * (the client ends with evx_loop_stop), join the client. */
static inline void tc_fixture_run(tc_fixture *f, void *(*client)(void *), void *arg) {
  ck_assert_int_eq(pthread_create(&f->client, NULL, client, arg), 0);
  ck_assert_int_eq(evx_loop_run(f->loop), EVX_OK);
  pthread_join(f->client, NULL);
}

/* Run the loop for a few more iterations (pending releases, notifications). */
static inline void tc_spin(tc_fixture *f) {
  for (int i = 0; i < 3; i++) {
    evx_add_callback(f->loop, evx_test_stop_cb, f->loop);
    evx_loop_run(f->loop);
  }
}

/* Free the server and the loop, and prove that every request was released. */
static inline void tc_fixture_done(tc_fixture *f) {
  tc_spin(f);
  evx_http_stats st;
  ck_assert_int_eq(evx_http_stats_get(f->http, &st), EVX_OK);
  ck_assert_uint_eq(st.live, 0);
  ck_assert_uint_eq(st.held, 0);
  ck_assert_uint_eq(st.zombies, 0);
  evx_http_free(f->http);
  evx_loop_free(f->loop);
  ck_assert_uint_eq(evx_request_live_count(), 0);
}

/* Run fn(arg) on the loop thread and wait until it ran (client thread). */
typedef struct tc_call {
  void (*fn)(void *);
  void *arg;
  sem_t done;
} tc_call;

static inline void tc__call_cb(void *p) {
  tc_call *c = p;
  c->fn(c->arg);
  sem_post(&c->done);
}

static inline int tc_on_loop(evx_loop *loop, void (*fn)(void *), void *arg) {
  tc_call c = {.fn = fn, .arg = arg};
  sem_init(&c.done, 0, 0);
  int rc = evx_add_callback(loop, tc__call_cb, &c);
  if (rc == 0) rc = tc_sem_wait(&c.done);
  sem_destroy(&c.done);
  return rc;
}

#endif
