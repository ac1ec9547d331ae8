/*
 * Stale-proof handles (see handle-internal.h).
 *
 * DESIGN
 * - One process-wide table of slots, each {obj, gen}; free slots form a
 *   list. A handle is (gen << GEN_SHIFT) | (index + 1): never 0 (so never
 *   NULL as a pointer), and a slot's generation grows every time the slot is
 *   freed, so an old handle of a reused slot no longer matches. Generations
 *   wrap only after 2^32 reuses of one slot (2^12 on 32-bit targets).
 * - The table is global because the public calls that take a handle
 *   (evx_timer_cancel, evx_job_cancel) take nothing else that could lead to a per-loop
 *   table. Its mutex is a leaf lock: held for a lookup or an update only,
 *   never while user code or another evexec lock runs; it may be taken with
 *   an executor's lock held (lock order: ex->lock, then this one). Timers
 *   and job handles end on their loop's thread, so the lock is contended
 *   only by several loops in one process or by submits from other threads.
 * - The arrays live only while a handle is live: the last drop frees them,
 *   so a process with no loop holds no memory here (the allocator hook's
 *   balance checks, and evx_set_allocator's "no loop" rule, stay exact).
 *   The generation counter outlives them: evx__gen_next is above every
 *   generation ever handed out, and new slots (a grown or a new table) start
 *   there, so no handle of an earlier table can match a later slot.
 */
#include "handle-internal.h"

#include <pthread.h>

#if UINTPTR_MAX > 0xFFFFFFFFu
#define EVX__GEN_SHIFT 32
#else
#define EVX__GEN_SHIFT 20
#endif
#define EVX__IDX_MASK (((uintptr_t)1 << EVX__GEN_SHIFT) - 1)
#define EVX__GEN_MASK (UINTPTR_MAX >> EVX__GEN_SHIFT)
#define EVX__NO_SLOT SIZE_MAX

typedef struct evx__slot {
  void *obj;   /* NULL while free */
  uintptr_t gen;
  size_t next_free;
} evx__slot;

static pthread_mutex_t evx__htab_lock = PTHREAD_MUTEX_INITIALIZER;
static evx__slot *evx__htab;
static size_t evx__hcap, evx__hlive, evx__hfree = EVX__NO_SLOT;
static uintptr_t evx__gen_next = 1;

int evx__handle_new(void *obj, evx__hid *out) {
  pthread_mutex_lock(&evx__htab_lock);
  if (evx__hfree == EVX__NO_SLOT) {
    size_t cap = evx__hcap ? evx__hcap * 2 : 64;
    evx__slot *t = cap - 1 <= EVX__IDX_MASK - 1 ? evx_realloc(evx__htab, cap * sizeof *t) : NULL;
    if (!t) {
      pthread_mutex_unlock(&evx__htab_lock);
      return EVX_ENOMEM;
    }
    for (size_t i = cap; i-- > evx__hcap;) {
      t[i].obj = NULL;
      t[i].gen = evx__gen_next;
      t[i].next_free = evx__hfree;
      evx__hfree = i;
    }
    evx__htab = t;
    evx__hcap = cap;
  }
  size_t i = evx__hfree;
  evx__hfree = evx__htab[i].next_free;
  evx__htab[i].obj = obj;
  evx__hlive++;
  *out = (evx__htab[i].gen << EVX__GEN_SHIFT) | (uintptr_t)(i + 1);
  pthread_mutex_unlock(&evx__htab_lock);
  return EVX_OK;
}

/* Lock held. The slot of a live handle, or NULL. */
static evx__slot *evx__slot_of(evx__hid h) {
  size_t i = (size_t)(h & EVX__IDX_MASK);
  if (i == 0 || i > evx__hcap) return NULL;
  evx__slot *s = &evx__htab[i - 1];
  if (!s->obj || s->gen != ((h >> EVX__GEN_SHIFT) & EVX__GEN_MASK)) return NULL;
  return s;
}

/* Lock held: free the slot, and the table with the last one. */
static void evx__slot_free(evx__slot *s) {
  s->obj = NULL;
  s->gen = (s->gen + 1) & EVX__GEN_MASK;
  if (s->gen == 0) s->gen = 1; /* wrapped: after 2^32 (32-bit: 2^12) generations */
  if (s->gen > evx__gen_next) evx__gen_next = s->gen;
  s->next_free = evx__hfree;
  evx__hfree = (size_t)(s - evx__htab);
  if (--evx__hlive == 0) {
    evx_free(evx__htab);
    evx__htab = NULL;
    evx__hcap = 0;
    evx__hfree = EVX__NO_SLOT;
  }
}

char evx__handle_reserved;

void evx__handle_bind(evx__hid h, void *obj) {
  pthread_mutex_lock(&evx__htab_lock);
  evx__slot *s = evx__slot_of(h);
  if (s) s->obj = obj;
  pthread_mutex_unlock(&evx__htab_lock);
}

void *evx__handle_get(evx__hid h, int (*ok)(void *obj)) {
  pthread_mutex_lock(&evx__htab_lock);
  evx__slot *s = evx__slot_of(h);
  void *obj = s && s->obj != &evx__handle_reserved && (!ok || ok(s->obj)) ? s->obj : NULL;
  pthread_mutex_unlock(&evx__htab_lock);
  return obj;
}

void *evx__handle_take(evx__hid h, int (*ok)(void *obj)) {
  pthread_mutex_lock(&evx__htab_lock);
  evx__slot *s = evx__slot_of(h);
  void *obj = s && s->obj != &evx__handle_reserved && (!ok || ok(s->obj)) ? s->obj : NULL;
  if (obj) evx__slot_free(s);
  pthread_mutex_unlock(&evx__htab_lock);
  return obj;
}

void evx__handle_drop(evx__hid h) {
  pthread_mutex_lock(&evx__htab_lock);
  evx__slot *s = evx__slot_of(h);
  if (s) evx__slot_free(s);
  pthread_mutex_unlock(&evx__htab_lock);
}
