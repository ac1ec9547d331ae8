/*
 * evx_tasks: the backend-independent layer of durable deferred tasks.
 *
 * DESIGN
 *  - A queue is options + a handler registry + one executor for handlers +
 *    a backend (tasks-backend.h) reached only through its ops. Every field
 *    below is loop-thread only unless it is atomic; the registry is also read
 *    by evx_tasks_enqueue_sql on a database worker, under reg_mu.
 *  - Leasing is pull-based with one lease op in flight at a time. pump()
 *    asks for as many tasks as the prefetch window has room for; the window
 *    adapts to the handlers' measured run time so that a leased task waits
 *    in the executor no longer than a quarter of its visibility timeout
 *    (fast handlers: up to PREFETCH_MAX tasks in flight; slow ones: one per
 *    worker). A lease that came back short arms the poll timer; a local
 *    enqueue, a finished handler or evx__tasks_ready pump at once.
 *  - A delivered task is one `evx_task` (the handler's view) from the lease
 *    to the completion of its settle or release: held counts those in the
 *    executor, settling those whose settle/release is in flight.
 *  - Backpressure: `pending` counts tasks not completed (ready + delayed +
 *    leased). It is set from each backend count plus the enqueues not yet
 *    completed (completions arrive in store order, see tasks-backend.h), and
 *    moved by enqueue (+1 at admission, -1 on failure or dedup) and by
 *    settles that end a task (-1). It is atomic because enqueue_sql admits
 *    tasks on a database worker. Other processes sharing the store are seen
 *    at the next count (every COUNT_MS).
 *  - Shutdown: closing stops pump(); the executor is shut down with CANCEL,
 *    so handlers not started come back ECANCELED and are released; running
 *    ones finish (and see evx_task_cancelled() after the grace). Once nothing
 *    is in flight, the backend is shut down; its closed callback resolves the
 *    shutdown future.
 */
#include "tasks-backend.h"

#include <evexec/metrics.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "evx-private.h"

#define NAME_MAX_LEN 128
#define KEY_MAX_LEN 200
#define ERROR_MAX 1024
#define PREFETCH_MAX 1024
#define COUNT_MIN_MS 100 /* counts are refreshed every 100..1000 ms: 50x their cost */
#define COUNT_MAX_MS 1000
#define MAX_WORKERS 256
#define PAYLOAD_HARD_MAX ((size_t)64 << 20)

typedef struct handler {
  char *name;
  evx_task_fn fn;
  void *arg;
} handler;

struct evx_task {
  evx_tasks *q;
  evx__task_rec *r; /* owned */
  evx_task_fn fn;   /* NULL: no handler registered for r->name */
  void *arg;
  char *err;        /* evx_task_set_error, ERROR_MAX bytes when allocated */
  int result;       /* the handler's raw answer */
  evx_task_result settled_as;
  uint64_t run_ns;
};

struct evx_tasks {
  evx__loop_member member; /* registered after the executor and the backend: closed before them */
  evx_loop *loop;
  const evx__tasks_backend *be;
  void *bs;
  evx_tasks_opts o;
  char *queue;

  pthread_mutex_t reg_mu; /* guards handlers/nhandlers against enqueue_sql readers */
  handler *handlers;
  size_t nhandlers, caphandlers;

  evx_executor *ex;
  int started;
  atomic_int closing;      /* no more enqueues, no more leases */
  atomic_int cancelled;    /* evx_task_cancelled() */
  int backend_shut;        /* be->shutdown called */
  int backend_closed;      /* evx__tasks_backend_closed seen */
  int freeing;
  int leasing, want_lease, counting;
  uint64_t count_started_ns, count_every_ms;
  size_t enq_inflight;     /* enqueue ops not completed */
  size_t held;             /* delivered tasks in the executor */
  size_t settling;         /* settle/release ops in flight */
  uint64_t outbox_n;       /* rows in the Redis backend's local outbox, last count */
  atomic_llong pending;
  uint64_t avg_run_ns;     /* EWMA of handler run time; 0 before the first */
  uint64_t rng;
  evx_timer *poll_timer, *count_timer, *grace_timer;
  evx_future *shutdown_f;

  evx_tasks_stats st; /* loop thread, except the atomics below */
  atomic_uint_fast64_t n_enqueued, n_rejected, n_dedup, n_running;
};

static void pump(evx_tasks *q);
static void maybe_finish(evx_tasks *q);

/* ---- small helpers ------------------------------------------------------- */

int64_t evx__tasks_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int evx__tasks_name_ok(const char *s, size_t len) {
  if (!s || len == 0 || len > NAME_MAX_LEN) return 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '_' || c == '.' || c == ':' || c == '-';
    if (!ok) return 0;
  }
  return 1;
}

evx__task_rec *evx__task_rec_new(void) { return evx_calloc(1, sizeof(evx__task_rec)); }

void evx__task_rec_clear(evx__task_rec *r) {
  if (!r) return;
  evx_free(r->id);
  evx_free(r->name);
  evx_free(r->payload);
  evx_free(r->key);
  evx_free(r->lease);
  evx_free(r->last_error);
  r->id = r->name = r->key = r->lease = r->last_error = NULL;
  r->payload = NULL;
  r->len = 0;
}

