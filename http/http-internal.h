/* PRIVATE to evexec: never installed, never included by users.
 * Shared between http/http.c (server, routing, dispatch) and
 * http/http-request.c (request life cycle: hold, zombie, finish, chunked). */
#ifndef EVX_HTTP_INTERNAL_H
#define EVX_HTTP_INTERNAL_H

#include <evexec/http.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/http.h>

#include "common-internal.h"
#include "http-test.h"
#include "loop-internal.h"

/* Methods counted apart in the metrics (GET POST HEAD PUT DELETE OPTIONS
 * PATCH, then everything else), and the buckets of the duration histogram
 * (the layout of evx_executor_stats' histograms). */
#define EVX__HTTP_NMETHODS 8
#define EVX__HTTP_HIST_BUCKETS 32

/* Most {name} segments in one route pattern. */
#define EVX__ROUTE_MAX_PARAMS 16

/* Released requests kept (not freed) per server in hardened mode. */
#define EVX__QUARANTINE 256

/* One accepted connection (http-conn.c). */
typedef struct evx__conn evx__conn;

/* A route (public handle: evx_route). Owned by its server, freed with it. */
typedef struct evx_route {
  evx__list link; /* in evx_http.routes, in the order added */
  evx_http *http;
  char *method;   /* NULL: any */
  char *path;     /* the pattern as given ("/users/{id}") */
  size_t plen;
  int flags;
  size_t nparams; /* {name} segments in path; 0 for a literal path */
  size_t literal; /* characters outside {name} segments (ranks pattern routes) */
  evx_handler_fn fn;
  void *arg;
  /* evx_http_route_coro: fn is the coroutine dispatcher, arg the route, and
   * these are the user's handler and argument. */
  evx_handler_fn coro_fn;
  void *coro_arg;
  /* Per-route options (evx_route_set_*). One block that later options join:
   * each field's zero value means "the server's setting". */
  struct {
    uint64_t timeout_ms; /* 0: server's request_timeout_ms */
    size_t max_held;     /* 0: only the server's max_held */
  } opt;
  /* Derived from opt.timeout_ms: the timer's second leg for this route
   * (see evx_http.rest_tv). Valid while the route exists. */
  const struct timeval *rest_tv;
  struct timeval rest_tv_plain;
  size_t held; /* its requests held now (counted while held, so never after the route is freed) */
} evx__route;

struct evx_http {
  evx_loop *loop;
  evx__loop_member member; /* until evx_http_free: the loop closes a server left open */
  /* For evx_loop_metrics_text (http-metrics.c): responses by method
   * (EVX__HTTP_NMETHODS, the last one "other") and status class (as
   * st.status), and the request durations in log2-microsecond buckets. */
  uint64_t resp[EVX__HTTP_NMETHODS][6];
  uint64_t dur_hist[EVX__HTTP_HIST_BUCKETS];
  uint64_t dur_sum_ns;
  struct event_base *base;
  struct evhttp *evh; /* NULL once freed (the struct may outlive it, see `freed`) */
  evx_http_opts opts;
  /* A held request's timer_ev runs twice: after watch_tv it arms the socket
   * watch, then after rest_tv (request_timeout_ms minus the watch delay) it
   * times the request out. Both are libevent common timeouts: O(1) add and
   * remove for durations every held request shares. rest_tv is NULL when
   * there is no request timeout. */
  const struct timeval *watch_tv, *rest_tv;
  struct timeval watch_tv_plain, rest_tv_plain;
  evx__list routes;
  evx__list held; /* evx_request.held_link: held requests with state 0 */
  struct evbuffer *scratch; /* for chunks; always empty between calls */
  struct evbuffer *edit_buf; /* for the framing scanner's edits; empty between calls */
  /* Connections (http-conn.c): bound ones by activity (least recent first),
   * ones created by evhttp_set_bevcb but not bound yet, and a pointer hash
   * from evhttp connection to tracker. */
  evx__list conns, pending_conns;
  evx__conn **conn_tab;
  size_t conn_tab_cap, conn_tab_n;
  const struct timeval *header_tv, *body_tv; /* NULL: no deadline */
  int last_bad_status; /* the scanner's last rejection (for fuzz_http's oracle) */
  /* Hardened request mode: released requests wait here (a ring) before
   * their memory is freed, so a late call on one is caught (magic). */
  int hardened;
  evx_request *quar[EVX__QUARANTINE];
  size_t quar_pos;
  /* evx_http_shutdown (http-shutdown.c): NULL until called. */
  struct evx__shutdown *shut;
  /* Out of descriptors (http-conn.c): a spare descriptor to accept-and-close
   * with, the backoff timer, and the rate-limited log's state. */
  int reserve_fd;
  int accept_paused, accept_ev_set, registered;
  evx_http *reg_next; /* in http-conn.c's registry while listening */
  struct event accept_ev;
  uint64_t accept_errs_unlogged, accept_log_ns;
  struct timeval header_tv_plain, body_tv_plain;
  evx_handler_fn before; /* evx_http_set_before: runs ahead of every handler */
  void *before_arg;
  struct evhttp_bound_socket **bound;
  size_t nbound;
  evx_http_stats st;

