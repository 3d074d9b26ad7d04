/*
 * The fetching handler of `cargo xtask bench serve`: one outgoing GET to the URL in the
 * request's `x-upstream` header (the bench's loopback upstream), then 200 with the upstream's
 * status in the body. Measures the round trip through `fetch`: the calling context suspends
 * while the host does the I/O, and the instance's other requests run meanwhile.
 */
// xtask-flag: -mexec-model=reactor
#include <stdio.h>
#include <weft/http.h>

static void respond(int status, const char *body) {
  weft_http_response_status(status);
  weft_http_response_header_str("content-type", "text/plain");
  weft_http_response_write_str(body);
  weft_http_response_finish();
}

WEFT_HTTP_HANDLER void handle(void) {
  char url[512];
  int32_t len = weft_http_request_header("x-upstream", url, sizeof url - 1);
  if (len < 0 || len >= (int32_t)sizeof url) {
    respond(400, "send the upstream URL in an x-upstream header\n");
    return;
  }
  url[len] = '\0';
  int32_t status = weft_http_get_status(url);
  char body[64];
  snprintf(body, sizeof body, "upstream status %d\n", (int)status);
  respond(status == 200 ? 200 : 502, body);
}

