/* Load shedding end to end: 10x overload of GET /work?ms=50 on 2 workers
 * (capacity 40 requests/s, 400 offered) through the HTTP layer, open-loop
 * clients on new connections. With target_wait_us = 100 ms:
 *  - the excess is answered 503 + Retry-After within 10 ms (p99; refused at
 *    the submit - jobs that expire in the queue instead are counted, none
 *    expected after the warm-up);
 *  - accepted requests' p99 latency stays within 2x the target;
 *  - no request times out (504), and no job runs for a request that had
 *    already timed out.
 * The reference in the same run - the same server without a target, a plain
 * bounded queue - shows what the option prevents: queueing until 504.
 * Time is the subject here; bounds are relaxed (counts only) when
 * EVX_TEST_SLOW is set (sanitizer and valgrind builds). */
#include "evx_test.h"

#include "../bench/overload-scenario.h"

static int slow(void) { return getenv("EVX_TEST_SLOW") != NULL; }

static void print_result(const char *name, const ov_result *r) {
  printf("%s: sent=%u ok=%u busy=%u 504=%u err=%u other=%u ok_p50=%.1f ok_p99=%.1f ok_max=%.1f "
         "busy_p99=%.1f busy_max=%.1f busy_over_10ms=%u shed=%llu expired=%llu late=%u "
         "server: ok_p99=%.1f busy_p99=%.1f busy_max=%.1f\n",
         name, r->sent, r->ok, r->busy, r->timeouts, r->errors, r->other, r->ok_p50_ms,
         r->ok_p99_ms, r->ok_max_ms, r->busy_p99_ms, r->busy_max_ms, r->busy_over_10ms,
         (unsigned long long)r->shed, (unsigned long long)r->expired, r->late, r->srv_ok_p99_ms,
         r->srv_busy_p99_ms, r->srv_busy_max_ms);
  fflush(stdout);
}

START_TEST(test_ten_x_overload_sheds_at_the_door) {
  ov_config c = {.threads = 2, .job_ms = 50, .target_wait_ms = 100, .timeout_ms = 1000,
                 .rate = 400, .seconds = slow() ? 0.5 : 1.0};
  if (slow()) c.rate = 100; /* still 2.5x capacity */
  /* The counts must hold in every run. The latency bounds are about time on
   * a 2-core machine shared with other builds, where one stall of ~100 ms
   * moves a p99 of ~40 samples: they must hold in one of up to three runs
   * (each printed), so a noisy neighbour cannot fail the suite but a
   * shedding that does not work fails all three. */
  int latency_ok = 0;
  for (int attempt = 0; attempt < 3 && !latency_ok; attempt++) {
    ov_result r;
    ck_assert_int_eq(ov_run(&c, &r), 0);
    print_result("target=100ms", &r);
    ck_assert_uint_eq(r.errors, 0);
    ck_assert_uint_eq(r.other, 0);
    ck_assert_uint_eq(r.ok + r.busy + r.timeouts, r.sent);
    ck_assert_uint_gt(r.ok, 0);
    ck_assert_uint_gt(r.busy, r.sent / 2); /* most of the excess is refused */
    ck_assert_uint_eq(r.timeouts, 0);      /* no 504 */
    ck_assert_uint_eq(r.http_timed_out, 0);
    ck_assert_uint_eq(r.late, 0); /* no work for a request already timed out */
    ck_assert_uint_ge(r.shed + r.expired, r.busy); /* every 503 came from the pool's shedding */
    /* Latencies as the server sees them (dispatch to finish, from its access
     * log); the clients' figures also hold the scheduling of a hundred client
     * threads, and are printed above. */
    latency_ok = slow() || (r.srv_busy_p99_ms <= 10.0 && r.srv_ok_p99_ms <= 2.0 * c.target_wait_ms);
  }
  ck_assert_msg(latency_ok, "503 p99 > 10 ms or accepted p99 > 2x the target in 3 runs");
}
END_TEST

/* The reference: no target. The queue holds everything (max_queue 4096), so
 * waits grow until requests time out: 504s, and work for requests that had
 * timed out. Short, and only to prove the test above can fail. */
START_TEST(test_reference_without_target_times_out) {
  if (slow()) return;
  ov_config c = {.threads = 2, .job_ms = 50, .target_wait_ms = 0, .timeout_ms = 300,
                 .rate = 400, .seconds = 0.5};
  ov_result r;
  ck_assert_int_eq(ov_run(&c, &r), 0);
  print_result("reference", &r);
  ck_assert_uint_gt(r.timeouts, 0);
  ck_assert_uint_eq(r.shed + r.expired, 0);
}
END_TEST

static Suite *overload_suite(void) {
  Suite *s = suite_create("overload");
  TCase *tc = tcase_create("http");
  tcase_set_timeout(tc, 60);
  suite_add_tcase(s, tc);
  tcase_add_test(tc, test_ten_x_overload_sheds_at_the_door);
  tcase_add_test(tc, test_reference_without_target_times_out);
  return s;
}

int main(void) { return evx_test_main(overload_suite()); }
