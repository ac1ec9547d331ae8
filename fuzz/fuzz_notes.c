/*
 * Fuzz target: the notes service's JSON input. The input is the body of a
 * POST /notes request, sent to the real notes routes (examples/notes/
 * handlers.c compiled in) over a Unix socket, with a real SQLite database in
 * a temporary directory (the server lives for the whole fuzzing process; mail
 * is off: app.mailer is NULL).
 *
 * Checked per input, against an independent reading of the same bytes with
 * jansson (the differential oracle):
 *  - valid note (a JSON object, no duplicate keys, "title" a non-empty string
 *    of at most 200 characters, "body" absent or a string of at most 64 KiB)
 *    -> 201 with a JSON note whose title and body are byte-for-byte the ones
 *    sent and whose id is new;
 *  - anything else -> 400 with a JSON {"error": ...}; never 5xx, never a crash;
 *  - the connection is answered and closed within 10 s; no request outlives
 *    its reply; no crash, leak or sanitizer report.
 */
#include <errno.h>
#include <event2/event.h>
#include <event2/http.h>
#include <evexec/evexec.h>
#include <evexec/http.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "fuzz.h"
#include "http-test.h" /* evx__http_evhttp: attach a Unix listener */
#include "notes.h"

#define TITLE_MAX 200 /* examples/notes/handlers.c */
#define BODY_MAX 65536

static struct {
  int ready;
  notes_app app;
  char dir[64];
  char db[96];
  int lfd;
  struct sockaddr_un sa;
  socklen_t salen;
  long long last_id;
} S;

static void quiet_log(void *arg, const evx_http_log_entry *e) {
  (void)arg;
  (void)e;
}

static void teardown(void) {
  if (!S.ready) return;
  evx_http_free(S.app.http);
  evx_condition_free(S.app.new_note);
  evx_sqlite_close(S.app.db);
  evx_loop_free(S.app.loop);
  close(S.lfd);
  static const char *suffix[] = {"", "-wal", "-shm"};
  for (int i = 0; i < 3; i++) {
    char p[128];
    snprintf(p, sizeof p, "%s%s", S.db, suffix[i]);
    unlink(p);
  }
  rmdir(S.dir);
  S.ready = 0;
}

static void setup(void) {
  notes_app *app = &S.app;
  memset(app, 0, sizeof *app);
  app->cfg.host = "127.0.0.1";
  app->cfg.mail_from = "fuzz <fuzz@localhost>";
  app->cfg.mail_to = "notes@localhost";
  app->cfg.poll_timeout_ms = 1000;
  app->started_ns = notes_now_ns();
  snprintf(S.dir, sizeof S.dir, "/tmp/evx-fuzz-notes-XXXXXX");
  EVX_FUZZ_CHECK(mkdtemp(S.dir) != NULL);
  snprintf(S.db, sizeof S.db, "%s/notes.db", S.dir);
  app->loop = evx_loop_new(NULL);
  EVX_FUZZ_CHECK(app->loop);
  evx_sqlite_opts so = {.readers = 1, .max_queue = 64, .schema = notes_schema, .name = "fz"};
  char *msg = NULL;
  EVX_FUZZ_CHECK(evx_sqlite_open(app->loop, S.db, &so, &app->db, &msg) == EVX_OK);
  app->new_note = evx_condition_new(app->loop);
  evx_http_opts ho = {.log = quiet_log};
  app->http = evx_http_new(app->loop, &ho);
  EVX_FUZZ_CHECK(app->new_note && app->http && notes_routes(app) == 0);

  memset(&S.sa, 0, sizeof S.sa);
  S.sa.sun_family = AF_UNIX;
  int n = snprintf(S.sa.sun_path + 1, sizeof S.sa.sun_path - 1, "evx-fuzz-notes-%d", (int)getpid());
  S.salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
  S.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  EVX_FUZZ_CHECK(S.lfd >= 0);
  EVX_FUZZ_CHECK(bind(S.lfd, (struct sockaddr *)&S.sa, S.salen) == 0 && listen(S.lfd, 8) == 0);
  EVX_FUZZ_CHECK(evhttp_accept_socket_with_handle(evx__http_evhttp(app->http), S.lfd) != NULL);
  S.ready = 1;
  atexit(teardown);
}

static int utf8_chars(const char *s, size_t len) {
  int n = 0;
  for (size_t i = 0; i < len; i++) n += ((unsigned char)s[i] & 0xC0) != 0x80;
  return n;
}

