/* Private to bench/: shared by evx-bench's drivers; never installed.
 *
 * DESIGN. evx-bench runs the same measurement loop through two thread pools
 * (evexec's evx_executor and libuv's uv_queue_work) in one process, so both
 * see the same machine state. Every number is computed by this file's code
 * from timestamps taken the same way for both implementations:
 *   - a job's latency runs from its submit to bench_now_ns() when its
 *     completion callback starts on the loop thread. A job submitted from a
 *     completion callback (the steady state) reuses that callback's
 *     timestamp as its submit time, so each job costs one clock read on the
 *     loop thread (20 ns here) - the same for both implementations;
 *   - a round's wall time runs from the first submit to the last completion;
 *   - CPU time is CLOCK_PROCESS_CPUTIME_ID (every thread of the process)
 *     over the round, so spinning or extra wakeups show up as cpu_pct.
 * A driver (bench_evexec.c, bench_libuv.c) only submits and completes jobs.
 */
#ifndef EVX_BENCH_INTERNAL_H
#define EVX_BENCH_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Monotonic nanoseconds. The same function times both implementations. */
static inline uint64_t bench_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* User + system CPU time of the whole process (all threads), in ns. */
uint64_t bench_cpu_ns(void);

/* Heap bytes in use (glibc mallinfo2().uordblks + hblkhd). */
size_t bench_heap_bytes(void);

/* One round of a job benchmark: the input the driver reads, the output it fills. */
typedef struct bench_round {
  /* in */
  uint64_t jobs;     /* jobs to complete (N) */
  unsigned window;   /* jobs kept in flight (W); 1 for pingpong */
  unsigned threads;  /* pool size (T) */
  uint64_t *lat_ns;  /* jobs entries; the driver stores each job's latency */
  /* out */
  uint64_t t_start;  /* bench_now_ns() at the first submit */
  uint64_t t_end;    /* bench_now_ns() at the last completion */
  uint64_t errors;   /* failed submits or non-OK statuses (a round with errors is invalid) */
} bench_round;

/* A callbacks round: P producer threads each post N callbacks to the loop. */
typedef struct bench_cb_round {
  unsigned producers;
  uint64_t per;      /* callbacks per producer */
  uint64_t *lat_ns;  /* producers * per entries, filled in completion order */
  uint64_t t_start, t_end;
  uint64_t errors;
} bench_cb_round;

/* A memory probe: park every worker, then hold `jobs` queued jobs. */
typedef struct bench_mem_round {
  uint64_t jobs;
  unsigned threads;
  size_t heap_before, heap_held;  /* bench_heap_bytes() before submitting / with jobs queued */
  uint64_t errors;
} bench_mem_round;

/* A driver: one thread-pool implementation. Each function returns 0 or -1
 * (after printing why to stderr). init runs once, before any round; the pool
 * persists across rounds, as it would in a server. */
typedef struct bench_driver {
  const char *name;  /* impl=... */
  /* spin_us: evexec's opts.spin_us (bounded spin of an idle worker); libuv has no such knob */
  int (*init)(unsigned threads, unsigned window, unsigned spin_us);
  int (*jobs)(bench_round *r);
  int (*callbacks)(bench_cb_round *r);
  int (*memory)(bench_mem_round *r);
  void (*fini)(void);
} bench_driver;

extern const bench_driver bench_evexec_driver;
extern const bench_driver bench_libuv_driver;

/* The job functions both pools run: a no-op, kept out of line. */
void bench_noop_work(void *arg);

#endif /* EVX_BENCH_INTERNAL_H */
