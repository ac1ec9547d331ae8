/*
 * evx_request: one request's life cycle - dispatch, hold, zombie, finish,
 * chunked replies - on top of evhttp.
 *
 * DESIGN
 * States. A request is *dispatching* while its handler runs, then either
 * finished (released at once) or *held*: the handler kept it. A held request
 * can become a *zombie* (state EVX_EGONE / EVX_ETIMEDOUT / EVX_ECLOSED) when
 * the client leaves, the request times out or the server is freed. Every
 * request ends with exactly one finish/end call from the handler, which
 * schedules its release; release frees the memory after the finishing
 * callback returned (http.c).
 *
 * Noticing a client that leaves. evhttp disables reading on a connection
 * while a request is unanswered, so it never sees the EOF. While held, we
 * watch the socket ourselves (watch_ev, EV_READ) - from
 * EVX__HTTP_WATCH_DELAY_MS after the hold on, so that the many requests
 * answered within a few milliseconds never arm and disarm it. When it is readable we read
 * into the connection's own bufferevent input buffer - exactly where evhttp
 * would have put the bytes, so pipelined requests are kept and parsed by
 * evhttp after the reply (it checks that buffer when it starts reading).
 * Reading 0 bytes (EOF) or an error (reset) means the client left. More than
 * EVX__HTTP_PIPELINE_CAP buffered bytes and we stop watching (flow control
 * then holds the client back; a later leave is only seen at write time).
 *
 * Ownership of evhttp's request (the part that must never go wrong):
 *  - While answerable, evhttp owns `ev` and its connection. We set the
 *    connection's close callback while held, so that if evhttp frees the
 *    connection itself (write error or timeout while streaming, evhttp_free)
 *    we hear about it before it frees the requests on it.
 *  - Becoming a zombie, we take `ev` over: if it is still on its connection
 *    we evhttp_request_own() it, so evhttp_connection_free skips it; if
 *    evhttp already detached it (connection pointer NULL after a network
 *    error) nobody else will free it. Either way ev_owned = 1 and release
 *    calls evhttp_request_free, which never looks at the dead connection.
 *  - A zombie's connection is closed by us (evhttp_connection_free) with the
 *    close callback cleared first, or is being closed by evhttp (the close
 *    callback path). After that we never call evhttp on the connection.
 *  - After a normal finish evhttp owns `ev` again and frees it when the reply
 *    is written (or the write fails); we never touch it after the finishing
 *    callback returned. evhttp writes asynchronously, so `ev` is still valid
 *    until then, which keeps the accessors working after finish.
 * The on_close callback never runs inside evhttp's call stack: it is made
 * active as a libevent event and runs in a later callback, skipped if the
 * handler finished first.
 *
 * Timers. timer_ev first ends the watch delay (arming watch_ev), then, re-added
 * for the rest of request_timeout_ms, times the request out. A held request
 * that is not finished after request_timeout_ms gets a plain "504" written
 * straight to the socket (its output buffer is empty while held and not
 * streaming), then becomes a zombie with its connection closed - so evhttp's
 * request stays intact for the handler's late finish.
 */
#include "http-internal.h"

#include "coro-internal.h"
#include "http-util.h"
#include "http-test.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/keyvalq_struct.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static const char *evx__method_name(enum evhttp_cmd_type t) {
  switch (t) {
  case EVHTTP_REQ_GET: return "GET";
  case EVHTTP_REQ_POST: return "POST";
  case EVHTTP_REQ_HEAD: return "HEAD";
  case EVHTTP_REQ_PUT: return "PUT";
  case EVHTTP_REQ_DELETE: return "DELETE";
  case EVHTTP_REQ_OPTIONS: return "OPTIONS";
  case EVHTTP_REQ_TRACE: return "TRACE";
  case EVHTTP_REQ_CONNECT: return "CONNECT";
  case EVHTTP_REQ_PATCH: return "PATCH";
  default: return "UNKNOWN";
  }
}

