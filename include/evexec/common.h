/**
 * @file common.h
 * Export macro, error codes and the allocator hook shared by every evexec header.
 */
#ifndef EVEXEC_COMMON_H
#define EVEXEC_COMMON_H

#include <stddef.h>
#include <stdint.h>

#if defined(EVX_STATIC)
#define EVX_API
#elif defined(_WIN32)
#if defined(EVX_BUILDING)
#define EVX_API __declspec(dllexport)
#else
#define EVX_API __declspec(dllimport)
#endif
#elif defined(__GNUC__) && defined(EVX_BUILDING)
#define EVX_API __attribute__((visibility("default")))
#else
#define EVX_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define EVX_VERSION_MAJOR 0
#define EVX_VERSION_MINOR 1
#define EVX_VERSION_PATCH 0

/**
 * The one error table. Every evexec call that can fail returns `int`:
 * EVX_OK (0) or one of these negative codes.
 * X(name, value, message)
 */
#define EVX_ERRNO_MAP(X)                                                    \
  X(OK, 0, "success")                                                       \
  X(ENOMEM, -1, "out of memory")                                            \
  X(EINVAL, -2, "invalid argument or misuse of the API")                    \
  X(EBUSY, -3, "queue full or resource busy")                               \
  X(ECANCELED, -4, "operation canceled")                                    \
  X(ECLOSED, -5, "closed or shut down")                                     \
  X(ETIMEDOUT, -6, "timed out")                                             \
  X(EGONE, -7, "the client went away")                                      \
  X(EIO, -8, "I/O or backend failure")                                     \
  X(EADDRINUSE, -9, "address already in use")                               \
  X(EACCES, -10, "permission denied")                                       \
  X(ENOTFOUND, -11, "host name not found")                                  \
  X(ECONSTRAINT, -12, "constraint violated (unique, foreign key, not null, check)") \
  X(ELOCKED, -13, "the database stayed locked (busy timeout)")

enum {
#define EVX__ERR_ENUM(name, value, msg) EVX_##name = (value),
  EVX_ERRNO_MAP(EVX__ERR_ENUM)
#undef EVX__ERR_ENUM
};

/**
 * Name an error code. Never NULL: unknown codes give "unknown error";
 * EVX_PENDING (1) gives "pending".
 * The returned string is static; the caller must not free it.
 */
EVX_API const char *evx_strerror(int err);

/**
 * Short symbolic name of an error code ("EVX_EBUSY"), also for a future's
 * EVX_PENDING (1, see future.h): "EVX_PENDING"; "EVX_UNKNOWN" for anything
 * else. Static string.
 */
EVX_API const char *evx_err_name(int err);

/** A destructor for a value handed to evexec (futures, results). NULL means "nothing to free". */
typedef void (*evx_free_fn)(void *p);

/**
 * Replace the allocator used by every evexec allocation (like uv_replace_allocator).
 * Call before any other evexec call, while no evexec object exists; memory
 * that evx_malloc & co. handed out must have been freed too (evexec cannot
 * see it). All four functions must be given, or all NULL to restore the C
 * library's. Not thread-safe against other evexec calls.
 * @return EVX_OK (also when the set is the one in use: a no-op); EVX_EINVAL
 *         if only some are given; EVX_EBUSY while any evx_loop exists (every
 *         evexec object belongs to a loop, and its memory came from the
 *         allocator in use: freeing it through another would crash). The
 *         allocator is then unchanged.
 */
EVX_API int evx_set_allocator(void *(*malloc_fn)(size_t),
                              void *(*realloc_fn)(void *, size_t),
                              void *(*calloc_fn)(size_t, size_t),
                              void (*free_fn)(void *));

/** The configured allocator (for code that hands memory to evexec to free). */
EVX_API void *evx_malloc(size_t n);
EVX_API void *evx_calloc(size_t count, size_t n);
EVX_API void *evx_realloc(void *p, size_t n);
EVX_API void evx_free(void *p);
/** strdup through the configured allocator; NULL in gives NULL. */
EVX_API char *evx_strdup(const char *s);

/** Monotonic clock in nanoseconds (CLOCK_MONOTONIC). */
EVX_API uint64_t evx_now_ns(void);

#ifdef __cplusplus
}
#endif
#endif /* EVEXEC_COMMON_H */
