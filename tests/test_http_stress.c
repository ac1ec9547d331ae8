/* 10,000 requests, each running a job on the pool; the clients of a third of
 * them disconnect while their job runs. Every job's `done` must run exactly
 * once, every leaver must be noticed (on_close, finish -> EVX_EGONE), every
 * stayer must get its own answer, and every request must be released. Run
 * under ASan+UBSan (make test-asan) this is the leak and use-after-free
 * check for the disconnect path.
 *
 * Determinism: a leaver's job waits (on its worker thread) until the loop
 * noticed the disconnect, so "the client left while the job ran" is what
 * happens every time, not a timing accident. */
#include "test_http_util.h"

#include <event2/event.h>
#include <malloc.h>
#include <stdatomic.h>

/* Counting allocators for evexec (evx_set_allocator) and libevent
 * (event_set_mem_functions): "memory back to baseline" is checked exactly,
 * block by block, for everything the server allocates. */
static atomic_long blocks, bytes;

static void *cnt_malloc(size_t n) {
  void *p = malloc(n);
  if (p) {
    atomic_fetch_add(&blocks, 1);
    atomic_fetch_add(&bytes, (long)malloc_usable_size(p));
  }
  return p;
}
static void *cnt_calloc(size_t c, size_t n) {
  void *p = calloc(c, n);
  if (p) {
    atomic_fetch_add(&blocks, 1);
    atomic_fetch_add(&bytes, (long)malloc_usable_size(p));
  }
  return p;
}
static void *cnt_realloc(void *old, size_t n) {
  long before = old ? (long)malloc_usable_size(old) : 0;
  void *p = realloc(old, n);
  if (!p) return NULL; /* old is untouched (n > 0 in evexec and libevent) */
  if (!old) atomic_fetch_add(&blocks, 1);
  atomic_fetch_add(&bytes, (long)malloc_usable_size(p) - before);
  return p;
}
static void cnt_free(void *p) {
  if (!p) return;
  atomic_fetch_sub(&blocks, 1);
  atomic_fetch_sub(&bytes, (long)malloc_usable_size(p));
  free(p);
}

#define NREQ 10000
#define NCLIENTS 4

static tc_fixture F;
static evx_executor *EX;

typedef struct ctx {
  evx_request *req;
  sem_t entered; /* leaver: the job started */
  sem_t noticed; /* leaver: the loop saw the client leave */
  int leave;
  int close_calls;
  int done_calls;
  int done_status;
  int finish_rc;
  int wait_failed;
  int client_ok; /* stayer: right status and body; leaver: its job started */
} ctx;

static ctx C[NREQ];
static int dispatched;
static int nreq = NREQ; /* this round */

static int is_leaver(int id) { return id % 3 == 0; }

static void job_work(void *arg) {
  ctx *c = arg;
  if (!c->leave) return;
  sem_post(&c->entered);
  if (tc_sem_wait(&c->noticed) != 0) c->wait_failed = 1;
}

static void job_done(void *arg, int status) {
  ctx *c = arg;
  c->done_calls++;
  c->done_status = status;
  int id = (int)(c - C);
  c->finish_rc = evx_request_finishf(c->req, 200, NULL, "id %d", id);
}

static void job_left(evx_request *req, void *arg) {
  (void)req;
  ctx *c = arg;
  c->close_calls++;
  sem_post(&c->noticed);
}

static void h_job(evx_request *req, void *arg) {
  (void)arg;
  const char *ids = evx_request_query(req, "id");
  int id = ids ? atoi(ids) : -1;
  if (id < 0 || id >= nreq || C[id].req) {
    evx_request_finish(req, 400, NULL, "bad id", 6);
    return;
  }
  ctx *c = &C[id];
  c->req = req;
  dispatched++;
  int rc = evx_submit(EX, job_work, job_done, c);
  if (rc != EVX_OK) {
    evx_request_reply_busy(req, 1);
    return;
  }
  evx_request_on_close(req, job_left, c);
}

static void *one_client(void *arg) {
  int per_client = nreq / NCLIENTS;
  int base = (int)(intptr_t)arg * per_client;
  int ka = -1;
  tc_conn *kc = malloc(sizeof *kc);
  char raw[128];
  for (int i = 0; i < per_client; i++) {
    int id = base + i;
    snprintf(raw, sizeof raw, "GET /job?id=%d HTTP/1.1\r\nHost: t\r\n\r\n", id);
    if (is_leaver(id)) {
      int fd = tc_connect(F.port);
      if (fd < 0 || tc_send(fd, raw) != 0) continue;
      if (tc_sem_wait(&C[id].entered) == 0) C[id].client_ok = 1;
      close(fd); /* while the job runs */
    } else {
      /* stayers share one keep-alive connection per client thread */
      if (ka < 0) {
        ka = tc_connect(F.port);
        tc_conn_init(kc, ka);
      }
      tc_resp r;
      if (tc_send(ka, raw) == 0 && tc_read_resp(kc, &r, 0) == 0) {
        char want[32];
        snprintf(want, sizeof want, "id %d", id);
        C[id].client_ok = r.status == 200 && strcmp(r.body, want) == 0;
        tc_resp_free(&r);
      } else {
        close(ka);
        ka = -1;
      }
    }
  }
  if (ka >= 0) close(ka);
  free(kc);
  return NULL;
}

