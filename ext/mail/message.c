/*
 * Message building for evx_mailer: addresses and RFC 5322 text.
 *
 * DESIGN
 *  - Pure functions over borrowed input; any thread; output through the
 *    configured allocator.
 *  - Header injection is impossible by construction: addresses are checked
 *    character by character (CR/LF in From or To is EVX_EINVAL), and a
 *    Subject that is not short plain ASCII - control characters, CR and LF
 *    included - is written as RFC 2047 encoded words, whose base64 text holds
 *    no line break. A subject is never a reason to refuse a mail: it arrives,
 *    and decodes to exactly the bytes given.
 *  - Output uses CRLF everywhere. The body is 8bit (7bit when ASCII) unless a
 *    line exceeds the 998-byte limit of RFC 5322, then quoted-printable.
 *    Dot-stuffing is the SMTP transport's job (libcurl does it), so the spool
 *    keeps the message exactly as a mail client would read it.
 */
#include "mail-internal.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- a growable buffer ---------------------------------------------------- */

typedef struct sbuf {
  char *p;
  size_t len, cap;
  int oom;
} sbuf;

static void evx__mail_sb_grow(sbuf *b, size_t extra) {
  if (b->oom) return;
  if (extra > SIZE_MAX / 2 - b->len) {
    b->oom = 1;
    return;
  }
  size_t need = b->len + extra + 1;
  if (need <= b->cap) return;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < need) cap *= 2;
  char *p = evx_realloc(b->p, cap);
  if (!p) {
    b->oom = 1;
    return;
  }
  b->p = p;
  b->cap = cap;
}

static void evx__mail_sb_add(sbuf *b, const char *s, size_t n) {
  evx__mail_sb_grow(b, n);
  if (b->oom) return;
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void evx__mail_sb_str(sbuf *b, const char *s) { evx__mail_sb_add(b, s, strlen(s)); }

static void evx__mail_sb_ch(sbuf *b, char c) { evx__mail_sb_add(b, &c, 1); }

/* ---- addresses ---------------------------------------------------------- */

static int evx__mail_has_crlf(const char *s) { return s && strpbrk(s, "\r\n") != NULL; }

int evx__mail_addr_ok(const char *a) {
  if (!a) return 0;
  size_t n = strlen(a);
  if (n < 3 || n > 254) return 0;
  const char *at = strrchr(a, '@');
  if (!at || at == a || at[1] == '\0') return 0;
  for (const unsigned char *p = (const unsigned char *)a; *p; p++) {
    if (*p <= 0x20 || *p == 0x7f) return 0;
    if (strchr("<>,;\"()[]\\", *p)) return 0;
  }
  return 1;
}

static const char *evx__mail_skip_ws(const char *s, const char *end) {
  while (s < end && (*s == ' ' || *s == '\t')) s++;
  return s;
}

static const char *evx__mail_trim_end(const char *s, const char *end) {
  while (end > s && (end[-1] == ' ' || end[-1] == '\t')) end--;
  return end;
}

/* The addr-spec of one mailbox "addr" or "Display Name <addr>" in [s, end). */
static char *evx__mail_mailbox_addr(const char *s, const char *end) {
  s = evx__mail_skip_ws(s, end);
  end = evx__mail_trim_end(s, end);
  if (s == end) return NULL;
  const char *lt = NULL, *gt = NULL;
  int quoted = 0;
  for (const char *p = s; p < end; p++) {
    if (*p == '"') quoted = !quoted;
    else if (!quoted && *p == '<') lt = p;
    else if (!quoted && *p == '>') gt = p;
  }
  if (quoted) return NULL;
  const char *a = s, *b = end;
  if (lt || gt) {
    if (!lt || !gt || gt < lt || gt != end - 1) return NULL;
    a = lt + 1;
    b = gt;
  }
  size_t n = (size_t)(b - a);
  char *addr = evx_malloc(n + 1);
  if (!addr) return NULL;
  memcpy(addr, a, n);
  addr[n] = '\0';
  if (!evx__mail_addr_ok(addr)) {
    evx_free(addr);
    return NULL;
  }
  return addr;
}

void evx__mail_env_free(evx__mail_env *env) {
  if (!env) return;
  evx_free(env->from);
  for (size_t i = 0; i < env->nrcpt; i++) evx_free(env->rcpt[i]);
  evx_free(env->rcpt);
  memset(env, 0, sizeof *env);
}

int evx__mail_envelope(const evx_mail_msg *msg, const char *default_from, evx__mail_env *env) {
  memset(env, 0, sizeof *env);
  if (!msg || !msg->to || evx__mail_has_crlf(msg->to)) return EVX_EINVAL;
  const char *from = msg->from ? msg->from : default_from ? default_from : "evexec@localhost";
  if (evx__mail_has_crlf(from)) return EVX_EINVAL;
  env->from = evx__mail_mailbox_addr(from, from + strlen(from));
  if (!env->from) return EVX_EINVAL;
  /* Split `to` at commas outside quotes. */
  const char *s = msg->to, *tok = s;
  int quoted = 0;
  for (const char *p = s;; p++) {
    if (*p == '"') quoted = !quoted;
    if (*p == '\0' || (*p == ',' && !quoted)) {
      if (evx__mail_skip_ws(tok, p) != p) {
        char **v = evx_realloc(env->rcpt, (env->nrcpt + 1) * sizeof *v);
        if (!v) goto oom;
        env->rcpt = v;
        char *a = evx__mail_mailbox_addr(tok, p);
        if (!a) goto bad;
        env->rcpt[env->nrcpt++] = a;
      }
      if (*p == '\0') break;
      tok = p + 1;
    }
  }
  if (env->nrcpt == 0) goto bad;
  return EVX_OK;
bad:
  evx__mail_env_free(env);
  return EVX_EINVAL;
oom:
  evx__mail_env_free(env);
  return EVX_ENOMEM;
}

/* ---- headers ------------------------------------------------------------- */

static const char evx__mail_b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void evx__mail_sb_base64(sbuf *b, const unsigned char *s, size_t n) {
  for (size_t i = 0; i < n; i += 3) {
    unsigned v = (unsigned)s[i] << 16;
    if (i + 1 < n) v |= (unsigned)s[i + 1] << 8;
    if (i + 2 < n) v |= s[i + 2];
    char q[4] = {evx__mail_b64[(v >> 18) & 63], evx__mail_b64[(v >> 12) & 63], i + 1 < n ? evx__mail_b64[(v >> 6) & 63] : '=',
                 i + 2 < n ? evx__mail_b64[v & 63] : '='};
    evx__mail_sb_add(b, q, 4);
  }
}

static int evx__mail_plain_ascii(const char *s, size_t max) {
  size_t n = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++, n++) {
    if (n >= max) return 0;
    if ((*p < 0x20 && *p != '\t') || *p >= 0x7f) return 0;
  }
  /* "=?" could be read back as an encoded word: encode to stay unambiguous. */
  return strstr(s, "=?") == NULL;
}