evx_request *evx__request_new(evx_http *h, struct evhttp_request *ev, uint64_t t0) {
  evx_request *r = evx_calloc(1, sizeof *r);
  if (!r) return NULL;
  r->http = h;
  r->magic = EVX__REQ_LIVE;
  r->ev = ev;
  r->evcon = evhttp_request_get_connection(ev);
  r->t0_ns = t0;
  r->conn = evx__conn_find(h, r->evcon);
  if (r->conn) {
    evx__list_insert_tail(evx__conn_reqs(r->conn), &r->conn_link);
    evx__conn_touch(r->conn);
  }
  r->method = evx__method_name(evhttp_request_get_command(ev));
  if (r->evcon) {
    char *addr = NULL;
    ev_uint16_t port = 0;
    evhttp_connection_get_peer(r->evcon, &addr, &port);
    if (addr) snprintf(r->peer, sizeof r->peer, "%s", addr);
  }
  const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(ev);
  const char *raw = u ? evhttp_uri_get_path(u) : NULL;
  if (raw && !raw[0]) raw = "/"; /* "GET ?x HTTP/1.1" or an absolute URI without a path */
  if (raw && raw[0] == '/') {
    if (!strchr(raw, '%')) {
      r->path = raw;
    } else {
      size_t n = strlen(raw);
      r->path_buf = evx_malloc(n + 1);
      if (!r->path_buf) {
        evx__request_detach_conn(r);
        evx_free(r);
        return NULL;
      }
      if (evx__urldecode(r->path_buf, raw, n, 0) != (size_t)-1) r->path = r->path_buf;
    }
  }
  /* r->path stays NULL for a path that is not absolute or decodes to a NUL:
   * dispatch answers 400. */
  return r;
}

/* ---- holding ---------------------------------------------------------- */

static void evx__on_conn_close(struct evhttp_connection *evcon, void *arg);
static void evx__on_watch(evutil_socket_t fd, short what, void *arg);
static void evx__on_timer(evutil_socket_t fd, short what, void *arg);

/* Hardened mode: a request used after its release (it sits in the
 * server's quarantine, so reading it is safe) - say which call and stop. */
void evx__request_misuse(evx_request *r, const char *fn) {
  fprintf(stderr,
          "evexec: %s() called on a request that was already finished and released "
          "(%s) - a second finish from a later callback, or a pointer kept after "
          "finish; aborting (hardened request mode)\n",
          fn, r->desc);
  abort();
}

void evx__request_detach_conn(evx_request *r) {
  if (!r->conn) return;
  evx__list_remove(&r->conn_link);
  r->conn = NULL;
}

static void evx__unhold(evx_request *r) {
  if (!r->held) return;
  r->held = 0;
  if (r->watching) event_del(&r->watch_ev);
  if (r->timing) event_del(&r->timer_ev);
  r->watching = r->timing = 0;
  if (r->conn) evx__conn_set_held(r->conn, NULL);
  else if (r->evcon) evhttp_connection_set_closecb(r->evcon, NULL, NULL);
  evx__list_remove(&r->held_link);
  r->http->st.held--;
  if (r->route) r->route->held--;
}

static void evx__arm_watch(evx_request *r) {
  r->armed = 1;
  struct bufferevent *bev = evhttp_connection_get_bufferevent(r->evcon);
  evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
  if (fd >= 0 &&
      event_assign(&r->watch_ev, r->http->base, fd, EV_READ | EV_PERSIST, evx__on_watch, r) == 0 &&
      event_add(&r->watch_ev, NULL) == 0)
    r->watching = 1;
}

static void evx__hold(evx_request *r) {
  evx_http *h = r->http;
  r->held = 1;
  evx__list_insert_tail(&h->held, &r->held_link);
  h->st.held++;
  if (r->route) r->route->held++;
  /* the tracker owns the close callback and forwards it (http-conn.c) */
  if (r->conn) evx__conn_set_held(r->conn, r);
  else evhttp_connection_set_closecb(r->evcon, evx__on_conn_close, r);
  /* first the watch delay (see EVX__HTTP_WATCH_DELAY_MS), then the timeout */
  if (evtimer_assign(&r->timer_ev, h->base, evx__on_timer, r) == 0 &&
      evtimer_add(&r->timer_ev, h->watch_tv) == 0)
    r->timing = 1;
  else
    evx__arm_watch(r); /* no delay then; and no timeout (cannot happen with a valid base) */
}

