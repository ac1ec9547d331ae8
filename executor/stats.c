/*
 * Executor statistics: the snapshot, log2-microsecond histograms and their
 * quantiles. The counters live in evx_executor, under ex->lock.
 */
#include "executor-internal.h"

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
