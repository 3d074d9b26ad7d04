// xtask-world: wasi:http/service@0.3.0
// A `wasi:http/service@0.3` guest in C, written against the async ABI as wit-bindgen's C
// bindings expose it: `handle` is lifted with a callback, so a task that waits returns
// `WAIT(set)` to the host and its instance can start other tasks meanwhile.
//
// Paths:
// - `/hold`: raises backpressure (`backpressure.inc`), calls the `x-upstream` host
//   (`client.send` to `/held`), lowers it again (`backpressure.dec`) once the answer is there,
//   then answers `/hold <status>`. While it waits, the host must start no new task in this
//   instance.
// - anything else: a greeting with the method, the path and the number of requests this
//   instance served.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service.h"

typedef wasi_http_types_future_result_option_own_trailers_error_code_writer_t trailers_writer_t;

// What one request's task keeps between callbacks (found again through `context.get`).
typedef struct task {
  service_waitable_set_t set;
  // The outgoing call of `/hold`, and the trailers future of its request.
  service_subtask_t send;
  wasi_http_client_result_own_response_error_code_t sent;
  trailers_writer_t request_trailers;
  wasi_http_types_result_option_own_trailers_error_code_t no_trailers;
  int holding;
  // The answer: its body stream and trailers future, written after `task.return`.
  wasi_http_types_stream_u8_writer_t body;
  trailers_writer_t trailers;
  char text[512];
  size_t length, written;
  char path[256];
} task_t;

static unsigned served;

static const char *method_name(const wasi_http_types_method_t *method) {
  static const char *const names[] = {"GET",     "HEAD",    "POST",  "PUT",   "DELETE",
                                      "CONNECT", "OPTIONS", "TRACE", "PATCH"};
  return method->tag < sizeof names / sizeof names[0] ? names[method->tag] : "OTHER";
}

// Writes `ok(none)` into a trailers future; joins the set when the reader has not taken it yet.
static trailers_writer_t send_no_trailers(task_t *task,
                                          wasi_http_types_future_result_option_own_trailers_error_code_t *reader) {
  trailers_writer_t writer;
  *reader = wasi_http_types_future_result_option_own_trailers_error_code_new(&writer);
  task->no_trailers.is_err = false;
  task->no_trailers.val.ok.is_some = false;
  return writer;
}

static void start_trailers_write(task_t *task, trailers_writer_t *writer) {
  service_waitable_status_t status =
      wasi_http_types_future_result_option_own_trailers_error_code_write(*writer, &task->no_trailers);
  if (status == SERVICE_WAITABLE_STATUS_BLOCKED) {
    service_waitable_join(*writer, task->set);
  } else {
    wasi_http_types_future_result_option_own_trailers_error_code_drop_writable(*writer);
    *writer = 0;
  }
}

// `task.return`s a 200 with `task->text` as its body stream; the body is written afterwards.
static void answer(task_t *task) {
  wasi_http_types_field_name_t name = {(uint8_t *)"content-type", strlen("content-type")};
  wasi_http_types_field_value_t value = {(uint8_t *)"text/plain", strlen("text/plain")};
  wasi_http_types_tuple2_field_name_field_value_t entry = {name, value};
  wasi_http_types_list_tuple2_field_name_field_value_t entries = {&entry, 1};
  wasi_http_types_own_fields_t headers;
  wasi_http_types_header_error_t header_error;
  if (!wasi_http_types_static_fields_from_list(&entries, &headers, &header_error)) abort();

  wasi_http_types_stream_u8_t contents = wasi_http_types_stream_u8_new(&task->body);
  wasi_http_types_future_result_option_own_trailers_error_code_t trailers;
  task->trailers = send_no_trailers(task, &trailers);
  wasi_http_types_tuple2_own_response_future_result_void_error_code_t made;
  wasi_http_types_static_response_new(headers, &contents, trailers, &made);
  // Whether the body arrived is of no interest here.
  wasi_http_types_future_result_void_error_code_drop_readable(made.f1);
  exports_wasi_http_handler_result_own_response_error_code_t result = {.is_err = false};
  result.val.ok = made.f0;
  exports_wasi_http_handler_handle_return(result);
}

// Writes what it can of the body; returns 1 once the body is done (written or dropped).
static int write_body(task_t *task) {
  while (task->body != 0 && task->written < task->length) {
    service_waitable_status_t status = wasi_http_types_stream_u8_write(
        task->body, (const uint8_t *)task->text + task->written, task->length - task->written);
    if (status == SERVICE_WAITABLE_STATUS_BLOCKED) {
      service_waitable_join(task->body, task->set);
      return 0;
    }
    task->written += SERVICE_WAITABLE_COUNT(status);
    if (SERVICE_WAITABLE_STATE(status) == SERVICE_WAITABLE_DROPPED) break;
  }
  if (task->body != 0) {
    wasi_http_types_stream_u8_drop_writable(task->body);
    task->body = 0;
    start_trailers_write(task, &task->trailers);
  }
  return 1;
}

// Moves the task on as far as it can go; what it then waits for is joined to its set.
static service_callback_code_t progress(task_t *task) {
  if (task->send != 0) return SERVICE_CALLBACK_CODE_WAIT(task->set);
  if (task->holding) {
    task->holding = 0;
    service_backpressure_dec();
    int status = -1;
    if (!task->sent.is_err) {
      status = wasi_http_types_method_response_get_status_code(
          wasi_http_types_borrow_response(task->sent.val.ok));
      wasi_http_types_response_drop_own(task->sent.val.ok);
    } else {
      wasi_http_types_error_code_free(&task->sent.val.err);
    }
    task->length = (size_t)snprintf(task->text, sizeof task->text, "%s %d\n", task->path, status);
    answer(task);
  }
  if (!write_body(task) || task->trailers != 0 || task->request_trailers != 0) {
    return SERVICE_CALLBACK_CODE_WAIT(task->set);
  }
  service_context_set_0(NULL);
  service_waitable_set_drop(task->set);
  free(task);
  return SERVICE_CALLBACK_CODE_EXIT;
}