void evx__request_after_handler(evx_request *r) {
  if (r->finished) {
    if (!r->coro_alive) evx__http_release(r); /* else evx__request_coro_done does */
    return;
  }
  if (r->state == 0) evx__hold(r);
}

static void evx__on_notify(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  evx_request *r = arg;
  if (r->finished || !r->on_close) return;
  evx_request_cb fn = r->on_close;
  r->on_close = NULL; /* once */
  fn(r, r->on_close_arg);
}

void evx__request_zombify(evx_request *r, int state, int close_conn) {
  evx_http *h = r->http;
  if (r->state || r->finished) return;
  struct evhttp_connection *evcon = r->evcon;
  evx__unhold(r); /* clears the close callback: our own connection_free below stays quiet */
  evx__request_detach_conn(r);
  evx__request_drain_stop(r, state); /* before the connection (and its buffer) goes */
  r->state = state;
  r->evcon = NULL;
  int attached = evcon && evhttp_request_get_connection(r->ev) == evcon;
  if (attached) evhttp_request_own(r->ev);
  r->ev_owned = 1;
  if (close_conn && attached) evhttp_connection_free(evcon);
  h->st.zombies++;
  if (state == EVX_ETIMEDOUT) {
    h->st.timed_out++;
    evx__http_log(h, r, 504);
  } else {
    if (state == EVX_EGONE) h->st.gone++;
    /* answered 503 by evx_http_shutdown at the end of its grace */
    evx__http_log(h, r, state == EVX_ECLOSED && h->shut && !h->freed && !r->streaming ? 503 : 499);
  }
  if (r->coro) evx__coro_interrupt(r->coro, state); /* its awaits answer `state` from now on */
  if (r->on_close && event_assign(&r->notify_ev, h->base, -1, 0, evx__on_notify, r) == 0) {
    r->notify_set = 1;
    event_active(&r->notify_ev, EV_TIMEOUT, 1);
  }
}

/* evhttp is freeing the connection of a held request (inside
 * evhttp_connection_free, before it frees the requests on it). */
static void evx__on_conn_close(struct evhttp_connection *evcon, void *arg) {
  evx_request *r = arg;
  if (r->evcon != evcon) return;
  evx__request_zombify(r, r->http->freed ? EVX_ECLOSED : EVX_EGONE, 0);
}

void evx__request_close_after(evx_request *r) {
  struct evkeyvalq *oh = evhttp_request_get_output_headers(r->ev);
  if (!evhttp_find_header(oh, "Connection")) evhttp_add_header(oh, "Connection", "close");
}

void evx__request_conn_closed(evx_request *r, struct evhttp_connection *evcon) {
  evx__on_conn_close(evcon, r);
}

static void evx__on_watch(evutil_socket_t fd, short what, void *arg) {
  (void)what;
  evx_request *r = arg;
  struct bufferevent *bev = evhttp_connection_get_bufferevent(r->evcon);
  struct evbuffer *in = bufferevent_get_input(bev);
  if (evbuffer_get_length(in) >= EVX__HTTP_PIPELINE_CAP) {
    event_del(&r->watch_ev);
    r->watching = 0;
    return;
  }
  /* The socket bufferevent keeps its input frozen at the end except while it
   * reads; do as it does. */
  evbuffer_unfreeze(in, 0);
  int n = evbuffer_read(in, fd, 4096);
  int err = errno;
  evbuffer_freeze(in, 0);
  if (n > 0) return; /* pipelined bytes, kept for evhttp */
  if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)) return;
  evx__request_zombify(r, EVX_EGONE, 1);
}

