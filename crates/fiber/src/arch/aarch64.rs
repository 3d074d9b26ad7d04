//! The context switch for aarch64: the assembly is the plain GNU-as file
//! `aarch64.S` (also linked into the C harness of `cargo xtask
//! test-aarch64`), where the saved registers, the frame layout and the CFI
//! are described. Resume and suspend are the same symmetric switch there.

use core::arch::global_asm;

use super::Entry;

global_asm!(include_str!("aarch64.S"));

/// Bytes below the stack top that [`init`] writes.
pub const INIT_FRAME_BYTES: usize = 176;

unsafe extern "C" {
    fn weft_fiber_init(top: *mut u8, entry: Entry, init: *mut u8) -> *mut *mut u8;
    fn weft_fiber_switch(slot: *mut *mut u8, arg: usize) -> usize;
}

/// # Safety
/// As `x86_64::init`: `[top - INIT_FRAME_BYTES, top)` is writable memory of
/// a stack no fiber runs on; `top` is 16-byte aligned.
pub unsafe fn init(top: *mut u8, entry: Entry, init: *mut u8) -> *mut *mut u8 {
    // SAFETY: `weft_fiber_init` only writes the frame below `top`, which the
    // caller (`Fiber::place`) guarantees is writable and unused.
    unsafe { weft_fiber_init(top, entry, init) }
}

/// # Safety
/// `slot` holds the stack pointer of a suspended fiber not running elsewhere.
#[inline(always)]
pub unsafe fn resume(slot: *mut *mut u8, arg: usize) -> usize {
    // SAFETY: the caller (`Fiber::switch_in`) guarantees `slot` holds a
    // suspended fiber's stack pointer, which `weft_fiber_switch` resumes.
    unsafe { weft_fiber_switch(slot, arg) }
}

/// # Safety
/// Runs on the fiber stack of `slot`, whose slot holds the resumer's sp.
#[inline(always)]
pub unsafe fn suspend(slot: *mut *mut u8, arg: usize) -> usize {
    // SAFETY: the caller (`Suspender::suspend`, `fiber_entry`) runs on the
    // fiber stack of `slot`, which holds its resumer's stack pointer, so
    // `weft_fiber_switch` returns to that resumer.
    unsafe { weft_fiber_switch(slot, arg) }
}
