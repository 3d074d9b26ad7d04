/*
 * Leaving the program from anywhere: the guest's exit status becomes weft's, buffered output is
 * flushed, and suspended contexts do not keep the host waiting.
 *   exits exit-in-context     a context calls exit(7)
 *   exits proc-exit-nested    main -> A -> B, and B calls _Exit(9) (proc_exit, no flush)
 *   exits main-returns        main returns 3 while two contexts are suspended mid-run
 */
#include "check.h"

#include <unistd.h>

static const char *mode;
static wasix_context_id_t a, b;

static void b_main(void) {
  if (strcmp(mode, "proc-exit-nested") == 0) {
    printf("context B: calling _Exit(9)\n");
    _Exit(9);
  }
  CHECK(wasix_context_switch(a) == 0);
  FAIL("context B resumed");
}

static void a_main(void) {
  if (strcmp(mode, "exit-in-context") == 0) {
    /* No newline: only exit()'s flush can bring this out. */
    printf("context A: calling exit(7)");
    exit(7);
  }
  printf("context A: switching to context B\n");
  CHECK(wasix_context_switch(b) == 0);
  printf("context A: switching to main\n");
  CHECK(wasix_context_switch(wasix_context_main) == 0);
  FAIL("context A resumed");
}

int main(int argc, char **argv) {
  mode = argc > 1 ? argv[1] : "main-returns";
  CHECK(wasix_context_create(&a, a_main) == 0);
  CHECK(wasix_context_create(&b, b_main) == 0);
  printf("main: switching to context A\n");
  CHECK(wasix_context_switch(a) == 0);
  printf("main: returning 3 with two contexts suspended\n");
  return 3;
}
