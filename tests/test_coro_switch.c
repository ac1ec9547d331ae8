/* The machine context switch under coroutines (core/coro-switch.h), driven
 * directly: the backend compiled in, a first entry with its argument on a
 * 16-byte aligned stack top, many switches between two contexts and between
 * two coroutines, deep recursion with switches from deep frames, every
 * callee-saved register (x19-x29, d8-d15, sp on aarch64; rbx, rbp, r12-r15,
 * rsp on x86-64) filled with a pattern by hand-written probes on both sides
 * and checked after each switch, the floating-point rounding mode kept per
 * context, a chain of contexts, a stack reused, and an entry that returns
 * killing the process. Built twice: `coro_switch` (the assembly switch where
 * there is one; make test-aarch64 runs it under qemu-user) and
 * `coro_switch_ucontext`. */
#include <fcntl.h>
#include <fenv.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "coro-switch.h"
#include "evx_test.h"

#if defined(__SANITIZE_ADDRESS__)
#define T_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define T_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define T_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define T_TSAN 1
#endif
#endif
#ifdef T_ASAN
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef T_TSAN
#include <sanitizer/tsan_interface.h>
#endif
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define T_VALGRIND 1
#endif
#endif

/* ---- probes: hand-written callers of evx__ctx_switch ---------------------
 * evx_test_probe(from, to, seed, out) fills every callee-saved register with
 * seed + a per-register constant, calls evx__ctx_switch(from, to), and when
 * the switch returns stores what the registers hold into out (layout below),
 * restores its caller's registers and returns. out[19] = sp before the call,
 * out[20] = sp after it.
 * evx_test_caller_sp() returns the stack pointer at its call instruction
 * (which the ABI requires to be 16-byte aligned on both targets). */
#define PROBE_WORDS 21
void evx_test_probe(evx__ctx *from, evx__ctx *to, uint64_t seed, uint64_t *out);
uintptr_t evx_test_caller_sp(void);

#if defined(__aarch64__)
#define HAVE_PROBE 1
/* out[0..9] = x19..x28 (seed+19..seed+28), out[10] = x29 (seed+29),
 * out[11..18] = d8..d15 (bits seed+8..seed+15). */
__asm__(".text\n"
        ".p2align 2\n"
        ".type evx_test_probe, %function\n"
        "evx_test_probe:\n"
        "  stp x29, x30, [sp, #-176]!\n"
        "  stp x19, x20, [sp, #16]\n"
        "  stp x21, x22, [sp, #32]\n"
        "  stp x23, x24, [sp, #48]\n"
        "  stp x25, x26, [sp, #64]\n"
        "  stp x27, x28, [sp, #80]\n"
        "  stp d8, d9, [sp, #96]\n"
        "  stp d10, d11, [sp, #112]\n"
        "  stp d12, d13, [sp, #128]\n"
        "  stp d14, d15, [sp, #144]\n"
        "  str x3, [sp, #160]\n"
        "  mov x4, sp\n"
        "  str x4, [x3, #152]\n"
        "  add x19, x2, #19\n"
        "  add x20, x2, #20\n"
        "  add x21, x2, #21\n"
        "  add x22, x2, #22\n"
        "  add x23, x2, #23\n"
        "  add x24, x2, #24\n"
        "  add x25, x2, #25\n"
        "  add x26, x2, #26\n"
        "  add x27, x2, #27\n"
        "  add x28, x2, #28\n"
        "  add x29, x2, #29\n"
        "  add x4, x2, #8\n  fmov d8, x4\n"
        "  add x4, x2, #9\n  fmov d9, x4\n"
        "  add x4, x2, #10\n  fmov d10, x4\n"
        "  add x4, x2, #11\n  fmov d11, x4\n"
        "  add x4, x2, #12\n  fmov d12, x4\n"
        "  add x4, x2, #13\n  fmov d13, x4\n"
        "  add x4, x2, #14\n  fmov d14, x4\n"
        "  add x4, x2, #15\n  fmov d15, x4\n"
        "  bl evx__ctx_switch\n"
        "  ldr x3, [sp, #160]\n"
        "  stp x19, x20, [x3, #0]\n"
        "  stp x21, x22, [x3, #16]\n"
        "  stp x23, x24, [x3, #32]\n"
        "  stp x25, x26, [x3, #48]\n"
        "  stp x27, x28, [x3, #64]\n"
        "  str x29, [x3, #80]\n"
        "  stp d8, d9, [x3, #88]\n"
        "  stp d10, d11, [x3, #104]\n"
        "  stp d12, d13, [x3, #120]\n"
        "  stp d14, d15, [x3, #136]\n"
        "  mov x4, sp\n"
        "  str x4, [x3, #160]\n"
        "  ldp x19, x20, [sp, #16]\n"
        "  ldp x21, x22, [sp, #32]\n"
        "  ldp x23, x24, [sp, #48]\n"
        "  ldp x25, x26, [sp, #64]\n"
        "  ldp x27, x28, [sp, #80]\n"
        "  ldp d8, d9, [sp, #96]\n"
        "  ldp d10, d11, [sp, #112]\n"
        "  ldp d12, d13, [sp, #128]\n"
        "  ldp d14, d15, [sp, #144]\n"
        "  ldp x29, x30, [sp], #176\n"
        "  ret\n"
        ".size evx_test_probe, .-evx_test_probe\n"
        ".p2align 2\n"
        ".type evx_test_caller_sp, %function\n"
        "evx_test_caller_sp:\n"
        "  mov x0, sp\n"
        "  ret\n"
        ".size evx_test_caller_sp, .-evx_test_caller_sp\n");

