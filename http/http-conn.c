/*
 * evx__conn: one accepted connection as evexec sees it - strict HTTP/1.1
 * framing in front of evhttp's parser, the header and body deadlines, the
 * connection cap, and the list of its live requests.
 *
 * DESIGN
 * - evhttp parses leniently: it cuts header values at a NUL, takes the first
 *   of two Content-Length headers, accepts "+5", keeps "Transfer-Encoding "
 *   (space before the colon) as an unknown header and frames by
 *   Content-Length, folds continuation lines, ignores the body of HEAD, and
 *   rejects chunk extensions. Some of that cannot be seen in the request it
 *   hands over (the bytes after a NUL are gone), so validating its result is
 *   not enough. Instead a framing scanner reads every byte of the input
 *   stream *before* evhttp does: an evbuffer callback on the connection's
 *   input buffer runs inside the read that added the bytes, before evhttp's
 *   read callback (also for the bytes evexec's close-watch reads while a
 *   request is held). The scanner is an RFC 9112 state machine over the
 *   request line, header fields, Content-Length / chunked bodies and
 *   trailers; it allocates nothing and keeps only the few header values that
 *   frame a message. evhttp still parses everything it accepts.
 * - A violation poisons the connection: the bad message's bytes are removed
 *   from the input buffer (evhttp never completes it) and every later byte
 *   is dropped. Once the requests before it are answered and written, the
 *   error (400, 408, 413, 501 or 505) is written straight to the socket, it
 *   is logged and counted with the body bytes that left, and the connection
 *   freed - what nginx does.
 * - max_body_size: a Content-Length above it is 413 at the end of the head;
 *   a chunked body is 413 at the chunk-size line that takes the sum of the
 *   chunk sizes above it (before that chunk's data is read). evhttp has the
 *   same limit and checks at the same places, but only after the scanner
 *   has removed the bad message, so its own 413 (HTML, not logged) is left
 *   only for a connection the tracker could not be allocated for.
 * - Chunk extensions ("5;a=b") are valid and must be ignored; evhttp rejects
 *   them, so the scanner removes them from the buffer before evhttp reads the
 *   line.
 * - Lifetime: evhttp_set_bevcb lets us create the bufferevent, but evhttp
 *   builds the connection around it afterwards, so the tracker binds to the
 *   connection in a deferred step (holding a bufferevent reference until
 *   then). From the bind on, the connection's close callback is ours for the
 *   whole life of the connection: it forwards to a held request (the
 *   client-left path of http-request.c) and frees the tracker. Requests find
 *   their tracker through a pointer hash on the evhttp connection.
 * Loop thread only, like all of http/.
 */
#include "http-internal.h"
#include "http-util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

enum {
  S_START, /* before a request line (empty lines skipped) */
  S_METHOD,
  S_TARGET,
  S_VERSION,
  S_HDR_START, /* first byte of a header line (or the empty line) */
  S_HDR_NAME,
  S_HDR_VALUE,
  S_BODY_CL,
  S_CHUNK_SIZE,
  S_CHUNK_EXT,
  S_CHUNK_DATA,
  S_CHUNK_DATA_END,
  S_CR,   /* a CR was seen; LF must follow */
  S_DEAD, /* poisoned: everything is dropped */
};

enum { L_EMPTY, L_RL, L_HDR, L_HEAD_END, L_CHUNK, L_DATA_END }; /* what the current line is */
enum { F_NONE, F_CL, F_TE, F_HOST };                  /* framing header being read */

struct evx__conn {
  evx_http *http;
  struct bufferevent *bev;
  struct evhttp_connection *evcon; /* NULL until bound */
  evx__conn *hnext;                /* hash chain in http->conn_tab */
  evx__list link;                  /* http->conns: least recently active first */
  evx__list reqs;                  /* evx_request.conn_link: live, not finished */
  evx_request *held;               /* the held request on it, for the close callback */
  struct event tev;                /* bind step, deadlines, waiting to fail */
  int phase;                       /* what tev means: P_* */
  int bad;                         /* the error status once poisoned, else 0 */
  int bound_ref;                   /* we hold a bufferevent reference (until bound) */
  int busy;                        /* we are editing the input buffer ourselves */
  int fail_tries;
  uint64_t keep_until; /* poisoned: stream bytes before this stay for evhttp */

