/* HTTP layer basics over real sockets: routing, request accessors, finish
 * now / later / twice, keep-alive, the access log, stats, evx_http_free with
 * requests still held. */
#include "test_http_util.h"

#include <stdarg.h>

static tc_fixture F;

/* ---- handlers --------------------------------------------------------- */

static void h_echo(evx_request *req, void *arg) {
  const char *tag = arg;
  size_t blen;
  const char *body = evx_request_body(req, &blen);
  const char *q = evx_request_query(req, "q");
  const char *x = evx_request_header(req, "X-Test");
  evx_request_set_header(req, "X-Tag", tag);
  evx_request_finishf(req, 200, "text/plain", "tag=%s method=%s path=%s q=%s x=%s blen=%zu body=%s",
                      tag, evx_request_method(req), evx_request_path(req), q ? q : "(null)",
                      x ? x : "(null)", blen, body);
}

/* ---- routing ---------------------------------------------------------- */

typedef struct route_case {
  const char *raw;
  int status;
  const char *body_has; /* substring of the body, or NULL */
  const char *header;   /* "Name: value" expected, or NULL */
} route_case;

static const route_case route_cases[] = {
    {"GET /a HTTP/1.1\r\nHost: t\r\n\r\n", 200, "tag=exact-a", NULL},
    {"GET /a/b HTTP/1.1\r\nHost: t\r\n\r\n", 200, "tag=prefix-a method", NULL},
    {"GET /a/b/c/d HTTP/1.1\r\nHost: t\r\n\r\n", 200, "tag=prefix-abc", NULL},
    {"GET /a/b/c HTTP/1.1\r\nHost: t\r\n\r\n", 200, "tag=prefix-a method", NULL}, /* "/a/b/c/" needs the slash */
    {"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", 200, "tag=post-a method=POST",
     NULL},
    {"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", 200, "blen=5 body=hello", NULL},
    {"PUT /a HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", 200, "tag=prefix-a0 method=PUT", NULL},
    {"DELETE /only-get HTTP/1.1\r\nHost: t\r\n\r\n", 405, NULL, "Allow: GET, PUT"},
    {"GET /nothing HTTP/1.1\r\nHost: t\r\n\r\n", 404, NULL, NULL},
    {"GET /any HTTP/1.1\r\nHost: t\r\n\r\n", 200, "tag=any", NULL},
    {"OPTIONS /any HTTP/1.1\r\nHost: t\r\n\r\n", 200, "tag=any method=OPTIONS", NULL},
    {"GET /sp%20ace?q=a+b%26c&q=second HTTP/1.1\r\nHost: t\r\nX-Test: yes\r\n\r\n", 200,
     "path=/sp ace q=a b&c x=yes", NULL},
    {"GET /sp%00ace HTTP/1.1\r\nHost: t\r\n\r\n", 400, NULL, NULL},
    {"GET /a HTTP/1.1\r\nHost: t\r\n\r\n", 200, NULL, "X-Tag: exact-a"},
    {"GET /a HTTP/1.1\r\nHost: t\r\n\r\n", 200, NULL, "Content-Type: text/plain"},
};
#define NROUTE (sizeof route_cases / sizeof route_cases[0])

static tc_resp route_resps[NROUTE];
static int route_rcs[NROUTE];
static tc_resp head_resp;

