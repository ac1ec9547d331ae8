/* PRIVATE to evexec: never installed, never included by users.
 * The HTTP layer's test hook: what tests/ and fuzz/ may see of its
 * internals, so that they never include http-internal.h. Linked from the
 * static library (the shared one does not export these). */
#ifndef EVX_HTTP_TEST_H
#define EVX_HTTP_TEST_H

#include <evexec/http.h>

/* Limits the tests check against. */
/* Bytes of pipelined input evexec moves into evhttp's input buffer while a
 * request is held, before it stops watching that connection. */
#define EVX__HTTP_PIPELINE_CAP (256 * 1024)
/* A held request's socket is watched from this long after it was held on:
 * requests answered sooner (most offloaded ones) never pay for arming and
 * disarming the watch (an epoll_ctl each); a client that leaves is noticed
 * at most this much later. */
#define EVX__HTTP_WATCH_DELAY_MS 5

struct evhttp;
struct evhttp_connection;

/* The server's evhttp (borrowed), e.g. to attach a Unix-socket listener
 * with evhttp_accept_socket_with_handle. NULL once evx_http_free ran. */
struct evhttp *evx__http_evhttp(evx_http *h);

/* A request's connection (borrowed), while the request is answerable;
 * NULL once it finished or became a zombie. */
struct evhttp_connection *evx__request_connection(evx_request *r);

/* 1 while evexec watches the request's socket for the client leaving
 * (armed once the request was held for EVX__HTTP_WATCH_DELAY_MS). */
int evx__request_watching(evx_request *r);

/* The status of the framing scanner's last rejection on this server (400,
 * 408, 501, 505), 0 if none: fuzz_http compares it with its own reading. */
int evx__http_last_bad_status(evx_http *h);

/* Bytes of reply waiting in the request's connection output buffer (not
 * yet handed to the kernel); 0 when it has no connection. */
size_t evx__request_out_pending(evx_request *r);

#endif
