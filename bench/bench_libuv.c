/* The libuv driver: the same loops through uv_queue_work.
 *
 * Fairness rules (see bench-internal.h for how timing is shared):
 *  - the pool size is UV_THREADPOOL_SIZE, which evx-bench sets before the
 *    first uv call (libuv reads it once, when the pool starts);
 *  - the pool starts on the first uv_queue_work; evx-bench's warm-up round
 *    pays for that, not a measured round;
 *  - requests are preallocated per window slot and reused, so the hot path
 *    allocates nothing (uv_queue_work itself never allocates);
 *  - libuv has no thread-safe callback queue; the `callbacks` comparison
 *    uses the idiom a libuv program writes instead: a mutex-protected list
 *    of malloc'd nodes plus uv_async_send (which coalesces wakeups), drained
 *    whole under the lock and run unlocked.
 * Everything runs on one uv_loop_t that persists across rounds; only the
 * thread running evx-bench's main() touches it.
 */
#include "bench-internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static uv_loop_t uvb_loop;
static int uvb_loop_ready;

/* ---- jobs (roundtrip, pingpong) ---- */

typedef struct uvb_ctx {
  bench_round *r;
  uint64_t submitted, completed;
} uvb_ctx;

/* One window slot: its request is reused for the slot's next job. */
typedef struct uvb_slot {
  uv_work_t req;  /* req.data points to the slot */
  uvb_ctx *ctx;
  uint64_t t0;    /* submit time of the slot's job in flight */
} uvb_slot;

static void uvb_work(uv_work_t *req) { bench_noop_work(req->data); }

static int uvb_submit(uvb_slot *s, uint64_t now);

static void uvb_after(uv_work_t *req, int status) {
  uint64_t now = bench_now_ns();
  uvb_slot *s = req->data;
  uvb_ctx *c = s->ctx;
  bench_round *r = c->r;
  if (status != 0) r->errors++;
  r->lat_ns[c->completed++] = now - s->t0;
  if (c->completed == r->jobs) r->t_end = now;
  /* A failed submit leaves the slot idle; uv_run still returns once the
   * other slots drain, and uvb_jobs reports the shortfall. */
  if (c->submitted < r->jobs && uvb_submit(s, now) != 0) r->errors++;
}

/* Submit the slot's next job; `now` is its submit time (see bench-internal.h). */
static int uvb_submit(uvb_slot *s, uint64_t now) {
  s->ctx->submitted++;
  s->t0 = now;
  return uv_queue_work(&uvb_loop, &s->req, uvb_work, uvb_after);
}

static int uvb_init(unsigned threads, unsigned window, unsigned spin_us) {
  (void)threads; /* UV_THREADPOOL_SIZE is set by main() before this call */
  (void)window;
  (void)spin_us;
  int rc = uv_loop_init(&uvb_loop);
  if (rc != 0) {
    fprintf(stderr, "libuv: uv_loop_init: %s\n", uv_strerror(rc));
    return -1;
  }
  uvb_loop_ready = 1;
  return 0;
}

static int uvb_jobs(bench_round *r) {
  uint64_t w = r->window < r->jobs ? r->window : r->jobs;
  uvb_slot *slots = calloc(w, sizeof *slots);
  if (slots == NULL) {
    fprintf(stderr, "libuv: out of memory\n");
    return -1;
  }
  uvb_ctx c = {.r = r};
  r->t_start = bench_now_ns();
  for (uint64_t i = 0; i < w; i++) {
    slots[i].req.data = &slots[i];
    slots[i].ctx = &c;
    if (uvb_submit(&slots[i], bench_now_ns()) != 0) r->errors++;
  }
  /* uv_run returns once no request is active: all jobs completed. */
  uv_run(&uvb_loop, UV_RUN_DEFAULT);
  free(slots);
  if (c.completed != r->jobs) {
    fprintf(stderr, "libuv: %llu of %llu jobs completed\n", (unsigned long long)c.completed,
            (unsigned long long)r->jobs);
    return -1;
  }
  return 0;
}

/* ---- callbacks: mutex + list + uv_async_send ---- */

typedef struct uvb_cb_node {
  struct uvb_cb_node *next;
  void (*fn)(void *);
  void *arg;
} uvb_cb_node;

typedef struct uvb_cbq {
  uv_mutex_t mu;     /* guards head/tail */
  uvb_cb_node *head, *tail;
  uv_async_t async;  /* wakes the loop; libuv coalesces sends */
} uvb_cbq;

typedef struct uvb_cb_ctx {
  bench_cb_round *r;
  uvb_cbq q;
  uv_sem_t go;       /* producers wait here until the clock starts */
  uint64_t total, done;
} uvb_cb_ctx;

typedef struct uvb_producer {
  uvb_cb_ctx *c;
  uint64_t *t0;      /* per entries: submit time of callback i */
  uv_thread_t tid;
} uvb_producer;

static uvb_cb_ctx *uvb_cur_cb; /* the round in progress (loop thread only) */

static void uvb_cb_run(void *arg) {
  uint64_t now = bench_now_ns();
  uvb_cb_ctx *c = uvb_cur_cb;
  uint64_t *t0 = arg;
  c->r->lat_ns[c->done++] = now - *t0;
  if (c->done == c->total) {
    c->r->t_end = now;
    uv_close((uv_handle_t *)&c->q.async, NULL);
  }
}

static void uvb_cbq_drain(uv_async_t *a) {
  uvb_cbq *q = a->data;
  uv_mutex_lock(&q->mu);
  uvb_cb_node *n = q->head;
  q->head = q->tail = NULL;
  uv_mutex_unlock(&q->mu);
  while (n != NULL) {
    uvb_cb_node *next = n->next;
    n->fn(n->arg);
    free(n);
    n = next;
  }
}