static void *route_client(void *arg) {
  (void)arg;
  for (size_t i = 0; i < NROUTE; i++) route_rcs[i] = tc_request(F.port, route_cases[i].raw, &route_resps[i]);
  tc_request(F.port, "HEAD /a HTTP/1.1\r\nHost: t\r\n\r\n", &head_resp);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_routing) {
  tc_fixture_init(&F, NULL);
  ck_assert_int_eq(evx_http_route(F.http, "GET", "/a", 0, h_echo, "exact-a"), EVX_OK);
  ck_assert_int_eq(evx_http_route(F.http, "POST", "/a", 0, h_echo, "post-a"), EVX_OK);
  ck_assert_int_eq(evx_http_route(F.http, NULL, "/a/", EVX_ROUTE_PREFIX, h_echo, "prefix-a"), EVX_OK);
  ck_assert_int_eq(evx_http_route(F.http, NULL, "/a", EVX_ROUTE_PREFIX, h_echo, "prefix-a0"), EVX_OK);
  ck_assert_int_eq(evx_http_route(F.http, "GET", "/a/b/c/", EVX_ROUTE_PREFIX, h_echo, "prefix-abc"),
                   EVX_OK);
  ck_assert_int_eq(evx_http_route(F.http, "GET", "/only-get", 0, h_echo, "og"), EVX_OK);
  ck_assert_int_eq(evx_http_route(F.http, "PUT", "/only-get", 0, h_echo, "og"), EVX_OK);
  ck_assert_int_eq(evx_http_route(F.http, "GET", "/only-get", EVX_ROUTE_PREFIX, h_echo, "og"), EVX_OK);
  ck_assert_int_eq(evx_http_route(F.http, NULL, "/any", 0, h_echo, "any"), EVX_OK);
  ck_assert_int_eq(evx_http_route(F.http, NULL, "/sp ace", 0, h_echo, "space"), EVX_OK);
  /* bad routes */
  ck_assert_int_eq(evx_http_route(F.http, "GET", "/a", 0, h_echo, "dup"), EVX_EINVAL);
  ck_assert_int_eq(evx_http_route(F.http, "GET", "nope", 0, h_echo, NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_http_route(F.http, "GET", "/x", 7, h_echo, NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_http_route(F.http, "GET", "/x", 0, NULL, NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_http_route(NULL, "GET", "/x", 0, h_echo, NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_http_port(F.http), EVX_EINVAL); /* not bound yet */
  tc_fixture_bind(&F);
  tc_fixture_run(&F, route_client, NULL);

  for (size_t i = 0; i < NROUTE; i++) {
    const route_case *c = &route_cases[i];
    ck_assert_msg(route_rcs[i] == 0, "case %zu: no response", i);
    ck_assert_msg(route_resps[i].status == c->status, "case %zu: status %d, want %d (%s)", i,
                  route_resps[i].status, c->status, route_resps[i].body);
    if (c->body_has)
      ck_assert_msg(strstr(route_resps[i].body, c->body_has), "case %zu: body '%s' lacks '%s'", i,
                    route_resps[i].body, c->body_has);
    if (c->header) {
      char name[64];
      const char *colon = strchr(c->header, ':');
      memcpy(name, c->header, (size_t)(colon - c->header));
      name[colon - c->header] = '\0';
      const char *v = tc_header(&route_resps[i], name);
      ck_assert_msg(v && strcmp(v, colon + 2) == 0, "case %zu: header %s is '%s'", i, name,
                    v ? v : "(none)");
    }
    tc_resp_free(&route_resps[i]);
  }
  /* HEAD falls back to the GET route; no body. */
  ck_assert_int_eq(head_resp.status, 200);
  ck_assert_uint_eq(head_resp.body_len, 0);
  tc_resp_free(&head_resp);

  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.requests, NROUTE + 1);
  ck_assert_uint_eq(st.status[4], 3); /* 405, 404, 400 */
  ck_assert_uint_eq(st.status[2], NROUTE + 1 - 3);
  tc_fixture_done(&F);
}
END_TEST

/* ---- finish later: from a timer and from an executor job --------------- */

static evx_executor *EX;

static void later_timer(void *arg) {
  evx_request *req = arg;
  evx_request_finishf(req, 201, NULL, "timer %s", evx_request_query(req, "v"));
}

static void h_timer(evx_request *req, void *arg) {
  (void)arg;
  ck_assert_ptr_nonnull(evx_call_later(F.loop, 30, later_timer, req));
}

typedef struct job {
  evx_request *req;
  int value;
} job;

static void job_work(void *arg) { ((job *)arg)->value = 42; }
static void job_done(void *arg, int status) {
  job *j = arg;
  ck_assert_int_eq(status, EVX_OK);
  ck_assert_int_eq(evx_request_finishf(j->req, 200, NULL, "job %d", j->value), EVX_OK);
  free(j);
}

static void h_job(evx_request *req, void *arg) {
  (void)arg;
  job *j = calloc(1, sizeof *j);
  j->req = req;
  ck_assert_int_eq(evx_submit(EX, job_work, job_done, j), EVX_OK);
}

static tc_resp later_resp[2];

static void *later_client(void *arg) {
  (void)arg;
  tc_get(F.port, "/timer?v=7", &later_resp[0]);
  tc_get(F.port, "/job", &later_resp[1]);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_finish_later) {
  tc_fixture_init(&F, NULL);
  EX = evx_executor_new(F.loop, &(evx_executor_opts){.threads = 2});
  ck_assert_ptr_nonnull(EX);
  evx_http_route(F.http, "GET", "/timer", 0, h_timer, NULL);
  evx_http_route(F.http, "GET", "/job", 0, h_job, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, later_client, NULL);
  ck_assert_int_eq(later_resp[0].status, 201);
  ck_assert_str_eq(later_resp[0].body, "timer 7");
  ck_assert_int_eq(later_resp[1].status, 200);
  ck_assert_str_eq(later_resp[1].body, "job 42");
  tc_resp_free(&later_resp[0]);
  tc_resp_free(&later_resp[1]);
  evx_executor_free(EX);
  tc_fixture_done(&F);
}
END_TEST

/* ---- finish twice, bad arguments, code after finish ------------------- */

static void noop_close(evx_request *req, void *arg) {
  (void)req;
  (void)arg;
}

static int second_rc, after_path_ok, hdr_after_rc, onclose_after_rc, later_second_rc;

static void h_twice(evx_request *req, void *arg) {
  (void)arg;
  ck_assert_int_eq(evx_request_finish(req, 200, NULL, "once", 4), EVX_OK);
  /* code after finish runs normally and may still read the request */
  after_path_ok = strcmp(evx_request_path(req), "/twice") == 0 &&
                  strcmp(evx_request_query(req, "k"), "v") == 0;
  second_rc = evx_request_finish(req, 500, NULL, "twice", 5);
  hdr_after_rc = evx_request_set_header(req, "X-Late", "1");
  onclose_after_rc = evx_request_on_close(req, noop_close, NULL);
}

static void twice_later(void *arg) {
  evx_request *req = arg;
  ck_assert_int_eq(evx_request_finish(req, 202, NULL, NULL, 0), EVX_OK);
  later_second_rc = evx_request_finish(req, 202, NULL, NULL, 0);
}

static void h_twice_later(evx_request *req, void *arg) {
  (void)arg;
  evx_call_later(F.loop, 0, twice_later, req);
}

static int bad_rc[4];
static void h_bad(evx_request *req, void *arg) {
  (void)arg;
  const char *which = evx_request_query(req, "w");
  int i = which[0] - '0';
  if (i == 0) bad_rc[0] = evx_request_finish(req, 42, NULL, "x", 1);
  else if (i == 1) bad_rc[1] = evx_request_finish(req, 200, NULL, NULL, 3);
  else if (i == 2) bad_rc[2] = evx_request_end(req); /* end without start */
  else bad_rc[3] = evx_request_set_header(req, "Bad\r\nName", "x") == EVX_EINVAL
                       ? evx_request_finish(req, 200, NULL, "ok", 2)
                       : -100;
}

static tc_resp twice_resp[6];

static void *twice_client(void *arg) {
  (void)arg;
  tc_get(F.port, "/twice?k=v", &twice_resp[0]);
  tc_get(F.port, "/twice-later", &twice_resp[1]);
  tc_get(F.port, "/bad?w=0", &twice_resp[2]);
  tc_get(F.port, "/bad?w=1", &twice_resp[3]);
  tc_get(F.port, "/bad?w=2", &twice_resp[4]);
  tc_get(F.port, "/bad?w=3", &twice_resp[5]);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_finish_twice_and_misuse) {
  tc_fixture_init(&F, NULL);
  evx_http_route(F.http, "GET", "/twice", 0, h_twice, NULL);
  evx_http_route(F.http, "GET", "/twice-later", 0, h_twice_later, NULL);
  evx_http_route(F.http, "GET", "/bad", 0, h_bad, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, twice_client, NULL);
  ck_assert_int_eq(twice_resp[0].status, 200);
  ck_assert_str_eq(twice_resp[0].body, "once");
  ck_assert_int_eq(second_rc, EVX_EINVAL);
  ck_assert_int_eq(hdr_after_rc, EVX_EINVAL);
  ck_assert_int_eq(onclose_after_rc, EVX_EINVAL);
  ck_assert(after_path_ok);
  ck_assert_int_eq(twice_resp[1].status, 202);
  ck_assert_int_eq(later_second_rc, EVX_EINVAL);
  /* misuse on the first finish: 500 and the request is released anyway */
  ck_assert_int_eq(bad_rc[0], EVX_EINVAL);
  ck_assert_int_eq(twice_resp[2].status, 500);
  ck_assert_int_eq(bad_rc[1], EVX_EINVAL);
  ck_assert_int_eq(twice_resp[3].status, 500);
  ck_assert_int_eq(bad_rc[2], EVX_EINVAL);
  ck_assert_int_eq(twice_resp[4].status, 500);
  ck_assert_int_eq(bad_rc[3], EVX_OK);
  ck_assert_int_eq(twice_resp[5].status, 200);
  for (int i = 0; i < 6; i++) tc_resp_free(&twice_resp[i]);
  /* NULL everywhere */
  ck_assert_int_eq(evx_request_finish(NULL, 200, NULL, NULL, 0), EVX_EINVAL);
  ck_assert_int_eq(evx_request_end(NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_request_reply_busy(NULL, 1), EVX_EINVAL);
  ck_assert_int_eq(evx_request_on_close(NULL, NULL, NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_request_state(NULL), EVX_EINVAL);
  ck_assert_ptr_null(evx_request_path(NULL));
  ck_assert_ptr_null(evx_request_query(NULL, "x"));
  ck_assert_ptr_null(evx_http_new(NULL, NULL));
  ck_assert_int_eq(evx_http_bind(NULL, NULL, 0), EVX_EINVAL);
  evx_http_free(NULL);
  tc_fixture_done(&F);
}
END_TEST

/* ---- keep-alive, access log, stats ------------------------------------ */

static char log_lines[8][256];
static int nlog;

static void test_log(void *arg, const evx_http_log_entry *e) {
  ck_assert_ptr_eq(arg, &F);
  if (nlog < 8)
    snprintf(log_lines[nlog++], sizeof log_lines[0], "%s %s %d %llu %s", e->method, e->path,
             e->status, (unsigned long long)e->bytes, e->peer);
}

static void h_hello(evx_request *req, void *arg) {
  (void)arg;
  evx_request_finish(req, 200, NULL, "hello\n", 6);
}

static tc_resp ka_resp[3];
static int ka_rc[3];

static void *ka_client(void *arg) {
  (void)arg;
  int fd = tc_connect(F.port);
  static tc_conn c;
  tc_conn_init(&c, fd);
  for (int i = 0; i < 3; i++) {
    tc_send(fd, i == 1 ? "GET /missing HTTP/1.1\r\nHost: t\r\n\r\n" : "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    ka_rc[i] = tc_read_resp(&c, &ka_resp[i], 0);
  }
  close(fd);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_keepalive_log_stats) {
  tc_fixture_init(&F, &(evx_http_opts){.log = test_log, .log_arg = &F});
  evx_http_route(F.http, "GET", "/hello", 0, h_hello, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, ka_client, NULL);
  for (int i = 0; i < 3; i++) ck_assert_int_eq(ka_rc[i], 0);
  ck_assert_int_eq(ka_resp[0].status, 200);
  ck_assert_int_eq(ka_resp[1].status, 404);
  ck_assert_int_eq(ka_resp[2].status, 200);
  ck_assert_str_eq(ka_resp[2].body, "hello\n");
  for (int i = 0; i < 3; i++) tc_resp_free(&ka_resp[i]);
  ck_assert_int_eq(nlog, 3);
  ck_assert_str_eq(log_lines[0], "GET /hello 200 6 127.0.0.1");
  ck_assert_str_eq(log_lines[1], "GET /missing 404 10 127.0.0.1");
  ck_assert_str_eq(log_lines[2], "GET /hello 200 6 127.0.0.1");
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.requests, 3);
  ck_assert_uint_eq(st.bytes_out, 22);
  ck_assert_uint_eq(st.status[2], 2);
  ck_assert_uint_eq(st.status[4], 1);
  /* the stock logger formats one line */
  char buf[256] = {0};
  FILE *mf = fmemopen(buf, sizeof buf, "w");
  evx_http_log_entry e = {"GET", "/x", 200, 5, 1500, "1.2.3.4"};
  evx_http_log_stderr(mf, &e);
  fclose(mf);
  ck_assert_str_eq(buf, "GET /x 200 5B 1.50ms 1.2.3.4\n");
  tc_fixture_done(&F);
}
END_TEST

/* ---- evx_http_free while requests are held ---------------------------- */

static evx_request *held_reqs[3];
static int nheld, closed_calls, free_finish_rc[3];
static sem_t held_sem;

static void on_closed(evx_request *req, void *arg) {
  (void)arg;
  ck_assert_int_eq(evx_request_state(req), EVX_ECLOSED);
  closed_calls++;
}

static void h_hold(evx_request *req, void *arg) {
  (void)arg;
  held_reqs[nheld++] = req;
  ck_assert_int_eq(evx_request_on_close(req, on_closed, NULL), EVX_OK);
  sem_post(&held_sem);
}

static int free_client_eof[3];

static void *free_client(void *arg) {
  (void)arg;
  int fds[3];
  for (int i = 0; i < 3; i++) {
    fds[i] = tc_connect(F.port);
    tc_send(fds[i], "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    tc_sem_wait(&held_sem);
  }
  evx_loop_stop(F.loop);
  /* after the main thread freed the server, every connection is closed */
  for (int i = 0; i < 3; i++) {
    tc_conn c;
    tc_conn_init(&c, fds[i]);
    free_client_eof[i] = tc_wait_eof(&c) && c.len == 0;
    close(fds[i]);
  }
  return NULL;
}

START_TEST(test_free_with_held_requests) {
  sem_init(&held_sem, 0, 0);
  tc_fixture_init(&F, NULL);
  evx_http_route(F.http, "GET", "/hold", 0, h_hold, NULL);
  tc_fixture_bind(&F);
  ck_assert_int_eq(pthread_create(&F.client, NULL, free_client, NULL), 0);
  evx_loop_run(F.loop);
  ck_assert_int_eq(nheld, 3);
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.held, 3);
  ck_assert_uint_eq(evx_request_live_count(), 3);
  evx_http_free(F.http); /* requests become zombies; the struct lives on */
  pthread_join(F.client, NULL);
  for (int i = 0; i < 3; i++) ck_assert(free_client_eof[i]);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(evx_request_state(held_reqs[i]), EVX_ECLOSED);
    ck_assert(evx_request_is_gone(held_reqs[i]));
    ck_assert_str_eq(evx_request_path(held_reqs[i]), "/hold"); /* still readable */
  }
  /* the close notifications run in the next iterations */
  evx_add_callback(F.loop, evx_test_stop_cb, F.loop);
  evx_loop_run(F.loop);
  ck_assert_int_eq(closed_calls, 3);
  for (int i = 0; i < 3; i++) free_finish_rc[i] = evx_request_finish(held_reqs[i], 200, NULL, "x", 1);
  for (int i = 0; i < 3; i++) ck_assert_int_eq(free_finish_rc[i], EVX_ECLOSED);
  evx_loop_free(F.loop); /* runs the deferred release; the server struct goes with it */
  ck_assert_uint_eq(evx_request_live_count(), 0);
  sem_destroy(&held_sem);
}
END_TEST

/* ---- evx_http_free from inside a handler ------------------------------ */

static void h_free_inside(evx_request *req, void *arg) {
  (void)arg;
  evx_request_finish(req, 200, NULL, "bye", 3);
  evx_http_free(evx_request_server(req)); /* deferred until the handler returns */
  ck_assert_str_eq(evx_request_path(req), "/bye");
}

static tc_resp bye_resp;
static void *bye_client(void *arg) {
  (void)arg;
  tc_get(F.port, "/bye", &bye_resp);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_free_inside_handler) {
  tc_fixture_init(&F, NULL);
  evx_http_route(F.http, "GET", "/bye", 0, h_free_inside, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, bye_client, NULL);
  /* the reply was queued before the free; evhttp_free closed the connection
   * - the client sees either the reply or EOF, never a crash */
  ck_assert(bye_resp.status == 200 || bye_resp.status == 0);
  tc_resp_free(&bye_resp);
  evx_loop_free(F.loop);
  ck_assert_uint_eq(evx_request_live_count(), 0);
}
END_TEST

/* ---- out of memory on the loop thread ----------------------------------- */

static atomic_int fail_allocs, skip_allocs;
static pthread_t loop_thread;

/* While fail_allocs is set, loop-thread allocations fail after skip_allocs more succeed. */
static int failing(void) {
  if (!atomic_load(&fail_allocs) || !pthread_equal(pthread_self(), loop_thread)) return 0;
  if (atomic_load(&skip_allocs) > 0) {
    atomic_fetch_sub(&skip_allocs, 1);
    return 0;
  }
  return 1;
}
static void *f_malloc(size_t n) { return failing() ? NULL : malloc(n); }
static void *f_calloc(size_t c, size_t n) { return failing() ? NULL : calloc(c, n); }
static void *f_realloc(void *p, size_t n) { return failing() ? NULL : realloc(p, n); }

static char oom_query[16];
static void h_query(evx_request *req, void *arg) {
  (void)arg;
  const char *k = evx_request_query(req, "k"); /* NULL if the parse could not allocate */
  snprintf(oom_query, sizeof oom_query, "%s", k ? k : "(null)");
  evx_request_finish(req, 200, NULL, "q", 1);
}

static tc_resp oom_resp[4];
static void *oom_client(void *arg) {
  (void)arg;
  atomic_store(&fail_allocs, 1);
  tc_get(F.port, "/hello", &oom_resp[0]); /* the request object: 500 */
  atomic_store(&skip_allocs, 1);
  tc_get(F.port, "/a%20b", &oom_resp[1]); /* the decoded path (2nd allocation): 500 */
  atomic_store(&fail_allocs, 0);
  tc_get(F.port, "/hello", &oom_resp[2]);
  tc_get(F.port, "/q?k=v", &oom_resp[3]);
  evx_loop_stop(F.loop);
  return NULL;
}

START_TEST(test_out_of_memory) {
  loop_thread = pthread_self();
  ck_assert_int_eq(evx_set_allocator(f_malloc, f_realloc, f_calloc, free), EVX_OK);
  tc_fixture_init(&F, NULL);
  evx_http_route(F.http, "GET", "/hello", 0, h_hello, NULL);
  evx_http_route(F.http, "GET", "/a b", 0, h_hello, NULL);
  evx_http_route(F.http, "GET", "/q", 0, h_query, NULL);
  tc_fixture_bind(&F);
  tc_fixture_run(&F, oom_client, NULL);
  ck_assert_int_eq(oom_resp[0].status, 500);
  ck_assert_int_eq(oom_resp[1].status, 500);
  ck_assert_int_eq(oom_resp[2].status, 200);
  ck_assert_int_eq(oom_resp[3].status, 200);
  ck_assert_str_eq(oom_query, "v");
  for (int i = 0; i < 4; i++) tc_resp_free(&oom_resp[i]);
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.requests, 4); /* the two 500s were counted, not logged */
  tc_fixture_done(&F);
  evx_set_allocator(NULL, NULL, NULL, NULL);
}
END_TEST

static Suite *http_suite(void) {
  Suite *s = suite_create("http");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 20);
  tcase_add_test(tc, test_routing);
  tcase_add_test(tc, test_finish_later);
  tcase_add_test(tc, test_finish_twice_and_misuse);
  tcase_add_test(tc, test_keepalive_log_stats);
  tcase_add_test(tc, test_free_with_held_requests);
  tcase_add_test(tc, test_free_inside_handler);
  tcase_add_test(tc, test_out_of_memory);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return evx_test_main(http_suite()); }
