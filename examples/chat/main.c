/*
 * evx_chat: Tornado's chatdemo with coroutine handlers.
 *
 *   GET  /                        a minimal page that posts and polls
 *   POST /a/message/new           the request body is the message text;
 *                                 answers the message as JSON {"id":N,"body":"..."}
 *   GET|POST /a/message/updates?cursor=N
 *                                 the messages newer than N as JSON
 *                                 {"messages":[...]}: at once when there are
 *                                 some, else held until one is posted or 30 s
 *                                 pass ({"messages":[]}); a client that leaves
 *                                 meanwhile is cleaned up by its await
 *                                 returning EVX_EGONE
 *
 * The last 200 messages are kept (the message cache); a cursor older than the
 * cache gets what is left. Every handler is a coroutine: it reads top to
 * bottom, and a request it returns from without finishing is finished with
 * the status and body it wrote.
 *
 * Usage: evx_chat [--host ADDR] [--port N] [--threads N] [--poll-ms N] [--quiet] [--help]
 * SIGINT/SIGTERM: stop accepting, answer held polls, exit 0.
 */
#define _POSIX_C_SOURCE 200809L
#include <evexec/evexec.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CACHE 200
#define MAX_MESSAGE 4096

typedef struct message {
  unsigned long id;
  char *body;
} message;

static evx_loop *loop;
static evx_http *http;
static evx_condition *news; /* notify_all on every new message */
static message cache[CACHE];
static unsigned long last_id; /* id of the newest message; ids start at 1 */
static uint64_t poll_ms = 30000;
static int stopping;

/* ---- JSON output ---- */

static void write_json_string(evx_request *req, const char *s) {
  char buf[8];
  evx_request_write_str(req, "\"");
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      buf[0] = '\\';
      buf[1] = (char)c;
      evx_request_write_body(req, buf, 2);
    } else if (c < 0x20) {
      snprintf(buf, sizeof buf, "\\u%04x", c);
      evx_request_write_str(req, buf);
    } else {
      evx_request_write_body(req, s, 1);
    }
  }
  evx_request_write_str(req, "\"");
}

static void write_message(evx_request *req, const message *m) {
  char head[48];
  snprintf(head, sizeof head, "{\"id\":%lu,\"body\":", m->id);
  evx_request_write_str(req, head);
  write_json_string(req, m->body);
  evx_request_write_str(req, "}");
}

/* ---- handlers (coroutines) ---- */

static void on_index(evx_request *req, void *arg) {
  (void)arg;
  evx_request_set_header(req, "Content-Type", "text/html; charset=utf-8");
  evx_request_write_str(
      req,
      "<!doctype html><title>evx_chat</title><ul id=m></ul>"
      "<form id=f><input id=b autofocus><button>Post</button></form><script>"
      "let c=0;f.onsubmit=e=>{e.preventDefault();fetch('/a/message/new',{method:'POST',"
      "body:b.value});b.value=''};"
      "(async()=>{for(;;){try{let r=await fetch('/a/message/updates?cursor='+c,"
      "{method:'POST'});let j=await r.json();for(const x of j.messages){c=x.id;"
      "let li=document.createElement('li');li.textContent=x.body;m.append(li)}}"
      "catch(e){await new Promise(r=>setTimeout(r,1000))}}})()</script>\n");
}

static void on_new(evx_request *req, void *arg) {
  (void)arg;
  size_t len;
  const char *body = evx_request_body(req, &len);
  if (len == 0 || len > MAX_MESSAGE || memchr(body, '\0', len)) {
    evx_request_set_status(req, 400);
    evx_request_write_str(req, "a message is 1..4096 bytes of text\n");
    return;
  }
  message *m = &cache[last_id % CACHE];
  char *copy = malloc(len + 1);
  if (!copy) {
    evx_request_set_status(req, 500);
    return;
  }
  memcpy(copy, body, len);
  copy[len] = '\0';
  free(m->body);
  m->body = copy;
  m->id = ++last_id;
  evx_condition_notify_all(news);
  evx_request_set_header(req, "Content-Type", "application/json");
  write_message(req, m);
  evx_request_write_str(req, "\n");
}

static void on_updates(evx_request *req, void *arg) {
  (void)arg;
  const char *s = evx_request_query(req, "cursor");
  size_t blen;
  const char *body = evx_request_body(req, &blen);
  if (!s && strncmp(body, "cursor=", 7) == 0) s = body + 7;
  unsigned long cursor = s ? strtoul(s, NULL, 10) : 0;
  if (cursor > last_id) cursor = last_id; /* a cursor from before a restart */
  if (cursor == last_id && !stopping) { /* nothing newer yet: wait for news */
    evx_future *w = evx_condition_wait(news, poll_ms);
    int rc = w ? evx_await(w) : EVX_ENOMEM;
    evx_future_release(w);
    if (rc == EVX_EGONE) return; /* the client left: nothing to answer, nothing to clean */
    if (rc != EVX_OK && rc != EVX_ETIMEDOUT && rc != EVX_ECLOSED) {
      evx_request_set_status(req, 503);
      return;
    }
  }
  unsigned long first = cursor + 1;
  if (last_id >= CACHE && first <= last_id - CACHE) first = last_id - CACHE + 1;
  evx_request_set_header(req, "Content-Type", "application/json");
  evx_request_write_str(req, "{\"messages\":[");
  for (unsigned long id = first; id <= last_id; id++) {
    if (id > first) evx_request_write_str(req, ",");
    write_message(req, &cache[(id - 1) % CACHE]);
  }
  evx_request_write_str(req, "]}\n");
}