void evx__task_rec_free(evx__task_rec *r) {
  if (!r) return;
  evx__task_rec_clear(r);
  evx_free(r);
}

evx_loop *evx__tasks_loop(evx_tasks *q) { return q->loop; }
const evx_tasks_opts *evx__tasks_opts(evx_tasks *q) { return &q->o; }

static uint64_t rng_next(evx_tasks *q) {
  /* xorshift64*: jitter only, loop thread. */
  uint64_t x = q->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  q->rng = x;
  return x * 0x2545F4914F6CDD1DULL;
}

static int on_loop(evx_tasks *q) { return q && evx__loop_thread_ok(q->loop); }

/* The registered handler for name, or NULL. Caller holds reg_mu or is the
 * loop thread (the only writer). */
static handler *find_handler(evx_tasks *q, const char *name) {
  for (size_t i = 0; i < q->nhandlers; i++)
    if (strcmp(q->handlers[i].name, name) == 0) return &q->handlers[i];
  return NULL;
}

static void pending_add(evx_tasks *q, long long d) {
  long long v = atomic_fetch_add(&q->pending, d) + d;
  if (v < 0) atomic_store(&q->pending, 0);
}

/* ---- options and open ---------------------------------------------------- */

static const struct {
  const char *scheme;
  const evx__tasks_backend *be;
} backends[] = {
    {"sqlite", &evx__tasks_backend_sqlite},
#ifdef EVX_TASKS_HAVE_REDIS
    {"redis", &evx__tasks_backend_redis},
    {"unix", &evx__tasks_backend_redis},
#endif
};

static void set_errmsg(char **errmsg, const char *msg) {
  if (errmsg && !*errmsg) *errmsg = evx_strdup(msg);
}

static int fill_opts(const evx_tasks_opts *in, size_t in_size, evx_tasks_opts *o, char **errmsg) {
  if (evx__opts_copy(o, sizeof *o, in, in_size) != EVX_OK) {
    set_errmsg(errmsg, "an option this version of evexec_tasks does not know is set");
    return EVX_EINVAL;
  }
  if (!o->queue) o->queue = "default";
  if (!evx__tasks_name_ok(o->queue, strlen(o->queue))) {
    set_errmsg(errmsg, "queue name must be 1..128 bytes of [A-Za-z0-9_.:-]");
    return EVX_EINVAL;
  }
  if (o->role != EVX_TASKS_ROLE_ALL && o->role != EVX_TASKS_ROLE_PRODUCER &&
      o->role != EVX_TASKS_ROLE_WORKER) {
    set_errmsg(errmsg, "unknown role");
    return EVX_EINVAL;
  }
  if (!o->workers) o->workers = 2;
  if (o->workers > MAX_WORKERS) {
    set_errmsg(errmsg, "workers must be at most 256");
    return EVX_EINVAL;
  }
  if (!o->max_pending) o->max_pending = 100000;
  if (!o->max_payload) o->max_payload = (size_t)1 << 20;
  if (o->max_payload > PAYLOAD_HARD_MAX) {
    set_errmsg(errmsg, "max_payload must be at most 64 MiB");
    return EVX_EINVAL;
  }
  if (!o->visibility_ms) o->visibility_ms = 30000;
  if (!o->max_attempts) o->max_attempts = 5;
  if (!o->backoff_ms) o->backoff_ms = 1000;
  if (!o->backoff_max_ms) o->backoff_max_ms = 300000;
  if (o->backoff_max_ms < o->backoff_ms) o->backoff_max_ms = o->backoff_ms;
  if (!o->poll_ms) o->poll_ms = 200;
  if (o->synchronous != EVX_TASKS_SYNC_FULL && o->synchronous != EVX_TASKS_SYNC_NORMAL) {
    set_errmsg(errmsg, "synchronous must be EVX_TASKS_SYNC_FULL or EVX_TASKS_SYNC_NORMAL");
    return EVX_EINVAL;
  }
  return EVX_OK;
}

static void count_tick(void *arg);

static void start_count(evx_tasks *q) {
  if (q->be->counts(q->bs) == EVX_OK) {
    q->counting = 1;
    q->count_started_ns = evx_now_ns();
  }
}

static void arm_count(evx_tasks *q, uint64_t ms) {
  if (q->count_timer || q->backend_shut || q->freeing) return;
  q->count_timer = evx_call_later(q->loop, ms, count_tick, q);
}

static void count_tick(void *arg) {
  evx_tasks *q = arg;
  q->count_timer = NULL;
  if (q->backend_shut || q->freeing) return;
  if (!q->counting) start_count(q);
  arm_count(q, q->count_every_ms);
}

/* evx_loop_free frees a queue left open (see evx-private.h). */
static void tasks_on_free(evx__loop_member *m) {
  evx_tasks_free(EVX__CONTAINER_OF(m, evx_tasks, member));
}

