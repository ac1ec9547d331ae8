/* ext/tasks' Redis connection (evx__redis): URL parsing, set-up (SELECT,
 * scripts), pipelining, fail-fast while down, reconnect with backoff after
 * the server stops, crashes or hangs - against a real redis-server - and the
 * loop never blocks meanwhile. */
#include "evx_test.h"
#include "evx_test_redis.h"

#include "../ext/tasks/redis-internal.h"

static char *url_error(const char *url) {
  evx__redis_addr a;
  char *err = NULL;
  int rc = evx__redis_parse_url(url, &a, &err);
  ck_assert_int_eq(rc, EVX_EINVAL);
  ck_assert_ptr_nonnull(err);
  return err;
}

START_TEST(test_parse_url) {
  evx__redis_addr a;
  char *err = (char *)1;
  ck_assert_int_eq(evx__redis_parse_url("redis://127.0.0.1:6380/3", &a, &err), EVX_OK);
  ck_assert_ptr_null(err);
  ck_assert_str_eq(a.host, "127.0.0.1");
  ck_assert_int_eq(a.port, 6380);
  ck_assert_int_eq(a.db, 3);
  ck_assert_str_eq(a.path, "");
  ck_assert_int_eq(evx__redis_parse_url("redis://localhost", &a, NULL), EVX_OK);
  ck_assert_str_eq(a.host, "localhost");
  ck_assert_int_eq(a.port, 6379);
  ck_assert_int_eq(a.db, 0);
  ck_assert_int_eq(evx__redis_parse_url("redis://:s3cret@h:1/", &a, NULL), EVX_OK);
  ck_assert_str_eq(a.password, "s3cret");
  ck_assert_str_eq(a.host, "h");
  ck_assert_int_eq(a.port, 1);
  ck_assert_int_eq(evx__redis_parse_url("redis://[::1]:7000/2", &a, NULL), EVX_OK);
  ck_assert_str_eq(a.host, "::1");
  ck_assert_int_eq(a.port, 7000);
  ck_assert_int_eq(a.db, 2);
  ck_assert_int_eq(evx__redis_parse_url("unix:/run/redis.sock?db=5", &a, NULL), EVX_OK);
  ck_assert_str_eq(a.path, "/run/redis.sock");
  ck_assert_int_eq(a.db, 5);
  ck_assert_int_eq(evx__redis_parse_url("unix:///tmp/r.sock", &a, NULL), EVX_OK);
  ck_assert_str_eq(a.path, "/tmp/r.sock");
  ck_assert_int_eq(a.db, 0);

  const char *bad[] = {"http://h/0", "redis://", "redis://h:0/0", "redis://h:99999",
                       "redis://h:12x/0", "redis://h/abc", "unix:relative.sock",
                       "unix:/s?db=", "unix:/s?x=1", "redis://[::1/0", "redis://pw@h/0"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) evx_free(url_error(bad[i]));
  err = url_error("sqlite:x");
  ck_assert_msg(strstr(err, "sqlite:x") != NULL, "%s", err);
  evx_free(err);
  ck_assert_int_eq(evx__redis_parse_url(NULL, &a, NULL), EVX_EINVAL);
}
END_TEST

/* ---- a small client on the loop ------------------------------------------ */

typedef struct client {
  evx_loop *loop;
  evx__redis *r;
  int ups, downs;
  int replies, nulls, errors;
  long long last_int;
  char last_str[64];
  int ticks; /* a 10 ms loop timer: the loop keeps running */
  evx_timer *tick;
} client;

static void on_state(evx__redis *r, int up, void *arg) {
  (void)r;
  client *c = arg;
  if (up) c->ups++;
  else c->downs++;
}

static void on_reply(evx__redis *r, redisReply *rep, void *arg) {
  (void)r;
  client *c = arg;
  if (!rep) {
    c->nulls++;
    return;
  }
  c->replies++;
  if (rep->type == REDIS_REPLY_ERROR) c->errors++;
  if (rep->type == REDIS_REPLY_INTEGER) c->last_int = rep->integer;
  if (rep->type == REDIS_REPLY_STRING || rep->type == REDIS_REPLY_STATUS)
    snprintf(c->last_str, sizeof c->last_str, "%s", rep->str);
}

