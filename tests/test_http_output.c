/* Bounded output: a chunked reply to a client that stops reading. Above
 * max_output_buffer evx_request_write answers EVX_EBUSY; the drain
 * notification (callback, or future) says when to go on. The server never
 * buffers more than the mark plus one write, and the client gets every byte
 * in order once it reads. */
#include "test_http_util.h"

#include "http-test.h"

#define HWM (64 * 1024)
#define CHUNK (16 * 1024)
#define TOTAL (16 * 1024 * 1024) /* well above what the socket buffers hold */

static tc_fixture F;
typedef struct streamer {
  evx_request *req;
  size_t sent;
  size_t max_pending;
  int busy, use_future, drains;
} streamer;
static streamer SR;

static void pump(streamer *s);

static void on_drained_cb(evx_request *req, void *arg) {
  (void)req;
  streamer *s = arg;
  s->drains++;
  pump(s);
}

static void on_drained_f(evx_future *f, void *arg) {
  streamer *s = arg;
  int st = evx_future_status(f);
  evx_future_release(f);
  s->drains++;
  if (st != EVX_OK) {
    evx_request_end(s->req);
    return;
  }
  pump(s);
}

static void pump(streamer *s) {
  static char buf[CHUNK];
  while (s->sent < TOTAL) {
    for (size_t i = 0; i < CHUNK; i++) buf[i] = (char)((s->sent + i) % 251);
    int rc = evx_request_write(s->req, buf, CHUNK);
    size_t pend = evx__request_out_pending(s->req);
    if (pend > s->max_pending) s->max_pending = pend;
    if (rc == EVX_EBUSY) {
      s->busy++;
      if (s->use_future) evx_future_on_done(evx_request_drained(s->req), on_drained_f, s);
      else evx_request_on_drain(s->req, on_drained_cb, s);
      return;
    }
    if (rc != EVX_OK) {
      evx_request_end(s->req);
      return;
    }
    s->sent += CHUNK;
  }
  evx_request_end(s->req);
}

static void h_stream(evx_request *req, void *arg) {
  (void)arg;
  memset(&SR, 0, sizeof SR);
  SR.req = req;
  SR.use_future = evx_request_query(req, "f") != NULL;
  evx_request_start_chunked(req, 200, "application/octet-stream");
  pump(&SR);
}

static tc_resp out_resp;
static int out_ok;

static void *client(void *arg) {
  const char *path = arg;
  int fd = tc_connect(F.port);
  char req[128];
  snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", path);
  tc_send(fd, req);
  tc_sleep_ms(300); /* a stalled reader (time is the subject) */
  static tc_conn c;
  tc_conn_init(&c, fd);
  tc_read_resp(&c, &out_resp, 0);
  out_ok = out_resp.body_len == TOTAL;
  for (size_t i = 0; out_ok && i < out_resp.body_len; i++)
    if (out_resp.body[i] != (char)(i % 251)) out_ok = 0;
  close(fd);
  evx_loop_stop(F.loop);
  return NULL;
}

static void run(const char *path) {
  tc_fixture_init(&F, &(evx_http_opts){.max_output_buffer = HWM});
  evx_http_route(F.http, NULL, "/stream", 0, h_stream, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, client, (void *)path);
  fprintf(stderr, "output %s: %d x EBUSY, %d drains, most buffered %zu bytes (mark %d + one write %d)\n",
          path, SR.busy, SR.drains, SR.max_pending, HWM, CHUNK);
  ck_assert_int_eq(out_resp.status, 200);
  ck_assert(out_ok);
  ck_assert_int_gt(SR.busy, 0);
  ck_assert_int_eq(SR.drains, SR.busy);
  ck_assert_uint_le(SR.max_pending, HWM + CHUNK + 64); /* + chunk framing */
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.write_busy, (uint64_t)SR.busy);
  tc_resp_free(&out_resp);
  tc_fixture_done(&F);
}

START_TEST(test_drain_callback) { run("/stream"); }
END_TEST

START_TEST(test_drain_future) { run("/stream?f=1"); }
END_TEST

int main(void) {
  Suite *s = suite_create("http_output");
  TCase *tc = evx_test_tcase(s, "output", 30);
  tcase_add_test(tc, test_drain_callback);
  tcase_add_test(tc, test_drain_future);
  return evx_test_main(s);
}
