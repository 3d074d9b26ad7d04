// Helpers the C `wasi:http/proxy@0.2` guests share, on top of wit-bindgen's `proxy.h`: the
// generated API is one call per WIT function, and answering takes six of them.
#ifndef WEFT_COMPONENTS_P2_HTTP_H
#define WEFT_COMPONENTS_P2_HTTP_H

#include <stdlib.h>
#include <string.h>

#include "proxy.h"

typedef wasi_http_types_borrow_incoming_request_t p2_request_t;

// A string of the bindings as a NUL-terminated copy the caller frees.
static inline char *p2_cstring(const uint8_t *ptr, size_t len) {
  char *text = malloc(len + 1);
  if (text == NULL) abort();
  memcpy(text, ptr, len);
  text[len] = '\0';
  return text;
}

// The request's path and query ("/" when it has none), to be freed.
static inline char *p2_path(p2_request_t request) {
  proxy_string_t path;
  if (!wasi_http_types_method_incoming_request_path_with_query(request, &path)) {
    return p2_cstring((const uint8_t *)"/", 1);
  }
  char *text = p2_cstring(path.ptr, path.len);
  proxy_string_free(&path);
  return text;
}

// The first value of a request header, to be freed, or NULL.
static inline char *p2_header(p2_request_t request, const char *name) {
  wasi_http_types_own_headers_t headers = wasi_http_types_method_incoming_request_headers(request);
  wasi_http_types_field_name_t key = {(uint8_t *)name, strlen(name)};
  wasi_http_types_list_field_value_t values;
  wasi_http_types_method_fields_get(wasi_http_types_borrow_fields(headers), &key, &values);
  char *value = values.len > 0 ? p2_cstring(values.ptr[0].ptr, values.ptr[0].len) : NULL;
  wasi_http_types_list_field_value_free(&values);
  wasi_http_types_fields_drop_own(headers);
  return value;
}

// Answers `status` with a body of `length` bytes that `chunk_at(done, buf, cap)` fills a
// piece at a time (returning how many it wrote). The body is written after the response is
// handed over, as the 0.2 API wants: the host starts sending the head while the body streams.
static inline void p2_respond_with(wasi_http_types_own_response_outparam_t out, uint16_t status,
                                   size_t length,
                                   size_t (*chunk_at)(const void *, size_t, uint8_t *, size_t),
                                   const void *source) {
  wasi_http_types_field_name_t name = {(uint8_t *)"content-type", strlen("content-type")};
  wasi_http_types_field_value_t value = {(uint8_t *)"text/plain", strlen("text/plain")};
  wasi_http_types_tuple2_field_name_field_value_t entry = {name, value};
  wasi_http_types_list_tuple2_field_name_field_value_t entries = {&entry, 1};
  wasi_http_types_own_fields_t headers;
  wasi_http_types_header_error_t header_error;
  if (!wasi_http_types_static_fields_from_list(&entries, &headers, &header_error)) abort();

  wasi_http_types_own_outgoing_response_t response =
      wasi_http_types_constructor_outgoing_response(headers);
  wasi_http_types_borrow_outgoing_response_t borrowed =
      wasi_http_types_borrow_outgoing_response(response);
  if (!wasi_http_types_method_outgoing_response_set_status_code(borrowed, status)) abort();
  wasi_http_types_own_outgoing_body_t outgoing_body;
  if (!wasi_http_types_method_outgoing_response_body(borrowed, &outgoing_body)) abort();

  wasi_http_types_result_own_outgoing_response_error_code_t result = {.is_err = false};
  result.val.ok = response;
  wasi_http_types_static_response_outparam_set(out, &result);

  wasi_http_types_own_output_stream_t stream;
  if (!wasi_http_types_method_outgoing_body_write(
          wasi_http_types_borrow_outgoing_body(outgoing_body), &stream)) {
    abort();
  }
  // blocking-write-and-flush takes at most 4096 bytes a call.
  uint8_t piece[4096];
  for (size_t done = 0; done < length;) {
    size_t want = length - done < sizeof piece ? length - done : sizeof piece;
    size_t chunk = chunk_at(source, done, piece, want);
    proxy_list_u8_t bytes = {piece, chunk};
    wasi_io_streams_stream_error_t error;
    if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(
            wasi_io_streams_borrow_output_stream(stream), &bytes, &error)) {
      wasi_io_streams_stream_error_free(&error);
      break;
    }
    done += chunk;
  }
  // The stream is a child of the body: it goes first.
  wasi_io_streams_output_stream_drop_own(stream);
  wasi_http_types_error_code_t finish_error;
  if (!wasi_http_types_static_outgoing_body_finish(outgoing_body, NULL, &finish_error)) {
    wasi_http_types_error_code_free(&finish_error);
  }
}

static inline size_t p2_text_at(const void *text, size_t done, uint8_t *buf, size_t cap) {
  memcpy(buf, (const char *)text + done, cap);
  return cap;
}

// Answers `status` with a text body.
static inline void p2_respond(wasi_http_types_own_response_outparam_t out, uint16_t status,
                              const char *body) {
  p2_respond_with(out, status, strlen(body), p2_text_at, body);
}

static inline size_t p2_byte_at(const void *byte, size_t done, uint8_t *buf, size_t cap) {
  (void)done;
  memset(buf, *(const char *)byte, cap);
  return cap;
}

// Answers `status` with `length` copies of `byte`.
static inline void p2_respond_repeated(wasi_http_types_own_response_outparam_t out,
                                       uint16_t status, char byte, size_t length) {
  p2_respond_with(out, status, length, p2_byte_at, &byte);
}

#endif
