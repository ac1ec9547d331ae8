/* examples/chat end to end (the real binary, raw sockets): post and read
 * updates since a cursor, a poll held until a newer message arrives, a poll
 * that times out empty, a client that leaves while held (499, cleaned up:
 * later posts do not write to it), the message cache, bad input, and a
 * clean stop with a poll held. */
#include "test_http_util.h"

#define EVX_HELLO_BIN EVX_CHAT_BIN /* the spawn helper serves any example binary */
#include "test_hello_server.h"

static server S;

static int post(int port, const char *body, tc_resp *r) {
  char raw[512];
  snprintf(raw, sizeof raw,
           "POST /a/message/new HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n%s",
           strlen(body), body);
  return tc_request(port, raw, r);
}

START_TEST(test_chat) {
  char *argv[] = {"evx_chat", "--port", "0", "--poll-ms", "300", NULL};
  ck_assert_int_eq(srv_start(&S, argv), 0);
  tc_resp r;
  ck_assert_int_eq(tc_get(S.port, "/", &r), 0);
  ck_assert_int_eq(r.status, 200);
  ck_assert_ptr_nonnull(strstr(r.body, "/a/message/updates"));
  tc_resp_free(&r);

  ck_assert_int_eq(post(S.port, "hello \"world\"", &r), 0);
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(r.body, "{\"id\":1,\"body\":\"hello \\\"world\\\"\"}\n");
  tc_resp_free(&r);
  ck_assert_int_eq(post(S.port, "", &r), 0);
  ck_assert_int_eq(r.status, 400);
  tc_resp_free(&r);

  /* updates since 0: at once */
  ck_assert_int_eq(tc_get(S.port, "/a/message/updates?cursor=0", &r), 0);
  ck_assert_str_eq(r.body, "{\"messages\":[{\"id\":1,\"body\":\"hello \\\"world\\\"\"}]}\n");
  tc_resp_free(&r);

  /* up to date: held until a newer message */
  int fd = tc_connect(S.port);
  tc_send(fd, "GET /a/message/updates?cursor=1 HTTP/1.1\r\nHost: t\r\n\r\n");
  tc_sleep_ms(50); /* time is the subject: the poll must be held, then woken */
  ck_assert_int_eq(post(S.port, "second", &r), 0);
  tc_resp_free(&r);
  tc_conn c;
  tc_conn_init(&c, fd);
  ck_assert_int_eq(tc_read_resp(&c, &r, 0), 0);
  ck_assert_str_eq(r.body, "{\"messages\":[{\"id\":2,\"body\":\"second\"}]}\n");
  tc_resp_free(&r);
  close(fd);

  /* nothing newer within --poll-ms: an empty list */
  ck_assert_int_eq(tc_get(S.port, "/a/message/updates?cursor=2", &r), 0);
  ck_assert_str_eq(r.body, "{\"messages\":[]}\n");
  tc_resp_free(&r);

  /* a client that leaves while held is cleaned up (499), the server goes on */
  fd = tc_connect(S.port);
  tc_send(fd, "POST /a/message/updates?cursor=2 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
  tc_sleep_ms(50);
  close(fd);
  ck_assert(srv_wait_log(&S, "POST /a/message/updates 499"));

  /* the cache keeps the last 200: a cursor of 0 gets ids 51..250 */
  for (int i = 3; i <= 250; i++) {
    char m[16];
    snprintf(m, sizeof m, "m%d", i);
    ck_assert_int_eq(post(S.port, m, &r), 0);
    ck_assert_int_eq(r.status, 200);
    tc_resp_free(&r);
  }
  ck_assert_int_eq(tc_get(S.port, "/a/message/updates?cursor=0", &r), 0);
  ck_assert(strncmp(r.body, "{\"messages\":[{\"id\":51,\"body\":\"m51\"}", 35) == 0);
  ck_assert_ptr_nonnull(strstr(r.body, "{\"id\":250,\"body\":\"m250\"}]}"));
  ck_assert_ptr_null(strstr(r.body, "\"id\":50,"));
  tc_resp_free(&r);

  /* a clean stop with a poll held: it is answered, exit 0 */
  fd = tc_connect(S.port);
  tc_send(fd, "GET /a/message/updates?cursor=250 HTTP/1.1\r\nHost: t\r\n\r\n");
  tc_sleep_ms(50);
  kill(S.pid, SIGTERM);
  tc_conn_init(&c, fd);
  ck_assert_int_eq(tc_read_resp(&c, &r, 0), 0);
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(r.body, "{\"messages\":[]}\n");
  tc_resp_free(&r);
  close(fd);
  ck_assert_int_eq(srv_wait(&S), 0);
  ck_assert_ptr_nonnull(strstr(S.log, "evx_chat: stopped"));
}
END_TEST

Suite *chat_suite(void);
Suite *chat_suite(void) {
  Suite *s = suite_create("chat");
  TCase *tc = tcase_create("chat");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_chat);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return evx_test_main(chat_suite()); }
