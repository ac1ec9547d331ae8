/* The loop-thread rule holds in every documented way of running a loop:
 * under evx_loop_run, and for an adopted base run with event_base_dispatch()
 * (which evexec cannot see). Calls from a worker are refused with EVX_EINVAL
 * / NULL and change nothing; the loop thread's own calls work afterwards. */
#include <event2/event.h>
#include <evexec/condition.h>
#include <evexec/executor.h>
#include <evexec/future.h>
#include <evexec/http.h>
#include <evexec/metrics.h>
#include <evexec/sync.h>

#include "test_http_util.h"

/* What a worker saw when it tried loop-thread-only calls. */
typedef struct worker_seen {
  evx_loop *loop;
  evx_request *req;
  atomic_int finish_rc;  /* evx_request_finish from the worker */
  atomic_int future_ok;  /* evx_future_new returned non-NULL */
  atomic_int timer_ok;   /* evx_call_later returned non-NULL */
  atomic_int in_thread;  /* evx_loop_in_thread */
  int loop_finish_rc;    /* the later finish on the loop thread */
  int done_status;
} worker_seen;

static void nop_cb(void *arg) { (void)arg; }

static void misuse_work(void *arg) {
  worker_seen *w = arg;
  if (w->req) atomic_store(&w->finish_rc, evx_request_finish(w->req, 200, NULL, "worker", 6));
  evx_future *f = evx_future_new(w->loop);
  atomic_store(&w->future_ok, f != NULL);
  if (f) evx_future_release(f); /* only reached without the check: the test fails anyway */
  evx_timer *t = evx_call_later(w->loop, 1000000, nop_cb, NULL);
  atomic_store(&w->timer_ok, t != NULL);
  atomic_store(&w->in_thread, evx_loop_in_thread(w->loop));
}

static void misuse_done(void *arg, int status) {
  worker_seen *w = arg;
  w->done_status = status;
  if (w->req) w->loop_finish_rc = evx_request_finish(w->req, 200, NULL, "loop", 4);
}

static evx_executor *g_ex;

static void stop_done(void *arg, int status) {
  worker_seen *w = arg;
  w->done_status = status;
  evx_loop_stop(w->loop);
}

static void h_offload(evx_request *req, void *arg) {
  worker_seen *w = arg;
  w->req = req;
  ck_assert_int_eq(evx_submit(g_ex, misuse_work, misuse_done, w), EVX_OK);
}

typedef struct client_res {
  evx_loop *loop;
  int port;
  tc_resp resp;
  int rc;
} client_res;

static void *client_get_then_stop(void *arg) {
  client_res *c = arg;
  c->rc = tc_get(c->port, "/t", &c->resp);
  evx_loop_stop(c->loop);
  return NULL;
}

/* The reported crash: an adopted base run with event_base_dispatch; a worker
 * finished the request (OK, reply sent from the worker), and the loop's later
 * finish used the freed request. Now the worker's call is refused, and the
 * reply is the loop thread's. */
START_TEST(test_adopted_dispatch_refuses_worker_finish) {
  struct event_base *base = event_base_new();
  ck_assert_ptr_nonnull(base);
  evx_loop *loop = evx_loop_new(base);
  ck_assert_ptr_nonnull(loop);
  evx_executor_opts eo = {.threads = 1};
  g_ex = evx_executor_new(loop, &eo);
  ck_assert_ptr_nonnull(g_ex);
  evx_http *http = evx_http_new(loop, NULL);
  ck_assert_ptr_nonnull(http);
  worker_seen w = {.loop = loop, .loop_finish_rc = 99};
  atomic_init(&w.finish_rc, 99);
  ck_assert_int_eq(evx_http_route(http, "GET", "/t", 0, h_offload, &w), EVX_OK);
  ck_assert_int_eq(evx_http_bind(http, "127.0.0.1", 0), EVX_OK);
  client_res c = {.loop = loop, .port = evx_http_port(http)};
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, client_get_then_stop, &c), 0);
  ck_assert_int_eq(event_base_dispatch(base), 0); /* not evx_loop_run */
  pthread_join(th, NULL);

  ck_assert_int_eq(atomic_load(&w.finish_rc), EVX_EINVAL);
  ck_assert_int_eq(atomic_load(&w.future_ok), 0);
  ck_assert_int_eq(atomic_load(&w.timer_ok), 0);
  ck_assert_int_eq(atomic_load(&w.in_thread), 0);
  ck_assert_int_eq(w.done_status, EVX_OK);
  ck_assert_int_eq(w.loop_finish_rc, EVX_OK);
  ck_assert_int_eq(c.rc, 0);
  ck_assert_int_eq(c.resp.status, 200);
  ck_assert_str_eq(c.resp.body, "loop");
  tc_resp_free(&c.resp);

  evx_http_free(http);
  evx_executor_free(g_ex);
  evx_loop_free(loop);
  event_base_free(base);
  ck_assert_uint_eq(evx_request_live_count(), 0);
}
END_TEST