/* Subject: as is when short plain ASCII; else RFC 2047 B-encoded words of at
 * most 45 input bytes, never splitting a UTF-8 sequence, folded with CRLF SP.
 * CR, LF and other control bytes take the encoded path (evx__mail_plain_ascii refuses
 * them), so they reach the reader as they were and never end the header. */
static void evx__mail_sb_subject(sbuf *b, const char *subj) {
  evx__mail_sb_str(b, "Subject: ");
  if (evx__mail_plain_ascii(subj, 900)) {
    evx__mail_sb_str(b, subj);
  } else {
    const unsigned char *p = (const unsigned char *)subj;
    size_t n = strlen(subj), i = 0;
    int first = 1;
    while (i < n) {
      size_t take = n - i < 45 ? n - i : 45;
      /* back off to a UTF-8 boundary (a byte that is not 10xxxxxx) */
      while (take < n - i && take > 1 && (p[i + take] & 0xC0) == 0x80) take--;
      if (!first) evx__mail_sb_str(b, "\r\n ");
      evx__mail_sb_str(b, "=?UTF-8?B?");
      evx__mail_sb_base64(b, p + i, take);
      evx__mail_sb_str(b, "?=");
      first = 0;
      i += take;
    }
  }
  evx__mail_sb_str(b, "\r\n");
}

static void evx__mail_sb_date(sbuf *b) {
  static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char *const mons[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  char d[64];
  /* Day and month names by hand: strftime's depend on the locale. */
  snprintf(d, sizeof d, "Date: %s, %02d %s %04d %02d:%02d:%02d +0000\r\n", days[tm.tm_wday % 7],
           tm.tm_mday, mons[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
  evx__mail_sb_str(b, d);
}

static int evx__mail_host_ok(const char *h) {
  if (!h || !*h || strlen(h) > 200) return 0;
  for (const unsigned char *p = (const unsigned char *)h; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          *p == '.' || *p == '-'))
      return 0;
  return 1;
}

static atomic_uint_fast64_t evx__mail_msgid_seq;

/* ---- body ------------------------------------------------------------------ */

/* Body with CRLF line ends; reports the longest line and whether it is ASCII. */
static void evx__mail_normalize_body(sbuf *out, const char *body, size_t *longest, int *ascii) {
  size_t line = 0;
  *longest = 0;
  *ascii = 1;
  for (const char *p = body; *p; p++) {
    if (*p == '\r' || *p == '\n') {
      if (*p == '\r' && p[1] == '\n') p++;
      evx__mail_sb_str(out, "\r\n");
      line = 0;
      continue;
    }
    if ((unsigned char)*p >= 0x80) *ascii = 0;
    evx__mail_sb_ch(out, *p);
    if (++line > *longest) *longest = line;
  }
  if (out->len < 2 || memcmp(out->p + out->len - 2, "\r\n", 2) != 0) evx__mail_sb_str(out, "\r\n");
}

/* Quoted-printable (RFC 2045 6.7) of CRLF text; output lines <= 76. */
static void evx__mail_sb_qp(sbuf *b, const char *s, size_t n) {
  static const char hex[] = "0123456789ABCDEF";
  size_t col = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '\r' && i + 1 < n && s[i + 1] == '\n') {
      evx__mail_sb_str(b, "\r\n");
      col = 0;
      i++;
      continue;
    }
    int at_eol = i + 1 >= n || s[i + 1] == '\r';
    char enc[3];
    size_t k;
    if ((c >= 33 && c <= 126 && c != '=') || ((c == ' ' || c == '\t') && !at_eol)) {
      enc[0] = (char)c;
      k = 1;
    } else {
      enc[0] = '=';
      enc[1] = hex[c >> 4];
      enc[2] = hex[c & 15];
      k = 3;
    }
    if (col + k > 75) {
      evx__mail_sb_str(b, "=\r\n");
      col = 0;
    }
    evx__mail_sb_add(b, enc, k);
    col += k;
  }
}

