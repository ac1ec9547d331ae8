/*
 * The HTTP server's metrics (its loop member's on_metrics) and the built-in
 * route that serves the loop's whole metrics text (evx_http_route_metrics).
 * Counted on the loop thread at each response (evx__http_log); rendered by
 * evx_loop_metrics_text, which asks every loop member in creation order.
 */
#include "http-internal.h"

#include <evexec/metrics.h>

#include <stdio.h>
#include <string.h>

static const char *const evx__http_methods[EVX__HTTP_NMETHODS] = {
    "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "other"};

void evx__http_metrics_record(evx_http *h, const char *method, int status, uint64_t dur_ns) {
  unsigned mi = 0;
  while (mi < EVX__HTTP_NMETHODS - 1 && strcmp(evx__http_methods[mi], method) != 0) mi++;
  int cls = status / 100;
  h->resp[mi][(status != 499 && cls >= 1 && cls <= 5) ? cls : 0]++;
  uint64_t us = dur_ns / 1000;
  unsigned b = 0;
  while (us && b < EVX__HTTP_HIST_BUCKETS - 1) {
    us >>= 1;
    b++;
  }
  h->dur_hist[b]++;
  h->dur_sum_ns += dur_ns;
}

void evx__http_metrics(evx__loop_member *m, struct evx_metrics *out) {
  evx_http *h = EVX__CONTAINER_OF(m, evx_http, member);
  int port = evx_http_port(h);
  char lb[96];
  snprintf(lb, sizeof lb, "port=\"%d\"", port > 0 ? port : 0);
  static const char *const classes[6] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
  for (unsigned mi = 0; mi < EVX__HTTP_NMETHODS; mi++)
    for (unsigned c = 0; c < 6; c++) {
      if (!h->resp[mi][c]) continue;
      char l[160];
      snprintf(l, sizeof l, "%s,method=\"%s\",code=\"%s\"", lb, evx__http_methods[mi], classes[c]);
      evx_metrics_counter(out, "evx_http_responses_total",
                          "Responses by method and status class (code \"none\": the client left "
                          "first).",
                          l, (double)h->resp[mi][c]);
    }
  const evx_http_stats *st = &h->st;
  evx_metrics_counter(out, "evx_http_requests_total", "Requests that reached evexec.", lb,
                      (double)st->requests);
  evx_metrics_gauge(out, "evx_http_held", "Requests held by their handler, client still there.",
                    lb, (double)st->held);
  evx_metrics_gauge(out, "evx_http_zombies",
                    "Requests timed out or gone, not finished by their handler yet.", lb,
                    (double)st->zombies);
  evx_metrics_counter(out, "evx_http_gone_total", "Requests whose client left before the answer.",
                      lb, (double)st->gone);
  evx_metrics_counter(out, "evx_http_timed_out_total", "Requests answered 504 by the request timeout.",
                      lb, (double)st->timed_out);
  evx_metrics_counter(out, "evx_http_rejected_busy_total",
                      "Requests answered 503 because max_held requests were held.", lb,
                      (double)st->rejected_busy);
  evx_metrics_counter(out, "evx_http_response_bytes_total", "Body bytes sent.", lb,
                      (double)st->bytes_out);
  evx_metrics_histogram_log2us(out, "evx_http_request_duration_seconds",
                               "From dispatch to finish (or timeout, or the client leaving).", lb,
                               h->dur_hist, EVX__HTTP_HIST_BUCKETS, h->dur_sum_ns);
}

static void evx__on_metrics_request(evx_request *req, void *arg) {
  evx_http *h = arg;
  char *text = NULL;
  size_t len = 0;
  if (evx_loop_metrics_text(h->loop, &text, &len) != EVX_OK) {
    evx_request_finish_str(req, 500, NULL, "out of memory\n");
    return;
  }
  evx_request_finish(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
  evx_free(text);
}

int evx_http_route_metrics(evx_http *h, const char *path) {
  if (!h) return EVX_EINVAL;
  return evx_http_route(h, "GET", path, 0, evx__on_metrics_request, h);
}
