/* HTTP/1.1 framing (RFC 9112) against request smuggling: every message whose
 * framing is ambiguous or malformed gets 400 (505 for an unsupported version,
 * 501 for an unknown transfer coding) and its connection closed, as nginx
 * does; valid framing that evhttp alone refuses (chunk extensions) is
 * served. Raw sockets, one connection per case. */
#include "test_http_util.h"

static tc_fixture F;

static void h_echo(evx_request *req, void *arg) {
  (void)arg;
  size_t n;
  const char *b = evx_request_body(req, &n);
  evx_request_finishf(req, 200, NULL, "%s %zu %s", evx_request_method(req), n, b);
}

typedef struct fcase {
  const char *name;
  const char *raw;
  size_t len; /* 0: strlen(raw) */
  int want;   /* the status of the first response */
  int close;  /* the connection must be closed after it */
  const char *body; /* for 200: the echoed body */
  int status;       /* seen */
  int eof;          /* seen */
  char got[128];
} fcase;

#define RAW(s) s, sizeof(s) - 1

static fcase cases[] = {
    /* the observations of issue #11 */
    {"two different Content-Length", RAW("POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"), 400, 1, NULL, 0, 0, ""},
    {"Content-Length +5", RAW("POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nabcde"), 400, 1, NULL, 0, 0, ""},
    {"space before the colon", RAW("POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"), 400, 1, NULL, 0, 0, ""},
    {"NUL in Content-Length", RAW("POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 5\0001\r\n\r\nabcde"), 400, 1, NULL, 0, 0, ""},
    {"NUL in Transfer-Encoding", RAW("POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\000x\r\n\r\n5\r\nabcde\r\n0\r\n\r\n"), 400, 1, NULL, 0, 0, ""},
    {"HTTP/1.1 without Host", RAW("GET /e HTTP/1.1\r\nConnection: close\r\n\r\n"), 400, 1, NULL, 0, 0, ""},
    {"two Host", RAW("GET /e HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400, 1, NULL, 0, 0, ""},
    {"empty header name", RAW("GET /e HTTP/1.1\r\nHost: t\r\n: x\r\n\r\n"), 400, 1, NULL, 0, 0, ""},
    {"HTTP/1.1000", RAW("GET /e HTTP/1.1000\r\nHost: t\r\n\r\n"), 400, 1, NULL, 0, 0, ""},
    {"HTTP/9.9", RAW("GET /e HTTP/9.9\r\nHost: t\r\n\r\n"), 505, 1, NULL, 0, 0, ""},
    /* more of the same family */
    {"obs-fold", RAW("GET /e HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  folded\r\n\r\n"), 400, 1, NULL, 0, 0, ""},
    {"Content-Length and chunked", RAW("POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400, 1, NULL, 0, 0, ""},
    {"gzip, chunked", RAW("POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"), 501, 1, NULL, 0, 0, ""},
    {"HEAD with a body", RAW("HEAD /e HTTP/1.1\r\nHost: t\r\nContent-Length: 28\r\n\r\nGET /e HTTP/1.1\r\nHost: t\r\n\r\n"), 400, 1, NULL, 0, 0, ""},
    {"bad chunk size", RAW("POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5x\r\nabcde\r\n0\r\n\r\n"), 400, 1, NULL, 0, 0, ""},
    {"chunk data without CRLF", RAW("POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcde\r\n0\r\n\r\n"), 400, 1, NULL, 0, 0, ""},
    {"Content-Length in a trailer", RAW("POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\n\r\n"), 400, 1, NULL, 0, 0, ""},
    {"bare CR", RAW("GET /e HTTP/1.1\r\nHost: t\rX: y\r\n\r\n"), 400, 1, NULL, 0, 0, ""},
    {"transfer-encoding on HTTP/1.0", RAW("POST /e HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400, 1, NULL, 0, 0, ""},
    /* valid framing: served */
    {"chunk extension", RAW("POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;a=b\r\nabcde\r\n3 ; x=\"q\"\r\nfgh\r\n0;last\r\n\r\n"), 200, 1, "POST 8 abcdefgh", 0, 0, ""},
    {"chunked with a trailer", RAW("POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n2\r\nab\r\n0\r\nX-T: 1\r\n\r\n"), 200, 1, "POST 2 ab", 0, 0, ""},
    {"equal Content-Length twice", RAW("POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab"), 200, 1, "POST 2 ab", 0, 0, ""},
    {"HTTP/1.0 without Host", RAW("GET /e HTTP/1.0\r\n\r\n"), 200, 1, "GET 0 ", 0, 0, ""},
    {"plain keep-alive", RAW("GET /e HTTP/1.1\r\nHost: t\r\n\r\n"), 200, 0, "GET 0 ", 0, 0, ""},
};
#define NCASES (sizeof cases / sizeof cases[0])

/* A pipeline: a good request, then a smuggling attempt. The first is
 * answered, the second gets 400 and the close. */
static tc_resp pipe_resp[2];
static int pipe_eof;

static void *client(void *arg) {
  (void)arg;
  for (size_t i = 0; i < NCASES; i++) {
    fcase *fc = &cases[i];
    int fd = tc_connect(F.port);
    if (fd < 0) continue;
    tc_send_n(fd, fc->raw, fc->len ? fc->len : strlen(fc->raw));
    tc_conn c;
    tc_conn_init(&c, fd);
    tc_resp r;
    if (tc_read_resp(&c, &r, strncmp(fc->raw, "HEAD", 4) == 0) == 0) {
      fc->status = r.status;
      snprintf(fc->got, sizeof fc->got, "%s", r.body ? r.body : "");
    }
    tc_resp_free(&r);
    if (fc->close) {
      fc->eof = tc_wait_eof(&c);
    } else { /* still open: a second request is served */
      tc_send(fd, "GET /e HTTP/1.1\r\nHost: t\r\n\r\n");
      fc->eof = tc_read_resp(&c, &r, 0) != 0 || r.status != 200;
      tc_resp_free(&r);
    }
    close(fd);
  }
  int fd = tc_connect(F.port);
  tc_send(fd, "POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok"
              "POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc");
  tc_conn c;
  tc_conn_init(&c, fd);
  tc_read_resp(&c, &pipe_resp[0], 0);
  tc_read_resp(&c, &pipe_resp[1], 0);
  pipe_eof = tc_wait_eof(&c);
  close(fd);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_framing) {
  tc_fixture_init(&F, NULL);
  evx_http_route(F.http, NULL, "/e", 0, h_echo, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, client, NULL);
  int bad = 0;
  for (size_t i = 0; i < NCASES; i++) {
    fcase *fc = &cases[i];
    int ok = fc->status == fc->want && (fc->close ? fc->eof : !fc->eof) &&
             (!fc->body || strcmp(fc->got, fc->body) == 0);
    if (!ok) {
      fprintf(stderr, "framing: %s: got %d eof=%d body '%s', want %d%s\n", fc->name, fc->status,
              fc->eof, fc->got, fc->want, fc->close ? " and close" : "");
      bad++;
    }
  }
  ck_assert_int_eq(bad, 0);
  ck_assert_int_eq(pipe_resp[0].status, 200);
  ck_assert_str_eq(pipe_resp[0].body, "POST 2 ok");
  ck_assert_int_eq(pipe_resp[1].status, 400);
  ck_assert(pipe_eof);
  tc_resp_free(&pipe_resp[0]);
  tc_resp_free(&pipe_resp[1]);
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.bad_requests, 20);
  tc_fixture_done(&F);
}
END_TEST

int main(void) {
  Suite *s = suite_create("http_framing");
  TCase *tc = evx_test_tcase(s, "framing", 30);
  tcase_add_test(tc, test_framing);
  return evx_test_main(s);
}
