// weft-fiber: the context switch for aarch64, AAPCS64 (Linux ELF).
// Plain GNU as, no preprocessor: included by Rust's global_asm! and linked
// into the C harness of `cargo xtask test-aarch64`.
//
// A fiber stack has one 8-byte "switch slot" 16 bytes below its top. While the
// fiber is suspended the slot holds the fiber's saved stack pointer; while it
// runs, it holds the resumer's. Resume and suspend are the same operation:
// save our callee-saved registers on our own stack, exchange sp with the
// slot, restore the other side's registers and return into it, handing over
// two words in registers (x1 and x2 in, x0 and x1 out on the other side).
//
// Saved registers (everything AAPCS64 makes callee-saved, nothing else):
//   x19-x28               general-purpose callee-saved
//   x29 (fp), x30 (lr)    frame pointer and return address
//   d8-d15                the low 64 bits of v8-v15 (the upper halves are
//                         caller-saved by the ABI)
//   sp                    exchanged through the switch slot
// Not saved: FPCR (rounding mode, flush-to-zero). AAPCS64 treats it like
// global state that callees leave alone; Rust never changes it, and an
// mrs/msr pair on every switch is expensive on several cores. Code that
// changes FPCR must restore it before it suspends (as with corosensei and
// wasmtime's fibers).
//
// Frame laid out by weft_fiber_switch, lowest address first (160 bytes):
//   +0 d8  +8 d9  +16 d10 +24 d11 +32 d12 +40 d13 +48 d14 +56 d15
//   +64 x19 +72 x20 +80 x21 +88 x22 +96 x23 +104 x24 +112 x25 +120 x26
//   +128 x27 +136 x28 +144 x29 +152 x30

    .text

// (usize, usize) weft_fiber_switch(void **slot /* x0 */, usize a /* x1 */,
//                                  usize b /* x2 */)
// Returns, on the other side, the `a` and `b` this side passed, in x0 and x1
// (a 16-byte struct return).
    .global weft_fiber_switch
    .hidden weft_fiber_switch
    .type weft_fiber_switch, %function
    .p2align 2
