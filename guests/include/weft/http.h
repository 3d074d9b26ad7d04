/*
 * <weft/http.h>: HTTP handlers for `weft serve`, ABI `weft_http_v1`.
 *
 * The reference for every import (signature, results, errnos, what suspends) is
 * docs/weft-http-abi.md; this header declares them for C and wraps them in static inline
 * helpers. A test checks that the declarations below match what the host provides.
 *
 * A guest exports one handler, `void weft_http_handle(void)`; `weft serve` runs it in a new
 * WASIX context of a reused instance for every incoming request, so many requests share one
 * instance (and its globals) at once.
 *
 * Results: `>= 0` is success (a length, a status or 0), `< 0` is minus a WASI errno
 * (<weft/errno.h>); no `errno` is set. Reads follow one convention: they copy the bytes
 * [offset, offset + cap) of the value (fewer at its end) and return its FULL length.
 *
 * Every call is attributed to "the request the calling context works for": the request its
 * handler context was started for (inherited by contexts it creates with <wasix/context.h>),
 * unless the context `weft_http_enter`ed another one. Outgoing fetches carry that request's id
 * in the `weft-request-id` header.
 *
 *   WEFT_HTTP_HANDLER void handle(void) {
 *     char path[256];
 *     int32_t n = weft_http_request_path(path, sizeof path);
 *     weft_http_response_status(200);
 *     weft_http_response_header_str("content-type", "text/plain");
 *     weft_http_response_write(path, n < (int32_t)sizeof path ? n : (int32_t)sizeof path);
 *     weft_http_response_finish();
 *   }
 */
#ifndef WEFT_HTTP_H
#define WEFT_HTTP_H

#include <stdint.h>
#include <string.h>
#include <wasi/api.h>
#include <wasix/context.h>
#include <weft/errno.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Build HTTP guests as reactors (`-mexec-model=reactor`, no `main`): the host instantiates
 * them, runs `_initialize` (the constructors) once, then calls the handler for each request.
 *
 * (<wasix/context.h> starts the C allocator in a constructor: in a reactor that runs in
 * `_initialize`, before the host creates any context, as it must.) */

/* Put before the handler's definition: exports it under the name the host looks for. */
#define WEFT_HTTP_HANDLER __attribute__((export_name("weft_http_handle")))

#define WEFT_HTTP_IMPORT(name) __attribute__((import_module("weft_http_v1"), import_name(name)))

/* ---- raw imports (docs/weft-http-abi.md); prefer the typed helpers below ---- */
int32_t weft_http_raw_request_method(char *buf, int32_t cap, int32_t offset)
    WEFT_HTTP_IMPORT("request_method");
int32_t weft_http_raw_request_path(char *buf, int32_t cap, int32_t offset)
    WEFT_HTTP_IMPORT("request_path");
int32_t weft_http_raw_request_header(const char *name, int32_t name_len, char *buf, int32_t cap,
                                     int32_t offset) WEFT_HTTP_IMPORT("request_header");
int32_t weft_http_raw_request_body(char *buf, int32_t cap, int32_t offset)
    WEFT_HTTP_IMPORT("request_body");
int32_t weft_http_raw_response_status(int32_t status) WEFT_HTTP_IMPORT("response_status");
int32_t weft_http_raw_response_header(const char *name, int32_t name_len, const char *value,
                                      int32_t value_len) WEFT_HTTP_IMPORT("response_header");
int32_t weft_http_raw_response_write(const void *buf, int32_t len)
    WEFT_HTTP_IMPORT("response_write");
int32_t weft_http_raw_response_writable(void) WEFT_HTTP_IMPORT("response_writable");
int32_t weft_http_raw_response_finish(void) WEFT_HTTP_IMPORT("response_finish");
int32_t weft_http_raw_fetch_start(const char *method, int32_t method_len, const char *url,
                                  int32_t url_len, const char *headers, int32_t headers_len,
                                  const void *body, int32_t body_len)
    WEFT_HTTP_IMPORT("fetch_start");