static void tick_cb(void *arg) {
  client *c = arg;
  c->ticks++;
  c->tick = evx_call_later(c->loop, 10, tick_cb, c);
}

static const char *const scripts[] = {"return tonumber(ARGV[1]) * 2",
                                      "return redis.call('INCRBY', KEYS[1], ARGV[1])", NULL};

static void client_open(client *c, const char *url, unsigned cmd_timeout_ms) {
  memset(c, 0, sizeof *c);
  c->loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(c->loop);
  evx__redis_addr a;
  ck_assert_int_eq(evx__redis_parse_url(url, &a, NULL), EVX_OK);
  evx__redis_opts o = {.name = "test", .scripts = scripts, .on_state = on_state, .arg = c,
                       .cmd_timeout_ms = cmd_timeout_ms, .backoff_min_ms = 20,
                       .backoff_max_ms = 200};
  char *err = NULL;
  c->r = evx__redis_new(c->loop, &a, &o, &err);
  ck_assert_msg(c->r != NULL, "%s", err ? err : "?");
  c->tick = evx_call_later(c->loop, 10, tick_cb, c);
}

static void client_close(client *c) {
  evx__redis_free(c->r);
  if (c->tick) evx_timer_cancel(c->tick);
  evx_test_free_loop(c->loop);
}

static int is_up(void *arg) { return evx__redis_ready(((client *)arg)->r); }
static int is_down(void *arg) { return !evx__redis_ready(((client *)arg)->r); }

static int cmd(client *c, const char *a0, const char *a1, const char *a2, const char *a3) {
  const char *argv[] = {a0, a1, a2, a3};
  int argc = a3 ? 4 : a2 ? 3 : a1 ? 2 : 1;
  return evx__redis_cmd(c->r, on_reply, c, argc, argv, NULL);
}

START_TEST(test_pipeline_and_scripts) {
  evx_redis srv;
  ck_assert_int_eq(evx_redis_start(&srv), 0);
  client c;
  client_open(&c, srv.url, 0);
  ck_assert(!evx__redis_ready(c.r));
  ck_assert_int_eq(cmd(&c, "PING", NULL, NULL, NULL), EVX_EIO); /* not READY yet */
  evx_test_run_until(c.loop, is_up, &c, 5000);
  ck_assert_int_eq(c.ups, 1);
  ck_assert_uint_eq(evx__redis_connects(c.r), 1);

  /* 1000 commands from one loop callback: one pipeline, replies in order */
  for (int i = 0; i < 1000; i++) ck_assert_int_eq(cmd(&c, "INCR", "n", NULL, NULL), EVX_OK);
  ck_assert_uint_eq(evx__redis_pending(c.r), 1000);
  ck_assert_int_eq(c.replies, 0); /* never inside evx__redis_cmd */
  evx_test_run_until_count(c.loop, &c.replies, 1000, 5000);
  ck_assert_int_eq(c.last_int, 1000);
  ck_assert_int_eq(c.errors, 0);
  ck_assert_uint_eq(evx__redis_pending(c.r), 0);
  redisReply *info = evx_redis_cmd(&srv, "INFO stats");
  ck_assert_ptr_nonnull(info);
  ck_assert_ptr_nonnull(strstr(info->str, "total_commands_processed"));
  freeReplyObject(info);

  /* scripts were loaded at connect: EVALSHA works */
  const char *sha = evx__redis_script_sha(c.r, 1);
  ck_assert_ptr_nonnull(sha);
  ck_assert_ptr_null(evx__redis_script_sha(c.r, 2));
  const char *argv[] = {"EVALSHA", sha, "1", "n", "5"};
  ck_assert_int_eq(evx__redis_cmd(c.r, on_reply, &c, 5, argv, NULL), EVX_OK);
  evx_test_run_until_count(c.loop, &c.replies, 1001, 5000);
  ck_assert_int_eq(c.last_int, 1005);
  ck_assert_int_eq(evx__redis_cmd(c.r, NULL, NULL, 1, argv, NULL), EVX_EINVAL);
  ck_assert_int_eq(evx__redis_cmd(NULL, on_reply, &c, 1, argv, NULL), EVX_EINVAL);

  /* binary-safe arguments */
  const char *sargv[] = {"SET", "bin", "a\0b"};
  size_t slen[] = {3, 3, 3};
  ck_assert_int_eq(evx__redis_cmd(c.r, on_reply, &c, 3, sargv, slen), EVX_OK);
  evx_test_run_until_count(c.loop, &c.replies, 1002, 5000);
  ck_assert_int_eq(evx_redis_int(&srv, "STRLEN bin"), 3);

  client_close(&c);
  evx_redis_free(&srv);
}
END_TEST

