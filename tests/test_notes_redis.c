/* The notes service scaled out through Redis Streams: a web process
 * (--role web) stores notes and enqueues their mail on a real redis-server,
 * two worker processes (--role worker) on their own working directories send
 * it. Every note's mail is sent exactly by the workers, never by the web
 * process, and every process stops cleanly on SIGTERM. */
#include <dirent.h>

#include "evx_test.h"
#include "evx_test_redis.h"
#include "test_notes_server.h"

static notes_server S;
static nt_resp R;
static evx_redis redis;
static notes_server w1, w2; /* the workers; killed by teardown if a check failed */

static void setup(void) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  memset(&S, 0, sizeof S);
}

static void teardown(void) {
  nt_cleanup(&w1);
  nt_cleanup(&w2);
  nt_cleanup(&S);
  evx_redis_free(&redis);
}

/* A worker: no HTTP, so wait for its own start-up line. */
static void start_worker(notes_server *w, const char *url) {
  memset(w, 0, sizeof *w);
  snprintf(w->dir, sizeof w->dir, "/tmp/evx_notes_w_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(w->dir));
  snprintf(w->db, sizeof w->db, "%s/notes.db", w->dir);
  snprintf(w->spool, sizeof w->spool, "%s/spool", w->dir);
  snprintf(w->log, sizeof w->log, "%s/server.log", w->dir);
  int fd = open(w->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ck_assert_int_ge(fd, 0);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    dup2(fd, 2);
    execl(EVX_NOTES_BIN, EVX_NOTES_BIN, "--role", "worker", "--tasks", url, "--db", w->db,
          "--spool", w->spool, (char *)NULL);
    _exit(127);
  }
  close(fd);
  w->pid = pid;
  ck_assert_msg(nt_wait_log(w, "worker: sending the mail of", 15000) != NULL, "worker log:\n%s",
                nt_log(w));
}

static int count_eml(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  int n = 0;
  for (struct dirent *e; (e = readdir(d));) n += strstr(e->d_name, ".eml") != NULL;
  closedir(d);
  return n;
}

START_TEST(test_web_and_workers) {
  ck_assert_int_eq(evx_redis_start(&redis), 0);
  const char *extra[] = {"--tasks", redis.url, "--role", "web", NULL};
  nt_start(&S, extra);
  start_worker(&w1, redis.url);
  start_worker(&w2, redis.url);
  enum { N = 40 };
  for (int i = 0; i < N; i++)
    ck_assert_int_eq(nt_http(&S, "POST", "/notes", "{\"title\":\"scaled\"}", &R), 201);
  uint64_t end = nt_now_ms() + 15000;
  while (count_eml(w1.spool) + count_eml(w2.spool) < N && nt_now_ms() < end) nt_sleep_ms(20);
  ck_assert_msg(count_eml(w1.spool) + count_eml(w2.spool) == N, "%d + %d mails; w1:\n%s\nw2:\n%s",
                count_eml(w1.spool), count_eml(w2.spool), nt_log(&w1), nt_log(&w2));
  ck_assert_int_eq(count_eml(S.spool), 0); /* the web process only enqueues */
  ck_assert_int_eq(nt_metric(&S, "evx_tasks_enqueued_total{queue=\"notes-mail\"}"), N);
  ck_assert_int_eq(nt_stop(&w1), 0);
  ck_assert_int_eq(nt_stop(&w2), 0);
  int code = nt_stop(&S);
  ck_assert_msg(code == 0, "web exit %d; log:\n%s", code, nt_log(&S));
}
END_TEST

Suite *suite(void);
Suite *suite(void) {
  Suite *s = suite_create("notes_redis");
  TCase *tc = tcase_create("notes_redis");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_web_and_workers);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return evx_test_main(suite()); }