  /* evx_http_free was called: no more logging, evh is gone. The struct
   * itself lives until the last request (st.live == 0) is released. */
  int freed;
  int dispatching;  /* > 0 while a handler runs (evx_http_free then waits) */
  /* evx_http_free called while a handler runs: the free waits for dispatch
   * to end, then for one deferred call (free_node). */
  enum {
    EVX__HTTP_FREE_NONE,      /* no free pending */
    EVX__HTTP_FREE_REQUESTED, /* called during dispatch; deferred when it ends */
    EVX__HTTP_FREE_DEFERRED   /* free_node is on the loop's deferred list */
  } free_pending;
  evx__cbnode free_node;

  /* Finished requests waiting for release, freed by one deferred loop call
   * after the callback that finished them returned. */
  evx_request *reap_head;
  int reap_scheduled;
  evx__cbnode reap_node;
};

/* evx_request.magic: live, or released into the hardened quarantine. */
#define EVX__REQ_LIVE 0x52455131u
#define EVX__REQ_DEAD 0xDEADBEEFu
void evx__request_misuse(evx_request *r, const char *fn);
#define EVX__REQ_CHECK(r)                                                                          \
  do {                                                                                             \
    if ((r) && (r)->magic == EVX__REQ_DEAD) evx__request_misuse((r), __func__);                    \
  } while (0)

struct evx_request {
  evx_http *http;
  uint32_t magic;   /* EVX__REQ_LIVE; EVX__REQ_DEAD once quarantined */
  char desc[96];    /* quarantined: "GET /path" for the misuse message */
  /* evhttp's request. Valid until release. Owned by evhttp while the
   * request is answerable; once it is a zombie (state != 0) evexec owns it
   * (ev_owned) and frees it at release - evhttp either detached it (its
   * connection pointer is NULL) or we marked it owned before its connection
   * was freed. Its connection pointer must never be followed then. */
  struct evhttp_request *ev;
  struct evhttp_connection *evcon; /* valid while state == 0 and not finished */
  int state;                       /* 0, EVX_EGONE, EVX_ETIMEDOUT or EVX_ECLOSED */
  int status;                      /* the status sent (or being streamed) */
  unsigned finished : 1;           /* finish/end was called: release is scheduled */
  unsigned in_dispatch : 1;        /* its handler is running: release waits for it */
  unsigned held : 1;               /* on http->held with watchers armed */
  unsigned streaming : 1;          /* start_chunked was called */
  unsigned ev_owned : 1;           /* evexec must evhttp_request_free(ev) */
  unsigned watching : 1;           /* watch_ev is added */
  unsigned timing : 1;             /* timer_ev is added */
  unsigned armed : 1;              /* the watch delay is over (timer_ev now means the timeout) */
  unsigned notify_set : 1;         /* notify_ev is assigned (maybe active) */
  unsigned query_parsed : 1;
  unsigned body_ready : 1;
  unsigned hdr_set : 1; /* a Content-Type was given through set_header */
  unsigned coro_alive : 1; /* a coroutine handler runs or is suspended: release waits for it */
  const char *method;
  const char *path; /* path_buf or evhttp's own path string */
  char *path_buf;
  char *query_buf;
  const char **params; /* key, value, key, value ... into query_buf */
  size_t nparams;
  /* Route parameters ({name} segments): name, value, name, value ... in one
   * allocation (the strings follow the pointers), owned by the request, so
   * they outlive the route (a zombie may outlive its server's routes). */
  const char **rparams;
  size_t nrparams;
  /* The second leg of timer_ev (request timeout) for this request's route;
   * NULL: no timeout. Only read while held, when the route is alive. */
  const struct timeval *rest_tv;
  evx__route *route; /* set at dispatch; followed only while held (routes outlive held requests) */
  const char *body;
  size_t body_len;
  evx_request_cb on_close;
  void *on_close_arg;
  struct evx__coro *coro; /* the coroutine handler while it runs (interrupted when gone) */
  uint64_t t0_ns;
  uint64_t bytes;
  char peer[64];
  evx__list held_link;
  evx__conn *conn;     /* its connection's tracker while live and not finished, or NULL */
  evx__list conn_link; /* in the tracker's list of requests */
  evx_request *reap_next;
  struct event watch_ev;  /* the client socket, while held (after the watch delay) */
  struct event timer_ev;  /* the watch delay, then request_timeout_ms (not while streaming) */
  struct event notify_ev; /* runs on_close in a later callback */
  struct evx__drain *drain; /* evx_request_on_drain / _drained: allocated on first use */
};