static int uvb_cbq_post(uvb_cbq *q, void (*fn)(void *), void *arg) {
  uvb_cb_node *n = malloc(sizeof *n);
  if (n == NULL) return -1;
  n->next = NULL;
  n->fn = fn;
  n->arg = arg;
  uv_mutex_lock(&q->mu);
  if (q->tail != NULL)
    q->tail->next = n;
  else
    q->head = n;
  q->tail = n;
  uv_mutex_unlock(&q->mu);
  return uv_async_send(&q->async);
}

static void uvb_producer_main(void *arg) {
  uvb_producer *p = arg;
  uvb_cb_ctx *c = p->c;
  uv_sem_wait(&c->go);
  for (uint64_t i = 0; i < c->r->per; i++) {
    p->t0[i] = bench_now_ns();
    if (uvb_cbq_post(&c->q, uvb_cb_run, &p->t0[i]) != 0) {
      /* The loop would wait forever for the lost callback: give up loudly. */
      fprintf(stderr, "libuv: out of memory posting a callback\n");
      exit(EXIT_FAILURE);
    }
  }
}

static int uvb_callbacks(bench_cb_round *r) {
  int ret = -1;
  uvb_cb_ctx c = {.r = r, .total = (uint64_t)r->producers * r->per};
  uvb_producer *ps = calloc(r->producers, sizeof *ps);
  uint64_t *t0 = calloc(c.total ? c.total : 1, sizeof *t0);
  unsigned started = 0;
  if (ps == NULL || t0 == NULL) goto out;
  uv_mutex_init(&c.q.mu);
  uv_sem_init(&c.go, 0);
  uv_async_init(&uvb_loop, &c.q.async, uvb_cbq_drain);
  c.q.async.data = &c.q;
  uvb_cur_cb = &c;
  for (; started < r->producers; started++) {
    ps[started].c = &c;
    ps[started].t0 = t0 + (uint64_t)started * r->per;
    if (uv_thread_create(&ps[started].tid, uvb_producer_main, &ps[started]) != 0) break;
  }
  if (started < r->producers) {
    /* Account for the producers that will never run so the round still ends. */
    fprintf(stderr, "libuv: could not start producer %u\n", started);
    r->errors++;
    c.total = (uint64_t)started * r->per;
  }
  r->t_start = bench_now_ns();
  for (unsigned i = 0; i < started; i++) uv_sem_post(&c.go);
  if (c.total == 0) uv_close((uv_handle_t *)&c.q.async, NULL);
  uv_run(&uvb_loop, UV_RUN_DEFAULT); /* returns once the async handle closed */
  for (unsigned i = 0; i < started; i++) {
    uv_thread_join(&ps[i].tid);
  }
  uv_sem_destroy(&c.go);
  uv_mutex_destroy(&c.q.mu);
  uvb_cur_cb = NULL;
  ret = started == r->producers && c.done == c.total ? 0 : -1;
out:
  free(ps);
  free(t0);
  if (ret != 0 && r->errors == 0) fprintf(stderr, "libuv: callbacks round failed\n");
  return ret;
}

/* ---- memory: bytes per queued job ---- */

typedef struct uvb_gate {
  uv_sem_t entered, release;
} uvb_gate;

static uvb_gate uvb_mem_gate;

static void uvb_park(uv_work_t *req) {
  (void)req;
  uv_sem_post(&uvb_mem_gate.entered);
  uv_sem_wait(&uvb_mem_gate.release);
}

static void uvb_mem_after(uv_work_t *req, int status) {
  uint64_t *errors = req->data;
  if (status != 0) (*errors)++;
  free(req);
}

static void uvb_mem_noop(uv_work_t *req) { bench_noop_work(req->data); }

static int uvb_memory(bench_mem_round *r) {
  uv_sem_init(&uvb_mem_gate.entered, 0);
  uv_sem_init(&uvb_mem_gate.release, 0);
  /* Park every worker so that the measured jobs stay queued. */
  for (unsigned i = 0; i < r->threads; i++) {
    uv_work_t *req = malloc(sizeof *req);
    if (req == NULL) return -1;
    req->data = &r->errors;
    if (uv_queue_work(&uvb_loop, req, uvb_park, uvb_mem_after) != 0) return -1;
  }
  for (unsigned i = 0; i < r->threads; i++) uv_sem_wait(&uvb_mem_gate.entered);
  r->heap_before = bench_heap_bytes();
  /* A libuv caller allocates each request itself: that is the per-job cost. */
  for (uint64_t i = 0; i < r->jobs; i++) {
    uv_work_t *req = malloc(sizeof *req);
    if (req == NULL) {
      r->errors++;
      break;
    }
    req->data = &r->errors;
    if (uv_queue_work(&uvb_loop, req, uvb_mem_noop, uvb_mem_after) != 0) {
      free(req);
      r->errors++;
    }
  }
  r->heap_held = bench_heap_bytes();
  for (unsigned i = 0; i < r->threads; i++) uv_sem_post(&uvb_mem_gate.release);
  uv_run(&uvb_loop, UV_RUN_DEFAULT);
  uv_sem_destroy(&uvb_mem_gate.entered);
  uv_sem_destroy(&uvb_mem_gate.release);
  return 0;
}

static void uvb_fini(void) {
  if (!uvb_loop_ready) return;
  uv_run(&uvb_loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&uvb_loop) != 0) fprintf(stderr, "libuv: loop still busy at exit\n");
  uvb_loop_ready = 0;
}

const bench_driver bench_libuv_driver = {
    .name = "libuv",
    .init = uvb_init,
    .jobs = uvb_jobs,
    .callbacks = uvb_callbacks,
    .memory = uvb_memory,
    .fini = uvb_fini,
};
