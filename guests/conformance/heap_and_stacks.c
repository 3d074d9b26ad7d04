/*
 * The host grows linear memory for the contexts' shadow stacks while the guest's own malloc grows
 * it too: the two must never hand out the same bytes. Contexts are created between large and
 * small allocations; every context fills a stack buffer and every heap block gets a pattern;
 * after many switches all patterns are intact and no stack buffer lies inside a heap block.
 */
#include "check.h"

enum { CONTEXTS = 16, BLOCKS = 48, STACK_BYTES = 4096 };

static wasix_context_id_t ids[CONTEXTS];
static int next_index;
static struct {
  uintptr_t low, high;
} stacks[CONTEXTS];
static unsigned char *blocks[BLOCKS];
static size_t sizes[BLOCKS];

static void fill(unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++)
    p[i] = (unsigned char)(seed * 31 + i * 7);
}

static int intact(const unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != (unsigned char)(seed * 31 + i * 7))
      return 0;
  return 1;
}

static void member(void) {
  int index = next_index++;
  unsigned char buffer[STACK_BYTES];
  fill(buffer, sizeof buffer, 1000 + index);
  stacks[index].low = (uintptr_t)buffer;
  stacks[index].high = (uintptr_t)buffer + sizeof buffer;
  for (;;) {
    CHECK(wasix_context_switch(wasix_context_main) == 0);
    if (!intact(buffer, sizeof buffer, 1000 + index))
      FAIL("context %d: its stack buffer was overwritten", index);
  }
}

int main(void) {
  int created = 0;
  for (int b = 0; b < BLOCKS; b++) {
    /* Alternate big blocks (which make malloc grow memory) and small ones. */
    sizes[b] = b % 3 == 0 ? 200000 + b * 1000 : 100 + b * 37;
    blocks[b] = malloc(sizes[b]);
    CHECK(blocks[b] != NULL);
    fill(blocks[b], sizes[b], b);
    if (b % 3 == 1 && created < CONTEXTS) {
      CHECK(wasix_context_create(&ids[created], member) == 0);
      CHECK(wasix_context_switch(ids[created]) == 0);
      created++;
    }
  }
  while (created < CONTEXTS) {
    CHECK(wasix_context_create(&ids[created], member) == 0);
    CHECK(wasix_context_switch(ids[created]) == 0);
    created++;
  }
  for (int round = 0; round < 3; round++)
    for (int i = 0; i < CONTEXTS; i++)
      CHECK(wasix_context_switch(ids[i]) == 0);
  for (int b = 0; b < BLOCKS; b++)
    if (!intact(blocks[b], sizes[b], b))
      FAIL("heap block %d was overwritten", b);
  for (int b = 0; b < BLOCKS; b++)
    for (int i = 0; i < CONTEXTS; i++) {
      uintptr_t low = (uintptr_t)blocks[b], high = low + sizes[b];
      if (stacks[i].low < high && low < stacks[i].high)
        FAIL("context %d's stack overlaps heap block %d", i, b);
    }
  printf("ok %d heap blocks and %d context stacks are disjoint and intact\n", BLOCKS, CONTEXTS);
  for (int i = 0; i < CONTEXTS; i++)
    CHECK(wasix_context_destroy(ids[i]) == 0);
  /* Memory the destroyed contexts used is not handed to malloc: the heap still works. */
  void *late = malloc(1 << 20);
  CHECK(late != NULL);
  memset(late, 0x5a, 1 << 20);
  free(late);
  printf("ok malloc still works after the contexts are gone\n");
  return 0;
}
