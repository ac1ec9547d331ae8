/* Chunked replies: start / write / end from timers, HTTP/1.0 clients,
 * finish on a stream, keep-alive afterwards, and a client that leaves in
 * the middle of a stream. */
#include "test_http_util.h"

static tc_fixture F;
static sem_t closed_sem, ended_sem;

typedef struct stream {
  evx_request *req;
  int left;      /* chunks still to write */
  int use_finish; /* end with evx_request_finish(last chunk) instead of end */
  int write_rc;  /* first non-OK write */
  int end_rc;
  int closed;
} stream;

static stream S;

static void stream_tick(void *arg) {
  stream *s = arg;
  if (s->left > 0) {
    char buf[32];
    int n = snprintf(buf, sizeof buf, "chunk %d\n", s->left);
    int rc = evx_request_write(s->req, buf, (size_t)n);
    if (rc == EVX_OK) {
      s->left--;
      evx_call_later(F.loop, 20, stream_tick, s);
      return;
    }
    s->write_rc = rc;
  }
  s->end_rc = s->use_finish ? evx_request_finish(s->req, 200, NULL, "last\n", 5) : evx_request_end(s->req);
  sem_post(&ended_sem);
}

static void stream_closed(evx_request *req, void *arg) {
  (void)req;
  ((stream *)arg)->closed = 1;
  sem_post(&closed_sem);
}

static int start_rc, start_again_rc, hdr_after_start_rc;

static void h_stream(evx_request *req, void *arg) {
  (void)arg;
  const char *n = evx_request_query(req, "n");
  memset(&S, 0, sizeof S);
  S.req = req;
  S.left = n ? atoi(n) : 3;
  S.use_finish = evx_request_query(req, "finish") != NULL;
  evx_request_set_header(req, "X-Stream", "yes");
  start_rc = evx_request_start_chunked(req, 200, "text/plain");
  start_again_rc = evx_request_start_chunked(req, 200, "text/plain");
  hdr_after_start_rc = evx_request_set_header(req, "X-Late", "1");
  evx_request_on_close(req, stream_closed, &S);
  evx_call_later(F.loop, 20, stream_tick, &S);
}

static void h_hello(evx_request *req, void *arg) {
  (void)arg;
  evx_request_finish(req, 200, NULL, "hello", 5);
}

static tc_resp ch_resp[4];
static int ch_rc[4], ch_eof10;

static void *chunk_client(void *arg) {
  (void)arg;
  int fd = tc_connect(F.port);
  static tc_conn c;
  tc_conn_init(&c, fd);
  tc_send(fd, "GET /stream?n=3 HTTP/1.1\r\nHost: t\r\n\r\n");
  ch_rc[0] = tc_read_resp(&c, &ch_resp[0], 0);
  tc_sem_wait(&ended_sem);
  /* keep-alive after a stream */
  tc_send(fd, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
  ch_rc[1] = tc_read_resp(&c, &ch_resp[1], 0);
  /* finish on a stream writes a last chunk and ends it */
  tc_send(fd, "GET /stream?n=2&finish=1 HTTP/1.1\r\nHost: t\r\n\r\n");
  ch_rc[2] = tc_read_resp(&c, &ch_resp[2], 0);
  tc_sem_wait(&ended_sem);
  close(fd);
  /* HTTP/1.0: no chunked encoding; the end closes the connection */
  fd = tc_connect(F.port);
  tc_conn_init(&c, fd);
  tc_send(fd, "GET /stream?n=2 HTTP/1.0\r\n\r\n");
  ch_rc[3] = tc_read_resp(&c, &ch_resp[3], 0);
  ch_eof10 = c.eof;
  tc_sem_wait(&ended_sem);
  close(fd);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_chunked) {
  sem_init(&closed_sem, 0, 0);
  sem_init(&ended_sem, 0, 0);
  /* the request timeout (50 ms) stops once the stream started (it lasts ~80 ms) */
  tc_fixture_init(&F, &(evx_http_opts){.request_timeout_ms = 50});
  evx_http_route(F.http, "GET", "/stream", 0, h_stream, NULL);
  evx_http_route(F.http, "GET", "/hello", 0, h_hello, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, chunk_client, NULL);
  for (int i = 0; i < 4; i++) ck_assert_int_eq(ch_rc[i], 0);
  ck_assert_int_eq(start_rc, EVX_OK);
  ck_assert_int_eq(start_again_rc, EVX_EINVAL);
  ck_assert_int_eq(hdr_after_start_rc, EVX_EINVAL);
  ck_assert_int_eq(ch_resp[0].status, 200);
  ck_assert(ch_resp[0].chunked);
  ck_assert_int_eq(ch_resp[0].nchunks, 3);
  ck_assert_str_eq(ch_resp[0].body, "chunk 3\nchunk 2\nchunk 1\n");
  ck_assert_str_eq(tc_header(&ch_resp[0], "X-Stream"), "yes");
  ck_assert_str_eq(tc_header(&ch_resp[0], "Content-Type"), "text/plain");
  ck_assert_int_eq(ch_resp[1].status, 200);
  ck_assert_str_eq(ch_resp[1].body, "hello");
  ck_assert(ch_resp[2].chunked);
  ck_assert_str_eq(ch_resp[2].body, "chunk 2\nchunk 1\nlast\n");
  ck_assert(!ch_resp[3].chunked);
  ck_assert_str_eq(ch_resp[3].body, "chunk 2\nchunk 1\n");
  ck_assert(ch_eof10);
  ck_assert_int_eq(S.end_rc, EVX_OK);
  for (int i = 0; i < 4; i++) tc_resp_free(&ch_resp[i]);
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.timed_out, 0);
  ck_assert_uint_eq(st.bytes_out, 24 + 5 + 21 + 16);
  tc_fixture_done(&F);
}
END_TEST

/* ---- the client leaves mid-stream ------------------------------------- */

static int mid_got_first;

static void *leave_client(void *arg) {
  (void)arg;
  int fd = tc_connect(F.port);
  tc_conn c;
  tc_conn_init(&c, fd);
  tc_send(fd, "GET /stream?n=100000 HTTP/1.1\r\nHost: t\r\n\r\n");
  char line[256];
  /* status line, headers, first chunk size line */
  while (tc_line(&c, line, sizeof line) == 0 && line[0]) {
  }
  mid_got_first = tc_line(&c, line, sizeof line) == 0 && strtol(line, NULL, 16) > 0;
  close(fd);
  tc_sem_wait(&ended_sem); /* the stream saw the client leave and ended */
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_leave_mid_stream) {
  sem_init(&closed_sem, 0, 0);
  sem_init(&ended_sem, 0, 0);
  tc_fixture_init(&F, NULL);
  evx_http_route(F.http, "GET", "/stream", 0, h_stream, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, leave_client, NULL);
  ck_assert(mid_got_first);
  ck_assert_int_eq(S.closed, 1);
  ck_assert_int_eq(S.write_rc, EVX_EGONE);
  ck_assert_int_eq(S.end_rc, EVX_EGONE);
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.gone, 1);
  tc_fixture_done(&F);
}
END_TEST

static Suite *chunked_suite(void) {
  Suite *s = suite_create("http_chunked");
  TCase *tc = tcase_create("chunked");
  tcase_set_timeout(tc, 20);
  tcase_add_test(tc, test_chunked);
  tcase_add_test(tc, test_leave_mid_stream);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return evx_test_main(chunked_suite()); }
