/**
 * @file http.h
 * evx_http: Tornado's asynchronous request handlers over libevent's evhttp.
 *
 * A handler gets an evx_request and may answer at once or later - from any
 * loop-thread callback: an executor job's `done`, a timer, a future, a
 * condition. The response ends at evx_request_finish(), not when the handler
 * returns (Tornado's `@asynchronous` + `self.finish()`).
 *
 * Lifetime rule (the one thing to remember):
 *  - An evx_request stays valid until evx_request_finish() (or
 *    evx_request_end() for a chunked reply) has been called on it exactly
 *    once - also after the client went away, the request timed out or the
 *    server was freed. Finish then releases it and says why the response
 *    could not be sent (EVX_EGONE, EVX_ETIMEDOUT, EVX_ECLOSED).
 *  - The memory is released after the loop callback that called finish
 *    returns. Until then the accessors keep working (code after finish runs
 *    normally, e.g. deferred work that reads the request), and a second
 *    finish answers EVX_EINVAL instead of crashing. Do not keep the pointer
 *    beyond that callback.
 *
 * Clients that leave: evhttp stops reading a connection while a request on it
 * is unanswered, so on its own it never notices a client that hangs up. While
 * a request is held, evexec watches the socket (from 5 ms after the handler
 * returned on: requests answered sooner never pay for the watch, and a leave
 * is noticed at most that much later): pipelined bytes are moved into
 * evhttp's input buffer untouched (keep-alive and pipelining keep working),
 * and an EOF or a reset marks the request gone, closes the connection and
 * calls the evx_request_on_close() callback so the handler can cancel its job
 * or long-poll wait. A half-close (shutdown(SHUT_WR)) by the client while a
 * request is held counts as leaving.
 *
 * Threads: every function here is loop-thread only (the thread running the
 * evx_loop the server was created on) and answers EVX_EINVAL / NULL when
 * called from another thread while the loop runs. Blocking work belongs on an
 * evx_executor; its `done` callback runs on the loop thread and may finish.
 */
#ifndef EVEXEC_HTTP_H
#define EVEXEC_HTTP_H

#include <evexec/common.h>
#include <evexec/future.h>
#include <evexec/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

/** An HTTP server bound to one evx_loop. */
typedef struct evx_http evx_http;
/** One request, from dispatch until finish (see the lifetime rule above). */
typedef struct evx_request evx_request;

/**
 * A request handler. Runs on the loop thread. It must not block; it may
 * finish `req` before returning or keep it and finish it later.
 */
typedef void (*evx_handler_fn)(evx_request *req, void *arg);

/** A per-request notification (evx_request_on_close). Loop thread. */
typedef void (*evx_request_cb)(evx_request *req, void *arg);

/** One access-log record, given to evx_http_opts.log. Every field is borrowed for the call. */
typedef struct evx_http_log_entry {
  const char *method; /**< "GET", "POST", ... */
  const char *path;   /**< the decoded path, without the query */
  int status;         /**< the status sent; 499 when the client left before a response */
  uint64_t bytes;     /**< body bytes handed to the connection (chunked: sum of writes) */
  uint64_t duration_us; /**< from dispatch to finish (or to the timeout / the client leaving) */
  const char *peer;   /**< the client's address (numeric), or "-" */
} evx_http_log_entry;

/** Access-log callback: one call per request that reached evexec. Loop thread. */
typedef void (*evx_http_log_fn)(void *arg, const evx_http_log_entry *e);

/**
 * A ready-made log callback: writes one line per request to the FILE* given as
 * `arg` (stderr when arg is NULL):
 * `GET /hello 200 6B 0.05ms 127.0.0.1`.
 */
EVX_API void evx_http_log_stderr(void *arg, const evx_http_log_entry *e);

/** "No limit" for the size and count limits in evx_http_opts. */
#define EVX_HTTP_UNLIMITED ((size_t)-1)
/** "No timeout" for the timeouts in evx_http_opts. */
#define EVX_HTTP_NO_TIMEOUT ((uint64_t)-1)

