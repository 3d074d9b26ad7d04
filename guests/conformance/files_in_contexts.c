/*
 * WASI inside contexts: two contexts write their own files in a preopened directory, switching
 * to each other between writes with their FILE handles open, then main reads both files back.
 * Run with a directory: `weft run --dir DIR::/data files_in_contexts.wasm`.
 */
#include "check.h"

enum { LINES = 5 };

static wasix_context_id_t writers[2];
static int next_index;

static void writer(void) {
  int index = next_index++;
  char path[32];
  snprintf(path, sizeof path, "/data/writer-%d.txt", index);
  FILE *file = fopen(path, "w");
  if (!file)
    FAIL("context %d cannot open %s", index, path);
  for (int line = 0; line < LINES; line++) {
    fprintf(file, "writer %d line %d\n", index, line);
    CHECK(fflush(file) == 0);
    CHECK(wasix_context_switch(index == 0 ? writers[1] : writers[0]) == 0);
  }
  CHECK(fclose(file) == 0);
  CHECK(wasix_context_switch(wasix_context_main) == 0);
  FAIL("resumed after its last line");
}

int main(void) {
  for (int i = 0; i < 2; i++)
    CHECK(wasix_context_create(&writers[i], writer) == 0);
  /* The writers alternate; writer 0, resumed after writer 1's last line, closes and returns... */
  CHECK(wasix_context_switch(writers[0]) == 0);
  /* ...while writer 1 still waits to close its file. */
  CHECK(wasix_context_switch(writers[1]) == 0);
  for (int i = 0; i < 2; i++) {
    char path[32], line[64];
    snprintf(path, sizeof path, "/data/writer-%d.txt", i);
    FILE *file = fopen(path, "r");
    if (!file)
      FAIL("main cannot open %s", path);
    while (fgets(line, sizeof line, file))
      printf("%s: %s", path, line);
    fclose(file);
    CHECK(wasix_context_destroy(writers[i]) == 0);
  }
  return 0;
}