  /* scanner (stream offsets count the bytes evhttp sees, after our edits) */
  uint64_t pos;     /* next byte to scan */
  uint64_t removed; /* offset of the input buffer's first byte */
  uint64_t msg_start;
  uint64_t ext_start; /* chunk-size line: where the extension begins */
  uint64_t left;      /* body or chunk bytes still to skip */
  uint64_t body;      /* chunked: the data bytes the chunk-size lines so far announced
                       * (<= max_body_size when limited; see evx__line_end) */
  int st, line;
  int http_minor, ver_len, ver_bad;
  int cur_field, name_len, val_len, val_over;
  int ncl, nte, nhost, te_bad, cl_bad, trailer, method_nobody;
  uint64_t cl;
  int nhex;
  char name[24];
  char val[40];
  char ver[12];
  char method[8];
  int method_len;
};

enum { P_NONE, P_BIND, P_HEADER, P_BODY, P_FAIL };

/* ---- lookup ----------------------------------------------------------- */

static size_t evx__conn_hash(const void *p, size_t cap) {
  uintptr_t x = (uintptr_t)p;
  x ^= x >> 17;
  x *= (uintptr_t)0x9E3779B97F4A7C15ull;
  return (size_t)(x >> 7) & (cap - 1);
}

static int evx__conn_tab_insert(evx_http *h, evx__conn *c) {
  if (h->conn_tab_n + 1 > h->conn_tab_cap / 2) {
    size_t ncap = h->conn_tab_cap ? h->conn_tab_cap * 2 : 64;
    evx__conn **nt = evx_calloc(ncap, sizeof *nt);
    if (!nt) return EVX_ENOMEM;
    for (size_t i = 0; i < h->conn_tab_cap; i++) {
      evx__conn *e = h->conn_tab[i];
      while (e) {
        evx__conn *next = e->hnext;
        size_t b = evx__conn_hash(e->evcon, ncap);
        e->hnext = nt[b];
        nt[b] = e;
        e = next;
      }
    }
    evx_free(h->conn_tab);
    h->conn_tab = nt;
    h->conn_tab_cap = ncap;
  }
  size_t b = evx__conn_hash(c->evcon, h->conn_tab_cap);
  c->hnext = h->conn_tab[b];
  h->conn_tab[b] = c;
  h->conn_tab_n++;
  return EVX_OK;
}

static void evx__conn_tab_remove(evx_http *h, evx__conn *c) {
  if (!h->conn_tab_cap) return;
  evx__conn **pp = &h->conn_tab[evx__conn_hash(c->evcon, h->conn_tab_cap)];
  while (*pp && *pp != c) pp = &(*pp)->hnext;
  if (*pp) {
    *pp = c->hnext;
    h->conn_tab_n--;
  }
}

evx__conn *evx__conn_find(evx_http *h, struct evhttp_connection *evcon) {
  if (!evcon || !h->conn_tab_cap) return NULL;
  evx__conn *c = h->conn_tab[evx__conn_hash(evcon, h->conn_tab_cap)];
  while (c && c->evcon != evcon) c = c->hnext;
  return c;
}

/* ---- life cycle ------------------------------------------------------- */

static void evx__conn_in_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg);
static void evx__conn_on_timer(evutil_socket_t fd, short what, void *arg);

static void evx__conn_set_timer(evx__conn *c, int phase, const struct timeval *tv) {
  event_del(&c->tev);
  c->phase = phase;
  if (phase != P_NONE && tv) event_add(&c->tev, tv);
}

/* evhttp frees the connection: forward to a held request, forget it. */
static void evx__conn_on_close(struct evhttp_connection *evcon, void *arg) {
  evx__conn *c = arg;
  evx_http *h = c->http;
  if (c->held) evx__request_conn_closed(c->held, evcon);
  while (!evx__list_empty(&c->reqs)) {
    evx_request *r = EVX__CONTAINER_OF(c->reqs.next, evx_request, conn_link);
    evx__request_detach_conn(r);
  }
  event_del(&c->tev);
  evbuffer_remove_cb(bufferevent_get_input(c->bev), evx__conn_in_cb, c);
  evx__conn_tab_remove(h, c);
  evx__list_remove(&c->link);
  h->st.connections--;
  evx_free(c);
}

struct bufferevent *evx__conn_bevcb(struct event_base *base, void *arg) {
  evx_http *h = arg;
  struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
  if (!bev) return NULL; /* evhttp makes its own then; that connection is not tracked */
  evx__conn *c = evx_calloc(1, sizeof *c);
  if (!c) return bev;
  c->http = h;
  c->bev = bev;
  evx__list_init(&c->reqs);
  if (evtimer_assign(&c->tev, base, evx__conn_on_timer, c) != 0 ||
      !evbuffer_add_cb(bufferevent_get_input(bev), evx__conn_in_cb, c)) {
    evx_free(c);
    return bev;
  }
  /* Bind after evhttp built the connection around bev (later in this
   * iteration); the reference keeps bev's memory if evhttp frees it first. */
  bufferevent_incref(bev);
  c->bound_ref = 1;
  c->phase = P_BIND;
  event_active(&c->tev, EV_TIMEOUT, 1);
  evx__list_insert_tail(&h->pending_conns, &c->link);
  return bev;
}

