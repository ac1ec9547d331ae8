/* A real redis-server for the Redis suites (test-only, never installed).
 *
 * evx_redis_start() runs Debian's redis-server on 127.0.0.1 with a free port
 * and a unix socket, in a fresh temporary directory, with the append-only
 * file on (appendfsync always: an acknowledged write is on disk before the
 * reply, so a restart - even after SIGKILL - keeps it) and no RDB snapshots.
 * It returns once the server answers PING. evx_redis_stop() shuts it down
 * (SIGTERM, AOF flushed) and evx_redis_kill() SIGKILLs it; evx_redis_restart()
 * starts it again on the same port and directory, so the AOF data survives.
 * evx_redis_free() kills it and removes the directory. The server dies with
 * the test process (PR_SET_PDEATHSIG), and an atexit handler kills it when a
 * failed assertion ends the test early, so no server outlives its test.
 *
 * evx_redis_cmd() runs one command on a short-lived blocking hiredis
 * connection (the test's own view of the data: counts, hand-written entries).
 */
#ifndef EVX_TEST_REDIS_H
#define EVX_TEST_REDIS_H

#include <errno.h>
#include <fcntl.h>
#include <hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef EVX_REDIS_SERVER
#define EVX_REDIS_SERVER "redis-server"
#endif

typedef struct evx_redis {
  pid_t pid;      /* running server, or 0 */
  int port;
  char dir[256];  /* temporary directory: AOF, log, socket */
  char sock[300]; /* unix socket path */
  char url[64];   /* "redis://127.0.0.1:PORT/0" */
} evx_redis;

/* The servers this process started, for the atexit cleanup. */
static evx_redis *evx_redis__live[8];

static inline void evx_redis__atexit(void) {
  for (size_t i = 0; i < sizeof evx_redis__live / sizeof evx_redis__live[0]; i++) {
    evx_redis *r = evx_redis__live[i];
    if (r && r->pid > 0) {
      kill(r->pid, SIGKILL);
      waitpid(r->pid, NULL, 0);
      r->pid = 0;
    }
  }
}

static inline void evx_redis__track(evx_redis *r, int on) {
  static int registered;
  if (!registered) {
    atexit(evx_redis__atexit);
    registered = 1;
  }
  for (size_t i = 0; i < sizeof evx_redis__live / sizeof evx_redis__live[0]; i++) {
    if (on && !evx_redis__live[i]) {
      evx_redis__live[i] = r;
      return;
    }
    if (!on && evx_redis__live[i] == r) {
      evx_redis__live[i] = NULL;
      return;
    }
  }
}

static inline int evx_redis__free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  int port = -1;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

/* 1 when the server answers PING with PONG (not -LOADING), else 0. */
static inline int evx_redis_ping(const evx_redis *r) {
  struct timeval tv = {0, 200000};
  redisContext *c = redisConnectWithTimeout("127.0.0.1", r->port, tv);
  if (!c) return 0;
  int ok = 0;
  if (!c->err) {
    redisSetTimeout(c, tv);
    redisReply *rep = redisCommand(c, "PING");
    ok = rep && rep->type == REDIS_REPLY_STATUS && strcmp(rep->str, "PONG") == 0;
    if (rep) freeReplyObject(rep);
  }
  redisFree(c);
  return ok;
}

static inline void evx_redis__sleep_ms(unsigned ms) {
  struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

/* Start the server on r->port in r->dir. 0 once it answers, -1 if it died or
 * did not answer within 10 s. */
static inline int evx_redis__spawn(evx_redis *r) {
  char port[16], log[320];
  snprintf(port, sizeof port, "%d", r->port);
  snprintf(log, sizeof log, "%s/redis.log", r->dir);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
      dup2(null, 0);
      dup2(null, 1);
      dup2(null, 2);
    }
    execlp(EVX_REDIS_SERVER, EVX_REDIS_SERVER, "--port", port, "--bind", "127.0.0.1",
           "--dir", r->dir, "--unixsocket", r->sock, "--unixsocketperm", "700",
           "--appendonly", "yes", "--appendfsync", "always", "--save", "",
           "--daemonize", "no", "--logfile", log, "--protected-mode", "no", (char *)NULL);
    _exit(127);
  }
  r->pid = pid;
  evx_redis__track(r, 1);
  for (int i = 0; i < 1000; i++) {
    if (evx_redis_ping(r)) return 0;
    if (waitpid(pid, NULL, WNOHANG) == pid) {
      r->pid = 0;
      evx_redis__track(r, 0);
      return -1;
    }
    evx_redis__sleep_ms(10);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  r->pid = 0;
  evx_redis__track(r, 0);
  return -1;
}