/* An adopted base is checked even while nobody runs it: another thread may
 * be about to dispatch it, and evexec cannot know. */
static void *plain_thread_calls(void *arg) {
  worker_seen *w = arg;
  misuse_work(w);
  return NULL;
}

START_TEST(test_adopted_checked_when_idle) {
  struct event_base *base = event_base_new();
  evx_loop *loop = evx_loop_new(base);
  ck_assert_ptr_nonnull(loop);
  ck_assert_int_ne(evx_loop_in_thread(loop), 0); /* the creator is the loop thread */
  worker_seen w = {.loop = loop};
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, plain_thread_calls, &w), 0);
  pthread_join(th, NULL);
  ck_assert_int_eq(atomic_load(&w.future_ok), 0);
  ck_assert_int_eq(atomic_load(&w.timer_ok), 0);
  /* The loop thread itself is unaffected. */
  evx_future *f = evx_future_new(loop);
  ck_assert_ptr_nonnull(f);
  evx_future_release(f);
  evx_loop_free(loop);
  event_base_free(base);
}
END_TEST

static void submit_misuse(void *arg) {
  ck_assert_int_eq(evx_submit(g_ex, misuse_work, stop_done, arg), EVX_OK);
}

/* An owned base keeps its set-up/teardown freedom while it does not run, and
 * is checked while evx_loop_run runs (the rule that already held). */
START_TEST(test_owned_checked_while_running) {
  evx_loop *loop = evx_loop_new(NULL);
  evx_executor_opts eo = {.threads = 1};
  g_ex = evx_executor_new(loop, &eo);
  worker_seen w = {.loop = loop, .done_status = 99};
  /* Submitted from a loop callback: the worker must see the loop running
   * (submitted before evx_loop_run, it could run before the loop starts). */
  ck_assert_int_eq(evx_add_callback(loop, submit_misuse, &w), EVX_OK);
  evx_test_run(loop, 5000);
  ck_assert_int_eq(w.done_status, EVX_OK);
  ck_assert_int_eq(atomic_load(&w.future_ok), 0);
  ck_assert_int_eq(atomic_load(&w.timer_ok), 0);
  ck_assert_int_eq(atomic_load(&w.in_thread), 0);
  /* Not running: another thread may set up and tear down (owned base only). */
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, plain_thread_calls, &w), 0);
  pthread_join(th, NULL);
  ck_assert_int_eq(atomic_load(&w.future_ok), 1);
  evx_executor_free(g_ex);
  evx_test_free_loop(loop);
}
END_TEST

/* evx_condition_free from a worker had no thread check: it freed the
 * condition under the loop's feet. Now it is refused and changes nothing. */
typedef struct cond_case {
  evx_condition *c;
  evx_loop *loop;
  size_t waiters_after;
  int wait_status;
  int settled;
} cond_case;

static void free_cond_work(void *arg) { evx_condition_free(((cond_case *)arg)->c); }

static void free_cond_done(void *arg, int status) {
  cond_case *cc = arg;
  ck_assert_int_eq(status, EVX_OK);
  cc->waiters_after = evx_condition_waiters(cc->c);
  evx_condition_free(cc->c); /* the loop thread's free works */
  evx_loop_stop(cc->loop);
}

static void on_wait(evx_future *f, void *arg) {
  cond_case *cc = arg;
  cc->wait_status = evx_future_status(f);
  cc->settled = 1;
}

static void submit_free_cond(void *arg) {
  ck_assert_int_eq(evx_submit(g_ex, free_cond_work, free_cond_done, arg), EVX_OK);
}

