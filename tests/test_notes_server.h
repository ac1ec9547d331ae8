/* Run the real notes server (examples/notes, EVX_NOTES_BIN) as a child
 * process and talk to it with libcurl. Test-only, never installed.
 *
 * The server gets a fresh folder (database, spool, log), --port 0, and its
 * stderr in <dir>/server.log; the helpers read its port and its log lines
 * from that file. Waiting for a log line polls the file every 5 ms up to a
 * deadline: the server is another process, there is nothing to park on.
 */
#ifndef EVX_TEST_NOTES_SERVER_H
#define EVX_TEST_NOTES_SERVER_H

#include <check.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef EVX_NOTES_BIN
#error "EVX_NOTES_BIN must name the evx_notes binary (tests/CMakeLists.txt sets it)"
#endif

typedef struct notes_server {
  pid_t pid;
  int port;
  char dir[64];
  char db[128];
  char spool[128];
  char log[128];
} notes_server;

static inline uint64_t nt_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static inline void nt_sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* The whole server log (static buffer, NUL-terminated). */
static inline const char *nt_log(const notes_server *s) {
  static char buf[1 << 20];
  FILE *f = fopen(s->log, "rb");
  size_t n = 0;
  if (f) {
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
  }
  buf[n] = '\0';
  return buf;
}

/* Wait until the log contains `needle`; returns a pointer into the log or NULL. */
static inline const char *nt_wait_log(const notes_server *s, const char *needle, int timeout_ms) {
  uint64_t end = nt_now_ms() + (uint64_t)timeout_ms;
  for (;;) {
    const char *log = nt_log(s);
    const char *hit = strstr(log, needle);
    if (hit) return hit;
    if (nt_now_ms() >= end) return NULL;
    nt_sleep_ms(5);
  }
}

static inline int nt_count(const char *hay, const char *needle) {
  int n = 0;
  for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle)) n++;
  return n;
}

