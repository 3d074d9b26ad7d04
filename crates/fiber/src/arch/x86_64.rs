//! The context switch for x86_64, System V ABI. All x86_64 assembly of the
//! crate is in this file.
//!
//! # Design: resume is a call, suspend is its return
//!
//! CPUs predict `ret` targets with a return-stack buffer filled by `call`.
//! A switch that `ret`s into another stack than the one that `call`ed it
//! makes that return, and every return after it, mispredict (measured: ~20
//! ns per round trip). So the two directions are not symmetric here:
//! - `resume` (inline in the resumer) pushes rbp and rbx and does
//!   `call [fiber_sp]`: it jumps to the fiber's continuation and leaves its
//!   own return address on the resumer's stack and in the predictor;
//! - `suspend` (inline in the fiber) pushes rbp, rbx and its continuation
//!   address on the fiber stack, switches to the resumer's stack and `ret`s
//!   to the address `resume` left there: exactly the prediction.
//!
//! # What is saved
//! System V callee-saved registers: rbx, rbp, r12, r13, r14, r15, rsp, and
//! the return address. rbx and rbp are reserved by LLVM, so the asm pushes
//! them itself; r12-r15 are declared clobbered, so the compiler saves them
//! in the enclosing function only if it keeps something in them (often it
//! keeps nothing). All other registers are caller-saved
//! (`clobber_abi("sysv64")`). Not saved: the MXCSR control bits and the x87
//! control word. The ABI makes them callee-saved too, but a switch behaves
//! like a call that neither side expects to change the floating-point
//! environment, Rust never changes it, and ldmxcsr/fldcw on every switch cost
//! more than the rest of the switch. Code that changes them must restore them
//! before it suspends (corosensei and wasmtime's fibers decide the same).
//!
//! # Stack layout
//! The 8-byte switch slot 16 bytes below the stack top holds the fiber's
//! stack pointer while it is suspended and the resumer's while it runs.
//! A suspended fiber's stack pointer points at its continuation address,
//! with its rbx and rbp above it. A running fiber's resumer stack pointer
//! points at the return address `resume` pushed, with rbx and rbp above it.
//! `init` lays out a first frame of the same shape whose continuation is
//! `weft_fiber_start`:
//! ```text
//!   top-8   0
//!   top-16  switch slot = top-40
//!   top-24  init (the body's address)
//!   top-32  entry
//!   top-40  weft_fiber_start
//! ```

use core::arch::{asm, global_asm};

use super::Entry;

/// Bytes below the stack top that [`init`] writes.
pub const INIT_FRAME_BYTES: usize = 40;

/// Lays out the switch slot and first frame below the 16-byte aligned `top`.
///
/// # Safety
/// `[top - INIT_FRAME_BYTES, top)` must be writable memory of a stack that no
/// fiber is running on.
pub unsafe fn init(top: *mut u8, entry: Entry, init: *mut u8) -> *mut *mut u8 {
    let top = top.cast::<usize>();
    // SAFETY: per the function contract; top is 16-byte (so 8-byte) aligned.
    unsafe {
        top.sub(1).write(0);
        top.sub(3).write(init as usize);
        top.sub(4).write(entry as usize);
        top.sub(5).write(weft_fiber_start as *const () as usize);
        top.sub(2).write(top.sub(5) as usize);
        top.sub(2).cast()
    }
}

