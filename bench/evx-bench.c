/* evx-bench: evexec's executor and callback queue against libuv, side by side.
 *
 *   evx-bench roundtrip [--jobs N] [--window W] [--threads T] [--rounds R] [--impl I]
 *   evx-bench pingpong  [--jobs N] [--threads T] [--rounds R] [--impl I] [--spin-us S]
 *   evx-bench callbacks [--producers P] [--per N] [--rounds R] [--impl I]
 *   evx-bench memory    [--jobs N] [--threads T] [--impl I]
 *
 * --impl both (default) | evexec | libuv. With both, every round runs each
 * implementation once, alternating which goes first, after one warm-up round
 * each; the printed figures are medians over the rounds, and a final `ratio`
 * line divides evexec's medians by libuv's. Output: one line per result,
 * `name impl=... key=value ...`; --verbose adds a `# ...` line per round.
 * --spin-us S (roundtrip, pingpong) sets evexec's opts.spin_us: an idle
 * worker polls S microseconds for a new job before it sleeps; the lines
 * then carry spin_us=S, and cpu_pct / cpu_ns_per_op show what it costs.
 *
 * How each figure is measured is described in bench-internal.h.
 */
#include "bench-internal.h"

#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t bench_cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

size_t bench_heap_bytes(void) {
  struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
}

/* Out of line and opaque to the callers, so the call cannot be optimised away. */
__attribute__((noinline)) void bench_noop_work(void *arg) { __asm__ volatile("" : : "r"(arg) : "memory"); }

/* ---- options ---- */

typedef struct opts {
  const char *mode;
  uint64_t jobs;
  unsigned window, threads, rounds, producers, spin_us;
  uint64_t per;
  int use_evexec, use_libuv, verbose;
  const char *hist; /* --hist FILE: write the latency histogram of every timed job */
} opts;

static void usage(FILE *f) {
  fprintf(f,
          "usage: evx-bench roundtrip [--jobs N] [--window W] [--threads T] [--rounds R] [--impl I]\n"
          "       evx-bench pingpong  [--jobs N] [--threads T] [--rounds R] [--impl I] [--spin-us S]\n"
          "       evx-bench callbacks [--producers P] [--per N] [--rounds R] [--impl I]\n"
          "       evx-bench memory    [--jobs N] [--threads T] [--impl I]\n"
          "  --impl both|evexec|libuv (default both)   --verbose: one '#' line per round\n"
          "  --spin-us S: evexec workers poll S us before sleeping (roundtrip, pingpong; default 0)\n"
          "  --hist FILE: roundtrip, pingpong: write the latency histogram (every timed job of\n"
          "               every round; quarter-octave bins) as columns bin_us <impl>... for gnuplot\n");
}

/* Parse a decimal in [lo, hi] or exit with a message. */
static uint64_t parse_num(const char *flag, const char *s, uint64_t lo, uint64_t hi) {
  char *end = NULL;
  errno = 0;
  unsigned long long v = s != NULL && *s != '-' ? strtoull(s, &end, 10) : 0;
  if (s == NULL || end == s || *end != '\0' || errno != 0 || v < lo || v > hi) {
    fprintf(stderr, "evx-bench: %s wants a number in [%llu, %llu], got '%s'\n", flag,
            (unsigned long long)lo, (unsigned long long)hi, s ? s : "");
    exit(2);
  }
  return v;
}

