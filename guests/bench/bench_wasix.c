/*
 * The guest of `cargo xtask bench wasix` (crates/wasix-context/benches/wasix.rs).
 *
 *   bench_wasix roundtrip N   main -> context -> main, N times       prints "result <ns per round trip>"
 *   bench_wasix ring K N      N hops around a ring of K contexts     prints "result <ns per hop>"
 *   bench_wasix create N      N x (create, destroy), never started   prints "result <ns per pair>"
 *   bench_wasix churn N       N x (create, first switch in, switch back, destroy)
 *                             prints "result <ns per cycle>"
 *   bench_wasix rss N         N live suspended contexts (each started and switched back once);
 *                             prints "result <bytes of RSS per context>", measured by the host
 *                             through the import weft_bench.rss_bytes.
 *
 * Times come from WASI's monotonic clock around the measured loop only.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <wasix/context.h>

int64_t rss_bytes(void) __attribute__((import_module("weft_bench"), import_name("rss_bytes")));

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void fail(const char *what) {
  perror(what);
  exit(1);
}

/* --- round trip: the context bounces straight back to main. */
static void bounce(void) {
  for (;;) wasix_context_switch(wasix_context_main);
}

/* --- ring: context i switches to context i + 1; the last one to the first. */
static wasix_context_id_t *ring;
static int ring_size;
static volatile long hops_left;

static void ring_member(void) {
  /* Each member learns its position from a counter bumped at first entry. */
  static int next_position = 0;
  int me = next_position++;
  for (;;) {
    if (--hops_left <= 0) wasix_context_switch(wasix_context_main);
    wasix_context_switch(ring[(me + 1) % ring_size]);
  }
}

/* --- rss: every context switches back once and stays suspended. */
static void park(void) {
  volatile char frame[64];
  memset((char *)frame, 1, sizeof frame);
  for (;;) wasix_context_switch(wasix_context_main);
}

static void never_runs(void) { abort(); }

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: bench_wasix roundtrip|ring|create|rss [K] N\n");
    return 2;
  }
  const char *mode = argv[1];
  long n = atol(argv[argc - 1]);
  if (strcmp(mode, "roundtrip") == 0) {
    wasix_context_id_t ctx;
    if (wasix_context_create(&ctx, bounce)) fail("create");
    wasix_context_switch(ctx); /* first entry starts the entrypoint: not measured */
    uint64_t start = now_ns();
    for (long i = 0; i < n; i++) wasix_context_switch(ctx);
    uint64_t elapsed = now_ns() - start;
    printf("result %.1f\n", (double)elapsed / (double)n);
  } else if (strcmp(mode, "ring") == 0) {
    ring_size = atoi(argv[2]);
    ring = calloc((size_t)ring_size, sizeof *ring);
    for (int i = 0; i < ring_size; i++)
      if (wasix_context_create(&ring[i], ring_member)) fail("create");
    /* Warm up: one lap starts every member. */
    hops_left = ring_size;
    wasix_context_switch(ring[0]);
    hops_left = n;
    uint64_t start = now_ns();
    wasix_context_switch(ring[0]);
    uint64_t elapsed = now_ns() - start;
    printf("result %.1f\n", (double)elapsed / (double)n);
  } else if (strcmp(mode, "create") == 0) {
    wasix_context_id_t ctx;
    /* Warm up the host's region free list. */
    if (wasix_context_create(&ctx, never_runs) || wasix_context_destroy(ctx)) fail("warm-up");
    uint64_t start = now_ns();
    for (long i = 0; i < n; i++) {
      if (wasix_context_create(&ctx, never_runs)) fail("create");
      if (wasix_context_destroy(ctx)) fail("destroy");
    }
    uint64_t elapsed = now_ns() - start;
    printf("result %.1f\n", (double)elapsed / (double)n);
  } else if (strcmp(mode, "churn") == 0) {
    wasix_context_id_t ctx;
    if (wasix_context_create(&ctx, park) || wasix_context_switch(ctx) || wasix_context_destroy(ctx))
      fail("warm-up");
    uint64_t start = now_ns();
    for (long i = 0; i < n; i++) {
      if (wasix_context_create(&ctx, park)) fail("create");
      if (wasix_context_switch(ctx)) fail("switch");
      if (wasix_context_destroy(ctx)) fail("destroy");
    }
    uint64_t elapsed = now_ns() - start;
    printf("result %.1f\n", (double)elapsed / (double)n);
  } else if (strcmp(mode, "rss") == 0) {
    wasix_context_id_t *ids = calloc((size_t)n, sizeof *ids);
    int64_t before = rss_bytes();
    for (long i = 0; i < n; i++) {
      if (wasix_context_create(&ids[i], park)) fail("create");
      wasix_context_switch(ids[i]);
    }
    int64_t after = rss_bytes();
    printf("result %.1f\n", (double)(after - before) / (double)n);
    for (long i = 0; i < n; i++) wasix_context_destroy(ids[i]);
  } else {
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
  }
  return 0;
}
