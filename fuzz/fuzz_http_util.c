/*
 * Fuzz target: the pure HTTP helpers of http/http-util.c - reason phrases,
 * percent-decoding and query-string splitting - called directly, without a
 * server.
 *
 * Input: byte 0 and 1 pick a status code for evx__http_reason, the rest is
 * a string given to evx__urldecode (with and without '+' as space) and to
 * evx__query_split. Checked against a reference decoder written here
 * independently (a naive one, index by index):
 *  - the reason phrase is a non-empty string for every int;
 *  - the decoded bytes and length, or the NUL-byte refusal, equal the
 *    reference's, and decoding in place gives the same as out of place;
 *  - the query split returns at most evx__query_count parameters, each key
 *    and value inside the buffer, equal to the reference decoding of the
 *    raw piece between '&'s (split at its first '='), in order, with empty
 *    pieces and NUL-decoding pieces left out.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "http-util.h"

static int ref_hex(char c) {
  const char *digits = "0123456789abcdef";
  const char *p = c ? strchr(digits, tolower((unsigned char)c)) : NULL;
  return p ? (int)(p - digits) : -1;
}

/* Reference: decode into out (n + 1 bytes); -1 when a NUL is decoded. */
static long ref_decode(const char *s, size_t n, int plus, char *out) {
  size_t j = 0, i = 0;
  while (i < n) {
    if (s[i] == '%' && i + 2 < n && ref_hex(s[i + 1]) >= 0 && ref_hex(s[i + 2]) >= 0) {
      int v = ref_hex(s[i + 1]) * 16 + ref_hex(s[i + 2]);
      if (v == 0) return -1;
      out[j++] = (char)v;
      i += 3;
    } else {
      out[j++] = (plus && s[i] == '+') ? ' ' : s[i];
      i++;
    }
  }
  out[j] = '\0';
  return (long)j;
}

static void check_decode(const char *s, size_t n, int plus) {
  char *a = malloc(n + 1), *b = malloc(n + 1), *c = malloc(n + 1);
  EVX_FUZZ_CHECK(a && b && c);
  long want = ref_decode(s, n, plus, a);
  size_t got = evx__urldecode(b, s, n, plus);
  memcpy(c, s, n);
  c[n] = '\0';
  size_t got_inplace = evx__urldecode(c, c, n, plus);
  if (want < 0) {
    EVX_FUZZ_CHECK(got == (size_t)-1 && got_inplace == (size_t)-1);
  } else {
    EVX_FUZZ_CHECK(got == (size_t)want && got_inplace == (size_t)want);
    EVX_FUZZ_CHECK(memcmp(a, b, got + 1) == 0 && memcmp(a, c, got + 1) == 0);
  }
  free(a);
  free(b);
  free(c);
}

static void check_query(const char *q) {
  size_t n = strlen(q), count = evx__query_count(q);
  char *buf = malloc(n + 1), *ref = malloc(n + 1);
  const char **params = calloc(2 * count, sizeof *params);
  EVX_FUZZ_CHECK(buf && ref && params);
  memcpy(buf, q, n + 1);
  size_t np = evx__query_split(buf, params);
  EVX_FUZZ_CHECK(np <= count);
  size_t k = 0, start = 0;
  for (size_t i = 0; i <= n; i++) {
    if (i < n && q[i] != '&') continue;
    size_t len = i - start;
    if (len) {
      const char *piece = q + start;
      const char *eq = memchr(piece, '=', len);
      size_t klen = eq ? (size_t)(eq - piece) : len;
      long kd = ref_decode(piece, klen, 1, ref);
      if (kd >= 0) {
        char *key = strdup(ref);
        long vd = eq ? ref_decode(eq + 1, len - klen - 1, 1, ref) : (ref[0] = '\0', 0);
        if (vd >= 0) {
          EVX_FUZZ_CHECK(k < np);
          const char *pk = params[2 * k], *pv = params[2 * k + 1];
          EVX_FUZZ_CHECK(pk >= buf && pk <= buf + n && pv >= buf && pv <= buf + n);
          EVX_FUZZ_CHECK(strcmp(pk, key) == 0 && strcmp(pv, ref) == 0);
          k++;
        }
        free(key);
      }
    }
    start = i + 1;
  }
  EVX_FUZZ_CHECK(k == np);
  free(buf);
  free(ref);
  free((void *)params);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  int status = (int)(int16_t)(data[0] | data[1] << 8);
  const char *reason = evx__http_reason(status);
  EVX_FUZZ_CHECK(reason && reason[0]);
  const char *s = (const char *)data + 2;
  size_t n = size - 2;
  check_decode(s, n, 0);
  check_decode(s, n, 1);
  /* Queries are C strings: the part before the first NUL byte. */
  char *q = malloc(n + 1);
  EVX_FUZZ_CHECK(q != NULL);
  memcpy(q, s, n);
  q[n] = '\0';
  check_query(q);
  free(q);
  return 0;
}
