/*
 * evx_loop: the loop thread, the thread-safe callback queue, deferred calls
 * and timers.
 *
 * DESIGN
 * - The callback queue is a singly linked FIFO guarded by loop->lock.
 *   Producers append under the lock. A producer that finds `signaled == 0`
 *   sets it and writes the eventfd once; every other producer of the same
 *   batch only appends (coalesced wakeups). The loop thread first reads the
 *   eventfd, then takes the whole list and clears `signaled` under the lock,
 *   and runs the batch unlocked. Reading before taking means a producer that
 *   appends after the take always sees `signaled == 0` and wakes the loop
 *   again: no wakeup is lost.
 * - FIFO per producer follows from appending at the tail under one lock and
 *   running batches in order.
 * - Nodes for evx_add_callback come from a free list (no malloc in steady
 *   state); embedded nodes (owned == 1) belong to the objects embedding them, never
 *   recycled here.
 * - The deferred list is loop-thread only (no lock); it is drained by a
 *   libevent event made active when the list becomes non-empty.
 * Lock order: loop->lock is a leaf lock. No user code and no other evexec
 * lock runs while it is held.
 */
#include "loop-internal.h"

#include "future-internal.h"
#include "handle-internal.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define EVX__NODE_CACHE_MAX 4096
#define EVX__FREE_DRAIN_ROUNDS 1000

/* A pending timer. The public evx_timer * is not its address but its
 * handle (handle-internal.h), live exactly while the timer is pending: from
 * evx_call_later until it fires (dropped before fn runs) or is cancelled.
 * A handle kept past that names nothing, so evx_timer_cancel on it answers
 * EVX_EINVAL instead of freeing memory twice or cancelling a later timer. */
typedef struct evx__timer {
  evx__list link; /* in loop->timers while pending */
  struct event ev;
  evx_loop *loop;
  evx_cb fn;
  void *arg;
  evx__hid id;
} evx__timer;

/* One evx_loop_on_signal registration. */
typedef struct evx__signal {
  evx__list link; /* in loop->signals */
  struct event ev;
  int signum;
  evx_signal_fn fn;
  void *arg;
} evx__signal;

struct evx_loop {
  evx__loop_hot hot; /* first: loop-internal.h reads it through the loop pointer */
  struct event_base *base;
  int owns_base;
  int wake_fd;
  struct event wake_ev;
  struct event defer_ev;

  /* Guarded by lock. */
  pthread_mutex_t lock;
  evx__cbnode *head, *tail;
  evx__cbnode *free_nodes;
  size_t nfree;
  int signaled; /* the eventfd was written for the current batch */
  int closing;  /* evx_loop_free is past running callbacks: refuse new ones */

  atomic_int stop_requested;

  /* Loop thread only. */
  evx__cbnode *batch; /* remaining nodes of the batch being run */
  evx__cbnode *defer_head, *defer_tail;
  int in_deferred; /* evx__run_deferred is running: it picks up new nodes itself */
  evx__list timers;
  evx__list signals; /* evx__signal.link */
  evx__list members; /* evx__loop_member.link, oldest first (see evx-private.h) */
  int freeing;       /* evx_loop_free has started */
};

static void evx__loop_wake(evx_loop *loop) {
  uint64_t one = 1;
  ssize_t n;
  do {
    n = write(loop->wake_fd, &one, sizeof one);
  } while (n < 0 && errno == EINTR);
  /* EAGAIN means the counter is saturated: the loop is awake anyway. */
}

static void evx__run_batch(evx_loop *loop) {
  pthread_mutex_lock(&loop->lock);
  evx__cbnode *batch = loop->head;
  loop->head = loop->tail = NULL;
  loop->signaled = 0;
  pthread_mutex_unlock(&loop->lock);

  evx__cbnode *recycle = NULL, *recycle_tail = NULL;
  size_t nrecycle = 0;
  loop->batch = batch;
  evx__cbnode *n;
  while ((n = loop->batch) != NULL) {
    loop->batch = n->next;
    evx_cb fn = n->fn;
    void *arg = n->arg;
    if (!n->owned) {
      n->next = NULL;
      if (recycle_tail) recycle_tail->next = n;
      else recycle = n;
      recycle_tail = n;
      nrecycle++;
    }
    fn(arg);
  }
  if (!recycle) return;
  pthread_mutex_lock(&loop->lock);
  if (loop->nfree < EVX__NODE_CACHE_MAX) {
    recycle_tail->next = loop->free_nodes;
    loop->free_nodes = recycle;
    loop->nfree += nrecycle;
    recycle = NULL;
  }
  pthread_mutex_unlock(&loop->lock);
  while (recycle) {
    n = recycle->next;
    evx_free(recycle);
    recycle = n;
  }
}

