/* evexec's own error replies, over raw sockets: a chunked body that grows
 * over max_body_size gets evexec's 413 (text body, Connection: close,
 * logged with its bytes, counted in the stats and the metrics) - not
 * evhttp's unlogged HTML one; a chunked body of exactly max_body_size is
 * served; huge chunk sizes are 4xx; and the 503 that evx_http_shutdown
 * writes straight to a held request's socket is logged with its bytes. */
#include "test_http_util.h"

#include <evexec/metrics.h>

static tc_fixture F;

/* The access log: "METHOD PATH STATUS BYTES" per entry (loop thread; read
 * by the test after the loop stopped). */
static char logs[16][96];
static int nlogs;

static void test_log(void *arg, const evx_http_log_entry *e) {
  (void)arg;
  if (nlogs < 16)
    snprintf(logs[nlogs++], sizeof logs[0], "%s %s %d %llu", e->method, e->path, e->status,
             (unsigned long long)e->bytes);
}

static void h_hello(evx_request *req, void *arg) {
  (void)arg;
  size_t n;
  evx_request_body(req, &n);
  evx_request_finishf(req, 200, NULL, "ok %zu", n);
}

/* "<hex size>[ext]\r\n" + size bytes of 'b' + "\r\n", appended to buf at *len. */
static void add_chunk(char *buf, size_t *len, size_t size, const char *ext) {
  *len += (size_t)sprintf(buf + *len, "%zx%s\r\n", size, ext);
  memset(buf + *len, 'b', size);
  *len += size;
  memcpy(buf + *len, "\r\n", 2);
  *len += 2;
}

static const char chunked_head[] = "POST /hello HTTP/1.1\r\nHost: t\r\n"
                                   "Transfer-Encoding: chunked\r\n\r\n";

/* ---- a chunked body over the limit ------------------------------------ */

static tc_resp ov_resp[3];
static int ov_eof;

static void *over_client(void *arg) {
  (void)arg;
  char *raw = malloc(4096);
  size_t len = 0;
  /* A: exactly max_body_size (1000) in two chunks, one with an extension */
  len += (size_t)sprintf(raw + len, "%s", chunked_head);
  add_chunk(raw, &len, 500, ";a=b");
  add_chunk(raw, &len, 500, "");
  len += (size_t)sprintf(raw + len, "0\r\n\r\n");
  /* B, pipelined behind A: 500 + 501 bytes, over by one */
  len += (size_t)sprintf(raw + len, "%s", chunked_head);
  add_chunk(raw, &len, 500, "");
  int fd = tc_connect(F.port);
  tc_send_n(fd, raw, len);
  /* the chunk that goes over, in a later write (evhttp may be reading B's
   * body by then; the answer must be the same) */
  len = 0;
  add_chunk(raw, &len, 501, "");
  len += (size_t)sprintf(raw + len, "0\r\n\r\n");
  tc_send_n(fd, raw, len);
  tc_conn c;
  tc_conn_init(&c, fd);
  tc_read_resp(&c, &ov_resp[0], 0);
  tc_read_resp(&c, &ov_resp[1], 0);
  ov_eof = tc_wait_eof(&c);
  close(fd);
  free(raw);
  tc_get(F.port, "/hello", &ov_resp[2]); /* the server goes on */
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_chunked_over_limit) {
  nlogs = 0;
  tc_fixture_init(&F, &(evx_http_opts){.max_body_size = 1000, .log = test_log});
  evx_http_route(F.http, NULL, "/hello", 0, h_hello, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, over_client, NULL);
  ck_assert_int_eq(ov_resp[0].status, 200);
  ck_assert_str_eq(ov_resp[0].body, "ok 1000"); /* at the limit: served */
  ck_assert_int_eq(ov_resp[1].status, 413);
  ck_assert_str_eq(ov_resp[1].body, "Payload Too Large\n");
  ck_assert_str_eq(tc_header(&ov_resp[1], "Content-Type"), "text/plain; charset=utf-8");
  ck_assert_str_eq(tc_header(&ov_resp[1], "Connection"), "close");
  ck_assert(ov_eof);
  ck_assert_int_eq(ov_resp[2].status, 200);
  for (int i = 0; i < 3; i++) tc_resp_free(&ov_resp[i]);
  ck_assert_int_eq(nlogs, 3);
  ck_assert_str_eq(logs[0], "POST /hello 200 7");
  ck_assert_str_eq(logs[1], "POST - 413 18");
  ck_assert_str_eq(logs[2], "GET /hello 200 4");
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.requests, 2); /* the 413 never became a request */
  ck_assert_uint_eq(st.status[2], 2);
  ck_assert_uint_eq(st.status[4], 1);
  ck_assert_uint_eq(st.bad_requests, 1);
  ck_assert_uint_eq(st.bytes_out, 7 + 18 + 4);
  char *text = NULL;
  size_t tlen = 0;
  ck_assert_int_eq(evx_loop_metrics_text(F.loop, &text, &tlen), EVX_OK);
  ck_assert_ptr_nonnull(strstr(text, "method=\"POST\",code=\"4xx\"} 1\n"));
  evx_free(text);
  tc_fixture_done(&F);
}
END_TEST

/* ---- huge chunk sizes ---------------------------------------------------- */

/* Each: the chunk-size lines sent after the head (with data where a size
 * fits), and the status evexec must answer. */
