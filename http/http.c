/*
 * evx_http: the server - listening sockets, routing, limits, dispatch, the
 * access log and the release of finished requests.
 *
 * DESIGN
 * - evhttp does the HTTP/1.x parsing, keep-alive, pipelining, body and idle
 *   limits. evexec installs one generic callback (evx__on_request) and does
 *   its own routing on the decoded path, so 404/405/431/503 are answered
 *   through the same request object, logged and counted like any reply.
 * - Every request that reaches evexec gets an evx_request. It is released
 *   (freed) only after the loop callback that finished it returned:
 *   synchronously at the end of dispatch when the handler finished inline
 *   (the fast path: no extra loop work), otherwise through the reap list,
 *   drained by one evx__loop_defer call per batch. evx_loop_free runs deferred
 *   calls too, so requests finished during teardown are released.
 * - evx_http_free may run while requests are held: they become zombies with
 *   EVX_ECLOSED (see http-request.c) and the evx_http struct stays allocated,
 *   without its evhttp, until the last request is released.
 * Everything here runs on the loop thread; there are no locks. The only
 * shared state is the process-wide live-request counter (an atomic).
 */
#include "http-internal.h"
#include "http-test.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define EVX__DEF_MAX_HEADER 8192
#define EVX__DEF_MAX_BODY (1024 * 1024)
#define EVX__DEF_REQ_TIMEOUT_MS 60000
#define EVX__DEF_IDLE_TIMEOUT_MS 60000
#define EVX__DEF_MAX_HELD 10000
#define EVX__DEF_HEADER_TIMEOUT_MS 60000
#define EVX__DEF_MAX_OUTPUT (256 * 1024)
#define EVX__DEF_BODY_TIMEOUT_MS 60000

static _Atomic uint64_t evx__live_requests;

uint64_t evx_request_live_count(void) { return atomic_load(&evx__live_requests); }

void evx_http_log_stderr(void *arg, const evx_http_log_entry *e) {
  FILE *f = arg ? (FILE *)arg : stderr;
  fprintf(f, "%s %s %d %lluB %.2fms %s\n", e->method, e->path, e->status,
          (unsigned long long)e->bytes, (double)e->duration_us / 1000.0, e->peer);
}

void evx__http_log(evx_http *h, evx_request *r, int status) {
  int cls = status / 100;
  h->st.status[(status != 499 && cls >= 1 && cls <= 5) ? cls : 0]++;
  uint64_t dur_ns = evx_now_ns() - r->t0_ns;
  evx__http_metrics_record(h, r->method, status, dur_ns);
  if (h->freed || !h->opts.log) return;
  evx_http_log_entry e = {
      .method = r->method,
      .path = r->path ? r->path : "-",
      .status = status,
      .bytes = r->bytes,
      .duration_us = dur_ns / 1000,
      .peer = r->peer[0] ? r->peer : "-",
  };
  h->opts.log(h->opts.log_arg, &e);
}

void evx__http_log_conn(evx_http *h, const char *method, int status, uint64_t bytes,
                        const char *peer) {
  h->st.bytes_out += bytes;
  evx__http_metrics_record(h, method, status, 0);
  if (h->freed || !h->opts.log) return;
  evx_http_log_entry e = {
      .method = method,
      .path = "-",
      .status = status,
      .bytes = bytes,
      .duration_us = 0,
      .peer = peer && peer[0] ? peer : "-",
  };
  h->opts.log(h->opts.log_arg, &e);
}

/* ---- release of finished requests ------------------------------------- */

