/*
 * Fuzz target: the loop-thread state machine of futures, conditions and
 * timers (future.h, condition.h, loop.h), driven by a byte program.
 *
 * Each input is a sequence of operations on 8 future slots (new, resolve,
 * fail, cancel, on_done, all, with_timeout, ref, release, take), a
 * condition (wait, notify, free), 0 ms timers and loop steps. Checked:
 *  - no crash, no use-after-free, no leak (ASan/LSan, or valgrind on replay);
 *  - settle calls succeed exactly when the future was pending;
 *  - every on_done callback runs exactly once, only after its future is done,
 *    and never inside the call that registered it or settled the future;
 *  - once everything that feeds the futures has settled (the futures we
 *    created are settled by us, the condition is freed), every callback ran.
 * The single-owner rule the last point relies on: whoever creates a future
 * with evx_future_new settles it; combinators (all, with_timeout) hold
 * references until their inputs settle.
 */
#include <event2/event.h>
#include <evexec/evexec.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

#define NSLOT 8
#define MAX_ROOTS 64
#define MAX_TOKENS 256
#define MAX_OPS 512

typedef struct fz fz;

typedef struct token {
  fz *z;
  evx_future *f;
  int ran;
} token;

typedef struct tslot {
  fz *z;
  evx_timer *t; /* pending handle, NULL once fired or cancelled */
} tslot;

struct fz {
  evx_loop *loop;
  evx_condition *cond;
  evx_future *slot[NSLOT]; /* each holds one reference */
  evx_future *roots[MAX_ROOTS];
  size_t nroots; /* evx_future_new results; we hold an extra reference and settle them at the end */
  token tokens[MAX_TOKENS];
  size_t ntokens;
  tslot timers[NSLOT];
  int in_call; /* non-zero while inside an evexec call made by the program */
  const uint8_t *p, *end;
};

static uint8_t next(fz *z) { return z->p < z->end ? *z->p++ : 0; }

static void on_done_cb(evx_future *f, void *arg) {
  token *t = arg;
  EVX_FUZZ_CHECK(!t->z->in_call); /* never inside on_done/resolve/fail/cancel */
  EVX_FUZZ_CHECK(t->f == f);
  EVX_FUZZ_CHECK(!t->ran);
  EVX_FUZZ_CHECK(evx_future_is_done(f));
  int st = evx_future_status(f);
  EVX_FUZZ_CHECK(st <= EVX_OK); /* resolved, or failed with the code it was given */
  t->ran = 1;
}

static void timer_cb(void *arg) {
  tslot *ts = arg;
  EVX_FUZZ_CHECK(ts->t != NULL);
  ts->t = NULL;
}

static void set_slot(fz *z, unsigned i, evx_future *f) {
  evx_future_release(z->slot[i]);
  z->slot[i] = f;
}

static void step(fz *z) {
  /* One non-blocking pass: due timers, deferred future callbacks, the
   * callback queue. The loop is not "running", so this thread may use it. */
  event_base_loop(evx_loop_base(z->loop), EVLOOP_NONBLOCK);
}

static int settle_expect(evx_future *f) { return evx_future_is_done(f) ? EVX_EINVAL : EVX_OK; }

