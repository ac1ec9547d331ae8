/* Route patterns (/users/{id} + evx_request_param), per-route options
 * (request timeout), the before-handler hook, evx_request_finish_str, the
 * access log's bytes for evexec's own 504, and the warning at evx_http_free
 * for requests their handler never finished. */
#include "test_http_util.h"

#include <fcntl.h>

static tc_fixture F;

/* ---- handlers --------------------------------------------------------- */

static void h_params(evx_request *req, void *arg) {
  const char *id = evx_request_param(req, "id");
  const char *post = evx_request_param(req, "post");
  const char *none = evx_request_param(req, "nope");
  evx_request_finishf(req, 200, NULL, "%s id=%s post=%s none=%s", (const char *)arg,
                      id ? id : "(null)", post ? post : "(null)", none ? none : "(null)");
}

/* ---- patterns --------------------------------------------------------- */

typedef struct route_case {
  const char *path;
  int status;
  const char *body; /* exact body, or NULL */
} route_case;

static const route_case cases[] = {
    {"/users/42", 200, "user id=42 post=(null) none=(null)"},
    {"/users/me", 200, "me id=(null) post=(null) none=(null)"}, /* exact beats pattern */
    {"/users/7/posts/x%20y", 200, "post id=7 post=x y none=(null)"}, /* decoded */
    {"/users/7/posts/new", 200, "new-post id=7 post=(null) none=(null)"}, /* more literal wins */
    {"/users/", 404, NULL},               /* {id} needs a non-empty segment */
    {"/users//posts/1", 404, NULL},
    {"/users/4/2", 200, "prefix id=(null) post=(null) none=(null)"}, /* not {id}: prefix */
    {"/users/42/", 404, NULL}, /* no trailing segment in the pattern */
};
#define NCASES (sizeof cases / sizeof cases[0])
static tc_resp resps[NCASES];
static tc_resp del_resp;

