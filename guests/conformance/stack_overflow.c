/*
 * Unbounded recursion inside a context exhausts its call stack: a clean StackOverflow trap out of
 * main, never a host crash. The recursion goes through a volatile function pointer so the
 * compiler can turn it neither into a loop nor into shadow-stack use.
 *   stack_overflow first    the context overflows on its first run
 *   stack_overflow resumed  the context switches back and forth a few times, then overflows
 */
#include "check.h"

static int recurse(int depth);
static int (*volatile next)(int) = recurse;

static int recurse(int depth) { return next(depth + 1) + 1; }

static const char *mode;

static void entry(void) {
  if (strcmp(mode, "resumed") == 0) {
    for (int i = 0; i < 3; i++) {
      printf("context: round %d\n", i);
      wasix_context_switch(wasix_context_main);
    }
  }
  printf("context: recursing without end\n");
  printf("%d\n", next(0));
  FAIL("the recursion returned");
}

int main(int argc, char **argv) {
  mode = argc > 1 ? argv[1] : "first";
  wasix_context_id_t id;
  CHECK(wasix_context_create(&id, entry) == 0);
  for (int i = 0; i < 4; i++) {
    printf("main: switching to the context\n");
    wasix_context_switch(id);
  }
  FAIL("main resumed normally after the context overflowed its stack");
}