static int probe_check(const uint64_t *out, uint64_t seed, char *why, size_t n) {
  for (int i = 0; i <= 10; i++)
    if (out[i] != seed + 19 + (uint64_t)i) {
      snprintf(why, n, "x%d = %#llx, want %#llx", 19 + i, (unsigned long long)out[i],
               (unsigned long long)(seed + 19 + (uint64_t)i));
      return 0;
    }
  for (int i = 0; i < 8; i++)
    if (out[11 + i] != seed + 8 + (uint64_t)i) {
      snprintf(why, n, "d%d = %#llx, want %#llx", 8 + i, (unsigned long long)out[11 + i],
               (unsigned long long)(seed + 8 + (uint64_t)i));
      return 0;
    }
  if (out[19] != out[20]) {
    snprintf(why, n, "sp %#llx after the switch, %#llx before", (unsigned long long)out[20],
             (unsigned long long)out[19]);
    return 0;
  }
  return 1;
}
#elif defined(__x86_64__)
#define HAVE_PROBE 1
/* out[0..5] = rbx, rbp, r12, r13, r14, r15 (seed+1..seed+6). */
__asm__(".text\n"
        ".p2align 4\n"
        ".type evx_test_probe, @function\n"
        "evx_test_probe:\n"
        "  pushq %rbp\n"
        "  pushq %rbx\n"
        "  pushq %r12\n"
        "  pushq %r13\n"
        "  pushq %r14\n"
        "  pushq %r15\n"
        "  pushq %rcx\n" /* 7 pushes: rsp is 16-byte aligned for the call */
        "  movq %rsp, 152(%rcx)\n"
        "  leaq 1(%rdx), %rbx\n"
        "  leaq 2(%rdx), %rbp\n"
        "  leaq 3(%rdx), %r12\n"
        "  leaq 4(%rdx), %r13\n"
        "  leaq 5(%rdx), %r14\n"
        "  leaq 6(%rdx), %r15\n"
        "  call evx__ctx_switch\n"
        "  movq (%rsp), %rcx\n"
        "  movq %rbx, 0(%rcx)\n"
        "  movq %rbp, 8(%rcx)\n"
        "  movq %r12, 16(%rcx)\n"
        "  movq %r13, 24(%rcx)\n"
        "  movq %r14, 32(%rcx)\n"
        "  movq %r15, 40(%rcx)\n"
        "  movq %rsp, 160(%rcx)\n"
        "  popq %rcx\n"
        "  popq %r15\n"
        "  popq %r14\n"
        "  popq %r13\n"
        "  popq %r12\n"
        "  popq %rbx\n"
        "  popq %rbp\n"
        "  ret\n"
        ".size evx_test_probe, .-evx_test_probe\n"
        ".p2align 4\n"
        ".type evx_test_caller_sp, @function\n"
        "evx_test_caller_sp:\n"
        "  leaq 8(%rsp), %rax\n"
        "  ret\n"
        ".size evx_test_caller_sp, .-evx_test_caller_sp\n");