/* The queue in the loop's Prometheus text: evx_tasks_* with a queue label. */
static void tasks_on_metrics(evx__loop_member *m, struct evx_metrics *out) {
  evx_tasks *q = EVX__CONTAINER_OF(m, evx_tasks, member);
  evx_tasks_stats s;
  if (evx_tasks_stats_get(q, &s) != EVX_OK) return;
  char esc[300], labels[320];
  snprintf(labels, sizeof labels, "queue=\"%s\"", evx_metrics_escape(q->queue, esc, sizeof esc));
  static const struct {
    const char *name, *help;
    size_t off;
    int counter;
  } f[] = {
      {"evx_tasks_ready", "Tasks ready to run (whole queue, last count).", offsetof(evx_tasks_stats, ready), 0},
      {"evx_tasks_delayed", "Tasks waiting for their due time: delay or retry backoff.", offsetof(evx_tasks_stats, delayed), 0},
      {"evx_tasks_leased", "Tasks under a live lease (running somewhere).", offsetof(evx_tasks_stats, leased), 0},
      {"evx_tasks_dead", "Tasks in the dead-letter store.", offsetof(evx_tasks_stats, dead), 0},
      {"evx_tasks_outbox", "Tasks in the local outbox, not yet forwarded to Redis.", offsetof(evx_tasks_stats, outbox), 0},
      {"evx_tasks_running", "Handlers of this process running now.", offsetof(evx_tasks_stats, running), 0},
      {"evx_tasks_enqueued_total", "Enqueues that became durable.", offsetof(evx_tasks_stats, enqueued), 1},
      {"evx_tasks_rejected_total", "Enqueues refused (queue full, bad input, backend failure).", offsetof(evx_tasks_stats, rejected), 1},
      {"evx_tasks_deduplicated_total", "Enqueues answered with an existing task (idempotency key).", offsetof(evx_tasks_stats, deduplicated), 1},
      {"evx_tasks_completed_total", "Handlers that answered DONE.", offsetof(evx_tasks_stats, completed), 1},
      {"evx_tasks_retried_total", "Handler answers that scheduled a retry.", offsetof(evx_tasks_stats, retried), 1},
      {"evx_tasks_failed_total", "Tasks this process moved to the dead-letter store.", offsetof(evx_tasks_stats, failed), 1},
      {"evx_tasks_redelivered_total", "Deliveries with attempt > 1.", offsetof(evx_tasks_stats, redelivered), 1},
  };
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
    double v = (double)*(const uint64_t *)(const void *)((const char *)&s + f[i].off);
    if (f[i].counter)
      evx_metrics_counter(out, f[i].name, f[i].help, labels, v);
    else
      evx_metrics_gauge(out, f[i].name, f[i].help, labels, v);
  }
  evx_metrics_histogram_log2us(out, "evx_tasks_run_seconds", "Handler run time.", labels,
                               s.run_hist, 24, s.run_ns_total);
}

/* The first layout of evx_tasks_opts (what the plain evx_tasks_open reads). */
#define TASKS_OPTS_V0 (offsetof(evx_tasks_opts, db) + sizeof(struct evx_sqlite *))

int(evx_tasks_open)(evx_loop *loop, const char *url, const evx_tasks_opts *opts, evx_tasks **out,
                    char **errmsg) {
  return evx_tasks_open_sized(loop, url, opts, out, errmsg, TASKS_OPTS_V0);
}

int evx_tasks_open_sized(evx_loop *loop, const char *url, const evx_tasks_opts *opts,
                         evx_tasks **out, char **errmsg, size_t opts_size) {
  if (errmsg) *errmsg = NULL;
  if (out) *out = NULL;
  if (!loop || !url || !out || !evx__loop_thread_ok(loop)) return EVX_EINVAL;
  const char *colon = strchr(url, ':');
  const evx__tasks_backend *be = NULL;
  for (size_t i = 0; colon && i < sizeof backends / sizeof backends[0]; i++)
    if (strlen(backends[i].scheme) == (size_t)(colon - url) &&
        strncmp(url, backends[i].scheme, (size_t)(colon - url)) == 0)
      be = backends[i].be;
  if (!be) {
    set_errmsg(errmsg, "unknown task queue URL scheme (want sqlite:PATH"
#ifdef EVX_TASKS_HAVE_REDIS
                       ", redis://HOST:PORT/DB or unix:PATH"
#endif
                       ")");
    return EVX_EINVAL;
  }
  evx_tasks_opts o;
  int err = fill_opts(opts, opts_size, &o, errmsg);
  if (err) return err;

  evx_tasks *q = evx_calloc(1, sizeof *q);
  if (!q) return EVX_ENOMEM;
  q->loop = loop;
  q->be = be;
  q->queue = evx_strdup(o.queue);
  if (!q->queue || pthread_mutex_init(&q->reg_mu, NULL) != 0) {
    evx_free(q->queue);
    evx_free(q);
    return EVX_ENOMEM;
  }
  o.queue = q->queue;
  q->o = o;
  q->rng = (uint64_t)evx_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)q;
  if (!q->rng) q->rng = 1;
  atomic_init(&q->closing, 0);
  atomic_init(&q->cancelled, 0);
  atomic_init(&q->pending, 0);
  atomic_init(&q->n_enqueued, 0);
  atomic_init(&q->n_rejected, 0);
  atomic_init(&q->n_dedup, 0);
  atomic_init(&q->n_running, 0);

  if (o.role != EVX_TASKS_ROLE_PRODUCER) {
    char name[160];
    snprintf(name, sizeof name, "tasks-%s", q->queue);
    evx_executor_opts eo = {.threads = o.workers, .max_queue = PREFETCH_MAX * 2, .name = name};
    q->ex = evx_executor_new(loop, &eo);
    if (!q->ex) {
      set_errmsg(errmsg, "cannot start the handler threads");
      err = EVX_ENOMEM;
      goto fail;
    }
  }
  err = be->open(q, url, &q->o, &q->bs, errmsg);
  if (err) goto fail;
  /* The first count sets the backpressure count from what is stored. */
  q->count_every_ms = COUNT_MIN_MS;
  start_count(q);
  arm_count(q, q->count_every_ms);
  evx__loop_member_add(loop, &q->member, NULL, tasks_on_free);
  evx__loop_member_set_metrics(&q->member, tasks_on_metrics);
  *out = q;
  return EVX_OK;
