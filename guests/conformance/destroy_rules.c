/*
 * The destroy rules: main can never be destroyed, nor the active context (from main or from a
 * context); a suspended context can be destroyed whether it ran or not; destroying a deleted or
 * never-created id is a no-op. Also from inside a context: destroying another suspended context.
 */
#include "check.h"

static wasix_context_id_t started, destroyer, victim;
static int victim_runs;

static void park(void) {
  for (;;)
    CHECK(wasix_context_switch(wasix_context_main) == 0);
}

static void victim_main(void) {
  victim_runs++;
  park();
}

/* Suspends in the middle of a recursion, so destroy has real frames to release. */
static void recurse_then_park(int depth) {
  char frame[64];
  memset(frame, depth, sizeof frame);
  if (depth == 0)
    park();
  else
    recurse_then_park(depth - 1);
  CHECK(frame[63] == depth);
}

static void started_main(void) { recurse_then_park(50); }

static void destroyer_main(void) {
  EXPECT_ERRNO("context: destroy(main)", raw_destroy(0), 28);
  EXPECT_ERRNO("context: destroy(itself, the active context)", raw_destroy(destroyer), 28);
  EXPECT_ERRNO("context: destroy(another suspended context)", raw_destroy(victim), 0);
  EXPECT_ERRNO("context: switch(the context it destroyed)", raw_switch(victim), 28);
  park();
}

int main(void) {
  EXPECT_ERRNO("destroy(main)", raw_destroy(0), 28);
  EXPECT_FAILS_WITH("wasix_context_destroy(wasix_context_main)",
                    wasix_context_destroy(wasix_context_main), EINVAL);

  wasix_context_id_t fresh;
  CHECK(wasix_context_create(&fresh, park) == 0);
  EXPECT_ERRNO("destroy(suspended, never ran)", raw_destroy(fresh), 0);
  EXPECT_ERRNO("destroy(it again: deleted)", raw_destroy(fresh), 0);
  EXPECT_ERRNO("switch(it)", raw_switch(fresh), 28);

  CHECK(wasix_context_create(&started, started_main) == 0);
  CHECK(wasix_context_switch(started) == 0);
  EXPECT_ERRNO("destroy(suspended in a 50-deep recursion)", raw_destroy(started), 0);
  EXPECT_ERRNO("destroy(it again: deleted)", raw_destroy(started), 0);
  EXPECT_ERRNO("switch(it)", raw_switch(started), 28);

  EXPECT_ERRNO("destroy(424242, never created)", raw_destroy(424242), 0);

  CHECK(wasix_context_create(&victim, victim_main) == 0);
  CHECK(wasix_context_switch(victim) == 0);
  CHECK(wasix_context_create(&destroyer, destroyer_main) == 0);
  CHECK(wasix_context_switch(destroyer) == 0);
  CHECK(victim_runs == 1);
  EXPECT_ERRNO("destroy(the destroyer)", raw_destroy(destroyer), 0);
  EXPECT_ERRNO("destroy(the victim: already deleted)", raw_destroy(victim), 0);
  return 0;
}