static void evx__conn_unbound_free(evx__conn *c) {
  evx__list_remove(&c->link);
  event_del(&c->tev);
  bufferevent_decref(c->bev);
  evx_free(c);
}

/* Free trackers not bound yet (server free). Their bufferevents live on. */
void evx__conn_drop_pending(evx_http *h) {
  while (!evx__list_empty(&h->pending_conns)) {
    evx__conn *c = EVX__CONTAINER_OF(h->pending_conns.next, evx__conn, link);
    evbuffer_remove_cb(bufferevent_get_input(c->bev), evx__conn_in_cb, c);
    evx__conn_unbound_free(c);
  }
}

static int evx__conn_idle(evx__conn *c) {
  return evx__list_empty(&c->reqs) && c->evcon &&
         evbuffer_get_length(bufferevent_get_output(c->bev)) == 0;
}

/* Above max_connections: close the connection idle the longest (no request
 * of ours on it, nothing being written); the new one if all are busy. */
static void evx__conn_shed(evx_http *h, evx__conn *newc) {
  for (evx__list *l = h->conns.next; l != &h->conns; l = l->next) {
    evx__conn *c = EVX__CONTAINER_OF(l, evx__conn, link);
    if (c != newc && evx__conn_idle(c)) {
      h->st.shed++;
      evhttp_connection_free(c->evcon);
      return;
    }
  }
  h->st.shed++;
  evhttp_connection_free(newc->evcon);
}

static void evx__conn_bind(evx__conn *c) {
  evx_http *h = c->http;
  void *cbarg = NULL;
  bufferevent_getcb(c->bev, NULL, NULL, NULL, &cbarg);
  evx__list_remove(&c->link);
  c->phase = P_NONE;
  struct bufferevent *bev = c->bev;
  struct evhttp_connection *evcon = cbarg;
  if (!evcon || h->freed || evhttp_connection_get_bufferevent(evcon) != bev) {
    /* evhttp freed it already (bufferevent_free clears the callbacks) */
    evbuffer_remove_cb(bufferevent_get_input(bev), evx__conn_in_cb, c);
    c->bound_ref = 0;
    evx_free(c);
    bufferevent_decref(bev);
    return;
  }
  c->evcon = evcon;
  if (evx__conn_tab_insert(h, c) != EVX_OK) {
    evbuffer_remove_cb(bufferevent_get_input(bev), evx__conn_in_cb, c);
    c->bound_ref = 0;
    evx_free(c);
    bufferevent_decref(bev);
    return;
  }
  evhttp_connection_set_closecb(evcon, evx__conn_on_close, c);
  evx__list_insert_tail(&h->conns, &c->link);
  h->st.connections++;
  c->bound_ref = 0;
  bufferevent_decref(bev);
  /* a head already started before the bind: its deadline starts now */
  if (c->st != S_START && c->st != S_DEAD && !c->bad) {
    int body = c->st == S_BODY_CL || (c->st >= S_CHUNK_SIZE && c->st <= S_CHUNK_DATA_END && !c->trailer);
    evx__conn_set_timer(c, body ? P_BODY : P_HEADER, body ? h->body_tv : h->header_tv);
  }
  if (c->bad) {
    evx__conn_set_timer(c, P_FAIL, NULL);
    event_active(&c->tev, EV_TIMEOUT, 1);
  }
  if (h->opts.max_connections != EVX_HTTP_UNLIMITED && h->st.connections > h->opts.max_connections)
    evx__conn_shed(h, c);
}

/* A request dispatched on this connection (http-request.c keeps the list). */
void evx__conn_touch(evx__conn *c) {
  evx__list_remove(&c->link);
  evx__list_insert_tail(&c->http->conns, &c->link);
}

void evx__conn_set_held(evx__conn *c, evx_request *r) { c->held = r; }

evx__list *evx__conn_reqs(evx__conn *c) { return &c->reqs; }

/* ---- failing a connection ---------------------------------------------- */

