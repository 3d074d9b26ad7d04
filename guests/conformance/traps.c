/*
 * A trap inside a context terminates it and comes out of main as the same trap, cleanly: the host
 * prints it and exits non-zero. One trap kind per argument:
 *   unreachable | divide-by-zero | out-of-bounds | bad-indirect-call | nested
 * (`nested`: main -> context A -> context B, and B executes `unreachable`).
 */
#include "check.h"

static const char *mode;
static wasix_context_id_t a, b;
static volatile int zero = 0, seven = 7;
static volatile uintptr_t far_away = 0xfffffff0u;

static int takes_int(int x) { return x; }
static void (*volatile misdeclared)(void) = (void (*)(void))(uintptr_t)takes_int;

static void trap_now(const char *kind) {
  printf("context: about to trap (%s)\n", kind);
  if (strcmp(kind, "unreachable") == 0)
    __builtin_trap();
  if (strcmp(kind, "divide-by-zero") == 0)
    printf("%d\n", seven / zero);
  if (strcmp(kind, "out-of-bounds") == 0)
    printf("%d\n", *(volatile int *)far_away);
  if (strcmp(kind, "bad-indirect-call") == 0)
    misdeclared();
  FAIL("no trap for %s", kind);
}

static void b_main(void) { trap_now("unreachable"); }

static void a_main(void) {
  if (strcmp(mode, "nested") == 0) {
    printf("context A: switching to context B\n");
    wasix_context_switch(b);
    FAIL("context A resumed after B trapped");
  }
  trap_now(mode);
}

int main(int argc, char **argv) {
  mode = argc > 1 ? argv[1] : "unreachable";
  CHECK(wasix_context_create(&a, a_main) == 0);
  CHECK(wasix_context_create(&b, b_main) == 0);
  printf("main: switching to context A\n");
  wasix_context_switch(a);
  FAIL("main resumed normally after a context trapped");
}
