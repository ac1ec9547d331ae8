/*
 * Context setup for the coroutine switch (see coro-switch.h): the initial
 * stack frame the assembly backends pop on the first switch, or the ucontext
 * backend in full.
 */
#include "coro-switch.h"

#include <stdint.h>
#include <stdlib.h>

#if EVX__CORO_UCONTEXT

const char *evx__ctx_backend(void) { return "ucontext"; }

/* makecontext passes only ints: the context being started is handed over
 * through this thread-local, set right before its first swapcontext. */
static _Thread_local evx__ctx *evx__ctx_starting;

static void evx__ctx_trampoline(void) {
  evx__ctx *c = evx__ctx_starting;
  evx__ctx_entry_fn entry = c->entry;
  void *arg = c->arg;
  c->entry = NULL;
  entry(arg);
  abort(); /* entry switches away for good instead of returning */
}

void evx__ctx_make(evx__ctx *ctx, void *lo, size_t size, evx__ctx_entry_fn entry, void *arg) {
  if (getcontext(&ctx->uc) != 0) abort();
  ctx->uc.uc_stack.ss_sp = lo;
  ctx->uc.uc_stack.ss_size = size;
  ctx->uc.uc_link = NULL;
  ctx->entry = entry;
  ctx->arg = arg;
  makecontext(&ctx->uc, evx__ctx_trampoline, 0);
}

void evx__ctx_switch(evx__ctx *from, evx__ctx *to) {
  if (to->entry) evx__ctx_starting = to;
  if (swapcontext(&from->uc, &to->uc) != 0) abort();
}

#else

/* In the assembly file; reached through the initial frame below. */
void evx__ctx_start(void);

#if defined(__x86_64__)
const char *evx__ctx_backend(void) { return "x86_64"; }

void evx__ctx_make(evx__ctx *ctx, void *lo, size_t size, evx__ctx_entry_fn entry, void *arg) {
  uintptr_t top = ((uintptr_t)lo + size) & ~(uintptr_t)15;
  uint64_t *sp = (uint64_t *)top;
  *--sp = 0;                            /* entry's return address: none */
  *--sp = (uintptr_t)evx__ctx_start;    /* popped by ret */
  *--sp = 0;                            /* rbp */
  *--sp = 0;                            /* rbx */
  *--sp = (uintptr_t)arg;               /* r12 */
  *--sp = (uintptr_t)entry;             /* r13 */
  *--sp = 0;                            /* r14 */
  *--sp = 0;                            /* r15 */
  *--sp = 0x1F80u | ((uint64_t)0x037Fu << 32); /* default mxcsr, x87 control word */
  ctx->sp = sp;
}
#elif defined(__aarch64__)
const char *evx__ctx_backend(void) { return "aarch64"; }

/* The frame evx__ctx_switch pops (layout in coro-switch-aarch64.S): zero
 * registers, x19 = arg, x20 = entry, x30 = evx__ctx_start, x29 = 0 (the frame
 * chain ends), FPCR = 0 (round to nearest, no flush-to-zero: a new context
 * starts with the default FP control, as on x86-64). sp lands on the 16-byte
 * aligned top. */
void evx__ctx_make(evx__ctx *ctx, void *lo, size_t size, evx__ctx_entry_fn entry, void *arg) {
  uintptr_t top = ((uintptr_t)lo + size) & ~(uintptr_t)15;
  uint64_t *sp = (uint64_t *)(top - 176);
  for (int i = 0; i < 22; i++) sp[i] = 0;
  sp[0] = (uintptr_t)arg;              /* x19 */
  sp[1] = (uintptr_t)entry;            /* x20 */
  sp[11] = (uintptr_t)evx__ctx_start;  /* x30: where the switch returns to */
  ctx->sp = sp;
}
#endif

#endif