static void *pattern_client(void *arg) {
  (void)arg;
  for (size_t i = 0; i < NCASES; i++) tc_get(F.port, cases[i].path, &resps[i]);
  tc_request(F.port, "DELETE /users/42 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", &del_resp);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_patterns) {
  tc_fixture_init(&F, NULL);
  ck_assert_int_eq(evx_http_route(F.http, "GET", "/users/{id}", 0, h_params, "user"), EVX_OK);
  ck_assert_int_eq(evx_http_route(F.http, "PUT", "/users/{id}", 0, h_params, "user"), EVX_OK);
  ck_assert_int_eq(evx_http_route(F.http, "GET", "/users/me", 0, h_params, "me"), EVX_OK);
  ck_assert_int_eq(evx_http_route(F.http, "GET", "/users/{id}/posts/{post}", 0, h_params, "post"),
                   EVX_OK);
  ck_assert_int_eq(evx_http_route(F.http, "GET", "/users/{id}/posts/new", 0, h_params, "new-post"),
                   EVX_OK);
  ck_assert_int_eq(evx_http_route(F.http, "GET", "/users/4/", EVX_ROUTE_PREFIX, h_params, "prefix"),
                   EVX_OK);
  /* malformed patterns and misuse */
  static const char *bad[] = {"/users/{}", "/users/{id", "/users/id}", "/users/x{id}",
                              "/users/{id}x", "/users/{i-d}", "/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}/{j}/{k}/{l}/{m}/{n}/{o}/{p}/{q}"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    ck_assert_msg(evx_http_route(F.http, "GET", bad[i], 0, h_params, "x") == EVX_EINVAL, "%s", bad[i]);
  ck_assert_int_eq(evx_http_route(F.http, "GET", "/p/{id}/", EVX_ROUTE_PREFIX, h_params, "x"),
                   EVX_EINVAL);
  ck_assert_int_eq(evx_http_route(F.http, "GET", "/users/{id}", 0, h_params, "dup"), EVX_EINVAL);
  ck_assert_ptr_nonnull(evx_http_route_find(F.http, "GET", "/users/{id}", 0));
  ck_assert_ptr_null(evx_http_route_find(F.http, "POST", "/users/{id}", 0));
  ck_assert_ptr_null(evx_http_route_find(F.http, "GET", "/users/{id}", EVX_ROUTE_PREFIX));
  ck_assert_ptr_null(evx_request_param(NULL, "id"));
  tc_fixture_bind(&F);
  tc_fixture_run(&F, pattern_client, NULL);
  for (size_t i = 0; i < NCASES; i++) {
    ck_assert_msg(resps[i].status == cases[i].status, "%s: %d", cases[i].path, resps[i].status);
    if (cases[i].body) ck_assert_str_eq(resps[i].body, cases[i].body);
    tc_resp_free(&resps[i]);
  }
  ck_assert_int_eq(del_resp.status, 405);
  ck_assert_str_eq(tc_header(&del_resp, "Allow"), "GET, PUT");
  tc_resp_free(&del_resp);
  tc_fixture_done(&F);
}
END_TEST

/* ---- per-route request timeout ---------------------------------------- */

static char log_lines[8][128];
static int nlog;
static void test_log(void *arg, const evx_http_log_entry *e) {
  (void)arg;
  if (nlog < 8)
    snprintf(log_lines[nlog++], sizeof log_lines[0], "%s %s %d %lluB", e->method, e->path,
             e->status, (unsigned long long)e->bytes);
}

static int late_rc[2], nlate;
static void finish_late(void *arg) {
  late_rc[nlate++] = evx_request_finish_str(arg, 200, NULL, "late\n");
}
static int two_late(void *arg) {
  (void)arg;
  return nlate == 2;
}
/* Hold the request and finish it after ?ms= milliseconds. */
static void h_later(evx_request *req, void *arg) {
  (void)arg;
  const char *ms = evx_request_query(req, "ms");
  ck_assert_ptr_nonnull(evx_call_later(F.loop, (uint64_t)atoi(ms ? ms : "0"), finish_late, req));
}

static tc_resp slow_resp, fast_resp;
static void *timeout_client(void *arg) {
  (void)arg;
  /* /long may take 400 ms though the server's timeout is 100 ms */
  tc_get(F.port, "/long?ms=400", &slow_resp);
  /* /api is cut at 100 ms: 504 with the 16-byte body */
  tc_get(F.port, "/api?ms=300", &fast_resp);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_route_timeout) {
  nlog = nlate = 0;
  tc_fixture_init(&F, &(evx_http_opts){.request_timeout_ms = 100, .log = test_log});
  ck_assert_int_eq(evx_http_route(F.http, "GET", "/long", 0, h_later, NULL), EVX_OK);
  ck_assert_int_eq(evx_http_route(F.http, "GET", "/api", 0, h_later, NULL), EVX_OK);
  evx_route *rt = evx_http_route_find(F.http, "GET", "/long", 0);
  ck_assert_ptr_nonnull(rt);
  ck_assert_int_eq(evx_route_set_timeout(rt, 2000), EVX_OK);
  ck_assert_int_eq(evx_route_set_timeout(NULL, 10), EVX_EINVAL);
  tc_fixture_bind(&F);
  uint64_t t0 = evx_now_ns();
  tc_fixture_run(&F, timeout_client, NULL);
  uint64_t ms = (evx_now_ns() - t0) / 1000000;
  ck_assert_int_eq(slow_resp.status, 200);
  ck_assert_str_eq(slow_resp.body, "late\n");
  ck_assert_int_eq(fast_resp.status, 504);
  ck_assert_str_eq(fast_resp.body, "request timeout\n");
  ck_assert_uint_ge(ms, 490);
  ck_assert_int_eq(nlog, 2);
  ck_assert_str_eq(log_lines[0], "GET /long 200 5B");
  ck_assert_str_eq(log_lines[1], "GET /api 504 16B"); /* the body evexec wrote itself */
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.bytes_out, 5 + 16);
  tc_resp_free(&slow_resp);
  tc_resp_free(&fast_resp);
  /* /api's handler finishes later: finish says it timed out */
  evx_test_run_until(F.loop, two_late, NULL, 2000);
  ck_assert_int_eq(late_rc[0], EVX_OK);
  ck_assert_int_eq(late_rc[1], EVX_ETIMEDOUT);
  tc_fixture_done(&F);
}
END_TEST

/* ---- 503 bytes in the log --------------------------------------------- */

static void h_busy(evx_request *req, void *arg) {
  (void)arg;
  evx_request_reply_busy(req, 2);
}
static tc_resp busy_resp;
static void *busy_client(void *arg) {
  (void)arg;
  tc_get(F.port, "/busy", &busy_resp);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_busy_logged_with_bytes) {
  nlog = 0;
  tc_fixture_init(&F, &(evx_http_opts){.log = test_log});
  evx_http_route(F.http, "GET", "/busy", 0, h_busy, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, busy_client, NULL);
  ck_assert_int_eq(busy_resp.status, 503);
  ck_assert_str_eq(tc_header(&busy_resp, "Retry-After"), "2");
  char want[64];
  snprintf(want, sizeof want, "GET /busy 503 %zuB", busy_resp.body_len);
  ck_assert_uint_gt(busy_resp.body_len, 0);
  ck_assert_int_eq(nlog, 1);
  ck_assert_str_eq(log_lines[0], want);
  tc_resp_free(&busy_resp);
  tc_fixture_done(&F);
}
END_TEST

