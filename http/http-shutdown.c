/*
 * evx_http_shutdown: the shutdown that answers everyone.
 *
 * DESIGN
 * Phases, driven by one 10 ms timer on the loop thread:
 *  1. At the call: stop listening; from now on every reply carries
 *     "Connection: close", and a request arriving on a kept-alive
 *     connection is answered 503 + Connection: close without reaching a
 *     handler. Connections with nothing in progress are closed once no
 *     request is held (or the grace is over).
 *  2. Until the grace ends, held requests may finish normally.
 *  3. At the grace: every request still held is answered 503 (written
 *     straight to its socket - its output buffer is empty while held, like
 *     the 504 of a request timeout) and becomes an EVX_ECLOSED zombie with
 *     its connection closed; its on_close callback runs, so its handler can
 *     cancel its job (a running one sees evx_job_cancelled()); its handler's
 *     late finish returns EVX_ECLOSED. A chunked reply in progress is cut.
 *  4. The future settles (EVX_OK) once nothing is held and every connection
 *     closed after writing its last reply - or at grace + 1 s, when what is
 *     left is closed.
 * The caller then cancels the executors' queued jobs
 * (evx_executor_shutdown(ex, EVX_SHUTDOWN_CANCEL)) and frees in the order of
 * docs/GUIDE.md. A second call shortens the grace (0: now) and returns the
 * same future.
 */
#include "http-internal.h"
#include "http-util.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <string.h>

#define EVX__SHUT_TICK_US 10000
#define EVX__SHUT_HARD_MS 1000 /* after the grace: the most we wait for replies to drain */

struct evx__shutdown {
  evx_future *f; /* our reference; NULL once settled */
  struct event tick;
  uint64_t grace_end_ns, hard_end_ns;
  int graced;
};

static void evx__shut_settle(evx_http *h) {
  struct evx__shutdown *s = h->shut;
  event_del(&s->tick);
  if (s->f) {
    evx_future *f = s->f;
    s->f = NULL;
    evx_future_resolve(f, NULL, NULL);
    evx_future_release(f);
  }
}

/* The grace is over: answer every held request 503 and close its connection. */
static void evx__shut_grace_over(evx_http *h) {
  static const char resp[] = "HTTP/1.1 503 Service Unavailable\r\n"
                             "Content-Type: text/plain; charset=utf-8\r\n"
                             "Content-Length: 14\r\n"
                             "Connection: close\r\n\r\n"
                             "shutting down\n";
  h->shut->graced = 1;
  while (!evx__list_empty(&h->held)) {
    evx_request *r = EVX__CONTAINER_OF(h->held.next, evx_request, held_link);
    struct bufferevent *bev = r->evcon ? evhttp_connection_get_bufferevent(r->evcon) : NULL;
    if (bev && !r->streaming && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
      ssize_t w = evx__conn_send_raw(bufferevent_getfd(bev), resp, sizeof resp - 1);
      /* the zombify below logs the 503 with the body bytes that left (a held
       * request has sent nothing yet), and bytes_out counts them */
      r->bytes = evx__raw_body_sent(w, sizeof resp - 1, sizeof "shutting down\n" - 1);
      h->st.bytes_out += r->bytes;
    }
    evx__request_zombify(r, EVX_ECLOSED, 1);
  }
}

static void evx__shut_tick(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  evx_http *h = arg;
  struct evx__shutdown *s = h->shut;
  uint64_t now = evx_now_ns();
  if (!s->graced && now >= s->grace_end_ns) evx__shut_grace_over(h);
  /* Idle keep-alive connections stay open while requests are held, so a
   * request sent on one gets its 503 + Connection: close instead of a
   * connection closed under it. */
  if (s->graced || h->st.held == 0) evx__conn_close_idle(h);
  if (h->st.held == 0 && evx__list_empty(&h->conns)) {
    evx__shut_settle(h);
    return;
  }
  if (now >= s->hard_end_ns) {
    evx__conn_close_all(h);
    evx__shut_settle(h);
    return;
  }
  static const struct timeval tv = {0, EVX__SHUT_TICK_US};
  event_add(&s->tick, &tv);
}

evx_future *evx_http_shutdown(evx_http *h, uint64_t grace_ms) {
  if (!h || h->freed || !evx__loop_thread_ok(h->loop)) return NULL;
  uint64_t now = evx_now_ns();
  uint64_t grace_ns = grace_ms > UINT64_MAX / 2000000 ? UINT64_MAX / 2 : grace_ms * 1000000;
  struct evx__shutdown *s = h->shut;
  if (s) { /* again: shorten the grace, same future */
    evx_future *f = NULL;
    if (s->f) {
      f = evx_future_ref(s->f);
      if (now + grace_ns < s->grace_end_ns) {
        s->grace_end_ns = now + grace_ns;
        s->hard_end_ns = s->grace_end_ns + (uint64_t)EVX__SHUT_HARD_MS * 1000000;
        event_del(&s->tick);
        event_active(&s->tick, EV_TIMEOUT, 1);
      }
    } else { /* settled already */
      f = evx_future_new(h->loop);
      if (f) evx_future_resolve(f, NULL, NULL);
    }
    return f;
  }
  s = evx_calloc(1, sizeof *s);
  if (!s) return NULL;
  s->f = evx_future_new(h->loop);
  evx_future *ret = s->f ? evx_future_ref(s->f) : NULL;
  if (!ret || evtimer_assign(&s->tick, h->base, evx__shut_tick, h) != 0) {
    if (s->f) evx_future_release(s->f);
    if (ret) evx_future_release(ret);
    evx_free(s);
    return NULL;
  }
  s->grace_end_ns = now + grace_ns;
  s->hard_end_ns = s->grace_end_ns + (uint64_t)EVX__SHUT_HARD_MS * 1000000;
  h->shut = s;
  evx_http_stop_accepting(h);
  /* the first tick in a later callback: the caller may be a handler whose
   * connection must not be freed under it */
  event_active(&s->tick, EV_TIMEOUT, 1);
  return ret;
}

void evx__http_shutdown_free(evx_http *h) {
  if (!h->shut) return;
  evx__shut_settle(h);
  evx_free(h->shut);
  h->shut = NULL;
}
