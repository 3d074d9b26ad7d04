//! The context switch for aarch64: the assembly is the plain GNU-as file
//! `aarch64.S` (also linked into the C harness of `cargo xtask
//! test-aarch64`), where the saved registers, the frame layout and the CFI
//! are described. Resume and suspend are the same symmetric switch there,
//! which keeps the suspended fiber's stack pointer in the switch slot; the
//! `sp` of the common contract (see `mod.rs`) is read back from the slot.

use core::arch::global_asm;

use super::{Entry, Word};

global_asm!(include_str!("aarch64.S"));

/// Bytes below the stack top that [`init`] reserves.
pub const INIT_FRAME_BYTES: usize = 176;

/// How far below the switch slot the stack pointer [`init`] returns lies.
pub const FIRST_SP_BELOW_SLOT: usize = 160;

/// The two words `weft_fiber_switch` hands over (returned in x0 and x1).
#[repr(C)]
struct Handed {
    word: Word,
    flag: usize,
}

/// `Handed::flag` from a fiber: it suspended, or it finished.
const SUSPENDED: usize = 0;
const FINISHED: usize = 1;

unsafe extern "C" {
    fn weft_fiber_init(top: *mut u8, entry: Entry) -> *mut u8;
    fn weft_fiber_switch(slot: *mut *mut u8, word: Word, flag: usize) -> Handed;
}

/// # Safety
/// As `x86_64::init`: `[top - INIT_FRAME_BYTES, top)` is writable memory of
/// a stack no fiber runs on; `top` is 16-byte aligned.
#[inline]
pub unsafe fn init(top: *mut u8, entry: Entry) -> *mut u8 {
    // SAFETY: `weft_fiber_init` only writes the frame below `top`, which the
    // caller (`Fiber::place`) guarantees is writable and unused.
    unsafe { weft_fiber_init(top, entry) }
}

/// # Safety
/// As `x86_64::resume`: `slot` holds the stack pointer of a suspended (or
/// `init`ialised) fiber not running elsewhere (`sp` is not needed here).
#[inline(always)]
pub unsafe fn resume(
    _sp: *mut u8,
    slot: *mut *mut u8,
    word: Word,
    unwind: usize,
) -> (*mut u8, Word) {
    // SAFETY: the caller (`Fiber::switch_in`) guarantees `slot` holds a
    // suspended fiber's stack pointer, which `weft_fiber_switch` resumes;
    // when the fiber switches back the slot holds its stack pointer again.
    unsafe {
        let handed = weft_fiber_switch(slot, word, unwind);
        let sp = if handed.flag == FINISHED {
            core::ptr::null_mut()
        } else {
            *slot
        };
        (sp, handed.word)
    }
}

/// # Safety
/// As `x86_64::suspend`: runs on the fiber stack of `slot`, whose slot
/// holds the resumer's stack pointer.
#[inline(always)]
pub unsafe fn suspend(slot: *mut *mut u8, word: Word) -> (Word, usize) {
    // SAFETY: the caller (`Suspender::suspend`) runs on the fiber stack of
    // `slot`, which holds its resumer's stack pointer, so
    // `weft_fiber_switch` returns to that resumer.
    let handed = unsafe { weft_fiber_switch(slot, word, SUSPENDED) };
    (handed.word, handed.flag)
}

/// # Safety
/// As `x86_64::finish`.
#[inline(always)]
pub unsafe fn finish(slot: *mut *mut u8, word: Word) -> ! {
    // SAFETY: as in `suspend`; the resumer never switches back here.
    unsafe { weft_fiber_switch(slot, word, FINISHED) };
    // The resumer never switches back into a finished fiber.
    std::process::abort()
}
