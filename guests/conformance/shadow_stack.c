/*
 * Plain C inside contexts: each context keeps arrays, address-taken locals, varargs (printf,
 * vsnprintf) and a recursion with a buffer in every frame on the shadow stack (the part of C's
 * stack that lives in linear memory, addressed by the shared __stack_pointer global), and all of
 * it survives while four contexts and main switch back and forth. The contexts' stack data must
 * lie in separate regions.
 */
#include "check.h"

#include <stdarg.h>

enum { CONTEXTS = 4, ROUNDS = 6, WORDS = 512, DEPTH = 12 };

static wasix_context_id_t ids[CONTEXTS];
static int next_index;
static struct {
  uintptr_t low, high;
} regions[CONTEXTS + 1];

/* A varargs function of our own: its arguments travel through the shadow stack. */
static void say(const char *format, ...) {
  char line[160];
  va_list args;
  va_start(args, format);
  vsnprintf(line, sizeof line, format, args);
  va_end(args);
  printf("%s\n", line);
}

static wasix_context_id_t after(int index) {
  return index + 1 < CONTEXTS ? ids[index + 1] : wasix_context_main;
}

/* Every frame holds a buffer; the deepest one switches away, then every frame checks its own. */
static long long descend(int index, int depth, int round) {
  char frame[48];
  snprintf(frame, sizeof frame, "ctx%d-depth%d-round%d", index, depth, round);
  long long sum = 0;
  if (depth == 0) {
    CHECK(wasix_context_switch(after(index)) == 0);
  } else {
    sum = descend(index, depth - 1, round);
  }
  char expected[48];
  snprintf(expected, sizeof expected, "ctx%d-depth%d-round%d", index, depth, round);
  if (strcmp(frame, expected) != 0)
    FAIL("context %d lost the frame at depth %d: \"%s\"", index, depth, frame);
  return sum + depth;
}

static void worker(void) {
  int index = next_index++;
  int data[WORDS];
  char name[24];
  double scale = 1.0 + index / 4.0;
  snprintf(name, sizeof name, "worker-%c", 'A' + index);
  for (int i = 0; i < WORDS; i++)
    data[i] = index * 100000 + i;
  regions[index].low = (uintptr_t)&data[0];
  regions[index].high = (uintptr_t)&data[WORDS];

  for (int round = 0; round < ROUNDS; round++) {
    long long sum = 0;
    for (int i = 0; i < WORDS; i++) {
      if (data[i] != index * 100000 + i + round)
        FAIL("%s: data[%d] = %d in round %d", name, i, data[i], round);
      sum += data[i];
      data[i]++;
    }
    say("%s round %d: sum=%lld scale=%.2f %s", name, round, sum, scale * round, "intact");
    long long depth_sum = descend(index, DEPTH, round);
    CHECK(depth_sum == DEPTH * (DEPTH + 1) / 2);
  }
  say("%s: done", name);
  CHECK(wasix_context_switch(after(index)) == 0);
  FAIL("%s resumed after the last round", name);
}

int main(void) {
  int data[WORDS];
  for (int i = 0; i < WORDS; i++)
    data[i] = -i;
  regions[CONTEXTS].low = (uintptr_t)&data[0];
  regions[CONTEXTS].high = (uintptr_t)&data[WORDS];

  for (int i = 0; i < CONTEXTS; i++)
    CHECK(wasix_context_create(&ids[i], worker) == 0);
  /* Each round: main -> worker-A -> ... -> worker-D -> main (each from deep in a recursion). */
  for (int round = 0; round <= ROUNDS; round++) {
    CHECK(wasix_context_switch(ids[0]) == 0);
    for (int i = 0; i < WORDS; i++)
      if (data[i] != -i)
        FAIL("main: data[%d] = %d", i, data[i]);
    say("main: round %d, main's array intact", round);
  }
  for (int i = 0; i <= CONTEXTS; i++)
    for (int j = 0; j < i; j++)
      if (regions[i].low < regions[j].high && regions[j].low < regions[i].high)
        FAIL("the stack arrays of %d and %d overlap", i, j);
  say("main: the five stack arrays lie in separate memory");
  for (int i = 0; i < CONTEXTS; i++)
    CHECK(wasix_context_destroy(ids[i]) == 0);
  return 0;
}
