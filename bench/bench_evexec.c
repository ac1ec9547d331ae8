/* The evexec driver: the same loops through evx_submit and evx_add_callback.
 *
 * One evx_loop and one evx_executor (T threads) persist across rounds, like
 * libuv's pool. Jobs carry their window slot as `arg`; the caller allocates
 * nothing per job (whatever evexec allocates internally is its own cost and
 * shows in the numbers). Only the thread running main() runs the loop.
 */
#include "bench-internal.h"

#include <evexec/evexec.h>
#include <semaphore.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static evx_loop *eb_loop;
static evx_executor *eb_ex;

/* ---- jobs (roundtrip, pingpong) ---- */

typedef struct eb_ctx {
  bench_round *r;
  uint64_t submitted, completed;
  uint64_t inflight;  /* accepted and not completed; the round ends at 0 */
} eb_ctx;

typedef struct eb_slot {
  eb_ctx *ctx;
  uint64_t t0;  /* submit time of the slot's job in flight */
} eb_slot;

static int eb_submit(eb_slot *s, uint64_t now);

static void eb_done(void *arg, int status) {
  uint64_t now = bench_now_ns();
  eb_slot *s = arg;
  eb_ctx *c = s->ctx;
  bench_round *r = c->r;
  if (status != EVX_OK) r->errors++;
  r->lat_ns[c->completed++] = now - s->t0;
  c->inflight--;
  if (c->completed == r->jobs) r->t_end = now;
  if (c->submitted < r->jobs && eb_submit(s, now) != 0) r->errors++;
  if (c->inflight == 0) evx_loop_stop(eb_loop);
}

/* Submit the slot's next job; `now` is its submit time (see bench-internal.h). */
static int eb_submit(eb_slot *s, uint64_t now) {
  s->ctx->submitted++;
  s->t0 = now;
  int rc = evx_submit(eb_ex, bench_noop_work, eb_done, s);
  if (rc == EVX_OK) s->ctx->inflight++;
  return rc;
}

static int eb_init(unsigned threads, unsigned window, unsigned spin_us) {
  eb_loop = evx_loop_new(NULL);
  if (eb_loop == NULL) {
    fprintf(stderr, "evexec: evx_loop_new failed\n");
    return -1;
  }
  evx_executor_opts o = {
      .threads = threads,
      .max_queue = window > 4096 ? window : 4096,
      .name = "bench",
      .spin_us = spin_us,
  };
  eb_ex = evx_executor_new(eb_loop, &o);
  if (eb_ex == NULL) {
    fprintf(stderr, "evexec: evx_executor_new(threads=%u, spin_us=%u) failed\n", threads, spin_us);
    evx_loop_free(eb_loop);
    eb_loop = NULL;
    return -1;
  }
  return 0;
}

static int eb_jobs(bench_round *r) {
  uint64_t w = r->window < r->jobs ? r->window : r->jobs;
  eb_slot *slots = calloc(w, sizeof *slots);
  if (slots == NULL) {
    fprintf(stderr, "evexec: out of memory\n");
    return -1;
  }
  eb_ctx c = {.r = r};
  r->t_start = bench_now_ns();
  for (uint64_t i = 0; i < w; i++) {
    slots[i].ctx = &c;
    int rc = eb_submit(&slots[i], bench_now_ns());
    if (rc != EVX_OK) {
      fprintf(stderr, "evexec: evx_submit: %s\n", evx_strerror(rc));
      r->errors++;
    }
  }
  if (c.inflight > 0) evx_loop_run(eb_loop); /* eb_done stops it when nothing is in flight */
  free(slots);
  if (c.completed != r->jobs) {
    fprintf(stderr, "evexec: %llu of %llu jobs completed\n", (unsigned long long)c.completed,
            (unsigned long long)r->jobs);
    return -1;
  }
  return 0;
}

/* ---- callbacks: evx_add_callback from P threads ---- */

typedef struct eb_cb_ctx {
  bench_cb_round *r;
  sem_t go;  /* producers wait here until the clock starts */
  uint64_t total, done;
} eb_cb_ctx;

typedef struct eb_producer {
  eb_cb_ctx *c;
  uint64_t *t0;  /* per entries: submit time of callback i */
  pthread_t tid;
} eb_producer;

static eb_cb_ctx *eb_cur_cb; /* the round in progress (loop thread only) */

static void eb_cb_run(void *arg) {
  uint64_t now = bench_now_ns();
  eb_cb_ctx *c = eb_cur_cb;
  uint64_t *t0 = arg;
  c->r->lat_ns[c->done++] = now - *t0;
  if (c->done == c->total) {
    c->r->t_end = now;
    evx_loop_stop(eb_loop);
  }
}

