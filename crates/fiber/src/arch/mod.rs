//! The architecture-specific context switch, one file per architecture:
//! `x86_64.rs` (inline and global asm) and `aarch64.S` (plain GNU as, loaded
//! by `aarch64.rs`).
//!
//! Contract of both:
//! - `init(top, entry, init)` lays out a switch slot and a first frame in the
//!   `INIT_FRAME_BYTES` below the 16-byte aligned `top` and returns the slot.
//!   The first `resume` through that slot calls `entry(init, arg, slot)` on
//!   the fiber stack, where `arg` is the value passed to that resume.
//!   `entry` must never return.
//! - `resume(slot, arg)`, on the resumer's stack, saves the resumer's
//!   callee-saved state, runs the fiber until it calls `suspend(slot, value)`
//!   and returns `value`; that `suspend` returns the `arg` of the next
//!   `resume`.
//! - A backtrace taken on the fiber stack continues into the resumer's frames
//!   through the CFI of the first frame.

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use aarch64::*;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("weft-fiber supports x86_64 and aarch64 only");

pub type Entry = unsafe extern "C" fn(init: *mut u8, arg: usize, slot: *mut *mut u8) -> !;