void evx__http_release(evx_request *r) {
  evx_http *h = r->http;
  evx__request_detach_conn(r);
  if (r->drain) {
    evx__request_drain_stop(r, EVX_ECANCELED);
    evx_free(r->drain);
    r->drain = NULL;
  }
  if (r->notify_set) event_del(&r->notify_ev);
  if (r->ev_owned) evhttp_request_free(r->ev);
  evx_free(r->path_buf);
  evx_free(r->query_buf);
  evx_free((void *)r->params);
  evx_free((void *)r->rparams);
  r->path_buf = r->query_buf = NULL;
  r->params = r->rparams = NULL;
  if (h->hardened) {
    r->magic = EVX__REQ_DEAD;
    size_t i = h->quar_pos++ % EVX__QUARANTINE;
    evx_free(h->quar[i]); /* the oldest one goes for real */
    h->quar[i] = r;
  } else {
    evx_free(r);
  }
  h->st.live--;
  atomic_fetch_sub(&evx__live_requests, 1);
}

static void evx__http_free_struct(evx_http *h) {
  for (size_t i = 0; i < EVX__QUARANTINE; i++) evx_free(h->quar[i]);
  evbuffer_free(h->scratch);
  evbuffer_free(h->edit_buf);
  evx_free(h->conn_tab);
  evx_free(h->bound);
  evx_free(h);
}

/* Free the struct once evx_http_free was called and nothing points to it. */
void evx__http_maybe_free(evx_http *h) {
  if (h->freed && h->st.live == 0 && !h->reap_scheduled && h->dispatching == 0 &&
      h->free_pending == EVX__HTTP_FREE_NONE)
    evx__http_free_struct(h);
}

static void evx__http_reap(void *arg) {
  evx_http *h = arg;
  h->reap_scheduled = 0;
  evx_request *r = h->reap_head;
  h->reap_head = NULL;
  while (r) {
    evx_request *next = r->reap_next;
    evx__http_release(r);
    r = next;
  }
  evx__http_maybe_free(h);
}

void evx__http_schedule_release(evx_http *h, evx_request *r) {
  r->reap_next = h->reap_head;
  h->reap_head = r;
  if (!h->reap_scheduled) {
    h->reap_scheduled = 1;
    evx__loop_defer(h->loop, &h->reap_node);
  }
}

/* ---- server ----------------------------------------------------------- */

/* The second leg of a held request's timer for a request timeout of `ms`
 * (the watch delay is the first): a libevent common timeout when possible,
 * else `plain`. NULL for EVX_HTTP_NO_TIMEOUT. */
static const struct timeval *evx__http_timeout_tv(evx_http *h, uint64_t ms, struct timeval *plain) {
  if (ms == EVX_HTTP_NO_TIMEOUT) return NULL;
  ms = ms > EVX__HTTP_WATCH_DELAY_MS ? ms - EVX__HTTP_WATCH_DELAY_MS : 0;
  plain->tv_sec = (time_t)(ms / 1000);
  plain->tv_usec = (suseconds_t)((ms % 1000) * 1000);
  const struct timeval *tv = event_base_init_common_timeout(h->base, plain);
  return tv ? tv : plain;
}