/* ---- before hook ------------------------------------------------------ */

static int handler_calls;
static void h_secret(evx_request *req, void *arg) {
  (void)arg;
  handler_calls++;
  evx_request_finish_str(req, 200, "text/plain", "secret\n");
}

static void before(evx_request *req, void *arg) {
  evx_request_set_header(req, "X-Request-Id", (const char *)arg);
  const char *auth = evx_request_header(req, "Authorization");
  if (!auth || strcmp(auth, "Bearer ok") != 0) evx_request_finish_str(req, 401, NULL, "no\n");
}

static tc_resp ok_resp, denied_resp, missing_resp;
static void *before_client(void *arg) {
  (void)arg;
  tc_request(F.port, "GET /s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer ok\r\nConnection: close\r\n\r\n",
             &ok_resp);
  tc_request(F.port, "GET /s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", &denied_resp);
  tc_get(F.port, "/missing", &missing_resp);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_before_hook) {
  handler_calls = 0;
  tc_fixture_init(&F, NULL);
  ck_assert_int_eq(evx_http_set_before(NULL, before, NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_http_set_before(F.http, before, "rid-1"), EVX_OK);
  ck_assert_int_eq(evx_http_route(F.http, "GET", "/s", 0, h_secret, NULL), EVX_OK);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, before_client, NULL);
  ck_assert_int_eq(ok_resp.status, 200);
  ck_assert_str_eq(ok_resp.body, "secret\n");
  ck_assert_str_eq(tc_header(&ok_resp, "X-Request-Id"), "rid-1");
  ck_assert_str_eq(tc_header(&ok_resp, "Content-Length"), "7"); /* finish_str counted it */
  ck_assert_int_eq(denied_resp.status, 401);
  ck_assert_str_eq(denied_resp.body, "no\n");
  ck_assert_str_eq(tc_header(&denied_resp, "X-Request-Id"), "rid-1");
  ck_assert_int_eq(handler_calls, 1);
  ck_assert_int_eq(missing_resp.status, 404);
  ck_assert_ptr_null(tc_header(&missing_resp, "X-Request-Id")); /* not for evexec's own replies */
  tc_resp_free(&ok_resp);
  tc_resp_free(&denied_resp);
  tc_resp_free(&missing_resp);
  tc_fixture_done(&F);
}
END_TEST

/* ---- warning at free for requests never finished ---------------------- */

static evx_request *kept;
static void h_keep(evx_request *req, void *arg) {
  (void)arg;
  kept = req; /* a buggy handler: never finished */
}

static tc_resp keep_resp;
static void *keep_client(void *arg) {
  (void)arg;
  tc_get(F.port, "/keep", &keep_resp); /* 504 after 50 ms */
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_free_warns_unfinished) {
  tc_fixture_init(&F, &(evx_http_opts){.request_timeout_ms = 50});
  evx_http_route(F.http, "GET", "/keep", 0, h_keep, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, keep_client, NULL);
  ck_assert_int_eq(keep_resp.status, 504);
  tc_resp_free(&keep_resp);
  /* capture stderr around the free */
  char path[] = "/tmp/evx-routes-XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  unlink(path);
  fflush(stderr);
  int saved = dup(2);
  dup2(fd, 2);
  evx_http_free(F.http);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  char buf[512] = {0};
  ck_assert_int_gt(pread(fd, buf, sizeof buf - 1, 0), 0);
  close(fd);
  ck_assert_msg(strstr(buf, "evx_http_free: 1 request(s) not finished") != NULL, "%s", buf);
  ck_assert_msg(strstr(buf, "0 held, 1 already answered") != NULL, "%s", buf);
  ck_assert_int_eq(evx_request_finish(kept, 200, NULL, NULL, 0), EVX_ETIMEDOUT);
  tc_spin(&F);
  evx_loop_free(F.loop);
  ck_assert_uint_eq(evx_request_live_count(), 0);
}
END_TEST

static Suite *routes_suite(void) {
  Suite *s = suite_create("http_routes");
  TCase *tc = evx_test_tcase(s, "routes", 20);
  tcase_add_test(tc, test_patterns);
  tcase_add_test(tc, test_route_timeout);
  tcase_add_test(tc, test_busy_logged_with_bytes);
  tcase_add_test(tc, test_before_hook);
  tcase_add_test(tc, test_free_warns_unfinished);
  return s;
}

int main(void) { return evx_test_main(routes_suite()); }