/* ---- main ---- */

static void on_signal(int sig, void *arg) {
  (void)arg;
  fprintf(stderr, "evx_chat: signal %d, stopping\n", sig);
  stopping = 1;
  evx_http_stop_accepting(http);
  evx_condition_notify_all(news); /* held polls answer with what there is */
  evx_loop_stop(loop);
}

static void usage(FILE *f) {
  fprintf(f, "usage: evx_chat [--host ADDR] [--port N] [--threads N] [--poll-ms N] [--quiet]\n"
             "  --host ADDR   address to listen on (default 127.0.0.1)\n"
             "  --port N      port (default 8080; 0 picks a free one)\n"
             "  --threads N   accepted for the examples' common options; chat blocks nowhere\n"
             "  --poll-ms N   how long an update request is held (default 30000)\n"
             "  --quiet       no access log\n"
             "routes: GET /  POST /a/message/new  GET|POST /a/message/updates?cursor=N\n");
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1";
  long port = 8080;
  int quiet = 0;
  static const struct option opts[] = {{"host", required_argument, 0, 'H'},
                                       {"port", required_argument, 0, 'p'},
                                       {"threads", required_argument, 0, 't'},
                                       {"poll-ms", required_argument, 0, 'P'},
                                       {"quiet", no_argument, 0, 'q'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "H:p:t:P:qh", opts, NULL)) != -1) {
    char *end;
    switch (c) {
    case 'H': host = optarg; break;
    case 'p':
      port = strtol(optarg, &end, 10);
      if (*end || port < 0 || port > 65535) {
        fprintf(stderr, "evx_chat: bad --port %s\n", optarg);
        return 2;
      }
      break;
    case 't':
      (void)strtol(optarg, &end, 10);
      if (*end) {
        fprintf(stderr, "evx_chat: bad --threads %s\n", optarg);
        return 2;
      }
      break;
    case 'P':
      poll_ms = strtoull(optarg, &end, 10);
      if (*end || poll_ms == 0 || poll_ms > 3600000) {
        fprintf(stderr, "evx_chat: bad --poll-ms %s\n", optarg);
        return 2;
      }
      break;
    case 'q': quiet = 1; break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }

  loop = evx_loop_new(NULL);
  if (!loop) return 1;
  news = evx_condition_new(loop);
  http = evx_http_new(loop, &(evx_http_opts){.log = quiet ? NULL : evx_http_log_stderr});
  if (!news || !http) return 1;
  if (evx_http_route_coro(http, "GET", "/", 0, on_index, NULL) ||
      evx_http_route_coro(http, "POST", "/a/message/new", 0, on_new, NULL) ||
      evx_http_route_coro(http, "GET", "/a/message/updates", 0, on_updates, NULL) ||
      evx_http_route_coro(http, "POST", "/a/message/updates", 0, on_updates, NULL))
    return 1;
  /* held polls outlive the server's default request timeout */
  evx_route_set_timeout(evx_http_route_find(http, "GET", "/a/message/updates", 0), poll_ms + 5000);
  evx_route_set_timeout(evx_http_route_find(http, "POST", "/a/message/updates", 0), poll_ms + 5000);
  int rc = evx_http_bind(http, host, (uint16_t)port);
  if (rc != EVX_OK) {
    fprintf(stderr, "evx_chat: cannot listen on %s:%ld: %s\n", host, port, evx_strerror(rc));
    return 1;
  }
  fprintf(stderr, "evx_chat: listening on http://%s:%d/\n", host, evx_http_port(http));
  fflush(stderr);
  if (evx_loop_on_signal(loop, SIGINT, on_signal, NULL) ||
      evx_loop_on_signal(loop, SIGTERM, on_signal, NULL))
    return 1;

  evx_loop_run(loop);

  /* Held polls were notified; let them answer, then free everything. */
  for (int i = 0; i < 3; i++) {
    evx_loop_stop(loop);
    evx_loop_run(loop);
  }
  evx_http_free(http);
  evx_condition_free(news);
  evx_loop_free(loop);
  for (int i = 0; i < CACHE; i++) free(cache[i].body);
  fprintf(stderr, "evx_chat: stopped\n");
  return 0;
}