/** Server options. Zero fields take the defaults shown. The struct is copied. */
typedef struct evx_http_opts {
  /** Largest request line plus header block, in bytes; default 8192. Bigger
   *  ones get 431. Header blocks larger than twice this are cut off by evhttp
   *  while still reading and get 400 with the connection closed. */
  size_t max_header_size;
  /** Largest request body in bytes; default 1 MiB. Bigger ones get 413 and
   *  the connection closed, before the body is read: at the end of the head
   *  for a Content-Length, at the chunk-size line that takes a chunked body
   *  over it. Logged (path "-") and counted in bad_requests. */
  size_t max_body_size;
  /** A request not finished this long after dispatch is answered 504 and its
   *  connection closed; the later finish returns EVX_ETIMEDOUT. Default
   *  60000 ms. The timer stops once a chunked reply has started. */
  uint64_t request_timeout_ms;
  /** A keep-alive connection idle (or reading/writing without progress) this
   *  long is closed. Not applied while a request is held. Default 60000 ms. */
  uint64_t idle_timeout_ms;
  /** Most requests held at once (dispatched, not finished, client still
   *  there); above it new requests get 503 with Retry-After - on routes that
   *  hold requests now; a route holding none is still served (see
   *  evx_route_set_max_held for per-route limits). Default 10000. */
  size_t max_held;
  /** Seconds for the Retry-After header of the 503 sent at max_held; default 1. */
  unsigned busy_retry_after_s;
  /** Access log; NULL (default) logs nothing. See evx_http_log_stderr. */
  evx_http_log_fn log;
  void *log_arg;
  /** The whole request head (request line and header fields) must arrive
   *  within this long of its first byte, else 408 and the connection is
   *  closed (nginx's client_header_timeout). Default 60000 ms. */
  uint64_t header_timeout_ms;
  /** The whole body must arrive within this long of the end of the head,
   *  else 408 and close. Default 60000 ms. */
  uint64_t body_timeout_ms;
  /** Most open connections. Above it the connection idle the longest (no
   *  request in progress, nothing being written) is closed; when none is
   *  idle, the new one. Default EVX_HTTP_UNLIMITED. */
  size_t max_connections;
  /** Hardened request mode: 1 on, -1 off, 0 (default) on in Debug builds of
   *  the library (no NDEBUG), off otherwise. Released requests are kept in a
   *  quarantine of the last 256 per server instead of being freed, and any
   *  evx_request_* call on one - a second finish from a later callback, a
   *  pointer kept after finish - prints which call it was and on which
   *  request, and aborts, instead of a use-after-free. Costs ~256 requests'
   *  memory per server (~100 KiB). */
  int hardened_requests;
  /** A connection's high-water mark for unsent reply bytes: above it
   *  evx_request_write answers EVX_EBUSY (nothing written) until the
   *  connection drains (evx_request_on_drain / evx_request_drained), so a
   *  client that stops reading costs at most this plus one write. Default
   *  256 KiB; EVX_HTTP_UNLIMITED: no mark. */
  size_t max_output_buffer;
} evx_http_opts;

/**
 * Create a server on `loop`. Loop thread only. It serves once bound.
 * Writing to a client that left raises SIGPIPE; when the program left
 * SIGPIPE at its default action (terminate), this sets it to SIG_IGN.
 * A macro over evx_http_new_sized (see "Options structs and the ABI" in
 * common.h); source calling evx_http_new(loop, opts) is unchanged.
 * @param loop the loop the server runs on (borrowed; must outlive it).
 * @param ... `opts`, the one argument after loop: options or NULL for the
 *        defaults; copied.
 * @return the server, owned by the caller (evx_http_free; evx_loop_free
 *         frees one left open), or NULL with evx_last_error() saying why:
 *         EVX_EINVAL (NULL loop, wrong thread, a field this library does
 *         not know) or EVX_ENOMEM.
 */
#define evx_http_new(loop, ...) evx_http_new_sized((loop), (__VA_ARGS__), sizeof(evx_http_opts))
EVX_API evx_http *evx_http_new_sized(evx_loop *loop, const evx_http_opts *opts, size_t opts_size);
/** The function behind the macro, for its address: reads the first layout of the options. */
EVX_API evx_http *(evx_http_new)(evx_loop *loop, const evx_http_opts *opts);

