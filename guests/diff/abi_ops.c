/*
 * The guest side of the differential test (tests/tests/differential.rs): executes a sequence of
 * context operations given as arguments and prints one line per operation, which the test checks
 * against a plain model of the ABI. Whichever context is active executes the next operation, so
 * control hops between main and the contexts as the sequence says.
 *
 * Operations:
 *   c            create (a valid entrypoint); prints `N c -> SUCCESS slot S` (slots count
 *                successful creates from 1)
 *   cn cw co     create with a null slot / a wrongly typed function / an index past the table
 *   cf           create with new_context_ptr outside memory
 *   sR dR        switch to / destroy the context R
 *   r            the active context returns: from its entrypoint (a context), or from main
 * References R: `m` main, a number S = slot S (never created if there is no slot S yet),
 * `x0`..`x3` ids that were never handed out (x0 aliases slot 1's id in the low 32 bits).
 *
 * A switch that fails or targets the active context prints `N sR -> ERRNO` at once; one that
 * transfers control is reported by the context that arrives: `N sR -> enter S start` when it
 * starts, `N sR -> enter S resume ERRNO` with the result of its own earlier switch otherwise.
 * At the end of the sequence the active context prints `end in S` and exits with status 0.
 *
 * Every context (main too) keeps a canary array on its shadow stack and checks it whenever it is
 * resumed; a damaged one prints `CORRUPT`, which no model predicts.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wasix/context.h>
#include <weft/errno.h>

enum { MAX_SLOTS = 4096 };

static char **ops;
static int op_count;
static int pc;

static wasix_context_id_t slot_ids[MAX_SLOTS + 1];
static int slots;
static int current_slot;
static int arriving_slot;
static int in_flight_op;
static unsigned epoch;

static const char *errno_name(int32_t err) { return weft_errno_name(err); }

static int takes_int(int x) { return x; }

static int issued(wasix_context_id_t id) {
  for (int s = 1; s <= slots; s++)
    if (slot_ids[s] == id)
      return 1;
  return id == 0;
}

/* Resolves a reference to an id, and to its slot (-1 for an id that was never handed out). */
static wasix_context_id_t resolve(const char *ref, int *slot) {
  *slot = -1;
  if (strcmp(ref, "m") == 0) {
    *slot = 0;
    return 0;
  }
  wasix_context_id_t bogus;
  if (ref[0] == 'x') {
    switch (ref[1]) {
    case '0':
      bogus = (slots >= 1 ? slot_ids[1] : 1) ^ (1ull << 32);
      break;
    case '1':
      bogus = UINT64_MAX;
      break;
    case '2':
      bogus = 1ull << 63;
      break;
    default:
      bogus = 0xdeadbeef;
      break;
    }
  } else {
    int wanted = atoi(ref);
    if (wanted >= 1 && wanted <= slots) {
      *slot = wanted;
      return slot_ids[wanted];
    }
    bogus = 0x5107ull << 40 | (unsigned)wanted;
  }
  while (issued(bogus))
    bogus++;
  return bogus;
}

enum { CANARY_WORDS = 32 };

static void fill_canary(unsigned *canary, int slot) {
  for (int i = 0; i < CANARY_WORDS; i++)
    canary[i] = (unsigned)slot * 2654435761u + (unsigned)i;
}

static int canary_intact(const unsigned *canary, int slot) {
  for (int i = 0; i < CANARY_WORDS; i++)
    if (canary[i] != (unsigned)slot * 2654435761u + (unsigned)i)
      return 0;
  return 1;
}

static void arrive(int32_t switch_result, int started, const unsigned *canary) {
  epoch++;
  current_slot = arriving_slot;
  if (canary && !canary_intact(canary, current_slot))
    printf("CORRUPT: the shadow stack of slot %d changed while it was suspended\n", current_slot);
  if (started)
    printf("%d s%s -> enter %d start\n", in_flight_op, ops[in_flight_op] + 1, current_slot);
  else
    printf("%d s%s -> enter %d resume %s\n", in_flight_op, ops[in_flight_op] + 1, current_slot,
           errno_name(switch_result));
}

static void entry(void);

/* Runs the sequence from `pc` on, in whichever context is active; returns for `r` or the end.
 * `canary` lives in the frame of the context's entrypoint (or main). */
static void interpret(const unsigned *canary) {
  while (pc < op_count) {
    int n = pc++;
    const char *op = ops[n];
    if (op[0] == 'c') {
      wasix_context_id_t id = 0;
      int32_t err;
      switch (op[1]) {
      case 0:
        err = __imported_wasix_context_create((int32_t)(uintptr_t)&id, (int32_t)(uintptr_t)entry);
        break;
      case 'n':
        err = __imported_wasix_context_create((int32_t)(uintptr_t)&id, 0);
        break;
      case 'w':
        err = __imported_wasix_context_create((int32_t)(uintptr_t)&id,
                                              (int32_t)(uintptr_t)takes_int);
        break;
      case 'o':
        err = __imported_wasix_context_create((int32_t)(uintptr_t)&id, 0x7fffffff);
        break;
      default:
        err = __imported_wasix_context_create((int32_t)0xfffffff8u, (int32_t)(uintptr_t)entry);
        break;
      }
      if (err == 0 && op[1] == 0 && slots < MAX_SLOTS) {
        slot_ids[++slots] = id;
        printf("%d %s -> %s slot %d\n", n, op, errno_name(err), slots);
      } else {
        printf("%d %s -> %s\n", n, op, errno_name(err));
      }
    } else if (op[0] == 'd') {
      int slot;
      wasix_context_id_t id = resolve(op + 1, &slot);
      printf("%d %s -> %s\n", n, op, errno_name(__imported_wasix_context_destroy((int64_t)id)));
    } else if (op[0] == 's') {
      int slot;
      wasix_context_id_t id = resolve(op + 1, &slot);
      unsigned before = epoch;
      arriving_slot = slot;
      in_flight_op = n;
      int32_t err = __imported_wasix_context_switch((int64_t)id);
      if (epoch == before)
        printf("%d %s -> %s\n", n, op, errno_name(err));
      else
        arrive(err, 0, canary);
    } else if (op[0] == 'r') {
      printf("%d r -> %d returns\n", n, current_slot);
      return;
    } else {
      printf("unknown operation %s\n", op);
      exit(2);
    }
  }
  printf("end in %d\n", current_slot);
  exit(0);
}

static void entry(void) {
  unsigned canary[CANARY_WORDS];
  arrive(0, 1, NULL);
  fill_canary(canary, current_slot);
  interpret(canary);
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  ops = argv + 1;
  op_count = argc - 1;
  unsigned canary[CANARY_WORDS];
  fill_canary(canary, 0);
  interpret(canary);
  return 0;
}
