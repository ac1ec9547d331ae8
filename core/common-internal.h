/* PRIVATE to evexec: never installed, never included by users. */
#ifndef EVX_COMMON_INTERNAL_H
#define EVX_COMMON_INTERNAL_H

#include <evexec/common.h>

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

/* The rest of the allocator and the clock, for evexec's own code and ext/
 * (exported: the shared library keeps these symbols; not public API). */
EVX_API void *evx_calloc(size_t count, size_t n);
EVX_API void *evx_realloc(void *p, size_t n);
/* strdup through the configured allocator; NULL in gives NULL. */
EVX_API char *evx_strdup(const char *s);
/* Monotonic clock in nanoseconds (CLOCK_MONOTONIC). */
EVX_API uint64_t evx_now_ns(void);

/* The options convention (common.h): copy a caller's options struct of
 * caller_size bytes (src may be NULL: all defaults) into dst, the library's
 * layout of lib_size bytes, zeroing what the caller's struct does not
 * cover. EVX_EINVAL when the caller's struct is longer and sets a byte
 * beyond lib_size (a field this library does not know); dst is then all
 * zero. */
EVX_API int evx__opts_copy(void *dst, size_t lib_size, const void *src, size_t caller_size);

/* The constructor convention (evx_last_error in common.h): record why a
 * constructor fails, and return NULL for it: `return evx__ctor_fail(EVX_EINVAL);` */
EVX_API void *evx__ctor_fail(int err);

/* Intrusive doubly linked list (libuv/Linux style). An empty list is a head
 * whose next and prev point to itself; a node not on any list has NULLs. */
typedef struct evx__list {
  struct evx__list *next, *prev;
} evx__list;

#define EVX__CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

static inline void evx__list_init(evx__list *h) { h->next = h->prev = h; }
static inline int evx__list_empty(const evx__list *h) { return h->next == h; }
static inline int evx__list_linked(const evx__list *n) { return n->next != NULL; }
static inline void evx__list_insert_tail(evx__list *h, evx__list *n) {
  n->prev = h->prev;
  n->next = h;
  h->prev->next = n;
  h->prev = n;
}
static inline void evx__list_remove(evx__list *n) {
  n->prev->next = n->next;
  n->next->prev = n->prev;
  n->next = n->prev = NULL;
}
static inline evx__list *evx__list_pop_head(evx__list *h) {
  if (evx__list_empty(h)) return NULL;
  evx__list *n = h->next;
  evx__list_remove(n);
  return n;
}

/* initial-exec TLS: read on hot paths; the default model costs a
 * __tls_get_addr call per access in the shared library. */
#if defined(__GNUC__)
#define EVX__TLS_FAST __attribute__((tls_model("initial-exec")))
#else
#define EVX__TLS_FAST
#endif

/* This thread's identity for lock-free "is this the loop thread" checks: the
 * address of a thread-local, distinct for every live thread (common.c;
 * hidden, so only the library's own code reads it inline). */
extern _Thread_local char evx__thread_token EVX__TLS_FAST;
static inline const void *evx__thread_me(void) { return &evx__thread_token; }

/* A loop exists that was allocated with the current allocator (one hold per
 * live loop): evx_set_allocator refuses to switch while any is held. */
void evx__alloc_hold(void);
void evx__alloc_release(void);

#endif
