/*
 * evx-tasks-bench: durable enqueue through to a completed no-op handler on
 * ext/tasks' SQLite backend. One line per result:
 *
 *   tasks impl=evexec backend=sqlite sync=full tasks=N workers=W tasks_per_s=...
 *         enq_p50_us=... enq_p99_us=... idle_enq_p50_us=... idle_enq_p99_us=...
 *
 * tasks_per_s: N tasks from the first enqueue to the last handler's DONE,
 * keeping up to --window enqueues in flight (a producer that stops when the
 * queue pushes back). enq_*: enqueue call to its future resolving (durable)
 * during that run; idle_enq_*: the same for one enqueue at a time.
 * The handler counts in an atomic - the peers (bench/tasks_peers.py) INCR a
 * Redis counter - so "completed" means the same thing for all.
 */
#include <evexec/evexec.h>
#include <evexec/tasks.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench-internal.h"

static atomic_long done_count;

static evx_task_result noop(evx_task *t, void *arg) {
  (void)t;
  (void)arg;
  atomic_fetch_add(&done_count, 1);
  return EVX_TASK_DONE;
}

typedef struct bench {
  evx_loop *loop;
  evx_tasks *q;
  long n, sent, resolved, window, inflight, failed;
  uint64_t *lat_ns; /* per enqueue */
  int idle;         /* one at a time */
  uint64_t t0;
} bench;

typedef struct enq {
  bench *b;
  long i;
  uint64_t t;
} enq;

static void pump(bench *b);

static void on_resolved(evx_future *f, void *arg) {
  enq *e = arg;
  bench *b = e->b;
  b->lat_ns[e->i] = bench_now_ns() - e->t;
  if (evx_future_status(f) != EVX_OK) b->failed++;
  b->resolved++;
  b->inflight--;
  evx_future_release(f);
  free(e);
  pump(b);
}

static void check_done(void *arg) {
  bench *b = arg;
  if (b->resolved == b->n && atomic_load(&done_count) >= b->n) {
    evx_loop_stop(b->loop);
    return;
  }
  evx_call_later(b->loop, 1, check_done, b);
}

static void pump(bench *b) {
  long window = b->idle ? 1 : b->window;
  while (b->sent < b->n && b->inflight < window) {
    enq *e = malloc(sizeof *e);
    e->b = b;
    e->i = b->sent;
    char payload[32];
    int len = snprintf(payload, sizeof payload, "task %ld", b->sent);
    e->t = bench_now_ns();
    evx_future *f = evx_tasks_enqueue(b->q, "noop", payload, (size_t)len, NULL);
    if (!f || evx_future_on_done(f, on_resolved, e) != EVX_OK) {
      fprintf(stderr, "enqueue failed\n");
      exit(1);
    }
    b->sent++;
    b->inflight++;
  }
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static double pct_us(uint64_t *v, long n, double p) {
  qsort(v, (size_t)n, sizeof *v, cmp_u64);
  long i = (long)(p * (double)(n - 1));
  return (double)v[i] / 1000.0;
}

/* One run; returns tasks/s, fills the latency percentiles. */
static double run(evx_loop *loop, evx_tasks *q, long n, long window, int idle, double *p50,
                  double *p99) {
  bench b = {.loop = loop, .q = q, .n = n, .window = window, .idle = idle};
  b.lat_ns = calloc((size_t)n, sizeof *b.lat_ns);
  atomic_store(&done_count, 0);
  b.t0 = bench_now_ns();
  pump(&b);
  evx_call_later(loop, 1, check_done, &b);
  evx_loop_run(loop);
  double secs = (double)(bench_now_ns() - b.t0) / 1e9;
  if (b.failed) fprintf(stderr, "%ld enqueues failed\n", b.failed);
  *p50 = pct_us(b.lat_ns, n, 0.50);
  *p99 = pct_us(b.lat_ns, n, 0.99);
  free(b.lat_ns);
  return (double)n / secs;
}

static void stop_cb(evx_future *f, void *arg) {
  (void)f;
  evx_loop_stop(arg);
}

int main(int argc, char **argv) {
  long n = 20000, window = 4096, idle_n = 300;
  unsigned workers = 2;
  const char *sync = "full", *dir = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--tasks") && i + 1 < argc) n = atol(argv[++i]);
    else if (!strcmp(argv[i], "--window") && i + 1 < argc) window = atol(argv[++i]);
    else if (!strcmp(argv[i], "--idle") && i + 1 < argc) idle_n = atol(argv[++i]);
    else if (!strcmp(argv[i], "--workers") && i + 1 < argc) workers = (unsigned)atoi(argv[++i]);
    else if (!strcmp(argv[i], "--sync") && i + 1 < argc) sync = argv[++i];
    else if (!strcmp(argv[i], "--dir") && i + 1 < argc) dir = argv[++i];
    else {
      fprintf(stderr,
              "usage: evx-tasks-bench [--tasks N] [--window W] [--idle N] [--workers W]"
              " [--sync full|normal] [--dir DIR]\n");
      return 2;
    }
  }
  char tmp[] = "/tmp/evx-tasks-bench.XXXXXX";
  if (!dir) dir = mkdtemp(tmp);
  char url[512];
  snprintf(url, sizeof url, "sqlite:%s/tasks-%s.db", dir, sync);
  evx_loop *loop = evx_loop_new(NULL);
  evx_tasks_opts o = {.workers = workers,
                      .synchronous = strcmp(sync, "normal") == 0 ? EVX_TASKS_SYNC_NORMAL
                                                                 : EVX_TASKS_SYNC_FULL};
  evx_tasks *q = NULL;
  char *msg = NULL;
  if (evx_tasks_open(loop, url, &o, &q, &msg) != EVX_OK) {
    fprintf(stderr, "open %s: %s\n", url, msg ? msg : "?");
    return 1;
  }
  evx_tasks_register(q, "noop", noop, NULL);
  evx_tasks_start(q);
  double p50, p99, ip50, ip99;
  run(loop, q, 500, window, 0, &p50, &p99); /* warm-up */
  double tps = run(loop, q, n, window, 0, &p50, &p99);
  run(loop, q, idle_n, 1, 1, &ip50, &ip99);
  printf("tasks impl=evexec backend=sqlite sync=%s tasks=%ld workers=%u window=%ld tasks_per_s=%.0f"
         " enq_p50_us=%.0f enq_p99_us=%.0f idle_enq_p50_us=%.0f idle_enq_p99_us=%.0f\n",
         sync, n, workers, window, tps, p50, p99, ip50, ip99);
  evx_future *f = evx_tasks_shutdown(q, 1000);
  evx_future_on_done(f, stop_cb, loop);
  evx_loop_run(loop);
  evx_future_release(f);
  evx_tasks_free(q);
  evx_loop_free(loop);
  if (dir == tmp) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) return 1;
  }
  return 0;
}