static void evx__http_apply_opts(evx_http *h) {
  evx_http_opts *o = &h->opts;
  if (!o->max_header_size) o->max_header_size = EVX__DEF_MAX_HEADER;
  if (!o->max_body_size) o->max_body_size = EVX__DEF_MAX_BODY;
  if (!o->request_timeout_ms) o->request_timeout_ms = EVX__DEF_REQ_TIMEOUT_MS;
  if (!o->idle_timeout_ms) o->idle_timeout_ms = EVX__DEF_IDLE_TIMEOUT_MS;
  if (!o->max_held) o->max_held = EVX__DEF_MAX_HELD;
  if (!o->busy_retry_after_s) o->busy_retry_after_s = 1;
  if (!o->header_timeout_ms) o->header_timeout_ms = EVX__DEF_HEADER_TIMEOUT_MS;
  if (!o->body_timeout_ms) o->body_timeout_ms = EVX__DEF_BODY_TIMEOUT_MS;
  if (!o->max_connections) o->max_connections = EVX_HTTP_UNLIMITED;
  if (!o->max_output_buffer) o->max_output_buffer = EVX__DEF_MAX_OUTPUT;
#ifdef NDEBUG
  h->hardened = o->hardened_requests > 0;
#else /* Debug builds: on unless turned off */
  h->hardened = o->hardened_requests >= 0;
#endif
  if (o->header_timeout_ms != EVX_HTTP_NO_TIMEOUT) {
    h->header_tv_plain.tv_sec = (time_t)(o->header_timeout_ms / 1000);
    h->header_tv_plain.tv_usec = (suseconds_t)((o->header_timeout_ms % 1000) * 1000);
    h->header_tv = event_base_init_common_timeout(h->base, &h->header_tv_plain);
    if (!h->header_tv) h->header_tv = &h->header_tv_plain;
  }
  if (o->body_timeout_ms != EVX_HTTP_NO_TIMEOUT) {
    h->body_tv_plain.tv_sec = (time_t)(o->body_timeout_ms / 1000);
    h->body_tv_plain.tv_usec = (suseconds_t)((o->body_timeout_ms % 1000) * 1000);
    h->body_tv = event_base_init_common_timeout(h->base, &h->body_tv_plain);
    if (!h->body_tv) h->body_tv = &h->body_tv_plain;
  }

  /* evhttp cuts header blocks off at twice our limit (it answers 400 and
   * closes); between the two, evexec answers 431 itself (see dispatch). */
  if (o->max_header_size == EVX_HTTP_UNLIMITED || o->max_header_size > ((size_t)-1 >> 2))
    evhttp_set_max_headers_size(h->evh, -1);
  else
    evhttp_set_max_headers_size(h->evh, (ev_ssize_t)(o->max_header_size * 2));
  /* The same limit as the framing scanner's 413 (http-conn.c), which sees
   * each Content-Length and chunk-size line before evhttp and removes the
   * message: evhttp's own HTML 413 is left for untracked connections. */
  if (o->max_body_size == EVX_HTTP_UNLIMITED || o->max_body_size > ((size_t)-1 >> 1))
    evhttp_set_max_body_size(h->evh, -1);
  else
    evhttp_set_max_body_size(h->evh, (ev_ssize_t)o->max_body_size);
  h->watch_tv_plain.tv_usec = EVX__HTTP_WATCH_DELAY_MS * 1000;
  h->watch_tv = event_base_init_common_timeout(h->base, &h->watch_tv_plain);
  if (!h->watch_tv) h->watch_tv = &h->watch_tv_plain;
  h->rest_tv = evx__http_timeout_tv(h, o->request_timeout_ms, &h->rest_tv_plain);
  if (o->idle_timeout_ms != EVX_HTTP_NO_TIMEOUT) {
    struct timeval tv = {.tv_sec = (time_t)(o->idle_timeout_ms / 1000),
                         .tv_usec = (suseconds_t)((o->idle_timeout_ms % 1000) * 1000)};
    evhttp_set_timeout_tv(h->evh, &tv);
  }
  evhttp_set_allowed_methods(h->evh, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                         EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                         EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
  /* Content-Type is set by evexec per reply. */
  evhttp_set_default_content_type(h->evh, NULL);
}

static void evx__on_request(struct evhttp_request *ev, void *arg);

/* evx_loop_free closes a server left open (see evx-private.h). */
static void evx__http_on_free(evx__loop_member *m) {
  evx_http_free(EVX__CONTAINER_OF(m, evx_http, member));
}

/* The first layout of evx_http_opts (what the plain evx_http_new reads). */
#define EVX__HTTP_OPTS_V0 (offsetof(evx_http_opts, log_arg) + sizeof(void *))

evx_http *evx_http_new_sized(evx_loop *loop, const evx_http_opts *opts, size_t opts_size) {
  if (!loop || !evx__loop_thread_ok(loop)) return evx__ctor_fail(EVX_EINVAL);
  evx_http_opts o;
  if (evx__opts_copy(&o, sizeof o, opts, opts_size) != EVX_OK) return evx__ctor_fail(EVX_EINVAL);
  evx_http *h = evx_calloc(1, sizeof *h);
  if (!h) return evx__ctor_fail(EVX_ENOMEM);
  h->loop = loop;
  h->base = evx_loop_base(loop);
  h->opts = o;
  evx__list_init(&h->routes);
  evx__list_init(&h->held);
  evx__list_init(&h->conns);
  h->reserve_fd = -1;
  evx__list_init(&h->pending_conns);
  h->reap_node.fn = evx__http_reap;
  h->reap_node.arg = h;
  h->reap_node.owned = 1;
  h->evh = evhttp_new(h->base);
  h->scratch = evbuffer_new();
  h->edit_buf = evbuffer_new();
  if (!h->evh || !h->scratch || !h->edit_buf) {
    if (h->evh) evhttp_free(h->evh);
    if (h->scratch) evbuffer_free(h->scratch);
    if (h->edit_buf) evbuffer_free(h->edit_buf);
    evx_free(h);
    return evx__ctor_fail(EVX_ENOMEM);
  }
  evx__http_apply_opts(h);
  evhttp_set_gencb(h->evh, evx__on_request, h);
  evhttp_set_bevcb(h->evh, evx__conn_bevcb, h);
  /* A client that leaves while evhttp writes to it would raise SIGPIPE and
   * kill the process; ignore it unless the program chose a disposition. */
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);
  evx__loop_member_add(loop, &h->member, NULL, evx__http_on_free);
  evx__loop_member_set_metrics(&h->member, evx__http_metrics);
  return h;
}