static int probe_check(const uint64_t *out, uint64_t seed, char *why, size_t n) {
  static const char *const names[] = {"rbx", "rbp", "r12", "r13", "r14", "r15"};
  for (int i = 0; i < 6; i++)
    if (out[i] != seed + 1 + (uint64_t)i) {
      snprintf(why, n, "%s = %#llx, want %#llx", names[i], (unsigned long long)out[i],
               (unsigned long long)(seed + 1 + (uint64_t)i));
      return 0;
    }
  if (out[19] != out[20]) {
    snprintf(why, n, "rsp %#llx after the switch, %#llx before", (unsigned long long)out[20],
             (unsigned long long)out[19]);
    return 0;
  }
  return 1;
}
#endif

/* ---- fibers: a context, its stack, and what the sanitizers are told ------
 * Like core/coro.c: every switch is announced to ASan (stack bounds, fake
 * stack) and TSan (fibers), and every stack is registered with valgrind. The
 * main fiber is the test's own stack; ASan tells its bounds on the first
 * switch away from it. */
typedef struct fiber {
  evx__ctx ctx;
  void *map; /* NULL for the main fiber */
  size_t map_size;
  char *lo; /* the stack: [lo, lo + size) */
  size_t size;
  void *fake; /* ASan's fake stack while suspended */
#ifdef T_TSAN
  void *tsan;
#endif
#ifdef T_VALGRIND
  unsigned vg;
#endif
} fiber;

static fiber g_main;
static fiber *g_leaving; /* the fiber the switch in flight leaves */

static void fiber_main_init(void) {
  memset(&g_main, 0, sizeof g_main);
#ifdef T_TSAN
  g_main.tsan = __tsan_get_current_fiber();
#endif
}

/* A stack of `size` bytes over a guard page; evx__ctx_make gets size - trim
 * bytes of it, so a trim that is not a multiple of 16 leaves a stack top
 * evx__ctx_make must align down itself. */
