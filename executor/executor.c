/*
 * evx_executor: fixed worker pool, bounded job queue, strands, stats.
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
 * - Worker wakeups for jobs submitted on the running loop thread are
 *   coalesced too: such a submit does not signal; it sets wake_pending and
 *   makes sure post_node is queued, and evx__executor_drain (next loop
 *   iteration, after every callback of this one returned) wakes as many idle
 *   workers as there are queued jobs. A loop that dispatches many requests
 *   per iteration thus pays one worker wakeup per iteration instead of one
 *   per job. Submits from other threads, or while the loop is not running
 *   (set-up code may block on a job it just submitted), signal at once.
 * - Strands: a strand has at most one job "active" (on ex->queue or
 *   running); the rest wait on the strand's own list. The worker that
 *   finishes the active job, under the lock, moves the next waiting one onto
 *   ex->queue. max_queue counts waiting strand jobs too.
 * - Shutdown never blocks. evx_executor_free joins the workers, so it is the
 *   only call that waits, and it is loop-thread only.
 */
#include <evexec/executor.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "loop-internal.h"

#define EVX__DEFAULT_THREADS 4
#define EVX__DEFAULT_MAX_QUEUE 4096
#define EVX__MAX_THREADS 1024
#define EVX__JOB_CACHE_MAX 4096

enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_CANCELLED };

struct evx_job {
  evx__list link; /* ex->queue, strand->waiting, or nowhere while running */
  struct evx_job *next_done; /* ex->completed chain, and the free list */
  evx_work_fn work;
  evx_done_fn done;
  void *arg;
  evx_executor *ex;
  evx_strand *strand; /* NULL once the strand is freed */
  uint64_t t_queued;
  int state;
};

struct evx_strand {
  evx__list link;    /* ex->strands */
  evx__list waiting; /* jobs behind the active one */
  evx_job *active;   /* queued on ex->queue or running; NULL when idle */
  evx_executor *ex;
};

struct evx_executor {
  evx_loop *loop;
  evx__list loop_link; /* loop->executors; loop thread only */
  char *name;
  unsigned nthreads;
  size_t max_queue;
  pthread_t *threads;
  unsigned started;

  pthread_mutex_t lock; /* guards everything below */
  pthread_cond_t work_cv;
  evx__list queue;
  evx__list strands;
  size_t nqueued; /* on ex->queue plus waiting on strands */
  size_t nrunning;
  unsigned nidle;
  int closed;
  int cancel_all; /* shutdown(CANCEL): workers stop taking jobs */
  evx_job *completed, *completed_tail;
  int posted;      /* post_node is on the loop queue */
  int wake_pending; /* loop-thread submits queued jobs without waking a worker */
  evx_job *free_jobs;
  size_t nfree;
  evx_executor_stats stats;

  evx__cbnode post_node;
  /* Loop thread only. */
  int draining;       /* inside evx__executor_drain */
  int free_requested; /* evx_executor_free called from one of our done callbacks */
  int freeing;        /* evx_executor_free is tearing down: further free calls are no-ops */
};

static unsigned evx__bucket(uint64_t ns) {
  uint64_t us = ns / 1000;
  unsigned b = 0;
  while (us && b < EVX_STATS_BUCKETS - 1) {
    us >>= 1;
    b++;
  }
  return b;
}

static void evx__record(uint64_t *total, uint64_t *max, uint64_t *hist, uint64_t ns) {
  *total += ns;
  if (ns > *max) *max = ns;
  hist[evx__bucket(ns)]++;
}

/* ex->lock held. Appends to the completed list; returns 1 when the caller
 * must post ex->post_node to the loop after unlocking. */
static int evx__complete_locked(evx_executor *ex, evx_job *job, int state) {
  job->state = state;
  job->next_done = NULL;
  if (ex->completed_tail) ex->completed_tail->next_done = job;
  else ex->completed = job;
  ex->completed_tail = job;
  if (ex->posted) return 0;
  ex->posted = 1;
  return 1;
}

static void evx__post(evx_executor *ex) {
  /* The loop outlives its executors (evx_loop_free frees them first), so
   * posting cannot meet a closing loop while workers exist. */
  (void)evx__loop_post(ex->loop, &ex->post_node);
}

/* ex->lock held. Put a job on the run queue and wake a worker (unless the
 * wakeup is deferred: wake == 0, see evx__submit). */
static void evx__enqueue_locked(evx_executor *ex, evx_job *job, int wake) {
  evx__list_insert_tail(&ex->queue, &job->link);
  if (wake && ex->nidle) pthread_cond_signal(&ex->work_cv);
}

