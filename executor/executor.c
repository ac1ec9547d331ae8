/*
 * evx_executor: fixed worker pool, bounded job queue, the drain of
 * completions. Strands are in strand.c, histograms in stats.c.
 *
 * DESIGN
 * - One mutex (ex->lock) guards the whole executor: the run queue, strand
 *   queues, job states, the completion list, counters and the free list.
 *   It is a leaf lock with respect to user code: no work, done or other
 *   callback runs while it is held, and it is never held while taking
 *   loop->lock (workers unlock before evx__loop_post).
 * - Job life: QUEUED (on ex->queue, or waiting on a strand) -> RUNNING (taken
 *   by a worker) -> DONE (on ex->completed) -> done() on the loop thread ->
 *   back to the free list. A QUEUED job may instead become CANCELLED (also
 *   on ex->completed, status EVX_ECANCELED). Every accepted job reaches the
 *   completed list exactly once, and the loop drains that list exactly once
 *   per node: that is the exactly-once guarantee for done().
 * - Workers take one job per lock and run it unlocked. A job becomes RUNNING
 *   only when its work is about to be called, so a job waiting behind a
 *   blocked one stays QUEUED: it can be cancelled, shutdown(CANCEL) cancels
 *   it, and any idle worker can take it. Completions are still coalesced:
 *   only the worker that makes the completed list non-empty posts
 *   ex->post_node to the loop (one wakeup per batch); the loop takes the
 *   whole list at once.
 * - The in-drain fast path (kept because it is measured: the roundtrip
 *   benchmark, a done() that submits the next job, runs at 2.2-2.4x libuv's
 *   uv_queue_work with it and 0.6-0.9x without). While the loop thread
 *   drains ex's completions, the second and later submits to ex from its
 *   done() callbacks take no lock: evx__submit_deferred queues the job on
 *   ex->deferred, in a slot and on a node taken in advance, and
 *   evx__refill / the drain's end splice the batch onto ex->queue under one
 *   lock and one wakeup (every EVX__WAKE_BATCH jobs, and when the drain
 *   ends). The first submit of a drain takes the locked path and wakes a
 *   worker at once, so a lone job does not wait for the drain to end. The
 *   invariants are written at the fields they guard (executor-internal.h:
 *   reserved, slots, deferred, ndeferred, lfree, closed_pub, cancel_all);
 *   every entry point that must see deferred jobs opens with
 *   evx__lock_spliced. What users can observe is in executor.h (stats
 *   from other threads during a drain).
 *   Submits that cannot take the fast path (other threads, strands, nested
 *   drains) take the lock; inside a drain they too leave their wakeups owed
 *   (ex->wakes_owed), paid by the same splice.
 * - Wakeups owed by the loop thread: on the thread running the loop (an
 *   HTTP handler, a timer, a future callback), the first submit of a loop
 *   iteration wakes a worker at once, so a lone job starts without delay,
 *   and makes ex->wake_ev active. Later submits in the same iteration only
 *   add to ex->wakes_owed; wake_ev pays them once the callbacks already due
 *   have run (or at once when EVX__WAKE_BATCH are owed; or when
 *   evx_loop_run returns, if a stop cut the iteration short). A burst of
 *   requests handled in one iteration then costs a wakeup or two instead of
 *   one per job; busy workers take the jobs at once regardless, since they
 *   are on ex->queue. Every payment is capped by the jobs still queued:
 *   awake workers may have taken the jobs that owed it meanwhile.
 * - Optional bounded spin (opts.spin_us): a worker that finds the queue
 *   empty first polls ex->queue_gen without the lock for up to spin_us, then
 *   sleeps on work_cv as before. At most one worker spins (ex->nspinning,
 *   under the lock), so spinning never takes every core from the loop
 *   thread. The first job that arrives during a spin is left to the spinner
 *   (spin_claimed): the enqueuer bumps queue_gen instead of signalling, so
 *   that job costs no futex wake and no context switch; later jobs wake
 *   sleeping workers as usual. The spinner re-checks the queue under the
 *   lock before it sleeps, so a job that arrives as the spin ends is not
 *   missed.
 * - Strands (strand.c) keep one job active on ex->queue; the rest wait on
 *   the strand, and the worker finishing the active one queues the next.
 * - Shutdown never blocks. evx_executor_free joins the workers, so it is the
 *   only call that waits, and it is loop-thread only.
 */
#include "executor-internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* ex->lock held. Appends to the completed list; returns 1 when the caller
 * must post ex->post_node to the loop after unlocking. */