static void evx__on_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  evx_request *r = arg;
  r->timing = 0;
  if (!r->armed) { /* the watch delay is over */
    evx__arm_watch(r);
    if (r->rest_tv && !r->streaming && evtimer_add(&r->timer_ev, r->rest_tv) == 0)
      r->timing = 1;
    return;
  }
  static const char resp[] = "HTTP/1.1 504 Gateway Timeout\r\n"
                             "Content-Type: text/plain; charset=utf-8\r\n"
                             "Content-Length: 16\r\n"
                             "Connection: close\r\n\r\n"
                             "request timeout\n";
  struct bufferevent *bev = evhttp_connection_get_bufferevent(r->evcon);
  evutil_socket_t sfd = bufferevent_getfd(bev);
  if (sfd >= 0 && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
    ssize_t w = send(sfd, resp, sizeof resp - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    /* the access log and bytes_out count the body bytes that left, as for
     * every other reply (a full socket buffer: the client is not reading) */
    r->bytes = evx__raw_body_sent(w, sizeof resp - 1, sizeof "request timeout\n" - 1);
    r->http->st.bytes_out += r->bytes;
  }
  evx__request_zombify(r, EVX_ETIMEDOUT, 1);
}

/* ---- accessors -------------------------------------------------------- */

const char *evx_request_method(evx_request *r) {
  EVX__REQ_CHECK(r);
  return r ? r->method : NULL;
}
const char *evx_request_path(evx_request *r) {
  EVX__REQ_CHECK(r);
  return r ? r->path : NULL;
}
const char *evx_request_uri(evx_request *r) {
  EVX__REQ_CHECK(r);
  return r ? evhttp_request_get_uri(r->ev) : NULL;
}
const char *evx_request_peer(evx_request *r) { return r ? (r->peer[0] ? r->peer : "-") : NULL; }
evx_http *evx_request_server(evx_request *r) { return r ? r->http : NULL; }

const char *evx_request_header(evx_request *r, const char *name) {
  EVX__REQ_CHECK(r);
  if (!r || !name) return NULL;
  return evhttp_find_header(evhttp_request_get_input_headers(r->ev), name);
}

static int evx__parse_query(evx_request *r) {
  r->query_parsed = 1;
  const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(r->ev);
  const char *q = u ? evhttp_uri_get_query(u) : NULL;
  if (!q || !q[0]) return EVX_OK;
  size_t n = strlen(q), count = evx__query_count(q);
  r->query_buf = evx_malloc(n + 1);
  r->params = evx_calloc(count * 2, sizeof *r->params);
  if (!r->query_buf || !r->params) {
    evx_free(r->query_buf);
    evx_free((void *)r->params);
    r->query_buf = NULL;
    r->params = NULL;
    return EVX_ENOMEM;
  }
  memcpy(r->query_buf, q, n + 1);
  r->nparams = evx__query_split(r->query_buf, r->params);
  return EVX_OK;
}

const char *evx_request_query(evx_request *r, const char *name) {
  EVX__REQ_CHECK(r);
  if (!r || !name) return NULL;
  if (!r->query_parsed && evx__parse_query(r) != EVX_OK) return NULL;
  for (size_t i = 0; i < r->nparams; i++)
    if (strcmp(r->params[2 * i], name) == 0) return r->params[2 * i + 1];
  return NULL;
}

const char *evx_request_body(evx_request *r, size_t *len) {
  EVX__REQ_CHECK(r);
  if (len) *len = 0;
  if (!r) return NULL;
  if (!r->body_ready) {
    struct evbuffer *in = evhttp_request_get_input_buffer(r->ev);
    size_t n = evbuffer_get_length(in);
    if (evbuffer_add(in, "", 1) != 0) return NULL;
    r->body = (const char *)evbuffer_pullup(in, -1);
    if (!r->body) return NULL;
    r->body_len = n;
    r->body_ready = 1;
  }
  if (len) *len = r->body_len;
  return r->body;
}

int evx_request_state(evx_request *r) {
  EVX__REQ_CHECK(r);
  return r ? r->state : EVX_EINVAL;
}
int evx_request_is_gone(evx_request *r) {
  EVX__REQ_CHECK(r);
  return r && r->state != 0;
}

/* ---- answering -------------------------------------------------------- */

static int evx__thread_ok(evx_request *r) { return evx__loop_thread_ok(r->http->loop); }

static int evx__valid_header(const char *s) { return s && !strpbrk(s, "\r\n"); }

