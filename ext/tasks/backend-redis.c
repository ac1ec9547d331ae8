/* The Redis Streams backend of ext/tasks ("redis://HOST:PORT/DB", "unix:/PATH?db=N").
 *
 * DESIGN
 * One stream per queue with one consumer group ("evx"); every process that
 * runs handlers is a consumer named HOST-PID-RANDOM. The data layout and the
 * scripts are in backend-redis-lua.h. In short:
 *  - enqueue: XADD (plain tasks) or the ENQUEUE script (a delay: the delayed
 *    sorted set; an idempotency key: SET NX EX 7 days in the same script).
 *    The enqueues of one loop iteration leave in one write (hiredis buffers
 *    them until the socket is writable): one round trip for the batch.
 *  - lease: the LEASE script moves due delayed tasks onto the stream, takes
 *    over leases idle longer than the visibility timeout (XAUTOCLAIM; the
 *    consumer died or hung), dead-letters the ones that used their last
 *    attempt, and reads new entries without blocking. When it finds nothing,
 *    one XREADGROUP BLOCK poll_ms waits for new entries on a second
 *    connection of its own, so a new task starts at once and the main
 *    connection is never held. The loop never blocks: both are asynchronous.
 *  - settle/release: the SETTLE script, which changes nothing unless the
 *    entry is still leased by this consumer with the same delivery count (the
 *    lease proof in rec->lease is "ENTRY-ID/DELIVERIES").
 *  - counts: XLEN, XPENDING, ZCARD, XLEN of the dead stream, pipelined.
 *  - Redis down: every op answers EVX_EIO at once (the layer fails the
 *    enqueue future with it); the connections reconnect with backoff.
 *  - Malformed entries (no name or payload, a bad name, non-numeric
 *    counters - e.g. written by hand) are dead-lettered with the reason as
 *    their error, never handed to the layer.
 * Every op that was accepted owes exactly one completion; st->owed counts
 * them so shutdown can report closed once the last one came back.
 */
#include "tasks-backend.h"

#include "backend-redis-lua.h"
#include "redis-internal.h"

#include <evexec/evexec.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { S_ENQUEUE, S_LEASE, S_SETTLE, S_DEAD_RETRY, S_DEAD_PURGE, S_BYE, S_COUNT };

static const char *const scripts[] = {EVX__LUA_ENQUEUE, EVX__LUA_LEASE, EVX__LUA_SETTLE,
                                      EVX__LUA_DEAD_RETRY, EVX__LUA_DEAD_PURGE, EVX__LUA_BYE,
                                      NULL};

#define GROUP "evx"
#define KEY_TTL_S "604800" /* idempotency keys: 7 days */

typedef struct rstate {
  evx_tasks *q;
  evx_loop *loop;
  const evx_tasks_opts *o;
  evx__redis *main;  /* every command but the blocking read */
  evx__redis *block; /* XREADGROUP BLOCK only */
  char k_stream[300], k_delayed[300], k_dead[300], k_idx[300], k_seq[300], k_dprefix[300],
      k_kprefix[300];
  char consumer[200];
  char cursor[64]; /* XAUTOCLAIM cursor */
  size_t owed;     /* completions owed to the layer */
  size_t internal; /* our own commands in flight (group creation, burials, bye) */
  int closing;     /* 1: shutdown called; 2: its work was done (closed may be reported) */
  int closed;      /* evx__tasks_backend_closed called (or scheduled) */
  int freeing;     /* free runs: owed completions are delivered, then nothing */
  int freed;       /* every completion was delivered: callbacks only clean up */
  evx_timer *closed_timer;
  evx_timer *shutdown_timer;
  size_t lease_max;
  uint64_t last_claim_ns; /* last lease that looked for expired leases */
  uint32_t lease_vis;
  uint64_t malformed; /* entries dead-lettered as malformed */
} rstate;

static int64_t wall_ms(void) { return evx__tasks_wall_ms(); }

static void maybe_closed(rstate *st);

/* ---- replies ---------------------------------------------------------------- */

static const redisReply *elem(const redisReply *r, size_t i) {
  return r && r->type == REDIS_REPLY_ARRAY && i < r->elements ? r->element[i] : NULL;
}

