//! The runtime: worker threads, their queues, and how idle workers sleep.
//!
//! Each worker owns a Chase-Lev deque (crossbeam-deque) plus a one-task LIFO slot that holds the
//! task it most recently woke or spawned, so a spawn-then-join or a message ping-pong stays on one
//! worker with a warm cache. Tasks spawned or woken from outside the runtime go to a global
//! injector. A worker that runs dry steals (batches) from the injector and from the other workers,
//! spins a short, bounded while, and then parks:
//!
//! * the first idle worker takes the driver lock and blocks in the reactor (`epoll_wait`) until an
//!   I/O event, the nearest timer deadline, or a kick;
//! * other idle workers block on their own condition variable.
//!
//! New work wakes one sleeping worker only when no worker is already searching for work.
//!
//! A green thread that joins the task sitting in its worker's LIFO slot (typically the one it
//! just spawned) runs it at once, nested in its own fiber, instead of parking until the worker
//! has run it (`WorkerLocal::run_inline`).
//!
//! The parts, by concern:
//!
//! * this module: [`Shared`], the state every worker and handle reaches (queues, idle state,
//!   reactor, timers, task registry, stack pool), scheduling and spawning, and shutdown;
//! * `builder.rs`: [`Builder`], which validates a configuration and starts the threads;
//! * `worker.rs`: the worker loop, its local queue and LIFO slot, stealing, and the per-task
//!   preemption state behind [`should_yield`] and [`consume_budget`];
//! * `idle.rs`: searching, parking and waking workers, and the driver hand-off; its module doc
//!   describes the sleep/wake protocol and why no wake-up is lost;
//! * `handle.rs`: [`Runtime`], [`Handle`], [`EnterGuard`] and the free [`spawn`];
//! * `metrics.rs`: the per-worker counters and the [`Metrics`] snapshot.

mod builder;
mod handle;
mod idle;
mod metrics;
mod worker;

use std::io;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;

use crossbeam_deque::{Injector, Steal, Stealer};
use crossbeam_utils::CachePadded;

use crate::context;
use crate::driver::{Driver, IoRegistry};
use crate::fiber::StackPool;
use crate::preempt::TickerState;
use crate::task::{self, JoinHandle, Task, TaskRegistry};
use crate::timer::Timers;

pub use builder::Builder;
pub use handle::{EnterGuard, Handle, Runtime, spawn};
pub use metrics::Metrics;
pub use worker::{consume_budget, should_yield, yield_if_needed};

pub(crate) use worker::{WorkerLocal, note_completed, run_inline_if_next};

use idle::Idle;
use metrics::{Counters, bump};

/// Task ids of spawns from outside the workers; workers take blocks of `TASK_ID_BLOCK` from it.
static NEXT_TASK_ID: AtomicU64 = AtomicU64::new(1);
const TASK_ID_BLOCK: u64 = 1024;

/// Everything the workers, handles, tasks, timers and I/O types of one runtime share.
pub(crate) struct Shared {
    injector: Injector<Arc<Task>>,
    stealers: Box<[Stealer<Arc<Task>>]>,
    /// Searching and sleeping workers, and their parkers (see `idle.rs`).
    idle: Idle,
    driver: Mutex<Driver>,
    driver_waker: mio::Waker,
    pub(crate) io: IoRegistry,
    pub(crate) timers: Timers,
    pub(crate) tasks: TaskRegistry,
    pool: StackPool,
    shutdown: AtomicBool,
    /// One per worker, plus one for threads outside the runtime.
    counters: Box<[CachePadded<Counters>]>,
    pub(crate) preempt_epoch: AtomicU64,
    /// The preemption ticker, which pauses while every worker sleeps.
    ticker: OnceLock<Arc<TickerState>>,
    budget: u32,
    num_workers: usize,
}

impl Shared {
    /// The worker loop of this runtime running on the calling thread, if any.
    fn this_worker(self: &Arc<Self>) -> Option<&WorkerLocal> {
        let worker = context::current_worker();
        // SAFETY: a non-null WORKER is set by `worker_main` to its own `WorkerLocal` and cleared
        // before that local is dropped, so it points at this thread's live worker loop, which
        // outlives the returned borrow (callers use it at once, never across a fiber suspension).
        let worker = unsafe { worker.as_ref()? };
        ptr::eq(Arc::as_ptr(worker.shared()), Arc::as_ptr(self)).then_some(worker)
    }

