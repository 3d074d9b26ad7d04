/*
 * A thousand live contexts at once: all created, all started, all resumed again in reverse order
 * (each still holding its own local), all destroyed. Ids are unique and non-zero, and ids handed
 * out after the destroys never repeat a deleted one.
 */
#include "check.h"

enum { COUNT = 1000 };

static wasix_context_id_t ids[COUNT];
static wasix_context_id_t later_ids[COUNT];
static int next_index;
static int resumed;

static void member(void) {
  int index = next_index++;
  int local = index * 7 + 1;
  CHECK(wasix_context_switch(wasix_context_main) == 0);
  if (local != index * 7 + 1)
    FAIL("context %d lost its local", index);
  resumed++;
  CHECK(wasix_context_switch(wasix_context_main) == 0);
  FAIL("resumed after destroy");
}

static void idle(void) { FAIL("never switched to"); }

static int compare_ids(const void *a, const void *b) {
  wasix_context_id_t x = *(const wasix_context_id_t *)a, y = *(const wasix_context_id_t *)b;
  return x < y ? -1 : x > y;
}

int main(void) {
  for (int i = 0; i < COUNT; i++)
    if (wasix_context_create(&ids[i], member) != 0)
      FAIL("create %d failed: errno %d (%s)", i, errno, errno_name(errno));
  for (int i = 0; i < COUNT; i++)
    CHECK(wasix_context_switch(ids[i]) == 0);
  printf("ok %d contexts created and started\n", COUNT);
  for (int i = COUNT - 1; i >= 0; i--)
    CHECK(wasix_context_switch(ids[i]) == 0);
  CHECK(resumed == COUNT);
  printf("ok %d contexts resumed in reverse order with their locals intact\n", COUNT);
  for (int i = 0; i < COUNT; i++)
    CHECK(wasix_context_destroy(ids[i]) == 0);
  printf("ok %d contexts destroyed\n", COUNT);

  for (int i = 0; i < COUNT; i++)
    CHECK(wasix_context_create(&later_ids[i], idle) == 0);
  qsort(ids, COUNT, sizeof ids[0], compare_ids);
  for (int i = 0; i < COUNT; i++) {
    CHECK(ids[i] != 0);
    if (i > 0 && ids[i] == ids[i - 1])
      FAIL("id %llu handed out twice", (unsigned long long)ids[i]);
    if (bsearch(&later_ids[i], ids, COUNT, sizeof ids[0], compare_ids))
      FAIL("deleted id %llu handed out again", (unsigned long long)later_ids[i]);
  }
  printf("ok all ids non-zero and unique, deleted ids never reused\n");
  for (int i = 0; i < COUNT; i++)
    CHECK(wasix_context_destroy(later_ids[i]) == 0);
  return 0;
}
