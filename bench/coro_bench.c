/* evx-coro-bench: coroutine costs, compared in one process.
 *
 *   evx-coro-bench handoff [--items N] [--rounds R]
 *     A producer and a consumer coroutine pass N items through an evx_queue
 *     of size 1 (every item: a put, a get, two awaits, two switches through
 *     the loop); ns per item. Next to it, a bare swapcontext ping-pong of N
 *     round trips (two switches each) in the same binary; ns per round trip.
 *     Prints, per implementation, the median of R rounds:
 *       coro_handoff impl=evexec backend=x86_64 items=N ns_per_item=..
 *       coro_handoff impl=swapcontext items=N ns_per_round_trip=..
 *       ratio coro_handoff evexec_vs_swapcontext ns=..
 *   evx-coro-bench held [--coros N]
 *     N coroutines each suspended on one condition (the shape of a held long
 *     poll, without the sockets); resident memory per coroutine:
 *       coro_held impl=evexec coros=N rss_base_kb=.. rss_held_kb=.. bytes_per_coro=..
 */
#include <evexec/evexec.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <ucontext.h>

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t items = 200000;
static int only_evexec; /* --profile: skip the reference, for perf */
static int rounds = 5;

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* ---- evexec handoff ---- */

typedef struct pc {
  evx_loop *loop;
  evx_queue *q;
  uint64_t sum;
  int done;
  int errors;
} pc;

static void *producer(void *arg) {
  pc *p = arg;
  for (uint64_t i = 1; i <= items; i++) {
    evx_future *f = evx_queue_put(p->q, (void *)(uintptr_t)i);
    if (!f || evx_await(f) != EVX_OK) p->errors++;
    evx_future_release(f);
  }
  if (++p->done == 2) evx_loop_stop(p->loop);
  return NULL;
}

static void *consumer(void *arg) {
  pc *p = arg;
  for (uint64_t i = 1; i <= items; i++) {
    evx_future *f = evx_queue_get(p->q);
    if (!f || evx_await(f) != EVX_OK) p->errors++;
    else p->sum += (uintptr_t)evx_future_result(f);
    evx_future_release(f);
  }
  if (++p->done == 2) evx_loop_stop(p->loop);
  return NULL;
}

static double handoff_round(evx_loop *loop) {
  pc p = {.loop = loop, .q = evx_queue_new(loop, 1)};
  uint64_t t0 = now_ns();
  evx_future_release(evx_go(loop, consumer, &p, NULL));
  evx_future_release(evx_go(loop, producer, &p, NULL));
  evx_loop_run(loop);
  uint64_t t1 = now_ns();
  evx_queue_free(p.q);
  if (p.errors || p.sum != items * (items + 1) / 2) {
    fprintf(stderr, "coro_handoff: wrong result (errors=%d)\n", p.errors);
    exit(1);
  }
  return (double)(t1 - t0) / (double)items;
}

/* ---- bare swapcontext ping-pong ---- */

static ucontext_t uc_main, uc_co;
static volatile uint64_t uc_count;

static void uc_fn(void) {
  for (;;) {
    uc_count++;
    swapcontext(&uc_co, &uc_main);
  }
}

static double swap_round(void) {
  static char stack[64 * 1024];
  getcontext(&uc_co);
  uc_co.uc_stack.ss_sp = stack;
  uc_co.uc_stack.ss_size = sizeof stack;
  uc_co.uc_link = NULL;
  makecontext(&uc_co, uc_fn, 0);
  uc_count = 0;
  uint64_t t0 = now_ns();
  for (uint64_t i = 0; i < items; i++) swapcontext(&uc_main, &uc_co);
  uint64_t t1 = now_ns();
  if (uc_count != items) exit(1);
  return (double)(t1 - t0) / (double)items;
}

static const char *backend(void) {
#if defined(__x86_64__)
  return "x86_64";
#elif defined(__aarch64__)
  return "aarch64";
#else
  return "ucontext";
#endif
}

static int cmd_handoff(void) {
  evx_loop *loop = evx_loop_new(NULL);
  double *e = calloc((size_t)rounds, sizeof *e), *s = calloc((size_t)rounds, sizeof *s);
  handoff_round(loop); /* warm-up: stacks pooled, pages touched */
  swap_round();
  for (int r = 0; r < rounds; r++) { /* alternate, so both see the same machine */
    e[r] = handoff_round(loop);
    s[r] = only_evexec ? 1 : swap_round();
  }
  uint64_t ei[64], si[64];
  for (int r = 0; r < rounds; r++) {
    ei[r] = (uint64_t)(e[r] * 1000);
    si[r] = (uint64_t)(s[r] * 1000);
  }
  qsort(ei, (size_t)rounds, sizeof ei[0], cmp_u64);
  qsort(si, (size_t)rounds, sizeof si[0], cmp_u64);
  double em = ei[rounds / 2] / 1000.0, sm = si[rounds / 2] / 1000.0;
  printf("coro_handoff impl=evexec backend=%s items=%llu rounds=%d ns_per_item=%.1f\n", backend(),
         (unsigned long long)items, rounds, em);
  printf("coro_handoff impl=swapcontext items=%llu rounds=%d ns_per_round_trip=%.1f\n",
         (unsigned long long)items, rounds, sm);
  printf("ratio coro_handoff evexec_vs_swapcontext ns=%.3f\n", em / sm);
  free(e);
  free(s);
  evx_loop_free(loop);
  return 0;
}

/* ---- held coroutines ---- */

static long rss_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kb = -1;
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, "VmRSS:", 6) == 0) kb = strtol(line + 6, NULL, 10);
  if (f) fclose(f);
  return kb;
}

typedef struct held {
  evx_condition *cond;
  int woken;
} held;

static void *held_fn(void *arg) {
  held *h = arg;
  evx_future *w = evx_condition_wait(h->cond, 0);
  if (evx_await(w) == EVX_OK) h->woken++;
  evx_future_release(w);
  return NULL;
}

static int cmd_held(unsigned n) {
  evx_loop *loop = evx_loop_new(NULL);
  held h = {.cond = evx_condition_new(loop)};
  long base = rss_kb();
  for (unsigned i = 0; i < n; i++) evx_future_release(evx_go(loop, held_fn, &h, NULL));
  long now = rss_kb();
  evx_condition_notify_all(h.cond);
  while (h.woken < (int)n) {
    evx_loop_stop(loop);
    evx_loop_run(loop);
  }
  printf("coro_held impl=evexec coros=%u woken=%d rss_base_kb=%ld rss_held_kb=%ld bytes_per_coro=%.0f\n",
         n, h.woken, base, now, (double)(now - base) * 1024.0 / n);
  evx_condition_free(h.cond);
  evx_loop_free(loop);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) goto usage;
  unsigned coros = 10000;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--items")) items = strtoull(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--rounds")) rounds = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--profile")) only_evexec = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--coros")) coros = (unsigned)strtoul(argv[i + 1], NULL, 10);
    else goto usage;
  }
  if (rounds < 1 || rounds > 64 || items == 0) goto usage;
  if (!strcmp(argv[1], "handoff")) return cmd_handoff();
  if (!strcmp(argv[1], "held")) return cmd_held(coros);
usage:
  fprintf(stderr, "usage: evx-coro-bench handoff [--items N] [--rounds R]\n"
                  "       evx-coro-bench held [--coros N]\n");
  return 2;
}
