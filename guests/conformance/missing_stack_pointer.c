/*
 * A guest that uses the context API but does not export `__stack_pointer`: weft cannot give its
 * contexts their own shadow stacks, so it must refuse the guest with an error naming the missing
 * export, before any context could corrupt another's stack.
 */
// xtask-omit-flag: -Wl,--export=__stack_pointer
#include "check.h"

static void entry(void) {
  char frame[64];
  snprintf(frame, sizeof frame, "context");
  wasix_context_switch(wasix_context_main);
}

int main(void) {
  printf("main: started\n");
  wasix_context_id_t id;
  int err = wasix_context_create(&id, entry);
  printf("main: create returned %d (errno %s): the host should have refused this guest\n", err,
         errno_name(errno));
  return 0;
}
