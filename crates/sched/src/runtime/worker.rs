//! The worker loop: each worker's local queue and LIFO slot, the injector, stealing, periodic
//! maintenance (timers, a non-blocking reactor poll), running a task, and the per-task
//! preemption state behind [`should_yield`] and [`consume_budget`].
//!
//! What a worker does when it runs out of work (searching, parking, the driver) is in `idle.rs`.

use std::cell::Cell;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_deque::{Steal, Worker};

use super::metrics::{Counters, bump};
use super::{NEXT_TASK_ID, Shared, TASK_ID_BLOCK};
use crate::context;
use crate::task::{Suspend, Task};

/// How many times a worker runs a task from its LIFO slot in a row before taking the next one
/// from its queue instead (so two tasks waking each other cannot starve the rest).
const MAX_LIFO_STREAK: u8 = 3;
/// Every this many scheduling decisions a worker checks timers and (non-blockingly) the reactor.
const MAINTENANCE_INTERVAL: u32 = 61;
/// Every this many scheduling decisions a worker takes from the injector first (fairness).
const INJECTOR_INTERVAL: u32 = 31;

/// The state of one worker thread; also reached (through a thread-local pointer) by green
/// threads running on it, to queue the tasks they spawn or wake.
pub(crate) struct WorkerLocal {
    pub(super) index: usize,
    pub(super) shared: Arc<Shared>,
    pub(super) queue: Worker<Arc<Task>>,
    lifo: Cell<Option<Arc<Task>>>,
    lifo_streak: Cell<u8>,
    tick: Cell<u32>,
    task_ids: Cell<(u64, u64)>,
    check_injector_first: Cell<bool>,
    rng: Cell<u32>,
    budget: Cell<u32>,
    task_epoch: Cell<u64>,
    /// Set while this worker fires a batch of timers: queueing the woken tasks leaves the
    /// wake-up of another worker to the end of the batch (`fire_timers`).
    defer_notify: Cell<bool>,
}

impl WorkerLocal {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(super) fn index(&self) -> usize {
        self.index
    }

    pub(super) fn counters(&self) -> &Counters {
        &self.shared.counters[self.index]
    }

    /// Task ids come from the global counter in blocks, so spawning on a worker touches no
    /// shared cache line.
    pub(super) fn next_task_id(&self) -> u64 {
        let (next, end) = self.task_ids.get();
        let (next, end) = if next < end {
            (next, end)
        } else {
            let start = NEXT_TASK_ID.fetch_add(TASK_ID_BLOCK, Ordering::Relaxed);
            (start, start + TASK_ID_BLOCK)
        };
        self.task_ids.set((next + 1, end));
        next
    }

    /// Queues a task spawned or woken on this worker: it takes the LIFO slot, and the task it
    /// displaces goes to the queue, where other workers can steal it (so wake one).
    pub(super) fn push_lifo(&self, task: Arc<Task>) {
        if let Some(previous) = self.lifo.replace(Some(task)) {
            self.queue.push(previous);
            if !self.defer_notify.get() {
                self.shared.notify_if_idle();
            }
        }
    }

    pub(super) fn push_queue(&self, task: Arc<Task>) {
        self.queue.push(task);
        if !self.defer_notify.get() {
            self.shared.notify_if_idle();
        }
    }

    /// Fires the due timers; returns how many. The tasks they wake are queued here, and other
    /// workers are notified once, after the whole batch (one fence and one look at the idle
    /// counters instead of one per task: a burst wakes thousands). That notification still
    /// follows every push, as the sleep/wake protocol requires (see `idle.rs`).
    pub(super) fn fire_timers(&self) -> usize {
        self.defer_notify.set(true);
        let fired = self.shared.timers.fire_due();
        self.defer_notify.set(false);
        if !self.queue.is_empty() {
            self.shared.notify_if_idle();
        }
        fired
    }

    pub(super) fn has_local_work(&self) -> bool {
        let lifo = self.lifo.take();
        let has = lifo.is_some();
        self.lifo.set(lifo);
        has || !self.queue.is_empty()
    }