fail:
  evx_executor_free(q->ex);
  pthread_mutex_destroy(&q->reg_mu);
  evx_free(q->queue);
  evx_free(q);
  return err;
}

int evx_tasks_register(evx_tasks *q, const char *name, evx_task_fn fn, void *arg) {
  if (!on_loop(q) || !name || !fn || !evx__tasks_name_ok(name, strlen(name))) return EVX_EINVAL;
  if (find_handler(q, name)) return EVX_EINVAL;
  char *copy = evx_strdup(name);
  if (!copy) return EVX_ENOMEM;
  pthread_mutex_lock(&q->reg_mu);
  if (q->nhandlers == q->caphandlers) {
    size_t cap = q->caphandlers ? q->caphandlers * 2 : 8;
    handler *h = evx_realloc(q->handlers, cap * sizeof *h);
    if (!h) {
      pthread_mutex_unlock(&q->reg_mu);
      evx_free(copy);
      return EVX_ENOMEM;
    }
    q->handlers = h;
    q->caphandlers = cap;
  }
  q->handlers[q->nhandlers++] = (handler){copy, fn, arg};
  pthread_mutex_unlock(&q->reg_mu);
  return EVX_OK;
}

int evx_tasks_start(evx_tasks *q) {
  if (!on_loop(q) || q->started || atomic_load(&q->closing)) return EVX_EINVAL;
  q->started = 1;
  pump(q);
  return EVX_OK;
}

/* ---- enqueue --------------------------------------------------------------- */

/* Checks shared by both enqueue paths; on success fills the record. */
static int enq_prepare(evx_tasks *q, const char *name, const void *payload, size_t len,
                       const evx_task_opts *to, int locked_registry, evx__task_enq *e) {
  memset(e, 0, sizeof *e);
  if (!name || !evx__tasks_name_ok(name, strlen(name))) return EVX_EINVAL;
  if (!payload || len == 0 || len > q->o.max_payload) return EVX_EINVAL;
  if (to && to->key && (to->key[0] == '\0' || strlen(to->key) > KEY_MAX_LEN)) return EVX_EINVAL;
  if (to && to->delay_ms > (uint64_t)INT64_MAX / 4) return EVX_EINVAL;
  if (q->o.role == EVX_TASKS_ROLE_ALL) {
    if (locked_registry) pthread_mutex_lock(&q->reg_mu);
    int known = find_handler(q, name) != NULL;
    if (locked_registry) pthread_mutex_unlock(&q->reg_mu);
    if (!known) return EVX_EINVAL;
  }
  if (atomic_load(&q->closing)) return EVX_ECLOSED;
  e->rec.name = evx_strdup(name);
  e->rec.payload = evx_malloc(len);
  e->rec.key = to && to->key ? evx_strdup(to->key) : NULL;
  if (!e->rec.name || !e->rec.payload || (to && to->key && !e->rec.key)) {
    evx__task_rec_clear(&e->rec);
    return EVX_ENOMEM;
  }
  memcpy(e->rec.payload, payload, len);
  e->rec.len = len;
  e->rec.max_attempts = to && to->max_attempts ? to->max_attempts : q->o.max_attempts;
  e->rec.backoff_ms = to && to->backoff_ms ? to->backoff_ms : q->o.backoff_ms;
  e->rec.enqueued_ms = evx__tasks_wall_ms();
  e->due_ms = e->rec.enqueued_ms + (int64_t)(to ? to->delay_ms : 0);
  return EVX_OK;
}

/* Admit one task against max_pending. */
static int admit(evx_tasks *q) {
  long long v = atomic_fetch_add(&q->pending, 1) + 1;
  if ((unsigned long long)v > q->o.max_pending) {
    atomic_fetch_sub(&q->pending, 1);
    return EVX_EBUSY;
  }
  return EVX_OK;
}