int evx_request_set_header(evx_request *r, const char *name, const char *value) {
  EVX__REQ_CHECK(r);
  if (!r || !evx__thread_ok(r) || r->finished || r->streaming || !evx__valid_header(name) ||
      !name[0] || strchr(name, ':') || !evx__valid_header(value))
    return EVX_EINVAL;
  if (r->state) return r->state;
  if (evhttp_add_header(evhttp_request_get_output_headers(r->ev), name, value) != 0)
    return EVX_EINVAL;
  if (evutil_ascii_strcasecmp(name, "Content-Type") == 0) r->hdr_set = 1;
  return EVX_OK;
}

int evx_request_on_close(evx_request *r, evx_request_cb fn, void *arg) {
  EVX__REQ_CHECK(r);
  if (!r || !fn || !evx__thread_ok(r) || r->finished) return EVX_EINVAL;
  if (r->state) return r->state;
  r->on_close = fn;
  r->on_close_arg = arg;
  return EVX_OK;
}

/* Mark finished and schedule the release (or leave it to dispatch). */
static void evx__finished(evx_request *r) {
  r->finished = 1;
  evx__request_drain_stop(r, EVX_ECANCELED);
  if (r->http->hardened) /* for the misuse message, while the path is still valid */
    snprintf(r->desc, sizeof r->desc, "%s %.80s", r->method, r->path ? r->path : "-");
  evx__request_detach_conn(r);
  if (r->notify_set) {
    event_del(&r->notify_ev);
    r->notify_set = 0;
  }
  if (!r->in_dispatch && !r->coro_alive) evx__http_schedule_release(r->http, r);
}

/* A zombie's finish: nothing to send. */
static int evx__finish_zombie(evx_request *r) {
  r->http->st.zombies--;
  evx__finished(r);
  return r->state;
}

static void evx__set_ctype(evx_request *r, const char *ctype, size_t len) {
  if (r->hdr_set) return;
  if (!ctype && len == 0) return;
  evhttp_add_header(evhttp_request_get_output_headers(r->ev), "Content-Type",
                    ctype && evx__valid_header(ctype) ? ctype : "text/plain; charset=utf-8");
}

/* Send a complete reply on a live request (held or dispatching). */
static int evx__send(evx_request *r, int status, const char *ctype, const void *body, size_t len) {
  evx_http *h = r->http;
  evx__unhold(r);
  if (h->shut) evx__request_close_after(r);
  struct evbuffer *out = evhttp_request_get_output_buffer(r->ev);
  int rc = EVX_OK;
  if (len && evbuffer_add(out, body, len) != 0) {
    evbuffer_drain(out, evbuffer_get_length(out));
    status = 500;
    len = 0;
    rc = EVX_ENOMEM;
  }
  len = evbuffer_get_length(out); /* with what evx_request_write_body buffered */
  evx__set_ctype(r, ctype, len);
  r->status = status;
  r->bytes = len;
  h->st.bytes_out += len;
  evhttp_send_reply(r->ev, status, evx__http_reason(status), NULL);
  evx__http_log(h, r, status);
  return rc;
}

static int evx__write(evx_request *r, const void *data, size_t len, int bounded);

int evx_request_finish(evx_request *r, int status, const char *ctype, const void *body, size_t len) {
  EVX__REQ_CHECK(r);
  if (!r || !evx__thread_ok(r) || r->finished) return EVX_EINVAL;
  if (r->state) return evx__finish_zombie(r);
  if (r->streaming) {
    int rc = EVX_OK;
    if (len) rc = body ? evx__write(r, body, len, 0) : EVX_EINVAL;
    int erc = evx_request_end(r);
    return rc != EVX_OK ? rc : erc;
  }
  int rc = EVX_OK;
  if (status < 200 || status > 599 || (!body && len)) {
    status = 500;
    body = "bad arguments to evx_request_finish\n";
    len = strlen(body);
    ctype = NULL;
    rc = EVX_EINVAL;
  }
  int src = evx__send(r, status, ctype, body, len);
  evx__finished(r);
  return rc != EVX_OK ? rc : src;
}

