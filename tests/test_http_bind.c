/* evx_http_bind says why it failed - the port is taken, a privileged port,
 * a host that does not resolve - as distinct codes, and prints nothing
 * (libevent's own bind printed "[warn]" lines to stderr). */
#include "test_http_util.h"

#include <fcntl.h>
#include <sys/wait.h>

/* Capture stderr into a temp file around a block; returns the fd to read. */
static int saved_err = -1;
static int capture_begin(void) {
  char path[] = "/tmp/evx-bind-XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  unlink(path);
  fflush(stderr);
  saved_err = dup(2);
  dup2(fd, 2);
  return fd;
}
static size_t capture_end(int fd, char *buf, size_t cap) {
  fflush(stderr);
  dup2(saved_err, 2);
  close(saved_err);
  ssize_t n = pread(fd, buf, cap - 1, 0);
  close(fd);
  buf[n > 0 ? n : 0] = '\0';
  return n > 0 ? (size_t)n : 0;
}

START_TEST(test_bind_errors) {
  evx_loop *loop = evx_loop_new(NULL);
  evx_http *a = evx_http_new(loop, NULL), *b = evx_http_new(loop, NULL);
  ck_assert_int_eq(evx_http_bind(a, "127.0.0.1", 0), EVX_OK);
  int port = evx_http_port(a);
  ck_assert_int_gt(port, 0);
  char out[1024];
  int fd = capture_begin();
  int inuse = evx_http_bind(b, "127.0.0.1", (uint16_t)port);
  int nohost = evx_http_bind(b, "no-such-host.invalid", 0);
  int notlocal = evx_http_bind(b, "192.0.2.1", 0); /* TEST-NET: not an address of this machine */
  size_t n = capture_end(fd, out, sizeof out);
  ck_assert_int_eq(inuse, EVX_EADDRINUSE);
  ck_assert_int_eq(nohost, EVX_ENOTFOUND);
  ck_assert_int_eq(notlocal, EVX_EIO);
  ck_assert_msg(n == 0, "bind printed: %s", out);
  ck_assert_int_eq(evx_http_port(b), EVX_EINVAL); /* nothing bound */
  ck_assert_str_eq(evx_strerror(EVX_EADDRINUSE), "address already in use");
  /* the failed binds left b usable */
  ck_assert_int_eq(evx_http_bind(b, "127.0.0.1", 0), EVX_OK);
  ck_assert_int_ne(evx_http_port(b), port);
  evx_http_free(a);
  evx_http_free(b);
  evx_loop_free(loop);
}
END_TEST

/* A port below 1024 without the right to bind it: EVX_EACCES. Run in a child
 * that drops root (if it is root), so the test process keeps its rights. */
START_TEST(test_bind_eacces) {
  FILE *f = fopen("/proc/sys/net/ipv4/ip_unprivileged_port_start", "r");
  int start = 1024;
  if (f) {
    if (fscanf(f, "%d", &start) != 1) start = 1024;
    fclose(f);
  }
  if (start <= 1) {
    fprintf(stderr, "test_bind_eacces: every port is unprivileged here; skipped\n");
    return;
  }
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    if (getuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(100);
    evx_loop *loop = evx_loop_new(NULL);
    evx_http *h = evx_http_new(loop, NULL);
    int rc = evx_http_bind(h, "127.0.0.1", 1);
    evx_http_free(h);
    evx_loop_free(loop);
    _exit(rc == EVX_EACCES ? 0 : 10 - rc);
  }
  int st = 0;
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert(WIFEXITED(st));
  ck_assert_msg(WEXITSTATUS(st) == 0, "child: exit %d (10 - rc)", WEXITSTATUS(st));
}
END_TEST

static Suite *bind_suite(void) {
  Suite *s = suite_create("http_bind");
  TCase *tc = evx_test_tcase(s, "bind", 20);
  tcase_add_test(tc, test_bind_errors);
  tcase_add_test(tc, test_bind_eacces);
  return s;
}

int main(void) { return evx_test_main(bind_suite()); }