int evx__complete_locked(evx_executor *ex, evx_job *job, int state) {
  job->state = state;
  job->next_done = NULL;
  if (ex->completed_tail) ex->completed_tail->next_done = job;
  else ex->completed = job;
  ex->completed_tail = job;
  if (ex->posted) return 0;
  ex->posted = 1;
  return 1;
}

void evx__post(evx_executor *ex) {
  /* The loop outlives its executors (evx_loop_free frees them first), so
   * posting cannot meet a closing loop while workers exist. */
  (void)evx__loop_post(ex->loop, &ex->post_node);
}

/* The executor whose done() callbacks this thread is running, if any. Only
 * the loop thread ever sets it, so `evx__draining_ex == ex` proves that the
 * caller is inside ex's drain on the loop thread. */
static _Thread_local evx_executor *evx__draining_ex;

/* ex->lock held. A job was just queued: if a worker spins and nobody left
 * it a job yet, leave it this one - bump queue_gen (only written under the
 * lock, so load + store, no RMW) - and return 1: no signal is needed. */
static int evx__claim_spinner_locked(evx_executor *ex) {
  if (!ex->nspinning || ex->spin_claimed) return 0;
  ex->spin_claimed = 1;
  unsigned g = atomic_load_explicit(&ex->queue_gen, memory_order_relaxed);
  atomic_store_explicit(&ex->queue_gen, g + 1, memory_order_relaxed);
  return 1;
}

/* ex->lock held. Wake the workers owed by deferred submits - no more than
 * there are jobs still queued: by the time a wake is paid, awake workers may
 * have taken the jobs that owed it (with short jobs they usually have), and
 * a worker woken to an empty queue only costs two context switches. nqueued
 * also counts jobs waiting on strands, so it is an upper bound on ex->queue:
 * every job on ex->queue still gets a worker (an awake one takes it before
 * it sleeps, or a woken one does). */
static void evx__pay_wakes_locked(evx_executor *ex) {
  unsigned owed = ex->wakes_owed;
  ex->wakes_owed = 0;
  if (evx__list_empty(&ex->queue)) return;
  if (owed > ex->nqueued) owed = (unsigned)ex->nqueued;
  if (owed >= ex->nidle) {
    if (ex->nidle) pthread_cond_broadcast(&ex->work_cv);
  } else {
    for (unsigned i = 0; i < owed; i++) pthread_cond_signal(&ex->work_cv);
  }
}

/* ex->lock held. Put a job on the run queue and wake a worker - or leave it
 * to the spinning one, or, when `owe` (the caller is the loop thread, which
 * pays later: see DESIGN), note that a wake is owed. */
void evx__enqueue_locked(evx_executor *ex, evx_job *job, int owe) {
  evx__list_insert_tail(&ex->queue, &job->link);
  if (evx__claim_spinner_locked(ex)) return;
  if (!ex->nidle) return;
  if (!owe) {
    pthread_cond_signal(&ex->work_cv);
  } else if (++ex->wakes_owed >= EVX__WAKE_BATCH) {
    evx__pay_wakes_locked(ex);
  }
}

/* Loop thread, later in the iteration of the submits that owe wakes. */
static void evx__on_wake_ev(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  evx_executor *ex = arg;
  ex->wake_ev_active = 0;
  pthread_mutex_lock(&ex->lock);
  evx__pay_wakes_locked(ex);
  pthread_mutex_unlock(&ex->lock);
}

/* Append every node of src to dst (in order), leaving src empty. */
static void evx__list_append_all(evx__list *dst, evx__list *src) {
  if (evx__list_empty(src)) return;
  evx__list *first = src->next, *last = src->prev;
  first->prev = dst->prev;
  dst->prev->next = first;
  last->next = dst;
  dst->prev = last;
  evx__list_init(src);
}

/* ---- the job free list (ex->free_jobs, under the lock) ---- */

/* A cached node, or NULL. */
static evx_job *evx__free_pop_locked(evx_executor *ex) {
  evx_job *job = ex->free_jobs;
  if (job) {
    ex->free_jobs = job->next_done;
    ex->nfree--;
  }
  return job;
}

/* Cache a node whose done() ran; 0 when the cache is full (free it unlocked). */
static int evx__free_push_locked(evx_executor *ex, evx_job *job) {
  if (ex->nfree >= EVX__JOB_CACHE_MAX) return 0;
  job->next_done = ex->free_jobs;
  ex->free_jobs = job;
  ex->nfree++;
  return 1;
}

/* Free a chain of nodes linked by next_done. */
static void evx__free_chain(evx_job *job) {
  while (job) {
    evx_job *next = job->next_done;
    evx_free(job);
    job = next;
  }
}

