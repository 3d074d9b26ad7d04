/*
 * A plain WASI program that does not use the context API, built without the exports the API
 * needs: `weft run` runs it like `wasmtime run` (arguments, environment, exit status).
 */
// xtask-omit-flag: -Wl,--export=__stack_pointer
// xtask-omit-flag: -Wl,--export-table
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
  printf("argc %d\n", argc);
  for (int i = 1; i < argc; i++)
    printf("arg %d: %s\n", i, argv[i]);
  const char *greeting = getenv("WEFT_GREETING");
  printf("WEFT_GREETING=%s\n", greeting ? greeting : "(unset)");
  return argc - 1;
}
