/*
 * Binary compatibility: this guest does not use weft's <wasix/context.h>. It declares the three
 * imports itself, as wasix-libc's generated bindings do (an i32 errno result, i32 pointers and
 * table indices, i64 ids), and wraps them the way wasix-libc's `wasix_context_*` functions do.
 * A module built against wasix-libc imports exactly these functions, so it runs unchanged.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>

int32_t __imported_wasix_32v1_context_create(int32_t arg0, int32_t arg1)
    __attribute__((__import_module__("wasix_32v1"), __import_name__("context_create")));
int32_t __imported_wasix_32v1_context_switch(int64_t arg0)
    __attribute__((__import_module__("wasix_32v1"), __import_name__("context_switch")));
int32_t __imported_wasix_32v1_context_destroy(int64_t arg0)
    __attribute__((__import_module__("wasix_32v1"), __import_name__("context_destroy")));

typedef uint64_t my_context_id_t;

static int my_create(my_context_id_t *id, void (*entrypoint)(void)) {
  int32_t err = __imported_wasix_32v1_context_create((int32_t)(intptr_t)id,
                                                     (int32_t)(intptr_t)entrypoint);
  if (err != 0) {
    errno = err;
    return -1;
  }
  return 0;
}

static int my_switch(my_context_id_t id) {
  int32_t err = __imported_wasix_32v1_context_switch((int64_t)id);
  if (err != 0) {
    errno = err;
    return -1;
  }
  return 0;
}

static my_context_id_t other;

static void other_main(void) {
  char greeting[32];
  snprintf(greeting, sizeof greeting, "hello from context %s", other != 0 ? "!= 0" : "0?");
  printf("%s\n", greeting);
  my_switch(0);
}

int main(void) {
  if (my_create(&other, other_main) != 0 || my_switch(other) != 0) {
    perror("context");
    return 1;
  }
  printf("main: errno of a bad switch: %d\n", my_switch(other + 1000) == -1 ? errno : 0);
  printf("main: destroy -> %d\n", __imported_wasix_32v1_context_destroy((int64_t)other));
  return 0;
}
