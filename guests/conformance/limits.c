/*
 * The host's limit of live contexts: creating past it fails with EAGAIN (never a crash), and
 * destroying a context makes room for exactly one more. Run with weft's limit set low, e.g.
 * `weft run --max-contexts 5 limits.wasm`; prints how many contexts fit.
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
    /* Run every other one, so the limit counts started and unstarted contexts alike. */
    if (live % 2 == 0)
      CHECK(wasix_context_switch(ids[live]) == 0);
    live++;
  }
  if (live == CAP)
    FAIL("no limit below %d live contexts", CAP);
  printf("ok %d live contexts fit; the next create -> %s\n", live, errno_name(err));
  CHECK(err == 6);
  EXPECT_FAILS_WITH("wasix_context_create at the limit", wasix_context_create(&ids[live], park),
                    EAGAIN);
  EXPECT_ERRNO("destroy(one of them)", raw_destroy(ids[0]), 0);
  EXPECT_ERRNO("create(in the room it made)", raw_create(&ids[0], park), 0);
  EXPECT_ERRNO("create(past the limit again)", raw_create(&ids[live], park), 6);
  for (int i = 0; i < live; i++)
    CHECK(wasix_context_destroy(ids[i]) == 0);
  EXPECT_ERRNO("create(after destroying all)", raw_create(&ids[0], park), 0);
  return 0;
}
