/* evx-bench-tasks: ext/tasks through Redis Streams, for bench/tasks_redis.sh.
 *
 *   evx-bench-tasks worker URL [THREADS]   a worker process (role WORKER) until SIGTERM
 *   evx-bench-tasks produce URL N [RATE]   one producer: N tasks (RATE/s, default as fast
 *                                          as it can), then waits for them all
 *
 * Every task carries its enqueue time (wall clock, us). Its handler pushes
 * "start - enqueue" in us onto the Redis list bench:lat (its own blocking
 * connection per thread) - the same one command per task as the Celery and
 * RQ twins (bench/tasks_celery.py, bench/tasks_rq.py). The producer first
 * runs one warm-up task to completion (the workers are up), then times from
 * its first enqueue until bench:lat holds N entries, and prints
 *   tasks_redis impl=evexec tasks=N rate=RATE|max tasks_per_s=.. p50_start_ms=.. p99_start_ms=..
 * At full speed the start latency is mostly queueing; at a modest RATE it
 * is the path itself (enqueue, Redis, lease, start).
 */
#include <evexec/evexec.h>
#include <evexec/tasks.h>

#include <hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *url;
static int port = 6379;

static long long wall_us(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (long long)tv.tv_sec * 1000000 + tv.tv_usec;
}

static redisContext *connect_sync(void) {
  redisContext *c = redisConnect("127.0.0.1", port);
  if (!c || c->err) {
    fprintf(stderr, "evx-bench-tasks: cannot connect to 127.0.0.1:%d\n", port);
    exit(1);
  }
  return c;
}

/* ---- worker ---------------------------------------------------------------- */

static _Thread_local redisContext *tconn;
static volatile sig_atomic_t term;

static evx_task_result handler(evx_task *t, void *arg) {
  (void)arg;
  long long now = wall_us();
  size_t len;
  const char *p = evx_task_payload(t, &len);
  char buf[32];
  if (len >= sizeof buf) return EVX_TASK_FAIL;
  memcpy(buf, p, len);
  buf[len] = '\0';
  if (!tconn) tconn = connect_sync();
  redisReply *r = redisCommand(tconn, "RPUSH bench:lat %lld", now - atoll(buf));
  if (!r) return EVX_TASK_RETRY;
  freeReplyObject(r);
  return EVX_TASK_DONE;
}

static void on_term(int sig) {
  (void)sig;
  term = 1;
}

typedef struct wstate {
  evx_loop *loop;
  evx_tasks *q;
  evx_future *shut;
} wstate;

static void shut_done(evx_future *f, void *arg) {
  (void)f;
  evx_loop_stop(((wstate *)arg)->loop);
}

static void tick(void *arg) {
  wstate *w = arg;
  if (term) {
    w->shut = evx_tasks_shutdown(w->q, 5000);
    evx_future_on_done(w->shut, shut_done, w);
    return;
  }
  evx_call_later(w->loop, 20, tick, w);
}

static int worker(unsigned threads) {
  signal(SIGTERM, on_term);
  signal(SIGINT, on_term);
  wstate w = {0};
  w.loop = evx_loop_new(NULL);
  evx_tasks_opts o = {.role = EVX_TASKS_ROLE_WORKER, .workers = threads, .poll_ms = 100};
  char *err = NULL;
  int rc = evx_tasks_open(w.loop, url, &o, &w.q, &err);
  if (rc != EVX_OK) {
    fprintf(stderr, "evx-bench-tasks: open %s: %s %s\n", url, evx_strerror(rc), err ? err : "");
    return 1;
  }
  evx_tasks_register(w.q, "bench", handler, NULL);
  evx_tasks_start(w.q);
  evx_call_later(w.loop, 20, tick, &w);
  evx_loop_run(w.loop);
  evx_future_release(w.shut);
  evx_tasks_free(w.q);
  evx_loop_free(w.loop);
  return 0;
}

/* ---- producer -------------------------------------------------------------- */

typedef struct pstate {
  evx_loop *loop;
  evx_tasks *q;
  long n, sent, acked, failed;
  long rate;     /* tasks/s, or 0: as fast as possible */
  long long t0;  /* us, first enqueue */
} pstate;

static void acked(evx_future *f, void *arg) {
  pstate *p = arg;
  if (evx_future_status(f) == EVX_OK) p->acked++;
  else p->failed++;
  evx_future_release(f);
  if (p->acked + p->failed == p->n) evx_loop_stop(p->loop);
}

