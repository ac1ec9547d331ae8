/* The built-in Prometheus endpoint: evx_http_route_metrics serves every
 * executor's and HTTP server's metrics plus an application source, and the
 * real parser (python3-prometheus-client) accepts the text and finds the
 * numbers. Also the builder's grouping and escaping, and an empty loop. */
#include "test_http_util.h"

#include <evexec/metrics.h>

#ifndef EVX_TEST_SRC_DIR
#error "EVX_TEST_SRC_DIR must name the tests/ folder"
#endif

static tc_fixture F;
static evx_executor *EX;

static void work(void *arg) { (void)arg; }
static void work_done(void *arg, int status) {
  evx_request_finishf(arg, status == EVX_OK ? 200 : 500, NULL, "done\n");
}
static void h_work(evx_request *req, void *arg) {
  (void)arg;
  if (evx_submit(EX, work, work_done, req) != EVX_OK) evx_request_reply_busy(req, 1);
}

static void app_metrics(evx_metrics *m, void *arg) {
  evx_metrics_gauge(m, "app_things", "Things the application has.", NULL, *(int *)arg);
  char esc[64], lb[96];
  snprintf(lb, sizeof lb, "who=\"%s\"", evx_metrics_escape("a \"b\"\\\n", esc, sizeof esc));
  evx_metrics_counter(m, "app_hits_total", NULL, lb, 7);
}

static tc_resp r1, r2, r404, rm;
static void *client(void *arg) {
  (void)arg;
  tc_get(F.port, "/work", &r1);
  tc_get(F.port, "/work", &r2);
  tc_get(F.port, "/nope", &r404);
  tc_get(F.port, "/metrics", &rm);
  evx_loop_stop(F.loop);
  return NULL;
}

static int run_check(const char *text, const char *expects) {
  char path[] = "/tmp/evx-metrics-XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/prom_check.py %s %s", EVX_TEST_SRC_DIR, path,
           expects);
  int st = system(cmd);
  unlink(path);
  return st;
}

START_TEST(test_metrics_endpoint) {
  int things = 3;
  tc_fixture_init(&F, NULL);
  EX = evx_executor_new(F.loop, &(evx_executor_opts){.threads = 2, .name = "pool"});
  ck_assert_ptr_nonnull(EX);
  evx_metrics_source *src = evx_metrics_source_new(F.loop, app_metrics, &things);
  ck_assert_ptr_nonnull(src);
  ck_assert_ptr_null(evx_metrics_source_new(F.loop, NULL, NULL));
  ck_assert_int_eq(evx_http_route(F.http, "GET", "/work", 0, h_work, NULL), EVX_OK);
  ck_assert_int_eq(evx_http_route_metrics(F.http, "/metrics"), EVX_OK);
  ck_assert_int_eq(evx_http_route_metrics(F.http, "/metrics"), EVX_EINVAL); /* twice */
  ck_assert_int_eq(evx_http_route_metrics(NULL, "/m"), EVX_EINVAL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, client, NULL);
  ck_assert_int_eq(r1.status, 200);
  ck_assert_int_eq(r404.status, 404);
  ck_assert_int_eq(rm.status, 200);
  ck_assert_str_eq(tc_header(&rm, "Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  /* one HELP/TYPE per family even with several members adding to it */
  const char *t = rm.body;
  ck_assert_ptr_nonnull(strstr(t, "# TYPE evx_executor_queued gauge\n"));
  ck_assert_ptr_null(strstr(strstr(t, "# TYPE evx_executor_queued gauge\n") + 1,
                            "# TYPE evx_executor_queued gauge\n"));
  ck_assert_ptr_nonnull(strstr(t, "app_hits_total{who=\"a \\\"b\\\"\\\\\\n\"} 7\n"));
  char expects[2048];
  snprintf(expects, sizeof expects,
           "'evx_executor_threads|executor=pool|= 2' "
           "'evx_executor_completed_total|executor=pool|= 2' "
           "'evx_executor_submitted_total|executor=pool|= 2' "
           "'evx_executor_queued|executor=pool|= 0' "
           "'evx_executor_run_seconds_count|executor=pool|= 2' "
           "'evx_http_responses_total|code=2xx,method=GET,port=%d|= 2' "
           "'evx_http_responses_total|code=4xx,method=GET,port=%d|= 1' "
           "'evx_http_requests_total|port=%d|= 4' "
           "'evx_http_request_duration_seconds_count|port=%d|= 3' "
           "'evx_http_response_bytes_total|port=%d|>= 10' "
           "'app_things||= 3'",
           F.port, F.port, F.port, F.port, F.port);
  int st = run_check(t, expects);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fprintf(stderr, "the text:\n%s", t);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "prom_check failed (text above)");
  /* the checker is not a rubber stamp: a wrong number fails it */
  st = run_check(t, "'evx_executor_completed_total|executor=pool|= 3'");
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1);
  tc_resp_free(&r1);
  tc_resp_free(&r2);
  tc_resp_free(&r404);
  tc_resp_free(&rm);
  evx_metrics_source_free(src);
  evx_executor_free(EX);
  tc_fixture_done(&F);
}
END_TEST

START_TEST(test_metrics_builder) {
  evx_loop *loop = evx_loop_new(NULL);
  char *text = NULL;
  size_t len = 1;
  ck_assert_int_eq(evx_loop_metrics_text(loop, &text, &len), EVX_OK);
  ck_assert_str_eq(text, ""); /* nothing bound: an empty text, never NULL */
  ck_assert_uint_eq(len, 0);
  evx_free(text);
  ck_assert_int_eq(evx_loop_metrics_text(NULL, &text, NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_loop_metrics_text(loop, NULL, NULL), EVX_EINVAL);
  /* a source left registered is freed with the loop (the leak check proves it) */
  int n = 1;
  ck_assert_ptr_nonnull(evx_metrics_source_new(loop, app_metrics, &n));
  ck_assert_int_eq(evx_loop_metrics_text(loop, &text, &len), EVX_OK);
  ck_assert_ptr_nonnull(strstr(text, "# HELP app_things Things the application has.\n"
                                     "# TYPE app_things gauge\napp_things 1\n"));
  ck_assert_uint_eq(len, strlen(text));
  evx_free(text);
  char small[4];
  ck_assert_str_eq(evx_metrics_escape("\"\"\"", small, sizeof small), "\\\"");
  evx_loop_free(loop);
}
END_TEST

static Suite *metrics_suite(void) {
  Suite *s = suite_create("metrics");
  TCase *tc = evx_test_tcase(s, "metrics", 30);
  tcase_add_test(tc, test_metrics_endpoint);
  tcase_add_test(tc, test_metrics_builder);
  return s;
}

int main(void) { return evx_test_main(metrics_suite()); }