evx_future *evx_tasks_enqueue(evx_tasks *q, const char *name, const void *payload, size_t len,
                              const evx_task_opts *opts) {
  if (!on_loop(q)) return NULL;
  evx_future *f = evx_future_new(q->loop);
  if (!f) return NULL;
  evx__task_enq *e = evx_malloc(sizeof *e);
  int err = e ? enq_prepare(q, name, payload, len, opts, 0, e) : EVX_ENOMEM;
  if (!err) err = admit(q);
  if (!err) {
    e->f = evx_future_ref(f);
    q->enq_inflight++;
    err = q->be->enqueue(q->bs, e);
    if (err) {
      q->enq_inflight--;
      evx_future_release(e->f);
      pending_add(q, -1);
    }
  }
  if (err) {
    if (e) evx__task_rec_clear(&e->rec);
    evx_free(e);
    atomic_fetch_add(&q->n_rejected, 1);
    evx_future_fail(f, err);
  }
  return f;
}

static void free_id(void *p) { evx_free(p); }

void evx__tasks_enqueued(evx_tasks *q, evx__task_enq *e, int status, const char *id, int dedup) {
  q->enq_inflight--;
  if (status == EVX_OK && !id) status = EVX_EIO;
  char *copy = status == EVX_OK ? evx_strdup(id) : NULL;
  if (status == EVX_OK && !copy) status = EVX_ENOMEM; /* stored, but we cannot say its id */
  if (status == EVX_OK) {
    if (dedup) {
      atomic_fetch_add(&q->n_dedup, 1);
      pending_add(q, -1);
    } else {
      atomic_fetch_add(&q->n_enqueued, 1);
    }
    if (evx_future_resolve(e->f, copy, free_id) != EVX_OK) evx_free(copy);
    if (!dedup && e->due_ms <= evx__tasks_wall_ms()) evx__tasks_ready(q);
  } else {
    atomic_fetch_add(&q->n_rejected, 1);
    pending_add(q, -1);
    evx_future_fail(e->f, status);
  }
  evx_future_release(e->f);
  evx__task_rec_clear(&e->rec);
  evx_free(e);
  maybe_finish(q);
}

int evx_tasks_enqueue_sql(evx_tasks *q, struct sqlite3 *conn, const char *name,
                          const void *payload, size_t len, const evx_task_opts *opts,
                          char **id_out) {
  if (id_out) *id_out = NULL;
  if (!q || !conn || !q->be->enqueue_sql) return EVX_EINVAL;
  evx__task_enq e;
  int err = enq_prepare(q, name, payload, len, opts, 1, &e);
  if (!err) err = admit(q);
  else {
    atomic_fetch_add(&q->n_rejected, 1);
    return err;
  }
  if (err) {
    evx__task_rec_clear(&e.rec);
    atomic_fetch_add(&q->n_rejected, 1);
    return err;
  }
  char *id = NULL;
  int dedup = 0;
  err = q->be->enqueue_sql(q->bs, conn, &e, &id, &dedup);
  evx__task_rec_clear(&e.rec);
  if (err || dedup) pending_add(q, -1);
  if (err) {
    atomic_fetch_add(&q->n_rejected, 1);
    evx_free(id);
    return err;
  }
  atomic_fetch_add(dedup ? &q->n_dedup : &q->n_enqueued, 1);
  if (id_out)
    *id_out = id;
  else
    evx_free(id);
  return EVX_OK;
}

/* ---- leasing and running ------------------------------------------------------ */

static void poll_tick(void *arg) {
  evx_tasks *q = arg;
  q->poll_timer = NULL;
  pump(q);
}

static void arm_poll(evx_tasks *q) {
  if (q->poll_timer || atomic_load(&q->closing) || q->freeing) return;
  q->poll_timer = evx_call_later(q->loop, q->o.poll_ms, poll_tick, q);
}

/* How many delivered tasks may be in the executor at once. */
static size_t prefetch_limit(const evx_tasks *q) {
  size_t per;
  if (!q->avg_run_ns) {
    per = 8;
  } else {
    uint64_t budget_ns = (uint64_t)q->o.visibility_ms * 1000000ULL / 4;
    uint64_t n = budget_ns / q->avg_run_ns;
    per = n < 1 ? 1 : n > PREFETCH_MAX ? PREFETCH_MAX : (size_t)n;
  }
  size_t limit = per * q->o.workers;
  if (limit > PREFETCH_MAX) limit = PREFETCH_MAX;
  if (limit < q->o.workers) limit = q->o.workers;
  return limit;
}

static void pump(evx_tasks *q) {
  if (!q->started || !q->ex || atomic_load(&q->closing) || q->freeing || q->backend_shut) return;
  if (q->leasing) {
    q->want_lease = 1;
    return;
  }
  size_t limit = prefetch_limit(q);
  if (q->held >= limit) return;
  size_t room = limit - q->held;
  /* Lease in batches while the workers have enough to do. */
  if (q->held >= q->o.workers && room < limit / 4) return;
  if (q->poll_timer) {
    evx_timer_cancel(q->poll_timer);
    q->poll_timer = NULL;
  }
  q->want_lease = 0;
  q->leasing = 1;
  if (q->be->lease(q->bs, room, q->o.visibility_ms) != EVX_OK) {
    q->leasing = 0;
    arm_poll(q);
  }
}

