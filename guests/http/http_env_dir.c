/*
 * What a served guest is given of the host (`weft serve --env`, `--dir`), for
 * crates/cli/tests/serve_wasmtime_flags.rs: answers
 *
 *   A=<getenv("A"), or "(unset)">
 *   file=<the first line of /data/in.txt, or "(none)">
 *
 * and writes the value of A to /data/out.txt (the directory is given read-write), answering
 * 500 when it cannot.
 */
// xtask-flag: -mexec-model=reactor
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <weft/http.h>

WEFT_HTTP_HANDLER void handle(void) {
  const char *a = getenv("A");
  if (a == NULL) a = "(unset)";

  char line[256] = "(none)";
  FILE *in = fopen("/data/in.txt", "r");
  if (in != NULL) {
    if (fgets(line, sizeof line, in) == NULL) strcpy(line, "(empty)");
    line[strcspn(line, "\n")] = '\0';
    fclose(in);
  }

  int status = 200;
  FILE *out = fopen("/data/out.txt", "w");
  if (out == NULL || fputs(a, out) < 0) status = 500;
  if (out != NULL && fclose(out) != 0) status = 500;

  char body[512];
  snprintf(body, sizeof body, "A=%s\nfile=%s\n", a, line);
  weft_http_response_status(status);
  weft_http_response_header_str("content-type", "text/plain");
  weft_http_response_write_str(body);
  weft_http_response_finish();
}