/* ex->lock held, by ex's draining thread. Move the deferred jobs onto the run
 * queue - or cancel them, when a shutdown(CANCEL) came after they were
 * accepted - give back the unused slots and pay the wakeups owed. `now` is
 * the deferred jobs' queue time. Returns 1 when the caller must post
 * ex->post_node after unlocking. */
static int evx__splice_locked(evx_executor *ex, uint64_t now) {
  int post = 0;
  ex->reserved -= ex->ndeferred + ex->slots;
  ex->slots = 0;
  if (ex->ndeferred) {
    ex->stats.submitted += ex->ndeferred;
    if (ex->cancel_all) {
      evx__list *n;
      while ((n = evx__list_pop_head(&ex->deferred)) != NULL) {
        ex->stats.cancelled++;
        post |= evx__complete_locked(ex, EVX__CONTAINER_OF(n, evx_job, link), JOB_CANCELLED);
      }
    } else {
      for (evx__list *l = ex->deferred.next; l != &ex->deferred; l = l->next)
        EVX__CONTAINER_OF(l, evx_job, link)->t_queued = now;
      evx__list_append_all(&ex->queue, &ex->deferred);
      ex->nqueued += ex->ndeferred;
      ex->wakes_owed += (unsigned)ex->ndeferred - (unsigned)evx__claim_spinner_locked(ex);
    }
    ex->ndeferred = 0;
  }
  evx__pay_wakes_locked(ex);
  /* Closed workers wait for reserved == 0 before they exit: let them look. */
  if (ex->closed && ex->reserved == 0) pthread_cond_broadcast(&ex->work_cv);
  return post;
}

/* ex->lock held. The longest queue wait a job submitted now may have: 0
 * while a worker is free for it; else, with every worker busy and k jobs
 * ahead of it, it starts after k + 1 completions - at worst (every running
 * job just started) after ceil((k + 1) / n) run times of the n workers, each
 * taken as run_ewma. A worst case, not an average, so that an admitted job
 * rarely expires; the queue still holds a job for every worker, so the
 * workers never idle for it. Before the first job completed the run time is
 * unknown: 0 (then only the deadline at the worker sheds load). */
static uint64_t evx__wait_estimate_locked(evx_executor *ex) {
  size_t n = ex->nthreads, busy = ex->nrunning < n ? ex->nrunning : n;
  size_t ahead = ex->nqueued + ex->reserved;
  if (ahead < n - busy) return 0;
  uint64_t k = ahead - (n - busy);
  return ex->run_ewma_ns * ((k + 1 + n - 1) / n);
}

/* ex->lock held. 1 when load shedding refuses a new job (counted). */
static int evx__shed_locked(evx_executor *ex) {
  if (!ex->target_ns || evx__wait_estimate_locked(ex) <= ex->target_ns) return 0;
  ex->stats.rejected++;
  ex->stats.shed++;
  return 1;
}

/* The opening of every entry point that must see the jobs a drain deferred:
 * lock ex and, when `own` - the caller is the thread running ex's drain, the
 * only one that may touch ex->deferred - splice them onto the queue first.
 * `now` dates them (0: read the clock if there is anything to splice).
 * Returns with ex->lock held: 1 when the caller must evx__post(ex) after
 * unlocking. */
static int evx__lock_spliced(evx_executor *ex, int own, uint64_t now) {
  if (own && !now && ex->ndeferred) now = evx_now_ns();
  pthread_mutex_lock(&ex->lock);
  return own ? evx__splice_locked(ex, now) : 0;
}

int evx__lock_seeing_deferred(evx_executor *ex) {
  return evx__lock_spliced(ex, evx__draining_ex == ex, 0);
}

/* ex's draining thread: splice the deferred jobs, then reserve up to `want`
 * new slots (and take as many free nodes). Returns EVX_OK, or EVX_ECLOSED /
 * EVX_EBUSY when want > 0 and no slot could be reserved. */
static int evx__refill(evx_executor *ex, size_t want) {
  int rc = EVX_OK;
  int post = evx__lock_spliced(ex, 1, 0);
  if (want && ex->closed) {
    rc = EVX_ECLOSED;
  } else if (want) {
    size_t used = ex->nqueued + ex->reserved;
    size_t avail = used < ex->max_queue ? ex->max_queue - used : 0;
    if (avail == 0) {
      ex->stats.rejected++;
      rc = EVX_EBUSY;
    } else if (evx__shed_locked(ex)) {
      rc = EVX_EBUSY;
    } else {
      ex->slots = avail < want ? avail : want;
      ex->reserved += ex->slots;
      evx_job *job;
      for (size_t i = 0; i < ex->slots && (job = evx__free_pop_locked(ex)) != NULL; i++) {
        job->next_done = ex->lfree;
        ex->lfree = job;
      }
    }
  }
  pthread_mutex_unlock(&ex->lock);
  if (post) evx__post(ex);
  return rc;
}