static void parse_args(int argc, char **argv, opts *o) {
  if (argc < 2) {
    usage(stderr);
    exit(2);
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(stdout);
    exit(0);
  }
  o->mode = argv[1];
  int pp = strcmp(o->mode, "pingpong") == 0;
  if (strcmp(o->mode, "roundtrip") == 0) {
    o->jobs = 1000000;
    o->window = 1024;
  } else if (pp) {
    o->jobs = 50000;
    o->window = 1;
  } else if (strcmp(o->mode, "callbacks") == 0) {
    o->producers = 2;
    o->per = 200000;
  } else if (strcmp(o->mode, "memory") == 0) {
    o->jobs = 100000;
  } else {
    fprintf(stderr, "evx-bench: unknown benchmark '%s'\n", o->mode);
    usage(stderr);
    exit(2);
  }
  o->threads = 2;
  o->rounds = 5;
  o->use_evexec = o->use_libuv = 1;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--verbose") == 0) {
      o->verbose = 1;
      continue;
    }
    if (strcmp(a, "--help") == 0) {
      usage(stdout);
      exit(0);
    }
    if (v == NULL) {
      fprintf(stderr, "evx-bench: %s needs a value\n", a);
      exit(2);
    }
    i++;
    if (strcmp(a, "--jobs") == 0)
      o->jobs = parse_num(a, v, 1, UINT64_C(1) << 32);
    else if (strcmp(a, "--window") == 0 && !pp)
      o->window = (unsigned)parse_num(a, v, 1, 1u << 20);
    else if (strcmp(a, "--threads") == 0)
      o->threads = (unsigned)parse_num(a, v, 1, 1024);
    else if (strcmp(a, "--rounds") == 0)
      o->rounds = (unsigned)parse_num(a, v, 1, 1000);
    else if (strcmp(a, "--spin-us") == 0 && (pp || strcmp(o->mode, "roundtrip") == 0))
      o->spin_us = (unsigned)parse_num(a, v, 0, 1000000);
    else if (strcmp(a, "--hist") == 0 && (pp || strcmp(o->mode, "roundtrip") == 0))
      o->hist = v;
    else if (strcmp(a, "--producers") == 0)
      o->producers = (unsigned)parse_num(a, v, 1, 1024);
    else if (strcmp(a, "--per") == 0)
      o->per = parse_num(a, v, 1, UINT64_C(1) << 30);
    else if (strcmp(a, "--impl") == 0) {
      o->use_evexec = strcmp(v, "both") == 0 || strcmp(v, "evexec") == 0;
      o->use_libuv = strcmp(v, "both") == 0 || strcmp(v, "libuv") == 0;
      if (!o->use_evexec && !o->use_libuv) {
        fprintf(stderr, "evx-bench: --impl wants both, evexec or libuv, got '%s'\n", v);
        exit(2);
      }
    } else {
      fprintf(stderr, "evx-bench: unknown option '%s' for %s\n", a, o->mode);
      usage(stderr);
      exit(2);
    }
  }
  if (strcmp(o->mode, "callbacks") == 0 && o->producers * o->per > (UINT64_C(1) << 30)) {
    fprintf(stderr, "evx-bench: producers * per must be at most 2^30\n");
    exit(2);
  }
}

/* ---- statistics ---- */

/* The k-th smallest (0-based) of v[0..n), reordering v: quickselect with a
 * three-way partition (latencies repeat a lot) and a pseudo-random pivot. */
