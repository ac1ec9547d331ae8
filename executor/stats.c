/*
 * Executor statistics: the snapshot, log2-microsecond histograms and their
 * quantiles. The counters live in evx_executor, under ex->lock.
 */
#include "executor-internal.h"

#include <evexec/metrics.h>

#include <stdio.h>

static unsigned evx__bucket(uint64_t ns) {
  uint64_t us = ns / 1000;
  unsigned b = 0;
  while (us && b < EVX_STATS_BUCKETS - 1) {
    us >>= 1;
    b++;
  }
  return b;
}

void evx__record(uint64_t *total, uint64_t *max, uint64_t *hist, uint64_t ns) {
  *total += ns;
  if (ns > *max) *max = ns;
  hist[evx__bucket(ns)]++;
}

uint64_t evx_stats_quantile_us(const uint64_t hist[EVX_STATS_BUCKETS], double q) {
  if (!hist) return 0;
  uint64_t total = 0;
  for (unsigned i = 0; i < EVX_STATS_BUCKETS; i++) total += hist[i];
  if (total == 0) return 0;
  if (q < 0) q = 0;
  if (q > 1) q = 1;
  uint64_t rank = (uint64_t)(q * (double)total);
  if (rank == 0) rank = 1;
  uint64_t seen = 0;
  for (unsigned i = 0; i < EVX_STATS_BUCKETS; i++) {
    seen += hist[i];
    if (seen >= rank) return (uint64_t)1 << i;
  }
  return (uint64_t)1 << (EVX_STATS_BUCKETS - 1);
}

int evx_executor_stats_get(evx_executor *ex, evx_executor_stats *out) {
  if (!ex || !out) return EVX_EINVAL;
  /* From our own done(): splice first, so the deferred jobs are counted. */
  int post = evx__lock_seeing_deferred(ex);
  *out = ex->stats;
  out->queued = ex->nqueued;
  out->running = ex->nrunning;
  pthread_mutex_unlock(&ex->lock);
  if (post) evx__post(ex);
  return EVX_OK;
}

void evx__executor_metrics(evx__loop_member *m, struct evx_metrics *out) {
  evx_executor *ex = EVX__CONTAINER_OF(m, evx_executor, member);
  evx_executor_stats st;
  if (evx_executor_stats_get(ex, &st) != EVX_OK) return;
  char name[128], labels[160];
  snprintf(labels, sizeof labels, "executor=\"%s\"",
           evx_metrics_escape(evx_executor_name(ex), name, sizeof name));
  evx_metrics_gauge(out, "evx_executor_threads", "Worker threads.", labels, st.threads);
  evx_metrics_gauge(out, "evx_executor_queued", "Jobs waiting in the queue.", labels,
                    (double)st.queued);
  evx_metrics_gauge(out, "evx_executor_running", "Jobs running now.", labels, (double)st.running);
  evx_metrics_counter(out, "evx_executor_submitted_total", "Jobs accepted.", labels,
                      (double)st.submitted);
  evx_metrics_counter(out, "evx_executor_completed_total", "Jobs that ran to the end.", labels,
                      (double)st.completed);
  evx_metrics_counter(out, "evx_executor_rejected_total",
                      "Submits refused because the queue was full (EVX_EBUSY).", labels,
                      (double)st.rejected);
  evx_metrics_counter(out, "evx_executor_cancelled_total", "Jobs cancelled before they started.",
                      labels, (double)st.cancelled);
  evx_metrics_counter(out, "evx_executor_shed_total",
                      "Of rejected: submits refused by the target queue wait.", labels,
                      (double)st.shed);
  evx_metrics_counter(out, "evx_executor_expired_total",
                      "Of cancelled: jobs that waited past the target queue wait, never run.",
                      labels, (double)st.expired);
  evx_metrics_histogram_log2us(out, "evx_executor_wait_seconds", "Time jobs waited in the queue.",
                               labels, st.wait_hist, EVX_STATS_BUCKETS, st.wait_ns_total);
  evx_metrics_histogram_log2us(out, "evx_executor_run_seconds", "Time jobs ran on a worker.",
                               labels, st.run_hist, EVX_STATS_BUCKETS, st.run_ns_total);
}
