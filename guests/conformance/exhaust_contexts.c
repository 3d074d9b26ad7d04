/*
 * Exhausting the host's live contexts: creates contexts and runs each (so each holds a native
 * stack) until `wasix_context_create` fails, then prints the errno. The host must refuse at
 * create, with EAGAIN, before the OS refuses it a stack (which could only be a trap at a first
 * switch). Run with a limit below the machine's, e.g.
 * `weft run --max-contexts 200000 --max-live-contexts 300 exhaust_contexts.wasm`.
 */
#include "check.h"

enum { CAP = 1 << 20 };

static void park(void) {
  for (;;)
    wasix_context_switch(wasix_context_main);
}

static wasix_context_id_t *ids;

int main(void) {
  ids = malloc(CAP * sizeof *ids);
  CHECK(ids != NULL);
  int live = 0;
  int32_t err = 0;
  while (live < CAP && (err = raw_create(&ids[live], park)) == 0) {
    CHECK(wasix_context_switch(ids[live]) == 0);
    live++;
  }
  if (live == CAP)
    FAIL("no limit below %d live contexts", CAP);
  printf("%d contexts started; the next create -> %s\n", live, errno_name(err));
  /* The refusal is not sticky: destroying one makes room for one. */
  CHECK(wasix_context_destroy(ids[0]) == 0);
  EXPECT_ERRNO("create(in the room it made)", raw_create(&ids[0], park), 0);
  CHECK(wasix_context_switch(ids[0]) == 0);
  return 0;
}
