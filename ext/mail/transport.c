/*
 * Delivery transports for evx_mailer. Everything here runs on a mailer
 * worker thread and blocks: libcurl's SMTP client, or a file in the spool.
 *
 * DESIGN
 *  - One curl easy handle per attempt, CURLOPT_NOSIGNAL (worker threads must
 *    not get SIGALRM), hard connect and transfer timeouts so an attempt
 *    always ends. curl_global_init runs once (pthread_once) before the first.
 *  - SMTP replies 5xx are permanent (the server refused this message or
 *    recipient: retrying cannot help); everything else may be retried.
 *  - The spool writes "<dir>/.<name>.tmp" and renames it to "<dir>/<name>.eml",
 *    so a reader of the folder never sees a partial message.
 */
#include "mail-internal.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static pthread_once_t evx__mail_curl_once = PTHREAD_ONCE_INIT;
static CURLcode evx__mail_curl_init_rc;

static void evx__mail_curl_init_once(void) { evx__mail_curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

int evx__mail_global_init(void) {
  pthread_once(&evx__mail_curl_once, evx__mail_curl_init_once);
  return evx__mail_curl_init_rc == CURLE_OK ? EVX_OK : EVX_EIO;
}

int evx__mail_mkdirs(const char *dir) {
  char path[4096];
  size_t n = strlen(dir);
  if (n == 0 || n >= sizeof path) {
    errno = ENAMETOOLONG;
    return -1;
  }
  memcpy(path, dir, n + 1);
  for (char *p = path + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(path, 0755) != 0 && errno != EEXIST) return -1;
    *p = '/';
  }
  if (mkdir(path, 0755) != 0 && errno != EEXIST) return -1;
  struct stat st;
  if (stat(path, &st) != 0) return -1;
  if (!S_ISDIR(st.st_mode)) {
    errno = ENOTDIR;
    return -1;
  }
  return 0;
}

/* Set out->detail, truncating long paths quietly (a log line, not a key). */
static void evx__mail_set_detail(evx__mail_outcome *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void evx__mail_set_detail(evx__mail_outcome *out, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(out->detail, sizeof out->detail, fmt, ap);
  va_end(ap);
}

/* ---- spool ---------------------------------------------------------------- */

static int evx__mail_write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static void evx__mail_spool_write(const evx__mail_transport *t, const char *text, size_t len, uint64_t seq,
                        evx__mail_outcome *out) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  char name[96], tmp[4200], final[4200];
  snprintf(name, sizeof name, "%lld%03ld-%ld-%llu", (long long)ts.tv_sec, ts.tv_nsec / 1000000,
           (long)getpid(), (unsigned long long)seq);
  int n1 = snprintf(tmp, sizeof tmp, "%s/.%s.tmp", t->spool_dir, name);
  int n2 = snprintf(final, sizeof final, "%s/%s.eml", t->spool_dir, name);
  if (n1 < 0 || n2 < 0 || (size_t)n1 >= sizeof tmp || (size_t)n2 >= sizeof final) {
    evx__mail_set_detail(out, "spool path too long");
    out->permanent = 1;
    return;
  }
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0 && errno == ENOENT && evx__mail_mkdirs(t->spool_dir) == 0)
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    evx__mail_set_detail(out, "spool %s: %s", tmp, strerror(errno));
    return;
  }
  int err = evx__mail_write_all(fd, text, len);
  int saved = errno;
  if (close(fd) != 0 && !err) {
    err = -1;
    saved = errno;
  }
  if (!err && rename(tmp, final) != 0) {
    err = -1;
    saved = errno;
  }
  if (err) {
    unlink(tmp);
    evx__mail_set_detail(out, "spool %s: %s", final, strerror(saved));
    return;
  }
  out->status = EVX_OK;
  evx__mail_set_detail(out, "%s", final);
}

/* ---- SMTP (libcurl) ---------------------------------------------------------- */

typedef struct upload {
  const char *p;
  size_t left;
} upload;

static size_t evx__mail_read_cb(char *buf, size_t size, size_t nitems, void *arg) {
  upload *u = arg;
  size_t room = size * nitems;
  size_t n = u->left < room ? u->left : room;
  memcpy(buf, u->p, n);
  u->p += n;
  u->left -= n;
  return n;
}

static void evx__mail_smtp_send(const evx__mail_transport *t, const evx__mail_env *env, const char *text,
                      size_t len, evx__mail_outcome *out) {
  if (evx__mail_global_init() != EVX_OK) {
    evx__mail_set_detail(out, "curl_global_init failed");
    return;
  }
  CURL *c = curl_easy_init();
  if (!c) {
    evx__mail_set_detail(out, "curl_easy_init failed");
    return;
  }
  char errbuf[CURL_ERROR_SIZE] = "";
  char from[300];
  struct curl_slist *rcpt = NULL;
  CURLcode rc = CURLE_OUT_OF_MEMORY;
  snprintf(from, sizeof from, "<%s>", env->from);
  for (size_t i = 0; i < env->nrcpt; i++) {
    char r[300];
    snprintf(r, sizeof r, "<%s>", env->rcpt[i]);
    struct curl_slist *l = curl_slist_append(rcpt, r);
    if (!l) goto done;
    rcpt = l;
  }
  upload u = {text, len};
  curl_easy_setopt(c, CURLOPT_URL, t->smtp_url);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(c, CURLOPT_MAIL_FROM, from);
  curl_easy_setopt(c, CURLOPT_MAIL_RCPT, rcpt);
  curl_easy_setopt(c, CURLOPT_READFUNCTION, evx__mail_read_cb);
  curl_easy_setopt(c, CURLOPT_READDATA, &u);
  curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
  curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)len);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, t->timeout_ms);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, t->timeout_ms);
  curl_easy_setopt(c, CURLOPT_USE_SSL, (long)(t->require_tls ? CURLUSESSL_ALL : CURLUSESSL_TRY));
  if (t->username) {
    curl_easy_setopt(c, CURLOPT_USERNAME, t->username);
    curl_easy_setopt(c, CURLOPT_PASSWORD, t->password ? t->password : "");
  }
  rc = curl_easy_perform(c);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->smtp_code);
done:
  if (rc == CURLE_OK) {
    out->status = EVX_OK;
    evx__mail_set_detail(out, "%s", t->smtp_url);
  } else {
    out->permanent = out->smtp_code >= 500 && out->smtp_code < 600;
    if (out->smtp_code)
      evx__mail_set_detail(out, "%s: %s (SMTP %ld)", curl_easy_strerror(rc),
               errbuf[0] ? errbuf : "no detail", out->smtp_code);
    else
      evx__mail_set_detail(out, "%s: %s", curl_easy_strerror(rc),
               errbuf[0] ? errbuf : "no detail");
  }
  curl_slist_free_all(rcpt);
  curl_easy_cleanup(c);
}

void evx__mail_deliver(const evx__mail_transport *t, const evx__mail_env *env, const char *text,
                       size_t len, uint64_t seq, evx__mail_outcome *out) {
  memset(out, 0, sizeof *out);
  out->status = EVX_EIO;
  if (t->smtp_url)
    evx__mail_smtp_send(t, env, text, len, out);
  else
    evx__mail_spool_write(t, text, len, seq, out);
}
