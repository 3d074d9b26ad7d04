/*
 * The guest of the `weft serve` end-to-end tests (tests/tests/serve_e2e.rs): one handler,
 * routed by path. Every outgoing request goes to `<x-upstream header> + "/up" + <incoming path
 * and query>`, so the test's upstream can tell which incoming request each one belongs to
 * (the `n=` in the query) and compare with the `weft-request-id` the host put on it.
 *
 *   /hello              200 "hello"
 *   /nap?ms=N           logs "napping <path>", sleeps N ms (default 200), no outgoing call
 *   /sleep?ms=N         sleeps N ms (default 20), then one fetch
 *   /fetch              two fetches, one after the other
 *   /helper             a helper context the handler creates and switches to does the fetch,
 *                       then switches back; the handler destroys it
 *   /spawn              a helper started with weft_http_spawn (run by the host) does the
 *                       fetch and returns; the handler yields until it is done
 *   /worker             the fetch is queued for the instance's worker context, which runs
 *                       jobs of many requests and says whose each one is with enter/exit
 *   /post               answers first, then fetches (post-response work) and logs
 *                       "post-response fetch done <path> status=S" when the fetch is done
 *   /bp                 backpressure on, one fetch, backpressure off, then answers
 *   /hold               the same without backpressure (the control of /bp)
 *   /trap               logs "trapping <path>", then traps
 *   /spin               logs "spinning <path>", then loops forever
 *   /loop               fetches the URL in its `x-self` header (this very server) and answers
 *                       "inner=<status of that fetch>"
 *
 * Any other path is 404. A handler reports its fetch results in its body
 * ("<route> status=S ...") and answers 502 when a fetch did not come back 200.
 */
// xtask-flag: -mexec-model=reactor
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <weft/http.h>
#include <wasix/context.h>

#define PATH_CAP 512
#define URL_CAP 1024

/* ---- small helpers ---- */

static void respond(int status, const char *body) {
  weft_http_response_status(status);
  weft_http_response_header_str("content-type", "text/plain");
  weft_http_response_write_str(body);
  weft_http_response_finish();
}

/* Reads a request string (path, header) NUL-terminated into `buf`; -1 when absent or too long. */
static int read_text(int32_t len, char *buf, int32_t cap) {
  if (len < 0 || len >= cap) return -1;
  buf[len] = '\0';
  return 0;
}

/* The integer value of `key=` in the query of `path`, or `fallback`. */
static long query_long(const char *path, const char *key, long fallback) {
  const char *query = strchr(path, '?');
  size_t key_len = strlen(key);
  while (query != NULL) {
    query++;
    if (strncmp(query, key, key_len) == 0 && query[key_len] == '=') {
      return strtol(query + key_len + 1, NULL, 10);
    }
    query = strchr(query, '&');
  }
  return fallback;
}

/* `<x-upstream without trailing slashes>/up<path>` into `url`; -1 without the header. */
static int upstream_url(const char *path, char *url, size_t cap) {
  char base[URL_CAP];
  if (read_text(weft_http_request_header("x-upstream", base, sizeof base), base, sizeof base) < 0)
    return -1;
  size_t len = strlen(base);
  while (len > 0 && base[len - 1] == '/') base[--len] = '\0';
  int written = snprintf(url, cap, "%s/up%s", base, path);
  return written < 0 || (size_t)written >= cap ? -1 : 0;
}

static void log_with_path(const char *what, const char *path) {
  char message[PATH_CAP + 64];
  snprintf(message, sizeof message, "%s %s", what, path);
  weft_http_log(WEFT_LOG_INFO, message);
}

/* Answers with the statuses of the fetches a route made: 200 when all were 200, else 502. */
static void respond_with_statuses(const char *route, const int32_t *statuses, int count) {
  char body[128];
  int len = snprintf(body, sizeof body, "%s", route);
  int all_ok = 1;
  for (int i = 0; i < count; i++) {
    len += snprintf(body + len, sizeof body - (size_t)len, " status=%d", (int)statuses[i]);
    all_ok &= statuses[i] == 200;
  }
  snprintf(body + len, sizeof body - (size_t)len, "\n");
  respond(all_ok ? 200 : 502, body);
}

