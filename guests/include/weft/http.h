/*
 * <weft/http.h>: HTTP handlers for `weft serve`.
 *
 * A guest exports one handler, `void weft_http_handle(void)`; `weft serve` runs it in a new
 * WASIX context of a reused instance for every incoming request, so many requests share one
 * instance (and its globals) at once. Everything here is a static inline wrapper over the host
 * imports of module `weft_http` (the ABI is in /work/notes/serve-interface.md and
 * crates/http-attrib/README.md).
 *
 * Conventions of the raw imports: `>= 0` is success (a length, a handle or 0), `< 0` is minus a
 * WASI errno. Reading functions copy at most `cap` bytes and return the FULL length. The
 * wrappers below return the same values (no `errno` is set).
 *
 * Every call is attributed to "the request the calling context works for": the request its
 * handler context was started for (inherited by contexts it creates with <wasix/context.h>),
 * unless the context `weft_http_enter`ed another one. Outgoing fetches carry that request's id
 * in the `weft-request-id` header.
 *
 *   WEFT_HTTP_HANDLER void handle(void) {
 *     char path[256];
 *     int n = weft_http_request_path(path, sizeof path);
 *     weft_http_response_status(200);
 *     weft_http_response_header_str("content-type", "text/plain");
 *     weft_http_response_write(path, n < (int)sizeof path ? n : (int)sizeof path);
 *     weft_http_response_finish();
 *   }
 */
#ifndef WEFT_HTTP_H
#define WEFT_HTTP_H

#include <stdint.h>
#include <string.h>
#include <wasi/api.h>
#include <wasix/context.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Put before the handler's definition: exports it under the name the host looks for. */
#define WEFT_HTTP_HANDLER __attribute__((export_name("weft_http_handle")))

#define __WEFT_HTTP_IMPORT(name) __attribute__((import_module("weft_http"), import_name(name)))

/* ---- raw imports ---- */
int32_t __weft_http_request_method(char *buf, int32_t cap) __WEFT_HTTP_IMPORT("request_method");
int32_t __weft_http_request_path(char *buf, int32_t cap) __WEFT_HTTP_IMPORT("request_path");
int32_t __weft_http_request_header(const char *name, int32_t name_len, char *buf, int32_t cap)
    __WEFT_HTTP_IMPORT("request_header");
int32_t __weft_http_request_body(char *buf, int32_t cap, int32_t offset)
    __WEFT_HTTP_IMPORT("request_body");
int32_t __weft_http_response_status(int32_t status) __WEFT_HTTP_IMPORT("response_status");
int32_t __weft_http_response_header(const char *name, int32_t name_len, const char *value,
                                    int32_t value_len) __WEFT_HTTP_IMPORT("response_header");
int32_t __weft_http_response_write(const void *buf, int32_t len)
    __WEFT_HTTP_IMPORT("response_write");
int32_t __weft_http_response_finish(void) __WEFT_HTTP_IMPORT("response_finish");
int32_t __weft_http_fetch_start(const char *method, int32_t method_len, const char *url,
                                int32_t url_len, const char *headers, int32_t headers_len,
                                const void *body, int32_t body_len)
    __WEFT_HTTP_IMPORT("fetch_start");
int32_t __weft_http_fetch_status(int32_t handle) __WEFT_HTTP_IMPORT("fetch_status");
int32_t __weft_http_fetch_body(int32_t handle, char *buf, int32_t cap, int32_t offset)
    __WEFT_HTTP_IMPORT("fetch_body");
