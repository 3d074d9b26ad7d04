/*
 * Destroy releases a context's resources: 20,000 rounds of create, run (to a switch in the middle
 * of a recursion with a local array), destroy never run out of contexts or memory, whatever the
 * host's limit of live contexts is.
 */
#include "check.h"

static int rounds_run;

static void recurse_then_return_to_main(int depth) {
  volatile char frame[128];
  frame[0] = (char)depth;
  if (depth == 0) {
    rounds_run++;
    wasix_context_switch(wasix_context_main);
    FAIL("resumed after destroy");
  }
  recurse_then_return_to_main(depth - 1);
  CHECK(frame[0] == (char)depth);
}

static void entry(void) { recurse_then_return_to_main(20); }

int main(void) {
  enum { ROUNDS = 20000 };
  for (int i = 0; i < ROUNDS; i++) {
    wasix_context_id_t id;
    if (wasix_context_create(&id, entry) != 0)
      FAIL("create failed in round %d with errno %d (%s)", i, errno, errno_name(errno));
    if (wasix_context_switch(id) != 0)
      FAIL("switch failed in round %d with errno %d", i, errno);
    if (wasix_context_destroy(id) != 0)
      FAIL("destroy failed in round %d with errno %d", i, errno);
  }
  CHECK(rounds_run == ROUNDS);
  printf("ok %d rounds of create, run, destroy\n", ROUNDS);
  return 0;
}
