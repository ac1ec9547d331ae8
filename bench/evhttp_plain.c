/*
 * evhttp-plain: the reference for the HTTP benchmark - libevent's evhttp with
 * no evexec at all, answering GET /hello inline, exactly like examples/hello's
 * /hello. bench/http.sh runs it beside evx_hello, so the cost of evexec's
 * HTTP layer (and of offloading) reads as a ratio against a plain evhttp reply.
 *
 * Usage: evhttp-plain [--host ADDR] [--port N]. SIGINT/SIGTERM: exit 0.
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void on_hello(struct evhttp_request *req, void *arg) {
  (void)arg;
  struct evbuffer *body = evhttp_request_get_output_buffer(req);
  evbuffer_add(body, "hello\n", 6);
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
  evhttp_send_reply(req, 200, "OK", NULL);
}

static void on_signal(evutil_socket_t sig, short what, void *base) {
  (void)sig;
  (void)what;
  event_base_loopbreak(base);
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1";
  int port = 8080;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--host") && i + 1 < argc) {
      host = argv[++i];
    } else if (!strcmp(argv[i], "--port") && i + 1 < argc) {
      port = atoi(argv[++i]);
    } else {
      fprintf(stderr, "usage: %s [--host ADDR] [--port N]\n", argv[0]);
      return strcmp(argv[i], "--help") ? 2 : 0;
    }
  }
  signal(SIGPIPE, SIG_IGN);
  struct event_base *base = event_base_new();
  struct evhttp *http = base ? evhttp_new(base) : NULL;
  if (!http || evhttp_bind_socket(http, host, (ev_uint16_t)port) != 0) {
    fprintf(stderr, "evhttp-plain: cannot listen on %s:%d\n", host, port);
    return 1;
  }
  evhttp_set_cb(http, "/hello", on_hello, NULL);
  struct event *sigint = evsignal_new(base, SIGINT, on_signal, base);
  struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, base);
  event_add(sigint, NULL);
  event_add(sigterm, NULL);
  event_base_dispatch(base);
  event_free(sigint);
  event_free(sigterm);
  evhttp_free(http);
  event_base_free(base);
  return 0;
}
