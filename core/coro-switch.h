/* PRIVATE to evexec: never installed, never included by users.
 * The machine context switch under coroutines (core/coro.c). One backend is
 * compiled in: hand-written assembly for x86-64 System V and aarch64
 * (coro-switch-x86_64.S, coro-switch-aarch64.S: save the callee-saved
 * registers on the current stack, store sp, load the other sp, restore), or
 * ucontext (coro-switch.c) on other targets and when EVX_CORO_UCONTEXT is set
 * (CMake -DEVX_CORO_UCONTEXT=ON), so CI tests both. Each context keeps its own
 * callee-saved registers and FP control (x86-64 MXCSR and x87 control word,
 * aarch64 FPCR, ucontext's FP environment). tests/test_coro_switch.c checks
 * them on every backend; make test-aarch64 runs it (and the coroutine suites)
 * on aarch64 under qemu-user. */
#ifndef EVX_CORO_SWITCH_H
#define EVX_CORO_SWITCH_H

#include <stddef.h>

#if defined(EVX_CORO_UCONTEXT) && EVX_CORO_UCONTEXT
#define EVX__CORO_UCONTEXT 1
#elif defined(__x86_64__) || defined(__aarch64__)
#define EVX__CORO_UCONTEXT 0
#else
#define EVX__CORO_UCONTEXT 1
#endif

#if EVX__CORO_UCONTEXT
#include <ucontext.h>
#endif

typedef void (*evx__ctx_entry_fn)(void *arg);

/* A suspended execution context. The asm backends keep only the stack
 * pointer (sp must stay the first member: the assembly stores and loads it at
 * offset 0); the registers live on the suspended stack itself. */
typedef struct evx__ctx {
#if EVX__CORO_UCONTEXT
  ucontext_t uc;
  evx__ctx_entry_fn entry; /* set until the first switch into the context */
  void *arg;
#else
  void *sp;
#endif
} evx__ctx;

/* Name of the backend compiled in ("x86_64", "aarch64" or "ucontext"). */
const char *evx__ctx_backend(void);

/* Prepare ctx so that the first switch to it runs entry(arg) on the stack
 * [lo, lo + size). entry must never return: it ends by switching away. */
void evx__ctx_make(evx__ctx *ctx, void *lo, size_t size, evx__ctx_entry_fn entry, void *arg);

/* Save the running context into *from and continue *to. Returns when
 * something switches back to *from. */
void evx__ctx_switch(evx__ctx *from, evx__ctx *to);

#endif
