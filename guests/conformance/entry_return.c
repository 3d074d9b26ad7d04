/*
 * An entrypoint must never return. If it does, its context terminates and main resumes with a
 * "context entrypoint returned" trap: `weft run` exits with status 129.
 *   entry_return direct   main switches to a context whose entrypoint returns
 *   entry_return nested   main -> context A -> context B, and B's entrypoint returns
 */
#include "check.h"

static wasix_context_id_t a, b;

static void returns(void) { printf("context: returning from its entrypoint\n"); }

static void a_main(void) {
  printf("context A: switching to context B\n");
  wasix_context_switch(b);
  FAIL("context A resumed after B returned");
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "direct";
  CHECK(wasix_context_create(&b, returns) == 0);
  if (strcmp(mode, "direct") == 0) {
    printf("main: switching to a context whose entrypoint returns\n");
    wasix_context_switch(b);
  } else if (strcmp(mode, "nested") == 0) {
    CHECK(wasix_context_create(&a, a_main) == 0);
    printf("main: switching to context A\n");
    wasix_context_switch(a);
  } else {
    FAIL("unknown mode %s", mode);
  }
  FAIL("main resumed normally after an entrypoint returned");
}