int32_t __weft_http_sleep_start(int64_t nanos) __WEFT_HTTP_IMPORT("sleep_start");
int32_t __weft_http_handle_ready(int32_t handle) __WEFT_HTTP_IMPORT("handle_ready");
int32_t __weft_http_block_on(int32_t handle) __WEFT_HTTP_IMPORT("block_on");
int32_t __weft_http_handle_close(int32_t handle) __WEFT_HTTP_IMPORT("handle_close");
int32_t __weft_http_schedule(int64_t context_id) __WEFT_HTTP_IMPORT("schedule");
int64_t __weft_http_context_self(void) __WEFT_HTTP_IMPORT("context_self");
int32_t __weft_http_log(int32_t level, const char *msg, int32_t len) __WEFT_HTTP_IMPORT("log");
int32_t __weft_http_backpressure(int32_t on) __WEFT_HTTP_IMPORT("backpressure");
int64_t __weft_http_request_token(void) __WEFT_HTTP_IMPORT("request_token");
int32_t __weft_http_enter(int64_t token) __WEFT_HTTP_IMPORT("enter");
int32_t __weft_http_exit(void) __WEFT_HTTP_IMPORT("exit");

/* ---- the incoming request ---- */

/* Method (`GET`, ...): full length, copies at most `cap` bytes (no NUL added). */
static inline int32_t weft_http_request_method(char *buf, int32_t cap) {
  return __weft_http_request_method(buf, cap);
}
/* Path and query as received (`/a?b=1`): full length. */
static inline int32_t weft_http_request_path(char *buf, int32_t cap) {
  return __weft_http_request_path(buf, cap);
}
/* First value of header `name` (case-insensitive): full length, or -ENOENT. */
static inline int32_t weft_http_request_header(const char *name, char *buf, int32_t cap) {
  return __weft_http_request_header(name, (int32_t)strlen(name), buf, cap);
}
/* Copies body bytes starting at `offset`: bytes copied, 0 at the end. */
static inline int32_t weft_http_request_body(char *buf, int32_t cap, int32_t offset) {
  return __weft_http_request_body(buf, cap, offset);
}

/* ---- the response (sent by weft_http_response_finish, or when the handler returns) ---- */

static inline int32_t weft_http_response_status(int32_t status) {
  return __weft_http_response_status(status);
}
static inline int32_t weft_http_response_header(const char *name, int32_t name_len,
                                                const char *value, int32_t value_len) {
  return __weft_http_response_header(name, name_len, value, value_len);
}
static inline int32_t weft_http_response_header_str(const char *name, const char *value) {
  return __weft_http_response_header(name, (int32_t)strlen(name), value, (int32_t)strlen(value));
}
static inline int32_t weft_http_response_write(const void *buf, int32_t len) {
  return __weft_http_response_write(buf, len);
}
static inline int32_t weft_http_response_write_str(const char *s) {
  return __weft_http_response_write(s, (int32_t)strlen(s));
}
/* Sends the response now; the handler (and its helper contexts) may go on working. */
static inline int32_t weft_http_response_finish(void) { return __weft_http_response_finish(); }

/* ---- suspending: only the calling context waits, the instance's other contexts run ---- */

/* Suspends the calling context until `handle` (a fetch or a sleep) is done. 0, or -EBADF. */
static inline int32_t weft_http_wait(int32_t handle) {
  for (;;) {
    int32_t ready = __weft_http_handle_ready(handle);
    if (ready != 0) return ready < 0 ? ready : 0;
    int32_t err = __weft_http_block_on(handle);
    if (err < 0) return err;
    __wasi_context_switch(0); /* back to the host (main): it resumes us when `handle` is done */
  }
}
/* Lets the instance's other contexts run, then comes back. */
static inline void weft_http_yield(void) {
  if (__weft_http_block_on(0) == 0) __wasi_context_switch(0);
}
/* Sleeps `nanos` nanoseconds (only this context). 0 or -errno. */
static inline int32_t weft_http_sleep_ns(int64_t nanos) {
  int32_t handle = __weft_http_sleep_start(nanos);
  if (handle < 0) return handle;
  int32_t err = weft_http_wait(handle);
  __weft_http_handle_close(handle);
  return err;
}
static inline int32_t weft_http_sleep_ms(int64_t millis) {
  return weft_http_sleep_ns(millis * 1000000);
}

/* The calling context's WASIX id (handlers run in contexts; 0 would be main). */
static inline wasix_context_id_t weft_http_context_self(void) {
  return (wasix_context_id_t)__weft_http_context_self();
}

