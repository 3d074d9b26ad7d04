// xtask-world: wasi:http/proxy@0.2.12
// A `wasi:http/proxy@0.2` guest in C that calls an upstream with `outgoing-handler.handle`, to
// show those calls attributed to the request that made them. The upstream is the `x-upstream`
// header's `host:port`; `n=N` in the query says how many calls to make, one after the other,
// each to `/c/<i>`, before the answer. The answer's first line is the path and the status of
// every call (`error` for a call that failed); its second line is the last call's body.
#include <stdio.h>

#include "p2_http.h"

// Up to this much of an upstream body is kept; the rest is read and dropped.
#define KEPT_BODY 256

// Makes one GET and reads its whole body; returns the status, or -1 when the call failed.
static int call(const char *authority, const char *path, char *kept, size_t *kept_len) {
  wasi_http_types_own_outgoing_request_t request =
      wasi_http_types_constructor_outgoing_request(wasi_http_types_constructor_fields());
  wasi_http_types_borrow_outgoing_request_t borrowed =
      wasi_http_types_borrow_outgoing_request(request);
  wasi_http_types_scheme_t scheme = {.tag = WASI_HTTP_TYPES_SCHEME_HTTP};
  proxy_string_t host = {(uint8_t *)authority, strlen(authority)};
  proxy_string_t target = {(uint8_t *)path, strlen(path)};
  if (!wasi_http_types_method_outgoing_request_set_scheme(borrowed, &scheme) ||
      !wasi_http_types_method_outgoing_request_set_authority(borrowed, &host) ||
      !wasi_http_types_method_outgoing_request_set_path_with_query(borrowed, &target)) {
    wasi_http_types_outgoing_request_drop_own(request);
    return -1;
  }

  wasi_http_types_own_future_incoming_response_t future;
  wasi_http_outgoing_handler_error_code_t error;
  if (!wasi_http_outgoing_handler_handle(request, NULL, &future, &error)) {
    wasi_http_outgoing_handler_error_code_free(&error);
    return -1;
  }
  wasi_http_types_borrow_future_incoming_response_t pending =
      wasi_http_types_borrow_future_incoming_response(future);
  wasi_http_types_result_result_own_incoming_response_error_code_void_t result;
  while (!wasi_http_types_method_future_incoming_response_get(pending, &result)) {
    wasi_http_types_own_pollable_t ready =
        wasi_http_types_method_future_incoming_response_subscribe(pending);
    wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(ready));
    wasi_io_poll_pollable_drop_own(ready);
  }
  wasi_http_types_future_incoming_response_drop_own(future);
  if (result.is_err || result.val.ok.is_err) {
    wasi_http_types_result_result_own_incoming_response_error_code_void_free(&result);
    return -1;
  }

  wasi_http_types_own_incoming_response_t response = result.val.ok.val.ok;
  wasi_http_types_borrow_incoming_response_t answer =
      wasi_http_types_borrow_incoming_response(response);
  int status = wasi_http_types_method_incoming_response_status(answer);
  wasi_http_types_own_incoming_body_t body;
  if (wasi_http_types_method_incoming_response_consume(answer, &body)) {
    wasi_http_types_own_input_stream_t stream;
    if (wasi_http_types_method_incoming_body_stream(wasi_http_types_borrow_incoming_body(body),
                                                    &stream)) {
      for (;;) {
        proxy_list_u8_t bytes;
        wasi_io_streams_stream_error_t read_error;
        if (!wasi_io_streams_method_input_stream_blocking_read(
                wasi_io_streams_borrow_input_stream(stream), 16 * 1024, &bytes, &read_error)) {
          // `closed` is the end of the body; a failure ends it too.
          wasi_io_streams_stream_error_free(&read_error);
          break;
        }
        size_t room = KEPT_BODY - *kept_len;
        size_t take = bytes.len < room ? bytes.len : room;
        memcpy(kept + *kept_len, bytes.ptr, take);
        *kept_len += take;
        proxy_list_u8_free(&bytes);
      }
      wasi_io_streams_input_stream_drop_own(stream);
    }
    wasi_http_types_future_trailers_drop_own(wasi_http_types_static_incoming_body_finish(body));
  }
  wasi_http_types_incoming_response_drop_own(response);
  return status;
}

// `n=N` from a query, 1 when it is absent, at most 16.
static int calls_asked(const char *path) {
  const char *query = strchr(path, '?');
  const char *n = query ? strstr(query, "n=") : NULL;
  int count = n ? atoi(n + 2) : 1;
  return count < 0 ? 0 : count > 16 ? 16 : count;
}

void exports_wasi_http_incoming_handler_handle(
    exports_wasi_http_incoming_handler_own_incoming_request_t request,
    exports_wasi_http_incoming_handler_own_response_outparam_t response_out) {
  p2_request_t borrowed = wasi_http_types_borrow_incoming_request(request);
  char *path = p2_path(borrowed);
  char *upstream = p2_header(borrowed, "x-upstream");
  wasi_http_types_incoming_request_drop_own(request);
  if (upstream == NULL) {
    free(path);
    p2_respond(response_out, 400, "no x-upstream header\n");
    return;
  }

  char answer[1024];
  size_t used = (size_t)snprintf(answer, sizeof answer, "%.*s", (int)strcspn(path, "?"), path);
  char kept[KEPT_BODY + 1];
  size_t kept_len = 0;
  int calls = calls_asked(path);
  for (int i = 0; i < calls; i++) {
    char target[32];
    snprintf(target, sizeof target, "/c/%d", i);
    kept_len = 0;
    int status = call(upstream, target, kept, &kept_len);
    if (status < 0) {
      used += (size_t)snprintf(answer + used, sizeof answer - used, " error");
    } else {
      used += (size_t)snprintf(answer + used, sizeof answer - used, " %d", status);
    }
  }
  kept[kept_len] = '\0';
  snprintf(answer + used, sizeof answer - used, "\n%s\n", kept);
  free(path);
  free(upstream);
  p2_respond(response_out, 200, answer);
}