/* A newly accepted job: QUEUED, on no list yet; the caller queues it. */
static void evx__job_fill(evx_job *job, evx_executor *ex, evx_strand *s, evx_work_fn work,
                          evx_done_fn done, void *arg) {
  job->work = work;
  job->done = done;
  job->arg = arg;
  job->ex = ex;
  job->strand = s;
  job->state = JOB_QUEUED;
  job->hid = 0;
  atomic_store_explicit(&job->cancel_requested, 0, memory_order_relaxed);
}

/* evx_submit from one of ex's own done() callbacks: no lock (see DESIGN). */
static int evx__submit_deferred(evx_executor *ex, evx_work_fn work, evx_done_fn done, void *arg,
                                evx_job **handle) {
  /* Acquire pairs with the release in shutdown: a done() that learnt of a
   * shutdown from another thread sees the executor closed. */
  if (atomic_load_explicit(&ex->closed_pub, memory_order_acquire)) return EVX_ECLOSED;
  if (ex->slots == 0) {
    int rc = evx__refill(ex, EVX__WAKE_BATCH);
    if (rc != EVX_OK) return rc;
  }
  evx_job *job = ex->lfree;
  if (job) {
    ex->lfree = job->next_done;
  } else {
    job = evx_malloc(sizeof *job);
    if (!job) return EVX_ENOMEM; /* the slot stays unused; the next splice returns it */
  }
  evx__job_fill(job, ex, NULL, work, done, arg);
  if (handle && evx__handle_new(job, &job->hid) != EVX_OK) {
    job->next_done = ex->lfree; /* unused: the slot returns at the next splice */
    ex->lfree = job;
    return EVX_ENOMEM;
  }
  evx__list_insert_tail(&ex->deferred, &job->link);
  ex->slots--;
  ex->ndeferred++;
  if (handle) *handle = (evx_job *)job->hid;
  return EVX_OK;
}

static inline void evx__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield" ::: "memory");
#endif
}

/* ex->lock held by a worker that found the queue empty. With opts.spin_us,
 * and when no other worker spins, poll for new jobs without the lock for up
 * to spin_us. Returns with the lock held; the caller re-checks the queue. */
static void evx__spin_locked(evx_executor *ex) {
  if (!ex->spin_ns || ex->nspinning || ex->closed) return;
  ex->nspinning = 1;
  unsigned gen = atomic_load_explicit(&ex->queue_gen, memory_order_relaxed);
  pthread_mutex_unlock(&ex->lock);
  uint64_t deadline = evx_now_ns() + ex->spin_ns;
  for (unsigned i = 1;; i++) {
    if (atomic_load_explicit(&ex->queue_gen, memory_order_relaxed) != gen) break;
    if ((i & 63) == 0 && (atomic_load_explicit(&ex->closed_pub, memory_order_relaxed) ||
                          evx_now_ns() >= deadline))
      break;
    evx__cpu_relax();
  }
  pthread_mutex_lock(&ex->lock);
  ex->nspinning = 0;
  ex->spin_claimed = 0;
}

/* ex->lock held. Cancel a QUEUED job wherever it waits. Returns 1 to post. */
int evx__cancel_locked(evx_executor *ex, evx_job *job) {
  evx__list_remove(&job->link);
  ex->nqueued--;
  evx__space_freed_locked(ex, 0);
  ex->stats.cancelled++;
  evx_strand *s = job->strand;
  if (s && s->active == job) evx__strand_advance_locked(s);
  return evx__complete_locked(ex, job, JOB_CANCELLED);
}

/* The job whose work runs on this worker thread now (evx_job_cancelled). */
static _Thread_local evx_job *evx__current_job;

int evx_job_cancelled(void) {
  evx_job *job = evx__current_job;
  return job && atomic_load_explicit(&job->cancel_requested, memory_order_relaxed);
}

evx_executor *evx__current_executor(void) { return evx__current_job ? evx__current_job->ex : NULL; }