/* Nodes deferred while the list runs join this call (no libevent round trip
 * per hop: a coroutine handoff is a chain of deferred calls), for at most
 * EVX__DEFER_PASSES batches; then defer_ev is re-armed so that I/O and
 * timers get their turn. */
#define EVX__DEFER_PASSES 256

static void evx__run_deferred(evx_loop *loop) {
  loop->in_deferred = 1;
  for (int pass = 0; loop->defer_head && pass < EVX__DEFER_PASSES; pass++) {
    evx__cbnode *n = loop->defer_head;
    loop->defer_head = loop->defer_tail = NULL;
    while (n) {
      evx__cbnode *next = n->next;
      n->next = NULL;
      n->fn(n->arg); /* may free n: next was read first */
      n = next;
    }
  }
  loop->in_deferred = 0;
  if (loop->defer_head) event_active(&loop->defer_ev, EV_TIMEOUT, 1);
}

static void evx__on_wake(evutil_socket_t fd, short what, void *arg) {
  (void)what;
  evx_loop *loop = arg;
  uint64_t v;
  while (read(fd, &v, sizeof v) < 0 && errno == EINTR) {
  }
  if (atomic_exchange(&loop->stop_requested, 0)) event_base_loopbreak(loop->base);
  evx__run_batch(loop);
}

static void evx__on_defer(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  evx__run_deferred(arg);
}

evx_loop *evx_loop_new(struct event_base *base) {
  evx_loop *loop = evx_calloc(1, sizeof *loop);
  if (!loop) return evx__ctor_fail(EVX_ENOMEM);
  loop->wake_fd = -1;
  if (pthread_mutex_init(&loop->lock, NULL) != 0) {
    evx_free(loop);
    return evx__ctor_fail(EVX_ENOMEM);
  }
  if (base) {
    loop->base = base;
    loop->hot.adopted = 1;
  } else {
    /* PRECISE_TIMER: libevent's default monotonic clock is the coarse one
     * (one tick is 1-10 ms), which lets timers fire up to a tick early. */
    struct event_config *cfg = event_config_new();
    if (!cfg) goto fail;
    event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    loop->base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    loop->owns_base = 1;
    if (!loop->base) goto fail;
  }
  loop->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (loop->wake_fd < 0) goto fail;
  if (event_assign(&loop->wake_ev, loop->base, loop->wake_fd, EV_READ | EV_PERSIST, evx__on_wake,
                   loop) != 0 ||
      event_add(&loop->wake_ev, NULL) != 0)
    goto fail;
  if (event_assign(&loop->defer_ev, loop->base, -1, 0, evx__on_defer, loop) != 0) {
    event_del(&loop->wake_ev);
    goto fail;
  }
  atomic_init(&loop->stop_requested, 0);
  atomic_init(&loop->hot.running, EVX__LOOP_IDLE);
  atomic_init(&loop->hot.owner, evx__thread_me());
  evx__list_init(&loop->timers);
  evx__list_init(&loop->signals);
  evx__list_init(&loop->members);
  evx__alloc_hold();
  return loop;

fail:
  if (loop->wake_fd >= 0) close(loop->wake_fd);
  if (loop->owns_base && loop->base) event_base_free(loop->base);
  pthread_mutex_destroy(&loop->lock);
  evx_free(loop);
  /* libevent or eventfd failed; both fail mostly for lack of memory or fds */
  return evx__ctor_fail(EVX_EIO);
}

/* The loop this thread is inside evx_loop_run of, if any (see
 * evx__loop_running_here). Thread-local: no lock, no race. */
static _Thread_local evx_loop *evx__running_loop;

