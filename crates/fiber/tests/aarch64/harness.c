// Checks crates/fiber/src/arch/aarch64.S on an x86_64 machine: built with
// `aarch64-linux-gnu-gcc -static` together with that file and run under
// qemu-aarch64 by `cargo xtask test-aarch64`.
//
// Main and a fiber switch back and forth many times. Before every switch each
// side fills every callee-saved register (x19-x28, d8-d15) with values of its
// own; after the switch returns it stores them, plus x29 and sp, and checks
// that the other side's clobbering did not leak through. Values passed
// through the switch, the fiber's first arguments and the fiber's stack
// alignment are checked too.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef void (*entry_fn)(void *init, uintptr_t arg, void **slot);
extern void **weft_fiber_init(uint8_t *top, entry_fn entry, void *init);
extern uintptr_t weft_fiber_switch(void **slot, uintptr_t arg);

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
// pattern+11..pattern+18, switches through `slot` passing `value`, and stores
// what those registers hold once control comes back.
static uintptr_t switch_and_capture(void **slot, uintptr_t value,
                                    uint64_t out[OUT_LEN], uint64_t pattern) {
  register uintptr_t x0 __asm__("x0") = (uintptr_t)slot;
  register uintptr_t x1 __asm__("x1") = value;
  register uint64_t *x2 __asm__("x2") = out;
  register uint64_t x3 __asm__("x3") = pattern;
  __asm__ volatile(
      "add x19, x3, #1\n\t"
      "add x20, x3, #2\n\t"
      "add x21, x3, #3\n\t"
      "add x22, x3, #4\n\t"
      "add x23, x3, #5\n\t"
      "add x24, x3, #6\n\t"
      "add x25, x3, #7\n\t"
      "add x26, x3, #8\n\t"
      "add x27, x3, #9\n\t"
      "add x28, x3, #10\n\t"
      "add x4, x3, #11\n\t" "fmov d8, x4\n\t"
      "add x4, x3, #12\n\t" "fmov d9, x4\n\t"
      "add x4, x3, #13\n\t" "fmov d10, x4\n\t"
      "add x4, x3, #14\n\t" "fmov d11, x4\n\t"
      "add x4, x3, #15\n\t" "fmov d12, x4\n\t"
      "add x4, x3, #16\n\t" "fmov d13, x4\n\t"
      "add x4, x3, #17\n\t" "fmov d14, x4\n\t"
      "add x4, x3, #18\n\t" "fmov d15, x4\n\t"
      "mov x9, sp\n\t"
      "stp x29, x9, [x2, #144]\n\t"
      "str x2, [sp, #-16]!\n\t"
      "bl weft_fiber_switch\n\t"
      "ldr x2, [sp], #16\n\t"
      "stp x19, x20, [x2, #0]\n\t"
      "stp x21, x22, [x2, #16]\n\t"
      "stp x23, x24, [x2, #32]\n\t"
      "stp x25, x26, [x2, #48]\n\t"
      "stp x27, x28, [x2, #64]\n\t"
      "stp d8, d9, [x2, #80]\n\t"
      "stp d10, d11, [x2, #96]\n\t"
      "stp d12, d13, [x2, #112]\n\t"
      "stp d14, d15, [x2, #128]\n\t"
      "mov x9, sp\n\t"
      "stp x29, x9, [x2, #160]\n\t"
      : "+r"(x0), "+r"(x1), "+r"(x2), "+r"(x3)
      :
      : "x4", "x5", "x6", "x7", "x8", "x9", "x10", "x11", "x12", "x13", "x14",
        "x15", "x16", "x17", "x18", "x19", "x20", "x21", "x22", "x23", "x24",
        "x25", "x26", "x27", "x28", "x30", "v0", "v1", "v2", "v3", "v4", "v5",
        "v6", "v7", "v8", "v9", "v10", "v11", "v12", "v13", "v14", "v15",
        "v16", "v17", "v18", "v19", "v20", "v21", "v22", "v23", "v24", "v25",
        "v26", "v27", "v28", "v29", "v30", "v31", "memory", "cc");
  return x0;
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

static void fiber_entry(void *init, uintptr_t arg, void **slot) {
  CHECK(init == (void *)0x1234, "entry got init %p", init);
  CHECK(slot == expected_slot, "entry got slot %p, init returned %p",
        (void *)slot, (void *)expected_slot);
  uintptr_t n = arg;
  uint64_t out[OUT_LEN];
  for (int round = 0;; round++) {
    uintptr_t sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    CHECK(sp % 16 == 0, "fiber sp %#lx is not 16-byte aligned", (long)sp);
    uint64_t pattern = 0xf1be0000ull + (uint64_t)round * 64;
    n = switch_and_capture(slot, n * 2 + 1, out, pattern);
    check_preserved("fiber", round, out, pattern);
  }
}

int main(void) {
  enum { STACK = 64 * 1024 };
  uint8_t *stack = aligned_alloc(16, STACK);
  if (!stack) return 2;
  void **slot = weft_fiber_init(stack + STACK, fiber_entry, (void *)0x1234);
  expected_slot = slot;
  CHECK((uint8_t *)slot == stack + STACK - 16, "slot at %p", (void *)slot);
  uint64_t out[OUT_LEN];
  for (int round = 0; round < ROUNDS; round++) {
    uint64_t pattern = 0xa1a10000ull + (uint64_t)round * 64;
    uintptr_t got = switch_and_capture(slot, (uintptr_t)round, out, pattern);
    CHECK(got == (uintptr_t)round * 2 + 1, "round %d: fiber returned %lu",
          round, (unsigned long)got);
    check_preserved("main", round, out, pattern);
    if (failures > 20) break;
  }
  if (failures) {
    fprintf(stderr, "aarch64 switch harness: %d failures\n", failures);
    return 1;
  }
  printf("aarch64 switch harness: %d round trips, x19-x28, d8-d15, x29 and "
         "sp preserved on both sides\n1 passed, 0 failed\n",
         ROUNDS);
  return 0;
}