static void *evx__worker(void *arg) {
  evx_executor *ex = arg;
  int post = 0; /* our last completion made ex->completed non-empty: post it, unlocked */
  /* A clock reading taken outside the lock, still "now" for the next take:
   * the one that ended the last job, or the one after a post. It dates the
   * take and starts the next run, so a worker that goes straight on reads
   * the clock once per job and never under the lock (a read there stalls on
   * the take's cache misses while the other threads spin). 0: stale. */
  uint64_t now = 0;
  pthread_mutex_lock(&ex->lock);
  for (;;) {
    /* Completions go to the loop before this worker takes another job,
     * spins, sleeps or exits. One critical section completes a job and
     * (unless a post is due) takes the next. */
    if (post) {
      pthread_mutex_unlock(&ex->lock);
      evx__post(ex);
      post = 0;
      now = evx_now_ns();
      pthread_mutex_lock(&ex->lock);
    }
    if (evx__list_empty(&ex->queue)) {
      now = 0;
      evx__spin_locked(ex);
    }
    while (evx__list_empty(&ex->queue) && (!ex->closed || ex->reserved)) {
      ex->nidle++;
      pthread_cond_wait(&ex->work_cv, &ex->lock);
      ex->nidle--;
    }
    /* closed: DRAIN exits once the queue is empty (strand successors are
     * queued by the worker finishing their predecessor before it gets here)
     * and no deferred job can still be spliced (reserved == 0: the splice
     * that zeroes it broadcasts); CANCEL already emptied the queue. */
    if (evx__list_empty(&ex->queue)) break;

    evx_job *job = EVX__CONTAINER_OF(evx__list_pop_head(&ex->queue), evx_job, link);
    uint64_t t0 = now ? now : evx_now_ns();
    if (ex->target_ns && t0 > job->t_queued + ex->target_ns) {
      /* Waited past its deadline: end it unrun (done: EVX_ETIMEDOUT), and
       * take the next - whose deadline is later, as the queue is FIFO. */
      ex->nqueued--;
      evx__space_freed_locked(ex, 0);
      ex->stats.cancelled++;
      ex->stats.expired++;
      if (job->strand) evx__strand_advance_locked(job->strand);
      post |= evx__complete_locked(ex, job, JOB_EXPIRED);
      continue;
    }
    job->state = JOB_RUNNING;
    /* A job queued after `now` was read has not waited at all. */
    evx__record(&ex->stats.wait_ns_total, &ex->stats.wait_ns_max, ex->stats.wait_hist,
                t0 > job->t_queued ? t0 - job->t_queued : 0);
    ex->nqueued--;
    ex->nrunning++;
    evx__space_freed_locked(ex, 0);
    pthread_mutex_unlock(&ex->lock);

    evx__current_job = job;
    job->work(job->arg);
    evx__current_job = NULL;
    now = evx_now_ns();
    uint64_t run_ns = now - t0;

    pthread_mutex_lock(&ex->lock);
    evx__record(&ex->stats.run_ns_total, &ex->stats.run_ns_max, ex->stats.run_hist, run_ns);
    if (ex->target_ns)
      ex->run_ewma_ns = ex->run_ewma_ns ? ex->run_ewma_ns - ex->run_ewma_ns / 8 + run_ns / 8 : run_ns;
    if (job->strand) evx__strand_advance_locked(job->strand);
    post = evx__complete_locked(ex, job, JOB_DONE);
    ex->nrunning--;
    ex->stats.completed++;
  }
  pthread_mutex_unlock(&ex->lock); /* post == 0: handed over at the top of the loop */
  return NULL;
}

/* Loop thread: run done() for every completed job, then recycle the nodes. */
static void evx__executor_drain(void *arg) {
  evx_executor *ex = arg;
  pthread_mutex_lock(&ex->lock);
  evx_job *list = ex->completed;
  ex->completed = ex->completed_tail = NULL;
  ex->posted = 0;
  pthread_mutex_unlock(&ex->lock);
  if (!list) return;

  ex->draining = 1;
  ex->drain_submits = 0;
  evx_executor *outer = evx__draining_ex; /* a done() may free another executor */
  evx__draining_ex = ex;
  for (evx_job *job = list, *next; job; job = next) {
    next = job->next_done;
    if (job->done)
      job->done(job->arg, job->state == JOB_CANCELLED  ? EVX_ECANCELED
                          : job->state == JOB_EXPIRED ? EVX_ETIMEDOUT
                                                      : EVX_OK);
    if (job->hid) evx__handle_drop(job->hid); /* done ran: the handle is stale from now on */
    /* done() ran: the node is free, and the next deferred submit reuses it. */
    job->next_done = ex->lfree;
    ex->lfree = job;
  }
  evx__draining_ex = outer;
  ex->draining = 0;

  /* Splice what our done() callbacks submitted, and recycle the nodes. */
  evx_job *extra = NULL;
  int post = evx__lock_spliced(ex, 1, 0);
  while (ex->lfree) {
    evx_job *job = ex->lfree;
    ex->lfree = job->next_done;
    if (!evx__free_push_locked(ex, job)) {
      job->next_done = extra;
      extra = job;
    }
  }
  pthread_mutex_unlock(&ex->lock);
  if (post) evx__post(ex);
  evx__free_chain(extra);
  if (ex->free_requested && !ex->freeing) evx_executor_free(ex);
}