int evx_loop_run(evx_loop *loop) {
  if (!loop) return EVX_EINVAL;
  /* IDLE -> STARTING claims the loop, so two threads cannot both run it. */
  int idle = EVX__LOOP_IDLE;
  if (!atomic_compare_exchange_strong(&loop->hot.running, &idle, EVX__LOOP_STARTING)) return EVX_EINVAL;
  atomic_store(&loop->hot.owner, evx__thread_me());
  atomic_store(&loop->hot.running, EVX__LOOP_RUNNING);
  evx_loop *outer = evx__running_loop;
  evx__running_loop = loop;
  int rc = event_base_loop(loop->base, 0);
  evx__running_loop = outer;
  /* Members may have left work to later in the last iteration (executors:
   * worker wakeups), which a stop can cut short: let them finish it now. */
  for (evx__list *l = loop->members.next; l != &loop->members; l = l->next) {
    evx__loop_member *m = EVX__CONTAINER_OF(l, evx__loop_member, link);
    if (m->on_run_exit) m->on_run_exit(m);
  }
  atomic_store(&loop->hot.running, EVX__LOOP_IDLE);
  return rc < 0 ? EVX_EIO : EVX_OK;
}

int evx__loop_running_here(evx_loop *loop) { return evx__running_loop == loop; }

int evx_loop_stop(evx_loop *loop) {
  if (!loop) return EVX_EINVAL;
  if (atomic_load(&loop->hot.running) == EVX__LOOP_RUNNING && atomic_load(&loop->hot.owner) == evx__thread_me()) {
    event_base_loopbreak(loop->base);
    return EVX_OK;
  }
  atomic_store(&loop->stop_requested, 1);
  evx__loop_wake(loop);
  return EVX_OK;
}

int evx_loop_in_thread(evx_loop *loop) {
  if (!loop) return 0;
  return atomic_load(&loop->hot.owner) == evx__thread_me();
}

/* The exported form of the inline check (loop-internal.h), for ext/. */
int(evx__loop_thread_ok)(evx_loop *loop) { return evx__loop_thread_ok_inline(loop); }

struct event_base *evx_loop_base(evx_loop *loop) { return loop ? loop->base : NULL; }

/* Append under the lock; wake the loop if this node starts a new batch. */
static int evx__enqueue(evx_loop *loop, evx__cbnode *node, int alloc) {
  int wake = 0;
  pthread_mutex_lock(&loop->lock);
  if (loop->closing) {
    pthread_mutex_unlock(&loop->lock);
    return EVX_ECLOSED;
  }
  if (alloc) {
    evx__cbnode *n = loop->free_nodes;
    if (n) {
      loop->free_nodes = n->next;
      loop->nfree--;
    } else {
      pthread_mutex_unlock(&loop->lock);
      n = evx_malloc(sizeof *n);
      if (!n) return EVX_ENOMEM;
      pthread_mutex_lock(&loop->lock);
      if (loop->closing) {
        pthread_mutex_unlock(&loop->lock);
        evx_free(n);
        return EVX_ECLOSED;
      }
    }
    n->fn = node->fn;
    n->arg = node->arg;
    n->owned = 0;
    node = n;
  }
  node->next = NULL;
  if (loop->tail) loop->tail->next = node;
  else loop->head = node;
  loop->tail = node;
  if (!loop->signaled) {
    loop->signaled = 1;
    wake = 1;
  }
  pthread_mutex_unlock(&loop->lock);
  if (wake) evx__loop_wake(loop);
  return EVX_OK;
}

int evx_add_callback(evx_loop *loop, evx_cb fn, void *arg) {
  if (!loop || !fn) return EVX_EINVAL;
  evx__cbnode tmp = {.fn = fn, .arg = arg};
  return evx__enqueue(loop, &tmp, 1);
}

int evx__loop_post(evx_loop *loop, evx__cbnode *node) {
  node->owned = 1;
  return evx__enqueue(loop, node, 0);
}

static int evx__unlink(evx__cbnode **head, evx__cbnode **tail, evx__cbnode *node) {
  evx__cbnode *prev = NULL;
  for (evx__cbnode *n = *head; n; prev = n, n = n->next) {
    if (n != node) continue;
    if (prev) prev->next = n->next;
    else *head = n->next;
    if (tail && *tail == n) *tail = prev;
    n->next = NULL;
    return 1;
  }
  return 0;
}