/* ---- /helper: a context the handler creates does the fetch ---- */

struct helper_job {
  char url[URL_CAP];
  int32_t status;
  wasix_context_id_t handler;
};

/* Handed from the creating handler to the helper it switches to at once. */
static struct helper_job *starting_helper;

static void helper_main(void) {
  struct helper_job *job = starting_helper;
  /* Only this context waits for the fetch; the handler stays suspended meanwhile. */
  job->status = weft_http_get_status(job->url);
  wasix_context_switch(job->handler);
  __builtin_trap(); /* the handler destroys this context without resuming it */
}

static void route_helper(const char *url) {
  struct helper_job job;
  strcpy(job.url, url);
  job.status = -1;
  job.handler = weft_http_context_self();
  wasix_context_id_t helper;
  starting_helper = &job;
  if (wasix_context_create(&helper, helper_main) != 0) {
    respond(500, "cannot create the helper context\n");
    return;
  }
  wasix_context_switch(helper);
  wasix_context_destroy(helper);
  respond_with_statuses("helper", &job.status, 1);
}

/* ---- /spawn: a helper the host runs alongside the handler ---- */

struct spawned_job {
  char url[URL_CAP];
  int32_t status;
  volatile int done;
};

/* Which job each spawned helper does: it runs later, when other handlers may have spawned
 * theirs, so it looks itself up by its own context id. */
#define MAX_SPAWNED 64
static struct {
  wasix_context_id_t id;
  struct spawned_job *job;
} spawned[MAX_SPAWNED];

static void spawned_main(void) {
  wasix_context_id_t self = weft_http_context_self();
  for (int i = 0; i < MAX_SPAWNED; i++) {
    if (spawned[i].job != NULL && spawned[i].id == self) {
      struct spawned_job *job = spawned[i].job;
      spawned[i].job = NULL;
      job->status = weft_http_get_status(job->url);
      job->done = 1;
      return; /* in weft serve, a host-run context may return: that ends it */
    }
  }
  __builtin_trap(); /* started without a job: a bug */
}

static void route_spawn(const char *url) {
  struct spawned_job job;
  strcpy(job.url, url);
  job.status = -1;
  job.done = 0;
  int slot = 0;
  while (slot < MAX_SPAWNED && spawned[slot].job != NULL) slot++;
  if (slot == MAX_SPAWNED) {
    respond(503, "too many helpers\n");
    return;
  }
  /* The helper cannot run before this handler waits, so filling the slot after is safe. */
  if (weft_http_spawn(spawned_main, &spawned[slot].id) != 0) {
    respond(500, "cannot spawn the helper context\n");
    return;
  }
  spawned[slot].job = &job;
  while (!job.done) weft_http_yield();
  respond_with_statuses("spawn", &job.status, 1);
}

/* ---- /worker: one worker context per instance runs queued fetches for many requests ---- */

struct worker_job {
  int64_t token; /* the request the job is for: the worker enters it for the fetch */
  char url[URL_CAP];
  int32_t status;
  volatile int done;
  struct worker_job *next;
};

static struct worker_job *jobs_head, *jobs_tail;
static int worker_running;
static wasix_context_id_t worker, worker_kicker;

/*
 * Runs every queued job, then switches back to the handler that started it, which destroys it:
 * the worker lives only while there is work, so it never keeps a request alive for nothing.
 * It was created by one request (its root) but works for many: without the override its
 * fetches would carry its creator's id.
 */
static void worker_main(void) {
  for (;;) {
    struct worker_job *job;
    while ((job = jobs_head) != NULL) {
      jobs_head = job->next;
      if (jobs_head == NULL) jobs_tail = NULL;
      int32_t err = weft_http_enter(job->token);
      if (err < 0) {
        job->status = err;
      } else {
        job->status = weft_http_get_status(job->url);
        weft_http_exit();
      }
      job->done = 1;
    }
    wasix_context_switch(worker_kicker);
  }
}

