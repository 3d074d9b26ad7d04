//! Thread-local pointers to "the worker running on this OS thread" and "the task running on this
//! worker".
//!
//! Code running inside a fiber may suspend on one OS thread and resume on another. LLVM is allowed
//! to cache the address of a thread-local across a call, so every access goes through an
//! `#[inline(never)]` function here and no caller keeps the result across a suspension point.

use std::cell::{Cell, RefCell};
use std::ptr;
use std::sync::Arc;

use crate::runtime::{Shared, WorkerLocal};
use crate::task::Task;

thread_local! {
    static WORKER: Cell<*const WorkerLocal> = const { Cell::new(ptr::null()) };
    static TASK: Cell<*const Task> = const { Cell::new(ptr::null()) };
    static ENTERED: RefCell<Vec<Arc<Shared>>> = const { RefCell::new(Vec::new()) };
    static DROPPING_FIBER: Cell<usize> = const { Cell::new(0) };
    static DROPPING_TASK: Cell<usize> = const { Cell::new(0) };
}

/// The worker loop running on this OS thread, if any. The pointer is valid for as long as the
/// worker loop runs, which outlives every task it resumes.
#[inline(never)]
pub(crate) fn current_worker() -> *const WorkerLocal {
    WORKER.with(Cell::get)
}

#[inline(never)]
pub(crate) fn set_current_worker(worker: *const WorkerLocal) {
    WORKER.with(|w| w.set(worker));
}

/// The task whose fiber is running on this OS thread right now (null outside green threads).
#[inline(never)]
pub(crate) fn current_task() -> *const Task {
    TASK.with(Cell::get)
}

#[inline(never)]
pub(crate) fn set_current_task(task: *const Task) {
    TASK.with(|t| t.set(task));
}

/// The runtime that `spawn`, `sleep` and the I/O types use on this thread: the one whose green
/// thread is running, else the one whose worker this is, else the innermost `Runtime::enter`.
#[inline(never)]
pub(crate) fn current_shared() -> Option<Arc<Shared>> {
    let task = current_task();
    if !task.is_null() {
        // SAFETY: a non-null TASK points at a task whose fiber is running on this thread right
        // now; the worker that resumed it holds an `Arc<Task>` until the fiber suspends.
        return Some(unsafe { (*task).shared().clone() });
    }
    let worker = current_worker();
    if !worker.is_null() {
        // SAFETY: a non-null WORKER is set by `worker_main` to its own `WorkerLocal` and cleared
        // before that local is dropped, so it is the live worker loop of this thread.
        return Some(unsafe { (*worker).shared().clone() });
    }
    ENTERED.with(|e| e.borrow().last().cloned())
}

#[inline(never)]
pub(crate) fn enter(shared: Arc<Shared>) {
    ENTERED.with(|e| e.borrow_mut().push(shared));
}

#[inline(never)]
pub(crate) fn exit() {
    ENTERED.with(|e| {
        e.borrow_mut().pop();
    });
}

/// Marks that this thread is dropping a suspended fiber, which unwinds the fiber's stack: the task
/// body must let that unwind through instead of reporting it as a panic of the task.
#[inline(never)]
pub(crate) fn set_dropping_fiber(on: bool) {
    DROPPING_FIBER.with(|d| {
        if on {
            d.set(d.get() + 1)
        } else {
            d.set(d.get() - 1)
        }
    });
}

#[inline(never)]
pub(crate) fn is_dropping_fiber() -> bool {
    DROPPING_FIBER.with(Cell::get) > 0
}

/// Marks that this thread is dropping a task (its last reference went away) and with it the
/// task's fiber: the task's completer must not report to a joiner, as there is none.
#[inline(never)]
pub(crate) fn set_dropping_task(on: bool) {
    DROPPING_TASK.with(|d| {
        if on {
            d.set(d.get() + 1)
        } else {
            d.set(d.get() - 1)
        }
    });
}

#[inline(never)]
pub(crate) fn is_dropping_task() -> bool {
    DROPPING_TASK.with(Cell::get) > 0
}