    fn next_task(&self) -> Option<Arc<Task>> {
        let tick = self.tick.get().wrapping_add(1);
        self.tick.set(tick);
        if tick.is_multiple_of(MAINTENANCE_INTERVAL) {
            self.maintenance();
        }
        if (tick.is_multiple_of(INJECTOR_INTERVAL) || self.check_injector_first.replace(false))
            && let Some(task) = self.pop_injector()
        {
            return Some(task);
        }
        if let Some(task) = self.lifo.take() {
            if self.lifo_streak.get() < MAX_LIFO_STREAK {
                self.lifo_streak.set(self.lifo_streak.get() + 1);
                return Some(task);
            }
            self.queue.push(task);
        }
        self.lifo_streak.set(0);
        self.queue.pop().or_else(|| self.pop_injector())
    }

    fn pop_injector(&self) -> Option<Arc<Task>> {
        loop {
            match self.shared.injector.steal_batch_and_pop(&self.queue) {
                Steal::Success(task) => {
                    if !self.queue.is_empty() {
                        self.shared.notify_if_idle();
                    }
                    return Some(task);
                }
                Steal::Empty => return None,
                Steal::Retry => continue,
            }
        }
    }

    /// Takes work from the injector, else a batch from another worker (random first victim).
    pub(super) fn steal(&self) -> Option<Arc<Task>> {
        if let Some(task) = self.pop_injector() {
            return Some(task);
        }
        let n = self.shared.stealers.len();
        // xorshift: a cheap random starting victim spreads thieves over the workers.
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng.set(x);
        let start = x as usize % n;
        for k in 0..n {
            let victim = (start + k) % n;
            if victim == self.index {
                continue;
            }
            loop {
                match self.shared.stealers[victim].steal_batch_and_pop(&self.queue) {
                    Steal::Success(task) => {
                        bump(&self.counters().steals, 1);
                        return Some(task);
                    }
                    Steal::Empty => break,
                    Steal::Retry => continue,
                }
            }
        }
        None
    }

    fn maintenance(&self) {
        let shared = &self.shared;
        bump(&self.counters().timers_fired, self.fire_timers() as u64);
        if shared.io.has_sources()
            && let Ok(mut driver) = shared.driver.try_lock()
        {
            let now = shared.timers.now();
            driver.park(now, Some(now));
            let events = driver.dispatch(&shared.io);
            bump(&self.counters().io_events, events as u64);
        }
        shared.ensure_driver_watch();
    }

    pub(super) fn run_task(&self, task: Arc<Task>) {
        if !task.start_running() {
            bump(&self.counters().stale_entries, 1);
            return;
        }
        context::set_current_task(Arc::as_ptr(&task));
        self.budget.set(self.shared.budget);
        self.task_epoch
            .set(self.shared.preempt_epoch.load(Ordering::Relaxed));
        bump(&self.counters().polls, 1);
        let outcome = task.resume();
        context::set_current_task(ptr::null());
        match outcome {
            None => {}
            Some(Suspend::Yield) => {
                task.yield_after_run();
                // No wake-up for other workers: the yielder itself is runnable right here. Look
                // at the injector first next time, so a yield lets outside work in too.
                self.queue.push(task);
                self.check_injector_first.set(true);
            }
            Some(Suspend::Park) if task.park_after_run() => self.push_queue(task),
            Some(Suspend::Park) => {}
        }
    }

    /// Runs `task`, which was in this worker's LIFO slot (so it was next to run here anyway),
    /// from inside the green thread that is about to join it, as a nested fiber switch: the
    /// joiner then finds it finished and neither parks nor is woken, which saves two fiber
    /// switches and the join hand-off. The task runs exactly as `run_task` would run it (state
    /// machine, current task, budget and epoch); the joiner's are restored afterwards.
    ///
    /// It counts as a scheduling decision and as a LIFO run, so a joiner that spawns and joins
    /// in a loop cannot keep this worker from its periodic work: a run that would land on a
    /// maintenance or injector tick, or exceed the LIFO streak while tasks wait in the local
    /// queue, goes through the worker loop instead.
    fn run_inline(&self, task: Arc<Task>) {
        let tick = self.tick.get().wrapping_add(1);
        let streak = self.lifo_streak.get();
        if tick.is_multiple_of(MAINTENANCE_INTERVAL)
            || tick.is_multiple_of(INJECTOR_INTERVAL)
            || self.check_injector_first.get()
            || (streak >= MAX_LIFO_STREAK && !self.queue.is_empty())
        {
            self.lifo.set(Some(task));
            return;
        }
        self.tick.set(tick);
        self.lifo_streak.set(streak.saturating_add(1));
        let joiner = context::current_task();
        let (budget, epoch) = (self.budget.get(), self.task_epoch.get());
        self.run_task(task);
        context::set_current_task(joiner);
        self.budget.set(budget);
        self.task_epoch.set(epoch);
    }