int32_t weft_http_raw_fetch_status(int32_t handle) WEFT_HTTP_IMPORT("fetch_status");
int32_t weft_http_raw_fetch_body(int32_t handle, char *buf, int32_t cap, int32_t offset)
    WEFT_HTTP_IMPORT("fetch_body");
int32_t weft_http_raw_sleep_start(int64_t nanos) WEFT_HTTP_IMPORT("sleep_start");
int32_t weft_http_raw_handle_ready(int32_t handle) WEFT_HTTP_IMPORT("handle_ready");
int32_t weft_http_raw_block_on(int32_t handle) WEFT_HTTP_IMPORT("block_on");
int32_t weft_http_raw_handle_close(int32_t handle) WEFT_HTTP_IMPORT("handle_close");
int32_t weft_http_raw_schedule(int64_t context_id) WEFT_HTTP_IMPORT("schedule");
int64_t weft_http_raw_context_self(void) WEFT_HTTP_IMPORT("context_self");
int32_t weft_http_raw_log(int32_t level, const char *msg, int32_t len) WEFT_HTTP_IMPORT("log");
int32_t weft_http_raw_backpressure(int32_t on) WEFT_HTTP_IMPORT("backpressure");
int64_t weft_http_raw_request_token(void) WEFT_HTTP_IMPORT("request_token");
int32_t weft_http_raw_enter(int64_t token) WEFT_HTTP_IMPORT("enter");
int32_t weft_http_raw_exit(void) WEFT_HTTP_IMPORT("exit");

/* A pending or finished operation (a fetch or a sleep). Close it with weft_http_handle_close.
 * A struct, so a length or a status cannot be passed where a handle is meant. */
typedef struct weft_http_handle {
  int32_t id;
} weft_http_handle_t;

/* ---- the incoming request ---- */

/* Method (`GET`, ...): full length, copies at most `cap` bytes (no NUL added). */
static inline int32_t weft_http_request_method(char *buf, int32_t cap) {
  return weft_http_raw_request_method(buf, cap, 0);
}
/* Path and query as received (`/a?b=1`): full length. */
static inline int32_t weft_http_request_path(char *buf, int32_t cap) {
  return weft_http_raw_request_path(buf, cap, 0);
}
/* First value of header `name` (case-insensitive): full length, or -WEFT_ENOENT. */
static inline int32_t weft_http_request_header(const char *name, char *buf, int32_t cap) {
  return weft_http_raw_request_header(name, (int32_t)strlen(name), buf, cap, 0);
}
/* The number of bytes copied (the span of [offset, offset + cap) inside `total`). */
static inline int32_t weft_http_copied_(int32_t total, int32_t cap, int32_t offset) {
  if (total < 0) return total;
  if (offset >= total) return 0;
  return total - offset < cap ? total - offset : cap;
}
/* Copies body bytes starting at `offset`: bytes copied, 0 at the end, or -errno. */
static inline int32_t weft_http_request_body(char *buf, int32_t cap, int32_t offset) {
  return weft_http_copied_(weft_http_raw_request_body(buf, cap, offset), cap, offset);
}
/* The request body's full length, or -errno. */
static inline int32_t weft_http_request_body_len(void) {
  return weft_http_raw_request_body(NULL, 0, 0);
}

/* ---- the response (sent by weft_http_response_finish, or when the handler returns) ---- */

static inline int32_t weft_http_wait(weft_http_handle_t handle);

/* 100..599; -WEFT_EINVAL otherwise, -WEFT_EALREADY once the response (or its head) went out. */
static inline int32_t weft_http_response_status(int32_t status) {
  return weft_http_raw_response_status(status);
}
static inline int32_t weft_http_response_header(const char *name, int32_t name_len,
                                                const char *value, int32_t value_len) {
  return weft_http_raw_response_header(name, name_len, value, value_len);
}
static inline int32_t weft_http_response_header_str(const char *name, const char *value) {
  return weft_http_raw_response_header(name, (int32_t)strlen(name), value,
                                       (int32_t)strlen(value));
}
/* Appends all of `buf` to the body: `len`, or -errno (-WEFT_EPIPE: the client hung up;
 * -WEFT_EMSGSIZE: the body limit). A body larger than the server's response buffer streams:
 * its head goes out (status and headers are then fixed), and while the client has not read
 * enough, only the calling context waits here. */