static void fiber_new(fiber *f, size_t size, size_t trim, evx__ctx_entry_fn entry, void *arg) {
  memset(f, 0, sizeof *f);
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  size = (size + page - 1) / page * page;
  f->map_size = size + page;
  f->map = mmap(NULL, f->map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ck_assert_ptr_ne(f->map, MAP_FAILED);
  ck_assert_int_eq(mprotect(f->map, page, PROT_NONE), 0);
  f->lo = (char *)f->map + page;
  f->size = size;
#ifdef T_TSAN
  f->tsan = __tsan_create_fiber(0);
#endif
#ifdef T_VALGRIND
  f->vg = VALGRIND_STACK_REGISTER(f->lo, f->lo + size);
#endif
  evx__ctx_make(&f->ctx, f->lo, size - trim, entry, arg);
}

/* f must have ended (switched away for good) or never have been entered. */
static void fiber_free(fiber *f) {
#ifdef T_VALGRIND
  VALGRIND_STACK_DEREGISTER(f->vg);
#endif
#ifdef T_TSAN
  __tsan_destroy_fiber(f->tsan);
#endif
  ck_assert_int_eq(munmap(f->map, f->map_size), 0);
}

/* Around every evx__ctx_switch(&from->ctx, &to->ctx). `last`: from never
 * runs again (its stack ends). */
static void before_switch(fiber *from, fiber *to, int last) {
  g_leaving = from;
#ifdef T_ASAN
  __sanitizer_start_switch_fiber(last ? NULL : &from->fake, to->lo, to->size);
#else
  (void)last;
#endif
#ifdef T_TSAN
  __tsan_switch_to_fiber(to->tsan, 0);
#else
  (void)to;
#endif
}

/* First thing on self's stack after a switch into it, its first entry too. */
static void arrived(fiber *self) {
#ifdef T_ASAN
  const void *bottom;
  size_t size;
  __sanitizer_finish_switch_fiber(self->fake, &bottom, &size);
  if (g_leaving && !g_leaving->lo) { /* the main stack: now we know it */
    g_leaving->lo = (char *)(uintptr_t)bottom;
    g_leaving->size = size;
  }
#else
  (void)self;
#endif
}

static void sw(fiber *from, fiber *to) {
  before_switch(from, to, 0);
  evx__ctx_switch(&from->ctx, &to->ctx);
  arrived(from);
}

static void sw_last(fiber *from, fiber *to) {
  before_switch(from, to, 1);
  evx__ctx_switch(&from->ctx, &to->ctx);
  abort(); /* an ended fiber is never resumed */
}

/* ---- the backend -------------------------------------------------------- */

START_TEST(test_backend) {
#if defined(EVX_CORO_UCONTEXT) && EVX_CORO_UCONTEXT
  const char *want = "ucontext";
#elif defined(__aarch64__)
  const char *want = "aarch64";
#elif defined(__x86_64__)
  const char *want = "x86_64";
#else
  const char *want = "ucontext";
#endif
  ck_assert_str_eq(evx__ctx_backend(), want);
}
END_TEST

/* ---- first entry ---------------------------------------------------------- */

typedef struct first {
  fiber f;
  void *arg_seen;
  uintptr_t sp;
  int runs;
} first;

static void first_entry(void *arg) {
  first *t = arg;
  arrived(&t->f);
  t->arg_seen = arg;
  t->sp = evx_test_caller_sp();
  t->runs++;
  sw_last(&t->f, &g_main);
}

START_TEST(test_first_entry) {
  fiber_main_init();
  for (size_t trim = 0; trim < 64; trim += 8) {
    first t = {.runs = 0};
    fiber_new(&t.f, 64 * 1024, trim, first_entry, &t);
    ck_assert_int_eq(t.runs, 0); /* evx__ctx_make runs nothing */
    sw(&g_main, &t.f);
    ck_assert_int_eq(t.runs, 1);
    ck_assert_ptr_eq(t.arg_seen, &t);
    ck_assert_msg(t.sp % 16 == 0, "trim %zu: sp %#lx in entry is not 16-byte aligned", trim,
                  (unsigned long)t.sp);
    ck_assert_msg(t.sp > (uintptr_t)t.f.lo && t.sp <= (uintptr_t)t.f.lo + t.f.size - trim,
                  "trim %zu: entry ran on sp %#lx, not on its stack", trim, (unsigned long)t.sp);
    ck_assert_msg((uintptr_t)t.f.lo + t.f.size - trim - t.sp < 1024,
                  "trim %zu: entry starts %lu bytes below the top", trim,
                  (unsigned long)((uintptr_t)t.f.lo + t.f.size - trim - t.sp));
    fiber_free(&t.f);
  }
}
END_TEST

/* ---- many switches -------------------------------------------------------- */

#define PINGS 100000

typedef struct ping {
  fiber a, b;
  long counter;
  long bad; /* first round whose counter was off, + 1 */
  double fsum;
} ping;

/* main <-> a, PINGS round trips; live doubles on both sides (the compiler
 * keeps them in callee-saved FP registers across the calls). */
static void pong_entry(void *arg) {
  ping *p = arg;
  arrived(&p->a);
  double mine = 0;
  for (long i = 0; i < PINGS; i++) {
    if (p->counter != 2 * i + 1 && !p->bad) p->bad = i + 1;
    p->counter++;
    mine += 0.25;
    sw(&p->a, &g_main);
  }
  p->fsum = mine;
  sw_last(&p->a, &g_main);
}

START_TEST(test_many_switches_main) {
  fiber_main_init();
  ping p = {.counter = 0};
  fiber_new(&p.a, 64 * 1024, 0, pong_entry, &p);
  double mine = 0;
  for (long i = 0; i < PINGS; i++) {
    ck_assert_int_eq(p.counter, 2 * i);
    p.counter++;
    mine += 0.5;
    sw(&g_main, &p.a);
  }
  p.counter++;
  sw(&g_main, &p.a); /* a ends */
  ck_assert_int_eq(p.bad, 0);
  ck_assert_int_eq(p.counter, 2 * PINGS + 1);
  ck_assert(mine == 0.5 * PINGS);
  ck_assert(p.fsum == 0.25 * PINGS);
  fiber_free(&p.a);
}
END_TEST

/* a <-> b, PINGS round trips between two coroutines; b ends into a, a into main. */
static void ab_a(void *arg) {
  ping *p = arg;
  arrived(&p->a);
  for (long i = 0; i < PINGS; i++) {
    if (p->counter != 2 * i && !p->bad) p->bad = i + 1;
    p->counter++;
    sw(&p->a, &p->b);
  }
  p->counter++;
  sw(&p->a, &p->b); /* b ends and comes back here */
  sw_last(&p->a, &g_main);
}

static void ab_b(void *arg) {
  ping *p = arg;
  arrived(&p->b);
  for (long i = 0; i < PINGS; i++) {
    if (p->counter != 2 * i + 1 && !p->bad) p->bad = i + 1;
    p->counter++;
    sw(&p->b, &p->a);
  }
  sw_last(&p->b, &p->a);
}

START_TEST(test_many_switches_between_coroutines) {
  fiber_main_init();
  ping p = {.counter = 0};
  fiber_new(&p.a, 64 * 1024, 0, ab_a, &p);
  fiber_new(&p.b, 64 * 1024, 0, ab_b, &p);
  sw(&g_main, &p.a);
  ck_assert_int_eq(p.bad, 0);
  ck_assert_int_eq(p.counter, 2 * PINGS + 1);
  fiber_free(&p.a);
  fiber_free(&p.b);
}
END_TEST

/* ---- deep recursion ------------------------------------------------------- */

#define DEEP_LEVELS 4000
#define DEEP_EVERY 250

typedef struct deep {
  fiber f;
  int level; /* where the last switch to main came from */
  int done;
  long sum;
  uintptr_t lowest_sp;
} deep;

__attribute__((noinline)) static long deep_call(deep *d, int level) {
  volatile char pad[96];
  pad[0] = (char)level;
  pad[95] = (char)(level >> 3);
  long below = 0;
  if (level % DEEP_EVERY == 0 || level == DEEP_LEVELS) {
    uintptr_t sp = evx_test_caller_sp();
    if (!d->lowest_sp || sp < d->lowest_sp) d->lowest_sp = sp;
    d->level = level;
    sw(&d->f, &g_main); /* suspend from deep inside the recursion */
  }
  if (level < DEEP_LEVELS) below = deep_call(d, level + 1);
  /* pad survived the switches and the calls below */
  if (pad[0] != (char)level || pad[95] != (char)(level >> 3)) return -1000000000L;
  return below + level;
}

static void deep_entry(void *arg) {
  deep *d = arg;
  arrived(&d->f);
  d->sum = deep_call(d, 1);
  d->done = 1;
  sw_last(&d->f, &g_main);
}

START_TEST(test_deep_recursion) {
  fiber_main_init();
  deep d = {.level = 0};
  fiber_new(&d.f, 4 * 1024 * 1024, 0, deep_entry, &d);
  int want = DEEP_EVERY, resumes = 0;
  while (!d.done) {
    sw(&g_main, &d.f);
    if (!d.done) {
      ck_assert_int_eq(d.level, want);
      want = want + DEEP_EVERY > DEEP_LEVELS ? DEEP_LEVELS : want + DEEP_EVERY;
    }
    resumes++;
  }
  ck_assert_int_eq(resumes, DEEP_LEVELS / DEEP_EVERY + 1);
  ck_assert_int_eq(d.sum, (long)DEEP_LEVELS * (DEEP_LEVELS + 1) / 2);
  /* it really ran deep on its own stack (at least 32 bytes a level: compilers
   * may keep less than pad in each frame) */
  uintptr_t top = (uintptr_t)d.f.lo + d.f.size;
  ck_assert_uint_gt(d.lowest_sp, (uintptr_t)d.f.lo);
  ck_assert_uint_gt(top - d.lowest_sp, (uintptr_t)DEEP_LEVELS * 32);
  fiber_free(&d.f);
}
END_TEST

/* ---- callee-saved registers ------------------------------------------------ */

#ifdef HAVE_PROBE
#define REG_ROUNDS 64

typedef struct regs {
  fiber a;
  uint64_t out[PROBE_WORDS];
  int bad_round; /* first round a saw wrong registers, + 1 */
  char why[160];
} regs;

/* Distinct, wide patterns for each side and round. */
static uint64_t seed_main(int r) { return 0x5a5a000000000000ull + ((uint64_t)r << 24); }
static uint64_t seed_coro(int r) { return 0xa5a5000000000000ull + ((uint64_t)r << 24) + 0x1000; }

static void regs_entry(void *arg) {
  regs *t = arg;
  arrived(&t->a);
  for (int r = 0; r < REG_ROUNDS; r++) {
    /* fill a's registers, switch to main; main's probe switches back */
    before_switch(&t->a, &g_main, 0);
    evx_test_probe(&t->a.ctx, &g_main.ctx, seed_coro(r), t->out);
    arrived(&t->a);
    if (!t->bad_round && !probe_check(t->out, seed_coro(r), t->why, sizeof t->why))
      t->bad_round = r + 1;
  }
  sw_last(&t->a, &g_main);
}

START_TEST(test_callee_saved_registers) {
  fiber_main_init();
  regs t = {.bad_round = 0};
  uint64_t out[PROBE_WORDS];
  char why[160];
  fiber_new(&t.a, 64 * 1024, 0, regs_entry, &t);
  sw(&g_main, &t.a); /* a fills its registers and probes back */
  for (int r = 0; r < REG_ROUNDS; r++) {
    before_switch(&g_main, &t.a, 0);
    evx_test_probe(&g_main.ctx, &t.a.ctx, seed_main(r), out);
    arrived(&g_main);
    ck_assert_msg(probe_check(out, seed_main(r), why, sizeof why), "main, round %d: %s", r, why);
    ck_assert_msg(t.bad_round == 0, "coroutine, round %d: %s", t.bad_round - 1, t.why);
  }
  fiber_free(&t.a);
}
END_TEST
#endif

/* ---- floating-point control ------------------------------------------------ */

typedef struct fpenv {
  fiber a;
  int at_entry, after_set, after_resume;
  double q_after;
} fpenv;

static volatile double g_one = 1.0, g_three = 3.0;

static void fpenv_entry(void *arg) {
  fpenv *t = arg;
  arrived(&t->a);
  t->at_entry = fegetround();
  fesetround(FE_UPWARD);
  t->after_set = fegetround();
  sw(&t->a, &g_main); /* main switches rounding mode meanwhile */
  t->after_resume = fegetround();
  t->q_after = g_one / g_three;
  fesetround(FE_TONEAREST);
  sw_last(&t->a, &g_main);
}

/* The rounding mode belongs to the context that set it (like the rest of the
 * x86-64 MXCSR/x87 control word, the aarch64 FPCR, and ucontext's saved FP
 * environment): a coroutine that rounds upward does not change how the loop
 * rounds, and the loop does not change the coroutine's mode under it. */
START_TEST(test_rounding_mode_per_context) {
  fiber_main_init();
  ck_assert_int_eq(fesetround(FE_TONEAREST), 0);
  const double q_nearest = g_one / g_three;
  fpenv t = {.at_entry = -1};
  fiber_new(&t.a, 64 * 1024, 0, fpenv_entry, &t);
  sw(&g_main, &t.a);
  ck_assert_int_eq(t.at_entry, FE_TONEAREST);
  ck_assert_int_eq(t.after_set, FE_UPWARD);
  int main_mode = fegetround();
  ck_assert_int_eq(fesetround(FE_DOWNWARD), 0);
  sw(&g_main, &t.a);
  int main_mode2 = fegetround();
  fesetround(FE_TONEAREST);
  fiber_free(&t.a);
  ck_assert_msg(main_mode == FE_TONEAREST, "the coroutine's FE_UPWARD leaked out (mode %#x)",
                (unsigned)main_mode);
  ck_assert_msg(t.after_resume == FE_UPWARD, "main's FE_DOWNWARD leaked in (mode %#x)",
                (unsigned)t.after_resume);
  ck_assert_msg(main_mode2 == FE_DOWNWARD, "main's mode was not restored (mode %#x)",
                (unsigned)main_mode2);
#ifdef T_VALGRIND
  if (!RUNNING_ON_VALGRIND) /* valgrind does not emulate every rounding mode */
#endif
    ck_assert_msg(t.q_after > q_nearest, "1/3 did not round upward in the coroutine");
}
END_TEST

/* ---- a chain of contexts, a reused stack ---------------------------------- */

typedef struct chain {
  fiber f[3];
  int order[8];
  int n;
  int tag;
} chain;

static chain *g_chain;

static void chain_entry(void *arg) {
  int i = (int)(intptr_t)arg;
  chain *c = g_chain;
  arrived(&c->f[i]);
  c->order[c->n++] = i * 10 + c->tag;
  /* 0 -> 1 -> 2 -> main: each ends by switching to the next */
  sw_last(&c->f[i], i < 2 ? &c->f[i + 1] : &g_main);
}

START_TEST(test_chain_and_reuse) {
  fiber_main_init();
  chain c = {.n = 0};
  g_chain = &c;
  for (int i = 0; i < 3; i++) fiber_new(&c.f[i], 32 * 1024, 0, chain_entry, (void *)(intptr_t)i);
  c.tag = 1;
  sw(&g_main, &c.f[0]);
  ck_assert_int_eq(c.n, 3);
  ck_assert_int_eq(c.order[0], 1);
  ck_assert_int_eq(c.order[1], 11);
  ck_assert_int_eq(c.order[2], 21);
  /* the ended contexts' stacks start new ones, as the coroutine pool does */
  c.tag = 2;
  for (int i = 0; i < 3; i++)
    evx__ctx_make(&c.f[i].ctx, c.f[i].lo, c.f[i].size, chain_entry, (void *)(intptr_t)i);
  sw(&g_main, &c.f[0]);
  ck_assert_int_eq(c.n, 6);
  ck_assert_int_eq(c.order[3], 2);
  ck_assert_int_eq(c.order[5], 22);
  for (int i = 0; i < 3; i++) fiber_free(&c.f[i]);
}
END_TEST

/* ---- an entry that returns -------------------------------------------------- */

static void returning_entry(void *arg) {
  arrived(arg); /* and returns: entry must never do that */
}

/* Nothing sensible can follow a returned entry: the process must die (abort on
 * aarch64 and ucontext, a jump to address 0 on x86-64), never run on. */
START_TEST(test_returning_entry_dies) {
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) dup2(devnull, 2); /* ASan's or valgrind's report */
    fiber_main_init();
    fiber f;
    fiber_new(&f, 32 * 1024, 0, returning_entry, &f);
    sw(&g_main, &f);
    _exit(0); /* not reached */
  }
  int status;
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert_msg(!(WIFEXITED(status) && WEXITSTATUS(status) == 0),
                "the process went on after entry returned");
  if (WIFSIGNALED(status))
    ck_assert_msg(WTERMSIG(status) == SIGABRT || WTERMSIG(status) == SIGSEGV, "signal %d",
                  WTERMSIG(status));
}
END_TEST

Suite *coro_switch_suite(void);
Suite *coro_switch_suite(void) {
  Suite *s = suite_create("coro_switch");
  TCase *tc = evx_test_tcase(s, "switch", 60);
  tcase_add_test(tc, test_backend);
  tcase_add_test(tc, test_first_entry);
  tcase_add_test(tc, test_many_switches_main);
  tcase_add_test(tc, test_many_switches_between_coroutines);
  tcase_add_test(tc, test_deep_recursion);
#ifdef HAVE_PROBE
  tcase_add_test(tc, test_callee_saved_registers);
#endif
  tcase_add_test(tc, test_rounding_mode_per_context);
  tcase_add_test(tc, test_chain_and_reuse);
  tcase_add_test(tc, test_returning_entry_dies);
  return s;
}

int main(void) { return evx_test_main(coro_switch_suite()); }
