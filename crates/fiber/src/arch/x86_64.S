# weft-fiber: the context switch for x86_64, System V ABI (Linux, macOS-free ELF).
#
# A fiber stack has one 8-byte "switch slot" 16 bytes below its top. While the
# fiber is suspended the slot holds the fiber's saved stack pointer; while it
# runs, the slot holds the resumer's saved stack pointer. Resume and suspend
# are therefore the same operation: save our callee-saved registers on our own
# stack, exchange our stack pointer with the one in the slot, restore the
# other side's registers from its stack and return into it.
#
# Saved registers (everything System V makes callee-saved, nothing else):
#   rbp, rbx, r12, r13, r14, r15 - pushed on the switching side's stack
#   rsp                          - exchanged through the switch slot
#   rip                          - the return address `call` already pushed
# Not saved: the MXCSR control bits and the x87 control word. System V makes
# them callee-saved too, but a fiber switch behaves like a function call that
# neither side expects to change the floating-point environment, Rust never
# changes it, and saving/restoring both costs ~20 cycles on every switch
# (ldmxcsr is serialising on several cores). The rule that follows, as in
# corosensei and wasmtime's fibers: code that changes the rounding mode or the
# exception masks must restore them before it suspends.
#
# Frame laid out by weft_fiber_switch, lowest address first (56 bytes):
#   +0 r15, +8 r14, +16 r13, +24 r12, +32 rbx, +40 rbp, +48 return address
#
# Frames of the instructions in this file are described with CFI so that
# a backtrace taken inside a fiber walks through weft_fiber_start into the
# frames of whoever resumed the fiber (see weft_fiber_start).

    .text

# usize weft_fiber_switch(void **slot /* rdi */, usize arg /* rsi */)
# Returns, on the other side, the `arg` this side passed.
    .globl weft_fiber_switch
    .hidden weft_fiber_switch
    .type weft_fiber_switch,@function
    .p2align 4
weft_fiber_switch:
    .cfi_startproc
    pushq %rbp
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %rbp, 0
    pushq %rbx
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %rbx, 0
    pushq %r12
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %r12, 0
    pushq %r13
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %r13, 0
    pushq %r14
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %r14, 0
    pushq %r15
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %r15, 0

    # Exchange stacks. From here on the same CFI describes the other side's
    # frame, which has the same shape.
    movq (%rdi), %rax
    movq %rsp, (%rdi)
    movq %rax, %rsp

    popq %r15
    .cfi_adjust_cfa_offset -8
    .cfi_restore %r15
    popq %r14
    .cfi_adjust_cfa_offset -8
    .cfi_restore %r14
    popq %r13
    .cfi_adjust_cfa_offset -8
    .cfi_restore %r13
    popq %r12
    .cfi_adjust_cfa_offset -8
    .cfi_restore %r12
    popq %rbx
    .cfi_adjust_cfa_offset -8
    .cfi_restore %rbx
    popq %rbp
    .cfi_adjust_cfa_offset -8
    .cfi_restore %rbp
    movq %rsi, %rax
    ret
    .cfi_endproc
    .size weft_fiber_switch, .-weft_fiber_switch

# void **weft_fiber_init(u8 *top /* rdi, 16-aligned */,
#                        void (*entry)(void *init, usize arg, void **slot) /* rsi */,
#                        void *init /* rdx */)
# Lays out, just below `top`, the switch slot and a first frame shaped like
# the one weft_fiber_switch saves, whose return address is weft_fiber_start.
# Returns the slot. Uses the top 72 bytes below `top`.
#   top-8   0 (end of the frame-pointer chain)
#   top-16  switch slot = top-72
#   top-72  r15=0 r14=0 r13=0 r12=init rbx=entry rbp=slot ret=weft_fiber_start
    .globl weft_fiber_init
    .hidden weft_fiber_init
    .type weft_fiber_init,@function
    .p2align 4
weft_fiber_init:
    .cfi_startproc
    leaq -16(%rdi), %rax
    movq $0, 8(%rax)
    leaq -72(%rdi), %rcx
    movq $0, 0(%rcx)
    movq $0, 8(%rcx)
    movq $0, 16(%rcx)
    movq %rdx, 24(%rcx)
    movq %rsi, 32(%rcx)
    movq %rax, 40(%rcx)
    leaq weft_fiber_start(%rip), %r8
    movq %r8, 48(%rcx)
    movq %rcx, (%rax)
    ret
    .cfi_endproc
    .size weft_fiber_init, .-weft_fiber_init

# The first frame of every fiber. The first switch into the fiber "returns"
# here with rbx = entry, r12 = init, rbp = slot and rsi = the resumer's arg;
# rsp = top-16, which is 16-byte aligned as `call` requires.
#
# Its CFI makes unwinders continue into the resumer: while the fiber runs,
# the slot holds the resumer's stack pointer, pointing at the 56-byte frame
# weft_fiber_switch pushed there. So:
#   CFA = *(rbp) + 56  (DW_CFA_def_cfa_expression: DW_OP_breg6 0, DW_OP_deref,
#                       DW_OP_plus_uconst 56)
#   return address at CFA-8, rbp at CFA-16, rbx at CFA-24, r12 at CFA-32,
#   r13 at CFA-40, r14 at CFA-48, r15 at CFA-56.
# rbp keeps pointing at the slot in this frame because every callee that
# uses rbp saves it and describes where (System V callee-saved + CFI).
    .type weft_fiber_start,@function
    .p2align 4
weft_fiber_start:
    .cfi_startproc simple
    .cfi_escape 0x0f, 0x05, 0x76, 0x00, 0x06, 0x23, 0x38
    .cfi_offset 16, -8
    .cfi_offset %rbp, -16
    .cfi_offset %rbx, -24
    .cfi_offset %r12, -32
    .cfi_offset %r13, -40
    .cfi_offset %r14, -48
    .cfi_offset %r15, -56
    movq %r12, %rdi
    movq %rbp, %rdx
    call *%rbx
    # entry never returns: it leaves the fiber with a final switch.
    ud2
    .cfi_endproc
    .size weft_fiber_start, .-weft_fiber_start