/**
 * Listen on host:port. May be called more than once (several addresses).
 * @param http the server.
 * @param host a numeric address or name ("127.0.0.1", "::1", "0.0.0.0");
 *        NULL means "0.0.0.0".
 * @param port the TCP port; 0 picks a free one (see evx_http_port).
 * Nothing is printed: the result says why a bind failed.
 * @return EVX_OK; EVX_EINVAL (NULL http, wrong thread); EVX_EADDRINUSE (the
 *         port is taken); EVX_EACCES (a privileged port without the right);
 *         EVX_ENOTFOUND (the host name does not resolve); EVX_EIO (another
 *         socket/bind/listen failure, e.g. an address not on this machine);
 *         EVX_ENOMEM.
 */
EVX_API int evx_http_bind(evx_http *http, const char *host, uint16_t port);

/** The port of the first bound socket (useful after binding port 0), or EVX_EINVAL. */
EVX_API int evx_http_port(evx_http *http);

/** evx_http_route flag: `path` is a prefix ("/static/" matches "/static/a.css"). */
#define EVX_ROUTE_PREFIX 1

/** A route of a server (evx_http_route_find); owned by the server, valid until evx_http_free. */
typedef struct evx_route evx_route;

/**
 * Add a route. Routes are matched on the decoded path: an exact route beats
 * a pattern route, a pattern route beats any prefix route; among pattern
 * routes the one with more literal characters wins, among prefix routes the
 * longer prefix; among equals the first added wins. HEAD also matches GET
 * routes (evhttp drops the body). A path that matches routes but none for
 * its method gets 405 with an Allow header; a path that matches nothing gets 404.
 *
 * Patterns: a segment written `{name}` (name: letters, digits, '_') matches
 * any one non-empty path segment, and the handler reads it with
 * evx_request_param(req, "name"): "/users/{id}/posts" matches
 * "/users/42/posts" with id "42", not "/users//posts" nor "/users/4/2/posts".
 * Values are taken from the decoded path (so "%2F" counts as a '/').
 * @param http the server.
 * @param method "GET", "POST", ... (copied; compared exactly), or NULL for any.
 * @param path starts with '/'; copied. At most 16 `{name}` segments.
 * @param flags 0 or EVX_ROUTE_PREFIX (not with `{name}` segments).
 * @param fn the handler, called fn(req, arg) on the loop thread for each
 *        request dispatched to this route.
 * @param arg passed to fn; borrowed (never freed by the server), so it must
 *        stay valid until evx_http_free.
 * @return EVX_OK; EVX_EINVAL (NULL http/path/fn, path not starting with '/',
 *         a malformed `{name}` segment, unknown flags, the same
 *         method+path+flags twice, wrong thread); EVX_ENOMEM.
 */
EVX_API int evx_http_route(evx_http *http, const char *method, const char *path, int flags,
                           evx_handler_fn fn, void *arg);

/**
 * The route added with exactly these method, path and flags, to set its
 * options (evx_route_set_timeout, ...):
 * `evx_route_set_timeout(evx_http_route_find(http, "GET", "/poll", 0), 30000);`
 * @return the route (owned by the server, valid until evx_http_free), or NULL
 *         (no such route, NULL http/path, wrong thread).
 */
EVX_API evx_route *evx_http_route_find(evx_http *http, const char *method, const char *path,
                                       int flags);

/**
 * This route's request timeout, replacing the server's request_timeout_ms for
 * requests dispatched to it from now on (a 30 s long poll and a 2 s API call
 * on one server). Loop thread only.
 * @param route the route (evx_http_route_find).
 * @param ms milliseconds; 0 goes back to the server's value;
 *        EVX_HTTP_NO_TIMEOUT: no timeout for this route.
 * @return EVX_OK or EVX_EINVAL (NULL route, wrong thread).
 */
EVX_API int evx_route_set_timeout(evx_route *route, uint64_t ms);