/* The oracle: is this a valid note? Sets title/body (borrowed from *doc). */
static int valid_note(const uint8_t *data, size_t size, json_t **doc, json_t **jt, json_t **jb) {
  json_error_t e;
  *doc = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &e);
  if (!*doc || !json_is_object(*doc)) return 0;
  *jt = json_object_get(*doc, "title");
  *jb = json_object_get(*doc, "body");
  if (!json_is_string(*jt) || json_string_length(*jt) == 0) return 0;
  if (utf8_chars(json_string_value(*jt), json_string_length(*jt)) > TITLE_MAX) return 0;
  if (*jb && (!json_is_string(*jb) || json_string_length(*jb) > BODY_MAX)) return 0;
  return 1;
}

static int same_string(json_t *a, json_t *b) {
  if (!json_is_string(a) || !json_is_string(b)) return 0;
  size_t n = json_string_length(a);
  return n == json_string_length(b) && memcmp(json_string_value(a), json_string_value(b), n) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 60000) return 0; /* stays within one socket buffer: the send below never blocks */
  if (!S.ready) setup();
  struct event_base *base = evx_loop_base(S.app.loop);

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  EVX_FUZZ_CHECK(fd >= 0);
  EVX_FUZZ_CHECK(connect(fd, (struct sockaddr *)&S.sa, S.salen) == 0);
  char head[160];
  int hn = snprintf(head, sizeof head,
                    "POST /notes HTTP/1.1\r\nHost: f\r\nContent-Type: application/json\r\n"
                    "Connection: close\r\nContent-Length: %zu\r\n\r\n",
                    size);
  EVX_FUZZ_CHECK(send(fd, head, (size_t)hn, MSG_NOSIGNAL) == hn);
  if (size) EVX_FUZZ_CHECK(send(fd, data, size, MSG_NOSIGNAL) == (ssize_t)size);
  EVX_FUZZ_CHECK(fcntl(fd, F_SETFL, O_NONBLOCK) == 0);

  /* Run the loop until the server answered and closed (the insert runs on
   * the SQLite writer thread; its completion wakes the loop). */
  char *resp = NULL;
  size_t len = 0, cap = 0;
  int eof = 0;
  uint64_t deadline = notes_now_ns() + 10ull * 1000000000ull;
  while (!eof) {
    EVX_FUZZ_CHECK(notes_now_ns() < deadline);
    event_base_loop(base, EVLOOP_NONBLOCK);
    for (;;) {
      if (cap - len < 4096) {
        cap = cap ? cap * 2 : 8192;
        resp = realloc(resp, cap);
        EVX_FUZZ_CHECK(resp);
      }
      ssize_t m = recv(fd, resp + len, cap - len - 1, 0);
      if (m > 0) {
        len += (size_t)m;
        continue;
      }
      if (m == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) eof = 1;
      break;
    }
    if (!eof) {
      struct pollfd p = {.fd = fd, .events = POLLIN};
      (void)poll(&p, 1, 1);
    }
  }
  close(fd);
  EVX_FUZZ_CHECK(resp != NULL);
  resp[len] = '\0';

  int status = len > 12 && memcmp(resp, "HTTP/1.1 ", 9) == 0 ? atoi(resp + 9) : 0;
  const char *body = strstr(resp, "\r\n\r\n");
  EVX_FUZZ_CHECK(status != 0 && body != NULL);
  body += 4;
  json_error_t e;
  json_t *answer = json_loads(body, 0, &e);
  if (!answer || !json_is_object(answer) || status >= 500) /* say what came back before failing */
    fprintf(stderr, "fuzz_notes: reply was:\n%s\n", resp);
  EVX_FUZZ_CHECK(answer != NULL && json_is_object(answer)); /* every reply is a JSON object */

  json_t *doc = NULL, *jt = NULL, *jb = NULL;
  if (valid_note(data, size, &doc, &jt, &jb)) {
    EVX_FUZZ_CHECK(status == 201);
    EVX_FUZZ_CHECK(same_string(jt, json_object_get(answer, "title")));
    json_t *ab = json_object_get(answer, "body");
    if (jb) EVX_FUZZ_CHECK(same_string(jb, ab));
    else EVX_FUZZ_CHECK(json_is_string(ab) && json_string_length(ab) == 0);
    json_t *id = json_object_get(answer, "id");
    EVX_FUZZ_CHECK(json_is_integer(id) && json_integer_value(id) > S.last_id);
    S.last_id = json_integer_value(id);
  } else {
    EVX_FUZZ_CHECK(status == 400);
    EVX_FUZZ_CHECK(json_is_string(json_object_get(answer, "error")));
  }
  json_decref(doc);
  json_decref(answer);
  free(resp);

  /* The reply is sent; the request is released after its callback. */
  event_base_loop(base, EVLOOP_NONBLOCK);
  EVX_FUZZ_CHECK(evx_request_live_count() == 0);
  return 0;
}