static const struct {
  size_t first;     /* a first chunk of this many bytes (0: none) */
  const char *line; /* then this chunk-size line */
  int status;
} huge_cases[] = {
    {0, "fffffffffffffff", 413},    /* 16^15 - 1: the largest the scanner reads */
    {0, "FFFFFFFFFFFFFFF;x=y", 413}, /* with an extension */
    {999, "fffffffffffffff", 413},  /* a sum far above the limit (it must not wrap) */
    {1000, "1", 413},               /* one byte over after exactly the limit */
    {0, "ffffffffffffffff", 400},   /* 16 digits: 2^64 - 1 */
    {0, "10000000000000000", 400},  /* 2^64: wraps to 0 in 64 bits */
    {0, "-1", 400},
    {0, "0x10", 400},
};
#define NHUGE (sizeof huge_cases / sizeof huge_cases[0])
static tc_resp huge_resp[NHUGE + 1];
static int huge_eof[NHUGE];

static void *huge_client(void *arg) {
  (void)arg;
  char *raw = malloc(4096);
  for (size_t i = 0; i < NHUGE; i++) {
    size_t len = (size_t)sprintf(raw, "%s", chunked_head);
    if (huge_cases[i].first) add_chunk(raw, &len, huge_cases[i].first, "");
    len += (size_t)sprintf(raw + len, "%s\r\n", huge_cases[i].line);
    int fd = tc_connect(F.port);
    tc_send_n(fd, raw, len);
    tc_conn c;
    tc_conn_init(&c, fd);
    tc_read_resp(&c, &huge_resp[i], 0);
    huge_eof[i] = tc_wait_eof(&c);
    close(fd);
  }
  free(raw);
  tc_get(F.port, "/hello", &huge_resp[NHUGE]);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_huge_chunk_sizes) {
  nlogs = 0;
  tc_fixture_init(&F, &(evx_http_opts){.max_body_size = 1000, .log = test_log});
  evx_http_route(F.http, NULL, "/hello", 0, h_hello, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, huge_client, NULL);
  for (size_t i = 0; i < NHUGE; i++) {
    ck_assert_msg(huge_resp[i].status == huge_cases[i].status, "%zu + %s: %d, not %d",
                  huge_cases[i].first, huge_cases[i].line, huge_resp[i].status,
                  huge_cases[i].status);
    ck_assert_str_eq(huge_resp[i].body,
                     huge_cases[i].status == 413 ? "Payload Too Large\n" : "Bad Request\n");
    ck_assert(huge_eof[i]);
    char want[64];
    snprintf(want, sizeof want, "POST - %d %d", huge_cases[i].status,
             huge_cases[i].status == 413 ? 18 : 12);
    ck_assert_str_eq(logs[i], want);
  }
  ck_assert_int_eq(huge_resp[NHUGE].status, 200);
  for (size_t i = 0; i <= NHUGE; i++) tc_resp_free(&huge_resp[i]);
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.requests, 1);
  ck_assert_uint_eq(st.bad_requests, NHUGE);
  ck_assert_uint_eq(st.status[4], NHUGE);
  tc_fixture_done(&F);
}
END_TEST

/* ---- the shutdown's 503 ------------------------------------------------ */

static sem_t held_sem;
static evx_request *held_req;
static evx_future *shut_f;
static int late_rc;
static tc_resp sd_resp;
static int sd_eof;

static void h_hold(evx_request *req, void *arg) {
  (void)arg;
  held_req = req;
  sem_post(&held_sem);
}

static void start_shutdown(void *arg) {
  (void)arg;
  shut_f = evx_http_shutdown(F.http, 0); /* no grace: the held request gets 503 */
}

static void finish_late(void *arg) {
  (void)arg;
  late_rc = evx_request_finish(held_req, 200, NULL, "late", 4);
}

static void *shutdown_client(void *arg) {
  (void)arg;
  int fd = tc_connect(F.port);
  tc_send(fd, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
  tc_sem_wait(&held_sem);
  tc_on_loop(F.loop, start_shutdown, NULL);
  tc_conn c;
  tc_conn_init(&c, fd);
  tc_read_resp(&c, &sd_resp, 0);
  sd_eof = tc_wait_eof(&c);
  close(fd);
  tc_on_loop(F.loop, finish_late, NULL);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_shutdown_503_logged) {
  nlogs = 0;
  sem_init(&held_sem, 0, 0);
  tc_fixture_init(&F, &(evx_http_opts){.log = test_log});
  evx_http_route(F.http, NULL, "/hold", 0, h_hold, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, shutdown_client, NULL);
  ck_assert_int_eq(sd_resp.status, 503);
  ck_assert_str_eq(sd_resp.body, "shutting down\n");
  ck_assert(sd_eof);
  tc_resp_free(&sd_resp);
  ck_assert_int_eq(late_rc, EVX_ECLOSED);
  ck_assert_int_eq(nlogs, 1);
  ck_assert_str_eq(logs[0], "GET /hold 503 14");
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.status[5], 1);
  ck_assert_uint_eq(st.bytes_out, 14);
  ck_assert_ptr_nonnull(shut_f);
  evx_future_release(shut_f);
  sem_destroy(&held_sem);
  tc_fixture_done(&F);
}
END_TEST

int main(void) {
  Suite *s = suite_create("http_own_errors");
  TCase *tc = evx_test_tcase(s, "own_errors", 30);
  tcase_add_test(tc, test_chunked_over_limit);
  tcase_add_test(tc, test_huge_chunk_sizes);
  tcase_add_test(tc, test_shutdown_503_logged);
  return evx_test_main(s);
}