/**
 * Most requests of this route held at once; above it its new requests get
 * 503 with Retry-After while the other routes are served (10,000 long polls
 * on /wait cannot take /api down). Independently, the server's max_held
 * refuses only routes that hold at least one request at that moment, so a
 * route that answers inline is never refused by it. Loop thread only.
 * @param route the route (evx_http_route_find).
 * @param max the limit; 0 or EVX_HTTP_UNLIMITED: none (the server's max_held only).
 * @return EVX_OK or EVX_EINVAL (NULL route, wrong thread).
 */
EVX_API int evx_route_set_max_held(evx_route *route, size_t max);

/**
 * A hook run before the handler of every routed request (not before evexec's
 * own 404/405/431/503 replies): authentication, CORS headers, request ids.
 * It runs on the loop thread with the request the handler would get; it may
 * add response headers (evx_request_set_header), or answer the request
 * itself with evx_request_finish - then the handler is not called. Anything
 * else it leaves to the handler. One hook per server; a second call replaces
 * it, NULL removes it.
 * @return EVX_OK or EVX_EINVAL (NULL http, wrong thread).
 */
EVX_API int evx_http_set_before(evx_http *http, evx_handler_fn fn, void *arg);

/**
 * Serve the Prometheus metrics of everything on this server's loop at `path`
 * (GET and HEAD): every executor, every HTTP server, task queues and the
 * application's evx_metrics_source - see metrics.h for the names. Content
 * type `text/plain; version=0.0.4`. An ordinary route otherwise (the before
 * hook runs; evx_http_route_find(http, "GET", path, 0) finds it).
 * @return as evx_http_route.
 */
EVX_API int evx_http_route_metrics(evx_http *http, const char *path);

/**
 * Stop listening: new connections are refused, connections already open are
 * served until they close. For a clean shutdown call this, drain the
 * executors (their `done` callbacks finish the held requests), then free.
 * @return EVX_OK or EVX_EINVAL.
 */
EVX_API int evx_http_stop_accepting(evx_http *http);

/**
 * Shut the server down so that every client gets an answer:
 *  - at once: stop listening; from now on every reply carries
 *    `Connection: close`, and a new request on a kept-alive connection is
 *    answered 503 + Retry-After at once; connections with nothing in
 *    progress are closed once no request is held (or the grace ended);
 *  - held requests may finish normally for `grace_ms`;
 *  - then each request still held is answered 503 and becomes an
 *    EVX_ECLOSED zombie: its on_close callback runs (cancel its job there;
 *    a running job sees evx_job_cancelled()), its handler's finish returns
 *    EVX_ECLOSED; a chunked reply in progress is cut off;
 *  - the future settles (EVX_OK) once nothing is held and every connection
 *    closed after writing its last reply, at most grace_ms + 1 s after the call.
 * Then cancel the executors' queued jobs (evx_executor_shutdown(ex,
 * EVX_SHUTDOWN_CANCEL): jobs of clients already answered never run) and
 * tear down in the order of docs/GUIDE.md ("Shutdown"). Calling it again
 * shortens the grace (0: end it now - a second SIGTERM) and returns the same
 * future. Loop thread only.
 * @return a future (one reference, the caller's; release it), or NULL
 *         (NULL http, after evx_http_free, wrong thread, out of memory).
 */
EVX_API evx_future *evx_http_shutdown(evx_http *http, uint64_t grace_ms);

/**
 * Free the server: stop listening and close every connection. Loop thread
 * only, or after the loop stopped; may be called from a handler (the free
 * then happens when the handler returns). Requests still held become gone
 * with EVX_ECLOSED: their on_close callbacks run in a later loop iteration,
 * their handlers must still finish them (finish returns EVX_ECLOSED and
 * releases them); the server's memory goes with the last one. No log
 * callback runs after this call. A server still open at evx_loop_free is
 * freed by it (see the ownership rule there). NULL accepted.
 */
EVX_API void evx_http_free(evx_http *http);

