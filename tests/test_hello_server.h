/* Test-only: start examples/hello (EVX_HELLO_BIN) as a child process with
 * its stderr on a pipe, read its log, wait for its exit. Used by the suites
 * that drive the real binary (http_hello, http_shutdown). */
#ifndef EVX_TEST_HELLO_SERVER_H
#define EVX_TEST_HELLO_SERVER_H

#include "test_http_util.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#ifndef EVX_HELLO_BIN
#error "EVX_HELLO_BIN must name the evx_hello binary (set by tests/CMakeLists.txt)"
#endif

extern char **environ;

typedef struct server {
  pid_t pid;
  int err_fd; /* the server's stderr */
  int port;
  char log[65536];
  size_t log_len;
} server;

/* Read what the server wrote to stderr so far (waiting up to ms for more). */
static void srv_read_log(server *s, int ms) {
  struct pollfd p = {.fd = s->err_fd, .events = POLLIN};
  while (poll(&p, 1, ms) > 0) {
    ssize_t n = read(s->err_fd, s->log + s->log_len, sizeof s->log - 1 - s->log_len);
    if (n <= 0) break;
    s->log_len += (size_t)n;
    s->log[s->log_len] = '\0';
    ms = 50;
  }
}

/* Wait until the log contains `what` (up to 5 s). */
static int srv_wait_log(server *s, const char *what) {
  for (int i = 0; i < 100 && !strstr(s->log, what); i++) srv_read_log(s, 50);
  return strstr(s->log, what) != NULL;
}

static int srv_start(server *s, char *const argv[]) {
  memset(s, 0, sizeof *s);
  int pipefd[2];
  if (pipe(pipefd) != 0) return -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
  posix_spawn_file_actions_addclose(&fa, pipefd[0]);
  int rc = posix_spawn(&s->pid, EVX_HELLO_BIN, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(pipefd[1]);
  s->err_fd = pipefd[0];
  if (rc != 0) return -1;
  if (!srv_wait_log(s, "listening on http://")) return -1;
  const char *p = strstr(s->log, "http://127.0.0.1:");
  s->port = p ? atoi(p + strlen("http://127.0.0.1:")) : 0;
  return s->port > 0 ? 0 : -1;
}

/* Wait for the server to exit (up to 5 s, then kill it). Its exit status, or -1. */
static int srv_wait(server *s) {
  for (int i = 0; i < 500; i++) {
    int st;
    pid_t w = waitpid(s->pid, &st, WNOHANG);
    if (w == s->pid) {
      srv_read_log(s, 0);
      close(s->err_fd);
      return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    }
    tc_sleep_ms(10);
  }
  kill(s->pid, SIGKILL);
  waitpid(s->pid, NULL, 0);
  close(s->err_fd);
  return -1;
}

#endif