/* ex->lock held. Wake idle workers for the jobs queued by loop-thread submits. */
static void evx__wake_deferred_locked(evx_executor *ex) {
  if (!ex->wake_pending) return;
  ex->wake_pending = 0;
  size_t n = ex->nqueued;
  if (!n || !ex->nidle) return;
  if (n >= ex->nidle) {
    pthread_cond_broadcast(&ex->work_cv);
    return;
  }
  while (n--) pthread_cond_signal(&ex->work_cv);
}

/* ex->lock held. The strand's active job left it (finished or cancelled). */
static void evx__strand_advance_locked(evx_strand *s) {
  s->active = NULL;
  evx__list *n = evx__list_pop_head(&s->waiting);
  if (!n) return;
  s->active = EVX__CONTAINER_OF(n, evx_job, link);
  evx__enqueue_locked(s->ex, s->active, 1);
}

/* ex->lock held. Cancel a QUEUED job wherever it waits. Returns 1 to post. */
static int evx__cancel_locked(evx_executor *ex, evx_job *job) {
  evx__list_remove(&job->link);
  ex->nqueued--;
  ex->stats.cancelled++;
  evx_strand *s = job->strand;
  if (s && s->active == job) evx__strand_advance_locked(s);
  return evx__complete_locked(ex, job, JOB_CANCELLED);
}

static void *evx__worker(void *arg) {
  evx_executor *ex = arg;
  pthread_mutex_lock(&ex->lock);
  for (;;) {
    while (evx__list_empty(&ex->queue) && !ex->closed) {
      ex->nidle++;
      pthread_cond_wait(&ex->work_cv, &ex->lock);
      ex->nidle--;
    }
    /* closed: DRAIN exits once the queue is empty (strand successors are
     * queued by the worker finishing their predecessor before it gets here);
     * CANCEL already emptied the queue. */
    if (evx__list_empty(&ex->queue)) break;

    evx_job *job = EVX__CONTAINER_OF(evx__list_pop_head(&ex->queue), evx_job, link);
    job->state = JOB_RUNNING;
    uint64_t t0 = evx_now_ns();
    evx__record(&ex->stats.wait_ns_total, &ex->stats.wait_ns_max, ex->stats.wait_hist,
                t0 - job->t_queued);
    ex->nqueued--;
    ex->nrunning++;
    pthread_mutex_unlock(&ex->lock);

    job->work(job->arg);
    uint64_t run_ns = evx_now_ns() - t0;

    pthread_mutex_lock(&ex->lock);
    evx__record(&ex->stats.run_ns_total, &ex->stats.run_ns_max, ex->stats.run_hist, run_ns);
    if (job->strand) evx__strand_advance_locked(job->strand);
    int post = evx__complete_locked(ex, job, JOB_DONE);
    ex->nrunning--;
    ex->stats.completed++;
    if (post) {
      pthread_mutex_unlock(&ex->lock);
      evx__post(ex);
      pthread_mutex_lock(&ex->lock);
    }
  }
  pthread_mutex_unlock(&ex->lock);
  return NULL;
}

/* Loop thread: run done() for every completed job, then recycle the nodes. */
static void evx__executor_drain(void *arg) {
  evx_executor *ex = arg;
  pthread_mutex_lock(&ex->lock);
  evx_job *list = ex->completed;
  ex->completed = ex->completed_tail = NULL;
  ex->posted = 0;
  evx__wake_deferred_locked(ex);
  pthread_mutex_unlock(&ex->lock);
  if (!list) return;

  ex->draining = 1;
  evx_job *last = NULL;
  size_t count = 0;
  for (evx_job *job = list; job; job = job->next_done) {
    if (job->done) job->done(job->arg, job->state == JOB_CANCELLED ? EVX_ECANCELED : EVX_OK);
    last = job;
    count++;
  }
  ex->draining = 0;

  pthread_mutex_lock(&ex->lock);
  if (ex->nfree < EVX__JOB_CACHE_MAX) {
    last->next_done = ex->free_jobs;
    ex->free_jobs = list;
    ex->nfree += count;
    list = NULL;
  }
  pthread_mutex_unlock(&ex->lock);
  while (list) {
    evx_job *next = list->next_done;
    evx_free(list);
    list = next;
  }
  if (ex->free_requested && !ex->freeing) evx_executor_free(ex);
}