START_TEST(test_unix_socket_db) {
  evx_redis srv;
  ck_assert_int_eq(evx_redis_start(&srv), 0);
  char url[400];
  snprintf(url, sizeof url, "unix:%s?db=3", srv.sock);
  client c;
  client_open(&c, url, 0);
  evx_test_run_until(c.loop, is_up, &c, 5000);
  ck_assert_int_eq(cmd(&c, "SET", "where", "db3", NULL), EVX_OK);
  evx_test_run_until_count(c.loop, &c.replies, 1, 5000);
  ck_assert_int_eq(evx_redis_int(&srv, "EXISTS where"), 0); /* not in db 0 */
  ck_assert_int_eq(
      evx_redis_int(&srv, "EVAL %s 0", "redis.call('SELECT','3') return redis.call('EXISTS','where')"),
      1);
  client_close(&c);
  evx_redis_free(&srv);
}
END_TEST

/* The server stops and comes back: owed replies end with NULL, commands fail
 * fast meanwhile, the loop keeps ticking, the connection returns by itself
 * and the AOF kept the data. */
START_TEST(test_reconnect_after_restart) {
  evx_redis srv;
  ck_assert_int_eq(evx_redis_start(&srv), 0);
  client c;
  client_open(&c, srv.url, 0);
  evx_test_run_until(c.loop, is_up, &c, 5000);
  ck_assert_int_eq(cmd(&c, "SET", "kept", "yes", NULL), EVX_OK);
  evx_test_run_until_count(c.loop, &c.replies, 1, 5000);

  evx_redis_stop(&srv);
  evx_test_run_until(c.loop, is_down, &c, 5000);
  ck_assert_int_eq(c.downs, 1);
  ck_assert_int_eq(cmd(&c, "PING", NULL, NULL, NULL), EVX_EIO);
  int ticks = c.ticks;
  uint64_t t0 = evx_now_ns();
  evx_test_run_until_count(c.loop, &c.ticks, ticks + 30, 5000); /* 300 ms of retries */
  ck_assert_uint_lt(evx_test_ms_since(t0), 1000);              /* the loop never blocked */
  ck_assert(!evx__redis_ready(c.r));

  ck_assert_int_eq(evx_redis_restart(&srv), 0);
  evx_test_run_until(c.loop, is_up, &c, 5000);
  ck_assert_int_eq(c.ups, 2);
  ck_assert_uint_eq(evx__redis_connects(c.r), 2);
  ck_assert_int_eq(cmd(&c, "GET", "kept", NULL, NULL), EVX_OK);
  evx_test_run_until_count(c.loop, &c.replies, 2, 5000);
  ck_assert_str_eq(c.last_str, "yes");
  ck_assert_ptr_nonnull(evx__redis_script_sha(c.r, 0)); /* scripts reloaded */
  const char *argv[] = {"EVALSHA", evx__redis_script_sha(c.r, 0), "0", "21"};
  ck_assert_int_eq(evx__redis_cmd(c.r, on_reply, &c, 4, argv, NULL), EVX_OK);
  evx_test_run_until_count(c.loop, &c.replies, 3, 5000);
  ck_assert_int_eq(c.last_int, 42);

  /* SIGKILL with replies owed: each owed callback gets NULL exactly once */
  for (int i = 0; i < 50; i++) ck_assert_int_eq(cmd(&c, "INCR", "x", NULL, NULL), EVX_OK);
  evx_redis_kill(&srv);
  evx_test_run_until(c.loop, is_down, &c, 5000);
  evx_test_run_until_count(c.loop, &c.ticks, c.ticks + 5, 5000);
  ck_assert_int_eq(c.replies + c.nulls, 3 + 50);
  ck_assert_int_eq(evx_redis_restart(&srv), 0);
  evx_test_run_until(c.loop, is_up, &c, 5000);
  /* appendfsync always: every INCR that was answered survived the crash */
  redisReply *x = evx_redis_cmd(&srv, "GET x");
  ck_assert_ptr_nonnull(x);
  long long kept = x->type == REDIS_REPLY_STRING ? atoll(x->str) : 0;
  freeReplyObject(x);
  ck_assert_int_ge(kept, c.replies - 3);
  client_close(&c);
  evx_redis_free(&srv);
}
END_TEST