static void evx__conn_try_fail(evx__conn *c) {
  evx_http *h = c->http;
  if (!c->evcon) return; /* the bind step re-arms us */
  struct evbuffer *in = bufferevent_get_input(c->bev);
  /* Earlier requests first: nothing of ours live, all written, evhttp has
   * consumed the good bytes before the bad message. At most ~10 s. */
  if ((!evx__list_empty(&c->reqs) || evbuffer_get_length(bufferevent_get_output(c->bev)) ||
       evbuffer_get_length(in)) &&
      c->fail_tries++ < 1000) {
    static const struct timeval retry = {0, 10000};
    evx__conn_set_timer(c, P_FAIL, &retry);
    return;
  }
  char resp[256];
  const char *reason = evx__http_reason(c->bad);
  evutil_socket_t fd = bufferevent_getfd(c->bev);
  int n = snprintf(resp, sizeof resp,
                   "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                   "Content-Length: %zu\r\nConnection: close\r\n\r\n%s\n",
                   c->bad, reason, strlen(reason) + 1, reason);
  /* an empty socket buffer takes the whole reply; count the body bytes that left */
  size_t body_bytes = evx__raw_body_sent(evx__conn_send_raw(fd, resp, (size_t)n), (size_t)n,
                                         strlen(reason) + 1);
  h->st.status[4 + (c->bad >= 500)]++;
  /* logged and counted like every other reply evexec sends (the path is not
   * kept by the scanner: "-") */
  char *addr = NULL;
  ev_uint16_t port = 0;
  evhttp_connection_get_peer(c->evcon, &addr, &port);
  evx__http_log_conn(h, c->method_len ? c->method : "-", c->bad, body_bytes, addr);
  evhttp_connection_free(c->evcon); /* calls evx__conn_on_close: c is gone */
}

ssize_t evx__conn_send_raw(evutil_socket_t fd, const char *resp, size_t n) {
  if (fd < 0) return -1;
  /* an empty socket buffer always takes a couple of hundred bytes */
  ssize_t w = send(fd, resp, n, MSG_NOSIGNAL | MSG_DONTWAIT);
  /* Read what the client already sent, so closing does not reset the
   * connection and destroy the reply in flight. */
  char sink[4096];
  for (int i = 0; i < 16 && recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0; i++) {
  }
  shutdown(fd, SHUT_WR);
  return w;
}

void evx__conn_close_idle(evx_http *h) {
  evx__list *l = h->conns.next;
  while (l != &h->conns) {
    evx__conn *c = EVX__CONTAINER_OF(l, evx__conn, link);
    l = l->next; /* freeing c unlinks only c */
    if (evx__conn_idle(c) && c->st == S_START && !c->bad &&
        evbuffer_get_length(bufferevent_get_input(c->bev)) == 0)
      evhttp_connection_free(c->evcon);
  }
}

void evx__conn_close_all(evx_http *h) {
  while (!evx__list_empty(&h->conns)) {
    evx__conn *c = EVX__CONTAINER_OF(h->conns.next, evx__conn, link);
    evhttp_connection_free(c->evcon); /* zombifies a held request on it first */
  }
}

/* Poison: the message that started at msg_start is bad. */
static void evx__conn_poison(evx__conn *c, int status) {
  evx_http *h = c->http;
  c->bad = status;
  h->last_bad_status = status;
  c->st = S_DEAD;
  c->keep_until = c->msg_start;
  if (status == 408) {
    if (c->phase == P_BODY) h->st.body_timeouts++;
    else h->st.header_timeouts++;
  } else {
    h->st.bad_requests++;
  }
  if (c->phase == P_BIND) return; /* the bind step sees c->bad and fails it */
  event_del(&c->tev);
  c->phase = P_FAIL;
  event_active(&c->tev, EV_TIMEOUT, 1);
}

static void evx__conn_on_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  evx__conn *c = arg;
  switch (c->phase) {
  case P_BIND: evx__conn_bind(c); return;
  case P_HEADER:
  case P_BODY: {
    evx__conn_poison(c, 408);
    struct evbuffer *in = bufferevent_get_input(c->bev);
    /* drop the unfinished message: evhttp must not see it completed */
    uint64_t keep = c->keep_until > c->removed ? c->keep_until - c->removed : 0;
    if (keep < evbuffer_get_length(in)) {
      c->busy = 1;
      if (keep == 0) {
        evbuffer_drain(in, evbuffer_get_length(in));
      } else {
        struct evbuffer *tmp = c->http->edit_buf;
        evbuffer_remove_buffer(in, tmp, (size_t)keep);
        evbuffer_drain(in, evbuffer_get_length(in));
        evbuffer_add_buffer(in, tmp);
      }
      c->busy = 0;
    }
    return;
  }
  case P_FAIL: evx__conn_try_fail(c); return;
  default: return;
  }
}

/* ---- the framing scanner ----------------------------------------------- */