static void route_worker(const char *url) {
  struct worker_job job;
  job.token = weft_http_request_token();
  strcpy(job.url, url);
  job.status = -1;
  job.done = 0;
  job.next = NULL;
  if (jobs_tail != NULL) jobs_tail->next = &job;
  else jobs_head = &job;
  jobs_tail = &job;
  if (!worker_running) {
    worker_kicker = weft_http_context_self();
    if (wasix_context_create(&worker, worker_main) != 0) {
      jobs_head = jobs_tail = NULL;
      respond(500, "cannot create the worker context\n");
      return;
    }
    worker_running = 1;
    wasix_context_switch(worker); /* back when the queue is empty: our job is done too */
    wasix_context_destroy(worker);
    worker_running = 0;
  }
  while (!job.done) weft_http_yield();
  respond_with_statuses("worker", &job.status, 1);
}

/* ---- the handler ---- */

static int route_is(const char *path, const char *route) {
  size_t len = strlen(route);
  return strncmp(path, route, len) == 0 && (path[len] == '\0' || path[len] == '?');
}

WEFT_HTTP_HANDLER void handle(void) {
  char path[PATH_CAP];
  if (read_text(weft_http_request_path(path, sizeof path), path, sizeof path) < 0) {
    respond(414, "path too long\n");
    return;
  }
  if (route_is(path, "/hello")) {
    respond(200, "hello\n");
    return;
  }
  if (route_is(path, "/nap")) {
    log_with_path("napping", path);
    weft_http_sleep_ms(query_long(path, "ms", 200));
    respond(200, "nap done\n");
    return;
  }
  if (route_is(path, "/trap")) {
    log_with_path("trapping", path);
    __builtin_trap();
  }
  if (route_is(path, "/spin")) {
    log_with_path("spinning", path);
    volatile unsigned long spins = 0;
    for (;;) spins++;
  }
  if (route_is(path, "/loop")) {
    char self[URL_CAP];
    if (read_text(weft_http_request_header("x-self", self, sizeof self), self, sizeof self) < 0) {
      respond(400, "send this server's URL in an x-self header\n");
      return;
    }
    char body[64];
    snprintf(body, sizeof body, "inner=%d\n", (int)weft_http_get_status(self));
    respond(200, body);
    return;
  }

  char url[URL_CAP];
  if (upstream_url(path, url, sizeof url) < 0) {
    respond(400, "send the upstream URL in an x-upstream header\n");
    return;
  }
  if (route_is(path, "/sleep")) {
    weft_http_sleep_ms(query_long(path, "ms", 20));
    int32_t status = weft_http_get_status(url);
    respond_with_statuses("sleep", &status, 1);
  } else if (route_is(path, "/fetch")) {
    int32_t statuses[2];
    statuses[0] = weft_http_get_status(url);
    statuses[1] = weft_http_get_status(url);
    respond_with_statuses("fetch", statuses, 2);
  } else if (route_is(path, "/helper")) {
    route_helper(url);
  } else if (route_is(path, "/spawn")) {
    route_spawn(url);
  } else if (route_is(path, "/worker")) {
    route_worker(url);
  } else if (route_is(path, "/post")) {
    respond(200, "post-response work scheduled\n");
    int32_t status = weft_http_get_status(url);
    char message[PATH_CAP + 64];
    snprintf(message, sizeof message, "post-response fetch done %s status=%d", path, (int)status);
    weft_http_log(WEFT_LOG_INFO, message);
  } else if (route_is(path, "/bp") || route_is(path, "/hold")) {
    int backpressure = route_is(path, "/bp");
    if (backpressure) weft_http_backpressure(1);
    int32_t status = weft_http_get_status(url);
    if (backpressure) weft_http_backpressure(0);
    respond_with_statuses(backpressure ? "bp" : "hold", &status, 1);
  } else {
    respond(404, "no such route\n");
  }
}

