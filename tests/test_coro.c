/* Coroutines: evx_go / evx_await / evx_await_job / evx_sleep on every source,
 * nesting and deep calls, 10,000 at once, interruption at each await point,
 * loop free with suspended coroutines, the guard page, misuse. Built twice:
 * `coro` (the assembly switch where there is one) and `coro_ucontext`. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "evx_test.h"

static evx_loop *new_loop(void) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  return loop;
}

/* ---- misuse ------------------------------------------------------------- */

static void noop_work(void *arg) { (void)arg; }

START_TEST(test_outside_a_coroutine) {
  evx_loop *loop = new_loop();
  evx_future *f = evx_future_new(loop);
  ck_assert_int_eq(evx_in_coro(), 0);
  ck_assert_int_eq(evx_await(f), EVX_EINVAL); /* at once, never blocks */
  ck_assert_int_eq(evx_future_status(f), EVX_PENDING);
  ck_assert_int_eq(evx_sleep(1), EVX_EINVAL);
  evx_executor *ex = evx_executor_new(loop, &(evx_executor_opts){.threads = 1});
  ck_assert_int_eq(evx_await_job(ex, noop_work, NULL), EVX_EINVAL);
  ck_assert_ptr_null(evx_go(NULL, NULL, NULL, NULL));
  ck_assert_ptr_null(evx_go(loop, NULL, NULL, NULL));
  evx_future_release(f);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

static void *ret_arg(void *arg) { return arg; }

START_TEST(test_bad_stack_size) {
  evx_loop *loop = new_loop();
  evx_coro_opts o = {.stack_size = (size_t)1 << 40};
  ck_assert_ptr_null(evx_go(loop, ret_arg, NULL, &o));
  o.stack_size = 1; /* raised to the minimum */
  evx_future *f = evx_go(loop, ret_arg, (void *)"x", &o);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(evx_future_status(f), EVX_OK);
  evx_future_release(f);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- basic runs --------------------------------------------------------- */

typedef struct basic {
  evx_future *wait_on;
  int steps;
  int in_coro;
  int st;
} basic;

static void *basic_fn(void *arg) {
  basic *b = arg;
  b->in_coro = evx_in_coro();
  b->steps = 1;
  b->st = evx_await(b->wait_on);
  b->steps = 2;
  return (void *)"done";
}

START_TEST(test_go_runs_until_first_await) {
  evx_loop *loop = new_loop();
  basic b = {.wait_on = evx_future_new(loop)};
  evx_future *f = evx_go(loop, basic_fn, &b, NULL);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(b.steps, 1); /* ran to its await, inside evx_go */
  ck_assert_int_eq(b.in_coro, 1);
  ck_assert_int_eq(evx_in_coro(), 0);
  ck_assert_int_eq(evx_future_status(f), EVX_PENDING);
  ck_assert_int_eq(evx_future_resolve(b.wait_on, NULL, NULL), EVX_OK);
  ck_assert_int_eq(b.steps, 1); /* never inside resolve */
  evx_test_run_until_count(loop, &b.steps, 2, 5000);
  ck_assert_int_eq(b.st, EVX_OK);
  evx_test_run_once(loop);
  ck_assert_int_eq(evx_future_status(f), EVX_OK);
  ck_assert_str_eq(evx_future_result(f), "done");
  evx_future_release(b.wait_on);
  evx_future_release(f);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_returns_without_awaiting) {
  evx_loop *loop = new_loop();
  evx_future *f = evx_go(loop, ret_arg, (void *)"now", NULL);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(evx_future_status(f), EVX_OK);
  ck_assert_str_eq(evx_future_result(f), "now");
  evx_future_release(f);
  /* A done future awaited returns at once. */
  evx_test_free_loop(loop);
}
END_TEST

static void *alloc_result(void *arg) {
  (void)arg;
  char *p = evx_malloc(32);
  strcpy(p, "owned");
  return p;
}

START_TEST(test_result_free) {
  evx_loop *loop = new_loop();
  evx_coro_opts o = {.result_free = evx_free};
  evx_future *f = evx_go(loop, alloc_result, NULL, &o);
  ck_assert_str_eq(evx_future_result(f), "owned");
  evx_future_release(f); /* frees the result: the fixture checks the balance */
  evx_test_free_loop(loop);
}
END_TEST

/* ---- every source ------------------------------------------------------- */

typedef struct sources {
  evx_executor *ex;
  evx_condition *cond;
  evx_future *plain, *failed;
  atomic_int job_ran;
  int st[8];
  void *res;
  int finished;
} sources;

static void mark_work(void *arg) { atomic_store(&((sources *)arg)->job_ran, 1); }

static int call_fn(void *arg, void **result) {
  (void)arg;
  *result = (void *)"from worker";
  return EVX_OK;
}

static void *sources_fn(void *arg) {
  sources *s = arg;
  s->st[0] = evx_await_job(s->ex, mark_work, s);
  evx_future *rf = evx_run_on_executor(s->ex, call_fn, NULL, NULL, NULL);
  s->st[1] = evx_await(rf);
  s->res = evx_future_result(rf);
  evx_future_release(rf);
  uint64_t t0 = evx_now_ns();
  s->st[2] = evx_sleep(20);
  s->st[3] = evx_now_ns() - t0 >= 19 * 1000000ull ? EVX_OK : EVX_EIO;
  evx_future *w = evx_condition_wait(s->cond, 0);
  s->st[4] = evx_await(w);
  evx_future_release(w);
  s->st[5] = evx_await(s->plain);
  s->st[6] = evx_await(s->failed);
  s->st[7] = evx_sleep(0);
  s->finished = 1;
  return NULL;
}

static void notify_cb(void *arg) { evx_condition_notify_all(arg); }

static void settle_cb(void *arg) {
  sources *s = arg;
  evx_future_resolve(s->plain, (void *)"plain", NULL);
  evx_future_fail(s->failed, EVX_ETIMEDOUT);
}

static int waiting_on_cond(void *arg) { return evx_condition_waiters(((sources *)arg)->cond) == 1; }
static int waiting_plain(void *arg) {
  sources *s = arg;
  return s->st[4] == EVX_OK && evx_condition_waiters(s->cond) == 0;
}

START_TEST(test_await_every_source) {
  evx_loop *loop = new_loop();
  sources s = {.ex = evx_executor_new(loop, &(evx_executor_opts){.threads = 2}),
               .cond = evx_condition_new(loop),
               .plain = evx_future_new(loop),
               .failed = evx_future_new(loop)};
  for (int i = 0; i < 8; i++) s.st[i] = 99;
  evx_future *f = evx_go(loop, sources_fn, &s, NULL);
  ck_assert_ptr_nonnull(f);
  evx_test_run_until(loop, waiting_on_cond, &s, 5000);
  ck_assert_int_eq(atomic_load(&s.job_ran), 1);
  ck_assert_int_eq(s.st[0], EVX_OK);
  ck_assert_int_eq(s.st[1], EVX_OK);
  ck_assert_str_eq(s.res, "from worker");
  ck_assert_int_eq(s.st[2], EVX_OK);
  ck_assert_int_eq(s.st[3], EVX_OK);
  evx_add_callback(loop, notify_cb, s.cond);
  evx_test_run_until(loop, waiting_plain, &s, 5000);
  evx_add_callback(loop, settle_cb, &s);
  evx_test_run_until_count(loop, &s.finished, 1, 5000);
  ck_assert_int_eq(s.st[5], EVX_OK);
  ck_assert_int_eq(s.st[6], EVX_ETIMEDOUT);
  ck_assert_int_eq(s.st[7], EVX_OK);
  evx_test_run_once(loop);
  ck_assert_int_eq(evx_future_status(f), EVX_OK);
  evx_future_release(f);
  evx_future_release(s.plain);
  evx_future_release(s.failed);
  evx_condition_free(s.cond);
  evx_test_assert_idle(s.ex);
  evx_executor_free(s.ex);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- nesting and deep calls --------------------------------------------- */

typedef struct nest {
  evx_loop *loop;
  evx_future *gate;
  int order[8];
  int n;
  int st;
} nest;

static void *inner_fn(void *arg) {
  nest *x = arg;
  x->order[x->n++] = 2;
  ck_assert_int_eq(evx_await(x->gate), EVX_OK);
  x->order[x->n++] = 4;
  return (void *)"inner";
}

static void *outer_fn(void *arg) {
  nest *x = arg;
  x->order[x->n++] = 1;
  evx_future *in = evx_go(x->loop, inner_fn, x, NULL); /* runs inner to its await */
  x->order[x->n++] = 3;
  x->st = evx_await(in);
  ck_assert_str_eq(evx_future_result(in), "inner");
  evx_future_release(in);
  x->order[x->n++] = 5;
  return NULL;
}

START_TEST(test_nested_go) {
  evx_loop *loop = new_loop();
  nest x = {.loop = loop, .gate = evx_future_new(loop)};
  evx_future *f = evx_go(loop, outer_fn, &x, NULL);
  ck_assert_int_eq(x.n, 3);
  evx_future_resolve(x.gate, NULL, NULL);
  evx_test_run_until_count(loop, &x.n, 5, 5000);
  for (int i = 0; i < 5; i++) ck_assert_int_eq(x.order[i], i + 1);
  ck_assert_int_eq(x.st, EVX_OK);
  evx_test_run_once(loop);
  ck_assert_int_eq(evx_future_status(f), EVX_OK);
  evx_future_release(f);
  evx_future_release(x.gate);
  evx_test_free_loop(loop);
}
END_TEST

typedef struct deep {
  evx_future *gate;
  int depth;
  long sum;
  int done;
} deep;

/* Each frame keeps a buffer alive across the await at the bottom: the frames
 * must come back intact after the switch. */
static long deep_call(deep *d, int level) {
  volatile char buf[200];
  for (size_t i = 0; i < sizeof buf; i++) buf[i] = (char)(level + (int)i);
  long below;
  if (level == d->depth) {
    below = evx_await(d->gate) == EVX_OK ? 0 : -1000000;
  } else {
    below = deep_call(d, level + 1);
  }
  long mine = 0;
  for (size_t i = 0; i < sizeof buf; i++) mine += buf[i] == (char)(level + (int)i);
  return below + mine;
}

static void *deep_fn(void *arg) {
  deep *d = arg;
  d->sum = deep_call(d, 1);
  d->done = 1;
  return NULL;
}

START_TEST(test_deep_call_chain) {
  evx_loop *loop = new_loop();
  deep d = {.gate = evx_future_new(loop), .depth = 2000};
  evx_coro_opts o = {.stack_size = 4 * 1024 * 1024};
  evx_future *f = evx_go(loop, deep_fn, &d, &o);
  ck_assert_int_eq(d.done, 0);
  evx_future_resolve(d.gate, NULL, NULL);
  evx_test_run_until_count(loop, &d.done, 1, 10000);
  ck_assert_int_eq(d.sum, 2000L * 200);
  evx_test_run_once(loop);
  evx_future_release(f);
  evx_future_release(d.gate);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- 10,000 at once ----------------------------------------------------- */

/* TSan counts every fiber as a thread. GCC 12's libtsan (the old runtime)
 * keeps ~900 KB per thread and slows down faster than linearly (2,000
 * fibers: 5 s and 1.8 GB here; the old runtime's thread limit is 8k), so a
 * gcc TSan build checks the same path with 500. clang's runtime from 14 on
 * (TSan v3) holds 10,000 in ~1 s and ~300 MB: its build runs them all. */
#if defined(EVX_TSAN) && !(defined(__clang__) && __clang_major__ >= 14)
#define MANY 500
#else
#define MANY 10000
#endif

typedef struct many {
  evx_condition *cond;
  int started, finished;
} many;

static void *many_fn(void *arg) {
  many *m = arg;
  m->started++;
  evx_future *w = evx_condition_wait(m->cond, 0);
  int st = evx_await(w);
  evx_future_release(w);
  if (st == EVX_OK && evx_sleep(0) == EVX_OK) m->finished++;
  return NULL;
}

START_TEST(test_ten_thousand) {
  evx_loop *loop = new_loop();
  many m = {.cond = evx_condition_new(loop)};
  evx_future **fs = malloc(MANY * sizeof *fs);
  for (int i = 0; i < MANY; i++) {
    fs[i] = evx_go(loop, many_fn, &m, NULL);
    ck_assert_ptr_nonnull(fs[i]);
  }
  ck_assert_int_eq(m.started, MANY);
  ck_assert_uint_eq(evx_condition_waiters(m.cond), MANY);
  ck_assert_int_eq(evx_condition_notify_all(m.cond), MANY);
  evx_test_run_until_count(loop, &m.finished, MANY, 60000);
  evx_test_run_once(loop);
  for (int i = 0; i < MANY; i++) {
    ck_assert_int_eq(evx_future_status(fs[i]), EVX_OK);
    evx_future_release(fs[i]);
  }
  free(fs);
  evx_condition_free(m.cond);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- interruption at each await point ----------------------------------- */

enum { AT_FUTURE, AT_SLEEP, AT_COND, AT_JOB_QUEUED, AT_JOB_RUNNING, AT_RUN_ON_EXECUTOR };

typedef struct intr {
  int at;
  evx_loop *loop;
  evx_executor *ex;
  evx_gate *gate;
  evx_condition *cond;
  evx_future *plain;
  evx_future *awaited; /* what the coroutine waited on, for the test to inspect */
  atomic_int work_ran;
  int st, st_later, st_sleep, st_job;
  int reached, cleaned;
} intr;

static void intr_work(void *arg) {
  intr *x = arg;
  atomic_store(&x->work_ran, 1);
}

static void intr_park(void *arg) {
  intr *x = arg;
  evx_gate_park(x->gate);
  atomic_store(&x->work_ran, 1);
}

static int intr_call(void *arg, void **result) {
  intr *x = arg;
  evx_gate_park(x->gate);
  *result = evx_strdup("nobody takes me");
  return EVX_OK;
}

static void *intr_fn(void *arg) {
  intr *x = arg;
  x->reached = 1;
  switch (x->at) {
  case AT_FUTURE:
    x->awaited = evx_future_ref(x->plain);
    x->st = evx_await(x->plain);
    break;
  case AT_SLEEP:
    x->st = evx_sleep(60000);
    break;
  case AT_COND:
    x->awaited = evx_condition_wait(x->cond, 0);
    x->st = evx_await(x->awaited);
    break;
  case AT_JOB_QUEUED:
    x->st = evx_await_job(x->ex, intr_work, x);
    break;
  case AT_JOB_RUNNING:
    x->st = evx_await_job(x->ex, intr_park, x);
    break;
  case AT_RUN_ON_EXECUTOR:
    x->awaited = evx_run_on_executor(x->ex, intr_call, x, NULL, evx_free);
    x->st = evx_await(x->awaited);
    break;
  }
  x->reached = 2;
  /* Every later await returns the reason at once. */
  evx_future *never = evx_future_new(x->loop);
  x->st_later = evx_await(never);
  evx_future_release(never);
  x->st_sleep = evx_sleep(60000);
  x->st_job = evx_await_job(x->ex, intr_work, x);
  x->cleaned = 1;
  return NULL;
}

static int intr_cleaned(void *arg) { return ((intr *)arg)->cleaned; }

static void run_interrupt(int at) {
  evx_loop *loop = new_loop();
  evx_gate gate;
  evx_gate_init(&gate);
  intr x = {.at = at, .loop = loop, .gate = &gate, .cond = evx_condition_new(loop),
            .plain = evx_future_new(loop),
            .ex = evx_executor_new(loop, &(evx_executor_opts){.threads = 1})};
  int blockers = 0;
  if (at == AT_JOB_QUEUED) { /* park the only worker so the coroutine's job stays queued */
    ck_assert_int_eq(evx_submit(x.ex, evx_gate_park, NULL, &gate), EVX_OK);
    evx_gate_wait_entered(&gate, 1);
    blockers = 1;
  }
  evx_future *f = evx_go(loop, intr_fn, &x, NULL);
  ck_assert_int_eq(x.reached, 1);
  if (at == AT_JOB_RUNNING || at == AT_RUN_ON_EXECUTOR) evx_gate_wait_entered(&gate, 1);
  if (at == AT_COND) ck_assert_uint_eq(evx_condition_waiters(x.cond), 1);

  ck_assert_int_eq(evx_future_cancel(f), EVX_OK);
  ck_assert_int_eq(x.reached, 1); /* resumed later, never inside cancel */
  if (at == AT_JOB_RUNNING || at == AT_RUN_ON_EXECUTOR) {
    /* await_job waits for the running job; a plain await returns at once. */
    if (at == AT_JOB_RUNNING) {
      evx_test_run_once(loop);
      evx_test_run_once(loop);
      ck_assert_int_eq(x.reached, 1);
    } else {
      evx_test_run_until_count(loop, &x.reached, 2, 5000);
    }
    evx_gate_open(&gate, 1);
  }
  evx_test_run_until(loop, intr_cleaned, &x, 5000);
  ck_assert_int_eq(x.st, EVX_ECANCELED);
  ck_assert_int_eq(x.st_later, EVX_ECANCELED);
  ck_assert_int_eq(x.st_sleep, EVX_ECANCELED);
  ck_assert_int_eq(x.st_job, EVX_ECANCELED);
  if (at == AT_COND) ck_assert_uint_eq(evx_condition_waiters(x.cond), 0); /* the waiter left */
  if (x.awaited) ck_assert_int_eq(evx_future_status(x.awaited), EVX_ECANCELED);
  if (blockers) evx_gate_open(&gate, blockers);
  evx_executor_shutdown(x.ex, EVX_SHUTDOWN_DRAIN);
  evx_executor_free(x.ex);
  ck_assert_int_eq(atomic_load(&x.work_ran), at == AT_JOB_RUNNING); /* a queued job never ran */
  ck_assert_int_eq(evx_future_status(f), EVX_ECANCELED);
  evx_future_release(f);
  evx_future_release(x.awaited);
  evx_future_release(x.plain);
  evx_condition_free(x.cond);
  evx_gate_destroy(&gate);
  evx_test_free_loop(loop);
}

START_TEST(test_cancel_at_each_await) { run_interrupt(_i); }
END_TEST

typedef struct selfc {
  evx_future *self;
  int st;
  int done;
} selfc;

static void *self_cancel_fn(void *arg) {
  selfc *s = arg;
  evx_sleep(0);
  evx_future_cancel(s->self); /* while running: the next await answers */
  s->st = evx_sleep(0);
  s->done = 1;
  return NULL;
}

START_TEST(test_cancel_self) {
  evx_loop *loop = new_loop();
  selfc s = {.st = 99};
  s.self = evx_go(loop, self_cancel_fn, &s, NULL);
  evx_test_run_until_count(loop, &s.done, 1, 5000);
  ck_assert_int_eq(s.st, EVX_ECANCELED);
  evx_test_run_once(loop);
  ck_assert_int_eq(evx_future_status(s.self), EVX_ECANCELED);
  evx_future_release(s.self);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- loop free with suspended coroutines -------------------------------- */

typedef struct closing {
  int at;
  evx_executor *ex;
  evx_gate *gate;
  evx_condition *cond;
  evx_future *plain;
  int *st, *later, *cleaned;
} closing;

static int g_close_st[6], g_close_later[6], g_close_cleaned[6];
static int g_close_waiters, g_close_plain; /* seen by the AT_COND / AT_FUTURE coroutines */

static void *closing_fn(void *arg) {
  closing *c = arg;
  int st = 0;
  switch (c->at) {
  case AT_FUTURE: /* owns the test's plain future */
    st = evx_await(c->plain);
    g_close_plain = evx_future_status(c->plain);
    evx_future_release(c->plain);
    break;
  case AT_SLEEP:
    st = evx_sleep(60000);
    break;
  case AT_COND: { /* owns the condition */
    evx_future *w = evx_condition_wait(c->cond, 0);
    st = evx_await(w);
    evx_future_release(w);
    g_close_waiters = (int)evx_condition_waiters(c->cond);
    evx_condition_free(c->cond);
    break;
  }
  case AT_JOB_QUEUED:
    st = evx_await_job(c->ex, noop_work, NULL);
    break;
  case AT_JOB_RUNNING:
    st = evx_await_job(c->ex, evx_gate_park, c->gate);
    break;
  default:
    st = evx_sleep(0);
  }
  c->st[c->at] = st;
  c->later[c->at] = evx_sleep(1);
  c->cleaned[c->at] = 1;
  evx_free(c);
  return NULL;
}

START_TEST(test_loop_free_resumes_suspended) {
  evx_loop *loop = new_loop();
  evx_gate gate;
  evx_gate_init(&gate);
  evx_executor *ex = evx_executor_new(loop, &(evx_executor_opts){.threads = 1});
  evx_condition *cond = evx_condition_new(loop);
  evx_future *plain = evx_future_new(loop);
  for (int at = 0; at < 6; at++) g_close_st[at] = g_close_later[at] = g_close_cleaned[at] = 99;
  g_close_waiters = g_close_plain = 99;
  /* AT_JOB_RUNNING first so its job holds the only worker; AT_JOB_QUEUED's waits. */
  int order[] = {AT_JOB_RUNNING, AT_FUTURE, AT_SLEEP, AT_COND, AT_JOB_QUEUED};
  evx_future *fs[5];
  for (int i = 0; i < 5; i++) {
    closing *c = evx_malloc(sizeof *c);
    *c = (closing){.at = order[i], .ex = ex, .gate = &gate, .cond = cond, .plain = plain,
                   .st = g_close_st, .later = g_close_later, .cleaned = g_close_cleaned};
    fs[i] = evx_go(loop, closing_fn, c, NULL);
    ck_assert_ptr_nonnull(fs[i]);
    evx_future_release(fs[i]); /* the coroutines hold their own */
    if (i == 0) evx_gate_wait_entered(&gate, 1);
  }
  evx_test_run_once(loop);
  ck_assert_int_eq(g_close_cleaned[AT_COND], 99);
  evx_gate_open(&gate, 1); /* the running job can end while the loop is freed */
  evx_loop_free(loop);
  for (int i = 0; i < 5; i++) {
    ck_assert_int_eq(g_close_st[order[i]], EVX_ECLOSED);
    ck_assert_int_eq(g_close_later[order[i]], EVX_ECLOSED);
    ck_assert_int_eq(g_close_cleaned[order[i]], 1);
  }
  /* The waiter left the condition and the future was cancelled by the close. */
  ck_assert_int_eq(g_close_waiters, 0);
  ck_assert_int_eq(g_close_plain, EVX_ECANCELED);
  evx_gate_destroy(&gate);
  ck_assert_int_eq(evx_test_alloc_live(), 0); /* no stack, no frame, no future left */
}
END_TEST

/* ---- the guard page ----------------------------------------------------- */

static volatile int g_recurse_limit; /* 0: no limit (the compiler cannot know) */

static int recurse_forever(int n) {
  volatile char buf[512];
  buf[0] = (char)n;
  if (g_recurse_limit && n >= g_recurse_limit) return 0;
  return recurse_forever(n + 1) + buf[0];
}

static void *overflow_fn(void *arg) {
  (void)arg;
  return (void *)(intptr_t)recurse_forever(0);
}

START_TEST(test_guard_page) {
  int fds[2];
  ck_assert_int_eq(pipe(fds), 0);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    dup2(fds[1], 2);
    close(fds[0]);
    evx_loop *loop = evx_loop_new(NULL);
    evx_go(loop, overflow_fn, NULL, &(evx_coro_opts){.stack_size = 64 * 1024});
    _exit(0); /* not reached */
  }
  close(fds[1]);
  char out[4096] = {0};
  size_t n = 0;
  ssize_t r;
  char sink[4096];
  while ((r = read(fds[0], n < sizeof out - 1 ? out + n : sink,
                   n < sizeof out - 1 ? sizeof out - 1 - n : sizeof sink)) > 0)
    if (n < sizeof out - 1) n += (size_t)r; /* keep the start, drain the rest */
  close(fds[0]);
  int status;
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
#if defined(EVX_TSAN) || defined(__SANITIZE_ADDRESS__)
  /* TSan and ASan may handle SIGSEGV ahead of our handler: they report the
   * stack overflow themselves and exit (TSan 66, ASan 1). The guard page did
   * its job either way: the overflow was caught, not silent corruption. */
  if (WIFEXITED(status) && WEXITSTATUS(status) != 0) {
    ck_assert_msg(strstr(out, "stack-overflow") != NULL || strstr(out, "coroutine stack overflow"),
                  "message: %.300s", out);
    return;
  }
#endif
  /* Messages are cut: Check refuses a failure message over its buffer. */
  ck_assert_msg(WIFSIGNALED(status), "the child was not killed by a signal (status %d): %.300s",
                status, out);
  ck_assert_int_eq(WTERMSIG(status), SIGSEGV);
  ck_assert_msg(strstr(out, "coroutine stack overflow") != NULL, "message: %.300s", out);
  ck_assert_msg(strstr(out, "65536 bytes") != NULL, "message: %.300s", out);
}
END_TEST

Suite *coro_suite(void);
Suite *coro_suite(void) {
  Suite *s = suite_create("coro");
  TCase *tc = evx_test_tcase(s, "basics", 30);
  tcase_add_test(tc, test_outside_a_coroutine);
  tcase_add_test(tc, test_bad_stack_size);
  tcase_add_test(tc, test_go_runs_until_first_await);
  tcase_add_test(tc, test_returns_without_awaiting);
  tcase_add_test(tc, test_result_free);
  tcase_add_test(tc, test_await_every_source);
  tcase_add_test(tc, test_nested_go);
  tcase_add_test(tc, test_deep_call_chain);
  tc = evx_test_tcase(s, "scale", 120);
  tcase_add_test(tc, test_ten_thousand);
  tc = evx_test_tcase(s, "interrupt", 30);
  tcase_add_loop_test(tc, test_cancel_at_each_await, AT_FUTURE, AT_RUN_ON_EXECUTOR + 1);
  tcase_add_test(tc, test_cancel_self);
  tcase_add_test(tc, test_loop_free_resumes_suspended);
  tc = evx_test_tcase(s, "guard", 30);
  tcase_add_test(tc, test_guard_page);
  return s;
}

int main(void) { return evx_test_main(coro_suite()); }
