/*
 * Context-to-context switches: three contexts pass a token around a ring 100 times without main
 * in between, each counting its own hops in a local; the last hop goes back to main.
 */
#include "check.h"

enum { CONTEXTS = 3, LAPS = 100 };

static wasix_context_id_t ids[CONTEXTS];
static int token;
static int next_index;

static void member(void) {
  int index = next_index++;
  int hops = 0;
  for (;;) {
    CHECK(token % CONTEXTS == index);
    token++;
    hops++;
    if (token == CONTEXTS * LAPS) {
      printf("context %d: lap %d done, %d hops of my own, back to main\n", index, LAPS, hops);
      CHECK(wasix_context_switch(wasix_context_main) == 0);
      FAIL("resumed after the last lap");
    }
    CHECK(wasix_context_switch(ids[(index + 1) % CONTEXTS]) == 0);
  }
}

int main(void) {
  for (int i = 0; i < CONTEXTS; i++)
    CHECK(wasix_context_create(&ids[i], member) == 0);
  CHECK(wasix_context_switch(ids[0]) == 0);
  printf("main: the token went around %d times (%d hops)\n", token / CONTEXTS, token);
  for (int i = 0; i < CONTEXTS; i++)
    CHECK(wasix_context_destroy(ids[i]) == 0);
  return 0;
}
