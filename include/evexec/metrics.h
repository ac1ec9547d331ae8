/**
 * @file metrics.h
 * Metrics in the Prometheus text exposition format (version 0.0.4).
 *
 * Every object evexec binds to a loop that has numbers to show exports them
 * by itself: each executor (evx_executor_* with an `executor` label: queue
 * and running gauges, job counters, queue-wait and run-time histograms), each
 * HTTP server (evx_http_* with a `port` label: responses by method and
 * status class, held/zombie gauges, bytes, request-duration histogram), and
 * any later library that registers with the loop (task queues). The
 * application adds its own numbers with a source (evx_metrics_source_new).
 * evx_loop_metrics_text() renders all of them; evx_http_route_metrics()
 * serves them at a path (`GET /metrics`).
 *
 * Threads: loop thread only.
 */
#ifndef EVEXEC_METRICS_H
#define EVEXEC_METRICS_H

#include <evexec/common.h>
#include <evexec/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A text being built (given to sources; never kept by them). */
typedef struct evx_metrics evx_metrics;

/**
 * Add one sample to the family `name`. Samples of one family are printed
 * together under one `# HELP` / `# TYPE` pair, whoever added them and in
 * whatever order; the first call for a name fixes its type and help.
 * @param m the text being built, as given to an evx_metrics_fn.
 * @param name a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*); counters end in _total.
 * @param help one line; may be NULL.
 * @param labels NULL, or `key="value",key2="value2"` with values escaped
 *        (see evx_metrics_escape).
 * @param value the sample's value, printed with %.17g (integers below 2^53
 *        exactly); for a counter, a running total that never goes down.
 * @return EVX_OK; EVX_EINVAL (NULL m/name, a bad name); EVX_ENOMEM.
 */
EVX_API int evx_metrics_counter(evx_metrics *m, const char *name, const char *help,
                                const char *labels, double value);
/** A gauge sample; as evx_metrics_counter. */
EVX_API int evx_metrics_gauge(evx_metrics *m, const char *name, const char *help,
                              const char *labels, double value);

/**
 * A histogram in seconds from evexec's log2 buckets of microseconds (the
 * layout of evx_executor_stats.run_hist: bucket 0 below 1 us, bucket i
 * below 2^i us, the last one also everything longer): `name_bucket{le=...}`
 * cumulative, `name_sum` (sum_ns in seconds) and `name_count`.
 * @return as evx_metrics_counter; EVX_EINVAL also for NULL hist or nbuckets 0.
 */
EVX_API int evx_metrics_histogram_log2us(evx_metrics *m, const char *name, const char *help,
                                         const char *labels, const uint64_t *hist,
                                         size_t nbuckets, uint64_t sum_ns);

/**
 * Escape a label value (backslash, double quote, newline) into out (cap
 * bytes, always NUL-terminated; cut short when too small).
 * @return out.
 */
EVX_API char *evx_metrics_escape(const char *value, char *out, size_t cap);

/** An application's metrics: called with the text being built, on the loop thread. */
typedef void (*evx_metrics_fn)(evx_metrics *m, void *arg);

/** A registered application metrics source. */
typedef struct evx_metrics_source evx_metrics_source;

/**
 * Register fn(m, arg) to add the application's samples whenever the loop's
 * metrics are rendered. Loop thread only.
 * @return the source, owned by the caller (evx_metrics_source_free; the
 *         loop frees sources left at evx_loop_free), or NULL (NULL
 *         loop/fn, wrong thread, out of memory).
 */
EVX_API evx_metrics_source *evx_metrics_source_new(evx_loop *loop, evx_metrics_fn fn, void *arg);

/** Unregister and free a source. NULL accepted. Loop thread only: from another
 * thread while the loop runs it is ignored (one line on stderr). */
EVX_API void evx_metrics_source_free(evx_metrics_source *src);

/**
 * Render the metrics of everything bound to `loop` (executors, HTTP servers,
 * task queues, application sources, in the order they were created).
 * @param loop the loop; loop thread only.
 * @param out receives the NUL-terminated text, owned by the caller (evx_free).
 * @param len may be NULL; receives strlen(*out).
 * @return EVX_OK; EVX_EINVAL (NULL loop/out, wrong thread); EVX_ENOMEM
 *         (*out is then NULL).
 */
EVX_API int evx_loop_metrics_text(evx_loop *loop, char **out, size_t *len);

#ifdef __cplusplus
}
#endif
#endif /* EVEXEC_METRICS_H */
