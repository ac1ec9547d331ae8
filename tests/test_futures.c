/* evx_future: resolve/fail/cancel/status/result/take, on_done ordering,
 * result ownership, run_on_executor, future_all and with_timeout. */
#include "evx_test.h"

/* ---- shared recorders ------------------------------------------------------ */

/* Results are plain malloc'd ints; their destructor counts. */
static int g_freed;
static void count_free(void *p) {
  g_freed++;
  free(p);
}
static int *new_int(int v) {
  int *p = malloc(sizeof *p);
  ck_assert_ptr_nonnull(p);
  *p = v;
  return p;
}

/* on_done recorder: which callbacks ran, in which order, with what status. */
typedef struct rec {
  evx_loop *loop;
  int order[16];
  int status[16];
  void *result[16];
  int n;
  int wrong_thread;
} rec;

static rec g_rec;

static void rec_cb(evx_future *f, void *arg) {
  int id = (int)(intptr_t)arg;
  if (!evx_loop_in_thread(g_rec.loop)) g_rec.wrong_thread++;
  g_rec.order[g_rec.n] = id;
  g_rec.status[g_rec.n] = evx_future_status(f);
  g_rec.result[g_rec.n] = evx_future_result(f);
  g_rec.n++;
}

static evx_loop *new_loop(void) {
  evx_loop *loop = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(loop);
  memset(&g_rec, 0, sizeof g_rec);
  g_rec.loop = loop;
  g_freed = 0;
  return loop;
}

/* ---- basic state machine ----------------------------------------------------- */

START_TEST(test_resolve) {
  evx_loop *loop = new_loop();
  evx_future *f = evx_future_new(loop);
  ck_assert_ptr_nonnull(f);
  ck_assert_ptr_eq(evx_future_loop(f), loop);
  ck_assert_int_eq(evx_future_status(f), EVX_PENDING);
  ck_assert_int_eq(evx_future_is_done(f), 0);
  ck_assert_ptr_null(evx_future_result(f));
  ck_assert_ptr_null(evx_future_take(f));

  int *v = new_int(42);
  ck_assert_int_eq(evx_future_resolve(f, v, count_free), EVX_OK);
  ck_assert_int_eq(evx_future_status(f), EVX_OK);
  ck_assert_int_ne(evx_future_is_done(f), 0);
  ck_assert_ptr_eq(evx_future_result(f), v);

  /* Already done: every transition is refused; the caller keeps `w`. */
  int *w = new_int(7);
  ck_assert_int_eq(evx_future_resolve(f, w, count_free), EVX_EINVAL);
  free(w);
  ck_assert_int_eq(evx_future_fail(f, EVX_EIO), EVX_EINVAL);
  ck_assert_int_eq(evx_future_cancel(f), EVX_EINVAL);
  ck_assert_int_eq(evx_future_status(f), EVX_OK);
  ck_assert_ptr_eq(evx_future_result(f), v);
  ck_assert_int_eq(g_freed, 0);

  /* References: the result goes with the last one, exactly once. */
  ck_assert_ptr_eq(evx_future_ref(f), f);
  ck_assert_ptr_eq(evx_future_ref(f), f);
  evx_future_release(f);
  evx_future_release(f);
  ck_assert_int_eq(g_freed, 0);
  evx_future_release(f);
  ck_assert_int_eq(g_freed, 1);
  evx_test_free_loop(loop);
  ck_assert_int_eq(g_freed, 1);
}
END_TEST