START_TEST(test_condition_free_from_worker_refused) {
  evx_loop *loop = evx_loop_new(NULL);
  evx_executor_opts eo = {.threads = 1};
  evx_executor *ex = evx_executor_new(loop, &eo);
  cond_case cc = {.c = evx_condition_new(loop), .loop = loop};
  ck_assert_ptr_nonnull(cc.c);
  evx_future *f = evx_condition_wait(cc.c, 0);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(evx_future_on_done(f, on_wait, &cc), EVX_OK);
  g_ex = ex;
  ck_assert_int_eq(evx_add_callback(loop, submit_free_cond, &cc), EVX_OK); /* see submit_misuse */
  evx_test_run(loop, 5000);
  ck_assert_uint_eq(cc.waiters_after, 1); /* the worker's free did nothing */
  evx_test_run_once(loop);                /* future callbacks run in a later iteration */
  ck_assert_int_eq(cc.settled, 1);        /* the loop's free ended the waiter */
  ck_assert_int_eq(cc.wait_status, EVX_ECLOSED);
  evx_future_release(f);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

/* The other void frees of loop-bound objects (strand, event, semaphore,
 * queue, metrics source) are refused from a worker as well: the objects stay
 * usable on the loop thread, which frees them afterwards (a double free or a
 * use after free would show in the allocation balance and the sanitizers). */
typedef struct frees_case {
  evx_loop *loop;
  evx_strand *strand;
  evx_event *event;
  evx_semaphore *sem;
  evx_queue *queue;
  evx_metrics_source *src;
  evx_future *waiter; /* on the event */
  int strand_rc;      /* a submit to the strand after the worker's free */
  int strand_done;
} frees_case;

static void nop_metrics(evx_metrics *m, void *arg) { (void)m; (void)arg; }
static void nop_work(void *arg) { (void)arg; }

static void frees_work(void *arg) {
  frees_case *fc = arg;
  evx_strand_free(fc->strand);
  evx_event_free(fc->event);
  evx_semaphore_free(fc->sem);
  evx_queue_free(fc->queue);
  evx_metrics_source_free(fc->src);
}

static void strand_job_done(void *arg, int status) {
  frees_case *fc = arg;
  ck_assert_int_eq(status, EVX_OK);
  fc->strand_done = 1;
  evx_loop_stop(fc->loop);
}

static void frees_done(void *arg, int status) {
  frees_case *fc = arg;
  ck_assert_int_eq(status, EVX_OK);
  ck_assert_int_eq(evx_future_is_done(fc->waiter), 0); /* the event still holds its waiter */
  ck_assert_uint_eq(evx_semaphore_value(fc->sem), 2);
  ck_assert_uint_eq(evx_queue_size(fc->queue), 0);
  fc->strand_rc = evx_strand_submit(fc->strand, nop_work, strand_job_done, fc);
}

static void submit_frees(void *arg) {
  ck_assert_int_eq(evx_submit(g_ex, frees_work, frees_done, arg), EVX_OK);
}

START_TEST(test_void_frees_from_worker_refused) {
  evx_loop *loop = evx_loop_new(NULL);
  evx_executor_opts eo = {.threads = 1};
  evx_executor *ex = evx_executor_new(loop, &eo);
  ck_assert_ptr_nonnull(ex);
  frees_case fc = {.loop = loop,
                   .strand = evx_strand_new(ex),
                   .event = evx_event_new(loop),
                   .sem = evx_semaphore_new(loop, 2),
                   .queue = evx_queue_new(loop, 4),
                   .src = evx_metrics_source_new(loop, nop_metrics, NULL),
                   .strand_rc = -1};
  ck_assert(fc.strand && fc.event && fc.sem && fc.queue && fc.src);
  fc.waiter = evx_event_wait(fc.event);
  ck_assert_ptr_nonnull(fc.waiter);
  g_ex = ex;
  ck_assert_int_eq(evx_add_callback(loop, submit_frees, &fc), EVX_OK); /* see submit_misuse */
  evx_test_run(loop, 5000);
  ck_assert_int_eq(fc.strand_rc, EVX_OK);
  ck_assert_int_eq(fc.strand_done, 1);
  /* The loop thread's frees work. */
  evx_strand_free(fc.strand);
  evx_event_free(fc.event);
  evx_semaphore_free(fc.sem);
  evx_queue_free(fc.queue);
  evx_metrics_source_free(fc.src);
  evx_test_run_once(loop); /* the waiter's callbacks */
  ck_assert_int_eq(evx_future_status(fc.waiter), EVX_ECLOSED);
  evx_future_release(fc.waiter);
  evx_test_assert_idle(ex);
  evx_executor_free(ex);
  evx_test_free_loop(loop);
}
END_TEST

static Suite *thread_checks_suite(void) {
  Suite *s = suite_create("thread_checks");
  TCase *tc = evx_test_tcase(s, "core", 20);
  tcase_add_test(tc, test_adopted_dispatch_refuses_worker_finish);
  tcase_add_test(tc, test_adopted_checked_when_idle);
  tcase_add_test(tc, test_owned_checked_while_running);
  tcase_add_test(tc, test_condition_free_from_worker_refused);
  tcase_add_test(tc, test_void_frees_from_worker_refused);
  return s;
}

int main(void) { return evx_test_main(thread_checks_suite()); }
