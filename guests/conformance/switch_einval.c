/*
 * Switching to a context that is not suspended fails with EINVAL and changes nothing: ids never
 * created, deleted ids (destroyed before or after they ran), and ids that alias a real one in
 * the low 32 bits (ids are full 64-bit values).
 */
#include "check.h"

static int runs;

static void entry(void) {
  for (;;) {
    runs++;
    CHECK(wasix_context_switch(wasix_context_main) == 0);
  }
}

int main(void) {
  EXPECT_ERRNO("switch(1), never created", raw_switch(1), 28);
  EXPECT_ERRNO("switch(12345), never created", raw_switch(12345), 28);
  EXPECT_ERRNO("switch(UINT64_MAX), never created", raw_switch(UINT64_MAX), 28);
  EXPECT_ERRNO("switch(1 << 63), never created", raw_switch(1ull << 63), 28);

  wasix_context_id_t live;
  CHECK(wasix_context_create(&live, entry) == 0);
  EXPECT_ERRNO("switch(live id ^ 1 << 32)", raw_switch(live ^ (1ull << 32)), 28);
  EXPECT_ERRNO("switch(live id + 1 << 32)", raw_switch(live + (1ull << 32)), 28);
  EXPECT_ERRNO("switch(live id ^ 1 << 63)", raw_switch(live ^ (1ull << 63)), 28);
  CHECK(runs == 0);
  EXPECT_ERRNO("switch(live id)", raw_switch(live), 0);
  CHECK(runs == 1);

  wasix_context_id_t never_ran;
  CHECK(wasix_context_create(&never_ran, entry) == 0);
  CHECK(wasix_context_destroy(never_ran) == 0);
  EXPECT_ERRNO("switch(id destroyed before it ran)", raw_switch(never_ran), 28);

  CHECK(wasix_context_destroy(live) == 0);
  EXPECT_ERRNO("switch(id destroyed after it ran)", raw_switch(live), 28);
  EXPECT_FAILS_WITH("wasix_context_switch(destroyed id)", wasix_context_switch(live), EINVAL);
  CHECK(runs == 1);
  printf("main: no failed switch ran a context\n");
  return 0;
}
