/* Shared by the libFuzzer targets in fuzz/ (test-only, never installed). */
#ifndef EVX_FUZZ_H
#define EVX_FUZZ_H

#include <stddef.h>
#include <stdint.h>

/* The libFuzzer entry point every fuzz_*.c defines. It must not keep state
 * between calls that changes what a later input does. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Abort with a message: a broken invariant is a crash the fuzzer reports. */
#define EVX_FUZZ_CHECK(cond)                                                       \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                                     \
    }                                                                              \
  } while (0)

#endif
