/*
 * Ping-pong between main and one context: the simplest use of the WASIX context API.
 * Build and run:  cargo xtask cc guests/demos/ping_pong.c -o ping_pong.wasm
 *                 weft run ping_pong.wasm
 */
#include <stdio.h>
#include <stdlib.h>
#include <wasix/context.h>

static wasix_context_id_t pong_context;
static int ball;

static void pong(void) {
  for (;;) {
    printf("    pong %d\n", ball++);
    /* Back to main; this call returns when main switches here again. */
    if (wasix_context_switch(wasix_context_main) != 0) {
      perror("switch to main");
      exit(1);
    }
  }
}

int main(void) {
  if (wasix_context_create(&pong_context, pong) != 0) {
    perror("wasix_context_create");
    return 1;
  }
  for (int round = 0; round < 5; round++) {
    printf("ping %d\n", ball++);
    if (wasix_context_switch(pong_context) != 0) {
      perror("switch to pong");
      return 1;
    }
  }
  /* pong never returns from its entrypoint; destroying it releases its stack. */
  wasix_context_destroy(pong_context);
  printf("game over after %d hits\n", ball);
  return 0;
}
