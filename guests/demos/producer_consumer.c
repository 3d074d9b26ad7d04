/*
 * Producers and consumers on a bounded queue, as cooperative tasks: each task is a context; a
 * small round-robin scheduler runs on main. A task that finds the queue full (or empty) yields to
 * the scheduler and retries, so tasks interleave deterministically.
 */
#include <stdio.h>
#include <stdlib.h>
#include <wasix/context.h>

enum { TASKS = 4, CAPACITY = 3, ITEMS_PER_PRODUCER = 6 };

struct task {
  const char *name;
  void (*body)(struct task *);
  wasix_context_id_t context;
  int done;
  long result;
};

static struct task tasks[TASKS];
static struct task *running;

static int queue[CAPACITY];
static int head, count;
static int producers_left = 2;

/* Back to the scheduler; returns when the scheduler runs this task again. */
static void yield(void) { wasix_context_switch(wasix_context_main); }

static void task_entry(void) {
  struct task *self = running;
  self->body(self);
  self->done = 1;
  yield(); /* a finished task is never run again: the scheduler destroys it */
  abort();
}

static void put(int item) {
  while (count == CAPACITY) {
    printf("  %s: queue full, yielding\n", running->name);
    yield();
  }
  queue[(head + count++) % CAPACITY] = item;
}

/* Returns 0 once the queue is empty and every producer has finished. */
static int take(int *item) {
  while (count == 0) {
    if (producers_left == 0)
      return 0;
    printf("  %s: queue empty, yielding\n", running->name);
    yield();
  }
  *item = queue[head];
  head = (head + 1) % CAPACITY;
  count--;
  return 1;
}

static void producer(struct task *self) {
  int base = self == &tasks[0] ? 100 : 200;
  for (int i = 0; i < ITEMS_PER_PRODUCER; i++) {
    char label[32]; /* a buffer on this task's own stack, kept across every yield */
    snprintf(label, sizeof label, "%s#%d", self->name, i);
    put(base + i);
    printf("%s put %d (%s)\n", self->name, base + i, label);
    if (i % 2 == 1)
      yield();
  }
  producers_left--;
  printf("%s: done\n", self->name);
}

static void consumer(struct task *self) {
  int item;
  while (take(&item)) {
    self->result += item;
    printf("%s took %d (sum %ld)\n", self->name, item, self->result);
    yield();
  }
  printf("%s: done, sum %ld\n", self->name, self->result);
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  const struct {
    const char *name;
    void (*body)(struct task *);
  } specs[TASKS] = {
      {"producer-A", producer}, {"producer-B", producer},
      {"consumer-X", consumer}, {"consumer-Y", consumer}};
  for (int i = 0; i < TASKS; i++) {
    tasks[i].name = specs[i].name;
    tasks[i].body = specs[i].body;
    if (wasix_context_create(&tasks[i].context, task_entry) != 0) {
      perror("wasix_context_create");
      return 1;
    }
  }
  int live = TASKS;
  while (live > 0) {
    for (int i = 0; i < TASKS; i++) {
      if (tasks[i].done)
        continue;
      running = &tasks[i];
      wasix_context_switch(tasks[i].context);
      if (tasks[i].done) {
        wasix_context_destroy(tasks[i].context);
        live--;
      }
    }
  }
  long total = tasks[2].result + tasks[3].result;
  long expected = 0;
  for (int i = 0; i < ITEMS_PER_PRODUCER; i++)
    expected += 100 + i + 200 + i;
  printf("scheduler: all tasks done; consumed %ld, produced %ld\n", total, expected);
  return total == expected ? 0 : 1;
}