/* Asks the host to resume suspended context `id` (of this instance) soon, from main, as if it
 * had yielded. 0, or -EINVAL (not a suspended context, or the caller itself). */
static inline int32_t weft_http_schedule(wasix_context_id_t id) { return __weft_http_schedule((int64_t)id); }

/* Starts `entry` in a new context that runs alongside the caller (the host runs it when the
 * caller waits or returns) and works for the caller's request (attribution is inherited).
 * In `weft serve` such a context MAY return from `entry`: that ends it. 0, or -errno. */
static inline int32_t weft_http_spawn(void (*entry)(void), wasix_context_id_t *id) {
  wasix_context_id_t local;
  if (!id) id = &local;
  __wasi_errno_t err = __wasi_context_create(id, entry);
  if (err != 0) return -(int32_t)err;
  return __weft_http_schedule((int64_t)*id);
}

/* ---- outgoing requests ---- */

/* Starts a fetch (`http://host:port/path`; `headers`: `Name: value\r\n` lines or NULL) and
 * returns its handle (> 0) or -errno; does not wait. The host adds `weft-request-id`. */
static inline int32_t weft_http_fetch_start(const char *method, const char *url,
                                            const char *headers, const void *body,
                                            int32_t body_len) {
  return __weft_http_fetch_start(method, (int32_t)strlen(method), url, (int32_t)strlen(url),
                                 headers, headers ? (int32_t)strlen(headers) : 0, body, body_len);
}
/* Status of a finished fetch, -EAGAIN while running, -ECONNREFUSED/-ETIMEDOUT/-EIO on failure. */
static inline int32_t weft_http_fetch_status(int32_t handle) {
  return __weft_http_fetch_status(handle);
}
/* Copies response body bytes from `offset`: bytes copied, 0 at the end. */
static inline int32_t weft_http_fetch_body(int32_t handle, char *buf, int32_t cap,
                                           int32_t offset) {
  return __weft_http_fetch_body(handle, buf, cap, offset);
}
static inline int32_t weft_http_handle_close(int32_t handle) {
  return __weft_http_handle_close(handle);
}
/* Fetch and wait (only this context): the handle (> 0, close it) or -errno. */
static inline int32_t weft_http_fetch(const char *method, const char *url, const char *headers,
                                      const void *body, int32_t body_len) {
  int32_t handle = weft_http_fetch_start(method, url, headers, body, body_len);
  if (handle < 0) return handle;
  int32_t err = weft_http_wait(handle);
  if (err < 0) {
    __weft_http_handle_close(handle);
    return err;
  }
  return handle;
}
/* GET `url` and wait: the HTTP status, or -errno. Frees the handle. */
static inline int32_t weft_http_get_status(const char *url) {
  int32_t handle = weft_http_fetch("GET", url, NULL, NULL, 0);
  if (handle < 0) return handle;
  int32_t status = __weft_http_fetch_status(handle);
  __weft_http_handle_close(handle);
  return status;
}

/* ---- logging, backpressure, attribution ---- */

enum { WEFT_LOG_DEBUG = 0, WEFT_LOG_INFO = 1, WEFT_LOG_WARN = 2, WEFT_LOG_ERROR = 3 };
static inline int32_t weft_http_log(int32_t level, const char *msg) {
  return __weft_http_log(level, msg, (int32_t)strlen(msg));
}
/* on != 0: no new requests for this instance until called with 0. */
static inline int32_t weft_http_backpressure(int on) { return __weft_http_backpressure(on); }
/* The request the calling context works for (a token for weft_http_enter), 0 if none. */
static inline int64_t weft_http_request_token(void) { return __weft_http_request_token(); }
/* Scoped override: work for request `token` until the matching weft_http_exit. */
static inline int32_t weft_http_enter(int64_t token) { return __weft_http_enter(token); }
static inline int32_t weft_http_exit(void) { return __weft_http_exit(); }

#ifdef __cplusplus
}
#endif

#endif /* WEFT_HTTP_H */