/** Counters of one server. */
typedef struct evx_http_stats {
  uint64_t requests;      /**< requests that reached evexec (routed or answered by it) */
  uint64_t live;          /**< evx_request objects not released yet (held + zombies + being dispatched) */
  uint64_t held;          /**< handlers returned without finishing, client still there */
  uint64_t zombies;       /**< gone / timed out / closed, waiting for the handler's finish */
  uint64_t gone;          /**< requests whose client left before the response */
  uint64_t timed_out;     /**< requests answered 504 by request_timeout_ms */
  uint64_t rejected_busy; /**< 503 because max_held was reached */
  uint64_t bytes_out;     /**< body bytes sent */
  uint64_t status[6];     /**< by class: [1] 1xx ... [5] 5xx; [0] no status (client left) */
  uint64_t connections;   /**< connections open now */
  uint64_t bad_requests;  /**< connections closed for bad framing (400, 501, 505) or a body over max_body_size (413); see RELIABILITY.md */
  uint64_t header_timeouts; /**< 408: the head did not arrive within header_timeout_ms */
  uint64_t body_timeouts; /**< 408: the body did not arrive within body_timeout_ms */
  uint64_t shed;          /**< connections closed by max_connections */
  uint64_t accept_errors; /**< accept() failures (EMFILE, ENFILE, ...): each pauses accepting 100 ms */
  uint64_t write_busy;    /**< evx_request_write calls answered EVX_EBUSY (output above max_output_buffer) */
  uint64_t accept_refused; /**< clients accepted with the reserve descriptor and closed at once */
} evx_http_stats;

/** Copy the server's counters. @return EVX_OK or EVX_EINVAL (NULL). */
EVX_API int evx_http_stats_get(evx_http *http, evx_http_stats *out);

/**
 * Diagnostic: evx_request objects alive in the whole process (all servers,
 * all threads), including zombies and requests of freed servers. Safe from
 * any thread. For tests and leak checks (it returns to its earlier value
 * once every request is released), not for flow control.
 */
EVX_API uint64_t evx_request_live_count(void);

/* ---- the request ----------------------------------------------------- */

/** "GET", "POST", ... (static string). NULL for NULL. */
EVX_API const char *evx_request_method(evx_request *req);

/** The percent-decoded path without the query ("/a b" for "/a%20b?x=1"). Borrowed. */
EVX_API const char *evx_request_path(evx_request *req);

/** The raw request target as sent ("/a%20b?x=1"). Borrowed. */
EVX_API const char *evx_request_uri(evx_request *req);

/**
 * A query parameter, decoded ('+' is a space, %XX escapes), or NULL when
 * absent. With repeated names the first wins. "?flag" gives "" for "flag".
 * The string is borrowed from the request.
 */
EVX_API const char *evx_request_query(evx_request *req, const char *name);

/**
 * A route parameter: the path segment matched by `{name}` in the route's
 * pattern (see evx_http_route), or NULL when the route has no such segment
 * (or for NULL arguments). Borrowed from the request; valid as long as it.
 */
EVX_API const char *evx_request_param(evx_request *req, const char *name);

/** A request header (case-insensitive name), or NULL. Borrowed. */
EVX_API const char *evx_request_header(evx_request *req, const char *name);

/**
 * The request body. Borrowed; it is followed by a NUL byte not counted in
 * *len, so a text body can be used as a C string. Never NULL for a live
 * request ("" with *len = 0 when there is no body). len may be NULL.
 */
EVX_API const char *evx_request_body(evx_request *req, size_t *len);

/** The client's numeric address, or "-". Borrowed. */
EVX_API const char *evx_request_peer(evx_request *req);

/** The server the request came from. */
EVX_API evx_http *evx_request_server(evx_request *req);

/**
 * Add a response header (sent with finish or start_chunked). name and value
 * are copied. @return EVX_OK; EVX_EINVAL (NULL, CR/LF in name or value,
 * after the response started or after finish); EVX_EGONE / EVX_ETIMEDOUT /
 * EVX_ECLOSED when there is no client to send it to (nothing is added).
 */
EVX_API int evx_request_set_header(evx_request *req, const char *name, const char *value);