    /// Queues a task that was just moved to SCHEDULED.
    pub(crate) fn schedule(self: &Arc<Self>, task: Arc<Task>) {
        match self.this_worker() {
            Some(worker) if !self.shutdown.load(Ordering::Relaxed) => worker.push_lifo(task),
            _ => {
                self.injector.push(task);
                self.notify_if_idle();
            }
        }
    }

    /// `schedule` for a task's own reference, which is queued as is. On a worker of the task's
    /// runtime this touches no reference count; elsewhere it takes one on the runtime for the
    /// duration of the call.
    pub(crate) fn schedule_owned(task: Arc<Task>) {
        let worker = context::current_worker();
        // SAFETY: a non-null WORKER is set by `worker_main` to its own `WorkerLocal` and cleared
        // before that local is dropped, so it points at this thread's live worker loop, which
        // outlives this call.
        match unsafe { worker.as_ref() } {
            Some(worker)
                if ptr::eq(Arc::as_ptr(worker.shared()), Arc::as_ptr(task.shared()))
                    && !worker.shared().shutdown.load(Ordering::Relaxed) =>
            {
                worker.push_lifo(task)
            }
            _ => {
                let shared = task.shared().clone();
                shared.schedule(task);
            }
        }
    }

    // Inlined into the public `spawn`s, so the closure and the handle stay in registers
    // instead of being stored by one call and reloaded by the next right away (which stalls).
    #[inline(always)]
    pub(crate) fn spawn<F, T>(self: &Arc<Self>, body: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let stack = self.pool.take()?;
        let worker = self.this_worker();
        let id = match worker {
            Some(w) => w.next_task_id(),
            None => NEXT_TASK_ID.fetch_add(1, Ordering::Relaxed),
        };
        let index = worker.map(WorkerLocal::index);
        // SAFETY: `this_worker` is the worker loop running on this very thread, so with
        // `Some(index)` we are on worker `index`'s thread.
        let (task, handle) = unsafe { task::new_task(self, id, index, stack, body) };
        match worker {
            Some(w) => bump(&w.counters().spawned, 1),
            // Threads outside the runtime share one counter slot.
            None => {
                self.counters[self.num_workers]
                    .spawned
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.shutdown.load(Ordering::Acquire) {
            // Dropping the unstarted fiber drops its closure, which reports "cancelled".
            task.cancel();
            return Ok(handle);
        }
        // The task was created SCHEDULED (nothing else can reach it to wake it yet), so its
        // own reference goes to the queue: no compare-and-swap, no extra reference count.
        self.schedule(task);
        Ok(handle)
    }

    pub(crate) fn metrics(&self) -> Metrics {
        Metrics::sum(self.num_workers, self.timers.pending(), &self.counters)
    }

    pub(crate) fn is_shutdown(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Drops every task the runtime still references (after the workers exited), which unwinds
    /// their fibers and reports "cancelled" to their joiners. Tasks may wake others while they
    /// unwind, so this repeats until nothing is left.
    fn release_tasks(&self) {
        // Cancel every unfinished task first: that unwinds the fibers, which is what breaks the
        // reference cycles (a fiber's stack holding wakers of its own or other tasks).
        for _ in 0..8 {
            // SAFETY: called once the worker threads have been joined (see `shutdown`).
            let live = unsafe { self.tasks.snapshot() };
            if live.is_empty() {
                break;
            }
            for task in live {
                task.cancel();
            }
        }
        for _ in 0..64 {
            let mut released = 0;
            loop {
                match self.injector.steal() {
                    Steal::Success(task) => {
                        released += 1;
                        drop(task);
                    }
                    Steal::Retry => continue,
                    Steal::Empty => break,
                }
            }
            let wakers = self.timers.drain();
            released += wakers.len();
            drop(wakers);
            self.io.wake_all();
            if released == 0 && self.injector.is_empty() {
                break;
            }
        }
    }
}

/// Stops the workers (joining them unless called from one of them) and releases the tasks left.
fn shutdown(shared: &Arc<Shared>, threads: Vec<thread::JoinHandle<()>>) {
    shared.shutdown.store(true, Ordering::SeqCst);
    // Every worker re-checks `is_shutdown` after its park fence (F2 in `idle.rs`) and every
    // parker gets a token, so no worker sleeps through this.
    shared.idle.unpark_all(|| shared.kick_driver());
    shared.kick_driver();
    let inside_own_worker = shared.this_worker().is_some();
    for thread in threads {
        if !inside_own_worker {
            let _ = thread.join();
        }
    }
    if !inside_own_worker {
        shared.release_tasks();
    }
}
