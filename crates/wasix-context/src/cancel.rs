//! Destroying a context that is suspended in its own `context_switch`, without the two
//! backtraces wasmtime would take.
//!
//! A suspended `call_async` can only be ended by unwinding its wasm frames with a trap.
//! Dropping its future has wasmtime do that with a fresh `format_err!("future dropped")`,
//! which captures a Rust backtrace when `RUST_BACKTRACE` is set (~11 us), and the trap
//! then captures and symbolizes a wasm backtrace of every frame of the store on the thread,
//! main's included (~65,000 instructions, ~5 us). Both are thrown away at once.
//!
//! Instead, [`cancel`] resumes the context once with a request, found by its pending
//! [`SuspendOnce`] in a thread-local, to return an error that *already carries* a (empty)
//! [`WasmBacktrace`]: wasmtime then captures none. The trap hands that same error back as
//! the call's result, so it is kept for the next cancel on this thread; the Rust backtrace
//! in it is taken once per thread. If wasmtime ever wrapped or replaced it, a new one is
//! made next time: slower, never wrong. A context suspended anywhere else (an epoch yield,
//! real I/O) is disposed the ordinary way.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use wasmtime::{Engine, Store, WasmBacktrace};

use crate::context_future::{ContextFuture, Owner};

/// The error a cancelled context's `context_switch` returns. It never leaves the crate: the
/// trap it raises ends the very call [`cancel`] is polling.
#[derive(Debug, thiserror::Error)]
#[error("the WASIX context was destroyed while suspended")]
struct Destroyed;

thread_local! {
    /// Set while [`cancel`] polls a context: its `SuspendOnce` must fail instead of
    /// returning. A plain flag without a destructor, so the check on every switch back is
    /// one load.
    static CANCELLING: Cell<bool> = const { Cell::new(false) };
    /// The error handed to (or got back from) the last cancelled context on this thread.
    static SPARE: Cell<Option<wasmtime::Error>> = const { Cell::new(None) };
}

/// Pending exactly once: suspends the calling context's fiber so its driver can switch.
/// Fails on resumption when the context is being cancelled.
pub(crate) struct SuspendOnce {
    suspended: bool,
}

impl SuspendOnce {
    pub(crate) fn new() -> Self {
        SuspendOnce { suspended: false }
    }
}

impl Future for SuspendOnce {
    type Output = wasmtime::Result<()>;
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        if !std::mem::replace(&mut self.suspended, true) {
            // No wake-up needed: the driver acts on the request in the same poll.
            return Poll::Pending;
        }
        if CANCELLING.get() {
            return Poll::Ready(Err(take_error()));
        }
        Poll::Ready(Ok(()))
    }
}

#[cold]
#[inline(never)]
fn take_error() -> wasmtime::Error {
    CANCELLING.set(false);
    SPARE
        .take()
        .expect("`cancel` leaves an error with the flag")
}

/// The error for the next [`cancel`] on this thread: the one the last cancel got back, or
/// a new one (made from `engine`, the store's, which only the first cancel needs).
pub(crate) fn error(engine: impl FnOnce() -> Engine) -> wasmtime::Error {
    SPARE.take().unwrap_or_else(|| new_error(&engine()))
}

/// Ends `future`, a context suspended in its `context_switch` (in [`SuspendOnce`]), by
/// resuming it to trap with `error` (from [`error`]), then disposes what is left (nothing
/// to resume, unless the context was not where its slot said). The caller upholds what
/// [`ContextFuture::poll`] and [`ContextFuture::dispose`] ask.
pub(crate) fn cancel(mut future: ContextFuture, owner: Owner, error: wasmtime::Error) {
    SPARE.set(Some(error));
    CANCELLING.set(true);
    let result = future.poll(owner, &mut Context::from_waker(Waker::noop()));
    CANCELLING.set(false);
    // Ours comes back as it went in (a `Destroyed` under its backtrace context); anything
    // else, or ours wrapped in more context, is dropped rather than kept growing.
    if let Poll::Ready(Err(error)) = result
        && error.chain().count() == 2
        && error.root_cause().is::<Destroyed>()
    {
        SPARE.set(Some(error));
    }
    future.dispose(owner);
}

/// A `Destroyed` error carrying an empty wasm backtrace: taken in a store of its own, which
/// has no frames on any stack (and keeps no module alive).
#[cold]
#[inline(never)]
fn new_error(engine: &Engine) -> wasmtime::Error {
    let backtrace = WasmBacktrace::capture(Store::new(engine, ()));
    wasmtime::Error::new(Destroyed).context(backtrace)
}

#[cfg(test)]
pub(crate) fn spare_is_kept() -> bool {
    let spare = SPARE.take();
    let kept = spare.is_some();
    SPARE.set(spare);
    kept
}
