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

/**
 * Why the last constructor called on this thread failed: the EVX_E* code of
 * the last evx_*_new (or evx_call_later) that returned NULL, e.g.
 * EVX_EINVAL for evx_executor_new with 5000 threads, EVX_ENOMEM, EVX_EIO
 * when a thread or a socket could not be created. Like errno: only
 * meaningful right after a NULL; a success does not reset it. EVX_OK when
 * no constructor failed on this thread yet. Thread-local, so safe anywhere.
 */
EVX_API int evx_last_error(void);

/*
 * Options structs and the ABI. Every constructor that takes an options
 * struct (evx_executor_new, evx_http_new, evx_go, evx_sqlite_open,
 * evx_mailer_new, evx_tasks_open) is a macro that also passes the size of
 * the struct the caller was compiled with to a sized entry point, e.g.
 *   #define evx_executor_new(loop, ...) \
 *     evx_executor_new_sized((loop), (__VA_ARGS__), sizeof(evx_executor_opts))
 * so source written against any version of the headers compiles unchanged,
 * compound literals included. Fields are only ever appended to an options
 * struct, never moved or removed; the library reads the first `opts_size`
 * bytes and takes the default (zero) for every field beyond them. So a
 * program built against older headers keeps working with a newer library,
 * and one built against newer headers runs on an older library as long as
 * it leaves the fields that library does not know at zero (otherwise the
 * constructor fails with EVX_EINVAL). The plain function of the same name
 * (taking its address, or binaries built before the sized entry points)
 * reads the first version of the struct.
 */

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

/**
 * The configured allocator, for memory that crosses the API: evx_malloc for
 * what a program hands to evexec to free, evx_free for what evexec hands
 * back (error messages, results). evx_free(NULL) is a no-op.
 */
EVX_API void *evx_malloc(size_t n);
EVX_API void evx_free(void *p);

#ifdef __cplusplus
}
#endif
#endif /* EVEXEC_COMMON_H */
