//! The public faces of a runtime: [`Runtime`] (owns the threads), [`Handle`] (a cloneable
//! reference usable from any thread), [`EnterGuard`], and the free [`spawn`].

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::thread;

use super::{Builder, Metrics, Shared, shutdown};
use crate::context;
use crate::preempt::Ticker;
use crate::task::JoinHandle;

/// An M:N scheduler of green threads (fibers) over a fixed set of worker OS threads.
///
/// Dropping the runtime stops its workers and drops the tasks still parked on it (their joiners
/// get [`JoinError::is_cancelled`](crate::JoinError::is_cancelled)).
pub struct Runtime {
    handle: Handle,
    threads: Vec<thread::JoinHandle<()>>,
    ticker: Option<Ticker>,
}

impl Runtime {
    /// A runtime with the default configuration (one worker per available core).
    pub fn new() -> io::Result<Runtime> {
        Builder::new().build()
    }

    /// A [`Builder`] with the default configuration, to adjust before building.
    pub fn builder() -> Builder {
        Builder::new()
    }

    pub(super) fn from_parts(
        handle: Handle,
        threads: Vec<thread::JoinHandle<()>>,
        ticker: Option<Ticker>,
    ) -> Runtime {
        Runtime {
            handle,
            threads,
            ticker,
        }
    }

    /// Starts a green thread running `body`.
    ///
    /// # Panics
    /// If no stack can be mapped for it (see [`Handle::try_spawn`]).
    pub fn spawn<F, T>(&self, body: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.handle.spawn(body)
    }

    /// Runs a future to completion on the calling thread, with this runtime entered (so
    /// `spawn`, `Sleep` and the I/O types inside it use this runtime). Inside a green thread it
    /// parks only that green thread.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        let _entered = self.enter();
        crate::block_on(future)
    }

    /// Makes this runtime the current one on this thread until the guard is dropped. Inside a
    /// green thread this does nothing: a green thread always uses its own runtime (and may move
    /// between OS threads, so it must not mark one).
    pub fn enter(&self) -> EnterGuard<'_> {
        let entered = !crate::in_green_thread();
        if entered {
            context::enter(self.handle.shared.clone());
        }
        EnterGuard {
            entered,
            _runtime: std::marker::PhantomData,
        }
    }

    /// A cloneable handle to this runtime, usable from any thread.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// What the runtime has done since it started (see [`Metrics`]).
    pub fn metrics(&self) -> Metrics {
        self.handle.metrics()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        drop(self.ticker.take());
        shutdown(&self.handle.shared, std::mem::take(&mut self.threads));
    }
}

/// Returned by [`Runtime::enter`]; dropping it leaves the runtime.
pub struct EnterGuard<'a> {
    entered: bool,
    /// Tied to the OS thread that entered (not Send).
    _runtime: std::marker::PhantomData<(&'a Runtime, *const ())>,
}

impl Drop for EnterGuard<'_> {
    fn drop(&mut self) {
        if self.entered {
            context::exit();
        }
    }
}

/// A cheap, cloneable reference to a runtime, usable from any thread.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    pub(super) fn from_shared(shared: Arc<Shared>) -> Handle {
        Handle { shared }
    }

    /// The runtime of the calling green thread, worker, or `Runtime::enter` scope.
    ///
    /// # Panics
    /// Outside a runtime.
    pub fn current() -> Handle {
        Handle::try_current()
            .expect("no weft-sched runtime here: call from a green thread or inside Runtime::enter")
    }

    /// The runtime of the calling green thread, worker, or `Runtime::enter` scope, or `None`
    /// outside a runtime.
    pub fn try_current() -> Option<Handle> {
        context::current_shared().map(|shared| Handle { shared })
    }

    /// Starts a green thread.
    ///
    /// # Panics
    /// If no stack can be mapped for it.
    pub fn spawn<F, T>(&self, body: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.try_spawn(body)
            .unwrap_or_else(|e| panic!("weft-sched: cannot map a stack for a green thread: {e}"))
    }

    /// Starts a green thread, or reports why no stack could be mapped for it.
    pub fn try_spawn<F, T>(&self, body: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.shared.spawn(body)
    }

    /// What the runtime has done since it started (see [`Metrics`]).
    pub fn metrics(&self) -> Metrics {
        self.shared.metrics()
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.shared.num_workers
    }

    #[cfg(feature = "hyper")]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("workers", &self.shared.num_workers)
            .finish()
    }
}

/// Starts a green thread on the current runtime.
///
/// # Panics
/// Outside a runtime, or if no stack can be mapped.
pub fn spawn<F, T>(body: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let task = context::current_task();
    if !task.is_null() {
        // SAFETY: a non-null current task is set by the worker (`run_task`) to the task whose
        // fiber is running on this thread right now, and that worker holds an `Arc<Task>` until
        // the fiber suspends; borrowing its runtime (instead of cloning the `Arc`) ends before
        // this green thread can suspend.
        let shared = unsafe { (*task).shared() };
        return shared
            .spawn(body)
            .unwrap_or_else(|e| panic!("weft-sched: cannot map a stack for a green thread: {e}"));
    }
    Handle::current().spawn(body)
}
