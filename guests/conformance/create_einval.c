/*
 * context_create rejects an entrypoint that is not a function of type [] -> [] in the function
 * table with EINVAL: a null slot, an index past the table's end, and functions of other types.
 */
#include "check.h"

static int takes_int(int x) { return x + 1; }
static int returns_int(void) { return 42; }
static void takes_long_long(long long x) { printf("%lld\n", x); }
static double returns_double(void) { return 1.5; }
static void good_entry(void) { FAIL("never switched to"); }

struct bad_entry {
  const char *label;
  uintptr_t table_index;
};

int main(void) {
  const struct bad_entry cases[] = {
      {"create(null slot 0)", 0},
      {"create(index 0x7fffffff, past the table)", 0x7fffffff},
      {"create(index 0xffffffff, past the table)", 0xffffffff},
      {"create(index 100000 past a function)", (uintptr_t)good_entry + 100000},
      {"create(int (*)(int))", (uintptr_t)takes_int},
      {"create(int (*)(void))", (uintptr_t)returns_int},
      {"create(void (*)(long long))", (uintptr_t)takes_long_long},
      {"create(double (*)(void))", (uintptr_t)returns_double},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    wasix_context_id_t id = 0;
    EXPECT_ERRNO(cases[i].label, raw_create_at((uintptr_t)&id, cases[i].table_index), 28);
  }

  wasix_context_id_t id = 0;
  EXPECT_FAILS_WITH("wasix_context_create(null)", wasix_context_create(&id, NULL), EINVAL);
  EXPECT_FAILS_WITH("wasix_context_create(int (*)(int))",
                    wasix_context_create(&id, (void (*)(void))(uintptr_t)takes_int), EINVAL);

  EXPECT_ERRNO("create(void (*)(void))", raw_create(&id, good_entry), 0);
  EXPECT_ERRNO("destroy(it)", raw_destroy(id), 0);
  return 0;
}
