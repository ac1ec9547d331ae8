/* Test-only (never installed): a counting allocator that can fail the Nth
 * allocation, for evexec (evx_set_allocator) and libevent
 * (event_set_mem_functions).
 *
 * Every block carries its size in a 16-byte header, so the live byte count
 * is exact; a test asserts it returns to where it was (no leak) and reads the
 * peak (bounded memory). Install once, first thing in main(), before any
 * evexec or libevent call: memory allocated before the hook would later be
 * freed through it.
 *
 * Failing: ta_arm(scope, n) makes the nth allocation from then on, counted
 * only over the allocators in `scope` (TA_EVX, TA_LIBEVENT or both), return
 * NULL - once; later ones succeed again. ta_fired() says whether it happened.
 * With TA_WINDOW in the scope, only allocations made while a window is open
 * (ta_window(1) ... ta_window(0)) count: a test uses it to fail libevent's
 * allocations only inside the evexec calls it makes, not inside evhttp's own
 * connection handling, whose out-of-memory paths evexec cannot change.
 * Counters are atomics, so any thread may allocate. */
#ifndef EVX_TEST_ALLOC_H
#define EVX_TEST_ALLOC_H

#include <event2/event.h>
#include <evexec/common.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TA_HDR 16
#define TA_EVX 1
#define TA_LIBEVENT 2
#define TA_WINDOW 4

static atomic_llong ta_bytes_, ta_peak_;
static atomic_long ta_count_, ta_fail_at_;
static atomic_int ta_scope_, ta_fired_, ta_window_;

static inline long long ta_bytes(void) { return atomic_load(&ta_bytes_); }
static inline long long ta_peak(void) { return atomic_load(&ta_peak_); }
static inline void ta_reset_peak(void) { atomic_store(&ta_peak_, atomic_load(&ta_bytes_)); }
static inline int ta_fired(void) { return atomic_load(&ta_fired_); }
/* Allocations counted in the armed scope since ta_arm (also after firing). */
static inline long ta_count(void) { return atomic_load(&ta_count_); }

static inline void ta_arm(int scope, long n) {
  atomic_store(&ta_fail_at_, 0);
  atomic_store(&ta_count_, 0);
  atomic_store(&ta_fired_, 0);
  atomic_store(&ta_scope_, scope);
  atomic_store(&ta_fail_at_, n);
}
static inline void ta_disarm(void) { atomic_store(&ta_fail_at_, 0); }
static inline void ta_window(int open) { atomic_store(&ta_window_, open); }

static inline void ta_add_(long long n) {
  long long now = atomic_fetch_add(&ta_bytes_, n) + n;
  long long peak = atomic_load(&ta_peak_);
  while (now > peak && !atomic_compare_exchange_weak(&ta_peak_, &peak, now)) {
  }
}

/* 1 when this allocation must fail. */
static inline int ta_should_fail_(int scope) {
  int armed = atomic_load(&ta_scope_);
  if (!(armed & scope)) return 0;
  if ((armed & TA_WINDOW) && !atomic_load(&ta_window_)) return 0;
  long c = atomic_fetch_add(&ta_count_, 1) + 1;
  long at = atomic_load(&ta_fail_at_);
  if (at > 0 && c == at) {
    atomic_store(&ta_fired_, 1);
    return 1;
  }
  return 0;
}

static inline void *ta_malloc_(int scope, size_t n) {
  if (n > SIZE_MAX - TA_HDR || ta_should_fail_(scope)) return NULL;
  unsigned char *p = malloc(n + TA_HDR);
  if (!p) return NULL;
  memcpy(p, &n, sizeof n);
  ta_add_((long long)n);
  return p + TA_HDR;
}
static inline void ta_free(void *q) {
  if (!q) return;
  unsigned char *p = (unsigned char *)q - TA_HDR;
  size_t n;
  memcpy(&n, p, sizeof n);
  ta_add_(-(long long)n);
  free(p);
}
static inline void *ta_realloc_(int scope, void *q, size_t n) {
  if (!q) return ta_malloc_(scope, n);
  if (n > SIZE_MAX - TA_HDR || ta_should_fail_(scope)) return NULL; /* q stays valid */
  unsigned char *p = (unsigned char *)q - TA_HDR;
  size_t old;
  memcpy(&old, p, sizeof old);
  unsigned char *np = realloc(p, n + TA_HDR);
  if (!np) return NULL;
  memcpy(np, &n, sizeof n);
  ta_add_((long long)n - (long long)old);
  return np + TA_HDR;
}

static inline void *ta_evx_malloc(size_t n) { return ta_malloc_(TA_EVX, n); }
static inline void *ta_evx_realloc(void *q, size_t n) { return ta_realloc_(TA_EVX, q, n); }
static inline void *ta_evx_calloc(size_t c, size_t n) {
  if (n && c > SIZE_MAX / n) return NULL;
  void *p = ta_malloc_(TA_EVX, c * n);
  if (p) memset(p, 0, c * n);
  return p;
}
static inline void *ta_ev_malloc(size_t n) { return ta_malloc_(TA_LIBEVENT, n); }
static inline void *ta_ev_realloc(void *q, size_t n) { return ta_realloc_(TA_LIBEVENT, q, n); }

/* Install for evexec and libevent. 0 on success. */
static inline int ta_install(void) {
  atomic_init(&ta_bytes_, 0);
  atomic_init(&ta_peak_, 0);
  atomic_init(&ta_count_, 0);
  atomic_init(&ta_fail_at_, 0);
  atomic_init(&ta_scope_, 0);
  atomic_init(&ta_fired_, 0);
  atomic_init(&ta_window_, 0);
  event_set_mem_functions(ta_ev_malloc, ta_ev_realloc, ta_free);
  return evx_set_allocator(ta_evx_malloc, ta_evx_realloc, ta_evx_calloc, ta_free) == EVX_OK ? 0 : -1;
}

#endif
