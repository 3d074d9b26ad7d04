/*
 * The trivial handler of `cargo xtask bench serve`: 200 with a short body, no host call beyond
 * writing the response. What the server costs per request, with nothing else in the way.
 */
// xtask-flag: -mexec-model=reactor
#include <weft/http.h>

WEFT_HTTP_HANDLER void handle(void) {
  weft_http_response_status(200);
  weft_http_response_header_str("content-type", "text/plain");
  weft_http_response_write_str("hello\n");
  weft_http_response_finish();
}

