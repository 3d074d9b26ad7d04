//! The architecture-specific context switch. The assembly lives in one file
//! per architecture; this module only declares its three symbols.
//!
//! Contract shared by both files:
//! - `weft_fiber_init(top, entry, init)` lays out a switch slot and a first
//!   frame in the 176 bytes below the 16-byte aligned `top` and returns the
//!   slot. The first switch through that slot calls
//!   `entry(init, arg, slot)` on the fiber stack, where `arg` is the value
//!   passed to that switch. `entry` must never return.
//! - `weft_fiber_switch(slot, arg)` saves the caller's callee-saved state on
//!   its stack, exchanges the stack pointer with `*slot`, restores the other
//!   side and returns `arg` there.

#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(include_str!("x86_64.S"), options(att_syntax));

#[cfg(target_arch = "aarch64")]
core::arch::global_asm!(include_str!("aarch64.S"));

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("weft-fiber supports x86_64 and aarch64 only");

/// Bytes below the stack top that `weft_fiber_init` writes.
pub const INIT_FRAME_BYTES: usize = 176;

pub type Entry = unsafe extern "C" fn(init: *mut u8, arg: usize, slot: *mut *mut u8) -> !;

unsafe extern "C" {
    pub fn weft_fiber_init(top: *mut u8, entry: Entry, init: *mut u8) -> *mut *mut u8;
    pub fn weft_fiber_switch(slot: *mut *mut u8, arg: usize) -> usize;
}