static void run_op(fz *z, uint8_t op) {
  uint8_t a = next(z);
  unsigned i = a % NSLOT;
  evx_future *f = z->slot[i];
  switch (op % 17) {
  case 0: { /* new */
    evx_future *n = evx_future_new(z->loop);
    EVX_FUZZ_CHECK(n && evx_future_status(n) == EVX_PENDING);
    if (z->nroots < MAX_ROOTS) z->roots[z->nroots++] = evx_future_ref(n);
    else (void)evx_future_fail(n, EVX_ECLOSED); /* no owner left to settle it later */
    set_slot(z, i, n);
    break;
  }
  case 1: { /* resolve with an owned result */
    if (!f) break;
    int want = settle_expect(f);
    char *r = malloc(1 + a % 32);
    EVX_FUZZ_CHECK(r);
    z->in_call = 1;
    int rc = evx_future_resolve(f, r, free);
    z->in_call = 0;
    EVX_FUZZ_CHECK(rc == want);
    if (rc != EVX_OK) free(r); /* the caller keeps ownership on failure */
    else EVX_FUZZ_CHECK(evx_future_result(f) == r || evx_future_result(f) == NULL);
    break;
  }
  case 2: { /* fail */
    if (!f) break;
    int want = settle_expect(f);
    z->in_call = 1;
    int rc = evx_future_fail(f, -(int)(1 + a / NSLOT % 8));
    z->in_call = 0;
    EVX_FUZZ_CHECK(rc == want);
    EVX_FUZZ_CHECK(evx_future_fail(f, 1) == EVX_EINVAL);
    break;
  }
  case 3: { /* cancel */
    if (!f) break;
    int want = settle_expect(f);
    z->in_call = 1;
    int rc = evx_future_cancel(f);
    z->in_call = 0;
    EVX_FUZZ_CHECK(rc == want);
    if (rc == EVX_OK) EVX_FUZZ_CHECK(evx_future_status(f) == EVX_ECANCELED);
    break;
  }
  case 4: { /* on_done */
    if (!f || z->ntokens == MAX_TOKENS) break;
    token *t = &z->tokens[z->ntokens++];
    *t = (token){.z = z, .f = f};
    z->in_call = 1;
    EVX_FUZZ_CHECK(evx_future_on_done(f, on_done_cb, t) == EVX_OK);
    z->in_call = 0;
    EVX_FUZZ_CHECK(!t->ran);
    break;
  }
  case 5: { /* all over the slots in a bit mask */
    uint8_t mask = next(z);
    evx_future *in[NSLOT];
    size_t n = 0;
    for (unsigned k = 0; k < NSLOT; k++)
      if ((mask >> k & 1) && z->slot[k]) in[n++] = z->slot[k];
    evx_future *out = evx_future_all(z->loop, in, n);
    EVX_FUZZ_CHECK(out);
    if (n == 0) EVX_FUZZ_CHECK(evx_future_status(out) == EVX_OK);
    set_slot(z, i, out);
    break;
  }
  case 6: { /* with_timeout: 0 ms fires on a later step, 60 s never within one input */
    if (!f) break;
    evx_future *out = evx_future_with_timeout(f, (a & 0x80) ? 0 : 60000);
    EVX_FUZZ_CHECK(out);
    set_slot(z, next(z) % NSLOT, out);
    break;
  }
  case 7: /* release */
    set_slot(z, i, NULL);
    break;
  case 8: { /* take the result */
    if (!f) break;
    void *r = evx_future_take(f);
    if (evx_future_status(f) != EVX_OK) EVX_FUZZ_CHECK(r == NULL);
    EVX_FUZZ_CHECK(evx_future_result(f) == NULL);
    free(r);
    break;
  }
  case 9:
  case 10: /* steps are common: they are what runs callbacks */
    step(z);
    break;
  case 11: { /* condition wait: no timeout, or one that never fires here */
    if (!z->cond) z->cond = evx_condition_new(z->loop);
    EVX_FUZZ_CHECK(z->cond);
    size_t before = evx_condition_waiters(z->cond);
    evx_future *w = evx_condition_wait(z->cond, (a & 0x80) ? 60000 : 0);
    EVX_FUZZ_CHECK(w && evx_condition_waiters(z->cond) == before + 1);
    set_slot(z, next(z) % NSLOT, w);
    break;
  }
  case 12: { /* notify n */
    if (!z->cond) break;
    size_t before = evx_condition_waiters(z->cond);
    size_t n = a % 4;
    int woken = evx_condition_notify(z->cond, n);
    EVX_FUZZ_CHECK(woken == (int)(before < n ? before : n));
    EVX_FUZZ_CHECK(evx_condition_waiters(z->cond) == before - (size_t)woken);
    break;
  }
  case 13: /* notify all, or free the condition (waiters fail with EVX_ECLOSED) */
    if (!z->cond) break;
    if (a & 1) {
      EVX_FUZZ_CHECK(evx_condition_notify_all(z->cond) >= 0);
      EVX_FUZZ_CHECK(evx_condition_waiters(z->cond) == 0);
    } else {
      evx_condition_free(z->cond);
      z->cond = NULL;
    }
    break;
  case 14: { /* another reference in another slot */
    if (!f) break;
    set_slot(z, next(z) % NSLOT, evx_future_ref(f));
    break;
  }
  case 15: { /* 0 ms timer, or cancel the pending one */
    tslot *ts = &z->timers[i];
    if (ts->t) {
      EVX_FUZZ_CHECK(evx_timer_cancel(ts->t) == EVX_OK);
      ts->t = NULL;
    } else {
      ts->z = z;
      ts->t = evx_call_later(z->loop, 0, timer_cb, ts);
      EVX_FUZZ_CHECK(ts->t);
    }
    break;
  }
  case 16: { /* consistency of the accessors */
    if (!f) break;
    int st = evx_future_status(f);
    EVX_FUZZ_CHECK(evx_future_is_done(f) == (st != EVX_PENDING));
    if (st != EVX_OK) EVX_FUZZ_CHECK(evx_future_result(f) == NULL);
    EVX_FUZZ_CHECK(evx_future_loop(f) == z->loop);
    break;
  }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz *z = calloc(1, sizeof *z);
  if (!z) return 0;
  z->p = data;
  z->end = data + size;
  z->loop = evx_loop_new(NULL);
  EVX_FUZZ_CHECK(z->loop);
  for (int ops = 0; z->p < z->end && ops < MAX_OPS; ops++) run_op(z, next(z));

  /* Settle what we own, then let everything drain. */
  for (size_t k = 0; k < z->nroots; k++) {
    if (!evx_future_is_done(z->roots[k])) EVX_FUZZ_CHECK(evx_future_fail(z->roots[k], EVX_ECLOSED) == EVX_OK);
    evx_future_release(z->roots[k]);
  }
  evx_condition_free(z->cond);
  for (unsigned k = 0; k < NSLOT; k++) set_slot(z, k, NULL);
  for (unsigned k = 0; k < NSLOT; k++)
    if (z->timers[k].t) EVX_FUZZ_CHECK(evx_timer_cancel(z->timers[k].t) == EVX_OK);
  evx_loop_free(z->loop); /* runs the deferred callbacks still queued */
  for (size_t k = 0; k < z->ntokens; k++) EVX_FUZZ_CHECK(z->tokens[k].ran);
  free(z);
  return 0;
}