void evx__loop_unpost(evx_loop *loop, evx__cbnode *node) {
  pthread_mutex_lock(&loop->lock);
  int found = evx__unlink(&loop->head, &loop->tail, node);
  pthread_mutex_unlock(&loop->lock);
  if (!found) evx__unlink(&loop->batch, NULL, node);
}

void evx__loop_defer(evx_loop *loop, evx__cbnode *node) {
  node->next = NULL;
  if (loop->defer_tail) {
    loop->defer_tail->next = node;
  } else {
    loop->defer_head = node;
    if (!loop->in_deferred) event_active(&loop->defer_ev, EV_TIMEOUT, 1);
  }
  loop->defer_tail = node;
}

void evx__loop_member_add(evx_loop *loop, evx__loop_member *m, evx__member_fn on_run_exit,
                          evx__member_fn on_free) {
  m->on_run_exit = on_run_exit;
  m->on_free = on_free;
  m->on_metrics = NULL;
  evx__list_insert_tail(&loop->members, &m->link);
}

int evx__loop_freeing(evx_loop *loop) { return loop->freeing; }

evx__loop_member *evx__loop_member_find(evx_loop *loop, evx__member_fn on_free) {
  for (evx__list *l = loop->members.prev; l != &loop->members; l = l->prev) {
    evx__loop_member *m = EVX__CONTAINER_OF(l, evx__loop_member, link);
    if (m->on_free == on_free) return m;
  }
  return NULL;
}

void evx__loop_member_set_metrics(evx__loop_member *m,
                                  void (*fn)(evx__loop_member *m, struct evx_metrics *out)) {
  m->on_metrics = fn;
}

void evx__loop_member_foreach(evx_loop *loop, void (*fn)(evx__loop_member *m, void *arg),
                              void *arg) {
  for (evx__list *l = loop->members.next; l != &loop->members; l = l->next)
    fn(EVX__CONTAINER_OF(l, evx__loop_member, link), arg);
}

void evx__loop_member_remove(evx__loop_member *m) {
  if (evx__list_linked(&m->link)) evx__list_remove(&m->link);
}

void evx_loop_free(evx_loop *loop) {
  if (!loop) return;
  if (atomic_load(&loop->hot.running) != EVX__LOOP_IDLE) {
    fprintf(stderr, "evexec: evx_loop_free called while the loop runs; ignored\n");
    return;
  }
  loop->freeing = 1;
  /* The freeing thread is the loop thread from here on: the teardown below
   * makes loop-thread calls (members' free functions, callbacks). */
  atomic_store(&loop->hot.owner, evx__thread_me());
  /* The ownership rule (evx-private.h): close every member, newest first.
   * Unlinked before on_free, which may close other members too. */
  while (!evx__list_empty(&loop->members)) {
    evx__loop_member *m = EVX__CONTAINER_OF(loop->members.prev, evx__loop_member, link);
    evx__list_remove(&m->link);
    m->on_free(m);
  }

  /* Run what is queued, and what that queues, until the queue stays empty;
   * then close it in the same critical section so nothing slips in between. */
  for (int round = 0;; round++) {
    evx__run_deferred(loop);
    pthread_mutex_lock(&loop->lock);
    int empty = loop->head == NULL && loop->defer_head == NULL;
    if (empty || round >= EVX__FREE_DRAIN_ROUNDS) {
      loop->closing = 1;
      pthread_mutex_unlock(&loop->lock);
      if (!empty)
        fprintf(stderr, "evexec: callbacks kept re-queueing themselves during evx_loop_free; "
                        "dropped the rest\n");
      break;
    }
    pthread_mutex_unlock(&loop->lock);
    evx__run_batch(loop);
  }
  /* Anything left (only after the round limit) is dropped; embedded nodes belong to others. */
  for (evx__cbnode *n = loop->head, *next; n; n = next) {
    next = n->next;
    if (!n->owned) evx_free(n);
  }
  loop->head = loop->tail = NULL;

  evx__list *l;
  while ((l = evx__list_pop_head(&loop->timers)) != NULL) {
    evx__timer *t = EVX__CONTAINER_OF(l, evx__timer, link);
    event_del(&t->ev);
    evx__handle_drop(t->id);
    evx_free(t);
  }
  while ((l = evx__list_pop_head(&loop->signals)) != NULL) {
    evx__signal *sg = EVX__CONTAINER_OF(l, evx__signal, link);
    event_del(&sg->ev);
    evx_free(sg);
  }
  for (evx__cbnode *n = loop->free_nodes, *next; n; n = next) {
    next = n->next;
    evx_free(n);
  }
  evx__fcache_close(loop); /* after the last callback: they may release futures */
  event_del(&loop->wake_ev);
  event_del(&loop->defer_ev);
  close(loop->wake_fd);
  if (loop->owns_base) event_base_free(loop->base);
  pthread_mutex_destroy(&loop->lock);
  evx_free(loop);
  evx__alloc_release();
}