START_TEST(test_resolve_null_result) {
  evx_loop *loop = new_loop();
  evx_future *f = evx_future_new(loop);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(evx_future_resolve(f, NULL, count_free), EVX_OK);
  ck_assert_int_eq(evx_future_status(f), EVX_OK);
  ck_assert_ptr_null(evx_future_result(f));
  evx_future_release(f);
  /* A static result with no destructor. */
  static int value = 5;
  f = evx_future_new(loop);
  ck_assert_int_eq(evx_future_resolve(f, &value, NULL), EVX_OK);
  ck_assert_ptr_eq(evx_future_result(f), &value);
  evx_future_release(f);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_fail) {
  evx_loop *loop = new_loop();
  evx_future *f = evx_future_new(loop);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(evx_future_fail(f, 0), EVX_EINVAL); /* err must be < 0 */
  ck_assert_int_eq(evx_future_fail(f, 3), EVX_EINVAL);
  ck_assert_int_eq(evx_future_status(f), EVX_PENDING);
  ck_assert_int_eq(evx_future_fail(f, EVX_EIO), EVX_OK);
  ck_assert_int_eq(evx_future_status(f), EVX_EIO);
  ck_assert_int_ne(evx_future_is_done(f), 0);
  ck_assert_ptr_null(evx_future_result(f));
  ck_assert_ptr_null(evx_future_take(f));
  int *w = new_int(1);
  ck_assert_int_eq(evx_future_resolve(f, w, count_free), EVX_EINVAL);
  free(w);
  ck_assert_int_eq(evx_future_fail(f, EVX_EBUSY), EVX_EINVAL);
  ck_assert_int_eq(evx_future_status(f), EVX_EIO);
  evx_future_release(f);
  ck_assert_int_eq(g_freed, 0);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_cancel) {
  evx_loop *loop = new_loop();
  evx_future *f = evx_future_new(loop);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(evx_future_cancel(f), EVX_OK);
  ck_assert_int_eq(evx_future_status(f), EVX_ECANCELED);
  ck_assert_int_ne(evx_future_is_done(f), 0);
  ck_assert_int_eq(evx_future_cancel(f), EVX_EINVAL);
  int *w = new_int(1);
  ck_assert_int_eq(evx_future_resolve(f, w, count_free), EVX_EINVAL);
  free(w);
  ck_assert_int_eq(evx_future_status(f), EVX_ECANCELED);
  evx_future_release(f);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_take) {
  evx_loop *loop = new_loop();
  evx_future *f = evx_future_new(loop);
  ck_assert_ptr_nonnull(f);
  int *v = new_int(9);
  ck_assert_int_eq(evx_future_resolve(f, v, count_free), EVX_OK);
  ck_assert_ptr_eq(evx_future_take(f), v);
  ck_assert_ptr_null(evx_future_result(f));
  ck_assert_ptr_null(evx_future_take(f));
  ck_assert_int_eq(evx_future_status(f), EVX_OK); /* still resolved */
  evx_future_release(f);
  ck_assert_int_eq(g_freed, 0); /* taken: the future does not free it */
  ck_assert_int_eq(*v, 9);
  free(v);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- on_done ------------------------------------------------------------------ */

START_TEST(test_on_done_order_never_inline) {
  evx_loop *loop = new_loop();
  evx_future *f = evx_future_new(loop);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(evx_future_on_done(f, rec_cb, (void *)1), EVX_OK);
  ck_assert_int_eq(evx_future_on_done(f, rec_cb, (void *)2), EVX_OK);
  int *v = new_int(1);
  ck_assert_int_eq(evx_future_resolve(f, v, count_free), EVX_OK);
  ck_assert_int_eq(g_rec.n, 0); /* not inside resolve */
  ck_assert_int_eq(evx_future_on_done(f, rec_cb, (void *)3), EVX_OK);
  ck_assert_int_eq(g_rec.n, 0); /* not inside on_done on a done future */
  /* Drop our reference: the future stays alive until its callbacks ran. */
  evx_future_release(f);
  ck_assert_int_eq(g_freed, 0);
  evx_test_run_until_count(loop, &g_rec.n, 3, 5000);
  evx_test_run_once(loop); /* room for a wrong extra call */
  ck_assert_int_eq(g_rec.n, 3);
  ck_assert_int_eq(g_rec.wrong_thread, 0);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(g_rec.order[i], i + 1);
    ck_assert_int_eq(g_rec.status[i], EVX_OK);
    ck_assert_ptr_eq(g_rec.result[i], v);
  }
  ck_assert_int_eq(g_freed, 1); /* freed after the callbacks, once */
  evx_test_free_loop(loop);
}
END_TEST

/* Callbacks of a failed and of a cancelled future run once, with the status. */
START_TEST(test_on_done_fail_cancel) {
  evx_loop *loop = new_loop();
  evx_future *a = evx_future_new(loop), *b = evx_future_new(loop);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(b);
  ck_assert_int_eq(evx_future_on_done(a, rec_cb, (void *)1), EVX_OK);
  ck_assert_int_eq(evx_future_on_done(b, rec_cb, (void *)2), EVX_OK);
  ck_assert_int_eq(evx_future_fail(a, EVX_ETIMEDOUT), EVX_OK);
  ck_assert_int_eq(g_rec.n, 0);
  ck_assert_int_eq(evx_future_cancel(b), EVX_OK);
  ck_assert_int_eq(g_rec.n, 0); /* not inside cancel */
  evx_test_run_until_count(loop, &g_rec.n, 2, 5000);
  evx_test_run_once(loop);
  ck_assert_int_eq(g_rec.n, 2);
  ck_assert_int_eq(g_rec.order[0], 1);
  ck_assert_int_eq(g_rec.status[0], EVX_ETIMEDOUT);
  ck_assert_int_eq(g_rec.order[1], 2);
  ck_assert_int_eq(g_rec.status[1], EVX_ECANCELED);
  evx_future_release(a);
  evx_future_release(b);
  evx_test_free_loop(loop);
}
END_TEST

/* A callback may add another callback to the same (done) future: it runs later. */
static void chain_cb(evx_future *f, void *arg) {
  rec_cb(f, arg);
  if ((intptr_t)arg == 1) ck_assert_int_eq(evx_future_on_done(f, rec_cb, (void *)2), EVX_OK);
}