static inline int32_t weft_http_response_write(const void *buf, int32_t len) {
  const char *bytes = (const char *)buf;
  int32_t done = 0;
  while (done < len) {
    int32_t n = weft_http_raw_response_write(bytes + done, len - done);
    if (n == -WEFT_EAGAIN) {
      weft_http_handle_t room = {weft_http_raw_response_writable()};
      if (room.id < 0) return room.id;
      int32_t err = weft_http_wait(room);
      weft_http_raw_handle_close(room.id);
      if (err < 0) return err;
      continue;
    }
    if (n < 0) return n;
    done += n;
  }
  return len;
}
static inline int32_t weft_http_response_write_str(const char *s) {
  return weft_http_response_write(s, (int32_t)strlen(s));
}
/* Sends the response now; the handler (and its helper contexts) may go on working. */
static inline int32_t weft_http_response_finish(void) { return weft_http_raw_response_finish(); }

/* ---- suspending: only the calling context waits, the instance's other contexts run ---- */

/* 1 if `handle` is done, 0 if not, -WEFT_EBADF. */
static inline int32_t weft_http_handle_ready(weft_http_handle_t handle) {
  return weft_http_raw_handle_ready(handle.id);
}
/* Suspends the calling context until `handle` (a fetch or a sleep) is done: 0, or -errno
 * (-WEFT_EBADF for a closed handle, -WEFT_EINVAL from main, which cannot wait). Never leaves
 * the caller suspended: the host resumes it when the handle is done or closed, and a switch
 * that fails is returned as its errno. */
static inline int32_t weft_http_wait(weft_http_handle_t handle) {
  for (;;) {
    int32_t ready = weft_http_raw_handle_ready(handle.id);
    if (ready != 0) return ready < 0 ? ready : 0;
    int32_t err = weft_http_raw_block_on(handle.id);
    if (err < 0) return err;
    /* Back to the host (main): it resumes us when `handle` is done. */
    __wasi_errno_t switched = __wasi_context_switch(0);
    if (switched != 0) return -(int32_t)switched;
  }
}
/* Lets the instance's other contexts run, then comes back. 0, or -errno (from main). */
static inline int32_t weft_http_yield(void) {
  int32_t err = weft_http_raw_block_on(0);
  if (err < 0) return err;
  __wasi_errno_t switched = __wasi_context_switch(0);
  return switched != 0 ? -(int32_t)switched : 0;
}
/* Sleeps `nanos` nanoseconds (only this context; negative counts as 0). 0 or -errno. */
static inline int32_t weft_http_sleep_ns(int64_t nanos) {
  weft_http_handle_t handle = {weft_http_raw_sleep_start(nanos < 0 ? 0 : nanos)};
  if (handle.id < 0) return handle.id;
  int32_t err = weft_http_wait(handle);
  weft_http_raw_handle_close(handle.id);
  return err;
}
/* Sleeps `millis` milliseconds; saturates instead of overflowing (the host caps sleeps at a day). */
static inline int32_t weft_http_sleep_ms(int64_t millis) {
  const int64_t max_ms = INT64_MAX / 1000000;
  if (millis > max_ms) millis = max_ms;
  return weft_http_sleep_ns(millis * 1000000);
}

/* The calling context's WASIX id (handlers run in contexts; 0 would be main). */
static inline wasix_context_id_t weft_http_context_self(void) {
  return (wasix_context_id_t)weft_http_raw_context_self();
}

/* Asks the host to resume suspended context `id` (of this instance) soon, from main, as if it
 * had yielded. 0, or -WEFT_EINVAL (not a suspended context, or the caller itself). */
static inline int32_t weft_http_schedule(wasix_context_id_t id) {
  return weft_http_raw_schedule((int64_t)id);
}

/* Starts `entry` in a new context that runs alongside the caller (the host runs it when the
 * caller waits or returns) and works for the caller's request (attribution is inherited).
 * In `weft serve` such a context MAY return from `entry`: that ends it. 0, or -errno. */
