/* PRIVATE to evexec: never installed, never included by users.
 * Pure HTTP helpers: no I/O, no evhttp, no allocation. Fuzzed directly by
 * fuzz/fuzz_http_util.c. */
#ifndef EVX_HTTP_UTIL_H
#define EVX_HTTP_UTIL_H

#include <stddef.h>

/* The reason phrase for a status code. Never NULL; a static string. Unknown
 * codes get their class's name ("Client Error"...). */
const char *evx__http_reason(int status);

/* Percent-decode src[0..n) into dst (which may be src: decoding only
 * shrinks; dst needs n + 1 bytes). plus: '+' means a space. Malformed
 * escapes are kept as is. NUL-terminates dst. Returns the decoded length, or
 * (size_t)-1 if a NUL byte was decoded (dst is then unspecified). */
size_t evx__urldecode(char *dst, const char *src, size_t n, int plus);

/* An upper bound on the parameters of query string q (one more than its '&'s). */
size_t evx__query_count(const char *q);

/* Split query string buf ("a=1&b=x+y") in place into decoded parameters:
 * params[2i] is the i-th key, params[2i + 1] its value ("" without '='),
 * both pointing into buf. Empty pieces ("a=1&&b") are skipped, and so is a
 * parameter whose key or value decodes to a NUL byte. params must hold
 * 2 * evx__query_count(buf) pointers. Returns the number of parameters. */
size_t evx__query_split(char *buf, const char **params);

#endif