/* ---- the message ----------------------------------------------------------- */

int evx__mail_msgid_ok(const char *id) {
  size_t n = strlen(id);
  if (n < 5 || n > 250 || id[0] != '<' || id[n - 1] != '>') return 0;
  int at = 0;
  for (size_t i = 1; i + 1 < n; i++) {
    unsigned char c = (unsigned char)id[i];
    if (c <= 0x20 || c >= 0x7f || c == '<' || c == '>') return 0;
    if (c == '@') {
      if (at || i == 1 || i + 2 == n) return 0;
      at = 1;
    }
  }
  return at;
}

int evx_mail_format(const evx_mail_msg *msg, const char *hostname, char **out, char **message_id) {
  if (!msg || !out) return EVX_EINVAL;
  evx__mail_env env;
  int err = evx__mail_envelope(msg, NULL, &env);
  if (err) return err;
  evx__mail_env_free(&env);
  const char *subject = msg->subject ? msg->subject : "";
  const char *from = msg->from ? msg->from : "evexec@localhost";
  const char *host = evx__mail_host_ok(hostname) ? hostname : "localhost";

  sbuf b = {0}, body = {0}, id = {0};
  if (msg->message_id) {
    if (!evx__mail_msgid_ok(msg->message_id)) return EVX_EINVAL;
    evx__mail_sb_str(&id, msg->message_id);
  } else {
    char tmp[160];
    snprintf(tmp, sizeof tmp, "<%llx.%llx.%ld@", (unsigned long long)evx_now_ns(),
             (unsigned long long)atomic_fetch_add(&evx__mail_msgid_seq, 1), (long)getpid());
    evx__mail_sb_str(&id, tmp);
    evx__mail_sb_str(&id, host);
    evx__mail_sb_ch(&id, '>');
  }

  evx__mail_sb_date(&b);
  evx__mail_sb_str(&b, "From: ");
  evx__mail_sb_str(&b, from);
  evx__mail_sb_str(&b, "\r\nTo: ");
  evx__mail_sb_str(&b, msg->to);
  evx__mail_sb_str(&b, "\r\n");
  evx__mail_sb_subject(&b, subject);
  evx__mail_sb_str(&b, "Message-ID: ");
  if (id.p) evx__mail_sb_str(&b, id.p);
  evx__mail_sb_str(&b, "\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\n");

  size_t longest;
  int ascii;
  evx__mail_normalize_body(&body, msg->body ? msg->body : "", &longest, &ascii);
  if (longest > 998) {
    evx__mail_sb_str(&b, "Content-Transfer-Encoding: quoted-printable\r\nX-Mailer: evexec\r\n\r\n");
    if (body.p) evx__mail_sb_qp(&b, body.p, body.len);
    if (b.len < 2 || memcmp(b.p + b.len - 2, "\r\n", 2) != 0) evx__mail_sb_str(&b, "\r\n");
  } else {
    evx__mail_sb_str(&b, ascii ? "Content-Transfer-Encoding: 7bit\r\n" : "Content-Transfer-Encoding: 8bit\r\n");
    evx__mail_sb_str(&b, "X-Mailer: evexec\r\n\r\n");
    if (body.p) evx__mail_sb_add(&b, body.p, body.len);
  }
  evx_free(body.p);
  if (b.oom || body.oom || id.oom || !b.p || !id.p) {
    evx_free(b.p);
    evx_free(id.p);
    return EVX_ENOMEM;
  }
  *out = b.p;
  if (message_id)
    *message_id = id.p;
  else
    evx_free(id.p);
  return EVX_OK;
}