int evx_request_finish_str(evx_request *r, int status, const char *ctype, const char *body) {
  return evx_request_finish(r, status, ctype, body, body ? strlen(body) : 0);
}

int evx_request_finishf(evx_request *r, int status, const char *ctype, const char *fmt, ...) {
  EVX__REQ_CHECK(r);
  if (!r) return EVX_EINVAL;
  if (!fmt) return evx_request_finish(r, status, ctype, NULL, 1); /* bad arguments: 500 */
  char small[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(small, sizeof small, fmt, ap);
  va_end(ap);
  if (n < 0) return evx_request_finish(r, status, ctype, NULL, 1);
  if ((size_t)n < sizeof small) return evx_request_finish(r, status, ctype, small, (size_t)n);
  char *big = evx_malloc((size_t)n + 1);
  if (!big) {
    int rc = evx_request_finish(r, 500, NULL, NULL, 0);
    return rc == EVX_OK ? EVX_ENOMEM : rc;
  }
  va_start(ap, fmt);
  vsnprintf(big, (size_t)n + 1, fmt, ap);
  va_end(ap);
  int rc = evx_request_finish(r, status, ctype, big, (size_t)n);
  evx_free(big);
  return rc;
}

int evx_request_reply_busy(evx_request *r, unsigned retry_after_s) {
  EVX__REQ_CHECK(r);
  if (!r || !evx__thread_ok(r) || r->finished) return EVX_EINVAL;
  if (r->state == 0 && !r->streaming) {
    char ra[16];
    snprintf(ra, sizeof ra, "%u", retry_after_s);
    evhttp_add_header(evhttp_request_get_output_headers(r->ev), "Retry-After", ra);
  }
  static const char msg[] = "busy, retry later\n";
  return evx_request_finish(r, 503, NULL, msg, sizeof msg - 1);
}

void evx__request_reply_builtin(evx_request *r, int status, const char *extra_name,
                                const char *extra_value, const char *body) {
  if (extra_name && extra_value)
    evhttp_add_header(evhttp_request_get_output_headers(r->ev), extra_name, extra_value);
  evx__send(r, status, NULL, body, strlen(body));
  r->finished = 1;
  evx__http_release(r);
}

/* ---- chunked replies -------------------------------------------------- */

int evx_request_start_chunked(evx_request *r, int status, const char *ctype) {
  EVX__REQ_CHECK(r);
  if (!r || !evx__thread_ok(r) || r->finished || r->streaming || status < 200 || status > 599)
    return EVX_EINVAL;
  if (r->state) return r->state;
  evx__set_ctype(r, ctype, 1);
  /* Buffered body bytes become the first chunk (evhttp would send them raw). */
  struct evbuffer *out = evhttp_request_get_output_buffer(r->ev);
  size_t buffered = evbuffer_get_length(out);
  if (buffered) evbuffer_add_buffer(r->http->scratch, out);
  r->streaming = 1;
  r->status = status;
  if (r->timing && r->armed) { /* the request timeout ends here; a pending watch delay stays */
    event_del(&r->timer_ev);
    r->timing = 0;
  }
  if (r->http->shut) evx__request_close_after(r);
  evhttp_send_reply_start(r->ev, status, evx__http_reason(status));
  if (buffered) {
    evhttp_send_reply_chunk(r->ev, r->http->scratch);
    evbuffer_drain(r->http->scratch, evbuffer_get_length(r->http->scratch));
    r->bytes += buffered;
    r->http->st.bytes_out += buffered;
  }
  return EVX_OK;
}

/* ---- buffered replies (coroutine handlers, or any handler) ------------- */

int evx_request_set_status(evx_request *r, int status) {
  EVX__REQ_CHECK(r);
  if (!r || !evx__thread_ok(r) || r->finished || r->streaming || status < 200 || status > 599)
    return EVX_EINVAL;
  if (r->state) return r->state;
  r->status = status;
  return EVX_OK;
}

int evx_request_write_body(evx_request *r, const void *data, size_t len) {
  EVX__REQ_CHECK(r);
  if (!r || !evx__thread_ok(r) || r->finished || r->streaming || (!data && len)) return EVX_EINVAL;
  if (r->state) return r->state;
  if (len && evbuffer_add(evhttp_request_get_output_buffer(r->ev), data, len) != 0)
    return EVX_ENOMEM;
  return EVX_OK;
}

int evx_request_write_str(evx_request *r, const char *s) {
  return evx_request_write_body(r, s, s ? strlen(s) : 0);
}

void evx__request_coro_done(evx_request *r) {
  r->coro = NULL;
  r->coro_alive = 0;
  if (!r->finished) {
    if (r->state) (void)evx__finish_zombie(r);
    else if (r->streaming) (void)evx_request_end(r);
    else {
      (void)evx__send(r, r->status ? r->status : 200, NULL, NULL, 0);
      evx__finished(r);
    }
  } else if (!r->in_dispatch) {
    evx__http_schedule_release(r->http, r);
  }
}

/* ---- bounded output --------------------------------------------------- */

/* A stalled reader costs at most max_output_buffer plus one write: above the
 * mark evx_request_write answers EVX_EBUSY, and the drain notification (a
 * callback and/or a future) comes once the connection's output buffer is
 * down to half the mark. It watches the buffer with an evbuffer callback,
 * armed only while someone waits; the notification itself runs from an
 * event, never inside libevent's write path. */
typedef struct evx__drain evx__drain_t;
struct evx__drain {
  evx_request_cb cb;
  void *arg;
  evx_future *f;
  struct evbuffer *out; /* the connection's output buffer while watching */
  evx_request *req;
  struct event ev;
  int ev_set, fired;
};

static struct evbuffer *evx__out_buf(evx_request *r) {
  struct bufferevent *bev = r->evcon ? evhttp_connection_get_bufferevent(r->evcon) : NULL;
  return bev ? bufferevent_get_output(bev) : NULL;
}

static size_t evx__hwm(evx_request *r) { return r->http->opts.max_output_buffer; }

static void evx__drain_unwatch(evx__drain_t *d);

static void evx__drain_fire(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  evx_request *r = arg;
  evx__drain_t *d = r->drain;
  evx_request_cb cb = d->cb;
  void *cbarg = d->arg;
  evx_future *f = d->f;
  d->cb = NULL;
  d->f = NULL;
  if (f) {
    if (r->state) evx_future_fail(f, r->state);
    else evx_future_resolve(f, NULL, NULL);
    evx_future_release(f);
  }
  if (cb && !r->finished) cb(r, cbarg);
}

static void evx__drain_out_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg) {
  evx_request *r = arg;
  if (!info->n_deleted || evbuffer_get_length(buf) > evx__hwm(r) / 2) return;
  evx__drain_unwatch(r->drain);
  event_active(&r->drain->ev, EV_TIMEOUT, 1);
}