// `GET http://<authority>/held`, as a subtask of this task.
static void start_call(task_t *task, const char *authority) {
  wasi_http_types_future_result_option_own_trailers_error_code_t trailers;
  task->request_trailers = send_no_trailers(task, &trailers);
  wasi_http_types_tuple2_own_request_future_result_void_error_code_t made;
  wasi_http_types_static_request_new(wasi_http_types_constructor_fields(), NULL, trailers, NULL,
                                     &made);
  wasi_http_types_future_result_void_error_code_drop_readable(made.f1);
  wasi_http_types_borrow_request_t request = wasi_http_types_borrow_request(made.f0);
  wasi_http_types_scheme_t scheme = {.tag = WASI_HTTP_TYPES_SCHEME_HTTP};
  service_string_t host = {(uint8_t *)authority, strlen(authority)};
  service_string_t path = {(uint8_t *)"/held", strlen("/held")};
  if (!wasi_http_types_method_request_set_scheme(request, &scheme) ||
      !wasi_http_types_method_request_set_authority(request, &host) ||
      !wasi_http_types_method_request_set_path_with_query(request, &path)) {
    abort();
  }
  service_subtask_status_t status = wasi_http_client_send(made.f0, &task->sent);
  if (SERVICE_SUBTASK_STATE(status) != SERVICE_SUBTASK_RETURNED) {
    task->send = SERVICE_SUBTASK_HANDLE(status);
    service_waitable_join(task->send, task->set);
  }
  start_trailers_write(task, &task->request_trailers);
}

// The first value of a header as a NUL-terminated string in `out`, or 0 when absent.
static int header(wasi_http_types_borrow_request_t request, const char *name, char *out,
                  size_t size) {
  wasi_http_types_own_headers_t headers = wasi_http_types_method_request_get_headers(request);
  wasi_http_types_field_name_t key = {(uint8_t *)name, strlen(name)};
  wasi_http_types_list_field_value_t values;
  wasi_http_types_method_fields_get(wasi_http_types_borrow_fields(headers), &key, &values);
  int found = values.len > 0 && values.ptr[0].len < size;
  if (found) {
    memcpy(out, values.ptr[0].ptr, values.ptr[0].len);
    out[values.ptr[0].len] = '\0';
  }
  wasi_http_types_list_field_value_free(&values);
  wasi_http_types_fields_drop_own(headers);
  return found;
}

service_callback_code_t exports_wasi_http_handler_handle(exports_wasi_http_handler_own_request_t request) {
  served++;
  task_t *task = calloc(1, sizeof *task);
  if (task == NULL) abort();
  task->set = service_waitable_set_new();
  service_context_set_0(task);

  wasi_http_types_borrow_request_t borrowed = wasi_http_types_borrow_request(request);
  wasi_http_types_method_t method;
  wasi_http_types_method_request_get_method(borrowed, &method);
  service_string_t path;
  if (wasi_http_types_method_request_get_path_with_query(borrowed, &path)) {
    snprintf(task->path, sizeof task->path, "%.*s", (int)path.len, (const char *)path.ptr);
    service_string_free(&path);
  } else {
    strcpy(task->path, "/");
  }
  char upstream[128];
  int has_upstream = header(borrowed, "x-upstream", upstream, sizeof upstream);

  if (strncmp(task->path, "/hold", 5) == 0 && has_upstream) {
    service_backpressure_inc();
    task->holding = 1;
    start_call(task, upstream);
  } else {
    task->length = (size_t)snprintf(task->text, sizeof task->text,
                                    "hello from a C p3 component: %s %s (request %u of this "
                                    "instance)\n",
                                    method_name(&method), task->path, served);
    answer(task);
  }
  wasi_http_types_method_free(&method);
  wasi_http_types_request_drop_own(request);
  return progress(task);
}

service_callback_code_t exports_wasi_http_handler_handle_callback(service_event_t *event) {
  task_t *task = service_context_get_0();
  switch (event->event) {
    case SERVICE_EVENT_SUBTASK:
      if (event->waitable == task->send && event->code == SERVICE_SUBTASK_RETURNED) {
        service_waitable_join(task->send, 0);
        service_subtask_drop(task->send);
        task->send = 0;
      }
      break;
    case SERVICE_EVENT_STREAM_WRITE:
      if (event->waitable == task->body) {
        service_waitable_join(task->body, 0);
        task->written += SERVICE_WAITABLE_COUNT(event->code);
        if (SERVICE_WAITABLE_STATE(event->code) == SERVICE_WAITABLE_DROPPED) {
          task->written = task->length;
        }
      }
      break;
    case SERVICE_EVENT_FUTURE_WRITE: {
      trailers_writer_t *writer = event->waitable == task->trailers ? &task->trailers
                                  : event->waitable == task->request_trailers
                                      ? &task->request_trailers
                                      : NULL;
      if (writer != NULL) {
        service_waitable_join(*writer, 0);
        wasi_http_types_future_result_option_own_trailers_error_code_drop_writable(*writer);
        *writer = 0;
      }
      break;
    }
    default:
      break;
  }
  return progress(task);
}
