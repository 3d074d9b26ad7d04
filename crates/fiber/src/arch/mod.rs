//! The architecture-specific context switch, one file per architecture:
//! `x86_64.rs` (inline and global asm) and `aarch64.S` (plain GNU as, loaded
//! by `aarch64.rs`).
//!
//! Contract of both:
//! - `init(top, entry)` lays out a first frame in the `INIT_FRAME_BYTES`
//!   below the 16-byte aligned `top` and returns the fiber's first stack
//!   pointer `sp`; the switch slot is at `top - SLOT_OFFSET` and `sp` at
//!   `FIRST_SP_BELOW_SLOT` below it. The first `resume` from `sp` calls
//!   `entry(word, slot)` on the fiber stack, with the `word` passed to that
//!   resume (its `unwind` must be 0: an unstarted fiber is never unwound).
//!   `entry` must never return: it ends with `finish`.
//! - `resume(sp, slot, word, unwind)`, on the resumer's stack, saves the
//!   resumer's callee-saved state and runs the fiber until it calls
//!   `suspend(slot, word')` or `finish(slot, word')`; it returns the fiber's
//!   new `sp` (null after `finish`) and `word'`. That `suspend` returns the
//!   `word` and `unwind` of the next `resume`.
//! - `sp` is opaque to the caller: it only stores it, passes it to the next
//!   `resume` and tests it for null.
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

/// The switch slot's distance below the `top` given to `init`.
pub const SLOT_OFFSET: usize = 16;

/// The word a switch carries each way: any value's bytes (see `lib.rs`).
pub type Word = core::mem::MaybeUninit<usize>;

pub type Entry = unsafe extern "C" fn(word: Word, slot: *mut *mut u8) -> !;
