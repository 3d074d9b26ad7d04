/*
 * A hostile guest for `weft serve` (tests/tests/serve_hostile.rs and the soak test): each route
 * tries to take something from the host, and reports in its body what the host answered.
 *
 *   /ok                 200 "ok" (the innocent request)
 *   /headers            appends distinct response headers until refused: "headers N err E"
 *   /status             asks for status 999: "status err E" (then answers 200)
 *   /write              writes 64 KiB at a time until refused: "... err E" is not sent (the body
 *                       is full); the body is exactly the server's response-body limit
 *   /malloc             mallocs 1 MiB blocks until malloc returns NULL, frees them:
 *                       "malloc null after N MiB"
 *   /contexts           creates contexts until refused: "contexts N err E", destroys them
 *   /badurl             fetches a URL whose port does not fit: "fetch err E"
 *   /never              switches to main without waiting and never answers
 *   /spin               registers a wait, then spins until /flag is called, then waits
 *   /flag               raises the flag /spin waits for
 *   /busy               sets a global, logs "busy start", computes for about a second without
 *                       calling the host, clears the global: "busy done"
 *   /observe            "busy N": whether it ran while /busy held the global (it must not:
 *                       contexts switch only where the guest says)
 */
// xtask-flag: -mexec-model=reactor
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <weft/http.h>
#include <wasix/context.h>

#define PATH_CAP 256

static volatile int flag;
static volatile int busy;

static void respond(int status, const char *body) {
  weft_http_response_status(status);
  weft_http_response_header_str("content-type", "text/plain");
  weft_http_response_write_str(body);
  weft_http_response_finish();
}

static void headers(void) {
  char name[16], body[64];
  int n = 0;
  int32_t err = 0;
  for (; n < 40000; n++) {
    snprintf(name, sizeof name, "x-h%d", n);
    err = weft_http_response_header_str(name, "v");
    if (err != 0) break;
  }
  snprintf(body, sizeof body, "headers %d err %s\n", n, weft_errno_name(err));
  respond(200, body);
}

static void status(void) {
  char body[64];
  int32_t err = weft_http_response_status(999);
  snprintf(body, sizeof body, "status err %s\n", weft_errno_name(err));
  respond(200, body);
}

static void write_forever(void) {
  static char chunk[65536];
  memset(chunk, 'w', sizeof chunk);
  weft_http_response_status(200);
  while (weft_http_response_write(chunk, (int32_t)sizeof chunk) >= 0) {
  }
  weft_http_response_finish();
}

static void malloc_until_null(void) {
  void **blocks = NULL;
  size_t count = 0, cap = 0;
  for (;;) {
    if (count == cap) {
      size_t next = cap ? cap * 2 : 64;
      void **grown = realloc(blocks, next * sizeof *blocks);
      if (!grown) break;
      blocks = grown;
      cap = next;
    }
    void *block = malloc(1 << 20);
    if (!block) break;
    memset(block, 1, 1 << 20); /* touch it: the memory is really used */
    blocks[count++] = block;
  }
  for (size_t i = 0; i < count; i++) free(blocks[i]);
  free(blocks);
  char body[64];
  snprintf(body, sizeof body, "malloc null after %zu MiB\n", count);
  respond(200, body);
}

static void parked_forever(void) {
  for (;;) weft_http_yield();
}

static void contexts(void) {
  static wasix_context_id_t ids[1 << 20];
  size_t n = 0;
  __wasi_errno_t err = 0;
  while (n < sizeof ids / sizeof ids[0]) {
    err = __wasi_context_create(&ids[n], parked_forever);
    if (err != 0) break;
    n++;
  }
  for (size_t i = 0; i < n; i++) __wasi_context_destroy(ids[i]);
  char body[64];
  snprintf(body, sizeof body, "contexts %zu err %s\n", n, weft_errno_name((int32_t)err));
  respond(200, body);
}

static void bad_url(void) {
  weft_http_handle_t handle;
  int32_t err = weft_http_fetch_start("GET", "http://127.0.0.1:99999/x", NULL, NULL, 0, &handle);
  char body[64];
  snprintf(body, sizeof body, "fetch err %s\n", weft_errno_name(err));
  respond(200, body);
}

static void never(void) {
  __wasi_context_switch(0); /* no block_on: nothing will resume this context */
  respond(200, "resumed\n");
}

static void spin(void) {
  weft_http_handle_t nap = {weft_http_raw_sleep_start(1000000)};
  weft_http_raw_block_on(nap.id);
  while (!flag) {
  }
  __wasi_context_switch(0);
  weft_http_handle_close(nap);
  respond(200, "spun\n");
}

static void compute(void) {
  busy = 1;
  weft_http_raw_log(1, "busy start", 10);
  volatile uint32_t counter = 0;
  for (uint32_t i = 0; i < (1u << 30); i++) counter += i;
  busy = 0;
  respond(200, "busy done\n");
}

static void observe(void) {
  char body[32];
  snprintf(body, sizeof body, "busy %d\n", busy);
  respond(200, body);
}

WEFT_HTTP_HANDLER void handle(void) {
  char path[PATH_CAP];
  int32_t len = weft_http_request_path(path, PATH_CAP - 1);
  if (len < 0 || len >= PATH_CAP) {
    respond(414, "path too long\n");
    return;
  }
  path[len] = '\0';
  if (strcmp(path, "/ok") == 0) respond(200, "ok\n");
  else if (strcmp(path, "/headers") == 0) headers();
  else if (strcmp(path, "/status") == 0) status();
  else if (strcmp(path, "/write") == 0) write_forever();
  else if (strcmp(path, "/malloc") == 0) malloc_until_null();
  else if (strcmp(path, "/contexts") == 0) contexts();
  else if (strcmp(path, "/badurl") == 0) bad_url();
  else if (strcmp(path, "/never") == 0) never();
  else if (strcmp(path, "/spin") == 0) spin();
  else if (strcmp(path, "/busy") == 0) compute();
  else if (strcmp(path, "/observe") == 0) observe();
  else if (strcmp(path, "/flag") == 0) {
    flag = 1;
    respond(200, "flag\n");
  } else respond(404, "no such route\n");
}