static inline int32_t weft_http_spawn(void (*entry)(void), wasix_context_id_t *id) {
  wasix_context_id_t local;
  if (!id) id = &local;
  __wasi_errno_t err = __wasi_context_create(id, entry);
  if (err != 0) return -(int32_t)err;
  return weft_http_raw_schedule((int64_t)*id);
}

/* ---- outgoing requests ---- */

/* Starts a fetch (`http://host[:port]/path`; `headers`: `Name: value\r\n` lines or NULL) and
 * stores its handle in `*out`: 0, or -errno (-WEFT_EINVAL for a bad method, URL or header);
 * does not wait. The host adds `weft-request-id`. */
static inline int32_t weft_http_fetch_start(const char *method, const char *url,
                                            const char *headers, const void *body,
                                            int32_t body_len, weft_http_handle_t *out) {
  int32_t id = weft_http_raw_fetch_start(method, (int32_t)strlen(method), url,
                                         (int32_t)strlen(url), headers,
                                         headers ? (int32_t)strlen(headers) : 0, body, body_len);
  if (id < 0) return id;
  out->id = id;
  return 0;
}
/* Status of a finished fetch; -WEFT_EAGAIN while it runs; -WEFT_ECONNREFUSED, -WEFT_ETIMEDOUT,
 * -WEFT_EIO or -WEFT_EMSGSIZE when it failed; -WEFT_EBADF for no fetch. */
static inline int32_t weft_http_fetch_status(weft_http_handle_t handle) {
  return weft_http_raw_fetch_status(handle.id);
}
/* Copies response body bytes from `offset`: bytes copied, 0 at the end, or -errno. */
static inline int32_t weft_http_fetch_body(weft_http_handle_t handle, char *buf, int32_t cap,
                                           int32_t offset) {
  return weft_http_copied_(weft_http_raw_fetch_body(handle.id, buf, cap, offset), cap, offset);
}
static inline int32_t weft_http_handle_close(weft_http_handle_t handle) {
  return weft_http_raw_handle_close(handle.id);
}
/* Fetch and wait (only this context): 0 with `*out` set (close it), or -errno. */
static inline int32_t weft_http_fetch(const char *method, const char *url, const char *headers,
                                      const void *body, int32_t body_len,
                                      weft_http_handle_t *out) {
  int32_t err = weft_http_fetch_start(method, url, headers, body, body_len, out);
  if (err < 0) return err;
  err = weft_http_wait(*out);
  if (err < 0) {
    weft_http_raw_handle_close(out->id);
    return err;
  }
  return 0;
}
/* GET `url` and wait: the HTTP status, or -errno. Frees the handle. */
static inline int32_t weft_http_get_status(const char *url) {
  weft_http_handle_t handle;
  int32_t err = weft_http_fetch("GET", url, NULL, NULL, 0, &handle);
  if (err < 0) return err;
  int32_t status = weft_http_fetch_status(handle);
  weft_http_handle_close(handle);
  return status;
}

/* ---- logging, backpressure, attribution ---- */

enum { WEFT_LOG_DEBUG = 0, WEFT_LOG_INFO = 1, WEFT_LOG_WARN = 2, WEFT_LOG_ERROR = 3 };
/* One line on the server's stderr, tagged with the request (at most 4096 bytes are kept). */
static inline int32_t weft_http_log(int32_t level, const char *msg) {
  return weft_http_raw_log(level, msg, (int32_t)strlen(msg));
}
/* on != 0: no new requests for this instance until called with 0. */
static inline int32_t weft_http_backpressure(int on) { return weft_http_raw_backpressure(on); }
/* The request the calling context works for (a token for weft_http_enter), 0 if none. */
static inline int64_t weft_http_request_token(void) { return weft_http_raw_request_token(); }
/* Scoped override: work for request `token` until the matching weft_http_exit. */
static inline int32_t weft_http_enter(int64_t token) { return weft_http_raw_enter(token); }
static inline int32_t weft_http_exit(void) { return weft_http_raw_exit(); }

#ifdef __cplusplus
}
#endif

#endif /* WEFT_HTTP_H */
