/*
 * A guest that uses the context API but does not export its function table: weft cannot resolve
 * entrypoints, so it must refuse the guest with an error naming `__indirect_function_table`.
 */
// xtask-omit-flag: -Wl,--export-table
#include "check.h"

static void entry(void) { wasix_context_switch(wasix_context_main); }

int main(void) {
  printf("main: started\n");
  wasix_context_id_t id;
  int err = wasix_context_create(&id, entry);
  printf("main: create returned %d (errno %s): the host should have refused this guest\n", err,
         errno_name(errno));
  return 0;
}
