// xtask-world: wasi:http/proxy@0.2.12
// A `wasi:http/proxy@0.2` guest in C: answers every request with its method and path and
// the number of requests its instance served, so a client can see the instance reused.
// `/big?bytes=N` answers N bytes of `x` instead, written 4 KiB at a time as the client takes
// them (a body larger than the host's response buffer streams).
#include <stdio.h>

#include "p2_http.h"

static unsigned served;

static const char *method_name(const wasi_http_types_method_t *method) {
  static const char *const names[] = {"GET",     "HEAD",    "POST",  "PUT",   "DELETE",
                                      "CONNECT", "OPTIONS", "TRACE", "PATCH"};
  return method->tag < sizeof names / sizeof names[0] ? names[method->tag] : "OTHER";
}

void exports_wasi_http_incoming_handler_handle(
    exports_wasi_http_incoming_handler_own_incoming_request_t request,
    exports_wasi_http_incoming_handler_own_response_outparam_t response_out) {
  served++;
  p2_request_t borrowed = wasi_http_types_borrow_incoming_request(request);
  wasi_http_types_method_t method;
  wasi_http_types_method_incoming_request_method(borrowed, &method);
  char *path = p2_path(borrowed);
  if (strncmp(path, "/big?bytes=", strlen("/big?bytes=")) == 0) {
    size_t bytes = strtoull(path + strlen("/big?bytes="), NULL, 10);
    free(path);
    wasi_http_types_method_free(&method);
    wasi_http_types_incoming_request_drop_own(request);
    p2_respond_repeated(response_out, 200, 'x', bytes);
    return;
  }
  char body[512];
  snprintf(body, sizeof body, "hello from a C p2 component: %s %s (request %u of this instance)\n",
           method_name(&method), path, served);
  free(path);
  wasi_http_types_method_free(&method);
  wasi_http_types_incoming_request_drop_own(request);
  p2_respond(response_out, 200, body);
}
