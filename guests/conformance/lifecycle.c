/*
 * The life of one context: create leaves it suspended without running it, the first switch runs
 * its entrypoint, later switches resume it where it stopped, destroy releases it. Ids are non-zero,
 * distinct from main's (0) and from each other.
 */
#include "check.h"

static wasix_context_id_t worker;
static int steps;

static void worker_main(void) {
  printf("worker: first run (step %d)\n", ++steps);
  CHECK(wasix_context_switch(wasix_context_main) == 0);
  printf("worker: resumed where it stopped (step %d)\n", ++steps);
  CHECK(wasix_context_switch(wasix_context_main) == 0);
  FAIL("a destroyed context was resumed");
}

static void other_main(void) { FAIL("never switched to"); }

int main(void) {
  printf("main: main context id is %llu\n", (unsigned long long)wasix_context_main);
  worker = 0;
  CHECK(wasix_context_create(&worker, worker_main) == 0);
  CHECK(worker != 0);
  printf("main: created a context with a non-zero id\n");
  CHECK(steps == 0);
  printf("main: the entrypoint has not run yet\n");

  CHECK(wasix_context_switch(worker) == 0);
  printf("main: back in main (step %d)\n", steps);
  CHECK(wasix_context_switch(worker) == 0);
  printf("main: back in main again (step %d)\n", steps);

  wasix_context_id_t other = 0;
  CHECK(wasix_context_create(&other, other_main) == 0);
  CHECK(other != 0 && other != worker);
  printf("main: a second context got a different id\n");

  CHECK(wasix_context_destroy(worker) == 0);
  CHECK(wasix_context_destroy(other) == 0);
  printf("main: destroyed both contexts\n");
  return 0;
}