START_TEST(test_on_done_from_callback) {
  evx_loop *loop = new_loop();
  evx_future *f = evx_future_new(loop);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(evx_future_on_done(f, chain_cb, (void *)1), EVX_OK);
  ck_assert_int_eq(evx_future_resolve(f, NULL, NULL), EVX_OK);
  evx_future_release(f);
  evx_test_run_until_count(loop, &g_rec.n, 2, 5000);
  ck_assert_int_eq(g_rec.order[0], 1);
  ck_assert_int_eq(g_rec.order[1], 2);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- run_on_executor ------------------------------------------------------------ */

typedef struct call_arg {
  int input;
  int ret;       /* what fn returns */
  evx_gate *gate; /* when set, fn parks here first */
} call_arg;

static atomic_int g_fn_calls;
static atomic_int g_fn_on_loop_thread;
static int g_arg_freed;
static int g_arg_freed_off_loop;
static evx_loop *g_loop;

static int call_fn(void *arg, void **result) {
  call_arg *a = arg;
  atomic_fetch_add(&g_fn_calls, 1);
  if (evx_loop_in_thread(g_loop)) atomic_fetch_add(&g_fn_on_loop_thread, 1);
  if (a->gate) evx_gate_park(a->gate);
  if (a->ret != EVX_OK) {
    *result = (void *)&g_fn_calls; /* must be ignored: never passed to result_free */
    return a->ret;
  }
  *result = new_int(a->input * 2);
  return EVX_OK;
}

static void arg_free(void *p) {
  g_arg_freed++;
  if (!evx_loop_in_thread(g_loop)) g_arg_freed_off_loop++;
  free(p);
}

static call_arg *new_arg(int input, int ret, evx_gate *gate) {
  call_arg *a = malloc(sizeof *a);
  ck_assert_ptr_nonnull(a);
  *a = (call_arg){input, ret, gate};
  return a;
}

static evx_loop *new_exec_loop(evx_executor **ex, unsigned threads, size_t max_queue) {
  evx_loop *loop = new_loop();
  g_loop = loop;
  atomic_store(&g_fn_calls, 0);
  atomic_store(&g_fn_on_loop_thread, 0);
  g_arg_freed = 0;
  g_arg_freed_off_loop = 0;
  evx_executor_opts o = {.threads = threads, .max_queue = max_queue, .name = "fut"};
  *ex = evx_executor_new(loop, &o);
  ck_assert_ptr_nonnull(*ex);
  return loop;
}

typedef struct settled {
  int want_rec, want_arg_freed, want_freed;
} settled;

static int is_settled(void *arg) {
  settled *s = arg;
  return g_rec.n >= s->want_rec && g_arg_freed >= s->want_arg_freed && g_freed >= s->want_freed;
}

START_TEST(test_run_on_executor_success) {
  evx_executor *ex;
  evx_loop *loop = new_exec_loop(&ex, 2, 0);
  evx_future *f = evx_run_on_executor(ex, call_fn, new_arg(21, EVX_OK, NULL), arg_free, count_free);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(evx_future_on_done(f, rec_cb, (void *)1), EVX_OK);
  settled s = {1, 1, 0};
  evx_test_run_until(loop, is_settled, &s, 5000);
  ck_assert_int_eq(evx_future_status(f), EVX_OK);
  int *r = evx_future_result(f);
  ck_assert_ptr_nonnull(r);
  ck_assert_int_eq(*r, 42);
  ck_assert_int_eq(atomic_load(&g_fn_calls), 1);
  ck_assert_int_eq(atomic_load(&g_fn_on_loop_thread), 0);
  ck_assert_int_eq(g_arg_freed, 1);
  ck_assert_int_eq(g_arg_freed_off_loop, 0);
  ck_assert_int_eq(g_rec.n, 1);
  ck_assert_int_eq(g_rec.status[0], EVX_OK);
  ck_assert_int_eq(g_freed, 0);
  evx_future_release(f);
  ck_assert_int_eq(g_freed, 1);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_run_on_executor_failure_code) {
  evx_executor *ex;
  evx_loop *loop = new_exec_loop(&ex, 1, 0);
  evx_future *f = evx_run_on_executor(ex, call_fn, new_arg(1, EVX_EIO, NULL), arg_free, count_free);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(evx_future_on_done(f, rec_cb, (void *)1), EVX_OK);
  settled s = {1, 1, 0};
  evx_test_run_until(loop, is_settled, &s, 5000);
  ck_assert_int_eq(evx_future_status(f), EVX_EIO);
  ck_assert_ptr_null(evx_future_result(f));
  ck_assert_int_eq(g_rec.status[0], EVX_EIO);
  ck_assert_int_eq(g_arg_freed, 1);
  evx_future_release(f);
  ck_assert_int_eq(g_freed, 0); /* *result of a failed call is ignored */
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* Releasing without cancelling: the job keeps its own reference and runs;
 * its result is freed when the last reference goes. */
START_TEST(test_run_on_executor_release_early) {
  evx_executor *ex;
  evx_loop *loop = new_exec_loop(&ex, 1, 0);
  evx_future *f = evx_run_on_executor(ex, call_fn, new_arg(1, EVX_OK, NULL), arg_free, count_free);
  ck_assert_ptr_nonnull(f);
  evx_future_release(f);
  settled s = {0, 1, 1};
  evx_test_run_until(loop, is_settled, &s, 5000);
  ck_assert_int_eq(atomic_load(&g_fn_calls), 1);
  ck_assert_int_eq(g_arg_freed, 1);
  ck_assert_int_eq(g_freed, 1);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_run_on_executor_busy) {
  evx_executor *ex;
  evx_loop *loop = new_exec_loop(&ex, 1, 1);
  evx_gate gate;
  evx_gate_init(&gate);
  ck_assert_int_eq(evx_submit(ex, evx_gate_park, NULL, &gate), EVX_OK);
  evx_gate_wait_entered(&gate, 1);
  evx_future *queued = evx_run_on_executor(ex, call_fn, new_arg(1, EVX_OK, NULL), arg_free, count_free);
  ck_assert_ptr_nonnull(queued); /* takes the one queue slot */
  ck_assert_int_eq(evx_future_on_done(queued, rec_cb, (void *)2), EVX_OK);
  evx_future *f = evx_run_on_executor(ex, call_fn, new_arg(2, EVX_OK, NULL), arg_free, count_free);
  ck_assert_ptr_nonnull(f);
  /* Already failed, and arg_free was called before the call returned. */
  ck_assert_int_ne(evx_future_is_done(f), 0);
  ck_assert_int_eq(evx_future_status(f), EVX_EBUSY);
  ck_assert_int_eq(g_arg_freed, 1);
  ck_assert_int_eq(evx_future_on_done(f, rec_cb, (void *)1), EVX_OK);
  ck_assert_int_eq(g_rec.n, 0);
  evx_gate_open(&gate, 1);
  settled s = {2, 2, 0};
  evx_test_run_until(loop, is_settled, &s, 5000);
  ck_assert_int_eq(evx_future_status(queued), EVX_OK);
  ck_assert_int_eq(atomic_load(&g_fn_calls), 1); /* only the accepted one ran */
  for (int i = 0; i < 2; i++)
    ck_assert_int_eq(g_rec.status[i], g_rec.order[i] == 1 ? EVX_EBUSY : EVX_OK);
  ck_assert_int_eq(g_arg_freed, 2);
  evx_future_release(f);
  evx_future_release(queued);
  ck_assert_int_eq(g_freed, 1);
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.rejected, 1);
  evx_test_run_once(loop);
  evx_test_assert_idle(ex);
  evx_gate_destroy(&gate);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_run_on_executor_closed) {
  evx_executor *ex;
  evx_loop *loop = new_exec_loop(&ex, 1, 0);
  ck_assert_int_eq(evx_executor_shutdown(ex, EVX_SHUTDOWN_DRAIN), EVX_OK);
  evx_future *f = evx_run_on_executor(ex, call_fn, new_arg(2, EVX_OK, NULL), arg_free, count_free);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(evx_future_status(f), EVX_ECLOSED);
  ck_assert_int_eq(g_arg_freed, 1);
  evx_future_release(f);
  evx_test_run_once(loop);
  ck_assert_int_eq(atomic_load(&g_fn_calls), 0);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* done of a parked job whose outcome the test does not need, only its end. */
static int g_parked_done;
static void parked_done(void *arg, int status) {
  (void)arg;
  ck_assert_int_eq(status, EVX_OK);
  g_parked_done++;
}

/* Cancel while the job is queued: fn never runs, arg_free once, one callback. */
START_TEST(test_run_on_executor_cancel_queued) {
  evx_executor *ex;
  evx_loop *loop = new_exec_loop(&ex, 1, 0);
  evx_gate gate;
  evx_gate_init(&gate);
  g_parked_done = 0;
  ck_assert_int_eq(evx_submit(ex, evx_gate_park, parked_done, &gate), EVX_OK);
  evx_gate_wait_entered(&gate, 1);
  evx_future *f = evx_run_on_executor(ex, call_fn, new_arg(1, EVX_OK, NULL), arg_free, count_free);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(evx_future_on_done(f, rec_cb, (void *)1), EVX_OK);
  ck_assert_int_eq(evx_future_cancel(f), EVX_OK);
  ck_assert_int_eq(evx_future_status(f), EVX_ECANCELED);
  ck_assert_int_eq(g_rec.n, 0);
  evx_executor_stats st;
  ck_assert_int_eq(evx_executor_stats_get(ex, &st), EVX_OK);
  ck_assert_uint_eq(st.queued, 0); /* the job left the queue */
  ck_assert_uint_eq(st.cancelled, 1);
  evx_gate_open(&gate, 1);
  settled s = {1, 1, 0};
  evx_test_run_until(loop, is_settled, &s, 5000);
  evx_test_run_until_count(loop, &g_parked_done, 1, 5000); /* the parked job finished too */
  evx_test_run_once(loop);
  ck_assert_int_eq(atomic_load(&g_fn_calls), 0);
  ck_assert_int_eq(g_arg_freed, 1);
  ck_assert_int_eq(g_rec.n, 1);
  ck_assert_int_eq(g_rec.status[0], EVX_ECANCELED);
  evx_future_release(f);
  ck_assert_int_eq(g_freed, 0);
  evx_test_assert_idle(ex);
  evx_gate_destroy(&gate);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* Cancel while fn runs (parked): the future fails at once; the job finishes;
 * its late result is freed by result_free; no callback fires twice. */
START_TEST(test_run_on_executor_cancel_running) {
  evx_executor *ex;
  evx_loop *loop = new_exec_loop(&ex, 1, 0);
  evx_gate gate;
  evx_gate_init(&gate);
  evx_future *f = evx_run_on_executor(ex, call_fn, new_arg(5, EVX_OK, &gate), arg_free, count_free);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(evx_future_on_done(f, rec_cb, (void *)1), EVX_OK);
  evx_gate_wait_entered(&gate, 1);
  ck_assert_int_eq(evx_future_cancel(f), EVX_OK);
  ck_assert_int_eq(evx_future_status(f), EVX_ECANCELED);
  ck_assert_int_eq(evx_future_cancel(f), EVX_EINVAL);
  evx_gate_open(&gate, 1);
  settled s = {1, 1, 1};
  evx_test_run_until(loop, is_settled, &s, 5000);
  evx_test_run_once(loop);
  ck_assert_int_eq(atomic_load(&g_fn_calls), 1);
  ck_assert_int_eq(g_arg_freed, 1);
  ck_assert_int_eq(g_freed, 1);
  ck_assert_int_eq(g_rec.n, 1);
  ck_assert_int_eq(g_rec.status[0], EVX_ECANCELED);
  ck_assert_int_eq(evx_future_status(f), EVX_ECANCELED);
  ck_assert_ptr_null(evx_future_result(f));
  evx_future_release(f);
  ck_assert_int_eq(g_freed, 1);
  evx_test_assert_idle(ex);
  evx_gate_destroy(&gate);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- future_all --------------------------------------------------------------- */

START_TEST(test_all_ok) {
  evx_loop *loop = new_loop();
  evx_future *in[3];
  for (int i = 0; i < 3; i++) {
    in[i] = evx_future_new(loop);
    ck_assert_ptr_nonnull(in[i]);
  }
  evx_future *all = evx_future_all(loop, in, 3);
  ck_assert_ptr_nonnull(all);
  ck_assert_int_eq(evx_future_on_done(all, rec_cb, (void *)1), EVX_OK);
  ck_assert_int_eq(evx_future_resolve(in[0], new_int(0), count_free), EVX_OK);
  ck_assert_int_eq(evx_future_resolve(in[2], new_int(2), count_free), EVX_OK);
  evx_test_run_once(loop);
  evx_test_run_once(loop);
  ck_assert_int_eq(evx_future_status(all), EVX_PENDING); /* in[1] is missing */
  ck_assert_int_eq(g_rec.n, 0);
  /* Our references to the inputs can go: `all` holds its own. */
  evx_future *last = in[1];
  evx_future_release(in[0]);
  evx_future_release(in[2]);
  ck_assert_int_eq(g_freed, 0);
  ck_assert_int_eq(evx_future_resolve(last, new_int(1), count_free), EVX_OK);
  evx_test_run_until_count(loop, &g_rec.n, 1, 5000);
  ck_assert_int_eq(evx_future_status(all), EVX_OK);
  ck_assert_ptr_null(evx_future_result(all));
  ck_assert_int_eq(g_rec.status[0], EVX_OK);
  evx_future_release(last);
  evx_future_release(all);
  evx_test_run_once(loop);
  ck_assert_int_eq(g_freed, 3); /* inputs freed once `all` let go of them */
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_all_fails_fast) {
  evx_loop *loop = new_loop();
  evx_future *a = evx_future_new(loop), *b = evx_future_new(loop);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(b);
  evx_future *in[2] = {a, b};
  evx_future *all = evx_future_all(loop, in, 2);
  ck_assert_ptr_nonnull(all);
  ck_assert_int_eq(evx_future_on_done(all, rec_cb, (void *)1), EVX_OK);
  ck_assert_int_eq(evx_future_fail(b, EVX_EIO), EVX_OK);
  evx_test_run_until_count(loop, &g_rec.n, 1, 5000);
  ck_assert_int_eq(evx_future_status(all), EVX_EIO);
  ck_assert_int_eq(evx_future_status(a), EVX_PENDING); /* did not wait for a */
  /* a finishing later changes nothing. */
  ck_assert_int_eq(evx_future_resolve(a, new_int(1), count_free), EVX_OK);
  evx_test_run_once(loop);
  evx_test_run_once(loop);
  ck_assert_int_eq(evx_future_status(all), EVX_EIO);
  ck_assert_int_eq(g_rec.n, 1);
  evx_future_release(all);
  evx_future_release(a);
  evx_future_release(b);
  evx_test_run_once(loop);
  ck_assert_int_eq(g_freed, 1);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_all_empty) {
  evx_loop *loop = new_loop();
  evx_future *all = evx_future_all(loop, NULL, 0);
  ck_assert_ptr_nonnull(all);
  ck_assert_int_eq(evx_future_status(all), EVX_OK); /* already resolved */
  ck_assert_ptr_null(evx_future_result(all));
  ck_assert_int_eq(evx_future_on_done(all, rec_cb, (void *)1), EVX_OK);
  ck_assert_int_eq(g_rec.n, 0); /* on_done is still never inline */
  evx_test_run_until_count(loop, &g_rec.n, 1, 5000);
  ck_assert_int_eq(evx_future_status(all), EVX_OK);
  evx_future_release(all);
  evx_test_free_loop(loop);
}
END_TEST

/* Inputs already done: all resolves (later, not inside the call). */
START_TEST(test_all_inputs_already_done) {
  evx_loop *loop = new_loop();
  evx_future *a = evx_future_new(loop), *b = evx_future_new(loop);
  ck_assert_int_eq(evx_future_resolve(a, NULL, NULL), EVX_OK);
  ck_assert_int_eq(evx_future_resolve(b, NULL, NULL), EVX_OK);
  evx_future *in[2] = {a, b};
  evx_future *all = evx_future_all(loop, in, 2);
  ck_assert_ptr_nonnull(all);
  ck_assert_int_eq(evx_future_on_done(all, rec_cb, (void *)1), EVX_OK);
  ck_assert_int_eq(g_rec.n, 0);
  evx_test_run_until_count(loop, &g_rec.n, 1, 5000);
  ck_assert_int_eq(evx_future_status(all), EVX_OK);
  evx_future_release(a);
  evx_future_release(b);
  evx_future_release(all);
  evx_test_free_loop(loop);
}
END_TEST

/* Cancelling `all` does not cancel the inputs. */
START_TEST(test_all_cancel) {
  evx_loop *loop = new_loop();
  evx_future *a = evx_future_new(loop);
  ck_assert_ptr_nonnull(a);
  evx_future *all = evx_future_all(loop, &a, 1);
  ck_assert_ptr_nonnull(all);
  ck_assert_int_eq(evx_future_cancel(all), EVX_OK);
  ck_assert_int_eq(evx_future_status(all), EVX_ECANCELED);
  ck_assert_int_eq(evx_future_status(a), EVX_PENDING);
  evx_future_release(all);
  evx_test_run_once(loop);
  ck_assert_int_eq(evx_future_resolve(a, new_int(3), count_free), EVX_OK);
  evx_test_run_once(loop);
  evx_future_release(a);
  ck_assert_int_eq(g_freed, 1);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_all_invalid) {
  evx_loop *loop = new_loop();
  evx_loop *other = evx_loop_new(NULL);
  ck_assert_ptr_nonnull(other);
  evx_future *a = evx_future_new(loop), *b = evx_future_new(other);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(b);
  evx_future *ok[1] = {a};
  ck_assert_ptr_null(evx_future_all(NULL, ok, 1));
  ck_assert_ptr_null(evx_future_all(loop, NULL, 2));
  evx_future *with_null[2] = {a, NULL};
  ck_assert_ptr_null(evx_future_all(loop, with_null, 2));
  evx_future *mixed[2] = {a, b};
  ck_assert_ptr_null(evx_future_all(loop, mixed, 2));
  evx_future *foreign[1] = {b};
  ck_assert_ptr_null(evx_future_all(loop, foreign, 1));
  ck_assert_int_eq(evx_future_status(a), EVX_PENDING); /* untouched */
  evx_future_release(a);
  evx_future_release(b);
  evx_loop_free(other);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- with_timeout ---------------------------------------------------------------- */

START_TEST(test_with_timeout_times_out) {
  evx_loop *loop = new_loop();
  evx_future *f = evx_future_new(loop);
  ck_assert_ptr_nonnull(f);
  uint64_t t0 = evx_now_ns();
  evx_future *w = evx_future_with_timeout(f, 30);
  ck_assert_ptr_nonnull(w);
  ck_assert_int_eq(evx_future_on_done(w, rec_cb, (void *)1), EVX_OK);
  evx_test_run_until_count(loop, &g_rec.n, 1, 5000);
  uint64_t ms = evx_test_ms_since(t0);
  ck_assert_uint_ge(ms + 3, 30);
  ck_assert_uint_lt(ms, 3000);
  ck_assert_int_eq(evx_future_status(w), EVX_ETIMEDOUT);
  ck_assert_int_eq(g_rec.status[0], EVX_ETIMEDOUT);
  ck_assert_int_eq(evx_future_status(f), EVX_PENDING); /* not cancelled */
  /* f finishing later does not touch the mirror. */
  ck_assert_int_eq(evx_future_resolve(f, new_int(1), count_free), EVX_OK);
  evx_test_run_once(loop);
  evx_test_run_once(loop);
  ck_assert_int_eq(evx_future_status(w), EVX_ETIMEDOUT);
  ck_assert_ptr_null(evx_future_result(w));
  ck_assert_int_eq(g_rec.n, 1);
  evx_future_release(w);
  evx_future_release(f);
  ck_assert_int_eq(g_freed, 1);
  evx_test_free_loop(loop);
}
END_TEST

static void resolve_later_cb(void *arg) {
  evx_future *f = arg;
  ck_assert_int_eq(evx_future_resolve(f, new_int(77), count_free), EVX_OK);
}

START_TEST(test_with_timeout_inner_first) {
  evx_loop *loop = new_loop();
  evx_future *f = evx_future_new(loop);
  ck_assert_ptr_nonnull(f);
  evx_future *w = evx_future_with_timeout(f, 60000);
  ck_assert_ptr_nonnull(w);
  ck_assert_int_eq(evx_future_on_done(w, rec_cb, (void *)1), EVX_OK);
  ck_assert_ptr_nonnull(evx_call_later(loop, 5, resolve_later_cb, f));
  uint64_t t0 = evx_now_ns();
  evx_test_run_until_count(loop, &g_rec.n, 1, 5000);
  ck_assert_uint_lt(evx_test_ms_since(t0), 3000);
  ck_assert_int_eq(evx_future_status(w), EVX_OK);
  int *r = evx_future_result(w); /* borrowed from f */
  ck_assert_ptr_nonnull(r);
  ck_assert_int_eq(*r, 77);
  ck_assert_ptr_eq(evx_future_result(f), r);
  ck_assert_ptr_eq(evx_future_take(w), r); /* takes it from f */
  ck_assert_ptr_null(evx_future_result(f));
  ck_assert_ptr_null(evx_future_result(w));
  evx_future_release(w);
  evx_future_release(f);
  evx_test_run_once(loop);
  ck_assert_int_eq(g_freed, 0);
  free(r);
  /* The 60 s timer was stopped: nothing holds the mirror (the allocator
   * balance at free proves it) and no ETIMEDOUT shows up later. */
  ck_assert_int_eq(g_rec.n, 1);
  evx_test_free_loop(loop);
}
END_TEST

START_TEST(test_with_timeout_inner_fails) {
  evx_loop *loop = new_loop();
  evx_future *f = evx_future_new(loop);
  evx_future *w = evx_future_with_timeout(f, 60000);
  ck_assert_ptr_nonnull(w);
  ck_assert_int_eq(evx_future_on_done(w, rec_cb, (void *)1), EVX_OK);
  ck_assert_int_eq(evx_future_fail(f, EVX_EGONE), EVX_OK);
  evx_test_run_until_count(loop, &g_rec.n, 1, 5000);
  ck_assert_int_eq(evx_future_status(w), EVX_EGONE);
  evx_future_release(f);
  evx_future_release(w);
  evx_test_free_loop(loop);
}
END_TEST

/* Result of an already resolved f, and the mirror released first: f keeps it. */
START_TEST(test_with_timeout_done_input) {
  evx_loop *loop = new_loop();
  evx_future *f = evx_future_new(loop);
  int *v = new_int(3);
  ck_assert_int_eq(evx_future_resolve(f, v, count_free), EVX_OK);
  evx_future *w = evx_future_with_timeout(f, 60000);
  ck_assert_ptr_nonnull(w);
  ck_assert_int_eq(evx_future_on_done(w, rec_cb, (void *)1), EVX_OK);
  evx_test_run_until_count(loop, &g_rec.n, 1, 5000);
  ck_assert_int_eq(evx_future_status(w), EVX_OK);
  ck_assert_ptr_eq(evx_future_result(w), v);
  evx_future_release(w);
  ck_assert_int_eq(g_freed, 0);
  ck_assert_ptr_eq(evx_future_result(f), v);
  evx_future_release(f);
  ck_assert_int_eq(g_freed, 1);
  evx_test_free_loop(loop);
}
END_TEST

/* Cancelling the mirror stops its timer and leaves f alone. */
START_TEST(test_with_timeout_cancel_mirror) {
  evx_loop *loop = new_loop();
  evx_future *f = evx_future_new(loop);
  evx_future *w = evx_future_with_timeout(f, 20);
  ck_assert_ptr_nonnull(w);
  ck_assert_int_eq(evx_future_on_done(w, rec_cb, (void *)1), EVX_OK);
  ck_assert_int_eq(evx_future_cancel(w), EVX_OK);
  ck_assert_int_eq(evx_future_status(f), EVX_PENDING);
  evx_test_run_until_count(loop, &g_rec.n, 1, 5000);
  /* Past the 20 ms deadline: no second callback, no status change. */
  evx_test_sleep_ms(40);
  evx_test_run_once(loop);
  evx_test_run_once(loop);
  ck_assert_int_eq(g_rec.n, 1);
  ck_assert_int_eq(evx_future_status(w), EVX_ECANCELED);
  ck_assert_int_eq(evx_future_status(f), EVX_PENDING);
  evx_future_release(w);
  ck_assert_int_eq(evx_future_resolve(f, NULL, NULL), EVX_OK);
  evx_future_release(f);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- wrong thread and invalid arguments -------------------------------------------- */

typedef struct wrong {
  evx_loop *loop;
  evx_executor *ex;
  evx_future *f; /* a pending future of the loop */
  atomic_int new_null, resolve_rc, fail_rc, cancel_rc, on_done_rc, run_null, all_null, timeout_null;
} wrong;

static int g_wrong_arg_freed;
static void wrong_arg_free(void *p) {
  (void)p;
  g_wrong_arg_freed++;
}

static int nop_call(void *arg, void **result) {
  (void)arg;
  *result = NULL;
  atomic_fetch_add(&g_fn_calls, 1);
  return EVX_OK;
}

static void wrong_work(void *arg) {
  wrong *w = arg;
  evx_future *n = evx_future_new(w->loop);
  atomic_store(&w->new_null, n == NULL);
  atomic_store(&w->resolve_rc, evx_future_resolve(w->f, NULL, NULL));
  atomic_store(&w->fail_rc, evx_future_fail(w->f, EVX_EIO));
  atomic_store(&w->cancel_rc, evx_future_cancel(w->f));
  atomic_store(&w->on_done_rc, evx_future_on_done(w->f, rec_cb, (void *)9));
  evx_future *r = evx_run_on_executor(w->ex, nop_call, w, wrong_arg_free, NULL);
  atomic_store(&w->run_null, r == NULL);
  evx_future *all = evx_future_all(w->loop, &w->f, 1);
  atomic_store(&w->all_null, all == NULL);
  evx_future *t = evx_future_with_timeout(w->f, 1);
  atomic_store(&w->timeout_null, t == NULL);
}

static void wrong_done(void *arg, int status) {
  wrong *w = arg;
  ck_assert_int_eq(status, EVX_OK);
  evx_loop_stop(w->loop);
}

/* Submitted from a loop callback: the loop is running while the worker calls. */
static void wrong_submit_cb(void *arg) {
  wrong *w = arg;
  ck_assert_int_eq(evx_submit(w->ex, wrong_work, wrong_done, w), EVX_OK);
}

START_TEST(test_wrong_thread) {
  evx_executor *ex;
  evx_loop *loop = new_exec_loop(&ex, 1, 0);
  wrong w = {.loop = loop, .ex = ex};
  w.f = evx_future_new(loop);
  ck_assert_ptr_nonnull(w.f);
  ck_assert_int_eq(evx_add_callback(loop, wrong_submit_cb, &w), EVX_OK);
  evx_test_run(loop, 5000);
  evx_test_run_once(loop);
  ck_assert_int_eq(atomic_load(&w.new_null), 1);
  ck_assert_int_eq(atomic_load(&w.resolve_rc), EVX_EINVAL);
  ck_assert_int_eq(atomic_load(&w.fail_rc), EVX_EINVAL);
  ck_assert_int_eq(atomic_load(&w.cancel_rc), EVX_EINVAL);
  ck_assert_int_eq(atomic_load(&w.on_done_rc), EVX_EINVAL);
  ck_assert_int_eq(atomic_load(&w.run_null), 1);
  ck_assert_int_eq(atomic_load(&w.all_null), 1);
  ck_assert_int_eq(atomic_load(&w.timeout_null), 1);
  ck_assert_int_eq(g_wrong_arg_freed, 0);
  ck_assert_int_eq(atomic_load(&g_fn_calls), 0);
  ck_assert_int_eq(evx_future_status(w.f), EVX_PENDING);
  ck_assert_int_eq(g_rec.n, 0);
  evx_future_release(w.f);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

static void never_cb(evx_future *f, void *arg) {
  (void)f;
  (void)arg;
  ck_abort_msg("callback of a failed call");
}

START_TEST(test_invalid_args) {
  evx_executor *ex;
  evx_loop *loop = new_exec_loop(&ex, 1, 0);
  ck_assert_ptr_null(evx_future_new(NULL));
  ck_assert_ptr_null(evx_future_ref(NULL));
  evx_future_release(NULL);
  ck_assert_int_eq(evx_future_resolve(NULL, NULL, NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_future_fail(NULL, EVX_EIO), EVX_EINVAL);
  ck_assert_int_eq(evx_future_cancel(NULL), EVX_EINVAL);
  ck_assert_int_eq(evx_future_is_done(NULL), 0);
  ck_assert_int_eq(evx_future_status(NULL), EVX_EINVAL);
  ck_assert_ptr_null(evx_future_result(NULL));
  ck_assert_ptr_null(evx_future_take(NULL));
  ck_assert_int_eq(evx_future_on_done(NULL, never_cb, NULL), EVX_EINVAL);
  ck_assert_ptr_null(evx_future_loop(NULL));
  evx_future *f = evx_future_new(loop);
  ck_assert_int_eq(evx_future_on_done(f, NULL, NULL), EVX_EINVAL);
  g_wrong_arg_freed = 0;
  ck_assert_ptr_null(evx_run_on_executor(NULL, call_fn, NULL, wrong_arg_free, NULL));
  ck_assert_ptr_null(evx_run_on_executor(ex, NULL, NULL, wrong_arg_free, NULL));
  ck_assert_int_eq(g_wrong_arg_freed, 0); /* NULL return: arg_free not called */
  ck_assert_ptr_null(evx_future_with_timeout(NULL, 10));
  ck_assert_int_eq(evx_future_resolve(f, NULL, NULL), EVX_OK);
  evx_test_run_once(loop);
  evx_future_release(f);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* ---- memory: the loop's future cache ---------------------------------------- */

/* In steady state a future costs no allocation: freed ones are reused. */
START_TEST(test_cache_no_alloc_in_steady_state) {
  evx_loop *loop = new_loop();
  evx_future *w1 = evx_future_new(loop), *w2 = evx_future_new(loop); /* warm: two cached */
  evx_future_release(w1);
  evx_future_release(w2);
  long allocs = atomic_load(&evx_test_alloc.allocs);
  for (int i = 0; i < 1000; i++) {
    evx_future *a = evx_future_new(loop), *b = evx_future_new(loop);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    /* a reused future starts clean */
    ck_assert_int_eq(evx_future_status(a), EVX_PENDING);
    ck_assert_ptr_null(evx_future_result(a));
    ck_assert_int_eq(evx_future_resolve(a, new_int(i), count_free), EVX_OK);
    ck_assert_int_eq(evx_future_fail(b, EVX_EIO), EVX_OK);
    evx_future_release(b);
    evx_future_release(a);
  }
  ck_assert_int_eq(g_freed, 1000); /* every result still freed at the last release */
  long allocs_after = atomic_load(&evx_test_alloc.allocs);
  ck_assert_int_eq(allocs_after, allocs);
  evx_test_free_loop(loop);
}
END_TEST

/* Futures may outlive their loop: releasing them after evx_loop_free touches
 * neither the loop nor its cache, and frees everything (valgrind, ASan). */
START_TEST(test_cache_release_after_loop_free) {
  evx_loop *loop = new_loop();
  evx_future *live = evx_future_new(loop), *done = evx_future_new(loop);
  ck_assert_ptr_nonnull(live);
  ck_assert_ptr_nonnull(done);
  evx_future_release(evx_future_new(loop)); /* one cached when the loop goes */
  ck_assert_int_eq(evx_future_resolve(done, new_int(7), count_free), EVX_OK);
  evx_loop_free(loop);
  ck_assert_int_eq(evx_future_status(done), EVX_OK);
  ck_assert_int_eq(*(int *)evx_future_result(done), 7);
  evx_future_release(done);
  ck_assert_int_eq(g_freed, 1);
  ck_assert_int_gt(evx_test_alloc_live(), 0); /* `live` and the cache it holds */
  evx_future_release(live);
  ck_assert_int_eq(evx_test_alloc_live(), 0);
}
END_TEST

static Suite *futures_suite(void) {
  Suite *s = suite_create("futures");
  TCase *tc = evx_test_tcase(s, "state", 10);
  tcase_add_test(tc, test_resolve);
  tcase_add_test(tc, test_resolve_null_result);
  tcase_add_test(tc, test_fail);
  tcase_add_test(tc, test_cancel);
  tcase_add_test(tc, test_take);
  tc = evx_test_tcase(s, "on_done", 10);
  tcase_add_test(tc, test_on_done_order_never_inline);
  tcase_add_test(tc, test_on_done_fail_cancel);
  tcase_add_test(tc, test_on_done_from_callback);
  tc = evx_test_tcase(s, "run_on_executor", 10);
  tcase_add_test(tc, test_run_on_executor_success);
  tcase_add_test(tc, test_run_on_executor_failure_code);
  tcase_add_test(tc, test_run_on_executor_release_early);
  tcase_add_test(tc, test_run_on_executor_busy);
  tcase_add_test(tc, test_run_on_executor_closed);
  tcase_add_test(tc, test_run_on_executor_cancel_queued);
  tcase_add_test(tc, test_run_on_executor_cancel_running);
  tc = evx_test_tcase(s, "all", 10);
  tcase_add_test(tc, test_all_ok);
  tcase_add_test(tc, test_all_fails_fast);
  tcase_add_test(tc, test_all_empty);
  tcase_add_test(tc, test_all_inputs_already_done);
  tcase_add_test(tc, test_all_cancel);
  tcase_add_test(tc, test_all_invalid);
  tc = evx_test_tcase(s, "with_timeout", 10);
  tcase_add_test(tc, test_with_timeout_times_out);
  tcase_add_test(tc, test_with_timeout_inner_first);
  tcase_add_test(tc, test_with_timeout_inner_fails);
  tcase_add_test(tc, test_with_timeout_done_input);
  tcase_add_test(tc, test_with_timeout_cancel_mirror);
  tc = evx_test_tcase(s, "misuse", 10);
  tcase_add_test(tc, test_wrong_thread);
  tcase_add_test(tc, test_invalid_args);
  tc = evx_test_tcase(s, "memory", 10);
  tcase_add_test(tc, test_cache_no_alloc_in_steady_state);
  tcase_add_test(tc, test_cache_release_after_loop_free);
  return s;
}

int main(void) { return evx_test_main(futures_suite()); }