static void evx__drain_unwatch(evx__drain_t *d) {
  if (d->out) evbuffer_remove_cb(d->out, evx__drain_out_cb, d->req);
  d->out = NULL;
}

/* Arm the watch (or fire at once when already drained). */
static int evx__drain_arm(evx_request *r) {
  if (!r->drain) {
    r->drain = evx_calloc(1, sizeof *r->drain);
    if (!r->drain) return EVX_ENOMEM;
    r->drain->req = r;
  }
  evx__drain_t *d = r->drain;
  if (!d->ev_set) {
    if (event_assign(&d->ev, r->http->base, -1, 0, evx__drain_fire, r) != 0) return EVX_ENOMEM;
    d->ev_set = 1;
  }
  struct evbuffer *out = evx__out_buf(r);
  if (!out || evbuffer_get_length(out) <= evx__hwm(r) / 2) {
    event_active(&d->ev, EV_TIMEOUT, 1);
    return EVX_OK;
  }
  if (!d->out) {
    if (!evbuffer_add_cb(out, evx__drain_out_cb, r)) return EVX_ENOMEM;
    d->out = out;
  }
  return EVX_OK;
}

void evx__request_drain_stop(evx_request *r, int status) {
  evx__drain_t *d = r->drain;
  if (!d) return;
  evx__drain_unwatch(d);
  if (d->ev_set) event_del(&d->ev);
  if (d->f) {
    evx_future_fail(d->f, status);
    evx_future_release(d->f);
    d->f = NULL;
  }
  if (status != EVX_OK && d->cb && !r->finished && r->state) {
    /* a zombie: tell the waiter in a later callback (it then calls end) */
    if (d->ev_set) event_active(&d->ev, EV_TIMEOUT, 1);
    return;
  }
  d->cb = NULL;
}