weft_fiber_switch:
    .cfi_startproc
    sub sp, sp, #160
    .cfi_def_cfa_offset 160
    stp d8, d9, [sp, #0]
    stp d10, d11, [sp, #16]
    stp d12, d13, [sp, #32]
    stp d14, d15, [sp, #48]
    stp x19, x20, [sp, #64]
    stp x21, x22, [sp, #80]
    stp x23, x24, [sp, #96]
    stp x25, x26, [sp, #112]
    stp x27, x28, [sp, #128]
    stp x29, x30, [sp, #144]
    .cfi_offset d8, -160
    .cfi_offset d9, -152
    .cfi_offset d10, -144
    .cfi_offset d11, -136
    .cfi_offset d12, -128
    .cfi_offset d13, -120
    .cfi_offset d14, -112
    .cfi_offset d15, -104
    .cfi_offset x19, -96
    .cfi_offset x20, -88
    .cfi_offset x21, -80
    .cfi_offset x22, -72
    .cfi_offset x23, -64
    .cfi_offset x24, -56
    .cfi_offset x25, -48
    .cfi_offset x26, -40
    .cfi_offset x27, -32
    .cfi_offset x28, -24
    .cfi_offset x29, -16
    .cfi_offset x30, -8

    // Exchange stacks. The same CFI now describes the other side's frame,
    // which has the same shape.
    mov x8, sp
    ldr x9, [x0]
    str x8, [x0]
    mov sp, x9

    ldp d8, d9, [sp, #0]
    ldp d10, d11, [sp, #16]
    ldp d12, d13, [sp, #32]
    ldp d14, d15, [sp, #48]
    ldp x19, x20, [sp, #64]
    ldp x21, x22, [sp, #80]
    ldp x23, x24, [sp, #96]
    ldp x25, x26, [sp, #112]
    ldp x27, x28, [sp, #128]
    ldp x29, x30, [sp, #144]
    add sp, sp, #160
    .cfi_def_cfa_offset 0
    .cfi_restore d8
    .cfi_restore d9
    .cfi_restore d10
    .cfi_restore d11
    .cfi_restore d12
    .cfi_restore d13
    .cfi_restore d14
    .cfi_restore d15
    .cfi_restore x19
    .cfi_restore x20
    .cfi_restore x21
    .cfi_restore x22
    .cfi_restore x23
    .cfi_restore x24
    .cfi_restore x25
    .cfi_restore x26
    .cfi_restore x27
    .cfi_restore x28
    .cfi_restore x29
    .cfi_restore x30
    mov x0, x1
    mov x1, x2
    ret
    .cfi_endproc
    .size weft_fiber_switch, .-weft_fiber_switch

// void *weft_fiber_init(u8 *top /* x0, 16-aligned */,
//                       void (*entry)(usize word, void **slot) /* x1 */)
// Lays out, just below `top`, a first frame shaped like the one
// weft_fiber_switch saves, whose return address is weft_fiber_start, and
// stores its address in the switch slot. Returns that address, the fiber's
// first stack pointer, 160 bytes below the slot. Uses the top 176 bytes below
// `top`; only the words weft_fiber_start reads are written (the other saved
// registers of a fiber that has not started hold nothing yet), and a 0 above
// the slot that ends frame-pointer walks (x29 is the slot's address there):
//   top-8    0
//   top-16   switch slot = top-176
//   top-176  +64 x19 = entry, +144 x29 = slot, +152 x30 = weft_fiber_start
    .global weft_fiber_init
    .hidden weft_fiber_init
    .type weft_fiber_init, %function
    .p2align 2
weft_fiber_init:
    .cfi_startproc
    sub x3, x0, #16
    str xzr, [x3, #8]
    sub x4, x0, #176
    str x1, [x4, #64]
    adr x5, weft_fiber_start
    stp x3, x5, [x4, #144]
    str x4, [x3]
    mov x0, x4
    ret
    .cfi_endproc
    .size weft_fiber_init, .-weft_fiber_init

// The first frame of every fiber. The first switch into the fiber "returns"
// here with x19 = entry, x29 = slot and x0 = the resumer's first word;
// sp = top-16, 16-byte aligned. It calls entry(word, slot).
//
// Its CFI makes unwinders continue into the resumer: while the fiber runs,
// the slot holds the resumer's sp, pointing at the 160-byte frame
// weft_fiber_switch saved there. So:
//   CFA = *(x29) + 160  (DW_CFA_def_cfa_expression: DW_OP_breg29 0, DW_OP_deref,
//                        DW_OP_plus_uconst 160)
//   x30 (the return address column) at CFA-8, x29 at CFA-16, x19-x28 and
//   d8-d15 where weft_fiber_switch stored them.
// x29 keeps pointing at the slot in this frame because every callee saves it
// (AAPCS64 callee-saved) and describes where with CFI.
    .type weft_fiber_start, %function
    .p2align 2
weft_fiber_start:
    .cfi_startproc
    .cfi_escape 0x0f, 0x06, 0x8d, 0x00, 0x06, 0x23, 0xa0, 0x01
    .cfi_offset x30, -8
    .cfi_offset x29, -16
    .cfi_offset x28, -24
    .cfi_offset x27, -32
    .cfi_offset x26, -40
    .cfi_offset x25, -48
    .cfi_offset x24, -56
    .cfi_offset x23, -64
    .cfi_offset x22, -72
    .cfi_offset x21, -80
    .cfi_offset x20, -88
    .cfi_offset x19, -96
    .cfi_offset d15, -104
    .cfi_offset d14, -112
    .cfi_offset d13, -120
    .cfi_offset d12, -128
    .cfi_offset d11, -136
    .cfi_offset d10, -144
    .cfi_offset d9, -152
    .cfi_offset d8, -160
    mov x1, x29
    blr x19
    // entry never returns: it leaves the fiber with a final switch.
    brk #1
    .cfi_endproc
    .size weft_fiber_start, .-weft_fiber_start
