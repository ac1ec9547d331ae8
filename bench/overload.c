/* evx-overload: 10x overload of GET /work?ms=50 on 2 workers, with load
 * shedding (executor target_wait_us) and, in the same run, the reference:
 * the same server with a plain bounded queue. Prints one line per run and
 * one ratio line:
 *   overload impl=evexec target_ms=100 ... ok_p99_ms=... busy_p99_ms=... t504=... late=...
 *   overload impl=evexec target_ms=0 ...   (the reference)
 *   ratio overload target_vs_none ok_p99=... p99_over_target=... busy_p99_ms=... t504=...
 * Options: --threads N --job-ms N --target-ms N --timeout-ms N --x N (times
 * the pool's capacity) --seconds S. The scenario is bench/overload-scenario.h,
 * which tests/test_overload.c asserts on. */
#include <getopt.h>

#include "overload-scenario.h"

static void line(const ov_config *c, const ov_result *r, unsigned x) {
  printf("overload impl=evexec threads=%u job_ms=%u offered_x=%u rate=%u seconds=%.1f "
         "target_ms=%u timeout_ms=%u sent=%u ok=%u busy=%u t504=%u errors=%u shed=%llu "
         "expired=%llu late=%u ok_p50_ms=%.1f ok_p99_ms=%.1f ok_max_ms=%.1f busy_p99_ms=%.1f "
         "busy_max_ms=%.1f\n",
         c->threads, c->job_ms, x, c->rate, c->seconds, c->target_wait_ms, c->timeout_ms, r->sent,
         r->ok, r->busy, r->timeouts, r->errors, (unsigned long long)r->shed,
         (unsigned long long)r->expired, r->late, r->ok_p50_ms, r->ok_p99_ms, r->ok_max_ms,
         r->busy_p99_ms, r->busy_max_ms);
  fflush(stdout);
}

int main(int argc, char **argv) {
  unsigned threads = 2, job_ms = 50, target_ms = 100, timeout_ms = 1000, x = 10;
  double seconds = 2.0;
  static const struct option opts[] = {{"threads", required_argument, 0, 't'},
                                       {"job-ms", required_argument, 0, 'j'},
                                       {"target-ms", required_argument, 0, 'w'},
                                       {"timeout-ms", required_argument, 0, 'T'},
                                       {"x", required_argument, 0, 'x'},
                                       {"seconds", required_argument, 0, 's'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "t:j:w:T:x:s:h", opts, NULL)) != -1) {
    switch (c) {
    case 't': threads = (unsigned)atoi(optarg); break;
    case 'j': job_ms = (unsigned)atoi(optarg); break;
    case 'w': target_ms = (unsigned)atoi(optarg); break;
    case 'T': timeout_ms = (unsigned)atoi(optarg); break;
    case 'x': x = (unsigned)atoi(optarg); break;
    case 's': seconds = atof(optarg); break;
    default:
      fprintf(c == 'h' ? stdout : stderr,
              "usage: evx-overload [--threads N] [--job-ms N] [--target-ms N] [--timeout-ms N]"
              " [--x N] [--seconds S]\n");
      return c == 'h' ? 0 : 2;
    }
  }
  if (!threads || !job_ms || !x || seconds <= 0) return 2;
  unsigned rate = x * threads * 1000u / job_ms; /* x times what the pool can serve */
  ov_config cfg = {.threads = threads, .job_ms = job_ms, .target_wait_ms = target_ms,
                   .timeout_ms = timeout_ms, .rate = rate, .seconds = seconds};
  ov_result with, without;
  if (ov_run(&cfg, &with) != 0) return 1;
  line(&cfg, &with, x);
  ov_config ref = cfg;
  ref.target_wait_ms = 0;
  if (ov_run(&ref, &without) != 0) return 1;
  line(&ref, &without, x);
  printf("ratio overload target_vs_none ok_p99=%.3f p99_over_target=%.2f busy_p99_ms=%.1f "
         "ok_share=%.3f t504=%u/%u late=%u/%u\n",
         without.ok_p99_ms > 0 ? with.ok_p99_ms / without.ok_p99_ms : 0,
         target_ms ? with.ok_p99_ms / target_ms : 0, with.busy_p99_ms,
         without.ok ? (double)with.ok / without.ok : 0, with.timeouts, without.timeouts, with.late,
         without.late);
  return 0;
}
