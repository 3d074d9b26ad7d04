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
//! # Stack layout and registers
//! A suspended fiber's stack pointer points at its continuation address,
//! with its rbx and rbp above it; the [`Fiber`](crate::Fiber) keeps that
//! stack pointer, and `resume` hands it over in rdx, so entering the fiber is
//! one load and an indirect `call`. `suspend` passes its new stack pointer
//! back in rdx (0 from [`finish`]: the fiber is done), which the resumer
//! stores. The 8-byte switch slot 16 bytes below the stack top holds the
//! resumer's stack pointer while the fiber runs (written on every entry;
//! `resume` passes its address in rsi), pointing at the return address
//! `resume`'s `call` pushed, with rbx and rbp above it. The value word
//! travels in rdi both ways, the unwind request into the fiber in rcx. So a
//! round trip writes only the two stacks, the slot and the Fiber's
//! stack-pointer field, and a value that fits in a word never goes through
//! memory.
//!
//! `init` lays out a first frame of the same shape whose continuation is
//! `weft_fiber_start` (the slot is written by the first entry; the 0 above
//! it ends frame-pointer walks, rbp being the slot's address in the first
//! frame):
//! ```text
//!   top-8   0
//!   top-16  switch slot
//!   top-24  entry
//!   top-32  weft_fiber_start   <- the first stack pointer
//! ```

use core::arch::{asm, global_asm};

use super::{Entry, Word};

/// Bytes below the stack top that [`init`] reserves.
pub const INIT_FRAME_BYTES: usize = 32;

/// How far below the switch slot the stack pointer [`init`] returns lies.
pub const FIRST_SP_BELOW_SLOT: usize = 16;

/// Lays out the first frame below the 16-byte aligned `top`; returns the
/// fiber's first stack pointer. The switch slot is at `top - SLOT_OFFSET`.
///
/// # Safety
/// `[top - INIT_FRAME_BYTES, top)` must be writable memory of a stack that no
/// fiber is running on.
#[inline]
pub unsafe fn init(top: *mut u8, entry: Entry) -> *mut u8 {
    let top = top.cast::<usize>();
    // SAFETY: per the function contract; top is 16-byte (so 8-byte) aligned.
    unsafe {
        top.sub(1).write(0);
        top.sub(3).write(entry as usize);
        top.sub(4).write(weft_fiber_start as *const () as usize);
        top.sub(4).cast()
    }
}

/// Runs the fiber whose saved stack pointer is `sp` and switch slot `slot`
/// until it suspends, passing it `word` and `unwind`; returns the fiber's new
/// stack pointer (null once it has finished) and the word it passed back.
///
/// # Safety
/// `sp` must be the stack pointer of a suspended (or `init`ialised) fiber
/// that is not running anywhere else, and `slot` the switch slot of its
/// stack.
#[inline(always)]
pub unsafe fn resume(
    sp: *mut u8,
    slot: *mut *mut u8,
    word: Word,
    unwind: usize,
) -> (*mut u8, Word) {
    let (new_sp, returned): (*mut u8, Word);
    // SAFETY: per the function contract, sp points at the fiber's
    // continuation (weft_fiber_start or label 2 of `suspend`), which expects
    // rdx = its sp, rsi = slot, rdi = word, rcx = unwind and our return
    // address on top of our stack, and comes back with a `ret` to it,
    // rdx = its new sp (or 0) and rdi = its word.
    unsafe {
        asm!(
            "push rbp",
            "push rbx",
            "call [rdx]",
            "pop rbx",
            "pop rbp",
            inlateout("rdx") sp => new_sp,
            inlateout("rdi") word => returned,
            inlateout("rsi") slot => _,
            inlateout("rcx") unwind => _,
            lateout("r12") _, lateout("r13") _, lateout("r14") _, lateout("r15") _,
            clobber_abi("sysv64"),
        );
    }
    (new_sp, returned)
}

/// Suspends the running fiber whose switch slot is `slot`, passing `word` to
/// its resumer; returns the word and unwind request of the next `resume`.
///
/// # Safety
/// Must run on the fiber stack of `slot`, entered by a `resume` whose
/// return address [slot] points at.
#[inline(always)]
pub unsafe fn suspend(slot: *mut *mut u8, word: Word) -> (Word, usize) {
    let (resumed_with, unwind): (Word, usize);
    // SAFETY: per the function contract, [slot] is the resumer's stack
    // pointer, pointing at the return address of its `call`, which expects
    // rdx = our sp and rdi = our word. Our stack pointer, handed over in rdx,
    // points at our continuation (label 2), which the next `resume` calls
    // with rdx = that sp, rsi = slot, rdi = its word and rcx = unwind.
    unsafe {
        asm!(
            "push rbp",
            "push rbx",
            "lea rax, [rip + 2f]",
            "push rax",
            "mov rdx, rsp",
            "mov rsp, [rsi]",
            "ret",
            "2:",
            "mov [rsi], rsp",
            "lea rsp, [rdx + 8]",
            "pop rbx",
            "pop rbp",
            inlateout("rdi") word => resumed_with,
            inlateout("rsi") slot => _,
            lateout("rcx") unwind,
            lateout("r12") _, lateout("r13") _, lateout("r14") _, lateout("r15") _,
            clobber_abi("sysv64"),
        );
    }
    (resumed_with, unwind)
}

/// The fiber's last switch: passes `word` to its resumer with a null stack
/// pointer, which tells it the fiber has finished, and never comes back.
///
/// # Safety
/// As [`suspend`]; nothing left on the fiber stack may need dropping, and
/// whatever `word` points at on it stays valid (the stack is not reused
/// before the resumer has read it).
#[inline(always)]
pub unsafe fn finish(slot: *mut *mut u8, word: Word) -> ! {
    // SAFETY: per the function contract, [slot] is the resumer's stack
    // pointer, pointing at the return address of its `call`; rdx = 0 and
    // rdi = word is what that return expects from a finished fiber.
    unsafe {
        asm!(
            "xor edx, edx",
            "mov rsp, [rsi]",
            "ret",
            in("rsi") slot,
            in("rdi") word,
            options(noreturn),
        );
    }
}

unsafe extern "C" {
    fn weft_fiber_start();
}

// The first frame of every fiber, reached from `resume`'s `call` with
// rdx = the fiber sp (pointing at this function's address, then entry),
// rsi = slot, rdi = word and the resumer's return address on top of rsp. It
// records the resumer's stack pointer in the slot, moves to the fiber stack
// and calls entry(word, slot) (already in rdi and rsi) with rsp = top-16,
// 16-byte aligned.
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
    "mov [rsi], rsp",
    "lea rsp, [rdx + 16]",
    "mov rbp, rsi",
    "call [rdx + 8]",
    // entry never returns: it leaves the fiber with `finish`.
    "ud2",
    ".cfi_endproc",
    ".size weft_fiber_start, .-weft_fiber_start",
);
