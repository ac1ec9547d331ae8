/*
 * Pure HTTP helpers: reason phrases, percent-decoding, query strings.
 * No I/O and no allocation, so fuzz/fuzz_http_util.c drives them directly.
 */
#include "http-util.h"

#include <string.h>

const char *evx__http_reason(int status) {
  switch (status) {
  case 100: return "Continue";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 206: return "Partial Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 303: return "See Other";
  case 304: return "Not Modified";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 410: return "Gone";
  case 411: return "Length Required";
  case 413: return "Payload Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 422: return "Unprocessable Entity";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  default: break;
  }
  switch (status / 100) {
  case 1: return "Informational";
  case 2: return "Success";
  case 3: return "Redirection";
  case 4: return "Client Error";
  default: return "Server Error";
  }
}

static int evx__hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

size_t evx__urldecode(char *dst, const char *src, size_t n, int plus) {
  size_t j = 0;
  for (size_t i = 0; i < n; i++) {
    char c = src[i];
    if (c == '+' && plus) {
      c = ' ';
    } else if (c == '%' && i + 2 < n && evx__hexval(src[i + 1]) >= 0 &&
               evx__hexval(src[i + 2]) >= 0) {
      c = (char)(evx__hexval(src[i + 1]) * 16 + evx__hexval(src[i + 2]));
      if (c == '\0') return (size_t)-1;
      i += 2;
    }
    dst[j++] = c;
  }
  dst[j] = '\0';
  return j;
}

size_t evx__query_count(const char *q) {
  size_t count = 1;
  for (; *q; q++) count += *q == '&';
  return count;
}

size_t evx__query_split(char *buf, const char **params) {
  size_t nparams = 0;
  char *p = buf;
  while (p) {
    char *amp = strchr(p, '&');
    if (amp) *amp = '\0';
    if (*p) {
      char *eq = strchr(p, '=');
      char *val = eq ? eq + 1 : p + strlen(p);
      if (eq) *eq = '\0';
      /* A NUL decoded in a key or value cuts that parameter out. */
      if (evx__urldecode(p, p, strlen(p), 1) != (size_t)-1 &&
          evx__urldecode(val, val, strlen(val), 1) != (size_t)-1) {
        params[2 * nparams] = p;
        params[2 * nparams + 1] = val;
        nparams++;
      }
    }
    p = amp ? amp + 1 : NULL;
  }
  return nparams;
}
