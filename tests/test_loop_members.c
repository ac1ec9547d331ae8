/* The ownership rule for loop-bound objects (loop.h, evx_loop_free): the loop
 * closes every member still open, newest first, before it runs the
 * callbacks still queued; members may close other members; on_run_exit
 * hooks run when evx_loop_run returns. */
#include "evx-private.h"
#include "test_http_util.h"

/* ---- the mechanism, with plain members ----------------------------------- */

typedef struct fake {
  evx__loop_member m;
  char name;
  struct fake *owns; /* closed by this one's on_free */
} fake;

static char order[16];
static size_t norder;
static char run_exits[16];
static size_t nrun_exits;

static void fake_free(evx__loop_member *m) {
  fake *f = EVX__CONTAINER_OF(m, fake, m);
  order[norder++] = f->name;
  if (f->owns) {
    evx__loop_member_remove(&f->owns->m); /* what an owner's close does */
    order[norder++] = (char)(f->owns->name - 'a' + 'A');
  }
}

static void fake_run_exit(evx__loop_member *m) {
  run_exits[nrun_exits++] = EVX__CONTAINER_OF(m, fake, m)->name;
}

START_TEST(test_closed_newest_first) {
  norder = 0;
  memset(order, 0, sizeof order);
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  fake a = {.name = 'a'}, b = {.name = 'b'}, c = {.name = 'c'}, d = {.name = 'd'},
       e = {.name = 'e'};
  d.owns = &b; /* d registered after b: closes it itself */
  evx__loop_member_add(loop, &a.m, NULL, fake_free);
  evx__loop_member_add(loop, &b.m, NULL, fake_free);
  evx__loop_member_add(loop, &c.m, NULL, fake_free);
  evx__loop_member_add(loop, &d.m, NULL, fake_free);
  evx__loop_member_add(loop, &e.m, NULL, fake_free);
  evx__loop_member_remove(&c.m); /* closed by its owner before the loop */
  evx__loop_member_remove(&c.m); /* twice: a no-op */
  evx_test_free_loop(loop);
  ck_assert_str_eq(order, "edBa");
}
END_TEST

START_TEST(test_run_exit_oldest_first) {
  nrun_exits = 0;
  memset(run_exits, 0, sizeof run_exits);
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  fake a = {.name = 'a'}, b = {.name = 'b'}, c = {.name = 'c'};
  evx__loop_member_add(loop, &a.m, fake_run_exit, fake_free);
  evx__loop_member_add(loop, &b.m, NULL, fake_free);
  evx__loop_member_add(loop, &c.m, fake_run_exit, fake_free);
  ck_assert_uint_eq(nrun_exits, 0);
  evx_test_run_once(loop);
  ck_assert_str_eq(run_exits, "ac");
  evx__loop_member_remove(&a.m);
  evx__loop_member_remove(&b.m);
  evx__loop_member_remove(&c.m);
  evx_test_free_loop(loop);
  ck_assert_str_eq(run_exits, "ac");
}
END_TEST

/* ---- real members: a server newer than its executor ---------------------- */

static evx_gate lo_gate;
static evx_request *lo_req;
static int lo_finish_rc = 1;
static int lo_done_status = 1;
static evx_loop *lo_loop;
static evx_executor *lo_ex;

static void lo_done(void *arg, int status) {
  (void)arg;
  lo_done_status = status;
  lo_finish_rc = evx_request_finish(lo_req, 200, NULL, "late\n", 5);
}

static void lo_handler(evx_request *r, void *arg) {
  (void)arg;
  lo_req = r;
  ck_assert_int_eq(evx_submit(lo_ex, evx_gate_park, lo_done, &lo_gate), EVX_OK);
}

static void *lo_client(void *arg) {
  int *fd = arg;
  *fd = tc_connect(*fd);
  if (*fd >= 0) tc_send(*fd, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
  evx_gate_wait_entered(&lo_gate, 1); /* the request is held, its job parked */
  evx_loop_stop(lo_loop);
  return NULL;
}

START_TEST(test_server_closed_before_its_executor) {
  evx_gate_init(&lo_gate);
  lo_loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(lo_loop);
  evx_executor_opts eo = {.threads = 1, .name = "lo"};
  lo_ex = evx_executor_new(lo_loop, &eo);
  ck_assert_ptr_nonnull(lo_ex);
  evx_http *h = evx_http_new(lo_loop, NULL);
  ck_assert_ptr_nonnull(h);
  ck_assert_int_eq(evx_http_route(h, "GET", "/hold", 0, lo_handler, NULL), EVX_OK);
  ck_assert_int_eq(evx_http_bind(h, "127.0.0.1", 0), EVX_OK);
  int fd = evx_http_port(h);
  pthread_t client;
  ck_assert_int_eq(pthread_create(&client, NULL, lo_client, &fd), 0);
  ck_assert_int_eq(evx_loop_run(lo_loop), EVX_OK);
  pthread_join(client, NULL);
  ck_assert_int_ge(fd, 0);
  ck_assert_ptr_nonnull(lo_req);
  evx_gate_open(&lo_gate, 1);
  /* Neither the server nor the executor is freed by hand. The server,
   * newer, is closed first: the held request becomes a zombie, so the job's
   * done - run when the executor is closed next - finds it closed. */
  evx_test_free_loop(lo_loop);
  ck_assert_int_eq(lo_done_status, EVX_OK);
  ck_assert_int_eq(lo_finish_rc, EVX_ECLOSED);
  ck_assert_uint_eq(evx_request_live_count(), 0);
  close(fd);
  evx_gate_destroy(&lo_gate);
}
END_TEST

/* A server left open and never used: closed, nothing leaks. */
START_TEST(test_idle_server_left_open) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  evx_http *h = evx_http_new(loop, NULL);
  ck_assert_ptr_nonnull(h);
  ck_assert_int_eq(evx_http_bind(h, "127.0.0.1", 0), EVX_OK);
  evx_test_free_loop(loop);
}
END_TEST

static Suite *members_suite(void) {
  Suite *s = suite_create("loop_members");
  TCase *tc = evx_test_tcase(s, "mechanism", 10);
  tcase_add_test(tc, test_closed_newest_first);
  tcase_add_test(tc, test_run_exit_oldest_first);
  tc = evx_test_tcase(s, "objects", 20);
  tcase_add_test(tc, test_server_closed_before_its_executor);
  tcase_add_test(tc, test_idle_server_left_open);
  return s;
}

int main(void) { return evx_test_main(members_suite()); }