/* Start a fresh server (new directory, free port). 0 or -1. */
static inline int evx_redis_start(evx_redis *r) {
  memset(r, 0, sizeof *r);
  snprintf(r->dir, sizeof r->dir, "/tmp/evx-redis-XXXXXX");
  if (!mkdtemp(r->dir)) return -1;
  snprintf(r->sock, sizeof r->sock, "%s/redis.sock", r->dir);
  for (int attempt = 0; attempt < 5; attempt++) { /* the free port may be taken meanwhile */
    r->port = evx_redis__free_port();
    if (r->port <= 0) continue;
    snprintf(r->url, sizeof r->url, "redis://127.0.0.1:%d/0", r->port);
    if (evx_redis__spawn(r) == 0) return 0;
  }
  return -1;
}

/* Wait for the server to exit for up to 10 s, then SIGKILL it. */
static inline void evx_redis__reap(evx_redis *r) {
  for (int i = 0; i < 1000; i++) {
    if (waitpid(r->pid, NULL, WNOHANG) == r->pid) goto done;
    evx_redis__sleep_ms(10);
  }
  kill(r->pid, SIGKILL);
  waitpid(r->pid, NULL, 0);
done:
  r->pid = 0;
  evx_redis__track(r, 0);
}

/* Clean shutdown (SIGTERM: the server flushes its AOF and exits). */
static inline void evx_redis_stop(evx_redis *r) {
  if (r->pid <= 0) return;
  kill(r->pid, SIGTERM);
  evx_redis__reap(r);
}

/* Crash: SIGKILL (appendfsync always: every acknowledged write is on disk). */
static inline void evx_redis_kill(evx_redis *r) {
  if (r->pid <= 0) return;
  kill(r->pid, SIGKILL);
  evx_redis__reap(r);
}

/* Start the stopped server again on the same port and directory (its AOF is
 * replayed before it answers PING). 0 or -1. */
static inline int evx_redis_restart(evx_redis *r) {
  if (r->pid > 0) return -1;
  for (int attempt = 0; attempt < 50; attempt++) { /* the port may linger briefly */
    if (evx_redis__spawn(r) == 0) return 0;
    evx_redis__sleep_ms(50);
  }
  return -1;
}

/* Kill the server and remove its directory. */
static inline void evx_redis_free(evx_redis *r) {
  evx_redis_kill(r);
  if (r->dir[0]) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", r->dir);
    if (system(cmd) != 0) fprintf(stderr, "evx_redis_free: could not remove %s\n", r->dir);
    r->dir[0] = '\0';
  }
}

/* Run one command (hiredis format string) and return its reply (free with
 * freeReplyObject), or NULL when the server cannot be reached. */
static inline redisReply *evx_redis_cmd(const evx_redis *r, const char *fmt, ...) {
  struct timeval tv = {5, 0};
  redisContext *c = redisConnectWithTimeout("127.0.0.1", r->port, tv);
  if (!c) return NULL;
  redisReply *rep = NULL;
  if (!c->err) {
    redisSetTimeout(c, tv);
    va_list ap;
    va_start(ap, fmt);
    rep = redisvCommand(c, fmt, ap);
    va_end(ap);
  }
  redisFree(c);
  return rep;
}

/* An integer command's value (XLEN, ZCARD, ...), or -1 on error. */
static inline long long evx_redis_int(const evx_redis *r, const char *fmt, ...) {
  struct timeval tv = {5, 0};
  redisContext *c = redisConnectWithTimeout("127.0.0.1", r->port, tv);
  if (!c) return -1;
  long long v = -1;
  if (!c->err) {
    redisSetTimeout(c, tv);
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (rep && rep->type == REDIS_REPLY_INTEGER) v = rep->integer;
    if (rep) freeReplyObject(rep);
  }
  redisFree(c);
  return v;
}

#endif