/* Loop member hooks (see evx-private.h). */
/* evx_loop_run is returning: pay the worker wakeups this iteration still owed. */
static void evx__executor_on_run_exit(evx__loop_member *m) {
  evx_executor *ex = EVX__CONTAINER_OF(m, evx_executor, member);
  if (!ex->wake_ev_active) return;
  event_del(&ex->wake_ev);
  evx__on_wake_ev(-1, 0, ex);
}

static void evx__executor_on_free(evx__loop_member *m) {
  evx_executor_free(EVX__CONTAINER_OF(m, evx_executor, member));
}

/* The first layout of evx_executor_opts (what the plain evx_executor_new reads). */
#define EVX__EXECUTOR_OPTS_V0 (offsetof(evx_executor_opts, spin_us) + sizeof(unsigned))

evx_executor *evx_executor_new_sized(evx_loop *loop, const evx_executor_opts *opts,
                                     size_t opts_size) {
  if (!loop || !evx__loop_thread_ok(loop)) return evx__ctor_fail(EVX_EINVAL);
  evx_executor_opts o;
  if (evx__opts_copy(&o, sizeof o, opts, opts_size) != EVX_OK) return evx__ctor_fail(EVX_EINVAL);
  if (o.threads == 0) o.threads = EVX__DEFAULT_THREADS;
  if (o.max_queue == 0) o.max_queue = EVX__DEFAULT_MAX_QUEUE;
  if (o.threads > EVX__MAX_THREADS || o.spin_us > EVX__MAX_SPIN_US ||
      o.target_wait_us > EVX__MAX_TARGET_WAIT_US)
    return evx__ctor_fail(EVX_EINVAL);

  int err = EVX_ENOMEM;
  evx_executor *ex = evx_calloc(1, sizeof *ex);
  if (!ex) return evx__ctor_fail(EVX_ENOMEM);
  ex->loop = loop;
  ex->nthreads = o.threads;
  ex->max_queue = o.max_queue;
  ex->name = evx_strdup(o.name ? o.name : "evx");
  ex->threads = evx_calloc(o.threads, sizeof *ex->threads);
  if (!ex->name || !ex->threads) goto fail_mem;
  /* ex->lock is held for tens of nanoseconds at a time: on contention, spin
   * a little (glibc's adaptive mutex) rather than sleep in the kernel, where
   * a futex wait and wake cost microseconds. */
  pthread_mutexattr_t ma;
  pthread_mutexattr_init(&ma);
#ifdef __GLIBC__
  pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
#endif
  int mrc = pthread_mutex_init(&ex->lock, &ma);
  pthread_mutexattr_destroy(&ma);
  if (mrc != 0) goto fail_mem;
  if (pthread_cond_init(&ex->work_cv, NULL) != 0) {
    pthread_mutex_destroy(&ex->lock);
    goto fail_mem;
  }
  evx__list_init(&ex->queue);
  evx__list_init(&ex->space_waiters);
  evx__list_init(&ex->strands);
  evx__list_init(&ex->deferred);
  if (event_assign(&ex->wake_ev, evx_loop_base(loop), -1, 0, evx__on_wake_ev, ex) != 0) {
    pthread_cond_destroy(&ex->work_cv);
    pthread_mutex_destroy(&ex->lock);
    goto fail_mem;
  }
  atomic_init(&ex->closed_pub, 0);
  atomic_init(&ex->queue_gen, 0);
  ex->spin_ns = (uint64_t)o.spin_us * 1000;
  ex->target_ns = (uint64_t)o.target_wait_us * 1000;
  ex->stats.threads = o.threads;
  ex->post_node.fn = evx__executor_drain;
  ex->post_node.arg = ex;

  for (unsigned i = 0; i < o.threads; i++) {
    if (pthread_create(&ex->threads[i], NULL, evx__worker, ex) != 0) {
      pthread_mutex_lock(&ex->lock);
      ex->closed = 1;
      pthread_cond_broadcast(&ex->work_cv);
      pthread_mutex_unlock(&ex->lock);
      for (unsigned j = 0; j < i; j++) pthread_join(ex->threads[j], NULL);
      pthread_cond_destroy(&ex->work_cv);
      pthread_mutex_destroy(&ex->lock);
      err = EVX_EIO; /* a thread could not be started (EAGAIN: a limit) */
      goto fail_mem;
    }
    char tname[32]; /* Linux thread names hold 15 bytes */
    snprintf(tname, sizeof tname, "%.10s-%u", ex->name, i % 1000u);
    tname[15] = '\0';
    pthread_setname_np(ex->threads[i], tname);
    ex->started++;
  }
  evx__loop_member_add(loop, &ex->member, evx__executor_on_run_exit, evx__executor_on_free);
  evx__loop_member_set_metrics(&ex->member, evx__executor_metrics);
  return ex;

fail_mem:
  evx_free(ex->threads);
  evx_free(ex->name);
  evx_free(ex);
  return evx__ctor_fail(err);
}