/* Enqueue in slices of 500 per loop iteration (each slice is one pipeline),
 * or one at a time on schedule at p->rate. */
static void send_some(void *arg) {
  pstate *p = arg;
  int slice = p->rate ? 1 : 500;
  for (int i = 0; i < slice && p->sent < p->n; i++, p->sent++) {
    char buf[32];
    int len = snprintf(buf, sizeof buf, "%lld", wall_us());
    evx_future *f = evx_tasks_enqueue(p->q, "bench", buf, (size_t)len, NULL);
    if (!f) {
      p->failed++;
      continue;
    }
    evx_future_on_done(f, acked, p);
  }
  if (p->sent >= p->n) return;
  uint64_t ms = 0;
  if (p->rate) {
    long long due = p->t0 + p->sent * 1000000LL / p->rate, now = wall_us();
    ms = due > now ? (uint64_t)((due - now) / 1000) : 0;
  }
  evx_call_later(p->loop, ms, send_some, p);
}

static int cmp_ll(const void *a, const void *b) {
  long long x = *(const long long *)a, y = *(const long long *)b;
  return x < y ? -1 : x > y;
}

static long long llen(redisContext *c) {
  redisReply *r = redisCommand(c, "LLEN bench:lat");
  long long n = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
  if (r) freeReplyObject(r);
  return n;
}

static void wait_llen(redisContext *c, long long n) {
  while (llen(c) < n) nanosleep(&(struct timespec){0, 1000000}, NULL);
}

static int produce(long n, long rate) {
  redisContext *c = connect_sync();
  pstate p = {0};
  p.loop = evx_loop_new(NULL);
  evx_tasks_opts o = {.role = EVX_TASKS_ROLE_PRODUCER, .max_pending = (size_t)n + 10};
  char *err = NULL;
  int rc = evx_tasks_open(p.loop, url, &o, &p.q, &err);
  if (rc != EVX_OK) {
    fprintf(stderr, "evx-bench-tasks: open %s: %s %s\n", url, evx_strerror(rc), err ? err : "");
    return 1;
  }
  /* warm-up: one task through, so the workers are up */
  freeReplyObject(redisCommand(c, "DEL bench:lat"));
  p.n = 1;
  send_some(&p);
  evx_loop_run(p.loop);
  wait_llen(c, 1);
  freeReplyObject(redisCommand(c, "DEL bench:lat"));

  p.n = n;
  p.rate = rate;
  p.sent = p.acked = p.failed = 0;
  long long t0 = p.t0 = wall_us();
  send_some(&p);
  evx_loop_run(p.loop);
  if (p.failed) fprintf(stderr, "evx-bench-tasks: %ld enqueues failed\n", p.failed);
  wait_llen(c, p.acked);
  long long t1 = wall_us();
  redisReply *r = redisCommand(c, "LRANGE bench:lat 0 -1");
  size_t m = r ? r->elements : 0;
  long long *lat = calloc(m ? m : 1, sizeof *lat);
  for (size_t i = 0; i < m; i++) lat[i] = atoll(r->element[i]->str);
  if (r) freeReplyObject(r);
  qsort(lat, m, sizeof *lat, cmp_ll);
  double secs = (double)(t1 - t0) / 1e6;
  char rs[24] = "max";
  if (rate) snprintf(rs, sizeof rs, "%ld", rate);
  printf("tasks_redis impl=evexec tasks=%ld rate=%s producers=1 workers=2 tasks_per_s=%.0f "
         "p50_start_ms=%.2f p99_start_ms=%.2f\n",
         p.acked, rs, (double)p.acked / secs, m ? (double)lat[m / 2] / 1000.0 : 0.0,
         m ? (double)lat[m * 99 / 100] / 1000.0 : 0.0);
  free(lat);
  evx_tasks_free(p.q);
  evx_loop_free(p.loop);
  redisFree(c);
  return p.failed ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: evx-bench-tasks worker URL [THREADS] | produce URL N\n");
    return 2;
  }
  url = argv[2];
  const char *colon = strrchr(url, ':');
  if (colon) port = atoi(colon + 1);
  if (strcmp(argv[1], "worker") == 0) return worker(argc > 3 ? (unsigned)atoi(argv[3]) : 1);
  if (strcmp(argv[1], "produce") == 0 && argc > 3)
    return produce(atol(argv[3]), argc > 4 ? atol(argv[4]) : 0);
  fprintf(stderr, "evx-bench-tasks: unknown mode %s\n", argv[1]);
  return 2;
}