evx_executor *evx_executor_new(evx_loop *loop, const evx_executor_opts *opts) {
  if (!loop || !evx__loop_thread_ok(loop)) return NULL;
  evx_executor_opts o = {0};
  if (opts) o = *opts;
  if (o.threads == 0) o.threads = EVX__DEFAULT_THREADS;
  if (o.max_queue == 0) o.max_queue = EVX__DEFAULT_MAX_QUEUE;
  if (o.threads > EVX__MAX_THREADS) return NULL;

  evx_executor *ex = evx_calloc(1, sizeof *ex);
  if (!ex) return NULL;
  ex->loop = loop;
  ex->nthreads = o.threads;
  ex->max_queue = o.max_queue;
  ex->name = evx_strdup(o.name ? o.name : "evx");
  ex->threads = evx_calloc(o.threads, sizeof *ex->threads);
  if (!ex->name || !ex->threads) goto fail_mem;
  if (pthread_mutex_init(&ex->lock, NULL) != 0) goto fail_mem;
  if (pthread_cond_init(&ex->work_cv, NULL) != 0) {
    pthread_mutex_destroy(&ex->lock);
    goto fail_mem;
  }
  evx__list_init(&ex->queue);
  evx__list_init(&ex->strands);
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
      goto fail_mem;
    }
    char tname[32]; /* Linux thread names hold 15 bytes */
    snprintf(tname, sizeof tname, "%.10s-%u", ex->name, i % 1000u);
    tname[15] = '\0';
    pthread_setname_np(ex->threads[i], tname);
    ex->started++;
  }
  evx__loop_add_executor(loop, &ex->loop_link);
  return ex;

fail_mem:
  evx_free(ex->threads);
  evx_free(ex->name);
  evx_free(ex);
  return NULL;
}

/* Allocate a job node and account it as queued, or say why not. ex->lock held. */
static int evx__job_new_locked(evx_executor *ex, evx_job **out) {
  if (ex->closed) return EVX_ECLOSED;
  if (ex->nqueued >= ex->max_queue) {
    ex->stats.rejected++;
    return EVX_EBUSY;
  }
  evx_job *job = ex->free_jobs;
  if (job) {
    ex->free_jobs = job->next_done;
    ex->nfree--;
  } else {
    job = evx_malloc(sizeof *job);
    if (!job) return EVX_ENOMEM;
  }
  *out = job;
  return EVX_OK;
}

