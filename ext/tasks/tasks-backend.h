/* PRIVATE to evexec_tasks: never installed, never included by users.
 *
 * The seam between the common layer (ext/tasks/tasks.c: options, handler
 * registry, handler executor, lease scheduling, backoff, stats, enqueue
 * futures, backpressure) and a storage backend (ext/tasks/backend-sqlite.c,
 * ext/tasks/backend-redis.c). The shared test suite tests/tasks_suite.h runs
 * against every backend through the public API; a backend passes when it
 * passes that suite.
 *
 * THREADS. Every op except enqueue_sql is called on the loop thread and must
 * never block it (SQLite work goes to a writer thread; Redis is asynchronous
 * hiredis on the loop's event_base). Every completion is delivered on the
 * loop thread, in a later callback - never inside the op. An op that returns
 * an error calls no completion (and owns nothing it was given).
 *
 * ORDER. Completions are delivered in the order the backend applied the ops
 * to its store. The layer's backpressure count relies on it: it sets its
 * count of waiting tasks from evx__tasks_counted plus the enqueues it has not
 * seen completed, so a count taken after an enqueue was stored must not be
 * delivered before that enqueue's completion.
 *
 * OWNERSHIP. The layer allocates evx__task_enq and evx__task_rec; an op that
 * accepted one owns nothing - it hands the same pointer back in its
 * completion, and the layer frees it. Records delivered by lease() are
 * allocated by the backend with evx__task_rec_new (strings with evx_strdup,
 * payload with evx_malloc) and owned by the layer from the evx__tasks_leased
 * call on; the array passed to evx__tasks_leased is borrowed for the call.
 * The dead-letter ops get an evx_future holding one reference for the
 * backend: it settles the future (result types in tasks.h) and releases it.
 *
 * SHUTDOWN AND FREE. evx_tasks_shutdown calls shutdown() once the layer has
 * no op in flight except dead-letter ops: the backend finishes those and
 * calls evx__tasks_backend_closed(q) (in a later callback). evx_tasks_free
 * calls free(), which may block: it delivers every completion still owed
 * before it returns (the real outcome of an op that was applied, EVX_ECLOSED
 * for one that never will be - and then it must really never be applied),
 * then frees the state. Nothing may call into the layer after free returns.
 *
 * LEASES. A lease is a delivery: the task's attempt count is raised by one
 * and the task is invisible to other leases until now + visibility_ms. A
 * lease that is neither settled nor released in time expires: the task is
 * delivered again (with the attempt count raised again). A task whose lease
 * expired while attempt >= max_attempts is not delivered again: the backend
 * moves it to the dead-letter store with an error saying so. settle() and
 * release() carry r->lease, the proof of the lease: when the task has been
 * leased again meanwhile, they change nothing and complete with EVX_EGONE.
 *
 * BAD ROWS. A stored task the backend cannot turn into a valid record (no
 * name, empty payload, unparsable fields) is moved to the dead-letter store
 * by the backend with an error naming the problem, never delivered and never
 * dropped.
 */
#ifndef EVX_TASKS_BACKEND_H
#define EVX_TASKS_BACKEND_H

#include <evexec/tasks.h>

#include "evx-private.h" /* evx_calloc, evx_strdup, evx_now_ns, loop members */

/** One stored task, as the layer and a backend pass it around. Strings and
 *  payload are allocated with evx_malloc/evx_strdup; evx__task_rec_free
 *  frees them. */
typedef struct evx__task_rec {
  char *id;               /* backend's id: SQLite rowid in decimal, Redis stream entry id */
  char *name;
  void *payload;
  size_t len;
  char *key;              /* idempotency key or NULL */
  unsigned attempt;       /* deliveries so far, this one included (1 on the first) */
  unsigned max_attempts;
  uint32_t backoff_ms;
  int64_t enqueued_ms;    /* wall clock */
  char *lease;            /* backend's proof of this lease (SQLite: lease token;
                             Redis: consumer name), checked by settle/release so a
                             late answer for an expired lease changes nothing */
  char *last_error;       /* the previous delivery's error on lease (or NULL); set by
                             the layer before settle(RETRY/FAIL) */
  void *owner;            /* the layer's; backends leave it alone */
} evx__task_rec;

evx__task_rec *evx__task_rec_new(void);
/* Frees the strings and payload of r, not r itself. */
void evx__task_rec_clear(evx__task_rec *r);
void evx__task_rec_free(evx__task_rec *r);

/** One enqueue in flight. The layer filled rec.name, payload, len, key,
 *  max_attempts, backoff_ms and enqueued_ms; rec.id is NULL. */
typedef struct evx__task_enq {
  evx__task_rec rec;
  int64_t due_ms;         /* wall clock ms when it becomes ready (now + delay) */
  evx_future *f;          /* the caller's future; the layer settles it (NULL for enqueue_sql) */
  struct evx__task_enq *next; /* free for the backend's batching while it owns the op */
  void *backend;          /* free for the backend while it owns the op */
} evx__task_enq;