/* Start on an existing folder (s->dir set) - for restarts. */
static inline void nt_start_in(notes_server *s, const char *const *extra) {
  snprintf(s->db, sizeof s->db, "%s/notes.db", s->dir);
  snprintf(s->spool, sizeof s->spool, "%s/spool", s->dir);
  snprintf(s->log, sizeof s->log, "%s/server.log", s->dir);
  const char *argv[40];
  int n = 0;
  argv[n++] = EVX_NOTES_BIN;
  argv[n++] = "--port";
  argv[n++] = "0";
  argv[n++] = "--db";
  argv[n++] = s->db;
  argv[n++] = "--spool";
  argv[n++] = s->spool;
  for (int i = 0; extra && extra[i] && n < 38; i++) argv[n++] = extra[i];
  argv[n] = NULL;
  int fd = open(s->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ck_assert_int_ge(fd, 0);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    dup2(fd, 2);
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  close(fd);
  s->pid = pid;
  const char *hit = nt_wait_log(s, "listening on http://127.0.0.1:", 15000);
  ck_assert_msg(hit != NULL, "server did not start; log:\n%s", nt_log(s));
  ck_assert_int_eq(sscanf(hit, "listening on http://127.0.0.1:%d/", &s->port), 1);
}

static inline void nt_start(notes_server *s, const char *const *extra) {
  memset(s, 0, sizeof *s);
  snprintf(s->dir, sizeof s->dir, "/tmp/evx_notes_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(s->dir));
  nt_start_in(s, extra);
}

/* SIGTERM and wait (bounded); returns the exit status, or -1 if it had to be killed. */
static inline int nt_stop(notes_server *s) {
  if (s->pid <= 0) return -1;
  kill(s->pid, SIGTERM);
  uint64_t end = nt_now_ms() + 20000;
  int status = 0;
  for (;;) {
    pid_t r = waitpid(s->pid, &status, WNOHANG);
    if (r == s->pid) break;
    if (nt_now_ms() >= end) {
      kill(s->pid, SIGKILL);
      waitpid(s->pid, &status, 0);
      s->pid = 0;
      return -1;
    }
    nt_sleep_ms(5);
  }
  s->pid = 0;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static inline void nt_cleanup(notes_server *s) {
  if (s->pid > 0) {
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
  }
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", s->dir);
  if (s->dir[0]) ck_assert_int_eq(system(cmd), 0);
}

/* ---- HTTP client ---------------------------------------------------------- */

typedef struct nt_resp {
  long status;
  char *body; /* NUL-terminated, grows as needed; freed by the next nt_easy on it */
  size_t len, cap;
  char headers[4096];
  size_t hlen;
  double secs;
  CURLcode rc;
} nt_resp;

static inline size_t nt_body_cb(char *p, size_t size, size_t n, void *arg) {
  nt_resp *r = arg;
  size_t len = size * n;
  if (r->len + len + 1 > r->cap) {
    size_t cap = r->cap ? r->cap : 4096;
    while (cap < r->len + len + 1) cap *= 2;
    char *b = realloc(r->body, cap);
    if (!b) return 0;
    r->body = b;
    r->cap = cap;
  }
  memcpy(r->body + r->len, p, len);
  r->len += len;
  r->body[r->len] = '\0';
  return len;
}

static inline void nt_resp_free(nt_resp *r) {
  free(r->body);
  memset(r, 0, sizeof *r);
}

/* Forget the previous answer kept in r (keeps the buffer). */
static inline void nt_resp_reset(nt_resp *r) {
  char *b = r->body;
  size_t cap = r->cap;
  memset(r, 0, sizeof *r);
  r->body = b;
  r->cap = cap;
  if (b) b[0] = '\0';
}

static inline size_t nt_header_cb(char *p, size_t size, size_t n, void *arg) {
  nt_resp *r = arg;
  size_t len = size * n, room = sizeof r->headers - 1 - r->hlen;
  size_t c = len < room ? len : room;
  memcpy(r->headers + r->hlen, p, c);
  r->hlen += c;
  r->headers[r->hlen] = '\0';
  return len;
}

/* Prepare an easy handle for method + path (+ body) on the server; r receives the answer. */
static inline CURL *nt_easy(const notes_server *s, const char *method, const char *path,
                            const char *body, nt_resp *r) {
  CURL *c = curl_easy_init();
  ck_assert_ptr_nonnull(c);
  nt_resp_reset(r);
  /* Never NULL, even for an empty answer. */
  if (!r->body) nt_body_cb("", 0, 0, r);
  char url[512];
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", s->port, path);
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 20000L);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, nt_body_cb);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, nt_header_cb);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
  if (body) {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
  }
  return c;
}

static inline void nt_easy_done(CURL *c, nt_resp *r) {
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
  curl_easy_getinfo(c, CURLINFO_TOTAL_TIME, &r->secs);
}

/* One blocking request; returns the status (0 when the transfer failed). */
static inline long nt_http(const notes_server *s, const char *method, const char *path,
                           const char *body, nt_resp *r) {
  CURL *c = nt_easy(s, method, path, body, r);
  r->rc = curl_easy_perform(c);
  nt_easy_done(c, r);
  curl_easy_cleanup(c);
  return r->rc == CURLE_OK ? r->status : 0;
}

/* The value of a metric line "name value" (exact name incl. labels), or -1. */
static inline double nt_metric(const notes_server *s, const char *name) {
  static nt_resp r;
  if (nt_http(s, "GET", "/metrics", NULL, &r) != 200) return -1;
  size_t n = strlen(name);
  for (const char *p = r.body; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
    if (strncmp(p, name, n) == 0 && p[n] == ' ') return strtod(p + n + 1, NULL);
  }
  return -1;
}

/* Poll /metrics until name == value (bounded); returns the last value seen. */
static inline double nt_wait_metric(const notes_server *s, const char *name, double value,
                                    int timeout_ms) {
  uint64_t end = nt_now_ms() + (uint64_t)timeout_ms;
  double v;
  while ((v = nt_metric(s, name)) != value && nt_now_ms() < end) nt_sleep_ms(5);
  return v;
}

#endif