static void evx__on_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  evx__timer *t = arg;
  evx__list_remove(&t->link);
  evx__handle_drop(t->id); /* from here on a cancel of this timer is EVX_EINVAL */
  t->fn(t->arg);
  evx_free(t);
}

evx_timer *evx_call_later(evx_loop *loop, uint64_t ms, evx_cb fn, void *arg) {
  if (!loop || !fn || !evx__loop_thread_ok(loop)) return evx__ctor_fail(EVX_EINVAL);
  evx__timer *t = evx_calloc(1, sizeof *t);
  if (!t) return evx__ctor_fail(EVX_ENOMEM);
  t->loop = loop;
  t->fn = fn;
  t->arg = arg;
  struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)((ms % 1000) * 1000)};
  if (evx__handle_new(t, &t->id) != EVX_OK) {
    evx_free(t);
    return evx__ctor_fail(EVX_ENOMEM);
  }
  /* libevent measures the timeout from its cached time, taken when the loop
   * woke up: from inside a callback that ran for a while (or a coroutine), the
   * timer would fire early. Refresh it, so fn never runs before `ms` elapsed. */
  event_base_update_cache_time(loop->base);
  if (event_assign(&t->ev, loop->base, -1, 0, evx__on_timer, t) != 0 ||
      event_add(&t->ev, &tv) != 0) {
    evx__handle_drop(t->id);
    evx_free(t);
    return evx__ctor_fail(EVX_ENOMEM);
  }
  evx__list_insert_tail(&loop->timers, &t->link);
  return (evx_timer *)t->id;
}

/* Under the handle table's lock: only the timer's loop thread may take it. */
static int evx__timer_take_ok(void *obj) { return evx__loop_thread_ok(((evx__timer *)obj)->loop); }

int evx_timer_cancel(evx_timer *handle) {
  if (!handle) return EVX_EINVAL;
  evx__timer *t = evx__handle_take((evx__hid)handle, evx__timer_take_ok);
  if (!t) return EVX_EINVAL; /* fired, cancelled, never issued, or not our thread */
  event_del(&t->ev);
  evx__list_remove(&t->link);
  evx_free(t);
  return EVX_OK;
}

/* ---- signals ---------------------------------------------------------- */

static void evx__on_signal(evutil_socket_t sig, short what, void *arg) {
  (void)sig;
  (void)what;
  evx__signal *sg = arg;
  sg->fn(sg->signum, sg->arg);
}

int evx_loop_on_signal(evx_loop *loop, int signum, evx_signal_fn fn, void *arg) {
  if (!loop || signum <= 0 || signum >= NSIG || signum == SIGKILL || signum == SIGSTOP ||
      !evx__loop_thread_ok(loop))
    return EVX_EINVAL;
  for (evx__list *l = loop->signals.next; l != &loop->signals; l = l->next) {
    evx__signal *sg = EVX__CONTAINER_OF(l, evx__signal, link);
    if (sg->signum != signum) continue;
    if (fn) { /* replace: the event stays, only the callback changes */
      sg->fn = fn;
      sg->arg = arg;
    } else {
      event_del(&sg->ev);
      evx__list_remove(&sg->link);
      evx_free(sg);
    }
    return EVX_OK;
  }
  if (!fn) return EVX_OK;
  evx__signal *sg = evx_calloc(1, sizeof *sg);
  if (!sg) return EVX_ENOMEM;
  sg->signum = signum;
  sg->fn = fn;
  sg->arg = arg;
  if (evsignal_assign(&sg->ev, loop->base, signum, evx__on_signal, sg) != 0 ||
      evsignal_add(&sg->ev, NULL) != 0) {
    evx_free(sg);
    return EVX_EIO;
  }
  evx__list_insert_tail(&loop->signals, &sg->link);
  return EVX_OK;
}
