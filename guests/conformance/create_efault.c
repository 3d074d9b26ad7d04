/*
 * A bad new_context_ptr is a memory error (EFAULT), never a host crash: outside linear memory,
 * straddling its end, or at the very end. The last eight bytes of memory are fine, and so is an
 * unaligned pointer (wasm memory has no alignment rule): both receive all eight bytes of the id.
 */
#include "check.h"

static int runs;

static void entry(void) {
  for (;;) {
    runs++;
    wasix_context_switch(wasix_context_main);
  }
}

/* The end of linear memory right now (the host may grow memory for its own use). */
static uintptr_t memory_end(void) { return __builtin_wasm_memory_size(0) * 65536; }

int main(void) {
  /* A page of our own at the end of memory, so the in-bounds case writes where nobody else does. */
  CHECK(__builtin_wasm_memory_grow(0, 1) != (size_t)-1);
  uintptr_t last8 = memory_end() - 8;
  EXPECT_ERRNO("create(id in the last 8 bytes of memory)", raw_create_at(last8, (uintptr_t)entry),
               0);
  wasix_context_id_t at_end;
  memcpy(&at_end, (void *)last8, sizeof at_end);
  CHECK(at_end != 0);
  EXPECT_ERRNO("switch(the id read back from there)", raw_switch(at_end), 0);
  CHECK(runs == 1);
  EXPECT_ERRNO("destroy(it)", raw_destroy(at_end), 0);

  EXPECT_ERRNO("create(id at 0xfffffff8, outside memory)", raw_create_at(0xfffffff8u, (uintptr_t)entry), 21);
  EXPECT_ERRNO("create(id at 0xffffffff, outside memory)", raw_create_at(0xffffffffu, (uintptr_t)entry), 21);
  EXPECT_ERRNO("create(id at the end of memory)", raw_create_at(memory_end(), (uintptr_t)entry), 21);
  EXPECT_ERRNO("create(id straddling the end of memory by 4 bytes)",
               raw_create_at(memory_end() - 4, (uintptr_t)entry), 21);
  EXPECT_ERRNO("create(id straddling the end of memory by 1 byte)",
               raw_create_at(memory_end() - 7, (uintptr_t)entry), 21);
  CHECK(runs == 1);

  unsigned char bytes[16];
  memset(bytes, 0xab, sizeof bytes);
  EXPECT_ERRNO("create(id at an unaligned address)",
               raw_create_at((uintptr_t)&bytes[3], (uintptr_t)entry), 0);
  CHECK(bytes[2] == 0xab && bytes[11] == 0xab);
  wasix_context_id_t unaligned;
  memcpy(&unaligned, &bytes[3], sizeof unaligned);
  CHECK(unaligned != 0 && unaligned != at_end);
  EXPECT_ERRNO("switch(the id read back from the unaligned address)", raw_switch(unaligned), 0);
  CHECK(runs == 2);
  EXPECT_ERRNO("destroy(it)", raw_destroy(unaligned), 0);
  return 0;
}
