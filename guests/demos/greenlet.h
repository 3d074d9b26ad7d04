/*
 * A small greenlet-like coroutine library (after Python's greenlet) written directly on the raw
 * WASIX context calls. Header-only: include it in one program.
 *
 *   greenlet *g = greenlet_new(run, parent);   // parent NULL: the current greenlet
 *   void *v = greenlet_switch(g, value);       // run g; returns what is switched back to us
 *
 * The first switch to a greenlet calls run(value). When run returns, the greenlet is dead and its
 * result is switched to its parent (or the parent's parent if that one is dead too). Switching to
 * a dead greenlet returns the value at once. Greenlets are freed with greenlet_free.
 */
#ifndef WEFT_GREENLET_H
#define WEFT_GREENLET_H

#include <stdio.h>
#include <stdlib.h>
#include <wasix/context.h>

typedef void *(*greenlet_run_t)(void *arg);

typedef struct greenlet {
  wasix_context_id_t context; /* 0 for the root greenlet, which runs on main */
  struct greenlet *parent;
  greenlet_run_t run;
  void *transfer; /* the value handed over by the switch that resumes this greenlet */
  int dead;
} greenlet;

static greenlet greenlet_root_state;
static greenlet *greenlet_running = &greenlet_root_state;

static inline greenlet *greenlet_current(void) { return greenlet_running; }
static inline greenlet *greenlet_root(void) { return &greenlet_root_state; }
static inline int greenlet_dead(const greenlet *g) { return g->dead; }

static inline void greenlet_die(const char *what, __wasi_errno_t err) {
  fprintf(stderr, "greenlet: %s failed with errno %d\n", what, err);
  abort();
}

/* The low-level hop: hand `value` to `target` and run it until someone switches back to us. */
static inline void *greenlet_hop(greenlet *target, void *value) {
  greenlet *self = greenlet_running;
  if (target == self)
    return value;
  target->transfer = value;
  greenlet_running = target;
  __wasi_errno_t err = __wasi_context_switch(target->context);
  if (err != 0)
    greenlet_die("context_switch", err);
  /* Resumed: whoever switched to us set greenlet_running to us and left a value. */
  return self->transfer;
}

static void greenlet_trampoline(void) {
  greenlet *self = greenlet_running;
  void *result = self->run(self->transfer);
  self->dead = 1;
  greenlet *parent = self->parent;
  while (parent->dead)
    parent = parent->parent;
  greenlet_hop(parent, result);
  /* Nobody can switch to a dead greenlet (greenlet_switch answers for it), so: */
  abort();
}

static inline greenlet *greenlet_new(greenlet_run_t run, greenlet *parent) {
  greenlet *g = calloc(1, sizeof *g);
  if (!g)
    return NULL;
  g->run = run;
  g->parent = parent ? parent : greenlet_running;
  __wasi_errno_t err = __wasi_context_create(&g->context, greenlet_trampoline);
  if (err != 0) {
    free(g);
    errno = err;
    return NULL;
  }
  return g;
}

static inline void *greenlet_switch(greenlet *target, void *value) {
  if (target->dead)
    return value;
  return greenlet_hop(target, value);
}

/* Frees a greenlet that is not running (dead, suspended, or never started). */
static inline void greenlet_free(greenlet *g) {
  if (g == greenlet_running || g == &greenlet_root_state)
    greenlet_die("greenlet_free of the running or root greenlet", EINVAL);
  __wasi_errno_t err = __wasi_context_destroy(g->context);
  if (err != 0)
    greenlet_die("context_destroy", err);
  free(g);
}

#endif