static int evx__submit(evx_executor *ex, evx_strand *s, evx_work_fn work, evx_done_fn done,
                       void *arg, evx_job **handle) {
  evx_job *job;
  int defer = evx__loop_running_here(ex->loop); /* see DESIGN: coalesced worker wakeups */
  int post = 0;
  pthread_mutex_lock(&ex->lock);
  int rc = evx__job_new_locked(ex, &job);
  if (rc != EVX_OK) {
    pthread_mutex_unlock(&ex->lock);
    return rc;
  }
  job->work = work;
  job->done = done;
  job->arg = arg;
  job->ex = ex;
  job->strand = s;
  job->state = JOB_QUEUED;
  job->t_queued = evx_now_ns();
  ex->nqueued++;
  ex->stats.submitted++;
  if (s && s->active) {
    evx__list_insert_tail(&s->waiting, &job->link);
  } else {
    if (s) s->active = job;
    evx__enqueue_locked(ex, job, !defer);
    if (defer && ex->nidle) {
      ex->wake_pending = 1;
      if (!ex->posted) post = ex->posted = 1;
    }
  }
  if (handle) *handle = job;
  pthread_mutex_unlock(&ex->lock);
  if (post) evx__post(ex);
  return EVX_OK;
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

int evx_job_cancel(evx_job *job) {
  if (!job) return EVX_EINVAL;
  evx_executor *ex = job->ex;
  if (!evx__loop_thread_ok(ex->loop)) return EVX_EINVAL;
  pthread_mutex_lock(&ex->lock);
  if (job->state != JOB_QUEUED) {
    pthread_mutex_unlock(&ex->lock);
    return EVX_EBUSY;
  }
  int post = evx__cancel_locked(ex, job);
  pthread_mutex_unlock(&ex->lock);
  if (post) evx__post(ex);
  return EVX_OK;
}

int evx_executor_shutdown(evx_executor *ex, int how) {
  if (!ex || (how != EVX_SHUTDOWN_DRAIN && how != EVX_SHUTDOWN_CANCEL)) return EVX_EINVAL;
  int post = 0;
  pthread_mutex_lock(&ex->lock);
  ex->closed = 1;
  if (how == EVX_SHUTDOWN_CANCEL) {
    /* Waiting strand jobs first: cancelling an active one must not promote them. */
    for (evx__list *l = ex->strands.next; l != &ex->strands; l = l->next) {
      evx_strand *s = EVX__CONTAINER_OF(l, evx_strand, link);
      evx__list *n;
      while ((n = evx__list_pop_head(&s->waiting)) != NULL) {
        evx_job *job = EVX__CONTAINER_OF(n, evx_job, link);
        ex->nqueued--;
        ex->stats.cancelled++;
        post |= evx__complete_locked(ex, job, JOB_CANCELLED);
      }
    }
    evx__list *n;
    while ((n = ex->queue.next) != &ex->queue)
      post |= evx__cancel_locked(ex, EVX__CONTAINER_OF(n, evx_job, link));
  }
  pthread_cond_broadcast(&ex->work_cv);
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
  ex->started = 0;

  /* Workers are gone: no one posts any more. Pull our node off the loop
   * queue and deliver every owed done() here. */
  evx__loop_unpost(ex->loop, &ex->post_node);
  evx__executor_drain(ex);

  evx__list *l;
  while ((l = evx__list_pop_head(&ex->strands)) != NULL)
    evx_free(EVX__CONTAINER_OF(l, evx_strand, link));
  while (ex->free_jobs) {
    evx_job *next = ex->free_jobs->next_done;
    evx_free(ex->free_jobs);
    ex->free_jobs = next;
  }
  evx__loop_remove_executor(ex->loop, &ex->loop_link);
  pthread_cond_destroy(&ex->work_cv);
  pthread_mutex_destroy(&ex->lock);
  evx_free(ex->threads);
  evx_free(ex->name);
  evx_free(ex);
}

void evx__executor_free_from_loop(evx__list *node) {
  evx_executor_free(EVX__CONTAINER_OF(node, evx_executor, loop_link));
}

evx_loop *evx_executor_loop(evx_executor *ex) { return ex ? ex->loop : NULL; }

const char *evx_executor_name(evx_executor *ex) { return ex ? ex->name : NULL; }

int evx_executor_stats_get(evx_executor *ex, evx_executor_stats *out) {
  if (!ex || !out) return EVX_EINVAL;
  pthread_mutex_lock(&ex->lock);
  *out = ex->stats;
  out->queued = ex->nqueued;
  out->running = ex->nrunning;
  pthread_mutex_unlock(&ex->lock);
  return EVX_OK;
}

uint64_t evx_stats_quantile_us(const uint64_t hist[EVX_STATS_BUCKETS], double q) {
  if (!hist) return 0;
  uint64_t total = 0;
  for (unsigned i = 0; i < EVX_STATS_BUCKETS; i++) total += hist[i];
  if (total == 0) return 0;
  if (q < 0) q = 0;
  if (q > 1) q = 1;
  uint64_t rank = (uint64_t)(q * (double)total);
  if (rank == 0) rank = 1;
  uint64_t seen = 0;
  for (unsigned i = 0; i < EVX_STATS_BUCKETS; i++) {
    seen += hist[i];
    if (seen >= rank) return (uint64_t)1 << i;
  }
  return (uint64_t)1 << (EVX_STATS_BUCKETS - 1);
}

evx_strand *evx_strand_new(evx_executor *ex) {
  if (!ex || !evx__loop_thread_ok(ex->loop)) return NULL;
  evx_strand *s = evx_calloc(1, sizeof *s);
  if (!s) return NULL;
  s->ex = ex;
  evx__list_init(&s->waiting);
  pthread_mutex_lock(&ex->lock);
  evx__list_insert_tail(&ex->strands, &s->link);
  pthread_mutex_unlock(&ex->lock);
  return s;
}

int evx_strand_submit(evx_strand *s, evx_work_fn work, evx_done_fn done, void *arg) {
  if (!s || !work) return EVX_EINVAL;
  return evx__submit(s->ex, s, work, done, arg, NULL);
}

int evx_strand_submit_job(evx_strand *s, evx_work_fn work, evx_done_fn done, void *arg,
                          evx_job **job) {
  if (!s || !work || !job) return EVX_EINVAL;
  return evx__submit(s->ex, s, work, done, arg, job);
}

void evx_strand_free(evx_strand *s) {
  if (!s) return;
  evx_executor *ex = s->ex;
  int post = 0;
  pthread_mutex_lock(&ex->lock);
  evx__list *n;
  while ((n = evx__list_pop_head(&s->waiting)) != NULL) {
    evx_job *job = EVX__CONTAINER_OF(n, evx_job, link);
    ex->nqueued--;
    ex->stats.cancelled++;
    post |= evx__complete_locked(ex, job, JOB_CANCELLED);
  }
  /* The active job: cancelled too when it has not started (it sits on
   * ex->queue); a running one finishes as a plain job. */
  if (s->active && s->active->state == JOB_QUEUED)
    post |= evx__cancel_locked(ex, s->active); /* advances s: nothing waits any more */
  else if (s->active)
    s->active->strand = NULL;
  evx__list_remove(&s->link);
  pthread_mutex_unlock(&ex->lock);
  if (post) evx__post(ex);
  evx_free(s);
}
