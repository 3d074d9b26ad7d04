/*
 * Switching to the active context is a no-op that returns success at once: main to main, and a
 * context to its own id, without disturbing anything.
 */
#include "check.h"

static wasix_context_id_t self;
static int progress;

static void entry(void) {
  progress = 1;
  EXPECT_ERRNO("context: switch(its own id)", raw_switch(self), 0);
  CHECK(progress == 1);
  progress = 2;
  EXPECT_ERRNO("context: switch(its own id) again", raw_switch(self), 0);
  progress = 3;
  CHECK(wasix_context_switch(wasix_context_main) == 0);
  FAIL("resumed after destroy");
}

int main(void) {
  EXPECT_ERRNO("main: switch(main)", raw_switch(0), 0);
  CHECK(wasix_context_switch(wasix_context_main) == 0);
  printf("ok main: wasix_context_switch(wasix_context_main) -> 0\n");
  CHECK(wasix_context_create(&self, entry) == 0);
  EXPECT_ERRNO("main: switch(main) with a context suspended", raw_switch(0), 0);
  CHECK(progress == 0);
  EXPECT_ERRNO("main: switch(context)", raw_switch(self), 0);
  CHECK(progress == 3);
  printf("main: the context ran to its switch back without interruption\n");
  CHECK(wasix_context_destroy(self) == 0);
  return 0;
}