/* A server that stops answering (SIGSTOP) is dropped after cmd_timeout_ms;
 * it is found again once it answers (SIGCONT). */
START_TEST(test_hung_server) {
  evx_redis srv;
  ck_assert_int_eq(evx_redis_start(&srv), 0);
  client c;
  client_open(&c, srv.url, 300);
  evx_test_run_until(c.loop, is_up, &c, 5000);
  kill(srv.pid, SIGSTOP);
  ck_assert_int_eq(cmd(&c, "PING", NULL, NULL, NULL), EVX_OK);
  uint64_t t0 = evx_now_ns();
  evx_test_run_until_count(c.loop, &c.nulls, 1, 5000);
  uint64_t ms = evx_test_ms_since(t0);
  ck_assert_msg(ms >= 250 && ms < 2000, "dropped after %llu ms", (unsigned long long)ms);
  ck_assert_int_eq(c.downs, 1);
  kill(srv.pid, SIGCONT);
  evx_test_run_until(c.loop, is_up, &c, 5000);
  ck_assert_int_eq(c.ups, 2);
  client_close(&c);
  evx_redis_free(&srv);
}
END_TEST

/* Nothing listens: the connection stays down, retries with backoff, the loop
 * keeps running; freeing it then is clean. */
START_TEST(test_nothing_listens) {
  evx_redis srv;
  ck_assert_int_eq(evx_redis_start(&srv), 0);
  evx_redis_stop(&srv); /* a port where nothing listens now */
  client c;
  client_open(&c, srv.url, 0);
  uint64_t t0 = evx_now_ns();
  evx_test_run_until_count(c.loop, &c.ticks, 40, 5000);
  ck_assert_uint_lt(evx_test_ms_since(t0), 1500);
  ck_assert_int_eq(c.ups, 0);
  ck_assert_int_eq(c.downs, 0); /* never was up */
  ck_assert_int_eq(cmd(&c, "PING", NULL, NULL, NULL), EVX_EIO);
  ck_assert_int_eq(evx_redis_restart(&srv), 0); /* comes up late: found */
  evx_test_run_until(c.loop, is_up, &c, 5000);
  client_close(&c);
  evx_redis_free(&srv);
}
END_TEST

/* Freeing with replies owed calls each callback once with NULL. */
START_TEST(test_free_with_pending) {
  evx_redis srv;
  ck_assert_int_eq(evx_redis_start(&srv), 0);
  client c;
  client_open(&c, srv.url, 0);
  evx_test_run_until(c.loop, is_up, &c, 5000);
  for (int i = 0; i < 10; i++) ck_assert_int_eq(cmd(&c, "PING", NULL, NULL, NULL), EVX_OK);
  evx__redis_free(c.r);
  ck_assert_int_eq(c.nulls, 10);
  c.r = NULL;
  client_close(&c);
  evx_redis_free(&srv);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("redis_conn");
  TCase *tc = evx_test_tcase(s, "conn", 30);
  tcase_add_test(tc, test_parse_url);
  tcase_add_test(tc, test_pipeline_and_scripts);
  tcase_add_test(tc, test_unix_socket_db);
  tcase_add_test(tc, test_reconnect_after_restart);
  tcase_add_test(tc, test_hung_server);
  tcase_add_test(tc, test_nothing_listens);
  tcase_add_test(tc, test_free_with_pending);
  return s;
}

int main(void) { return evx_test_main(suite()); }