static int is_str(const redisReply *r) {
  return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

static int reply_error(const rstate *st, const redisReply *rep, const char *what) {
  if (!rep) return st->freeing ? EVX_ECLOSED : EVX_EIO; /* connection lost, or free */
  if (rep->type == REDIS_REPLY_ERROR) {
    fprintf(stderr, "evexec tasks %s: %s failed: %s\n", st->o->queue, what, rep->str);
    return EVX_EIO;
  }
  return EVX_OK;
}

static char *dupn(const char *s, size_t n) {
  char *p = evx_malloc(n + 1);
  if (p) {
    memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}

static int parse_u64(const char *s, size_t n, uint64_t *out) {
  if (n == 0 || n > 19) return -1;
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  *out = v;
  return 0;
}


/* The fields of an entry, as found. */
typedef struct fields {
  const redisReply *n, *p, *k, *m, *b, *t, *i, *a, *e;
} fields;

static void get_fields(const redisReply *kv, fields *f) {
  memset(f, 0, sizeof *f);
  if (!kv || kv->type != REDIS_REPLY_ARRAY) return;
  for (size_t j = 0; j + 1 < kv->elements; j += 2) {
    const redisReply *k = kv->element[j], *v = kv->element[j + 1];
    if (!is_str(k) || !is_str(v) || k->len != 1) continue;
    switch (k->str[0]) {
    case 'n': f->n = v; break;
    case 'p': f->p = v; break;
    case 'k': f->k = v; break;
    case 'm': f->m = v; break;
    case 'b': f->b = v; break;
    case 't': f->t = v; break;
    case 'i': f->i = v; break;
    case 'a': f->a = v; break;
    case 'e': f->e = v; break;
    default: break;
    }
  }
}

static int num_field(const redisReply *v, uint64_t *out, uint64_t dflt) {
  if (!v) {
    *out = dflt;
    return 0;
  }
  return parse_u64(v->str, v->len, out);
}

/* ---- internal commands (no completion owed to the layer) ------------------- */

static void internal_reply(evx__redis *r, redisReply *rep, void *arg) {
  (void)r;
  rstate *st = arg;
  if (st->freed) return;
  st->internal--;
  if (rep && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "BUSYGROUP", 9) != 0)
    fprintf(stderr, "evexec tasks %s: %s\n", st->o->queue, rep->str);
  maybe_closed(st);
}

static void internal_cmd(rstate *st, int argc, const char **argv, const size_t *lens) {
  if (evx__redis_cmd(st->main, internal_reply, st, argc, argv, lens) == EVX_OK) st->internal++;
}

static void create_group(rstate *st) {
  const char *argv[] = {"XGROUP", "CREATE", st->k_stream, GROUP, "0", "MKSTREAM"};
  internal_cmd(st, 6, argv, NULL);
}

static void on_main_state(evx__redis *r, int up, void *arg) {
  (void)r;
  rstate *st = arg;
  if (up && !st->freed) create_group(st); /* the first command on every new connection */
}

/* Dead-letter a malformed entry we hold the lease of (SETTLE fail). */
static void bury_malformed(rstate *st, const char *entry, size_t entry_len, uint64_t dl,
                           const char *why) {
  char dls[24], now[24], err[300];
  snprintf(dls, sizeof dls, "%llu", (unsigned long long)dl);
  snprintf(now, sizeof now, "%lld", (long long)wall_ms());
  snprintf(err, sizeof err, "malformed stream entry: %s", why);
  fprintf(stderr, "evexec tasks %s: entry %.*s dead-lettered: %s\n", st->o->queue,
          (int)entry_len, entry, err);
  const char *argv[] = {"EVALSHA", evx__redis_script_sha(st->main, S_SETTLE), "4", st->k_stream,
                        st->k_delayed, st->k_dead, st->k_idx, GROUP, "fail", entry,
                        st->consumer, dls, dls, err, "0", now, st->k_dprefix};
  size_t lens[sizeof argv / sizeof argv[0]];
  for (size_t i = 0; i < sizeof argv / sizeof argv[0]; i++) lens[i] = strlen(argv[i]);
  lens[9] = entry_len;
  st->malformed++;
  if (argv[1]) internal_cmd(st, (int)(sizeof argv / sizeof argv[0]), argv, lens);
}

/* One delivered entry -> a record, or NULL (malformed: dead-lettered; or no memory). */
static evx__task_rec *entry_rec(rstate *st, const redisReply *id, uint64_t dl, const redisReply *kv) {
  fields f;
  get_fields(kv, &f);
  uint64_t a, m, b, t;
  const char *why = NULL;
  if (!f.n) why = "no task name (field n)";
  else if (!evx__tasks_name_ok(f.n->str, f.n->len)) why = "bad task name (field n)";
  else if (!f.p || f.p->len == 0) why = "no payload (field p)";
  else if (num_field(f.a, &a, 0) || num_field(f.m, &m, st->o->max_attempts) ||
           num_field(f.b, &b, st->o->backoff_ms) || num_field(f.t, &t, 0) || a > 1000000 ||
           m > 1000000 || b > UINT32_MAX)
    why = "a counter (field a, m, b or t) is not a number";
  if (why) {
    bury_malformed(st, id->str, id->len, dl, why);
    return NULL;
  }
  evx__task_rec *r = evx__task_rec_new();
  if (!r) return NULL;
  char lease[96];
  snprintf(lease, sizeof lease, "%.*s/%llu", (int)(id->len < 64 ? id->len : 64), id->str,
           (unsigned long long)dl);
  r->id = f.i ? dupn(f.i->str, f.i->len) : dupn(id->str, id->len);
  r->name = dupn(f.n->str, f.n->len);
  r->payload = evx_malloc(f.p->len ? f.p->len : 1);
  if (r->payload) memcpy(r->payload, f.p->str, f.p->len);
  r->len = f.p->len;
  r->key = f.k ? dupn(f.k->str, f.k->len) : NULL;
  r->attempt = (unsigned)(a + dl);
  r->max_attempts = m ? (unsigned)m : st->o->max_attempts;
  r->backoff_ms = (uint32_t)b;
  r->enqueued_ms = (int64_t)t;
  r->lease = evx_strdup(lease);
  r->last_error = f.e ? dupn(f.e->str, f.e->len) : NULL;
  if (!r->id || !r->name || !r->payload || (f.k && !r->key) || !r->lease ||
      (f.e && !r->last_error)) {
    evx__task_rec_free(r);
    return NULL; /* no memory: the lease expires and the task comes back */
  }
  return r;
}

/* ---- enqueue ---------------------------------------------------------------- */

static void enqueue_reply(evx__redis *r, redisReply *rep, void *arg) {
  (void)r;
  evx__task_enq *e = arg;
  rstate *st = e->backend; /* the backend's slot while it owns e */
  if (st->freed) return;
  st->owed--;
  e->backend = NULL;
  int rc = reply_error(st, rep, "enqueue");
  if (rc == EVX_OK && is_str(rep)) {
    evx__tasks_enqueued(st->q, e, EVX_OK, rep->str, 0);
  } else if (rc == EVX_OK && is_str(elem(rep, 0)) && elem(rep, 1) &&
             elem(rep, 1)->type == REDIS_REPLY_INTEGER) {
    evx__tasks_enqueued(st->q, e, EVX_OK, elem(rep, 0)->str, (int)elem(rep, 1)->integer);
  } else {
    evx__tasks_enqueued(st->q, e, EVX_EIO, NULL, 0);
  }
  maybe_closed(st);
}

static int r_enqueue(void *state, evx__task_enq *e) {
  rstate *st = state;
  if (st->closing) return EVX_ECLOSED;
  if (!evx__redis_ready(st->main)) return EVX_EIO;
  const evx__task_rec *t = &e->rec;
  char m[16], b[16], ts[24], due[24], now[24], kk[512];
  snprintf(m, sizeof m, "%u", t->max_attempts);
  snprintf(b, sizeof b, "%u", (unsigned)t->backoff_ms);
  snprintf(ts, sizeof ts, "%lld", (long long)t->enqueued_ms);
  int64_t now_ms = wall_ms();
  snprintf(due, sizeof due, "%lld", (long long)e->due_ms);
  snprintf(now, sizeof now, "%lld", (long long)now_ms);
  const char *argv[24];
  size_t lens[24];
  int n = 0;
  int script = t->key || e->due_ms > now_ms;
#define ARG(s, l) (argv[n] = (s), lens[n] = (l), n++)
#define ARGS(s) ARG(s, strlen(s))
  if (script) {
    const char *sha = evx__redis_script_sha(st->main, S_ENQUEUE);
    if (!sha) return EVX_EIO;
    if (t->key) snprintf(kk, sizeof kk, "%s%s", st->k_kprefix, t->key);
    ARGS("EVALSHA");
    ARGS(sha);
    ARGS("4");
    ARGS(st->k_stream);
    ARGS(st->k_delayed);
    ARGS(t->key ? kk : "");
    ARGS(st->k_seq);
    ARGS(due);
    ARGS(now);
    ARGS(st->k_dprefix);
    ARGS(KEY_TTL_S);
  } else {
    ARGS("XADD");
    ARGS(st->k_stream);
    ARGS("*");
  }
  ARGS("n");
  ARGS(t->name);
  ARGS("p");
  ARG((const char *)t->payload, t->len);
  if (t->key) {
    ARGS("k");
    ARGS(t->key);
  }
  ARGS("m");
  ARGS(m);
  ARGS("b");
  ARGS(b);
  ARGS("t");
  ARGS(ts);
#undef ARG
#undef ARGS
  e->backend = st;
  int rc = evx__redis_cmd(st->main, enqueue_reply, e, n, argv, lens);
  if (rc != EVX_OK) {
    e->backend = NULL;
    return rc;
  }
  st->owed++;
  return EVX_OK;
}

/* ---- lease ------------------------------------------------------------------ */

static void block_reply(evx__redis *r, redisReply *rep, void *arg);

/* Records of the entries in `list` ([[id, fields]...] with deliveries dl, or
 * [[id, dl, fields]...] when dl == 0), handed to the layer. */
static void deliver(rstate *st, const redisReply *list, int with_dl) {
  size_t n = list && list->type == REDIS_REPLY_ARRAY ? list->elements : 0;
  evx__task_rec **recs = n ? evx_calloc(n, sizeof *recs) : NULL;
  size_t got = 0;
  for (size_t i = 0; recs && i < n; i++) {
    const redisReply *e = list->element[i];
    const redisReply *id = elem(e, 0);
    uint64_t dl = 1;
    const redisReply *kv = elem(e, 1);
    if (with_dl) {
      const redisReply *d = elem(e, 1);
      dl = d && d->type == REDIS_REPLY_INTEGER && d->integer > 0 ? (uint64_t)d->integer : 1;
      kv = elem(e, 2);
    }
    if (!is_str(id)) continue;
    evx__task_rec *rec = entry_rec(st, id, dl, kv);
    if (rec) recs[got++] = rec;
  }
  evx__tasks_leased(st->q, recs, got, EVX_OK);
  evx_free(recs);
}

static void lease_reply(evx__redis *r, redisReply *rep, void *arg) {
  (void)r;
  rstate *st = arg;
  if (st->freed) return;
  int rc = reply_error(st, rep, "lease");
  if (rc == EVX_OK && rep->type == REDIS_REPLY_ERROR) rc = EVX_EIO;
  if (rep && rep->type == REDIS_REPLY_ERROR && strstr(rep->str, "NOGROUP")) create_group(st);
  const redisReply *cur = elem(rep, 0), *list = elem(rep, 1);
  if (rc != EVX_OK || !is_str(cur) || !list) {
    st->owed--;
    evx__tasks_leased(st->q, NULL, 0, EVX_EIO);
    maybe_closed(st);
    return;
  }
  snprintf(st->cursor, sizeof st->cursor, "%s", cur->str);
  if (list->elements == 0 && !st->closing && evx__redis_ready(st->block)) {
    /* nothing now: wait for new entries on the blocking connection */
    char count[24], ms[24];
    snprintf(count, sizeof count, "%zu", st->lease_max);
    snprintf(ms, sizeof ms, "%u", st->o->poll_ms ? st->o->poll_ms : 200);
    const char *argv[] = {"XREADGROUP", "GROUP", GROUP, st->consumer, "COUNT", count,
                          "BLOCK", ms, "STREAMS", st->k_stream, ">"};
    if (evx__redis_cmd(st->block, block_reply, st, 11, argv, NULL) == EVX_OK) return;
  }
  st->owed--;
  deliver(st, list, 1);
  maybe_closed(st);
}

static void block_reply(evx__redis *r, redisReply *rep, void *arg) {
  (void)r;
  rstate *st = arg;
  if (st->freed) return;
  st->owed--;
  if (rep && rep->type == REDIS_REPLY_ERROR) {
    reply_error(st, rep, "blocking read");
    if (strstr(rep->str, "NOGROUP")) create_group(st);
    evx__tasks_leased(st->q, NULL, 0, EVX_EIO);
  } else if (!rep) {
    evx__tasks_leased(st->q, NULL, 0, st->closing || st->freeing ? EVX_ECLOSED : EVX_EIO);
  } else {
    /* [[stream, [[id, fields]...]]] or nil after BLOCK ms */
    deliver(st, elem(elem(rep, 0), 1), 0);
  }
  maybe_closed(st);
}

static int r_lease(void *state, size_t max, uint32_t visibility_ms) {
  rstate *st = state;
  if (st->closing) return EVX_ECLOSED;
  const char *sha = evx__redis_script_sha(st->main, S_LEASE);
  if (!evx__redis_ready(st->main) || !sha) return EVX_EIO;
  if (max == 0) max = 1;
  st->lease_max = max;
  st->lease_vis = visibility_ms;
  /* look for expired leases at most every visibility/4 (at least 20 ms):
   * the PEL scan costs Redis far more than the read */
  uint64_t now_ns = evx_now_ns();
  uint64_t every = (uint64_t)(visibility_ms / 4 < 20 ? 20 : visibility_ms / 4) * 1000000u;
  const char *claim = "0";
  if (now_ns - st->last_claim_ns >= every) {
    claim = "1";
    st->last_claim_ns = now_ns;
  }
  char count[24], vis[24], now[24];
  snprintf(count, sizeof count, "%zu", max);
  snprintf(vis, sizeof vis, "%u", (unsigned)visibility_ms);
  snprintf(now, sizeof now, "%lld", (long long)wall_ms());
  const char *argv[] = {"EVALSHA", sha, "4", st->k_stream, st->k_delayed, st->k_dead, st->k_idx,
                        GROUP, st->consumer, count, vis, now, st->k_dprefix, st->cursor, claim};
  int rc = evx__redis_cmd(st->main, lease_reply, st, (int)(sizeof argv / sizeof argv[0]), argv,
                          NULL);
  if (rc == EVX_OK) st->owed++;
  return rc;
}

/* ---- settle / release --------------------------------------------------------- */

typedef struct settle_op {
  rstate *st;
  evx__task_rec *r;
  int acked;  /* DONE: the XACK reply (1: it was leased; 0: not any more) */
  int orphan; /* DONE whose XDEL could not be queued: the XACK callback frees it */
} settle_op;

/* DONE: the XACK reply; the XDEL reply that follows completes the op. */
static void ack_reply(evx__redis *r, redisReply *rep, void *arg) {
  (void)r;
  settle_op *op = arg;
  op->acked = rep && rep->type == REDIS_REPLY_INTEGER ? (int)rep->integer : -1;
  if (op->orphan) evx_free(op);
}

static void settle_reply(evx__redis *r, redisReply *rep, void *arg) {
  (void)r;
  settle_op *op = arg;
  rstate *st = op->st;
  evx__task_rec *rec = op->r;
  int acked = op->acked;
  evx_free(op);
  if (st->freed) return;
  st->owed--;
  int rc = reply_error(st, rep, "settle");
  if (rc == EVX_OK && rep->type != REDIS_REPLY_INTEGER) rc = EVX_EIO;
  if (rc == EVX_OK && acked == -1) rc = EVX_EIO; /* DONE: the XACK failed */
  /* 0: the lease was no longer ours (expired and taken over): nothing changed */
  if (rc == EVX_OK && (acked == 0 || rep->integer == 0)) rc = EVX_EGONE;
  evx__tasks_settled(st->q, rec, rc);
  maybe_closed(st);
}

static int settle_cmd(rstate *st, evx__task_rec *r, const char *mode, uint64_t delay_ms) {
  if (!r || !r->lease) return EVX_EINVAL;
  const char *sha = evx__redis_script_sha(st->main, S_SETTLE);
  if (!evx__redis_ready(st->main) || !sha) return EVX_EIO;
  const char *slash = strrchr(r->lease, '/');
  if (!slash) return EVX_EINVAL;
  char entry[72], att[24], due[24], now[24];
  size_t elen = (size_t)(slash - r->lease);
  if (elen >= sizeof entry) return EVX_EINVAL;
  memcpy(entry, r->lease, elen);
  entry[elen] = '\0';
  int64_t now_ms = wall_ms();
  snprintf(att, sizeof att, "%u", r->attempt);
  snprintf(due, sizeof due, "%lld", (long long)(now_ms + (int64_t)delay_ms));
  snprintf(now, sizeof now, "%lld", (long long)now_ms);
  settle_op *op = evx_malloc(sizeof *op);
  if (!op) return EVX_ENOMEM;
  *op = (settle_op){st, r, 1, 0};
  if (strcmp(mode, "done") == 0) {
    /* DONE is the common case: XACK + XDEL (no script; pipelined with the
     * other settles of this iteration). XACK answers 0 when the entry is not
     * leased any more (its lease expired and another consumer finished or
     * retried it): nothing is deleted then but an id nobody holds. A late
     * DONE for a lease another consumer took over acks that lease: the task
     * did complete, and the other consumer's answer finds it gone. */
    const char *ack[] = {"XACK", st->k_stream, GROUP, entry};
    const char *del[] = {"XDEL", st->k_stream, entry};
    if (evx__redis_cmd(st->main, ack_reply, op, 4, ack, NULL) != EVX_OK) {
      evx_free(op);
      return EVX_EIO;
    }
    /* queued right after the XACK on the same connection: only no memory
     * fails it; the XACK may still apply (the task did complete) */
    if (evx__redis_cmd(st->main, settle_reply, op, 3, del, NULL) != EVX_OK) {
      op->orphan = 1;
      return EVX_EIO;
    }
    st->owed++;
    return EVX_OK;
  }
  const char *argv[] = {"EVALSHA", sha, "4", st->k_stream, st->k_delayed, st->k_dead, st->k_idx,
                        GROUP, mode, entry, st->consumer, slash + 1, att,
                        r->last_error ? r->last_error : "", due, now, st->k_dprefix};
  int rc = evx__redis_cmd(st->main, settle_reply, op, (int)(sizeof argv / sizeof argv[0]), argv,
                          NULL);
  if (rc != EVX_OK) {
    evx_free(op);
    return rc;
  }
  st->owed++;
  return EVX_OK;
}

static int r_settle(void *state, evx__task_rec *r, evx_task_result res, uint64_t retry_delay_ms) {
  const char *mode = res == EVX_TASK_DONE ? "done" : res == EVX_TASK_FAIL ? "fail" : "retry";
  return settle_cmd(state, r, mode, retry_delay_ms);
}

static int r_release(void *state, evx__task_rec *r) { return settle_cmd(state, r, "release", 0); }

/* ---- counts ------------------------------------------------------------------ */

typedef struct count_op {
  rstate *st;
  int left, failed;
  uint64_t v[4]; /* xlen, pending, delayed, dead */
} count_op;

static void count_reply(evx__redis *r, redisReply *rep, void *arg);

typedef struct count_part {
  count_op *op;
  int i;
} count_part;

static void count_reply(evx__redis *r, redisReply *rep, void *arg) {
  (void)r;
  count_part *part = arg;
  count_op *op = part->op;
  int i = part->i;
  evx_free(part);
  if (!rep || rep->type == REDIS_REPLY_ERROR) op->failed = 1;
  else if (rep->type == REDIS_REPLY_INTEGER) op->v[i] = (uint64_t)(rep->integer < 0 ? 0 : rep->integer);
  else if (i == 1 && elem(rep, 0) && elem(rep, 0)->type == REDIS_REPLY_INTEGER)
    op->v[i] = (uint64_t)elem(rep, 0)->integer; /* XPENDING summary: [count, min, max, consumers] */
  if (--op->left) return;
  rstate *st = op->st;
  if (!st->freed) {
    st->owed--;
    if (!op->failed) {
      uint64_t leased = op->v[1], xlen = op->v[0];
      evx__tasks_counted(st->q, EVX_OK, xlen > leased ? xlen - leased : 0, op->v[2], leased,
                         op->v[3]);
    } else {
      evx__tasks_counted(st->q, EVX_EIO, 0, 0, 0, 0);
    }
    maybe_closed(st);
  }
  evx_free(op);
}

static int r_counts(void *state) {
  rstate *st = state;
  if (!evx__redis_ready(st->main)) return EVX_EIO;
  count_op *op = evx_calloc(1, sizeof *op);
  if (!op) return EVX_ENOMEM;
  op->st = st;
  const char *c0[] = {"XLEN", st->k_stream};
  const char *c1[] = {"XPENDING", st->k_stream, GROUP};
  const char *c2[] = {"ZCARD", st->k_delayed};
  const char *c3[] = {"XLEN", st->k_dead};
  const char **cmds[] = {c0, c1, c2, c3};
  int argcs[] = {2, 3, 2, 2};
  for (int i = 0; i < 4; i++) {
    count_part *part = evx_malloc(sizeof *part);
    int rc = part ? EVX_OK : EVX_ENOMEM;
    if (part) {
      *part = (count_part){op, i};
      rc = evx__redis_cmd(st->main, count_reply, part, argcs[i], cmds[i], NULL);
      if (rc != EVX_OK) evx_free(part);
    }
    if (rc != EVX_OK) {
      if (i == 0) {
        evx_free(op);
        return rc;
      }
      op->failed = 1; /* the parts sent complete the op */
      break;
    }
    op->left++;
  }
  st->owed++;
  return EVX_OK;
}

/* ---- dead-letter store --------------------------------------------------------- */

typedef struct dead_op {
  rstate *st;
  evx_future *f;
  char *id;       /* dead_retry of every task: NULL, and repeat while batches are full */
  uint64_t total;
  int script;
} dead_op;

static void free_u64(void *p) { evx_free(p); }
static void free_list(void *p) { evx_task_list_free(p); }

static void dead_done(dead_op *op, int rc) {
  rstate *st = op->st;
  if (rc == EVX_OK) {
    uint64_t *n = evx_malloc(sizeof *n);
    if (n) {
      *n = op->total;
      if (evx_future_resolve(op->f, n, free_u64) != EVX_OK) evx_free(n);
    } else {
      evx_future_fail(op->f, EVX_ENOMEM);
    }
  } else {
    evx_future_fail(op->f, rc);
  }
  evx_future_release(op->f);
  evx_free(op->id);
  evx_free(op);
  st->owed--;
  maybe_closed(st);
}

static int dead_send(dead_op *op);

static void dead_count_reply(evx__redis *r, redisReply *rep, void *arg) {
  (void)r;
  dead_op *op = arg;
  if (op->st->freed) {
    evx_future_release(op->f);
    evx_free(op->id);
    evx_free(op);
    return;
  }
  int rc = reply_error(op->st, rep, "dead-letter operation");
  if (rc == EVX_OK && rep->type != REDIS_REPLY_INTEGER) rc = EVX_EIO;
  if (rc == EVX_OK) {
    op->total += (uint64_t)rep->integer;
    /* retry of every dead task goes 1000 per script run (Redis is not held long) */
    if (op->script == S_DEAD_RETRY && !op->id && rep->integer == 1000 && dead_send(op) == EVX_OK)
      return;
  }
  dead_done(op, rc);
}

static int dead_send(dead_op *op) {
  rstate *st = op->st;
  const char *sha = evx__redis_script_sha(st->main, (size_t)op->script);
  if (!evx__redis_ready(st->main) || !sha) return EVX_EIO;
  const char *id = op->id ? op->id : "";
  if (op->script == S_DEAD_RETRY) {
    const char *argv[] = {"EVALSHA", sha, "3", st->k_stream, st->k_dead, st->k_idx, id};
    return evx__redis_cmd(st->main, dead_count_reply, op, 7, argv, NULL);
  }
  const char *argv[] = {"EVALSHA", sha, "2", st->k_dead, st->k_idx, id};
  return evx__redis_cmd(st->main, dead_count_reply, op, 6, argv, NULL);
}

/* Looks like a task id of this backend: a stream entry id "MS-SEQ", "dN"
 * (a task enqueued with a delay), or digits; anything else is EVX_EINVAL. */
static int id_ok(const char *id) {
  const char *p = id;
  if (*p == 'd') p++;
  if (*p < '0' || *p > '9') return 0;
  while (*p >= '0' && *p <= '9') p++;
  if (*p == '-' && id[0] != 'd') {
    p++;
    if (*p < '0' || *p > '9') return 0;
    while (*p >= '0' && *p <= '9') p++;
  }
  return *p == '\0' && p - id < 48;
}

static int dead_start(rstate *st, int script, const char *id, evx_future *f) {
  if (id && !id_ok(id)) return EVX_EINVAL;
  if (!evx__redis_ready(st->main)) return EVX_EIO;
  dead_op *op = evx_calloc(1, sizeof *op);
  if (!op) return EVX_ENOMEM;
  op->st = st;
  op->script = script;
  op->id = id ? evx_strdup(id) : NULL;
  if (id && !op->id) {
    evx_free(op);
    return EVX_ENOMEM;
  }
  op->f = f; /* the reference the layer gave us */
  int rc = dead_send(op);
  if (rc != EVX_OK) {
    evx_free(op->id);
    evx_free(op);
    return rc;
  }
  st->owed++;
  return EVX_OK;
}

static int r_dead_retry(void *state, const char *id, evx_future *f) {
  return dead_start(state, S_DEAD_RETRY, id, f);
}
static int r_dead_purge(void *state, const char *id, evx_future *f) {
  return dead_start(state, S_DEAD_PURGE, id, f);
}

static void dead_list_reply(evx__redis *r, redisReply *rep, void *arg) {
  (void)r;
  dead_op *op = arg;
  rstate *st = op->st;
  if (st->freed) {
    evx_future_release(op->f);
    evx_free(op);
    return;
  }
  int rc = reply_error(st, rep, "dead list");
  evx_task_list *l = NULL;
  if (rc == EVX_OK && rep->type != REDIS_REPLY_ARRAY) rc = EVX_EIO;
  if (rc == EVX_OK) {
    l = evx_calloc(1, sizeof *l);
    if (l && rep->elements) l->items = evx_calloc(rep->elements, sizeof *l->items);
    if (!l || (rep->elements && !l->items)) rc = EVX_ENOMEM;
  }
  for (size_t i = 0; rc == EVX_OK && i < rep->elements; i++) {
    const redisReply *e = rep->element[i], *id = elem(e, 0), *kv = elem(e, 1);
    if (!is_str(id) || !kv || kv->type != REDIS_REPLY_ARRAY) continue;
    evx_task_info *t = &l->items[l->n++];
    const redisReply *err = NULL, *died = NULL, *tid = NULL, *nm = NULL, *pl = NULL, *key = NULL,
                     *att = NULL, *enq = NULL;
    for (size_t j = 0; j + 1 < kv->elements; j += 2) {
      const redisReply *k = kv->element[j], *v = kv->element[j + 1];
      if (!is_str(k) || !is_str(v) || k->len != 1) continue;
      switch (k->str[0]) {
      case 'i': tid = v; break;
      case 'n': nm = v; break;
      case 'p': pl = v; break;
      case 'k': key = v; break;
      case 'a': att = v; break;
      case 't': enq = v; break;
      case 'e': err = v; break;
      case 'd': died = v; break;
      default: break;
      }
    }
    uint64_t u = 0;
    t->id = tid ? dupn(tid->str, tid->len) : dupn(id->str, id->len);
    t->name = nm ? dupn(nm->str, nm->len) : evx_strdup("");
    t->len = pl ? pl->len : 0;
    t->payload = evx_malloc(t->len ? t->len : 1);
    if (t->payload && pl) memcpy(t->payload, pl->str, pl->len);
    t->key = key ? dupn(key->str, key->len) : NULL;
    t->last_error = err ? dupn(err->str, err->len) : NULL;
    t->attempts = att && parse_u64(att->str, att->len, &u) == 0 ? (unsigned)u : 0;
    t->enqueued_ms = enq && parse_u64(enq->str, enq->len, &u) == 0 ? (int64_t)u : 0;
    t->died_ms = died && parse_u64(died->str, died->len, &u) == 0 ? (int64_t)u : 0;
    if (!t->id || !t->name || !t->payload || (key && !t->key) || (err && !t->last_error))
      rc = EVX_ENOMEM;
  }
  if (rc == EVX_OK) {
    if (evx_future_resolve(op->f, l, free_list) != EVX_OK) evx_task_list_free(l);
  } else {
    evx_task_list_free(l);
    evx_future_fail(op->f, rc);
  }
  evx_future_release(op->f);
  evx_free(op);
  st->owed--;
  maybe_closed(st);
}

static int r_dead_list(void *state, size_t limit, evx_future *f) {
  rstate *st = state;
  if (!evx__redis_ready(st->main)) return EVX_EIO;
  dead_op *op = evx_calloc(1, sizeof *op);
  if (!op) return EVX_ENOMEM;
  op->st = st;
  op->f = f; /* the reference the layer gave us */
  char count[24];
  snprintf(count, sizeof count, "%zu", limit ? limit : 1);
  const char *argv[] = {"XRANGE", st->k_dead, "-", "+", "COUNT", count};
  int rc = evx__redis_cmd(st->main, dead_list_reply, op, 6, argv, NULL);
  if (rc != EVX_OK) {
    evx_free(op);
    return rc;
  }
  st->owed++;
  return EVX_OK;
}

/* ---- open / shutdown / free ---------------------------------------------------- */

static void closed_cb(void *arg) {
  rstate *st = arg;
  st->closed_timer = NULL;
  evx__tasks_backend_closed(st->q);
}

/* After shutdown: report closed once nothing is owed and our own commands are back. */
static void maybe_closed(rstate *st) {
  if (st->closing < 2 || st->closed || st->owed || st->internal) return;
  st->closed = 1;
  st->closed_timer = evx_call_later(st->loop, 0, closed_cb, st);
  if (!st->closed_timer) evx__tasks_backend_closed(st->q); /* no memory for the timer */
}

/* The work of shutdown, in a later callback (completions never run inside an op). */
static void shutdown_cb(void *arg) {
  rstate *st = arg;
  st->shutdown_timer = NULL;
  /* no more leases: the blocking connection goes (a pending read completes
   * with EVX_ECLOSED) */
  evx__redis *b = st->block;
  st->block = NULL;
  evx__redis_free(b);
  /* deliveries that never reached the layer go back; the consumer leaves */
  const char *sha = evx__redis_script_sha(st->main, S_BYE);
  if (sha && evx__redis_ready(st->main) && st->o->role != EVX_TASKS_ROLE_PRODUCER) {
    const char *argv[] = {"EVALSHA", sha, "1", st->k_stream, GROUP, st->consumer};
    internal_cmd(st, 6, argv, NULL);
  }
  st->closing = 2; /* maybe_closed may report now */
  maybe_closed(st);
}

static void r_shutdown(void *state) {
  rstate *st = state;
  if (st->closing) return;
  st->closing = 1;
  st->shutdown_timer = evx_call_later(st->loop, 0, shutdown_cb, st);
  if (!st->shutdown_timer) st->closing = 2; /* no memory: close once nothing is owed */
  maybe_closed(st);
}

/* Blocking: delivers every completion still owed - the real outcome of what
 * Redis answers within 2 s, EVX_ECLOSED for the rest - then frees. */
static void r_free(void *state) {
  rstate *st = state;
  if (!st) return;
  st->freeing = 1;
  evx__redis *b = st->block; /* a pending blocking read completes with EVX_ECLOSED */
  st->block = NULL;
  evx__redis_free(b);
  evx__redis_flush(st->main, 2000);
  evx__redis *m = st->main; /* what is still owed completes with EVX_ECLOSED */
  st->main = NULL;
  evx__redis_free(m);
  st->freed = 1;
  if (st->closed_timer) evx_timer_cancel(st->closed_timer);
  if (st->shutdown_timer) evx_timer_cancel(st->shutdown_timer);
  evx_free(st);
}

static int r_open(evx_tasks *q, const char *url, const evx_tasks_opts *opts, void **state,
                  char **errmsg) {
  /* There is no local outbox in front of Redis (docs/TASKS.md, "Redis
   * down"): opts->db is ignored - never written, never read - and said so
   * once here, so that nobody counts on enqueues surviving Redis being down.
   * (Not refused: examples/notes passes its database whatever the URL.) */
  if (opts->db)
    fprintf(stderr, "evexec tasks redis: opts.db is ignored by the Redis backend (no local "
                    "outbox): enqueues fail with EVX_EIO while Redis is down\n");
  evx__redis_addr a;
  int rc = evx__redis_parse_url(url, &a, errmsg);
  if (rc != EVX_OK) return rc;
  rstate *st = evx_calloc(1, sizeof *st);
  if (!st) return EVX_ENOMEM;
  st->q = q;
  st->loop = evx__tasks_loop(q);
  st->o = evx__tasks_opts(q);
  const char *qn = st->o->queue ? st->o->queue : "default";
  snprintf(st->k_stream, sizeof st->k_stream, "evx:{%s}:s", qn);
  snprintf(st->k_delayed, sizeof st->k_delayed, "evx:{%s}:z", qn);
  snprintf(st->k_dead, sizeof st->k_dead, "evx:{%s}:dead", qn);
  snprintf(st->k_idx, sizeof st->k_idx, "evx:{%s}:di", qn);
  snprintf(st->k_seq, sizeof st->k_seq, "evx:{%s}:seq", qn);
  snprintf(st->k_dprefix, sizeof st->k_dprefix, "evx:{%s}:d:", qn);
  snprintf(st->k_kprefix, sizeof st->k_kprefix, "evx:{%s}:k:", qn);
  char host[128] = "host";
  gethostname(host, sizeof host - 1);
  snprintf(st->consumer, sizeof st->consumer, "%s-%ld-%04x", host, (long)getpid(),
           (unsigned)(evx_now_ns() & 0xffff));
  snprintf(st->cursor, sizeof st->cursor, "0-0");
  evx__redis_opts mo = {.name = "tasks redis", .scripts = scripts, .on_state = on_main_state,
                        .arg = st};
  st->main = evx__redis_new(st->loop, &a, &mo, errmsg);
  if (!st->main) {
    evx_free(st);
    return errmsg && *errmsg ? EVX_EIO : EVX_ENOMEM;
  }
  if (st->o->role != EVX_TASKS_ROLE_PRODUCER) {
    uint32_t poll = st->o->poll_ms ? st->o->poll_ms : 200;
    evx__redis_opts bo = {.name = "tasks redis (blocking reads)", .cmd_timeout_ms = poll + 5000};
    st->block = evx__redis_new(st->loop, &a, &bo, errmsg);
    if (!st->block) {
      evx__redis_free(st->main);
      evx_free(st);
      return errmsg && *errmsg ? EVX_EIO : EVX_ENOMEM;
    }
  }
  /* open may block: with Redis up, the queue is usable when open returns */
  if (evx__redis_wait_ready(st->main, 1000) == EVX_OK) {
    evx__redis_flush(st->main, 1000); /* the consumer group exists before the first lease */
    if (st->block) evx__redis_wait_ready(st->block, 1000);
  }
  *state = st;
  return EVX_OK;
}

const evx__tasks_backend evx__tasks_backend_redis = {
    .name = "redis",
    .open = r_open,
    .enqueue = r_enqueue,
    .enqueue_sql = NULL,
    .lease = r_lease,
    .settle = r_settle,
    .release = r_release,
    .counts = r_counts,
    .dead_list = r_dead_list,
    .dead_retry = r_dead_retry,
    .dead_purge = r_dead_purge,
    .shutdown = r_shutdown,
    .free = r_free,
};