/**
 * Send the response and end the request. Exactly once per request; releases
 * it (see the lifetime rule at the top).
 * @param req the request; released by this call whatever it returns.
 * @param status 200..599 (a final status; 1xx is refused).
 * @param content_type the Content-Type, or NULL for "text/plain; charset=utf-8"
 *        (no header when there is no body to describe and it is NULL).
 * @param body copied; may be NULL when len is 0.
 * @param len the number of bytes of body.
 * @return EVX_OK (handed to the connection); EVX_EGONE (the client left),
 *         EVX_ETIMEDOUT (already answered 504), EVX_ECLOSED (the server was
 *         freed) - in these three cases nothing is sent and the request is
 *         released just the same; EVX_EINVAL for NULL, a second call, a bad
 *         status or NULL body with len > 0 (a first call with bad arguments
 *         sends 500 and releases the request, so it never leaks); EVX_ENOMEM
 *         (500 sent if possible; released).
 * On a chunked reply (after evx_request_start_chunked) finish writes `body`
 * as a last chunk and ends the reply; status and content_type are ignored.
 */
EVX_API int evx_request_finish(evx_request *req, int status, const char *content_type,
                               const void *body, size_t len);

/**
 * evx_request_finish with a NUL-terminated body: its length is strlen(body)
 * (`evx_request_finish_str(req, 200, NULL, "hello\n")`). NULL body sends an
 * empty one. Same return values as evx_request_finish.
 */
EVX_API int evx_request_finish_str(evx_request *req, int status, const char *content_type,
                                   const char *body);

