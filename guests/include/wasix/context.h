/*
 * <wasix/context.h>: the WASIX context-switching API, as weft provides it.
 *
 * Source-compatible with wasix-libc's header of the same name, and binary-compatible with its
 * imports, so a C program written for WASIX compiles unchanged with `cargo xtask cc` and runs on
 * `weft run`. Everything here is a static inline wrapper over three host imports of module
 * `wasix_32v1` (`wasix_64v1` on wasm64):
 *
 *   context_create(new_context_ptr, entrypoint_table_index) -> errno
 *   context_switch(target_id: u64) -> errno
 *   context_destroy(id: u64) -> errno
 *
 * A context is active, suspended, terminated or deleted; exactly one is active. The main context
 * (id 0) is the one `main` runs on and can be neither destroyed nor terminated. An entrypoint
 * must never return: if it returns or traps, its context terminates and main resumes with a trap
 * (`weft run` then exits with status 129 for a return).
 */
#ifndef WEFT_WASIX_CONTEXT_H
#define WEFT_WASIX_CONTEXT_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <wasi/api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Opaque identifier of a context, valid only in the instance that created it. */
/* The host grows linear memory for each context's shadow stack. wasi-libc's allocator takes,
 * at its first malloc, all memory below the current size as heap (older releases do; newer
 * ones stop at `__heap_end`), so a first malloc after a context exists would hand out that
 * context's stack. Allocating once in a constructor, before any context exists, makes the
 * allocator start first; the host's later growth is then never taken for heap. (`volatile`:
 * a compiler may otherwise drop a malloc whose block is only freed.) */
__attribute__((constructor)) static void wasix_context_start_allocator_(void) {
  void *volatile block = malloc(1);
  free(block);
}

typedef uint64_t __wasi_context_id_t;
typedef __wasi_context_id_t wasix_context_id_t;

#if defined(__wasm64__)
#define __WASIX_CONTEXT_MODULE "wasix_64v1"
typedef int64_t __wasix_context_ptr_t;
#else
#define __WASIX_CONTEXT_MODULE "wasix_32v1"
typedef int32_t __wasix_context_ptr_t;
#endif

/* The raw host imports. Their return value is a WASI errno (0 on success). */
int32_t __imported_wasix_context_create(__wasix_context_ptr_t new_context_ptr,
                                        __wasix_context_ptr_t entrypoint)
    __attribute__((import_module(__WASIX_CONTEXT_MODULE), import_name("context_create")));
int32_t __imported_wasix_context_switch(int64_t target_context_id)
    __attribute__((import_module(__WASIX_CONTEXT_MODULE), import_name("context_switch")));
int32_t __imported_wasix_context_destroy(int64_t context_id)
    __attribute__((import_module(__WASIX_CONTEXT_MODULE), import_name("context_destroy")));

/* The wasi-style wrappers: return the errno instead of setting `errno`. */
static inline __wasi_errno_t __wasi_context_create(__wasi_context_id_t *context_id,
                                                            void (*entrypoint)(void)) {
  return (__wasi_errno_t)__imported_wasix_context_create(
      (__wasix_context_ptr_t)(uintptr_t)context_id, (__wasix_context_ptr_t)(uintptr_t)entrypoint);
}

static inline __wasi_errno_t __wasi_context_switch(__wasi_context_id_t target_context_id) {
  return (__wasi_errno_t)__imported_wasix_context_switch((int64_t)target_context_id);
}

static inline __wasi_errno_t __wasi_context_destroy(__wasi_context_id_t context_id) {
  return (__wasi_errno_t)__imported_wasix_context_destroy((int64_t)context_id);
}

/* Identifier of the main context: always 0. */
static inline wasix_context_id_t __wasix_context_main(void) { return 0; }
#define wasix_context_main (__wasix_context_main())

/*
 * Create a new context in the suspended state; `entrypoint` runs when it is first resumed.
 * Returns 0, or -1 with errno set: EINVAL when `entrypoint` is not a function of type
 * void(void) in the function table, EFAULT when `context_id` is not writable guest memory,
 * EAGAIN when the host's limit of live contexts is reached.
 */
static inline int wasix_context_create(wasix_context_id_t *context_id, void (*entrypoint)(void)) {
  __wasi_errno_t err = __wasi_context_create(context_id, entrypoint);
  if (err != 0) {
    errno = err;
    return -1;
  }
  return 0;
}

/*
 * Destroy a suspended or terminated context and release its resources. Destroying an already
 * deleted context is a no-op. Returns 0, or -1 with errno = EINVAL for the active context and for
 * the main context.
 */
static inline int wasix_context_destroy(wasix_context_id_t context_id) {
  __wasi_errno_t err = __wasi_context_destroy(context_id);
  if (err != 0) {
    errno = err;
    return -1;
  }
  return 0;
}

/*
 * Suspend the active context and resume `target_context_id` (from where it was suspended, or
 * from its entrypoint). Switching to the active context is a no-op. Returns 0 once this context
 * is resumed again, or -1 with errno = EINVAL when the target is not suspended.
 */
static inline int wasix_context_switch(wasix_context_id_t target_context_id) {
  __wasi_errno_t err = __wasi_context_switch(target_context_id);
  if (err != 0) {
    errno = err;
    return -1;
  }
  return 0;
}

#ifdef __cplusplus
}
#endif

#endif /* WEFT_WASIX_CONTEXT_H */
