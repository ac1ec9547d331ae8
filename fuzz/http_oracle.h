/* Test-only (fuzz/): an independent reading of RFC 9112 request framing, for
 * the differential check in fuzz_http.c. It works on the whole input at once,
 * line by line, where the server's scanner (http/http-conn.c) is an
 * incremental byte state machine; both must agree on where each message ends
 * and on which message is the first bad one. */
#ifndef EVX_FUZZ_HTTP_ORACLE_H
#define EVX_FUZZ_HTTP_ORACLE_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct evx_oracle {
  int complete; /* valid, complete messages before the first bad one or the end */
  int bad;      /* 0, or the status the first bad message must get (400, 413, 501, 505) */
  int incomplete; /* the input ends inside a message (the server may reject it early) */
} evx_oracle;

/* One line from *p: its content [*s, *s + *len), the terminator consumed.
 * 0: no terminator yet (incomplete); -1: a CR not followed by LF. */
static int evx_oracle_line(const uint8_t **p, const uint8_t *end, const uint8_t **s, size_t *len) {
  const uint8_t *lf = memchr(*p, '\n', (size_t)(end - *p));
  const uint8_t *cr = memchr(*p, '\r', (size_t)(end - *p));
  if (cr && (!lf || cr < lf)) {
    if (cr + 1 >= end) return 0;
    if (cr[1] != '\n') return -1;
    lf = cr + 1;
  }
  if (!lf) return 0;
  *s = *p;
  *len = (size_t)((cr && cr < lf ? cr : lf) - *p);
  *p = lf + 1;
  return 1;
}