evx_http *(evx_http_new)(evx_loop *loop, const evx_http_opts *opts) {
  return evx_http_new_sized(loop, opts, EVX__HTTP_OPTS_V0);
}

/* errno of a failed socket/bind/listen -> the error the caller can act on. */
static int evx__bind_err(int e) {
  if (e == EADDRINUSE) return EVX_EADDRINUSE;
  if (e == EACCES || e == EPERM) return EVX_EACCES;
  if (e == ENOMEM || e == ENOBUFS) return EVX_ENOMEM;
  return EVX_EIO;
}

/* The listening socket is made here, not by evhttp_bind_socket, so that the
 * caller learns why a bind failed (libevent only says NULL, and prints a
 * [warn] line to stderr). */
int evx_http_bind(evx_http *h, const char *host, uint16_t port) {
  if (!h || h->freed || !evx__loop_thread_ok(h->loop)) return EVX_EINVAL;
  struct evhttp_bound_socket **nb = evx_realloc(h->bound, (h->nbound + 1) * sizeof *nb);
  if (!nb) return EVX_ENOMEM;
  h->bound = nb;
  char portstr[8];
  snprintf(portstr, sizeof portstr, "%u", (unsigned)port);
  struct addrinfo hints = {0}, *ai = NULL;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  int gai = getaddrinfo(host ? host : "0.0.0.0", portstr, &hints, &ai);
  if (gai != 0) return gai == EAI_MEMORY ? EVX_ENOMEM : gai == EAI_SYSTEM ? EVX_EIO : EVX_ENOTFOUND;
  int rc = EVX_EIO;
  for (struct addrinfo *a = ai; a; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      rc = evx__bind_err(errno);
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 128) != 0) {
      rc = evx__bind_err(errno);
      close(fd);
      continue;
    }
    struct evhttp_bound_socket *b = evhttp_accept_socket_with_handle(h->evh, fd);
    if (!b) { /* evhttp did not take the socket */
      close(fd);
      rc = EVX_ENOMEM;
      continue;
    }
    h->bound[h->nbound++] = b;
    evx__conn_listening(h, b);
    rc = EVX_OK;
    break;
  }
  freeaddrinfo(ai);
  return rc;
}

int evx_http_port(evx_http *h) {
  if (!h || h->nbound == 0) return EVX_EINVAL;
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(evhttp_bound_socket_get_fd(h->bound[0]), (struct sockaddr *)&ss, &len) != 0)
    return EVX_EIO;
  if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  return EVX_EIO;
}