static void *eb_producer_main(void *arg) {
  eb_producer *p = arg;
  eb_cb_ctx *c = p->c;
  sem_wait(&c->go);
  for (uint64_t i = 0; i < c->r->per; i++) {
    p->t0[i] = bench_now_ns();
    int rc = evx_add_callback(eb_loop, eb_cb_run, &p->t0[i]);
    if (rc != EVX_OK) {
      /* The loop would wait forever for the lost callback: give up loudly. */
      fprintf(stderr, "evexec: evx_add_callback: %s\n", evx_strerror(rc));
      exit(EXIT_FAILURE);
    }
  }
  return NULL;
}

static int eb_callbacks(bench_cb_round *r) {
  int ret = -1;
  eb_cb_ctx c = {.r = r, .total = (uint64_t)r->producers * r->per};
  eb_producer *ps = calloc(r->producers, sizeof *ps);
  uint64_t *t0 = calloc(c.total ? c.total : 1, sizeof *t0);
  unsigned started = 0;
  if (ps == NULL || t0 == NULL) goto out;
  sem_init(&c.go, 0, 0);
  eb_cur_cb = &c;
  for (; started < r->producers; started++) {
    ps[started].c = &c;
    ps[started].t0 = t0 + (uint64_t)started * r->per;
    if (pthread_create(&ps[started].tid, NULL, eb_producer_main, &ps[started]) != 0) break;
  }
  if (started < r->producers) {
    fprintf(stderr, "evexec: could not start producer %u\n", started);
    r->errors++;
    c.total = (uint64_t)started * r->per;
  }
  r->t_start = bench_now_ns();
  for (unsigned i = 0; i < started; i++) sem_post(&c.go);
  if (c.total > 0) evx_loop_run(eb_loop);
  for (unsigned i = 0; i < started; i++) {
    pthread_join(ps[i].tid, NULL);
  }
  sem_destroy(&c.go);
  eb_cur_cb = NULL;
  ret = started == r->producers && c.done == c.total ? 0 : -1;
out:
  free(ps);
  free(t0);
  if (ret != 0 && r->errors == 0) fprintf(stderr, "evexec: callbacks round failed\n");
  return ret;
}

/* ---- memory: bytes per queued job ---- */

typedef struct eb_mem {
  sem_t entered, release;
  uint64_t left;  /* jobs whose done has not run; the loop stops at 0 */
  uint64_t errors;
  evx_loop *loop;
} eb_mem;

static void eb_park(void *arg) {
  eb_mem *m = arg;
  sem_post(&m->entered);
  sem_wait(&m->release);
}

static void eb_mem_done(void *arg, int status) {
  eb_mem *m = arg;
  if (status != EVX_OK) m->errors++;
  if (--m->left == 0) evx_loop_stop(m->loop);
}

static void eb_mem_noop(void *arg) { bench_noop_work(arg); }

static int eb_memory(bench_mem_round *r) {
  /* A fresh executor whose queue can hold every probe job. */
  evx_executor_opts o = {.threads = r->threads, .max_queue = r->jobs, .name = "bench-mem"};
  evx_executor *ex = evx_executor_new(eb_loop, &o);
  if (ex == NULL) {
    fprintf(stderr, "evexec: evx_executor_new for the memory probe failed\n");
    return -1;
  }
  eb_mem m = {.loop = eb_loop};
  sem_init(&m.entered, 0, 0);
  sem_init(&m.release, 0, 0);
  for (unsigned i = 0; i < r->threads; i++) {
    if (evx_submit(ex, eb_park, eb_mem_done, &m) == EVX_OK)
      m.left++;
    else
      r->errors++;
  }
  for (uint64_t i = 0; i < m.left; i++) sem_wait(&m.entered);
  r->heap_before = bench_heap_bytes();
  for (uint64_t i = 0; i < r->jobs; i++) {
    if (evx_submit(ex, eb_mem_noop, eb_mem_done, &m) == EVX_OK)
      m.left++;
    else
      r->errors++;
  }
  r->heap_held = bench_heap_bytes();
  for (unsigned i = 0; i < r->threads; i++) sem_post(&m.release);
  if (m.left > 0) evx_loop_run(eb_loop);
  evx_executor_free(ex);
  sem_destroy(&m.entered);
  sem_destroy(&m.release);
  r->errors += m.errors;
  return 0;
}

static void eb_fini(void) {
  evx_executor_free(eb_ex);
  eb_ex = NULL;
  evx_loop_free(eb_loop);
  eb_loop = NULL;
}

const bench_driver bench_evexec_driver = {
    .name = "evexec",
    .init = eb_init,
    .jobs = eb_jobs,
    .callbacks = eb_callbacks,
    .memory = eb_memory,
    .fini = eb_fini,
};