evx_executor *(evx_executor_new)(evx_loop *loop, const evx_executor_opts *opts) {
  return evx_executor_new_sized(loop, opts, EVX__EXECUTOR_OPTS_V0);
}

/* Allocate a job node and account it as queued, or say why not. ex->lock held. */
static int evx__job_new_locked(evx_executor *ex, evx_job **out) {
  if (ex->closed) return EVX_ECLOSED;
  if (ex->nqueued + ex->reserved >= ex->max_queue) {
    ex->stats.rejected++;
    return EVX_EBUSY;
  }
  if (evx__shed_locked(ex)) return EVX_EBUSY;
  evx_job *job = evx__free_pop_locked(ex);
  if (!job && (job = evx_malloc(sizeof *job)) == NULL) return EVX_ENOMEM;
  *out = job;
  return EVX_OK;
}

int evx__submit(evx_executor *ex, evx_strand *s, evx_work_fn work, evx_done_fn done,
                       void *arg, evx_job **handle) {
  int own_drain = evx__draining_ex == ex;
  int lead = own_drain && ex->drain_submits++ == 0; /* wakes at once (see DESIGN) */
  if (own_drain && !s && !lead) return evx__submit_deferred(ex, work, done, arg, handle);
  /* On the loop thread the wake is owed, and paid by our drain's end or by
   * wake_ev later in this iteration - except for the iteration's first
   * submit, which wakes at once and arms wake_ev (see DESIGN). */
  int loop_here = !own_drain && evx__loop_running_here(ex->loop);
  int schedule = loop_here && !ex->wake_ev_active;
  /* The handle first, so that a job once accepted cannot fail after. */
  evx__hid hid = 0;
  if (handle && evx__handle_new(&evx__handle_reserved, &hid) != EVX_OK) return EVX_ENOMEM;
  uint64_t now = evx_now_ns();
  evx_job *job;
  /* A strand submit from our own done(): splice first, so that the slots
   * this thread holds do not count against it. */
  int post = evx__lock_spliced(ex, own_drain, now);
  int rc = evx__job_new_locked(ex, &job);
  if (rc == EVX_OK) {
    evx__job_fill(job, ex, s, work, done, arg);
    job->t_queued = now;
    ex->nqueued++;
    ex->stats.submitted++;
    if (s && s->active) {
      evx__list_insert_tail(&s->waiting, &job->link);
    } else {
      if (s) s->active = job;
      evx__enqueue_locked(ex, job, (own_drain && !lead) || (loop_here && !schedule));
    }
    if (handle) {
      job->hid = hid;
      evx__handle_bind(hid, job);
      *handle = (evx_job *)hid;
    }
  } else {
    schedule = 0;
  }
  pthread_mutex_unlock(&ex->lock);
  if (rc != EVX_OK && hid) evx__handle_drop(hid);
  if (schedule) {
    ex->wake_ev_active = 1;
    event_active(&ex->wake_ev, EV_TIMEOUT, 1);
  }
  if (post) evx__post(ex);
  return rc;
}

int evx_submit(evx_executor *ex, evx_work_fn work, evx_done_fn done, void *arg) {
  if (!ex || !work) return EVX_EINVAL;
  return evx__submit(ex, NULL, work, done, arg, NULL);
}

int evx_submit_job(evx_executor *ex, evx_work_fn work, evx_done_fn done, void *arg,
                   evx_job **job) {
  if (!ex || !work || !job) return EVX_EINVAL;
  return evx__submit(ex, NULL, work, done, arg, job);
}