static int evx_oracle_tchar(uint8_t c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* A field line: 1 ok (name/value out, value trimmed), 0 bad. */
static int evx_oracle_field(const uint8_t *s, size_t n, char *name, size_t ncap, char *val,
                            size_t vcap, int *val_long) {
  size_t i = 0;
  while (i < n && evx_oracle_tchar(s[i])) i++;
  if (i == 0 || i >= n || s[i] != ':') return 0;
  size_t nl = i < ncap - 1 ? i : ncap - 1;
  memcpy(name, s, nl);
  name[nl] = '\0';
  if (i >= ncap - 1) name[0] = '\0'; /* long names are never framing fields */
  i++;
  for (size_t k = i; k < n; k++)
    if ((s[k] < 0x20 && s[k] != '\t') || s[k] == 0x7f) return 0;
  while (i < n && (s[i] == ' ' || s[i] == '\t')) i++;
  size_t e = n;
  while (e > i && (s[e - 1] == ' ' || s[e - 1] == '\t')) e--;
  *val_long = e - i >= vcap;
  size_t vl = *val_long ? vcap - 1 : e - i;
  memcpy(val, s + i, vl);
  val[vl] = '\0';
  return 1;
}

/* max_body: the server's max_body_size ((size_t)-1: unlimited). A body above
 * it is 413 - for Content-Length at the end of the head, for chunked at the
 * chunk-size line that takes the sum of the sizes above it. */
static evx_oracle evx_oracle_run(const uint8_t *d, size_t size, size_t max_body) {
  evx_oracle o = {0, 0, 0};
  const uint8_t *p = d, *end = d + size, *s;
  size_t n;
  int r;
#define BAD(st) do { o.bad = (st); return o; } while (0)
#define INCOMPLETE() do { o.incomplete = 1; return o; } while (0)
  for (;;) {
    while (p < end && (*p == '\r' || *p == '\n')) {
      if (*p == '\r' && p + 1 < end && p[1] != '\n') BAD(400);
      if (*p == '\r' && p + 1 >= end) INCOMPLETE();
      p += *p == '\r' ? 2 : 1;
    }
    if (p >= end) return o;
    /* request line */
    if ((r = evx_oracle_line(&p, end, &s, &n)) <= 0) {
      if (r < 0) BAD(400);
      INCOMPLETE();
    }
    const uint8_t *sp1 = memchr(s, ' ', n);
    if (!sp1 || sp1 == s) BAD(400);
    for (const uint8_t *q = s; q < sp1; q++)
      if (!evx_oracle_tchar(*q)) BAD(400);
    const uint8_t *t = sp1 + 1, *le = s + n;
    const uint8_t *sp2 = memchr(t, ' ', (size_t)(le - t));
    if (!sp2 || sp2 == t) BAD(400);
    for (const uint8_t *q = t; q < sp2; q++)
      if (*q <= 0x20 || *q == 0x7f) BAD(400);
    const uint8_t *v = sp2 + 1;
    size_t vn = (size_t)(le - v);
    if (vn != 8 || memcmp(v, "HTTP/", 5) || v[6] != '.' || v[5] < '0' || v[5] > '9' ||
        v[7] < '0' || v[7] > '9')
      BAD(400);
    if (v[5] != '1') BAD(505);
    int minor = v[7] - '0';
    size_t mlen = (size_t)(sp1 - s);
    int nobody = (mlen == 4 && !memcmp(s, "HEAD", 4)) || (mlen == 5 && !memcmp(s, "TRACE", 5));
    /* fields */
    int ncl = 0, nte = 0, nhost = 0, te_bad = 0;
    uint64_t cl = 0;
    for (;;) {
      if ((r = evx_oracle_line(&p, end, &s, &n)) <= 0) {
        if (r < 0) BAD(400);
        INCOMPLETE();
      }
      if (n == 0) break;
      char name[24], val[40];
      int vlong;
      if (!evx_oracle_field(s, n, name, sizeof name, val, sizeof val, &vlong)) BAD(400);
      if (!strcasecmp(name, "content-length")) {
        if (vlong || !val[0] || strlen(val) > 18 || strspn(val, "0123456789") != strlen(val)) BAD(400);
        uint64_t x = strtoull(val, NULL, 10);
        if (ncl++ && x != cl) BAD(400);
        cl = x;
      } else if (!strcasecmp(name, "transfer-encoding")) {
        nte++;
        if (vlong || strcasecmp(val, "chunked")) te_bad = 1;
      } else if (!strcasecmp(name, "host")) {
        nhost++;
      }
    }
    if (nhost > 1 || (minor >= 1 && nhost == 0)) BAD(400);
    if (nte) {
      if (ncl || nte > 1 || minor == 0) BAD(400);
      if (te_bad) BAD(501);
      if (nobody) BAD(400);
      uint64_t total = 0; /* the chunk sizes so far */
      for (;;) { /* chunks */
        if ((r = evx_oracle_line(&p, end, &s, &n)) <= 0) {
          if (r < 0) BAD(400);
          INCOMPLETE();
        }
        size_t h = 0;
        uint64_t len = 0;
        while (h < n && strchr("0123456789abcdefABCDEF", s[h]) && s[h]) {
          len = len * 16 + (uint64_t)(s[h] <= '9' ? s[h] - '0' : (s[h] | 0x20) - 'a' + 10);
          h++;
        }
        if (h == 0 || h > 15) BAD(400);
        if (h < n) { /* BWS ; extension */
          size_t k = h;
          while (k < n && (s[k] == ' ' || s[k] == '\t')) k++;
          if (k >= n || s[k] != ';') BAD(400);
          if (n - h > 4097) BAD(400);
          for (; k < n; k++)
            if ((s[k] < 0x20 && s[k] != '\t') || s[k] == 0x7f) BAD(400);
        }
        if (len == 0) break;
        if (max_body != (size_t)-1 && total + len > max_body) BAD(413); /* len < 16^15: no overflow */
        total += len;
        if ((uint64_t)(end - p) < len) INCOMPLETE();
        p += len;
        if (p >= end) INCOMPLETE();
        if (*p == '\n') p++;
        else if (*p == '\r') {
          if (p + 1 >= end) INCOMPLETE();
          if (p[1] != '\n') BAD(400);
          p += 2;
        } else BAD(400);
      }
      for (;;) { /* trailers */
        if ((r = evx_oracle_line(&p, end, &s, &n)) <= 0) {
          if (r < 0) BAD(400);
          INCOMPLETE();
        }
        if (n == 0) break;
        char name[24], val[40];
        int vlong;
        if (!evx_oracle_field(s, n, name, sizeof name, val, sizeof val, &vlong)) BAD(400);
        if (!strcasecmp(name, "content-length") || !strcasecmp(name, "transfer-encoding") ||
            !strcasecmp(name, "host"))
          BAD(400);
      }
    } else if (cl) {
      if (nobody) BAD(400);
      if (max_body != (size_t)-1 && cl > max_body) BAD(413);
      if ((uint64_t)(end - p) < cl) INCOMPLETE();
      p += cl;
    }
    o.complete++;
  }
#undef BAD
#undef INCOMPLETE
}

#endif
