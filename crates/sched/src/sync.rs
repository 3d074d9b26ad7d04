//! The synchronisation primitives of the pieces that are model-checked with loom: the idle/park
//! protocol (`runtime/idle.rs`), the timer hand-off to the driver (`timer.rs`) and `JoinCell`
//! (`task.rs`).
//!
//! In this crate's own tests under `--cfg loom` these are loom's instrumented types, so the model
//! checker sees (and permutes) every access; otherwise they are std's, at no cost (loom is only
//! a dev-dependency, so a dependent crate built with `--cfg loom` gets std's too). Everything
//! else in the crate (queues, fibers, the reactor) uses std directly and is kept out of the
//! models.

#[cfg(all(test, loom))]
pub(crate) use loom::cell::UnsafeCell;
#[cfg(all(test, loom))]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, fence};
#[cfg(all(test, loom))]
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};

#[cfg(not(all(test, loom)))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, fence};
#[cfg(not(all(test, loom)))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};

/// `std::cell::UnsafeCell` with loom's closure-based access API, so the same code compiles
/// against both (loom checks that no two threads' accesses to the cell race).
#[cfg(not(all(test, loom)))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(all(test, loom)))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> UnsafeCell<T> {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with a shared pointer to the contents.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Runs `f` with an exclusive pointer to the contents.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Locks `m`, ignoring poisoning: every critical section of the modelled pieces leaves its data
/// consistent even if a panic unwinds through it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