void evx__tasks_ready(evx_tasks *q) { pump(q); }

static void task_free(evx_task *t) {
  if (!t) return;
  evx__task_rec_free(t->r);
  evx_free(t->err);
  evx_free(t);
}

static void task_work(void *arg) {
  evx_task *t = arg;
  evx_tasks *q = t->q;
  atomic_fetch_add(&q->n_running, 1);
  uint64_t t0 = evx_now_ns();
  if (t->fn) {
    t->result = (int)t->fn(t, t->arg);
  } else {
    t->result = EVX_TASK_RETRY;
    evx_task_set_error(t, "no handler registered for task \"%s\" in this process", t->r->name);
  }
  t->run_ns = evx_now_ns() - t0;
  atomic_fetch_sub(&q->n_running, 1);
}

static void task_settle(evx_tasks *q, evx_task *t, int released, evx_task_result res,
                        uint64_t delay_ms) {
  t->settled_as = res;
  q->settling++;
  int err = released ? q->be->release(q->bs, t->r) : q->be->settle(q->bs, t->r, res, delay_ms);
  if (err) {
    /* The lease stays with the store and expires: delivered again later. */
    q->settling--;
    fprintf(stderr, "evx_tasks %s: cannot %s task %s: %s (it will be delivered again)\n", q->queue,
            released ? "release" : "settle", t->r->id, evx_strerror(err));
    task_free(t);
    maybe_finish(q);
  }
}

static uint64_t retry_delay(evx_tasks *q, const evx__task_rec *r) {
  uint64_t d = r->backoff_ms ? r->backoff_ms : q->o.backoff_ms;
  unsigned shift = r->attempt > 1 ? r->attempt - 1 : 0;
  for (unsigned i = 0; i < shift && d < q->o.backoff_max_ms; i++) d *= 2;
  if (d > q->o.backoff_max_ms) d = q->o.backoff_max_ms;
  /* Equal jitter: somewhere in [d/2, d]. */
  uint64_t half = d / 2;
  return half + (half ? rng_next(q) % (half + 1) : 0);
}

static void record_run(evx_tasks *q, uint64_t ns) {
  q->st.run_ns_total += ns;
  if (ns > q->st.run_ns_max) q->st.run_ns_max = ns;
  uint64_t us = ns / 1000;
  size_t i = 0;
  while (i < 23 && us >= (1ULL << i)) i++;
  q->st.run_hist[i]++;
  q->avg_run_ns = q->avg_run_ns ? (q->avg_run_ns * 7 + (ns ? ns : 1)) / 8 : (ns ? ns : 1);
}

static void task_done(void *arg, int status) {
  evx_task *t = arg;
  evx_tasks *q = t->q;
  q->held--;
  if (status == EVX_ECANCELED) {
    /* Never ran (shutdown): give the lease back. */
    task_settle(q, t, 1, EVX_TASK_RETRY, 0);
    return;
  }
  record_run(q, t->run_ns);
  int res = t->result;
  if (res != EVX_TASK_DONE && res != EVX_TASK_RETRY && res != EVX_TASK_FAIL) {
    evx_task_set_error(t, "handler returned invalid result %d", res);
    fprintf(stderr, "evx_tasks %s: task %s (%s): handler returned invalid result %d; retrying\n",
            q->queue, t->r->id, t->r->name, res);
    res = EVX_TASK_RETRY;
  }
  uint64_t delay = 0;
  if (res == EVX_TASK_DONE) {
    q->st.completed++;
  } else if (res == EVX_TASK_RETRY && t->r->attempt < t->r->max_attempts) {
    q->st.retried++;
    delay = retry_delay(q, t->r);
  } else {
    if (res == EVX_TASK_RETRY) {
      char *why = t->err;
      t->err = NULL;
      evx_task_set_error(t, "gave up after %u attempt(s): %s", t->r->attempt,
                         why ? why : "handler asked for a retry");
      evx_free(why);
    }
    res = EVX_TASK_FAIL;
  }
  if (res != EVX_TASK_DONE) {
    evx_free(t->r->last_error);
    t->r->last_error = t->err ? evx_strdup(t->err) : NULL;
  }
  task_settle(q, t, 0, (evx_task_result)res, delay);
  pump(q);
}

void evx__tasks_leased(evx_tasks *q, evx__task_rec **recs, size_t n, int status) {
  q->leasing = 0;
  for (size_t i = 0; i < n; i++) {
    evx__task_rec *r = recs[i];
    evx_task *t = evx_calloc(1, sizeof *t);
    if (!t) {
      evx__task_rec_free(r); /* the lease expires: delivered again */
      continue;
    }
    t->q = q;
    t->r = r;
    r->owner = t;
    if (r->attempt > 1) q->st.redelivered++;
    if (q->freeing || atomic_load(&q->closing) || !q->ex) {
      task_settle(q, t, 1, EVX_TASK_RETRY, 0);
      continue;
    }
    handler *h = find_handler(q, r->name);
    if (h) {
      t->fn = h->fn;
      t->arg = h->arg;
    }
    if (evx_submit(q->ex, task_work, task_done, t) == EVX_OK) {
      q->held++;
    } else {
      task_settle(q, t, 1, EVX_TASK_RETRY, 0);
    }
  }
  if (status != EVX_OK) {
    fprintf(stderr, "evx_tasks %s: lease failed: %s\n", q->queue, evx_strerror(status));
    arm_poll(q);
  } else if (q->want_lease) {
    pump(q);
  } else if (n == 0) {
    arm_poll(q);
  } else {
    pump(q); /* there may be more ready */
    if (!q->leasing) arm_poll(q);
  }
  maybe_finish(q);
}

