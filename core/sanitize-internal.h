/* Which sanitizer or checker this translation unit is built for, in one
 * place: EVX__ASAN (AddressSanitizer), EVX__TSAN (ThreadSanitizer) and
 * EVX__VALGRIND (valgrind's client-request headers are installed; the
 * requests are no-ops when not running under valgrind). gcc says so with
 * __SANITIZE_*__, clang with __has_feature. The code that tells a sanitizer
 * about stack switches (coro.c) and about cached memory (future.c) keys on
 * these, and includes the interface headers it needs itself. */
#ifndef EVX_SANITIZE_INTERNAL_H
#define EVX_SANITIZE_INTERNAL_H

#if defined(__SANITIZE_ADDRESS__)
#define EVX__ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EVX__ASAN 1
#endif
#endif

#if defined(__SANITIZE_THREAD__)
#define EVX__TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define EVX__TSAN 1
#endif
#endif

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>) && __has_include(<valgrind/memcheck.h>)
#define EVX__VALGRIND 1
#endif
#endif

#endif
