/*
 * Error table, allocator hook and clock.
 *
 * DESIGN: every allocation in evexec goes through evx__alloc (the hook set by
 * evx_set_allocator), so tests can fail the Nth allocation and count leaks.
 * The hook is set once before any object exists; it is read without a lock.
 * Every evexec object hangs off a loop, so a count of live loops
 * (evx__alloc_hold/release) is what evx_set_allocator checks before it
 * switches: memory from the old allocator must never reach the new free.
 */
#include "common-internal.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *evx_strerror(int err) {
  switch (err) {
#define EVX__ERR_STR(name, value, msg) \
  case EVX_##name:                     \
    return msg;
    EVX_ERRNO_MAP(EVX__ERR_STR)
#undef EVX__ERR_STR
  case 1: /* EVX_PENDING (future.h): a status users print too */
    return "pending";
  default:
    return "unknown error";
  }
}

const char *evx_err_name(int err) {
  switch (err) {
#define EVX__ERR_NAME(name, value, msg) \
  case EVX_##name:                      \
    return "EVX_" #name;
    EVX_ERRNO_MAP(EVX__ERR_NAME)
#undef EVX__ERR_NAME
  case 1:
    return "EVX_PENDING";
  default:
    return "EVX_UNKNOWN";
  }
}

static struct {
  void *(*malloc_fn)(size_t);
  void *(*realloc_fn)(void *, size_t);
  void *(*calloc_fn)(size_t, size_t);
  void (*free_fn)(void *);
} evx__allocator = {malloc, realloc, calloc, free};

static atomic_long evx__live_loops;

void evx__alloc_hold(void) { atomic_fetch_add(&evx__live_loops, 1); }
void evx__alloc_release(void) { atomic_fetch_sub(&evx__live_loops, 1); }

int evx_set_allocator(void *(*malloc_fn)(size_t), void *(*realloc_fn)(void *, size_t),
                      void *(*calloc_fn)(size_t, size_t), void (*free_fn)(void *)) {
  int given = (malloc_fn != NULL) + (realloc_fn != NULL) + (calloc_fn != NULL) + (free_fn != NULL);
  if (given != 0 && given != 4) return EVX_EINVAL;
  if (given == 0) {
    malloc_fn = malloc;
    realloc_fn = realloc;
    calloc_fn = calloc;
    free_fn = free;
  }
  int same = evx__allocator.malloc_fn == malloc_fn && evx__allocator.realloc_fn == realloc_fn &&
             evx__allocator.calloc_fn == calloc_fn && evx__allocator.free_fn == free_fn;
  if (same) return EVX_OK;
  if (atomic_load(&evx__live_loops) > 0) return EVX_EBUSY;
  evx__allocator.malloc_fn = malloc_fn;
  evx__allocator.realloc_fn = realloc_fn;
  evx__allocator.calloc_fn = calloc_fn;
  evx__allocator.free_fn = free_fn;
  return EVX_OK;
}

void *evx_malloc(size_t n) { return evx__allocator.malloc_fn(n ? n : 1); }
void *evx_calloc(size_t count, size_t n) {
  return evx__allocator.calloc_fn(count ? count : 1, n ? n : 1);
}
void *evx_realloc(void *p, size_t n) { return evx__allocator.realloc_fn(p, n ? n : 1); }
void evx_free(void *p) {
  if (p) evx__allocator.free_fn(p);
}

char *evx_strdup(const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *d = evx_malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* The thread identity behind evx__thread_me (common-internal.h). */
_Thread_local char evx__thread_token EVX__TLS_FAST;

static _Thread_local int evx__last_err;

int evx_last_error(void) { return evx__last_err; }

void *evx__ctor_fail(int err) {
  evx__last_err = err;
  return NULL;
}

int evx__opts_copy(void *dst, size_t lib_size, const void *src, size_t caller_size) {
  memset(dst, 0, lib_size);
  if (!src) return EVX_OK;
  const unsigned char *s = src;
  for (size_t i = lib_size; i < caller_size; i++)
    if (s[i]) return EVX_EINVAL;
  memcpy(dst, src, caller_size < lib_size ? caller_size : lib_size);
  return EVX_OK;
}

uint64_t evx_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
