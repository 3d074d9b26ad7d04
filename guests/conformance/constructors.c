/*
 * weft provides the context environment from `_start` on, so static initializers (C
 * constructors, which run before `main`) may already create and switch contexts, and `main`
 * keeps using them. (The ABI leaves this implementation-defined; Wasmer does not allow it.)
 */
#include "check.h"

static wasix_context_id_t counter;
static int count;

static void count_forever(void) {
  for (;;) {
    count++;
    CHECK(wasix_context_switch(wasix_context_main) == 0);
  }
}

__attribute__((constructor)) static void start_counter(void) {
  CHECK(wasix_context_create(&counter, count_forever) == 0);
  CHECK(wasix_context_switch(counter) == 0);
  printf("constructor: created and ran a context, count = %d\n", count);
}

int main(void) {
  CHECK(wasix_context_switch(counter) == 0);
  CHECK(wasix_context_switch(counter) == 0);
  printf("main: the constructor's context still runs, count = %d\n", count);
  CHECK(wasix_context_destroy(counter) == 0);
  return 0;
}