typedef struct evx__tasks_backend {
  const char *name; /* for messages; tasks.c maps URL schemes (up to the first ':') to backends */
  /* Blocking allowed (start-up). *state receives the backend's state.
   * opts has the defaults filled in. EVX_EINVAL for a malformed URL, EVX_EIO
   * when the store cannot be opened (say why in *errmsg, evx_strdup'ed). */
  int (*open)(evx_tasks *q, const char *url, const evx_tasks_opts *opts, void **state,
              char **errmsg);
  /* Store e durably (the layer already checked name, sizes, max_pending).
   * Completion: evx__tasks_enqueued(q, e, status, id, dedup): EVX_OK with the
   * new id, or with dedup = 1 and the id of the task that already has
   * e->rec.key; or an error (EVX_EIO: the store failed; nothing stored).
   * Backends batch the enqueues of one loop iteration (one transaction /
   * one pipeline). */
  int (*enqueue)(void *state, evx__task_enq *e);
  /* Synchronous, on the caller's worker thread inside its transaction on
   * `conn` (SQLite backend with opts->db). *id_out receives the id (evx_strdup), *dedup 1 when the key
   * was already used. EVX_EINVAL when conn is not the queue's database.
   * Thread-safe against the loop thread's ops. NULL if unsupported (then
   * evx_tasks_enqueue_sql answers EVX_EINVAL). The backend calls
   * evx__tasks_ready (from the loop thread, after the transaction can have
   * committed) so that local workers pick the task up without waiting for a poll. */
  int (*enqueue_sql)(void *state, struct sqlite3 *conn, evx__task_enq *e, char **id_out,
                     int *dedup);
  /* Lease up to max ready and due tasks (and tasks whose lease expired) for
   * visibility_ms, oldest due first. Completion: evx__tasks_leased(q, recs,
   * n, status); n may be 0. */
  int (*lease)(void *state, size_t max, uint32_t visibility_ms);
  /* Finish a lease: DONE -> remove (ack); RETRY -> ready again at
   * now + retry_delay_ms with r->attempt kept and r->last_error stored (the
   * layer turns a RETRY with attempt >= max_attempts into FAIL); FAIL ->
   * dead-letter with r->last_error. Completion: evx__tasks_settled(q, r,
   * status): EVX_OK, EVX_EGONE (the lease had expired and the task was
   * leased again: nothing changed), or EVX_EIO/EVX_ECLOSED (nothing changed:
   * the lease will expire and the task be delivered again). */
  int (*settle)(void *state, evx__task_rec *r, evx_task_result res, uint64_t retry_delay_ms);
  /* Give a lease back at once (shutdown, or a leased task no handler will
   * run now): ready now, this delivery not counted (attempt - 1 stored).
   * Completion: evx__tasks_settled, statuses as settle. */
  int (*release)(void *state, evx__task_rec *r);
  /* Count the whole queue (not only this process's tasks). Completion:
   * evx__tasks_counted. ready includes
   * tasks whose lease expired; delayed are waiting for their due time
   * (delay or backoff); leased are under a live lease. */
  int (*counts)(void *state);
  /* Dead-letter operations: the backend settles f itself (see tasks.h for
   * the result types) and releases its reference. */
  int (*dead_list)(void *state, size_t limit, evx_future *f);
  int (*dead_retry)(void *state, const char *id, evx_future *f);
  int (*dead_purge)(void *state, const char *id, evx_future *f);
  /* See SHUTDOWN AND FREE above. */
  void (*shutdown)(void *state);
  void (*free)(void *state);
} evx__tasks_backend;

/* Completions, loop thread. */
void evx__tasks_enqueued(evx_tasks *q, evx__task_enq *e, int status, const char *id, int dedup);
void evx__tasks_leased(evx_tasks *q, evx__task_rec **recs, size_t n, int status);
void evx__tasks_settled(evx_tasks *q, evx__task_rec *r, int status);
/* status EVX_OK with the counts, or an error (the counts are then ignored). */
void evx__tasks_counted(evx_tasks *q, int status, uint64_t ready, uint64_t delayed,
                        uint64_t leased, uint64_t dead);
void evx__tasks_backend_closed(evx_tasks *q);
/* Hint, loop thread: tasks may be ready now (a task was added by another
 * path than enqueue, e.g. enqueue_sql or another process); lease if there is room. */
void evx__tasks_ready(evx_tasks *q);

/* The backend's view of the queue (any thread; constant after open). */
evx_loop *evx__tasks_loop(evx_tasks *q);
const evx_tasks_opts *evx__tasks_opts(evx_tasks *q); /* defaults filled in; queue never NULL */
/* Wall clock in ms since the epoch (CLOCK_REALTIME): due times and leases. */
int64_t evx__tasks_wall_ms(void);
/* 1 when s is a valid task name (1..128 bytes of [A-Za-z0-9_.:-]). */
int evx__tasks_name_ok(const char *s, size_t len);

extern const evx__tasks_backend evx__tasks_backend_sqlite;
#ifdef EVX_TASKS_HAVE_REDIS
extern const evx__tasks_backend evx__tasks_backend_redis; /* "redis" and "unix" URLs */
#endif

#endif /* EVX_TASKS_BACKEND_H */