/** evx_request_finish with a printf-formatted text body (content type as given, NULL for text/plain). */
EVX_API int evx_request_finishf(evx_request *req, int status, const char *content_type,
                                const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/**
 * Finish with 503 Service Unavailable and `Retry-After: retry_after_s` - the
 * answer for an executor that said EVX_EBUSY:
 * `if (evx_submit(...) == EVX_EBUSY) return (void)evx_request_reply_busy(req, 1);`
 * Same return values as evx_request_finish.
 */
EVX_API int evx_request_reply_busy(evx_request *req, unsigned retry_after_s);

/**
 * Call fn(req, arg) once, on the loop thread in a later callback, when the
 * request stops being answerable before the handler finished it: the client
 * left, it timed out, or the server was freed. The handler should then cancel
 * its work and still call finish (which returns the reason). Never called
 * after finish. A second registration replaces the first.
 * @return EVX_OK; EVX_EINVAL (NULL req/fn, after finish); EVX_EGONE /
 *         EVX_ETIMEDOUT / EVX_ECLOSED when that already happened (fn is not
 *         registered and will not be called).
 */
EVX_API int evx_request_on_close(evx_request *req, evx_request_cb fn, void *arg);

/**
 * Why the request can no longer be answered: 0 while it can, else EVX_EGONE,
 * EVX_ETIMEDOUT or EVX_ECLOSED. EVX_EINVAL for NULL.
 */
EVX_API int evx_request_state(evx_request *req);

/** Non-zero when evx_request_state() is not 0 (client gone, timed out, server closed). */
EVX_API int evx_request_is_gone(evx_request *req);

/* ---- buffered replies ------------------------------------------------ */

/**
 * Buffered replies build the response piece by piece and send it at finish:
 * evx_request_set_status, evx_request_set_header and evx_request_write_body.
 * A coroutine handler (evx_http_route_coro) that returns without finishing
 * is finished with them: the status set (200 when none), the headers set,
 * the body written (Content-Type text/plain unless a Content-Type header was
 * set). With an explicit evx_request_finish the buffered body comes first
 * and finish's body after it; the status given to finish wins. With
 * evx_request_start_chunked the buffered body is sent as the first chunk, and
 * write_body is refused from then on (use evx_request_write). Any handler
 * may use them.
 */

/**
 * Set the status the response will be sent with (at finish without a
 * status of its own: the auto-finish of a coroutine handler).
 * @return EVX_OK; EVX_EINVAL (NULL, status outside 200..599, after finish or
 *         start_chunked); EVX_EGONE / EVX_ETIMEDOUT / EVX_ECLOSED (no client).
 */
EVX_API int evx_request_set_status(evx_request *req, int status);

/**
 * Append to the response body (copied), sent at finish.
 * @return EVX_OK; EVX_EINVAL (NULL req, NULL data with len > 0, after finish
 *         or start_chunked); EVX_EGONE / EVX_ETIMEDOUT / EVX_ECLOSED;
 *         EVX_ENOMEM (nothing appended).
 */
EVX_API int evx_request_write_body(evx_request *req, const void *data, size_t len);

/** evx_request_write_body with a NUL-terminated string (NULL: nothing). */
EVX_API int evx_request_write_str(evx_request *req, const char *s);

/* ---- coroutine handlers ---------------------------------------------- */

/**
 * Add a route whose handler runs as a coroutine (coro.h): it may await jobs
 * (evx_await_job), futures, conditions, queues and sleeps, one line after the
 * other, on its own stack. Same matching, flags and return values as
 * evx_http_route.
 *  - Finishing is optional (Tornado's auto-finish): a handler that returns
 *    without finishing is finished with what it set through the buffered
 *    calls above (default 200 with an empty body).
 *  - The request handle stays valid until the handler returns (a second
 *    finish answers EVX_EINVAL); after finish, read the request's data
 *    (path, headers, body) only before the handler's next await.
 *  - The client leaving while the handler awaits makes that await return
 *    EVX_EGONE (a job that has not started is cancelled; a running one is
 *    waited for), and every later await in the handler return EVX_EGONE at
 *    once, so the code after it runs and cleans up; no on_close bookkeeping.
 *    A request timeout gives EVX_ETIMEDOUT and a freed server EVX_ECLOSED the
 *    same way.
 *  - A coroutine that cannot be started (no memory for its stack) gets 500.
 * Coroutine stacks have the default size (EVX_CORO_STACK_DEFAULT).
 */
EVX_API int evx_http_route_coro(evx_http *http, const char *method, const char *path, int flags,
                                evx_handler_fn fn, void *arg);

/* ---- chunked replies ------------------------------------------------- */

/**
 * Start a streamed reply: headers now, body in chunks (HTTP/1.1 chunked
 * encoding; for an HTTP/1.0 client the body is sent raw and the connection
 * closed at the end). The request timeout stops; the request is still held
 * until evx_request_end().
 * @return EVX_OK; EVX_EINVAL (NULL, bad status, already started, finished);
 *         EVX_EGONE / EVX_ETIMEDOUT / EVX_ECLOSED (nothing sent; still call end).
 */
EVX_API int evx_request_start_chunked(evx_request *req, int status, const char *content_type);

/**
 * Send one chunk (copied; len 0 sends nothing).
 * @return EVX_OK; EVX_EINVAL (not started, finished, NULL data with len > 0);
 *         EVX_EBUSY when the connection's unsent output is above
 *         max_output_buffer (nothing written: wait for evx_request_on_drain
 *         or evx_request_drained, then write it again);
 *         EVX_EGONE when the client left (still call end).
 */
EVX_API int evx_request_write(evx_request *req, const void *data, size_t len);

/**
 * Call fn(req, arg) once, in a later loop callback, when the connection's
 * unsent output is down to half of max_output_buffer (at once - later - if
 * it already is): write again then. Use after evx_request_write answered
 * EVX_EBUSY. If the client leaves first, fn is called too (the request's
 * state says why; still call end). Not called after end. A second
 * registration replaces the first.
 * @return EVX_OK; EVX_EINVAL (NULL, not streaming, after end); EVX_EGONE /
 *         EVX_ETIMEDOUT / EVX_ECLOSED (fn not registered); EVX_ENOMEM.
 */
EVX_API int evx_request_on_drain(evx_request *req, evx_request_cb fn, void *arg);

/**
 * The same as a future (for coroutines: `evx_await(evx_request_drained(req))`):
 * resolves (EVX_OK) when the output drained as for evx_request_on_drain,
 * fails with EVX_EGONE / EVX_ETIMEDOUT / EVX_ECLOSED when the request can no
 * longer be answered, with EVX_ECANCELED when it ended or a newer drained()
 * replaced it. One reference, the caller's.
 * @return the future, or NULL (NULL, not streaming, after end, wrong thread, ENOMEM).
 */
EVX_API evx_future *evx_request_drained(evx_request *req);

/**
 * End a chunked reply. This is the finish of a streamed request: exactly
 * once, releases it, same return values as evx_request_finish.
 */
EVX_API int evx_request_end(evx_request *req);

#ifdef __cplusplus
}
#endif
#endif /* EVEXEC_HTTP_H */