int evx_request_on_drain(evx_request *r, evx_request_cb fn, void *arg) {
  EVX__REQ_CHECK(r);
  if (!r || !fn || !evx__thread_ok(r) || r->finished || !r->streaming) return EVX_EINVAL;
  if (r->state) return r->state;
  int rc = evx__drain_arm(r);
  if (rc != EVX_OK) return rc;
  r->drain->cb = fn;
  r->drain->arg = arg;
  return EVX_OK;
}

evx_future *evx_request_drained(evx_request *r) {
  EVX__REQ_CHECK(r);
  if (!r || !evx__thread_ok(r) || r->finished || !r->streaming) return NULL;
  evx_future *f = evx_future_new(r->http->loop);
  if (!f) return NULL;
  if (r->state) {
    evx_future_fail(f, r->state);
    return f;
  }
  if (evx__drain_arm(r) != EVX_OK) {
    evx_future_release(f);
    return NULL;
  }
  if (r->drain->f) { /* one waiter at a time: the earlier one is cancelled */
    evx_future_fail(r->drain->f, EVX_ECANCELED);
    evx_future_release(r->drain->f);
  }
  r->drain->f = evx_future_ref(f);
  return f;
}

static int evx__write(evx_request *r, const void *data, size_t len, int bounded);

int evx_request_write(evx_request *r, const void *data, size_t len) {
  EVX__REQ_CHECK(r);
  return evx__write(r, data, len, 1);
}

/* bounded 0: the last chunk of a finish, which must not be refused */
static int evx__write(evx_request *r, const void *data, size_t len, int bounded) {
  if (!r || !evx__thread_ok(r) || r->finished || !r->streaming || (!data && len)) return EVX_EINVAL;
  if (r->state) return r->state;
  if (len == 0) return EVX_OK;
  struct evbuffer *out = evx__out_buf(r);
  if (bounded && out && evx__hwm(r) != EVX_HTTP_UNLIMITED && evbuffer_get_length(out) > evx__hwm(r)) {
    r->http->st.write_busy++;
    return EVX_EBUSY; /* nothing written: wait for evx_request_on_drain / _drained */
  }
  struct evbuffer *buf = r->http->scratch;
  int rc = EVX_OK;
  if (evbuffer_add(buf, data, len) != 0) {
    rc = EVX_ENOMEM;
  } else {
    evhttp_send_reply_chunk(r->ev, buf);
    r->bytes += len;
    r->http->st.bytes_out += len;
  }
  evbuffer_drain(buf, evbuffer_get_length(buf)); /* evhttp leaves it full on a dead connection */
  return rc;
}

int evx_request_end(evx_request *r) {
  EVX__REQ_CHECK(r);
  if (!r || !evx__thread_ok(r) || r->finished) return EVX_EINVAL;
  if (r->state) return evx__finish_zombie(r);
  if (!r->streaming) {
    /* end without start: misuse, but the request must not leak */
    static const char msg[] = "evx_request_end without evx_request_start_chunked\n";
    evx__send(r, 500, NULL, msg, sizeof msg - 1);
    evx__finished(r);
    return EVX_EINVAL;
  }
  evx__unhold(r);
  evhttp_send_reply_end(r->ev);
  evx__http_log(r->http, r, r->status);
  evx__finished(r);
  return EVX_OK;
}

struct evhttp_connection *evx__request_connection(evx_request *r) {
  return r && r->state == 0 && !r->finished ? r->evcon : NULL;
}

size_t evx__request_out_pending(evx_request *r) {
  struct evbuffer *out = r ? evx__out_buf(r) : NULL;
  return out ? evbuffer_get_length(out) : 0;
}

int evx__request_watching(evx_request *r) { return r && r->watching; }