int evx_http_stop_accepting(evx_http *h) {
  if (!h || !evx__loop_thread_ok(h->loop)) return EVX_EINVAL;
  for (size_t i = 0; i < h->nbound; i++) evhttp_del_accept_socket(h->evh, h->bound[i]);
  h->nbound = 0;
  evx__conn_stop_listening(h);
  return EVX_OK;
}

static int evx__streq(const char *a, const char *b) {
  if (!a || !b) return a == b;
  return strcmp(a, b) == 0;
}

/* Parse a route pattern: {name} must be a whole segment, name one or more
 * of [A-Za-z0-9_]. Counts the params and the literal characters. 0 or
 * EVX_EINVAL. */
static int evx__pattern_parse(const char *path, size_t *nparams, size_t *literal) {
  size_t np = 0, lit = 0;
  for (const char *p = path; *p; p++) {
    if (*p == '}') return EVX_EINVAL;
    if (*p != '{') {
      lit++;
      continue;
    }
    if (p[-1] != '/') return EVX_EINVAL; /* path[0] is '/', so p > path */
    const char *q = p + 1;
    while ((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') ||
           *q == '_')
      q++;
    if (q == p + 1 || *q != '}' || (q[1] != '/' && q[1] != '\0')) return EVX_EINVAL;
    if (++np > EVX__ROUTE_MAX_PARAMS) return EVX_EINVAL;
    p = q;
  }
  *nparams = np;
  *literal = lit;
  return EVX_OK;
}

/* Match a pattern route against a decoded path. A {name} segment matches one
 * non-empty segment (no '/'). caps, when given, gets (offset, length) of
 * each parameter value in path. */
static int evx__pattern_match(const evx__route *rt, const char *path, size_t caps[][2]) {
  const char *p = rt->path, *s = path;
  size_t k = 0;
  while (*p) {
    if (*p == '{') {
      size_t n = strcspn(s, "/");
      if (n == 0) return 0;
      if (caps) {
        caps[k][0] = (size_t)(s - path);
        caps[k][1] = n;
      }
      k++;
      s += n;
      p = strchr(p, '}') + 1;
    } else {
      if (*p != *s) return 0;
      p++;
      s++;
    }
  }
  return *s == '\0';
}

static int evx__route_hits(const evx__route *rt, const char *path) {
  if (rt->flags & EVX_ROUTE_PREFIX) return strncmp(path, rt->path, rt->plen) == 0;
  if (rt->nparams) return evx__pattern_match(rt, path, NULL);
  return strcmp(path, rt->path) == 0;
}

int evx_http_route(evx_http *h, const char *method, const char *path, int flags, evx_handler_fn fn,
                   void *arg) {
  size_t nparams = 0, literal = 0;
  if (!h || h->freed || !path || path[0] != '/' || !fn || (flags & ~EVX_ROUTE_PREFIX) ||
      (method && !method[0]) || !evx__loop_thread_ok(h->loop) ||
      evx__pattern_parse(path, &nparams, &literal) != EVX_OK ||
      (nparams && (flags & EVX_ROUTE_PREFIX)))
    return EVX_EINVAL;
  if (evx_http_route_find(h, method, path, flags)) return EVX_EINVAL;
  evx__route *rt = evx_calloc(1, sizeof *rt);
  if (!rt) return EVX_ENOMEM;
  rt->path = evx_strdup(path);
  rt->method = method ? evx_strdup(method) : NULL;
  if (!rt->path || (method && !rt->method)) {
    evx_free(rt->path);
    evx_free(rt->method);
    evx_free(rt);
    return EVX_ENOMEM;
  }
  rt->http = h;
  rt->plen = strlen(path);
  rt->flags = flags;
  rt->nparams = nparams;
  rt->literal = literal;
  rt->fn = fn;
  rt->arg = arg;
  rt->rest_tv = h->rest_tv;
  evx__list_insert_tail(&h->routes, &rt->link);
  return EVX_OK;
}

evx_route *evx_http_route_find(evx_http *h, const char *method, const char *path, int flags) {
  if (!h || h->freed || !path || !evx__loop_thread_ok(h->loop)) return NULL;
  for (evx__list *l = h->routes.next; l != &h->routes; l = l->next) {
    evx__route *rt = EVX__CONTAINER_OF(l, evx__route, link);
    if (rt->flags == flags && evx__streq(rt->method, method) && strcmp(rt->path, path) == 0)
      return rt;
  }
  return NULL;
}

int evx_route_set_timeout(evx_route *rt, uint64_t ms) {
  if (!rt || !evx__loop_thread_ok(rt->http->loop)) return EVX_EINVAL;
  evx_http *h = rt->http;
  rt->opt.timeout_ms = ms;
  rt->rest_tv = ms ? evx__http_timeout_tv(h, ms, &rt->rest_tv_plain) : h->rest_tv;
  return EVX_OK;
}

int evx_route_set_max_held(evx_route *rt, size_t max) {
  if (!rt || !evx__loop_thread_ok(rt->http->loop)) return EVX_EINVAL;
  rt->opt.max_held = max == EVX_HTTP_UNLIMITED ? 0 : max;
  return EVX_OK;
}

int evx_http_set_before(evx_http *h, evx_handler_fn fn, void *arg) {
  if (!h || h->freed || !evx__loop_thread_ok(h->loop)) return EVX_EINVAL;
  h->before = fn;
  h->before_arg = arg;
  return EVX_OK;
}

static void evx__http_do_free(evx_http *h) {
  /* A handler that never finishes its request leaks it (and keeps this
   * struct alive) silently otherwise: say so once, with numbers. */
  if (h->st.held || h->st.zombies)
    fprintf(stderr,
            "evexec: evx_http_free: %llu request(s) not finished by their handler "
            "(%llu held, %llu already answered by evexec: timed out, client gone); "
            "each must still call evx_request_finish once\n",
            (unsigned long long)(h->st.held + h->st.zombies), (unsigned long long)h->st.held,
            (unsigned long long)h->st.zombies);
  evx__http_shutdown_free(h);
  h->freed = 1;
  evx__loop_member_remove(&h->member);
  /* Held requests become zombies first, owning their evhttp requests, so
   * that evhttp_free below frees their connections but not them. */
  while (!evx__list_empty(&h->held)) {
    evx_request *r = EVX__CONTAINER_OF(h->held.next, evx_request, held_link);
    evx__request_zombify(r, EVX_ECLOSED, 0);
  }
  evx__conn_stop_listening(h);
  evhttp_free(h->evh); /* the trackers go with their connections */
  h->evh = NULL;
  evx__conn_drop_pending(h);
  h->nbound = 0;
  evx__list *l;
  while ((l = evx__list_pop_head(&h->routes)) != NULL) {
    evx__route *rt = EVX__CONTAINER_OF(l, evx__route, link);
    evx_free(rt->method);
    evx_free(rt->path);
    evx_free(rt);
  }
  evx__http_maybe_free(h);
}

static void evx__http_deferred_free(void *arg) {
  evx_http *h = arg;
  h->free_pending = EVX__HTTP_FREE_NONE;
  evx__http_do_free(h);
}

void evx_http_free(evx_http *h) {
  if (!h || h->freed) return;
  if (!evx__loop_thread_ok(h->loop)) {
    fprintf(stderr, "evexec: evx_http_free called off the loop thread; ignored\n");
    return;
  }
  if (h->dispatching || h->free_pending) {
    if (h->free_pending == EVX__HTTP_FREE_NONE)
      h->free_pending = EVX__HTTP_FREE_REQUESTED; /* see the end of evx__on_request */
    return;
  }
  evx__http_do_free(h);
}

int evx_http_stats_get(evx_http *h, evx_http_stats *out) {
  if (!h || !out) return EVX_EINVAL;
  *out = h->st;
  return EVX_OK;
}

/* ---- dispatch --------------------------------------------------------- */

/* Request line plus header block, counted like evhttp does (line lengths
 * without CRLF), so the 431 limit means the same bytes as evhttp's. */
static size_t evx__header_size(struct evhttp_request *ev) {
  const char *uri = evhttp_request_get_uri(ev);
  size_t n = (uri ? strlen(uri) : 0) + 16; /* method, spaces, HTTP/1.x */
  struct evkeyvalq *hdrs = evhttp_request_get_input_headers(ev);
  struct evkeyval *kv;
  for (kv = hdrs->tqh_first; kv; kv = kv->next.tqe_next) n += strlen(kv->key) + 2 + strlen(kv->value);
  return n;
}

static int evx__method_ok(const evx__route *rt, const char *method) {
  if (!rt->method) return 1;
  if (strcmp(rt->method, method) == 0) return 1;
  return strcmp(method, "HEAD") == 0 && strcmp(rt->method, "GET") == 0;
}

/* The best route for (method, path): exact beats prefix, longer prefix beats
 * shorter, first added wins ties. *path_matched tells 405 from 404. */
static evx__route *evx__route_find(evx_http *h, const char *method, const char *path,
                                   int *path_matched) {
  evx__route *best = NULL;
  size_t best_rank = 0;
  *path_matched = 0;
  for (evx__list *l = h->routes.next; l != &h->routes; l = l->next) {
    evx__route *rt = EVX__CONTAINER_OF(l, evx__route, link);
    if (!evx__route_hits(rt, path)) continue;
    *path_matched = 1;
    if (!evx__method_ok(rt, method)) continue;
    /* exact > pattern (more literal characters first) > prefix (longer first) */
    size_t rank = (rt->flags & EVX_ROUTE_PREFIX) ? rt->plen
                  : rt->nparams                  ? ((size_t)-1 >> 1) + rt->literal
                                                 : (size_t)-1;
    if (!best || rank > best_rank) {
      best = rt;
      best_rank = rank;
    }
  }
  return best;
}

/* Copy the route's parameters out of the request's path (see rparams). */
static int evx__capture_params(evx_request *r, const evx__route *rt) {
  size_t caps[EVX__ROUTE_MAX_PARAMS][2];
  evx__pattern_match(rt, r->path, caps);
  size_t bytes = 2 * rt->nparams * sizeof(char *);
  for (size_t i = 0; i < rt->nparams; i++) bytes += caps[i][1] + 1;
  bytes += rt->plen + 1; /* the names: never longer than the pattern */
  const char **v = evx_malloc(bytes);
  if (!v) return EVX_ENOMEM;
  char *out = (char *)(v + 2 * rt->nparams);
  const char *p = rt->path;
  for (size_t i = 0; i < rt->nparams; i++) {
    p = strchr(p, '{') + 1;
    size_t nl = (size_t)(strchr(p, '}') - p);
    v[2 * i] = out;
    memcpy(out, p, nl);
    out[nl] = '\0';
    out += nl + 1;
    v[2 * i + 1] = out;
    memcpy(out, r->path + caps[i][0], caps[i][1]);
    out[caps[i][1]] = '\0';
    out += caps[i][1] + 1;
  }
  r->rparams = v;
  r->nrparams = rt->nparams;
  return EVX_OK;
}

const char *evx_request_param(evx_request *r, const char *name) {
  EVX__REQ_CHECK(r);
  if (!r || !name) return NULL;
  for (size_t i = 0; i < r->nrparams; i++)
    if (strcmp(r->rparams[2 * i], name) == 0) return r->rparams[2 * i + 1];
  return NULL;
}

/* The Allow header for a 405: the methods of the routes matching the path. */
static void evx__allow_list(evx_http *h, const char *path, char *buf, size_t cap) {
  size_t n = 0;
  buf[0] = '\0';
  for (evx__list *l = h->routes.next; l != &h->routes; l = l->next) {
    evx__route *rt = EVX__CONTAINER_OF(l, evx__route, link);
    if (!evx__route_hits(rt, path) || !rt->method) continue;
    /* skip duplicates */
    size_t ml = strlen(rt->method);
    const char *p = buf;
    int dup = 0;
    while ((p = strstr(p, rt->method)) != NULL) {
      if ((p == buf || p[-1] == ' ') && (p[ml] == ',' || p[ml] == '\0')) {
        dup = 1;
        break;
      }
      p += ml;
    }
    if (dup) continue;
    int w = snprintf(buf + n, cap - n, "%s%s", n ? ", " : "", rt->method);
    if (w < 0 || (size_t)w >= cap - n) {
      buf[n] = '\0';
      break;
    }
    n += (size_t)w;
  }
}

static void evx__on_request(struct evhttp_request *ev, void *arg) {
  evx_http *h = arg;
  uint64_t t0 = evx_now_ns();
  h->st.requests++;
  evx_request *r = evx__request_new(h, ev, t0);
  if (!r) {
    evhttp_send_reply(ev, 500, "Internal Server Error", NULL);
    return;
  }
  h->st.live++;
  atomic_fetch_add(&evx__live_requests, 1);
  h->dispatching++;

  if (h->shut) { /* evx_http_shutdown: every reply closes its connection */
    evx__request_reply_builtin(r, 503, "Retry-After", "1", "shutting down\n");
  } else if (!r->path) {
    evx__request_reply_builtin(r, 400, NULL, NULL, "bad request path\n");
  } else if (h->opts.max_header_size != EVX_HTTP_UNLIMITED &&
             evx__header_size(ev) > h->opts.max_header_size) {
    evx__request_reply_builtin(r, 431, NULL, NULL, "request header fields too large\n");
  } else {
    int path_matched;
    evx__route *rt = evx__route_find(h, r->method, r->path, &path_matched);
    if (!rt && path_matched) {
      char allow[256];
      evx__allow_list(h, r->path, allow, sizeof allow);
      evx__request_reply_builtin(r, 405, "Allow", allow, "method not allowed\n");
    } else if (!rt) {
      evx__request_reply_builtin(r, 404, NULL, NULL, "not found\n");
    } else if ((rt->opt.max_held && rt->held >= rt->opt.max_held) ||
               (h->opts.max_held != EVX_HTTP_UNLIMITED && h->st.held >= h->opts.max_held &&
                rt->held > 0)) {
      /* The server's cap refuses only routes that hold requests now: one that
       * answers inline (/hello) costs nothing to run, and a flood of long
       * polls must not shut it out. Each route may exceed the cap by one. */
      char ra[16];
      snprintf(ra, sizeof ra, "%u", h->opts.busy_retry_after_s);
      h->st.rejected_busy++;
      evx__request_reply_builtin(r, 503, "Retry-After", ra, "too many requests in progress\n");
    } else if (rt->nparams && evx__capture_params(r, rt) != EVX_OK) {
      evx__request_reply_builtin(r, 500, NULL, NULL, "out of memory\n");
    } else {
      r->rest_tv = rt->rest_tv;
      r->route = rt;
      r->in_dispatch = 1;
      if (h->before) h->before(r, h->before_arg);
      /* a hook that finished the request answered it: the handler is skipped */
      if (!r->finished) rt->fn(r, rt->arg);
      r->in_dispatch = 0;
      evx__request_after_handler(r);
    }
  }

  h->dispatching--;
  if (h->dispatching == 0 && h->free_pending == EVX__HTTP_FREE_REQUESTED) {
    h->free_pending = EVX__HTTP_FREE_DEFERRED; /* deferred once */
    /* Not here: we are inside evhttp's read callback for this connection.
     * A deferred call runs after it returned (also inside evx_loop_free). */
    h->free_node.fn = evx__http_deferred_free;
    h->free_node.arg = h;
    h->free_node.owned = 1;
    evx__loop_defer(h->loop, &h->free_node);
  }
}

struct evhttp *evx__http_evhttp(evx_http *h) { return h ? h->evh : NULL; }
int evx__http_last_bad_status(evx_http *h) { return h ? h->last_bad_status : 0; }
