/* ext/mail: message format, spool transport, SMTP against a real aiosmtpd
 * server on loopback, retries with backoff on loop timers, permanent errors,
 * a dead server, shutdown. */
#include <evexec/mail.h>

#include <dirent.h>
#include <pthread.h>
#include <sys/stat.h>

#include "evx_test.h"
#include "test_notes_smtp.h"

static evx_loop *loop;
static char dir[64];
static char spool[128];

static void setup(void) {
  snprintf(dir, sizeof dir, "/tmp/evx_mail_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(spool, sizeof spool, "%s/spool", dir);
  loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
}

static void teardown(void) {
  evx_loop_free(loop);
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  ck_assert_int_eq(system(cmd), 0);
}

static void fail_timeout(void *arg) {
  (void)arg;
  ck_abort_msg("test timed out waiting for the loop");
}

static void run_loop(void) {
  evx_timer *guard = evx_call_later(loop, 15000, fail_timeout, NULL);
  ck_assert_int_eq(evx_loop_run(loop), EVX_OK);
  evx_timer_cancel(guard);
}

/* ---- log and done recorders -------------------------------------------------- */

typedef struct rec {
  char lines[32][640];
  int levels[32];
  uint64_t at_ns[32];
  int nlines;
  int ndone, want;
  int status[32];
  char reason[32][512];
} rec;
static rec R;
static int stop_on_log; /* stop the loop at the next log line */

static void rec_log(void *arg, int level, const char *line) {
  ck_assert_ptr_eq(arg, &R);
  ck_assert_int_lt(R.nlines, 32);
  snprintf(R.lines[R.nlines], sizeof R.lines[0], "%s", line);
  R.levels[R.nlines] = level;
  R.at_ns[R.nlines] = evx_now_ns();
  R.nlines++;
  if (stop_on_log) {
    stop_on_log = 0;
    evx_loop_stop(loop);
  }
}

static void rec_done(void *arg, int status, const char *reason) {
  (void)arg;
  ck_assert_int_lt(R.ndone, 32);
  R.status[R.ndone] = status;
  snprintf(R.reason[R.ndone], sizeof R.reason[0], "%s", reason ? reason : "");
  if (status == EVX_OK) ck_assert_ptr_null(reason);
  else ck_assert_ptr_nonnull(reason);
  if (++R.ndone == R.want) evx_loop_stop(loop);
}

static int count_level(int level) {
  int n = 0;
  for (int i = 0; i < R.nlines; i++) n += R.levels[i] == level;
  return n;
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  ck_assert_msg(f != NULL, "open %s", path);
  static char buf[1 << 16];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  fclose(f);
  return buf;
}

/* Every line break is CRLF. */
static int crlf_only(const char *s) {
  for (const char *p = s; *p; p++) {
    if (*p == '\n' && (p == s || p[-1] != '\r')) return 0;
    if (*p == '\r' && p[1] != '\n') return 0;
  }
  return 1;
}

/* ---- format ------------------------------------------------------------------- */

START_TEST(test_format) {
  evx_mail_msg m = {.from = "Notes <notes@example.org>",
                    .to = "\"Doe, Jane\" <jane@example.org>, bob@example.org",
                    .subject = "New note #7: hello",
                    .body = "line one\nline two\r\n.dot line\rlast"};
  char *text = NULL, *id = NULL;
  ck_assert_int_eq(evx_mail_format(&m, "host.example", &text, &id), EVX_OK);
  ck_assert(crlf_only(text));
  ck_assert_ptr_nonnull(strstr(text, "\r\nFrom: Notes <notes@example.org>\r\n"));
  ck_assert_ptr_nonnull(strstr(text, "\r\nTo: \"Doe, Jane\" <jane@example.org>, bob@example.org\r\n"));
  ck_assert_ptr_nonnull(strstr(text, "\r\nSubject: New note #7: hello\r\n"));
  ck_assert_ptr_nonnull(strstr(text, "\r\nMIME-Version: 1.0\r\n"));
  ck_assert_ptr_nonnull(strstr(text, "Content-Type: text/plain; charset=UTF-8\r\n"));
  ck_assert_ptr_nonnull(strstr(text, "Content-Transfer-Encoding: 7bit\r\n"));
  ck_assert_ptr_nonnull(strstr(text, "\r\n\r\nline one\r\nline two\r\n.dot line\r\nlast\r\n"));
  ck_assert(strncmp(text, "Date: ", 6) == 0);
  /* "Date: Mon, 02 Jan 2006 15:04:05 +0000" */
  char wd[4], mon[4];
  int d, y, hh, mm, ss;
  ck_assert_int_eq(sscanf(text, "Date: %3[A-Za-z], %d %3s %d %d:%d:%d +0000", wd, &d, mon, &y, &hh, &mm, &ss), 7);
  ck_assert_int_ge(y, 2024);
  ck_assert_ptr_nonnull(id);
  ck_assert(id[0] == '<' && id[strlen(id) - 1] == '>');
  ck_assert_ptr_nonnull(strstr(id, "@host.example>"));
  char hdr[200];
  snprintf(hdr, sizeof hdr, "\r\nMessage-ID: %s\r\n", id);
  ck_assert_ptr_nonnull(strstr(text, hdr));
  char *id2 = NULL, *text2 = NULL;
  ck_assert_int_eq(evx_mail_format(&m, NULL, &text2, &id2), EVX_OK);
  ck_assert_str_ne(id, id2);
  ck_assert_ptr_nonnull(strstr(id2, "@localhost>"));
  evx_free(text);
  evx_free(id);
  evx_free(text2);
  evx_free(id2);
}
END_TEST

START_TEST(test_format_encodings) {
  /* Non-ASCII subject: RFC 2047 encoded words; UTF-8 body: 8bit. */
  evx_mail_msg m = {.to = "a@example.org", .subject = "Zürich — café ☕", .body = "grüße\n"};
  char *text = NULL;
  ck_assert_int_eq(evx_mail_format(&m, NULL, &text, NULL), EVX_OK);
  ck_assert_ptr_nonnull(strstr(text, "\r\nSubject: =?UTF-8?B?"));
  ck_assert_ptr_nonnull(strstr(text, "Content-Transfer-Encoding: 8bit\r\n"));
  ck_assert_ptr_nonnull(strstr(text, "\r\nFrom: evexec@localhost\r\n"));
  for (const char *p = text; *p && !(p[0] == '\r' && p[2] == '\r'); p++)
    ck_assert_msg((unsigned char)*p < 0x80, "raw 8-bit byte in the headers");
  evx_free(text);

  /* A line longer than 998 bytes: quoted-printable with short lines. */
  static char body[3000];
  memset(body, 'x', sizeof body - 1);
  body[10] = '=';
  m.subject = "long";
  m.body = body;
  ck_assert_int_eq(evx_mail_format(&m, NULL, &text, NULL), EVX_OK);
  ck_assert_ptr_nonnull(strstr(text, "Content-Transfer-Encoding: quoted-printable\r\n"));
  ck_assert_ptr_nonnull(strstr(text, "xxxxxxxxxx=3Dxxx"));
  ck_assert(crlf_only(text));
  size_t line = 0, longest = 0;
  for (const char *p = strstr(text, "\r\n\r\n") + 4; *p; p++) {
    if (*p == '\r') {
      if (line > longest) longest = line;
      line = 0;
      p++;
    } else {
      line++;
    }
  }
  ck_assert_uint_le(longest, 76);
  evx_free(text);
}
END_TEST

START_TEST(test_format_rejects) {
  char *text = (char *)1;
  const evx_mail_msg bad[] = {
      {.to = NULL},
      {.to = ""},
      {.to = " , "},
      {.to = "no-at-sign"},
      {.to = "two words@example.org"},
      {.to = "a@example.org>"},
      {.to = "<a@example.org"},
      {.to = "a@example.org\r\nBcc: victim@example.org"},
      {.to = "a@example.org", .from = "x\r\n@y"},
      {.to = "a@example.org", .from = "nobody"},
      {.to = "\"unterminated <a@example.org>"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    ck_assert_msg(evx_mail_format(&bad[i], NULL, &text, NULL) == EVX_EINVAL, "case %zu accepted", i);
  ck_assert_ptr_eq(text, (char *)1); /* nothing stored on error */
  ck_assert_int_eq(evx_mail_format(NULL, NULL, &text, NULL), EVX_EINVAL);
  evx_mail_msg ok = {.to = "a@example.org"};
  ck_assert_int_eq(evx_mail_format(&ok, NULL, NULL, NULL), EVX_EINVAL);
}
END_TEST

/* The decoded Subject of a message: its encoded words' base64 joined. */
static void decode_subject(const char *text, char *out, size_t cap) {
  const char *p = strstr(text, "\r\nSubject: ");
  ck_assert_ptr_nonnull(p);
  p += 11;
  size_t n = 0;
  unsigned acc = 0;
  int bits = 0;
  for (;;) {
    const char *w = strstr(p, "=?UTF-8?B?");
    const char *eoh = strstr(p, "\r\n");
    /* the header goes on while the next line is folded (starts with a space) */
    while (eoh && eoh[2] == ' ') eoh = strstr(eoh + 2, "\r\n");
    if (!w || w > eoh) break;
    for (p = w + 10; *p && *p != '?'; p++) {
      const char *k = strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", *p);
      if (*p == '=' || !k) continue;
      acc = (acc << 6) | (unsigned)(k - "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/");
      bits += 6;
      if (bits >= 8) {
        bits -= 8;
        ck_assert_uint_lt(n, cap - 1);
        out[n++] = (char)((acc >> bits) & 0xFF);
      }
    }
    bits = 0;
    acc = 0;
  }
  out[n] = '\0';
}

/* A title with CR/LF (notes lost such mails: the subject was refused):
 * RFC 2047 encoded words, no header break, decoding gives the bytes back. */
START_TEST(test_format_subject_crlf) {
  const char *subjects[] = {"hi\r\nBcc: victim@example.org", "hi\n", "a\rb", "\r\n",
                            "tab\tand\x01ctl", "long\r\n line with a break and more than forty-five bytes of text"};
  for (size_t i = 0; i < sizeof subjects / sizeof subjects[0]; i++) {
    evx_mail_msg m = {.to = "a@example.org", .subject = subjects[i], .body = "b\n"};
    char *text = NULL;
    ck_assert_msg(evx_mail_format(&m, NULL, &text, NULL) == EVX_OK, "case %zu refused", i);
    ck_assert(crlf_only(text));
    const char *eoh = strstr(text, "\r\n\r\n");
    ck_assert_ptr_nonnull(eoh);
    /* every header line is "Name: ..." or a fold starting with a space */
    for (const char *l = text; l < eoh; l = strstr(l, "\r\n") + 2) {
      if (*l == ' ') continue;
      const char *colon = strchr(l, ':');
      ck_assert_msg(colon && colon < strstr(l, "\r\n"), "case %zu: a line that is no header", i);
      ck_assert_msg(strncmp(l, "Bcc", 3) != 0, "case %zu: injected header", i);
    }
    char back[256];
    decode_subject(text, back, sizeof back);
    ck_assert_str_eq(back, subjects[i]);
    evx_free(text);
  }
}
END_TEST

/* ---- spool transport ------------------------------------------------------------ */

static int count_files(const char *d, const char *suffix) {
  DIR *dd = opendir(d);
  if (!dd) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(dd)) != NULL) {
    size_t l = strlen(e->d_name), s = strlen(suffix);
    if (e->d_name[0] != '.' && l > s && strcmp(e->d_name + l - s, suffix) == 0) n++;
    if (strstr(e->d_name, ".tmp")) n += 1000; /* a leftover temporary file */
  }
  closedir(dd);
  return n;
}

static const char *first_file(const char *d) {
  static char path[512];
  DIR *dd = opendir(d);
  ck_assert_ptr_nonnull(dd);
  struct dirent *e;
  path[0] = '\0';
  while ((e = readdir(dd)) != NULL)
    if (e->d_name[0] != '.') {
      snprintf(path, sizeof path, "%s/%s", d, e->d_name);
      break;
    }
  closedir(dd);
  return path;
}

START_TEST(test_spool) {
  memset(&R, 0, sizeof R);
  evx_mailer_opts o = {.spool_dir = spool, .from = "notes@example.org", .log = rec_log, .log_arg = &R};
  evx_mailer *m = evx_mailer_new(loop, &o);
  ck_assert_ptr_nonnull(m);
  struct stat st;
  ck_assert_int_eq(stat(spool, &st), 0); /* created at start-up */
  R.want = 3;
  for (int i = 0; i < 3; i++) {
    char subject[64];
    snprintf(subject, sizeof subject, "note %d", i);
    evx_mail_msg msg = {.to = "team@example.org", .subject = subject, .body = "hello\n"};
    char *id = NULL;
    ck_assert_int_eq(evx_mail_send(m, &msg, rec_done, NULL, &id), EVX_OK);
    ck_assert_ptr_nonnull(id);
    evx_free(id);
  }
  ck_assert_int_eq(R.ndone, 0); /* never inside send */
  ck_assert_uint_eq(evx_mailer_pending(m), 3);
  run_loop();
  for (int i = 0; i < 3; i++) ck_assert_int_eq(R.status[i], EVX_OK);
  ck_assert_int_eq(count_files(spool, ".eml"), 3);
  const char *text = slurp(first_file(spool));
  ck_assert(crlf_only(text));
  ck_assert_ptr_nonnull(strstr(text, "\r\nFrom: notes@example.org\r\n"));
  ck_assert_ptr_nonnull(strstr(text, "\r\nSubject: note "));
  ck_assert_int_eq(count_level(EVX_MAIL_INFO), 3);
  ck_assert_ptr_nonnull(strstr(R.lines[0], "spooled to"));
  evx_mailer_stats s;
  ck_assert_int_eq(evx_mailer_stats_get(m, &s), EVX_OK);
  ck_assert_uint_eq(s.accepted, 3);
  ck_assert_uint_eq(s.sent, 3);
  ck_assert_uint_eq(s.attempts, 3);
  ck_assert_uint_eq(s.pending, 0);
  ck_assert_uint_eq(evx_mailer_pending(m), 0);

  /* Bad input is refused at once; done is never called. */
  evx_mail_msg bad = {.to = "nobody", .subject = "x"};
  ck_assert_int_eq(count_level(EVX_MAIL_ERROR), 0);
  ck_assert_int_eq(evx_mail_send(m, &bad, rec_done, NULL, NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_mail_send(NULL, &bad, rec_done, NULL, NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_mail_send(m, NULL, rec_done, NULL, NULL), EVX_EINVAL);
  ck_assert_int_eq(R.ndone, 3);
  /* ... and never silently: the mailer logs the refused mail. */
  ck_assert_int_eq(count_level(EVX_MAIL_ERROR), 1);
  ck_assert_ptr_nonnull(strstr(R.lines[R.nlines - 1], "mail to nobody refused"));

  /* A subject with CR/LF is sent (encoded), not refused: 119 notes, 119 mails. */
  evx_mail_msg crlf = {.to = "team@example.org", .subject = "line\r\nBcc: x@example.org", .body = "b\n"};
  R.want = 4;
  ck_assert_int_eq(evx_mail_send(m, &crlf, rec_done, NULL, NULL), EVX_OK);
  run_loop();
  ck_assert_int_eq(R.status[3], EVX_OK);
  ck_assert_int_eq(count_files(spool, ".eml"), 4);
  evx_mailer_free(m);
}
END_TEST

/* evx_mail_check tells a handler about a bad address before it answers
 * (so it can say 422), queues nothing and logs nothing; and the default log
 * is quiet for a delivered mail. */
START_TEST(test_check_and_quiet_default_log) {
  memset(&R, 0, sizeof R);
  char path[] = "/tmp/evx-mail-err-XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  unlink(path);
  fflush(stderr);
  int saved = dup(2);
  dup2(fd, 2);
  evx_mailer *m = evx_mailer_new(loop, &(evx_mailer_opts){.spool_dir = spool}); /* default log */
  ck_assert_ptr_nonnull(m);
  evx_mail_msg bad = {.to = "not an address", .subject = "x"};
  evx_mail_msg bad_from = {.from = "x@", .to = "a@example.org", .subject = "x"};
  evx_mail_msg good = {.to = "a@example.org", .subject = "x", .body = "b\n"};
  int rc_bad = evx_mail_check(m, &bad), rc_bad_from = evx_mail_check(m, &bad_from);
  int rc_good = evx_mail_check(m, &good), rc_null = evx_mail_check(NULL, &good);
  evx_mailer_stats st;
  evx_mailer_stats_get(m, &st);
  uint64_t accepted_after_checks = st.accepted;
  R.want = 1;
  int rc_send = evx_mail_send(m, &good, rec_done, NULL, NULL);
  if (rc_send == EVX_OK) run_loop();
  evx_mailer_free(m);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  char out[512] = {0};
  ssize_t n = pread(fd, out, sizeof out - 1, 0);
  close(fd);
  ck_assert_int_eq(rc_bad, EVX_EINVAL);
  ck_assert_int_eq(rc_bad_from, EVX_EINVAL);
  ck_assert_int_eq(rc_good, EVX_OK);
  ck_assert_int_eq(rc_null, EVX_EINVAL);
  ck_assert_uint_eq(accepted_after_checks, 0);
  ck_assert_int_eq(rc_send, EVX_OK);
  ck_assert_int_eq(R.status[0], EVX_OK);
  ck_assert_int_eq(count_files(spool, ".eml"), 1);
  ck_assert_msg(n == 0, "default log printed on success: %s", out);
}
END_TEST

/* The spool folder turns into a file: every attempt fails, retries back off
 * on loop timers, then the failure is logged with the reason. */
/* A mailer left open at evx_loop_free is freed by it (the ownership rule):
 * a mail waiting for its retry timer ends with EVX_ECANCELED. Were only the
 * loop's timers dropped, its done would never run. */
START_TEST(test_left_open_freed_by_loop_free) {
  memset(&R, 0, sizeof R);
  evx_mailer_opts o = {.spool_dir = spool, .max_attempts = 3, .backoff_ms = 60000,
                       .log = rec_log, .log_arg = &R};
  evx_mailer *m = evx_mailer_new(loop, &o);
  ck_assert_ptr_nonnull(m);
  ck_assert_int_eq(rmdir(spool), 0);
  FILE *f = fopen(spool, "w"); /* every attempt fails */
  ck_assert_ptr_nonnull(f);
  fclose(f);
  evx_mail_msg msg = {.to = "a@example.org", .subject = "s"};
  ck_assert_int_eq(evx_mail_send(m, &msg, rec_done, NULL, NULL), EVX_OK);
  stop_on_log = 1; /* the first attempt's failure: the retry now waits 60 s */
  run_loop();
  ck_assert_int_eq(R.ndone, 0);
  ck_assert_uint_eq(evx_mailer_pending(m), 1);
  evx_loop_free(loop);
  loop = evx_loop_new(NULL); /* for the teardown */
  ck_assert_ptr_nonnull(loop);
  ck_assert_int_eq(R.ndone, 1);
  ck_assert_int_eq(R.status[0], EVX_ECANCELED);
  unlink(spool);
}
END_TEST

START_TEST(test_spool_failure_retries) {
  memset(&R, 0, sizeof R);
  evx_mailer_opts o = {.spool_dir = spool, .max_attempts = 3, .backoff_ms = 30,
                       .log = rec_log, .log_arg = &R};
  evx_mailer *m = evx_mailer_new(loop, &o);
  ck_assert_ptr_nonnull(m);
  ck_assert_int_eq(rmdir(spool), 0);
  FILE *f = fopen(spool, "w");
  fclose(f);
  R.want = 1;
  evx_mail_msg msg = {.to = "a@example.org", .subject = "s"};
  uint64_t t0 = evx_now_ns();
  ck_assert_int_eq(evx_mail_send(m, &msg, rec_done, NULL, NULL), EVX_OK);
  run_loop();
  ck_assert_int_eq(R.status[0], EVX_EIO);
  ck_assert_msg(strstr(R.reason[0], "Not a directory") != NULL, "%s", R.reason[0]);
  ck_assert_int_eq(count_level(EVX_MAIL_WARN), 2);
  ck_assert_int_eq(count_level(EVX_MAIL_ERROR), 1);
  ck_assert_ptr_nonnull(strstr(R.lines[2], "FAILED after 3 attempt(s)"));
  ck_assert_uint_ge(evx_now_ns() - t0, (30 + 60) * 1000000ULL);
  evx_mailer_stats s;
  evx_mailer_stats_get(m, &s);
  ck_assert_uint_eq(s.failed, 1);
  ck_assert_uint_eq(s.retries, 2);
  ck_assert_uint_eq(s.attempts, 3);
  evx_mailer_free(m);
  unlink(spool);
}
END_TEST

START_TEST(test_mailer_new_errors) {
  ck_assert_ptr_null(evx_mailer_new(NULL, NULL));
  evx_mailer_opts three = {.spool_dir = spool, .threads = 3};
  ck_assert_ptr_null(evx_mailer_new(loop, &three));
  char file[160];
  snprintf(file, sizeof file, "%s/file", dir);
  FILE *f = fopen(file, "w");
  fclose(f);
  evx_mailer_opts in_file = {.spool_dir = file};
  ck_assert_ptr_null(evx_mailer_new(loop, &in_file));
}
END_TEST

/* ---- SMTP against aiosmtpd ---------------------------------------------------------- */

static evx_smtp_sink sink;

static void start_sink(int fail_first) {
  char inbox[160];
  snprintf(inbox, sizeof inbox, "%s/inbox", dir);
  ck_assert_int_eq(mkdir(inbox, 0755), 0);
  ck_assert_msg(evx_smtp_sink_start(&sink, inbox, fail_first) == 0,
                "cannot start /usr/bin/python3 -m aiosmtpd (python3-aiosmtpd installed?)");
}

static evx_mailer *smtp_mailer(int port, unsigned attempts, uint64_t backoff) {
  char url[64];
  snprintf(url, sizeof url, "smtp://127.0.0.1:%d", port);
  evx_mailer_opts o = {.smtp_url = url, .from = "Notes <notes@example.org>",
                       .max_attempts = attempts, .backoff_ms = backoff, .timeout_ms = 5000,
                       .log = rec_log, .log_arg = &R};
  evx_mailer *m = evx_mailer_new(loop, &o);
  ck_assert_ptr_nonnull(m);
  return m;
}

START_TEST(test_smtp_delivers) {
  memset(&R, 0, sizeof R);
  start_sink(0);
  evx_mailer *m = smtp_mailer(sink.port, 3, 50);
  R.want = 2;
  evx_mail_msg msg = {.to = "Team <team@example.org>, ops@example.org",
                      .subject = "New note #1: héllo", .body = "first line\n.leading dot\n"};
  ck_assert_int_eq(evx_mail_send(m, &msg, rec_done, NULL, NULL), EVX_OK);
  evx_mail_msg msg2 = {.to = "x@example.org", .subject = "second"};
  ck_assert_int_eq(evx_mail_send(m, &msg2, rec_done, NULL, NULL), EVX_OK);
  run_loop();
  ck_assert_int_eq(R.status[0], EVX_OK);
  ck_assert_int_eq(R.status[1], EVX_OK);

  char line[1024], from[128], rcpts[256], file[256];
  int subj_at = 0;
  ck_assert_int_eq(evx_smtp_sink_line(&sink, line, sizeof line, 5000), 0);
  ck_assert_int_eq(sscanf(line, "MSG %127s %255s %255s %n", from, rcpts, file, &subj_at), 3);
  ck_assert_str_eq(from, "notes@example.org");
  ck_assert_str_eq(rcpts, "team@example.org,ops@example.org");
  ck_assert_str_eq(line + subj_at, "New note #1: héllo");
  const char *text = slurp(file);
  ck_assert_ptr_nonnull(strstr(text, "\r\n\r\nfirst line\r\n.leading dot\r\n")); /* dot-stuffing undone */
  ck_assert_int_eq(evx_smtp_sink_line(&sink, line, sizeof line, 5000), 0);
  ck_assert_ptr_nonnull(strstr(line, " second"));
  ck_assert_ptr_nonnull(strstr(R.lines[0], "sent via smtp://127.0.0.1:"));
  evx_mailer_free(m);
  evx_smtp_sink_stop(&sink);
}
END_TEST

/* The server answers 451 twice, then accepts: two retries, then success. */
START_TEST(test_smtp_retry_then_success) {
  memset(&R, 0, sizeof R);
  start_sink(2);
  evx_mailer *m = smtp_mailer(sink.port, 5, 40);
  R.want = 1;
  evx_mail_msg msg = {.to = "a@example.org", .subject = "third time lucky"};
  ck_assert_int_eq(evx_mail_send(m, &msg, rec_done, NULL, NULL), EVX_OK);
  run_loop();
  ck_assert_int_eq(R.status[0], EVX_OK);
  char line[512];
  ck_assert_int_eq(evx_smtp_sink_line(&sink, line, sizeof line, 5000), 0);
  ck_assert_str_eq(line, "TEMPFAIL");
  ck_assert_int_eq(evx_smtp_sink_line(&sink, line, sizeof line, 5000), 0);
  ck_assert_str_eq(line, "TEMPFAIL");
  ck_assert_int_eq(evx_smtp_sink_line(&sink, line, sizeof line, 5000), 0);
  ck_assert_ptr_nonnull(strstr(line, "third time lucky"));
  ck_assert_int_eq(count_level(EVX_MAIL_WARN), 2);
  ck_assert_msg(strstr(R.lines[0], "SMTP 451") != NULL, "%s", R.lines[0]);
  ck_assert_ptr_nonnull(strstr(R.lines[2], "attempt 3/5"));
  /* Backoff doubles: 40 ms, then 80 ms between a failure and the next attempt. */
  ck_assert_uint_ge(R.at_ns[1] - R.at_ns[0], 35 * 1000000ULL);
  ck_assert_uint_ge(R.at_ns[2] - R.at_ns[1], 75 * 1000000ULL);
  evx_mailer_stats s;
  evx_mailer_stats_get(m, &s);
  ck_assert_uint_eq(s.sent, 1);
  ck_assert_uint_eq(s.retries, 2);
  ck_assert_uint_eq(s.attempts, 3);
  evx_mailer_free(m);
  evx_smtp_sink_stop(&sink);
}
END_TEST

/* evx_mail_deliver_now: one blocking attempt on a non-loop thread, for a
 * durable task handler; the caller's Message-ID is kept, 4xx is EVX_EIO
 * (retry), 5xx and bad input EVX_EINVAL (do not), never on the loop thread. */
typedef struct now_call {
  evx_mailer *m;
  evx_mail_msg msg;
  int rc;
  char err[256];
} now_call;

static void *now_thread(void *arg) {
  now_call *c = arg;
  c->rc = evx_mail_deliver_now(c->m, &c->msg, c->err, sizeof c->err);
  return NULL;
}

static int deliver_now_on_thread(evx_mailer *m, const evx_mail_msg *msg, char *err, size_t n) {
  now_call c = {.m = m, .msg = *msg};
  pthread_t t;
  ck_assert_int_eq(pthread_create(&t, NULL, now_thread, &c), 0);
  ck_assert_int_eq(pthread_join(t, NULL), 0);
  snprintf(err, n, "%s", c.err);
  return c.rc;
}

START_TEST(test_deliver_now) {
  memset(&R, 0, sizeof R);
  start_sink(1); /* the first mail gets 451 */
  evx_mailer *m = smtp_mailer(sink.port, 5, 40);
  char err[256] = "";
  evx_mail_msg msg = {.to = "a@example.org", .subject = "task mail",
                      .message_id = "<task-17@notes.example.org>"};
  ck_assert_int_eq(deliver_now_on_thread(m, &msg, err, sizeof err), EVX_EIO);
  ck_assert_msg(strstr(err, "451") != NULL, "%s", err);
  ck_assert_int_eq(deliver_now_on_thread(m, &msg, err, sizeof err), EVX_OK);
  char line[1024], from[128], rcpts[256], file[256];
  ck_assert_int_eq(evx_smtp_sink_line(&sink, line, sizeof line, 5000), 0);
  ck_assert_str_eq(line, "TEMPFAIL");
  ck_assert_int_eq(evx_smtp_sink_line(&sink, line, sizeof line, 5000), 0);
  ck_assert_int_eq(sscanf(line, "MSG %127s %255s %255s", from, rcpts, file), 3);
  ck_assert_ptr_nonnull(strstr(slurp(file), "\r\nMessage-ID: <task-17@notes.example.org>\r\n"));
  evx_mail_msg rej = {.to = "reject@example.org", .subject = "nope"};
  ck_assert_int_eq(deliver_now_on_thread(m, &rej, err, sizeof err), EVX_EINVAL);
  ck_assert_msg(strstr(err, "550") != NULL, "%s", err);
  const char *bad_ids[] = {"task-17@x", "<no-at>", "<a b@c>", "<@c>", "<a@>", "<a@b@c>"};
  for (size_t i = 0; i < sizeof bad_ids / sizeof bad_ids[0]; i++) {
    evx_mail_msg b = {.to = "a@example.org", .message_id = bad_ids[i]};
    ck_assert_int_eq(deliver_now_on_thread(m, &b, err, sizeof err), EVX_EINVAL);
    char *text = NULL;
    ck_assert_int_eq(evx_mail_format(&b, NULL, &text, NULL), EVX_EINVAL);
  }
  /* The loop thread must not block. */
  ck_assert_int_eq(evx_mail_deliver_now(m, &msg, err, sizeof err), EVX_EINVAL);
  evx_mailer_stats s;
  evx_mailer_stats_get(m, &s);
  ck_assert_uint_eq(s.sent, 1);
  ck_assert_uint_eq(s.attempts, 3);
  ck_assert_uint_eq(s.failed, 1);
  ck_assert_int_eq(R.nlines, 0); /* nothing logged from the worker */
  evx_mailer_free(m);
  evx_smtp_sink_stop(&sink);
}
END_TEST

/* 550 for a recipient is permanent: no retry. */
START_TEST(test_smtp_permanent_error) {
  memset(&R, 0, sizeof R);
  start_sink(0);
  evx_mailer *m = smtp_mailer(sink.port, 5, 40);
  R.want = 1;
  evx_mail_msg msg = {.to = "reject@example.org", .subject = "nope"};
  ck_assert_int_eq(evx_mail_send(m, &msg, rec_done, NULL, NULL), EVX_OK);
  run_loop();
  ck_assert_int_eq(R.status[0], EVX_EIO);
  ck_assert_msg(strstr(R.reason[0], "SMTP 550") != NULL, "%s", R.reason[0]);
  ck_assert_int_eq(count_level(EVX_MAIL_WARN), 0);
  ck_assert_ptr_nonnull(strstr(R.lines[0], "FAILED after 1 attempt(s)"));
  evx_mailer_free(m);
  evx_smtp_sink_stop(&sink);
}
END_TEST

/* Nothing listens: retries with backoff, then a logged failure; the loop
 * keeps running other work all along (a timer keeps ticking). */
static int ticks;
static evx_timer *tick_timer;
static void tick(void *arg) {
  (void)arg;
  ticks++;
  tick_timer = evx_call_later(loop, 5, tick, NULL);
}

START_TEST(test_smtp_dead_server) {
  memset(&R, 0, sizeof R);
  int hold = -1;
  int port = evx_dead_port(&hold);
  ck_assert_int_gt(port, 0);
  evx_mailer *m = smtp_mailer(port, 4, 50);
  R.want = 1;
  evx_mail_msg msg = {.to = "a@example.org", .subject = "lost"};
  ck_assert_int_eq(evx_mail_send(m, &msg, rec_done, NULL, NULL), EVX_OK);
  ticks = 0;
  tick_timer = evx_call_later(loop, 5, tick, NULL);
  uint64_t t0 = evx_now_ns();
  run_loop();
  uint64_t spent_ms = (evx_now_ns() - t0) / 1000000;
  evx_timer_cancel(tick_timer);
  ck_assert_int_eq(R.status[0], EVX_EIO);
  ck_assert_msg(strstr(R.reason[0], "onnect") != NULL, "%s", R.reason[0]);
  ck_assert_int_eq(count_level(EVX_MAIL_WARN), 3);
  ck_assert_int_eq(count_level(EVX_MAIL_ERROR), 1);
  ck_assert_ptr_nonnull(strstr(R.lines[3], "FAILED after 4 attempt(s)"));
  ck_assert_ptr_nonnull(strstr(R.lines[0], "retry in 50 ms"));
  ck_assert_ptr_nonnull(strstr(R.lines[1], "retry in 100 ms"));
  ck_assert_ptr_nonnull(strstr(R.lines[2], "retry in 200 ms"));
  ck_assert_uint_ge(spent_ms, 330); /* libevent timers may fire a ms early */
  /* 350 ms of backoff, during which the loop ran a 5 ms timer many times. */
  ck_assert_int_ge(ticks, 20);
  evx_executor_stats st;
  evx_executor_stats_get(evx_mailer_executor(m), &st);
  ck_assert_uint_eq(st.completed, 4);
  ck_assert_uint_lt(st.run_ns_total, 200 * 1000000ULL); /* no worker slept through the backoff */
  evx_mailer_free(m);
  close(hold);
}
END_TEST

/* ---- shutdown --------------------------------------------------------------------- */

START_TEST(test_shutdown_drain_and_cancel) {
  memset(&R, 0, sizeof R);
  int hold = -1;
  int port = evx_dead_port(&hold);
  evx_mailer *m = smtp_mailer(port, 10, 10000);
  R.want = 1;
  evx_mail_msg msg = {.to = "a@example.org", .subject = "pending"};
  ck_assert_int_eq(evx_mail_send(m, &msg, rec_done, NULL, NULL), EVX_OK);
  /* DRAIN closes the door but the mail keeps its retries. */
  ck_assert_int_eq(evx_mailer_shutdown(m, EVX_SHUTDOWN_DRAIN), EVX_OK);
  ck_assert_int_eq(evx_mail_send(m, &msg, rec_done, NULL, NULL), EVX_ECLOSED);
  ck_assert_uint_eq(evx_mailer_pending(m), 1);
  /* Wait until the first attempt failed and a 10 s retry timer is armed. */
  stop_on_log = 1;
  run_loop();
  ck_assert_int_eq(R.levels[0], EVX_MAIL_WARN);
  ck_assert_uint_eq(evx_mailer_pending(m), 1);
  ck_assert_int_eq(R.ndone, 0);
  /* CANCEL ends the waiting retry at once, with a logged reason. */
  ck_assert_int_eq(evx_mailer_shutdown(m, EVX_SHUTDOWN_CANCEL), EVX_OK);
  ck_assert_int_eq(R.ndone, 1);
  ck_assert_int_eq(R.status[0], EVX_ECANCELED);
  ck_assert_ptr_nonnull(strstr(R.lines[1], "cancelled at shutdown after 1 attempt(s)"));
  ck_assert_uint_eq(evx_mailer_pending(m), 0);
  evx_mailer_stats s;
  evx_mailer_stats_get(m, &s);
  ck_assert_uint_eq(s.cancelled, 1);
  evx_mailer_free(m);
  close(hold);
}
END_TEST

START_TEST(test_free_ends_pending) {
  memset(&R, 0, sizeof R);
  evx_mailer_opts o = {.spool_dir = spool, .log = rec_log, .log_arg = &R};
  evx_mailer *m = evx_mailer_new(loop, &o);
  evx_mail_msg msg = {.to = "a@example.org", .subject = "s"};
  for (int i = 0; i < 5; i++) ck_assert_int_eq(evx_mail_send(m, &msg, rec_done, NULL, NULL), EVX_OK);
  /* Freed before the loop ran: each mail gets exactly one outcome. */
  evx_mailer_free(m);
  ck_assert_int_eq(R.ndone, 5);
  int sent = 0, cancelled = 0;
  for (int i = 0; i < 5; i++) {
    sent += R.status[i] == EVX_OK;
    cancelled += R.status[i] == EVX_ECANCELED;
  }
  ck_assert_int_eq(sent + cancelled, 5);
  ck_assert_int_eq(count_files(spool, ".eml"), sent);
}
END_TEST

Suite *suite(void);
Suite *suite(void) {
  Suite *s = suite_create("mail");
  TCase *tc = tcase_create("mail");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_format);
  tcase_add_test(tc, test_format_encodings);
  tcase_add_test(tc, test_format_rejects);
  tcase_add_test(tc, test_format_subject_crlf);
  tcase_add_test(tc, test_spool);
  tcase_add_test(tc, test_check_and_quiet_default_log);
  tcase_add_test(tc, test_spool_failure_retries);
  tcase_add_test(tc, test_left_open_freed_by_loop_free);
  tcase_add_test(tc, test_mailer_new_errors);
  tcase_add_test(tc, test_smtp_delivers);
  tcase_add_test(tc, test_smtp_retry_then_success);
  tcase_add_test(tc, test_smtp_permanent_error);
  tcase_add_test(tc, test_deliver_now);
  tcase_add_test(tc, test_smtp_dead_server);
  tcase_add_test(tc, test_shutdown_drain_and_cancel);
  tcase_add_test(tc, test_free_ends_pending);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return evx_test_main(suite()); }