void evx__tasks_settled(evx_tasks *q, evx__task_rec *r, int status) {
  evx_task *t = r->owner;
  q->settling--;
  if (status == EVX_OK) {
    if (t->settled_as == EVX_TASK_FAIL) q->st.failed++;
    if (t->settled_as == EVX_TASK_DONE || t->settled_as == EVX_TASK_FAIL) pending_add(q, -1);
  } else if (status != EVX_EGONE) {
    fprintf(stderr, "evx_tasks %s: task %s: settle failed: %s (it will be delivered again)\n",
            q->queue, r->id, evx_strerror(status));
  }
  task_free(t);
  maybe_finish(q);
}

void evx__tasks_counted(evx_tasks *q, int status, uint64_t ready, uint64_t delayed,
                        uint64_t leased, uint64_t dead) {
  q->counting = 0;
  uint64_t every = (evx_now_ns() - q->count_started_ns) * 50 / 1000000;
  q->count_every_ms = every < COUNT_MIN_MS ? COUNT_MIN_MS : every > COUNT_MAX_MS ? COUNT_MAX_MS : every;
  if (status != EVX_OK) {
    maybe_finish(q);
    return;
  }
  q->st.counted_ms = (uint64_t)evx__tasks_wall_ms();
  q->st.ready = ready;
  q->st.delayed = delayed;
  q->st.leased = leased;
  q->st.dead = dead;
  atomic_store(&q->pending, (long long)(ready + delayed + leased + q->outbox_n + q->enq_inflight));
  if (ready && q->held < q->o.workers) pump(q);
  maybe_finish(q);
}

void evx__tasks_outbox_depth(evx_tasks *q, uint64_t n) {
  q->outbox_n = n;
  q->st.outbox = n;
  /* While Redis cannot be counted (down), the rows kept locally still count
   * against max_pending. */
  long long floor = (long long)(n + q->enq_inflight);
  if (atomic_load(&q->pending) < floor) atomic_store(&q->pending, floor);
}

/* ---- the handler's view ---------------------------------------------------------- */

const char *evx_task_id(const evx_task *t) { return t ? t->r->id : NULL; }
const char *evx_task_name(const evx_task *t) { return t ? t->r->name : NULL; }
const void *evx_task_payload(const evx_task *t, size_t *len) {
  if (len) *len = t ? t->r->len : 0;
  return t ? t->r->payload : NULL;
}
const char *evx_task_key(const evx_task *t) { return t ? t->r->key : NULL; }
unsigned evx_task_attempt(const evx_task *t) { return t ? t->r->attempt : 0; }
unsigned evx_task_max_attempts(const evx_task *t) { return t ? t->r->max_attempts : 0; }
int evx_task_cancelled(const evx_task *t) { return t ? atomic_load(&t->q->cancelled) : 0; }

void evx_task_set_error(evx_task *t, const char *fmt, ...) {
  if (!t || !fmt) return;
  if (!t->err) t->err = evx_malloc(ERROR_MAX);
  if (!t->err) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(t->err, ERROR_MAX, fmt, ap);
  va_end(ap);
}

/* ---- dead-letter store -------------------------------------------------------------- */

void evx_task_list_free(evx_task_list *l) {
  if (!l) return;
  for (size_t i = 0; i < l->n; i++) {
    evx_task_info *it = &l->items[i];
    evx_free(it->id);
    evx_free(it->name);
    evx_free(it->payload);
    evx_free(it->key);
    evx_free(it->last_error);
  }
  evx_free(l->items);
  evx_free(l);
}

enum { DEAD_LIST, DEAD_RETRY, DEAD_PURGE };

static evx_future *dead_op(evx_tasks *q, int op, size_t limit, const char *id) {
  if (!on_loop(q)) return NULL;
  evx_future *f = evx_future_new(q->loop);
  if (!f) return NULL;
  if (q->backend_shut || q->freeing) {
    evx_future_fail(f, EVX_ECLOSED);
    return f;
  }
  evx_future_ref(f); /* the backend's */
  int err = op == DEAD_LIST    ? q->be->dead_list(q->bs, limit ? limit : 100, f)
            : op == DEAD_RETRY ? q->be->dead_retry(q->bs, id, f)
                               : q->be->dead_purge(q->bs, id, f);
  if (err) {
    evx_future_release(f);
    evx_future_fail(f, err);
  }
  return f;
}

