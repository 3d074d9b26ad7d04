/*
 * A context whose C frames outgrow its shadow stack (the default 64 KiB region) traps at its
 * next switch (exit 134) instead of silently writing over the guest's heap or another
 * context's frames:
 *   `live`   a 96 KiB array still on the stack when it switches (its stack pointer is out);
 *   `popped` a 96 KiB frame that returned before the switch (only the canary tells).
 * With `--shadow-stack-size 262144` the same frames fit and main gets control back.
 */
#include "check.h"

#include <alloca.h>

#define FRAME_BYTES (96 * 1024)

static wasix_context_id_t id;
static const char *mode;
/* Keeps the frames' writes from being optimised away. */
static volatile unsigned char *volatile sink;

/* Volatile stores: the frame dies at return, so a plain memset could be dropped. */
static void fill(volatile unsigned char *bytes, size_t len) {
  for (size_t i = 0; i < len; i++)
    bytes[i] = 0x5a;
  sink = bytes;
}

__attribute__((noinline)) static void big_frame(void) {
  unsigned char frame[FRAME_BYTES];
  fill(frame, sizeof frame);
}

static void worker(void) {
  printf("context: a 96 KiB frame (%s)\n", mode);
  if (strcmp(mode, "live") == 0) {
    fill(alloca(FRAME_BYTES), FRAME_BYTES);
  } else {
    big_frame();
  }
  wasix_context_switch(wasix_context_main);
  FAIL("resumed after overflowing its shadow stack");
}

int main(int argc, char **argv) {
  mode = argc > 1 ? argv[1] : "live";
  CHECK(wasix_context_create(&id, worker) == 0);
  printf("main: switching to the context\n");
  CHECK(wasix_context_switch(id) == 0);
  /* Only with a region large enough (`--shadow-stack-size`). */
  printf("main: back in main\n");
  return 0;
}