static uint64_t select_kth(uint64_t *v, uint64_t n, uint64_t k) {
  uint64_t lo = 0, hi = n, seed = 0x9e3779b97f4a7c15u;
  for (;;) {
    if (hi - lo <= 1) return v[lo];
    seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
    uint64_t pivot = v[lo + seed % (hi - lo)];
    uint64_t lt = lo, i = lo, gt = hi; /* [lo,lt) < pivot, [lt,i) == pivot, [gt,hi) > pivot */
    while (i < gt) {
      uint64_t x = v[i];
      if (x < pivot) {
        v[i++] = v[lt];
        v[lt++] = x;
      } else if (x > pivot) {
        v[i] = v[--gt];
        v[gt] = x;
      } else {
        i++;
      }
    }
    if (k < lt)
      hi = lt;
    else if (k >= gt)
      lo = gt;
    else
      return pivot;
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of v[0..n) in microseconds; reorders v. */
static double pct_us(uint64_t *v, uint64_t n, double q) {
  uint64_t rank = (uint64_t)(q * (double)n + 0.999999);
  if (rank < 1) rank = 1;
  if (rank > n) rank = n;
  return (double)select_kth(v, n, rank - 1) / 1000.0;
}

static double median(double *v, unsigned n) {
  qsort(v, n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

/* Latency histogram bins: quarter octaves from 0.25 us (bin i holds
 * [2^((i-1)/4), 2^(i/4)) * 0.25 us; bin 0 below 0.25 us; the last one
 * everything longer), up to ~1 s. */
#define HIST_BINS 96
static unsigned hist_bin(uint64_t ns) {
  double x = (double)ns / 250.0; /* in quarter microseconds */
  unsigned b = 0;
  double edge = 1.0;
  while (x >= edge && b < HIST_BINS - 1) {
    b++;
    edge *= 1.189207115002721; /* 2^(1/4) */
  }
  return b;
}

/* One implementation's figures across rounds. */
typedef struct series {
  const bench_driver *d;
  double *ops, *p50, *p99, *cpu_pct, *cpu_ns_op;
  unsigned n;
  uint64_t hist[HIST_BINS]; /* every timed job of every round */
} series;

static int series_init(series *s, const bench_driver *d, unsigned rounds) {
  s->d = d;
  s->n = 0;
  memset(s->hist, 0, sizeof s->hist);
  s->ops = calloc(rounds, sizeof(double));
  s->p50 = calloc(rounds, sizeof(double));
  s->p99 = calloc(rounds, sizeof(double));
  s->cpu_pct = calloc(rounds, sizeof(double));
  s->cpu_ns_op = calloc(rounds, sizeof(double));
  return s->ops && s->p50 && s->p99 && s->cpu_pct && s->cpu_ns_op ? 0 : -1;
}

static void series_free(series *s) {
  free(s->ops);
  free(s->p50);
  free(s->p99);
  free(s->cpu_pct);
  free(s->cpu_ns_op);
}

/* Medians, computed once all rounds are in. */
typedef struct summary {
  double ops, p50, p99, cpu_pct, cpu_ns_op, ops_min, ops_max;
} summary;

static summary series_summary(series *s) {
  summary m;
  m.ops = median(s->ops, s->n); /* sorts s->ops */
  m.ops_min = s->ops[0];
  m.ops_max = s->ops[s->n - 1];
  m.p50 = median(s->p50, s->n);
  m.p99 = median(s->p99, s->n);
  m.cpu_pct = median(s->cpu_pct, s->n);
  m.cpu_ns_op = median(s->cpu_ns_op, s->n);
  return m;
}

/* Record one round's figures; `count` results were timed in lat_ns. */
static void series_add(series *s, uint64_t *lat_ns, uint64_t count, uint64_t t_start, uint64_t t_end,
                       uint64_t cpu_ns, uint64_t call_ns) {
  double wall = (double)(t_end - t_start) / 1e9;
  s->ops[s->n] = wall > 0 ? (double)count / wall : 0;
  s->p50[s->n] = pct_us(lat_ns, count, 0.50);
  s->p99[s->n] = pct_us(lat_ns, count, 0.99);
  s->cpu_pct[s->n] = call_ns ? 100.0 * (double)cpu_ns / (double)call_ns : 0;
  s->cpu_ns_op[s->n] = (double)cpu_ns / (double)count;
  s->n++;
  for (uint64_t i = 0; i < count; i++) s->hist[hist_bin(lat_ns[i])]++;
}

/* --hist: one row per bin (its upper edge in us), one count column per impl. */
static int write_hist(const char *path, const series *ss, unsigned nd) {
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "evx-bench: cannot write %s: %s\n", path, strerror(errno));
    return -1;
  }
  fprintf(f, "# bin_us");
  for (unsigned i = 0; i < nd; i++) fprintf(f, " %s", ss[i].d->name);
  fprintf(f, "\n");
  double edge = 0.25;
  for (unsigned b = 0; b < HIST_BINS; b++, edge *= 1.189207115002721) {
    fprintf(f, "%.4f", edge);
    for (unsigned i = 0; i < nd; i++) fprintf(f, " %llu", (unsigned long long)ss[i].hist[b]);
    fprintf(f, "\n");
  }
  return fclose(f) == 0 ? 0 : -1;
}

/* ---- job benchmarks: roundtrip and pingpong ---- */

static int run_jobs_round(const bench_driver *d, const opts *o, uint64_t jobs, uint64_t *lat,
                          series *s, unsigned round) {
  bench_round r = {.jobs = jobs, .window = o->window, .threads = o->threads, .lat_ns = lat};
  uint64_t c0 = bench_cpu_ns(), w0 = bench_now_ns();
  int rc = d->jobs(&r);
  uint64_t c1 = bench_cpu_ns(), w1 = bench_now_ns();
  if (rc != 0 || r.errors != 0) {
    fprintf(stderr, "evx-bench: %s round failed (%llu errors)\n", d->name,
            (unsigned long long)r.errors);
    return -1;
  }
  if (s == NULL) return 0; /* warm-up */
  series_add(s, lat, jobs, r.t_start, r.t_end, c1 - c0, w1 - w0);
  unsigned k = s->n - 1;
  if (o->verbose)
    printf("# %s impl=%s round=%u ops_per_s=%.0f p50_us=%.2f p99_us=%.2f cpu_pct=%.0f\n", o->mode,
           d->name, round, s->ops[k], s->p50[k], s->p99[k], s->cpu_pct[k]);
  return 0;
}

/* " spin_us=S" when evexec spins, else "" (so default lines keep the format). */
static const char *spin_key(const opts *o, const char *impl) {
  static char buf[32];
  if (!o->spin_us || strcmp(impl, "evexec") != 0) return "";
  snprintf(buf, sizeof buf, " spin_us=%u", o->spin_us);
  return buf;
}

static void print_ratio(const opts *o, const summary *e, const summary *u) {
  printf("ratio %s evexec_vs_libuv%s ops_per_s=%.2f p50_us=%.2f p99_us=%.2f cpu_ns_per_op=%.2f\n",
         o->mode, spin_key(o, "evexec"), e->ops / u->ops, e->p50 / u->p50, e->p99 / u->p99,
         e->cpu_ns_op / u->cpu_ns_op);
}

/* Run each selected driver for every round, alternating the order. */
static int run_rounds(const opts *o, const bench_driver **ds, unsigned nd, series *ss,
                      int (*one)(const bench_driver *, const opts *, int warm, series *, unsigned)) {
  for (unsigned i = 0; i < nd; i++)
    if (one(ds[i], o, 1, NULL, 0) != 0) return -1;
  for (unsigned round = 0; round < o->rounds; round++) {
    for (unsigned k = 0; k < nd; k++) {
      unsigned i = round % 2 ? nd - 1 - k : k;
      if (one(ds[i], o, 0, &ss[i], round + 1) != 0) return -1;
    }
  }
  return 0;
}

static uint64_t *g_lat; /* one latency buffer, reused by every round */

static int jobs_one(const bench_driver *d, const opts *o, int warm, series *s, unsigned round) {
  uint64_t jobs = warm ? (o->jobs / 10 + 1000 < o->jobs ? o->jobs / 10 + 1000 : o->jobs) : o->jobs;
  return run_jobs_round(d, o, jobs, g_lat, warm ? NULL : s, round);
}

static void print_jobs(const opts *o, const char *name, const summary *m) {
  printf("%s impl=%s jobs=%llu window=%u threads=%u%s ops_per_s=%.0f p50_us=%.2f p99_us=%.2f "
         "cpu_pct=%.0f cpu_ns_per_op=%.0f rounds=%u ops_min=%.0f ops_max=%.0f\n",
         o->mode, name, (unsigned long long)o->jobs, o->window, o->threads, spin_key(o, name), m->ops,
         m->p50, m->p99, m->cpu_pct, m->cpu_ns_op, o->rounds, m->ops_min, m->ops_max);
}

/* ---- callbacks ---- */

static int cb_one(const bench_driver *d, const opts *o, int warm, series *s, unsigned round) {
  uint64_t per = warm ? (o->per / 10 + 1000 < o->per ? o->per / 10 + 1000 : o->per) : o->per;
  bench_cb_round r = {.producers = o->producers, .per = per, .lat_ns = g_lat};
  uint64_t c0 = bench_cpu_ns(), w0 = bench_now_ns();
  int rc = d->callbacks(&r);
  uint64_t c1 = bench_cpu_ns(), w1 = bench_now_ns();
  if (rc != 0 || r.errors != 0) {
    fprintf(stderr, "evx-bench: %s callbacks round failed\n", d->name);
    return -1;
  }
  if (warm) return 0;
  series_add(s, g_lat, (uint64_t)o->producers * per, r.t_start, r.t_end, c1 - c0, w1 - w0);
  unsigned k = s->n - 1;
  if (o->verbose)
    printf("# callbacks impl=%s round=%u ops_per_s=%.0f p50_us=%.2f p99_us=%.2f cpu_pct=%.0f\n",
           d->name, round, s->ops[k], s->p50[k], s->p99[k], s->cpu_pct[k]);
  return 0;
}

static void print_cb(const opts *o, const char *name, const summary *m) {
  printf("callbacks impl=%s producers=%u per=%llu ops_per_s=%.0f p50_us=%.2f p99_us=%.2f "
         "cpu_pct=%.0f cpu_ns_per_op=%.0f rounds=%u ops_min=%.0f ops_max=%.0f\n",
         name, o->producers, (unsigned long long)o->per, m->ops, m->p50, m->p99, m->cpu_pct,
         m->cpu_ns_op, o->rounds, m->ops_min, m->ops_max);
}

/* ---- memory ---- */

static int run_memory(const opts *o, const bench_driver **ds, unsigned nd) {
  for (unsigned i = 0; i < nd; i++) {
    bench_mem_round r = {.jobs = o->jobs, .threads = o->threads};
    if (ds[i]->memory(&r) != 0 || r.errors != 0) {
      fprintf(stderr, "evx-bench: %s memory probe failed\n", ds[i]->name);
      return -1;
    }
    double per = r.heap_held > r.heap_before
                     ? (double)(r.heap_held - r.heap_before) / (double)o->jobs
                     : 0.0;
    printf("memory impl=%s jobs=%llu threads=%u bytes_per_job=%.1f\n", ds[i]->name,
           (unsigned long long)o->jobs, o->threads, per);
  }
  return 0;
}

int main(int argc, char **argv) {
  opts o = {0};
  parse_args(argc, argv, &o);
  setvbuf(stdout, NULL, _IOLBF, 0);

  const bench_driver *ds[2];
  unsigned nd = 0;
  if (o.use_evexec) ds[nd++] = &bench_evexec_driver;
  if (o.use_libuv) {
    /* libuv sizes its pool from the environment when the pool starts (on the
     * first uv_queue_work); set it before any uv call. */
    char buf[16];
    snprintf(buf, sizeof buf, "%u", o.threads);
    if (setenv("UV_THREADPOOL_SIZE", buf, 1) != 0) {
      perror("setenv");
      return 1;
    }
    ds[nd++] = &bench_libuv_driver;
  }

  int cbmode = strcmp(o.mode, "callbacks") == 0, memmode = strcmp(o.mode, "memory") == 0;
  unsigned inited = 0;
  int rc = 1;
  series ss[2];
  unsigned nss = 0;
  for (; inited < nd; inited++)
    if (ds[inited]->init(o.threads, o.window, o.spin_us) != 0) goto out;
  if (memmode) {
    rc = run_memory(&o, ds, nd) == 0 ? 0 : 1;
    goto out;
  }
  uint64_t nlat = cbmode ? (uint64_t)o.producers * o.per : o.jobs;
  g_lat = malloc(nlat * sizeof *g_lat);
  if (g_lat == NULL) {
    fprintf(stderr, "evx-bench: cannot allocate %llu latency slots\n", (unsigned long long)nlat);
    goto out;
  }
  for (; nss < nd; nss++)
    if (series_init(&ss[nss], ds[nss], o.rounds) != 0) goto out;
  if (run_rounds(&o, ds, nd, ss, cbmode ? cb_one : jobs_one) != 0) goto out;

  summary sm[2];
  for (unsigned i = 0; i < nd; i++) {
    sm[i] = series_summary(&ss[i]);
    if (cbmode)
      print_cb(&o, ds[i]->name, &sm[i]);
    else
      print_jobs(&o, ds[i]->name, &sm[i]);
  }
  if (nd == 2) print_ratio(&o, &sm[0], &sm[1]);
  rc = 0;
  if (o.hist && !cbmode && write_hist(o.hist, ss, nd) != 0) rc = 1;
out:
  for (unsigned i = 0; i < nss; i++) series_free(&ss[i]);
  free(g_lat);
  for (unsigned i = 0; i < inited; i++) ds[i]->fini();
  return rc;
}