static int all_done;
static uint64_t live_at_end;

static void count_done(void *arg) {
  (void)arg;
  int n = 0;
  for (int i = 0; i < nreq; i++) n += C[i].done_calls;
  all_done = n == nreq;
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  live_at_end = st.live;
}

static void *coordinator(void *arg) {
  (void)arg;
  pthread_t t[NCLIENTS];
  for (intptr_t i = 0; i < NCLIENTS; i++) pthread_create(&t[i], NULL, one_client, (void *)i);
  for (int i = 0; i < NCLIENTS; i++) pthread_join(t[i], NULL);
  for (int i = 0; i < 5000; i++) {
    tc_on_loop(F.loop, count_done, NULL);
    if (all_done && live_at_end == 0) break;
    tc_sleep_ms(2);
  }
  evx_loop_stop(F.loop);
  return NULL;
}

/* One full round of n requests: server, pool, clients, checks, teardown. */
static void run_round(int n) {
  nreq = n;
  dispatched = 0;
  memset(C, 0, sizeof C);
  for (int i = 0; i < n; i++) {
    sem_init(&C[i].entered, 0, 0);
    sem_init(&C[i].noticed, 0, 0);
    C[i].leave = is_leaver(i);
  }
  tc_fixture_init(&F, NULL);
  EX = evx_executor_new(F.loop, &(evx_executor_opts){.threads = 4});
  ck_assert_ptr_nonnull(EX);
  evx_http_route(F.http, "GET", "/job", 0, h_job, NULL);
  tc_fixture_bind(&F);
  /* the counting allocators see the server (else the check below proves nothing) */
  ck_assert_int_gt(atomic_load(&blocks), 10);
  uint64_t t0 = evx_now_ns();
  tc_fixture_run(&F, coordinator, NULL);
  double secs = (double)(evx_now_ns() - t0) / 1e9;

  int leavers = 0, bad = 0;
  for (int i = 0; i < n; i++) {
    ctx *c = &C[i];
    int ok = c->done_calls == 1 && c->done_status == EVX_OK && c->client_ok && !c->wait_failed;
    if (c->leave) {
      leavers++;
      ok = ok && c->close_calls == 1 && c->finish_rc == EVX_EGONE;
    } else {
      ok = ok && c->close_calls == 0 && c->finish_rc == EVX_OK;
    }
    if (!ok && bad++ < 5)
      fprintf(stderr, "request %d: leave=%d done=%d/%d close=%d finish=%s client_ok=%d wait_failed=%d\n",
              i, c->leave, c->done_calls, c->done_status, c->close_calls,
              evx_err_name(c->finish_rc), c->client_ok, c->wait_failed);
  }
  ck_assert_int_eq(dispatched, n);
  ck_assert_int_eq(bad, 0);
  evx_http_stats st;
  evx_http_stats_get(F.http, &st);
  ck_assert_uint_eq(st.requests, (uint64_t)n);
  ck_assert_uint_eq(st.gone, (uint64_t)leavers);
  ck_assert_uint_eq(st.status[2], (uint64_t)(n - leavers));
  ck_assert_uint_eq(st.status[0], (uint64_t)leavers);
  fprintf(stderr, "stress: %d requests (%d left mid-job) in %.2f s\n", n, leavers, secs);
  evx_executor_free(EX);
  tc_fixture_done(&F); /* asserts live == 0 and evx_request_live_count() == 0 */
  for (int i = 0; i < n; i++) {
    sem_destroy(&C[i].entered);
    sem_destroy(&C[i].noticed);
  }
}

START_TEST(test_ten_thousand_with_leavers) {
  long b0 = atomic_load(&blocks), y0 = atomic_load(&bytes);
  run_round(NREQ);
  long b1 = atomic_load(&blocks), y1 = atomic_load(&bytes);
  fprintf(stderr, "stress: evexec+libevent heap: %ld blocks / %ld bytes before, %ld / %ld after\n",
          b0, y0, b1, y1);
  ck_assert_int_eq(b1, b0);
  ck_assert_int_eq(y1, y0);
}
END_TEST

static Suite *stress_suite(void) {
  Suite *s = suite_create("http_stress");
  TCase *tc = tcase_create("stress");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_ten_thousand_with_leavers);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  /* before any evexec or libevent allocation */
  event_set_mem_functions(cnt_malloc, cnt_realloc, cnt_free);
  evx_set_allocator(cnt_malloc, cnt_realloc, cnt_calloc, cnt_free);
  return evx_test_main(stress_suite());
}