/// Runs the fiber whose switch slot is `slot` until it suspends; returns
/// the value it passes to `suspend`.
///
/// # Safety
/// `slot` must hold the stack pointer of a suspended (or `init`ialised)
/// fiber that is not running anywhere else.
#[inline(always)]
pub unsafe fn resume(slot: *mut *mut u8, arg: usize) -> usize {
    let returned: usize;
    // SAFETY: per the function contract, [slot] is the fiber's stack pointer
    // and points at its continuation (weft_fiber_start or label 2 of
    // `suspend`), which expects rax = fiber sp, rdx = slot, rdi = arg and our
    // return address on top of our stack, and comes back with a `ret` to it
    // and rdi = the fiber's value.
    unsafe {
        asm!(
            "push rbp",
            "push rbx",
            "mov rax, [rdx]",
            "call [rax]",
            "pop rbx",
            "pop rbp",
            inlateout("rdi") arg => returned,
            inlateout("rdx") slot => _,
            lateout("r12") _, lateout("r13") _, lateout("r14") _, lateout("r15") _,
            clobber_abi("sysv64"),
        );
    }
    returned
}

/// Suspends the running fiber whose switch slot is `slot`, passing `arg` to
/// its resumer; returns the value of the next `resume`.
///
/// # Safety
/// Must run on the fiber stack of `slot`, started by a `resume` whose
/// return address [slot] points at.
#[inline(always)]
pub unsafe fn suspend(slot: *mut *mut u8, arg: usize) -> usize {
    let resumed_with: usize;
    // SAFETY: per the function contract, [slot] is the resumer's stack
    // pointer, pointing at the return address of its `call`; we leave our
    // own stack pointer in the slot, pointing at our continuation (label 2),
    // which the next `resume` calls with rax = our sp, rdx = slot, rdi = arg.
    unsafe {
        asm!(
            "push rbp",
            "push rbx",
            "lea rax, [rip + 2f]",
            "push rax",
            "mov rcx, rsp",
            "mov rsp, [rdx]",
            "mov [rdx], rcx",
            "ret",
            "2:",
            "mov [rdx], rsp",
            "lea rsp, [rax + 8]",
            "pop rbx",
            "pop rbp",
            inlateout("rdi") arg => resumed_with,
            inlateout("rdx") slot => _,
            lateout("r12") _, lateout("r13") _, lateout("r14") _, lateout("r15") _,
            clobber_abi("sysv64"),
        );
    }
    resumed_with
}

unsafe extern "C" {
    fn weft_fiber_start();
}

// The first frame of every fiber, reached from `resume`'s `call` with
// rax = the fiber sp (pointing at this function's address, then entry, then
// init), rdx = slot, rdi = arg and the resumer's return address on top of
// rsp. It records the resumer's stack pointer in the slot, moves to the fiber
// stack and calls entry(init, arg, slot) with rsp = top-16, 16-byte aligned.
//
// Its CFI makes unwinders continue into the resumer. While the fiber runs
// the slot holds the resumer's stack pointer, pointing at `resume`'s return
// address with the pushed rbx and rbp above it; the resumer's stack pointer
// as its own CFI expects it (before the asm block) is 24 bytes higher:
//   CFA = *(rbp) + 24   (DW_CFA_def_cfa_expression: DW_OP_breg6 0,
//                        DW_OP_deref, DW_OP_plus_uconst 24)
//   return address (column 16) at CFA-24, rbx at CFA-16, rbp at CFA-8.
// rbp holds the slot's address throughout this frame: every callee that uses
// rbp saves it and says where with CFI.
global_asm!(
    ".text",
    ".globl weft_fiber_start",
    ".hidden weft_fiber_start",
    ".type weft_fiber_start,@function",
    ".p2align 4",
    "weft_fiber_start:",
    ".cfi_startproc simple",
    ".cfi_escape 0x0f, 0x05, 0x76, 0x00, 0x06, 0x23, 0x18",
    ".cfi_offset 16, -24",
    ".cfi_offset rbx, -16",
    ".cfi_offset rbp, -8",
    "mov [rdx], rsp",
    "lea rsp, [rax + 8]",
    "mov rsi, rdi",
    "pop rcx",
    "pop rdi",
    "mov rbp, rdx",
    "call rcx",
    // entry never returns: it leaves the fiber with a final suspend.
    "ud2",
    ".cfi_endproc",
    ".size weft_fiber_start, .-weft_fiber_start",
);
