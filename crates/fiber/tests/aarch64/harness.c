// Checks crates/fiber/src/arch/aarch64.S on an x86_64 machine: built with
// `aarch64-linux-gnu-gcc -static` together with that file and run under
// qemu-aarch64 by `cargo xtask test-aarch64`.
//
// Main and a fiber switch back and forth many times. Before every switch each
// side fills every callee-saved register (x19-x28, d8-d15) with values of its
// own; after the switch returns it stores them, plus x29 and sp, and checks
// that the other side's clobbering did not leak through. Both words passed
// through the switch, the first frame `weft_fiber_init` lays out, the
// fiber's first arguments and the fiber's stack alignment are checked too.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*entry_fn)(uintptr_t word, void **slot);
typedef struct {
  uintptr_t word, flag;
} handed;
extern void *weft_fiber_init(uint8_t *top, entry_fn entry);
extern handed weft_fiber_switch(void **slot, uintptr_t word, uintptr_t flag);

enum { SAVED = 18, X29_BEFORE = 18, SP_BEFORE, X29_AFTER, SP_AFTER, OUT_LEN };
enum { ROUNDS = 1000 };

static int failures;
static void **expected_slot;

#define CHECK(cond, ...)                                                       \
  do {                                                                         \
    if (!(cond)) {                                                             \
      failures++;                                                              \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                     \
      fprintf(stderr, __VA_ARGS__);                                            \
      fputc('\n', stderr);                                                     \
    }                                                                          \
  } while (0)

// Sets x19-x28 to pattern+1..pattern+10 and d8-d15 to the bits of
// pattern+11..pattern+18, switches through `slot` passing `value` and `flag`,
// and stores what those registers hold once control comes back.
static handed switch_and_capture(void **slot, uintptr_t value, uintptr_t flag,
                                 uint64_t out[OUT_LEN], uint64_t pattern) {
  register uintptr_t x0 __asm__("x0") = (uintptr_t)slot;
  register uintptr_t x1 __asm__("x1") = value;
  register uintptr_t x2 __asm__("x2") = flag;
  register uint64_t *x3 __asm__("x3") = out;
  register uint64_t x4 __asm__("x4") = pattern;
  __asm__ volatile(
      "add x19, x4, #1\n\t"
      "add x20, x4, #2\n\t"
      "add x21, x4, #3\n\t"
      "add x22, x4, #4\n\t"
      "add x23, x4, #5\n\t"
      "add x24, x4, #6\n\t"
      "add x25, x4, #7\n\t"
      "add x26, x4, #8\n\t"
      "add x27, x4, #9\n\t"
      "add x28, x4, #10\n\t"
      "add x5, x4, #11\n\t" "fmov d8, x5\n\t"
      "add x5, x4, #12\n\t" "fmov d9, x5\n\t"
      "add x5, x4, #13\n\t" "fmov d10, x5\n\t"
      "add x5, x4, #14\n\t" "fmov d11, x5\n\t"
      "add x5, x4, #15\n\t" "fmov d12, x5\n\t"
      "add x5, x4, #16\n\t" "fmov d13, x5\n\t"
      "add x5, x4, #17\n\t" "fmov d14, x5\n\t"
      "add x5, x4, #18\n\t" "fmov d15, x5\n\t"
      "mov x9, sp\n\t"
      "stp x29, x9, [x3, #144]\n\t"
      "str x3, [sp, #-16]!\n\t"
      "bl weft_fiber_switch\n\t"
      "ldr x3, [sp], #16\n\t"
      "stp x19, x20, [x3, #0]\n\t"
      "stp x21, x22, [x3, #16]\n\t"
      "stp x23, x24, [x3, #32]\n\t"
      "stp x25, x26, [x3, #48]\n\t"
      "stp x27, x28, [x3, #64]\n\t"
      "stp d8, d9, [x3, #80]\n\t"
      "stp d10, d11, [x3, #96]\n\t"
      "stp d12, d13, [x3, #112]\n\t"
      "stp d14, d15, [x3, #128]\n\t"
      "mov x9, sp\n\t"
      "stp x29, x9, [x3, #160]\n\t"
      : "+r"(x0), "+r"(x1), "+r"(x2), "+r"(x3), "+r"(x4)
      :
      : "x5", "x6", "x7", "x8", "x9", "x10", "x11", "x12", "x13", "x14",
        "x15", "x16", "x17", "x18", "x19", "x20", "x21", "x22", "x23", "x24",
        "x25", "x26", "x27", "x28", "x30", "v0", "v1", "v2", "v3", "v4", "v5",
        "v6", "v7", "v8", "v9", "v10", "v11", "v12", "v13", "v14", "v15",
        "v16", "v17", "v18", "v19", "v20", "v21", "v22", "v23", "v24", "v25",
        "v26", "v27", "v28", "v29", "v30", "v31", "memory", "cc");
  return (handed){x0, x1};
}