evx_future *evx_tasks_dead_list(evx_tasks *q, size_t limit) {
  return dead_op(q, DEAD_LIST, limit, NULL);
}
evx_future *evx_tasks_dead_retry(evx_tasks *q, const char *id) {
  return dead_op(q, DEAD_RETRY, 0, id);
}
evx_future *evx_tasks_dead_purge(evx_tasks *q, const char *id) {
  return dead_op(q, DEAD_PURGE, 0, id);
}

/* ---- metrics ---------------------------------------------------------------------------- */

int evx_tasks_stats_get_sized(evx_tasks *q, evx_tasks_stats *out, size_t out_size) {
  if (!on_loop(q) || !out || out_size < offsetof(evx_tasks_stats, outbox)) return EVX_EINVAL;
  evx_tasks_stats s = q->st;
  s.enqueued = atomic_load(&q->n_enqueued);
  s.rejected = atomic_load(&q->n_rejected);
  s.deduplicated = atomic_load(&q->n_dedup);
  s.running = atomic_load(&q->n_running);
  memcpy(out, &s, out_size < sizeof s ? out_size : sizeof s);
  return EVX_OK;
}

/* The first layout of evx_tasks_stats (what the plain evx_tasks_stats_get fills). */
int(evx_tasks_stats_get)(evx_tasks *q, evx_tasks_stats *out) {
  return evx_tasks_stats_get_sized(q, out, offsetof(evx_tasks_stats, outbox));
}

const char *evx_tasks_queue_name(const evx_tasks *q) { return q ? q->queue : NULL; }
evx_executor *evx_tasks_executor(evx_tasks *q) { return q ? q->ex : NULL; }

/* ---- shutdown and free -------------------------------------------------------------------- */

static void grace_tick(void *arg) {
  evx_tasks *q = arg;
  q->grace_timer = NULL;
  atomic_store(&q->cancelled, 1);
}

static void begin_close(evx_tasks *q, uint64_t grace_ms) {
  atomic_store(&q->closing, 1);
  if (q->poll_timer) {
    evx_timer_cancel(q->poll_timer);
    q->poll_timer = NULL;
  }
  /* Handlers not started come back ECANCELED and are released. */
  if (q->ex) evx_executor_shutdown(q->ex, EVX_SHUTDOWN_CANCEL);
  if (grace_ms == 0)
    atomic_store(&q->cancelled, 1);
  else if (!q->freeing)
    q->grace_timer = evx_call_later(q->loop, grace_ms, grace_tick, q);
  maybe_finish(q);
}

static void maybe_finish(evx_tasks *q) {
  if (!atomic_load(&q->closing) || q->backend_shut || q->freeing) return;
  if (q->leasing || q->counting || q->held || q->settling || q->enq_inflight) return;
  if (q->grace_timer) {
    evx_timer_cancel(q->grace_timer);
    q->grace_timer = NULL;
  }
  if (q->count_timer) {
    evx_timer_cancel(q->count_timer);
    q->count_timer = NULL;
  }
  q->backend_shut = 1;
  q->be->shutdown(q->bs);
}

void evx__tasks_backend_closed(evx_tasks *q) {
  q->backend_closed = 1;
  if (q->shutdown_f && !evx_future_is_done(q->shutdown_f))
    evx_future_resolve(q->shutdown_f, NULL, NULL);
}

evx_future *evx_tasks_shutdown(evx_tasks *q, uint64_t grace_ms) {
  if (!on_loop(q)) return NULL;
  if (q->shutdown_f) return evx_future_ref(q->shutdown_f);
  q->shutdown_f = evx_future_new(q->loop);
  if (!q->shutdown_f) return NULL;
  if (!atomic_load(&q->closing)) begin_close(q, grace_ms);
  if (q->backend_closed) evx_future_resolve(q->shutdown_f, NULL, NULL);
  return evx_future_ref(q->shutdown_f);
}

void evx_tasks_free(evx_tasks *q) {
  if (!q) return;
  evx__loop_member_remove(&q->member);
  if (!atomic_load(&q->closing)) begin_close(q, 0);
  atomic_store(&q->cancelled, 1);
  q->freeing = 1;
  /* Joins the workers; the owed task_done callbacks run here and hand their
   * settles and releases to the backend, which is still open. */
  evx_executor_free(q->ex);
  q->ex = NULL;
  evx_timer *timers[] = {q->poll_timer, q->count_timer, q->grace_timer};
  for (size_t i = 0; i < 3; i++)
    if (timers[i]) evx_timer_cancel(timers[i]);
  q->poll_timer = q->count_timer = q->grace_timer = NULL;
  /* Delivers every completion still owed, then nothing more. */
  q->be->free(q->bs);
  q->bs = NULL;
  if (q->shutdown_f) {
    if (!evx_future_is_done(q->shutdown_f)) evx_future_resolve(q->shutdown_f, NULL, NULL);
    evx_future_release(q->shutdown_f);
  }
  for (size_t i = 0; i < q->nhandlers; i++) evx_free(q->handlers[i].name);
  evx_free(q->handlers);
  pthread_mutex_destroy(&q->reg_mu);
  evx_free(q->queue);
  evx_free(q);
}
