/* Shared helpers for the Check suites (test-only, never installed). */
#ifndef EVX_TEST_H
#define EVX_TEST_H

#include <check.h>
#include <evexec/evexec.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

/* A gate that parks worker threads deterministically:
 * each parked job posts `entered`, then waits on `release`. */
typedef struct evx_gate {
  sem_t entered;
  sem_t release;
} evx_gate;

static inline void evx_gate_init(evx_gate *g) {
  sem_init(&g->entered, 0, 0);
  sem_init(&g->release, 0, 0);
}
static inline void evx_gate_destroy(evx_gate *g) {
  sem_destroy(&g->entered);
  sem_destroy(&g->release);
}
/* Work function: park on the gate. arg is the gate. */
static inline void evx_gate_park(void *arg) {
  evx_gate *g = arg;
  sem_post(&g->entered);
  sem_wait(&g->release);
}
/* Wait (from the test thread) until n jobs are parked. */
static inline void evx_gate_wait_entered(evx_gate *g, unsigned n) {
  for (unsigned i = 0; i < n; i++) sem_wait(&g->entered);
}
static inline void evx_gate_open(evx_gate *g, unsigned n) {
  for (unsigned i = 0; i < n; i++) sem_post(&g->release);
}

/* Stop the loop from a callback: evx_add_callback(loop, evx_test_stop_cb, loop). */
static inline void evx_test_stop_cb(void *arg) { evx_loop_stop((evx_loop *)arg); }

/* Run `suite` with Check and return the process exit status. */
static inline int evx_test_main(Suite *suite) {
  SRunner *sr = srunner_create(suite);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