/* Under the handle table's lock: only the job's loop thread may use it. A
 * live handle's node is not recycled before its done() returned, which
 * happens on that thread - so on it, the node stays valid through the call. */
static int evx__job_handle_ok(void *obj) {
  return evx__loop_thread_ok(((evx_job *)obj)->ex->loop);
}

int evx_job_cancel(evx_job *handle) {
  if (!handle) return EVX_EINVAL;
  evx_job *job = evx__handle_get((evx__hid)handle, evx__job_handle_ok);
  if (!job) return EVX_EINVAL; /* stale (done ran), never issued, or not our thread */
  evx_executor *ex = job->ex;
  /* On the loop thread, ex->draining means this thread runs ex's drain
   * (maybe with another executor's drain nested in it) and owns its deferred
   * jobs: splice them so that `job` is on a real queue. */
  int post = evx__lock_spliced(ex, ex->draining, 0);
  int rc = EVX_EBUSY;
  if (job->state == JOB_QUEUED) {
    post |= evx__cancel_locked(ex, job);
    rc = EVX_OK;
  } else if (job->state == JOB_RUNNING) {
    atomic_store_explicit(&job->cancel_requested, 1, memory_order_relaxed);
  }
  pthread_mutex_unlock(&ex->lock);
  if (post) evx__post(ex);
  return rc;
}

int evx_executor_shutdown(evx_executor *ex, int how) {
  if (!ex || (how != EVX_SHUTDOWN_DRAIN && how != EVX_SHUTDOWN_CANCEL)) return EVX_EINVAL;
  /* From our own done(): splice the deferred jobs first, so that they are
   * drained or cancelled with the rest right here. */
  int post = evx__lock_seeing_deferred(ex);
  ex->closed = 1;
  atomic_store_explicit(&ex->closed_pub, 1, memory_order_release);
  if (how == EVX_SHUTDOWN_CANCEL) {
    ex->cancel_all = 1; /* deferred jobs of a running drain are cancelled at their splice */
    /* Waiting strand jobs first: cancelling an active one must not promote them. */
    for (evx__list *l = ex->strands.next; l != &ex->strands; l = l->next)
      post |= evx__strand_cancel_waiting_locked(EVX__CONTAINER_OF(l, evx_strand, link));
    evx__list *n;
    while ((n = ex->queue.next) != &ex->queue)
      post |= evx__cancel_locked(ex, EVX__CONTAINER_OF(n, evx_job, link));
  }
  pthread_cond_broadcast(&ex->work_cv);
  evx__space_freed_locked(ex, 1); /* blocked submitters see EVX_ECLOSED */
  pthread_mutex_unlock(&ex->lock);
  if (post) evx__post(ex);
  return EVX_OK;
}

void evx_executor_free(evx_executor *ex) {
  if (!ex || ex->freeing) return;
  if (!evx__loop_thread_ok(ex->loop)) {
    /* From a worker it would join itself; from any other thread it would race the loop. */
    fprintf(stderr, "evexec: evx_executor_free called off the loop thread; ignored\n");
    return;
  }
  int closed;
  pthread_mutex_lock(&ex->lock);
  closed = ex->closed;
  pthread_mutex_unlock(&ex->lock);
  if (!closed) evx_executor_shutdown(ex, EVX_SHUTDOWN_CANCEL);
  if (ex->draining) {
    /* Called from one of our own done callbacks: finish after the batch. */
    ex->free_requested = 1;
    return;
  }
  ex->freeing = 1;
  for (unsigned i = 0; i < ex->started; i++) pthread_join(ex->threads[i], NULL);
  event_del(&ex->wake_ev); /* owed wakes are moot: the workers are gone */
  ex->started = 0;

  /* Workers are gone: no one posts any more. Pull our node off the loop
   * queue and deliver every owed done() here. */
  evx__loop_unpost(ex->loop, &ex->post_node);
  evx__executor_drain(ex);

  evx__list *l;
  while ((l = evx__list_pop_head(&ex->strands)) != NULL)
    evx_free(EVX__CONTAINER_OF(l, evx_strand, link));
  evx__free_chain(ex->free_jobs);
  ex->free_jobs = NULL;
  evx__loop_member_remove(&ex->member);
  pthread_cond_destroy(&ex->work_cv);
  pthread_mutex_destroy(&ex->lock);
  evx_free(ex->threads);
  evx_free(ex->name);
  evx_free(ex);
}

evx_loop *evx_executor_loop(evx_executor *ex) { return ex ? ex->loop : NULL; }

const char *evx_executor_name(evx_executor *ex) { return ex ? ex->name : NULL; }

