/* PRIVATE to evexec: never installed, never included by users. */
#ifndef EVX_COMMON_INTERNAL_H
#define EVX_COMMON_INTERNAL_H

#include <evexec/common.h>

#include <assert.h>
#include <stddef.h>

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

/* This thread's identity for lock-free "is this the loop thread" checks: the
 * address of a thread-local, distinct for every live thread. */
const void *evx__thread_me(void);

/* A loop exists that was allocated with the current allocator (one hold per
 * live loop): evx_set_allocator refuses to switch while any is held. */
void evx__alloc_hold(void);
void evx__alloc_release(void);

#endif
