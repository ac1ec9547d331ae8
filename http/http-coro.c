/*
 * evx_http_route_coro: request handlers that run as coroutines.
 *
 * DESIGN: the route's handler is a dispatcher that starts one coroutine per
 * request. While the coroutine lives, the request's `coro` points at it (so
 * a client leaving, a timeout or a freed server interrupts its awaits with
 * that reason) and `coro_alive` keeps the request from being released, so
 * it stays valid until the handler returns - also after finish. When the
 * handler returns, evx__request_coro_done finishes it with the buffered
 * status, headers and body unless the handler finished it (auto-finish).
 */
#include "http-internal.h"

#include "coro-internal.h"

typedef struct evx__coro_start {
  evx_request *req;
  evx_handler_fn fn;
  void *arg;
} evx__coro_start;

static void *evx__coro_handler(void *p) {
  evx__coro_start st = *(evx__coro_start *)p; /* p lives only until the first await */
  evx_request *r = st.req;
  r->coro = evx__coro_current();
  r->coro_alive = 1;
  st.fn(r, st.arg);
  evx__request_coro_done(r);
  return NULL;
}

static void evx__coro_dispatch(evx_request *r, void *arg) {
  evx__route *rt = arg;
  evx__coro_start st = {.req = r, .fn = rt->coro_fn, .arg = rt->coro_arg};
  /* No future: nobody awaits or cancels a handler; its request interrupts it. */
  if (evx__go_detached(r->http->loop, evx__coro_handler, &st) != EVX_OK)
    (void)evx_request_finish_str(r, 500, NULL, "out of memory\n");
}

int evx_http_route_coro(evx_http *http, const char *method, const char *path, int flags,
                        evx_handler_fn fn, void *arg) {
  if (!fn) return EVX_EINVAL;
  int rc = evx_http_route(http, method, path, flags, evx__coro_dispatch, NULL);
  if (rc != EVX_OK) return rc;
  evx__route *rt = evx_http_route_find(http, method, path, flags);
  rt->arg = rt;
  rt->coro_fn = fn;
  rt->coro_arg = arg;
  return EVX_OK;
}