    // Preemption state, read by `should_yield` on the green thread running on this worker.
    fn should_yield(&self) -> bool {
        self.budget.get() == 0
            || self.shared.preempt_epoch.load(Ordering::Relaxed) != self.task_epoch.get()
    }

    fn consume_budget(&self, units: u32) {
        self.budget.set(self.budget.get().saturating_sub(units));
    }
}

/// Called by a green thread about to join `task`: if `task` is the next task its worker would
/// run (in the LIFO slot, as right after a spawn), runs it now (see `WorkerLocal::run_inline`).
pub(crate) fn run_inline_if_next(task: &Arc<Task>) {
    if context::current_task().is_null() {
        return;
    }
    let worker = context::current_worker();
    // SAFETY: inside a green thread WORKER was set by the `worker_main` that resumed this fiber
    // (and is re-read here, never cached across a suspension), so it points at that live loop;
    // the nested run below returns on this same thread before the borrow ends.
    let Some(worker) = (unsafe { worker.as_ref() }) else {
        return;
    };
    let next = worker.lifo.take();
    match next {
        Some(next) if Arc::ptr_eq(&next, task) => worker.run_inline(next),
        other => worker.lifo.set(other),
    }
}

/// Counts a task body that returned or panicked (called on its fiber, i.e. on a worker).
pub(crate) fn note_completed() {
    let worker = context::current_worker();
    // SAFETY: task bodies run on a worker thread; its `worker_main` set WORKER to its own
    // `WorkerLocal` before resuming any fiber and clears it only after the loop ends, so a
    // non-null pointer here is that live worker loop.
    if let Some(worker) = unsafe { worker.as_ref() } {
        bump(&worker.counters().completed, 1);
    }
}

/// The body of a worker thread: run tasks until shutdown, then drop what is still queued here.
pub(super) fn worker_main(shared: Arc<Shared>, index: usize, queue: Worker<Arc<Task>>) {
    let local = WorkerLocal {
        index,
        shared,
        queue,
        lifo: Cell::new(None),
        lifo_streak: Cell::new(0),
        tick: Cell::new(0),
        task_ids: Cell::new((0, 0)),
        check_injector_first: Cell::new(false),
        rng: Cell::new(0x9E37_79B9 ^ (index as u32).wrapping_mul(0x85EB_CA6B) | 1),
        budget: Cell::new(0),
        task_epoch: Cell::new(0),
        defer_notify: Cell::new(false),
    };
    context::set_current_worker(&local);
    while !local.shared.is_shutdown() {
        match local.next_task() {
            Some(task) => local.run_task(task),
            None => local.idle(),
        }
    }
    context::set_current_worker(ptr::null());
    // Queued tasks are dropped here, on their worker (unwinding their fibers).
    drop(local.lifo.take());
    while local.queue.pop().is_some() {}
}

/// True if the calling green thread has used up its budget or has run for a preemption interval
/// since it was last resumed: a good moment to call [`yield_now`](crate::yield_now). Costs a
/// thread-local read and two loads. Always false outside green threads.
pub fn should_yield() -> bool {
    let task = context::current_task();
    if task.is_null() {
        return false;
    }
    let worker = context::current_worker();
    // SAFETY: inside a green thread WORKER was set by the `worker_main` that resumed this fiber
    // (and is re-read here, never cached across a suspension), so it points at that live loop.
    unsafe { worker.as_ref() }.is_some_and(WorkerLocal::should_yield)
}

/// Spends `units` of the calling green thread's budget (refilled each time it is resumed).
pub fn consume_budget(units: u32) {
    if context::current_task().is_null() {
        return;
    }
    let worker = context::current_worker();
    // SAFETY: as in `should_yield`: inside a green thread WORKER is the live worker loop that
    // resumed this fiber.
    if let Some(worker) = unsafe { worker.as_ref() } {
        worker.consume_budget(units);
    }
}

/// Yields if [`should_yield`] says so: the cooperative preemption point for long loops.
pub fn yield_if_needed() {
    if should_yield() {
        crate::yield_now();
    }
}
