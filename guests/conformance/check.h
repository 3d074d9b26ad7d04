/*
 * Shared helpers of the conformance guests: checks that print what they verified, and the WASI
 * errno names. A failed check prints `FAIL file:line: ...` and exits with status 1.
 */
#ifndef WEFT_GUESTS_CHECK_H
#define WEFT_GUESTS_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wasix/context.h>
#include <weft/errno.h>

/* Line-buffer stdout even into a pipe, so every line printed before a trap reaches the test. */
__attribute__((constructor)) static void check_line_buffer_stdout(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
}

static inline const char *errno_name(int32_t err) { return weft_errno_name(err); }

#define FAIL(...)                                                                                  \
  do {                                                                                             \
    printf("FAIL %s:%d: ", __FILE__, __LINE__);                                                    \
    printf(__VA_ARGS__);                                                                           \
    printf("\n");                                                                                  \
    exit(1);                                                                                       \
  } while (0)

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond))                                                                                   \
      FAIL("%s", #cond);                                                                           \
  } while (0)

/* Checks that a raw import call returned the errno `want`, and says so. */
#define EXPECT_ERRNO(label, call, want)                                                            \
  do {                                                                                             \
    int32_t got_ = (call);                                                                         \
    if (got_ != (want))                                                                            \
      FAIL("%s: got %d (%s), expected %d (%s)", label, got_, errno_name(got_), (int)(want),        \
           errno_name(want));                                                                      \
    printf("ok %s -> %s\n", label, errno_name(got_));                                              \
  } while (0)

/* Checks that a libc-style wrapper returned -1 with errno `want`. */
#define EXPECT_FAILS_WITH(label, call, want)                                                       \
  do {                                                                                             \
    errno = 0;                                                                                     \
    int got_ = (call);                                                                             \
    int err_ = errno;                                                                              \
    if (got_ != -1 || err_ != (want))                                                              \
      FAIL("%s: returned %d with errno %d (%s), expected -1 with errno %d (%s)", label, got_,      \
           err_, errno_name(err_), (int)(want), errno_name(want));                                 \
    printf("ok %s -> -1, errno %s\n", label, errno_name(err_));                                    \
  } while (0)

/* Raw calls: the full i32 the host returned, with no narrowing to a 16-bit errno. */
static inline int32_t raw_create(wasix_context_id_t *id, void (*entry)(void)) {
  return __imported_wasix_context_create((__wasix_context_ptr_t)(uintptr_t)id,
                                         (__wasix_context_ptr_t)(uintptr_t)entry);
}
static inline int32_t raw_create_at(uintptr_t id_address, uintptr_t table_index) {
  return __imported_wasix_context_create((__wasix_context_ptr_t)id_address,
                                         (__wasix_context_ptr_t)table_index);
}
static inline int32_t raw_switch(wasix_context_id_t id) {
  return __imported_wasix_context_switch((int64_t)id);
}
static inline int32_t raw_destroy(wasix_context_id_t id) {
  return __imported_wasix_context_destroy((int64_t)id);
}

#endif