/* http/http-request.c */
evx_request *evx__request_new(evx_http *h, struct evhttp_request *ev, uint64_t t0);
/* After the handler returned: release a finished request, or hold it. */
void evx__request_after_handler(evx_request *r);
/* Turn a held request into a zombie: gone/timed out/closed. close_conn: also free its connection. */
void evx__request_zombify(evx_request *r, int state, int close_conn);
/* A coroutine handler returned: finish the request with what it set (Tornado's
 * auto-finish) unless it finished, and release it once nothing holds it. */
void evx__request_coro_done(evx_request *r);
/* Answer a request that no handler will see (404, 405, 431, 503) and release it. */
void evx__request_reply_builtin(evx_request *r, int status, const char *extra_name,
                                const char *extra_value, const char *body);

/* The connection of a held request is being freed by evhttp. */
void evx__request_conn_closed(evx_request *r, struct evhttp_connection *evcon);
/* The request ends (finish, zombie, release): stop waiting for a drain;
 * `status` is what a pending drained() future fails with. */
void evx__request_drain_stop(evx_request *r, int status);
/* Ask evhttp to close the connection after this reply (shutting down). */
void evx__request_close_after(evx_request *r);
/* Forget r's tracker (finish, zombie, release, or the connection went away). */
void evx__request_detach_conn(evx_request *r);

/* http/http-shutdown.c */
/* evx_http_free during a shutdown: settle its future now. */
void evx__http_shutdown_free(evx_http *h);
/* http-conn.c: close connections with nothing in progress (shutting down). */
void evx__conn_close_idle(evx_http *h);
/* http-conn.c: close every tracked connection (the shutdown's hard end). */
void evx__conn_close_all(evx_http *h);
/* http-conn.c: write a small reply straight to a connection's socket and
 * prepare it for closing (its output buffer must be empty). */
ssize_t evx__conn_send_raw(evutil_socket_t fd, const char *resp, size_t n); /* bytes sent, or -1 */
/* Of a raw reply of n bytes ending in a body of body_len, the body bytes a
 * send that returned w put on the wire: what the access log and bytes_out
 * count for it, as for every other reply (0 when w < 0). */
static inline size_t evx__raw_body_sent(ssize_t w, size_t n, size_t body_len) {
  size_t head = n - body_len;
  return w > 0 && (size_t)w > head ? (size_t)w - head : 0;
}

/* http/http-conn.c */
struct bufferevent *evx__conn_bevcb(struct event_base *base, void *arg);
evx__conn *evx__conn_find(evx_http *h, struct evhttp_connection *evcon);
void evx__conn_touch(evx__conn *c);
void evx__conn_set_held(evx__conn *c, evx_request *r);
evx__list *evx__conn_reqs(evx__conn *c);
void evx__conn_drop_pending(evx_http *h);
/* A listener was added: handle its accept errors. / Stop that (free, stop_accepting). */
void evx__conn_listening(evx_http *h, struct evhttp_bound_socket *b);
void evx__conn_stop_listening(evx_http *h);

/* http/http-metrics.c */
/* Count one response (status 499: the client left) that took dur_ns. */
void evx__http_metrics_record(evx_http *h, const char *method, int status, uint64_t dur_ns);
/* The server's loop-member on_metrics. */
struct evx_metrics;
void evx__http_metrics(evx__loop_member *m, struct evx_metrics *out);

/* http/http.c */
void evx__http_log(evx_http *h, evx_request *r, int status);
/* Log and count a reply evexec wrote on a connection without a request
 * object (framing errors, 408, 413). peer may be NULL. */
void evx__http_log_conn(evx_http *h, const char *method, int status, uint64_t bytes,
                        const char *peer);
void evx__http_schedule_release(evx_http *h, evx_request *r);
void evx__http_release(evx_request *r);
void evx__http_maybe_free(evx_http *h);

#endif
