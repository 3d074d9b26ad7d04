/*
 * The greenlet-like library of greenlet.h at work: interleaving (the example of Python greenlet's
 * documentation), values passed both ways through switch, and a return value that travels to the
 * parent greenlet rather than to main.
 */
#include "greenlet.h"

#include <stdint.h>

static greenlet *gr1, *gr2;

static void *test1(void *arg) {
  (void)arg;
  printf("12\n");
  greenlet_switch(gr2, NULL);
  printf("34\n");
  return NULL;
}

static void *test2(void *arg) {
  (void)arg;
  printf("56\n");
  greenlet_switch(gr1, NULL);
  printf("78 (never printed: gr2 is never resumed)\n");
  return NULL;
}

/* Receives numbers from whoever switches to it, until NULL; returns the total. */
static void *summer(void *first) {
  intptr_t total = 0;
  for (void *value = first; value; value = greenlet_switch(greenlet_root(), NULL)) {
    total += (intptr_t)value;
    printf("  summer: got %ld, total %ld\n", (long)(intptr_t)value, (long)total);
  }
  return (void *)total;
}

static void *child(void *arg) {
  printf("  child: running with parent %s, returning %ld\n",
         greenlet_current()->parent == greenlet_root() ? "main" : "the middle greenlet",
         (long)(intptr_t)arg * 2);
  return (void *)((intptr_t)arg * 2);
}

static void *middle(void *arg) {
  greenlet *kid = greenlet_new(child, NULL); /* parent: this greenlet */
  void *doubled = greenlet_switch(kid, arg);
  printf("  middle: the child's result came back to me: %ld\n", (long)(intptr_t)doubled);
  greenlet_free(kid);
  return (void *)((intptr_t)doubled + 1);
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  printf("interleaving:\n");
  gr1 = greenlet_new(test1, NULL);
  gr2 = greenlet_new(test2, NULL);
  greenlet_switch(gr1, NULL);
  printf("gr1 dead: %d, gr2 dead: %d\n", greenlet_dead(gr1), greenlet_dead(gr2));
  greenlet_free(gr1);
  greenlet_free(gr2);

  printf("passing values:\n");
  greenlet *sum = greenlet_new(summer, NULL);
  for (intptr_t i = 1; i <= 4; i++)
    greenlet_switch(sum, (void *)(i * 10));
  void *total = greenlet_switch(sum, NULL);
  printf("main: summer returned %ld, dead: %d\n", (long)(intptr_t)total, greenlet_dead(sum));
  greenlet_free(sum);

  printf("parents:\n");
  greenlet *mid = greenlet_new(middle, NULL);
  void *result = greenlet_switch(mid, (void *)(intptr_t)20);
  printf("main: middle returned %ld\n", (long)(intptr_t)result);
  greenlet_free(mid);
  return 0;
}
