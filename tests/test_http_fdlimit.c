/* Out of file descriptors: a forked server with RLIMIT_NOFILE 64 gets 300
 * connections. accept() fails with EMFILE; the server must not spin (CPU
 * stays low), must not flood its log (bounded stderr), must refuse the
 * waiting clients cleanly, count the failures, and serve again once the
 * descriptors come back. */
#include "test_http_util.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

static void h_hello(evx_request *req, void *arg) {
  (void)arg;
  evx_request_finish(req, 200, NULL, "hello", 5);
}

static void h_stats(evx_request *req, void *arg) {
  evx_http_stats st;
  evx_http_stats_get(arg, &st);
  evx_request_finishf(req, 200, NULL, "%llu %llu", (unsigned long long)st.accept_errors,
                      (unsigned long long)st.accept_refused);
}

/* The child: a server on a random port, port written to `wfd`, stderr to `errpath`. */
static void serve(int wfd, const char *errpath) {
  int efd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  dup2(efd, 2);
  close(efd);
  evx_loop *loop = evx_loop_new(NULL);
  evx_http *http = evx_http_new(loop, NULL);
  evx_http_route(http, NULL, "/hello", 0, h_hello, NULL);
  evx_http_route(http, NULL, "/stats", 0, h_stats, http);
  if (evx_http_bind(http, "127.0.0.1", 0) != EVX_OK) _exit(3);
  int port = evx_http_port(http);
  struct rlimit rl = {64, 64};
  setrlimit(RLIMIT_NOFILE, &rl);
  /* Use up what is left but a few (valgrind keeps its own descriptor table,
   * so the limit alone may not bite there). */
  int last = -1, spare[8], nspare = 0;
  while ((last = open("/dev/null", O_RDONLY)) >= 0 && last < 100000)
    if (nspare < 8) spare[nspare++] = last;
  for (int i = 0; i < nspare; i++) close(spare[i]);
  if (write(wfd, &port, sizeof port) != sizeof port) _exit(4);
  close(wfd);
  evx_loop_run(loop);
  _exit(0);
}

static double cpu_seconds(pid_t pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *p = strrchr(buf, ')');
  unsigned long ut = 0, stt = 0;
  /* fields after ")": state(3) ... utime(14) stime(15) */
  if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &stt) != 2)
    return -1;
  return (double)(ut + stt) / (double)sysconf(_SC_CLK_TCK);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define NCONN 300

START_TEST(test_emfile) {
  char errpath[] = "/tmp/evx-fdlimit-XXXXXX";
  int tfd = mkstemp(errpath);
  ck_assert_int_ge(tfd, 0);
  close(tfd);
  int pfd[2];
  ck_assert_int_eq(pipe(pfd), 0);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    close(pfd[0]);
    serve(pfd[1], errpath);
  }
  close(pfd[1]);
  int port = 0;
  ck_assert_int_eq(read(pfd[0], &port, sizeof port), (ssize_t)sizeof port);
  close(pfd[0]);

  static int fds[NCONN];
  for (int i = 0; i < NCONN; i++) {
    fds[i] = tc_connect(port);
    if (fds[i] >= 0) tc_send(fds[i], "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
  }
  double c0 = cpu_seconds(pid), t0 = now_s();
  tc_sleep_ms(1500);
  double cpu = (cpu_seconds(pid) - c0) / (now_s() - t0);
  /* clients beyond the limit were refused cleanly (EOF or reset), or wait */
  int answered = 0, refused = 0;
  for (int i = 0; i < NCONN; i++) {
    if (fds[i] < 0) continue;
    struct pollfd p = {fds[i], POLLIN, 0};
    if (poll(&p, 1, 0) == 1) {
      char b[512];
      ssize_t n = recv(fds[i], b, sizeof b, MSG_DONTWAIT);
      if (n > 0 && strncmp(b, "HTTP/1.1 200", 12) == 0) answered++;
      else if (n <= 0) refused++;
    }
    close(fds[i]);
  }
  /* descriptors are back: served again (within a few backoff periods) */
  tc_resp r = {0};
  for (int i = 0; i < 50 && r.status != 200; i++) {
    tc_resp_free(&r);
    if (tc_get(port, "/stats", &r) != 0) tc_sleep_ms(50);
  }
  unsigned long long errors = 0, refusals = 0;
  if (r.body) sscanf(r.body, "%llu %llu", &errors, &refusals);
  int status = r.status;
  tc_resp_free(&r);
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  struct stat sb;
  stat(errpath, &sb);
  if (getenv("EVX_KEEP")) { char cmd[128]; snprintf(cmd, sizeof cmd, "cat %s >&2", errpath); system(cmd); }
  unlink(errpath);
  fprintf(stderr, "fdlimit: cpu %.0f%%, stderr %lld bytes, answered %d, refused %d, "
                  "accept errors %llu, refused by the reserve %llu\n",
          cpu * 100, (long long)sb.st_size, answered, refused, errors, refusals);
  ck_assert_int_eq(status, 200);
  ck_assert_uint_gt(errors, 0);
  ck_assert_uint_gt(refusals, 0);
  ck_assert_int_gt(answered, 0);
  ck_assert_int_gt(refused, 0);
  ck_assert_msg(cpu < 0.5, "the server spun at %.0f%% CPU", cpu * 100);
  ck_assert_msg(sb.st_size < 4096, "stderr grew to %lld bytes", (long long)sb.st_size);
}
END_TEST

int main(void) {
  Suite *s = suite_create("http_fdlimit");
  TCase *tc = tcase_create("fdlimit");
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_emfile);
  suite_add_tcase(s, tc);
  return evx_test_main(s);
}