static int evx__tchar(unsigned char ch) {
  if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')) return 1;
  return ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static int evx__hex(unsigned char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

static void evx__msg_begin(evx__conn *c) {
  c->ncl = c->nte = c->nhost = c->te_bad = c->cl_bad = c->trailer = 0;
  c->ver_len = c->ver_bad = c->method_len = 0;
  c->cl = 0;
  if (c->evcon) evx__conn_set_timer(c, P_HEADER, c->http->header_tv);
}

static void evx__msg_end(evx__conn *c) {
  c->st = S_START;
  if (c->evcon) evx__conn_set_timer(c, P_NONE, NULL);
}

/* A header field's name ended (at ':'): which framing field is it? */
static void evx__field_begin(evx__conn *c) {
  c->val_len = c->val_over = 0;
  c->cur_field = F_NONE;
  if (c->name_len >= (int)sizeof c->name) return;
  c->name[c->name_len] = '\0';
  if (evutil_ascii_strcasecmp(c->name, "content-length") == 0) c->cur_field = F_CL;
  else if (evutil_ascii_strcasecmp(c->name, "transfer-encoding") == 0) c->cur_field = F_TE;
  else if (evutil_ascii_strcasecmp(c->name, "host") == 0) c->cur_field = F_HOST;
}

/* A header field's value ended: 0 or an error status. */
static int evx__field_end(evx__conn *c) {
  while (c->val_len && (c->val[c->val_len - 1] == ' ' || c->val[c->val_len - 1] == '\t')) c->val_len--;
  c->val[c->val_len] = '\0';
  if (c->trailer && c->cur_field != F_NONE) return 400; /* framing fields in trailers */
  switch (c->cur_field) {
  case F_CL: {
    if (c->val_over || c->val_len == 0 || c->val_len > 18) return 400;
    uint64_t v = 0;
    for (int i = 0; i < c->val_len; i++) {
      if (c->val[i] < '0' || c->val[i] > '9') return 400;
      v = v * 10 + (uint64_t)(c->val[i] - '0');
    }
    if (c->ncl++ && v != c->cl) return 400; /* two different lengths */
    c->cl = v;
    return 0;
  }
  case F_TE:
    c->nte++;
    if (c->val_over || evutil_ascii_strcasecmp(c->val, "chunked") != 0) c->te_bad = 1;
    return 0;
  case F_HOST: c->nhost++; return 0;
  default: return 0;
  }
}

/* The empty line ending the head: 0 (and the body state set) or an error. */
static int evx__head_end(evx__conn *c) {
  if (c->ver_bad) return c->ver_bad;
  if (c->nhost > 1 || (c->http_minor >= 1 && c->nhost == 0)) return 400;
  if (c->nte) {
    if (c->ncl || c->nte > 1 || c->http_minor == 0) return 400;
    if (c->te_bad) return 501;
    if (c->method_nobody) return 400;
    c->st = S_CHUNK_SIZE;
    c->left = 0;
    c->body = 0;
    c->nhex = 0;
    c->line = L_CHUNK;
  } else if (c->cl) {
    if (c->method_nobody) return 400; /* evhttp would read the body as the next request */
    /* Too large: answered here, before the body is read (evhttp would read
     * it and answer an unlogged HTML 413 itself). */
    size_t max = c->http->opts.max_body_size;
    if (max != EVX_HTTP_UNLIMITED && c->cl > max) return 413;
    c->st = S_BODY_CL;
    c->left = c->cl;
  } else {
    evx__msg_end(c);
    return 0;
  }
  if (c->evcon) evx__conn_set_timer(c, P_BODY, c->http->body_tv);
  return 0;
}

/* The end of a line (its CRLF or LF consumed): 0 or an error status. */
static int evx__line_end(evx__conn *c) {
  switch (c->line) {
  case L_EMPTY: c->st = S_START; return 0;
  case L_RL:
    /* exactly HTTP/D.D; a well-formed major other than 1 is 505 */
    if (c->ver_len != 8 || memcmp(c->ver, "HTTP/", 5) != 0 || c->ver[6] != '.' ||
        c->ver[5] < '0' || c->ver[5] > '9' || c->ver[7] < '0' || c->ver[7] > '9')
      return 400;
    if (c->ver[5] != '1') return 505;
    c->http_minor = c->ver[7] - '0';
    c->st = S_HDR_START;
    c->line = L_HDR;
    return 0;
  case L_HDR:
    if (c->st == S_HDR_VALUE || c->st == S_CR) {
      int e = evx__field_end(c);
      if (e) return e;
    }
    c->st = S_HDR_START;
    return 0;
  case L_HEAD_END:
    if (c->trailer) {
      evx__msg_end(c);
      return 0;
    }
    return evx__head_end(c);
  case L_CHUNK:
    if (c->nhex == 0) return 400;
    if (c->left == 0) { /* last chunk: trailers */
      c->trailer = 1;
      c->st = S_HDR_START;
      c->line = L_HDR;
    } else {
      /* Too large: answered at the chunk-size line that takes the body over
       * the limit, before its data - evhttp checks the same sum at the same
       * line, but the scanner sees the line first and removes it, so
       * evhttp's own (unlogged, HTML) 413 never fires on a tracked
       * connection. No overflow: body <= max and left < 16^15. */
      size_t max = c->http->opts.max_body_size;
      if (max != EVX_HTTP_UNLIMITED) {
        if (c->left > (uint64_t)max - c->body) return 413;
        c->body += c->left;
      }
      c->st = S_CHUNK_DATA;
    }
    return 0;
  case L_DATA_END:
    c->st = S_CHUNK_SIZE;
    c->line = L_CHUNK;
    c->nhex = 0;
    c->left = 0;
    return 0;
  default: return 400;
  }
}

enum { A_NONE, A_STRIP, A_FAIL };

/* Scan bytes p[0..n) starting at stream offset c->pos. Returns the number
 * scanned; *act says why it stopped early (strip an extension or fail with
 * *status). */
static size_t evx__scan(evx__conn *c, const unsigned char *p, size_t n, int *act, int *status) {
  size_t i = 0;
  *act = A_NONE;
#define FAIL(s)                                                                                    \
  do {                                                                                             \
    *status = (s);                                                                                 \
    *act = A_FAIL;                                                                                 \
    c->pos += i;                                                                                   \
    return i;                                                                                      \
  } while (0)
  while (i < n) {
    unsigned char ch = p[i];
    switch (c->st) {
    case S_START:
      if (ch == '\n') break; /* empty lines before a request */
      if (ch == '\r') {
        c->line = L_EMPTY;
        c->st = S_CR;
        break;
      }
      c->msg_start = c->pos + i;
      evx__msg_begin(c);
      c->line = L_RL;
      c->st = S_METHOD;
      /* fall through */
    case S_METHOD:
      if (ch == ' ') {
        if (c->method_len == 0) FAIL(400);
        c->method[c->method_len < 7 ? c->method_len : 7] = '\0';
        c->method_nobody = strcmp(c->method, "HEAD") == 0 || strcmp(c->method, "TRACE") == 0;
        c->st = S_TARGET;
        c->val_len = 0;
        break;
      }
      if (!evx__tchar(ch)) FAIL(400);
      if (c->method_len < 7) c->method[c->method_len] = (char)ch;
      c->method_len++;
      break;
    case S_TARGET:
      if (ch == ' ') {
        if (c->val_len == 0) FAIL(400);
        c->st = S_VERSION;
        break;
      }
      if (ch <= 0x20 || ch == 0x7f) FAIL(400);
      c->val_len = 1;
      break;
    case S_VERSION:
      if (ch == '\r') {
        c->st = S_CR;
        break;
      }
      if (ch == '\n') {
        int e = evx__line_end(c);
        if (e) FAIL(e);
        break;
      }
      if (c->ver_len >= (int)sizeof c->ver) FAIL(400);
      c->ver[c->ver_len++] = (char)ch;
      break;
    case S_HDR_START:
      if (ch == '\r' || ch == '\n') {
        c->line = L_HEAD_END;
        if (ch == '\r') {
          c->st = S_CR;
          break;
        }
        int e = evx__line_end(c);
        if (e) FAIL(e);
        break;
      }
      if (ch == ' ' || ch == '\t') FAIL(400); /* obs-fold */
      if (ch == ':') FAIL(400);               /* empty field name */
      c->line = L_HDR;
      c->name_len = 0;
      c->st = S_HDR_NAME;
      /* fall through */
    case S_HDR_NAME:
      if (ch == ':') {
        evx__field_begin(c);
        c->st = S_HDR_VALUE;
        break;
      }
      if (!evx__tchar(ch)) FAIL(400); /* includes whitespace before the colon */
      if (c->name_len < (int)sizeof c->name) c->name[c->name_len] = (char)ch;
      c->name_len++;
      break;
    case S_HDR_VALUE:
      if (ch == '\r') {
        c->st = S_CR;
        break;
      }
      if (ch == '\n') {
        int e = evx__line_end(c);
        if (e) FAIL(e);
        break;
      }
      if ((ch < 0x20 && ch != '\t') || ch == 0x7f) FAIL(400); /* NUL and other controls */
      if (c->cur_field != F_NONE) {
        if (c->val_len == 0 && (ch == ' ' || ch == '\t')) break; /* leading OWS */
        if (c->val_len < (int)sizeof c->val - 1) c->val[c->val_len++] = (char)ch;
        else if (ch != ' ' && ch != '\t') c->val_over = 1; /* trailing OWS is trimmed anyway */
      }
      break;
    case S_CR: {
      if (ch != '\n') FAIL(400);
      int e = evx__line_end(c);
      if (e) FAIL(e);
      break;
    }
    case S_BODY_CL: {
      size_t take = n - i < c->left ? n - i : (size_t)c->left;
      c->left -= take;
      i += take;
      if (c->left == 0) evx__msg_end(c);
      continue;
    }
    case S_CHUNK_SIZE: {
      int v = evx__hex(ch);
      if (v >= 0) {
        if (++c->nhex > 15) FAIL(400);
        c->left = c->left * 16 + (uint64_t)v;
        break;
      }
      if (ch == ';' || ch == ' ' || ch == '\t') {
        if (c->nhex == 0) FAIL(400);
        c->ext_start = c->pos + i;
        c->st = S_CHUNK_EXT;
        if (ch != ';') c->val_len = -1; /* BWS: a ';' must follow */
        else c->val_len = 0;
        break;
      }
      if (ch == '\r') {
        c->st = S_CR;
        break;
      }
      if (ch == '\n') {
        int e = evx__line_end(c);
        if (e) FAIL(e);
        break;
      }
      FAIL(400);
    }
    case S_CHUNK_EXT:
      if (ch != '\r' && ch != '\n' && c->pos + i - c->ext_start >= 4097) FAIL(400);
      if (ch == '\r' || ch == '\n') {
        if (c->val_len < 0) FAIL(400); /* whitespace without an extension */
        if (c->ext_start < c->pos + i) {
          *act = A_STRIP;
          c->pos += i;
          return i;
        }
        if (ch == '\r') {
          c->st = S_CR;
          break;
        }
        int e = evx__line_end(c);
        if (e) FAIL(e);
        break;
      }
      if (c->val_len < 0) {
        if (ch == ';') c->val_len = 0;
        else if (ch != ' ' && ch != '\t') FAIL(400);
        break;
      }
      if ((ch < 0x20 && ch != '\t') || ch == 0x7f) FAIL(400);
      break;
    case S_CHUNK_DATA: {
      size_t take = n - i < c->left ? n - i : (size_t)c->left;
      c->left -= take;
      i += take;
      if (c->left == 0) {
        c->st = S_CHUNK_DATA_END;
        c->line = L_DATA_END;
      }
      continue;
    }
    case S_CHUNK_DATA_END:
      if (ch == '\r') {
        c->st = S_CR;
        break;
      }
      if (ch == '\n') {
        int e = evx__line_end(c);
        if (e) FAIL(e);
        break;
      }
      FAIL(400);
    case S_DEAD:
    default: c->pos += n; return n;
    }
    i++;
  }
#undef FAIL
  c->pos += i;
  return i;
}

static void evx__conn_in_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg) {
  evx__conn *c = arg;
  if (c->busy) return;
  c->removed += info->n_deleted;
  if (!info->n_added) return;
  c->busy = 1;
  for (;;) {
    size_t len = evbuffer_get_length(buf);
    if (c->st == S_DEAD) {
      /* drop everything from the bad message on */
      uint64_t keep = c->keep_until > c->removed ? c->keep_until - c->removed : 0;
      if (keep < len) {
        if (keep == 0) {
          evbuffer_drain(buf, len);
        } else {
          struct evbuffer *tmp = c->http->edit_buf;
          evbuffer_remove_buffer(buf, tmp, (size_t)keep);
          evbuffer_drain(buf, evbuffer_get_length(buf));
          evbuffer_add_buffer(buf, tmp);
        }
      }
      c->pos = c->removed + evbuffer_get_length(buf);
      break;
    }
    uint64_t off = c->pos - c->removed;
    if (off >= len) break;
    struct evbuffer_ptr ptr;
    if (evbuffer_ptr_set(buf, &ptr, (size_t)off, EVBUFFER_PTR_SET) != 0) break;
    struct evbuffer_iovec vec[4];
    int nv = evbuffer_peek(buf, (ev_ssize_t)(len - off), &ptr, vec, 4);
    if (nv > 4) nv = 4;
    int act = A_NONE, status = 0;
    for (int k = 0; k < nv && act == A_NONE; k++) evx__scan(c, vec[k].iov_base, vec[k].iov_len, &act, &status);
    if (act == A_FAIL) {
      evx__conn_poison(c, status);
      continue; /* the S_DEAD branch removes the bad bytes */
    }
    if (act == A_STRIP) {
      /* remove the chunk extension [ext_start, pos) before evhttp reads the line */
      size_t a = (size_t)(c->ext_start - c->removed), b = (size_t)(c->pos - c->removed);
      struct evbuffer *tmp = c->http->edit_buf;
      evbuffer_remove_buffer(buf, tmp, a);
      evbuffer_drain(buf, b - a);
      evbuffer_prepend_buffer(buf, tmp);
      c->pos = c->ext_start;
      continue;
    }
  }
  c->busy = 0;
}

/* ---- running out of descriptors ------------------------------------------ */

/* accept() failed with EMFILE/ENFILE (or no buffers): libevent would call
 * again at once - the socket stays readable - and warn each time (millions
 * of lines a second). Instead: pause every listener for
 * EVX__HTTP_ACCEPT_BACKOFF_MS, spend the reserve descriptor to accept and
 * close what waits in the backlog (those clients get a clean close, not a
 * hang), log once per second with a count. Listening resumes by itself. */
#define EVX__HTTP_ACCEPT_BACKOFF_MS 100

static void evx__accept_resume(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  evx_http *h = arg;
  h->accept_paused = 0;
  if (h->freed) return;
  for (size_t i = 0; i < h->nbound; i++)
    evconnlistener_enable(evhttp_bound_socket_get_listener(h->bound[i]));
}

/* The listener's callback argument is evhttp's struct, not ours: servers
 * with listeners are found through this registry (any thread may own a
 * server, hence the lock; only this rare path reads it). */
static pthread_mutex_t evx__reg_lock = PTHREAD_MUTEX_INITIALIZER;
static evx_http *evx__reg_head;

static evx_http *evx__reg_find(void *evh) {
  pthread_mutex_lock(&evx__reg_lock);
  evx_http *h = evx__reg_head;
  while (h && (void *)h->evh != evh) h = h->reg_next;
  pthread_mutex_unlock(&evx__reg_lock);
  return h;
}

static void evx__accept_error(struct evconnlistener *lev, void *arg) {
  int err = EVUTIL_SOCKET_ERROR();
  evx_http *h = evx__reg_find(arg);
  if (!h) return;
  h->st.accept_errors++;
  h->accept_errs_unlogged++;
  uint64_t now = evx_now_ns();
  if (h->accept_log_ns == 0 || now - h->accept_log_ns >= 1000000000ull) {
    fprintf(stderr,
            "evexec: accept failed: %s (%llu time(s) since the last message); pausing "
            "accepts for %d ms, refusing waiting clients\n",
            strerror(err), (unsigned long long)h->accept_errs_unlogged,
            EVX__HTTP_ACCEPT_BACKOFF_MS);
    h->accept_log_ns = now;
    h->accept_errs_unlogged = 0;
  }
  if (err == EMFILE || err == ENFILE) {
    evutil_socket_t lfd = evconnlistener_get_fd(lev);
    if (h->reserve_fd >= 0) {
      close(h->reserve_fd);
      h->reserve_fd = -1;
      for (int i = 0; i < 64; i++) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) break;
        h->st.accept_refused++;
        close(fd);
      }
      h->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
  }
  if (h->accept_paused) return;
  h->accept_paused = 1;
  for (size_t i = 0; i < h->nbound; i++)
    evconnlistener_disable(evhttp_bound_socket_get_listener(h->bound[i]));
  static const struct timeval backoff = {0, EVX__HTTP_ACCEPT_BACKOFF_MS * 1000};
  evtimer_add(&h->accept_ev, &backoff);
}

void evx__conn_listening(evx_http *h, struct evhttp_bound_socket *b) {
  if (!h->accept_ev_set) {
    evtimer_assign(&h->accept_ev, h->base, evx__accept_resume, h);
    h->accept_ev_set = 1;
  }
  if (h->reserve_fd < 0) h->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (!h->registered) {
    pthread_mutex_lock(&evx__reg_lock);
    h->reg_next = evx__reg_head;
    evx__reg_head = h;
    pthread_mutex_unlock(&evx__reg_lock);
    h->registered = 1;
  }
  evconnlistener_set_error_cb(evhttp_bound_socket_get_listener(b), evx__accept_error);
}

void evx__conn_stop_listening(evx_http *h) {
  if (h->registered) {
    pthread_mutex_lock(&evx__reg_lock);
    evx_http **pp = &evx__reg_head;
    while (*pp && *pp != h) pp = &(*pp)->reg_next;
    if (*pp) *pp = h->reg_next;
    pthread_mutex_unlock(&evx__reg_lock);
    h->registered = 0;
  }
  if (h->accept_ev_set) event_del(&h->accept_ev);
  h->accept_paused = 0;
  if (h->reserve_fd >= 0) close(h->reserve_fd);
  h->reserve_fd = -1;
}