static void check_preserved(const char *side, int round,
                            const uint64_t out[OUT_LEN], uint64_t pattern) {
  for (int i = 0; i < SAVED; i++) {
    const char *bank = i < 10 ? "x" : "d";
    int reg = i < 10 ? 19 + i : 8 + (i - 10);
    CHECK(out[i] == pattern + i + 1,
          "%s round %d: %s%d = %#llx, expected %#llx", side, round, bank, reg,
          (unsigned long long)out[i], (unsigned long long)(pattern + i + 1));
  }
  CHECK(out[X29_BEFORE] == out[X29_AFTER], "%s round %d: x29 changed", side,
        round);
  CHECK(out[SP_BEFORE] == out[SP_AFTER], "%s round %d: sp changed", side,
        round);
}

// The fiber: each round it gets n and a flag from main and answers 2n+1 and
// the flag + 1 (main checks both).
static void fiber_entry(uintptr_t word, void **slot) {
  CHECK(slot == expected_slot, "entry got slot %p, expected %p", (void *)slot,
        (void *)expected_slot);
  handed got = {word, 0};
  uint64_t out[OUT_LEN];
  for (int round = 0;; round++) {
    uintptr_t sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    CHECK(sp % 16 == 0, "fiber sp %#lx is not 16-byte aligned", (long)sp);
    uint64_t pattern = 0xf1be0000ull + (uint64_t)round * 64;
    got = switch_and_capture(slot, got.word * 2 + 1, got.flag + 1, out,
                             pattern);
    check_preserved("fiber", round, out, pattern);
  }
}

int main(void) {
  enum { STACK = 64 * 1024 };
  uint8_t *stack = aligned_alloc(16, STACK);
  if (!stack) return 2;
  memset(stack, 0xa5, STACK);
  uint8_t *top = stack + STACK;
  void **slot = (void **)(top - 16);
  expected_slot = slot;
  void *first_sp = weft_fiber_init(top, fiber_entry);
  CHECK(((uintptr_t *)top)[-1] == 0, "no 0 above the slot to end fp walks");
  CHECK((uint8_t *)first_sp == top - 176, "first sp at %p, top %p", first_sp,
        (void *)top);
  CHECK(*slot == first_sp, "slot holds %p, expected the first sp %p", *slot,
        first_sp);
  uint64_t out[OUT_LEN];
  for (int round = 0; round < ROUNDS; round++) {
    uint64_t pattern = 0xa1a10000ull + (uint64_t)round * 64;
    uintptr_t flag = 1000u + (uintptr_t)round;
    handed got = switch_and_capture(slot, (uintptr_t)round,
                                    round == 0 ? 0 : flag, out, pattern);
    CHECK(got.word == (uintptr_t)round * 2 + 1, "round %d: fiber returned %lu",
          round, (unsigned long)got.word);
    // The fiber adds 1 to the flag it got; its first entry starts from 0.
    uintptr_t want_flag = round == 0 ? 1 : flag + 1;
    CHECK(got.flag == want_flag, "round %d: fiber flag %lu, expected %lu",
          round, (unsigned long)got.flag, (unsigned long)want_flag);
    check_preserved("main", round, out, pattern);
    if (failures > 20) break;
  }
  if (failures) {
    fprintf(stderr, "aarch64 switch harness: %d failures\n", failures);
    return 1;
  }
  printf("aarch64 switch harness: %d round trips, both words, x19-x28, "
         "d8-d15, x29 and sp preserved on both sides\n1 passed, 0 failed\n",
         ROUNDS);
  return 0;
}
