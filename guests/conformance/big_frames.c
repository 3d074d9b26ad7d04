/*
 * Large C stack frames in contexts: two contexts each keep an array of N KiB on their shadow
 * stack (N = argv[1], default 32) and check it after every switch. With N beyond the default
 * 64 KiB region, run with a larger one: `weft run --shadow-stack-size 1048576 big_frames.wasm 600`.
 */
#include "check.h"

#include <alloca.h>

static wasix_context_id_t ids[2];
static int next_index;
static size_t bytes;

static void member(void) {
  int index = next_index++;
  unsigned char *data = alloca(bytes);
  for (size_t i = 0; i < bytes; i++)
    data[i] = (unsigned char)(i * 13 + index);
  for (int round = 0; round < 4; round++) {
    CHECK(wasix_context_switch(index == 0 ? ids[1] : wasix_context_main) == 0);
    for (size_t i = 0; i < bytes; i++)
      if (data[i] != (unsigned char)(i * 13 + index))
        FAIL("context %d: byte %zu of its %zu-byte frame changed", index, i, bytes);
  }
  CHECK(wasix_context_switch(wasix_context_main) == 0);
  FAIL("resumed after the last round");
}

int main(int argc, char **argv) {
  size_t kib = argc > 1 ? (size_t)atoi(argv[1]) : 32;
  bytes = kib * 1024;
  for (int i = 0; i < 2; i++)
    CHECK(wasix_context_create(&ids[i], member) == 0);
  /* main -> 0 -> 1 -> main, five times over; then 0 finishes last. */
  for (int round = 0; round < 5; round++)
    CHECK(wasix_context_switch(ids[0]) == 0);
  CHECK(wasix_context_switch(ids[1]) == 0);
  printf("ok two contexts kept %zu KiB stack frames intact across 10 switches\n", kib);
  for (int i = 0; i < 2; i++)
    CHECK(wasix_context_destroy(ids[i]) == 0);
  return 0;
}
