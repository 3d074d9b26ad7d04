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

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::Duration;

use crossbeam_deque::{Injector, Steal, Stealer, Worker};
use crossbeam_utils::CachePadded;

use crate::context;
use crate::driver::{self, Driver, IoRegistry};
use crate::fiber::{PoolConfig, StackPool};
use crate::preempt::{Ticker, TickerState};
use crate::task::{self, JoinHandle, Suspend, Task, TaskRegistry};
use crate::timer::Timers;

/// How many times a worker runs a task from its LIFO slot in a row before taking the next one
/// from its queue instead (so two tasks waking each other cannot starve the rest).
const MAX_LIFO_STREAK: u8 = 3;
/// Every this many scheduling decisions a worker checks timers and (non-blockingly) the reactor.
const MAINTENANCE_INTERVAL: u32 = 61;
/// Every this many scheduling decisions a worker takes from the injector first (fairness).
const INJECTOR_INTERVAL: u32 = 31;
/// Rounds of steal attempts before a worker parks; between them it spins this many pause
/// instructions per round (about a microsecond in all): enough to catch work handed over by a
/// worker that is about to wake this one, far too little to burn a core.
const SPIN_ROUNDS: u32 = 2;
const SPIN_PAUSES: u32 = 32;

static NEXT_TASK_ID: AtomicU64 = AtomicU64::new(1);
const TASK_ID_BLOCK: u64 = 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Configures and builds a [`Runtime`].
pub struct Builder {
    workers: usize,
    stack_size: usize,
    max_cached_stacks: usize,
    timer_coalescing: Duration,
    preempt_interval: Option<Duration>,
    budget: u32,
    tick_hooks: Vec<Box<dyn Fn() + Send + Sync>>,
    thread_name: String,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    pub fn new() -> Builder {
        Builder {
            workers: thread::available_parallelism().map_or(1, |n| n.get()),
            stack_size: crate::DEFAULT_STACK_SIZE,
            max_cached_stacks: 16384,
            timer_coalescing: Duration::from_micros(250),
            preempt_interval: Some(Duration::from_millis(10)),
            budget: 128,
            tick_hooks: Vec::new(),
            thread_name: "weft-worker".to_string(),
        }
    }

    /// Number of worker OS threads (at least 1). Default: the available parallelism.
    pub fn workers(mut self, workers: usize) -> Builder {
        self.workers = workers;
        self
    }

    /// Usable stack size of each green thread. Default: `weft_fiber::Stack::DEFAULT_SIZE`.
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.stack_size = bytes;
        self
    }

    /// How many stacks of finished green threads are kept mapped for reuse. Default: 16384.
    pub fn max_cached_stacks(mut self, stacks: usize) -> Builder {
        self.max_cached_stacks = stacks;
        self
    }

    /// An idle worker wakes up for timers at most once per this window: a timer due sooner
    /// after the previous firing waits for the window to end, so a burst of deadlines spread
    /// over a few milliseconds costs a few wake-ups, not one each. An isolated timer fires on
    /// time (to the microsecond on Linux); sleeps are never shortened. Default: 250 µs.
    pub fn timer_coalescing(mut self, window: Duration) -> Builder {
        self.timer_coalescing = window;
        self
    }

    /// Period of the preemption ticker that makes [`should_yield`](crate::should_yield) turn true
    /// for a task that has run that long, and calls the [`on_tick`](Builder::on_tick) hooks.
    /// `None` disables the ticker thread. Default: 10 ms.
    pub fn preempt_interval(mut self, interval: Option<Duration>) -> Builder {
        self.preempt_interval = interval;
        self
    }

    /// Budget units a task gets each time it is resumed (see [`consume_budget`](crate::consume_budget)).
    /// Default: 128.
    pub fn budget(mut self, units: u32) -> Builder {
        self.budget = units;
        self
    }

    /// Called on the ticker thread every preemption interval (e.g. to advance a wasmtime epoch).
    pub fn on_tick(mut self, hook: impl Fn() + Send + Sync + 'static) -> Builder {
        self.tick_hooks.push(Box::new(hook));
        self
    }

    /// Name prefix of the worker threads. Default: `weft-worker`.
    pub fn thread_name(mut self, name: impl Into<String>) -> Builder {
        self.thread_name = name.into();
        self
    }

    pub fn build(self) -> io::Result<Runtime> {
        if self.workers == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a weft-sched runtime needs at least one worker",
            ));
        }
        if self.preempt_interval.is_some_and(|d| d.is_zero()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the preemption interval must be positive",
            ));
        }
        let n = self.workers;
        let timers = Timers::new(self.timer_coalescing);
        // Read after the timer base was taken, so timerfd deadlines are never early.
        let monotonic_base = driver::monotonic_now_ns();
        let (driver, io, driver_waker) = driver::new_reactor(monotonic_base)?;
        let locals: Vec<Worker<Arc<Task>>> = (0..n).map(|_| Worker::new_fifo()).collect();
        let shared = Arc::new(Shared {
            injector: Injector::new(),
            stealers: locals.iter().map(Worker::stealer).collect(),
            parkers: (0..n).map(|_| Parker::default()).collect(),
            sleepers: Mutex::new(Vec::with_capacity(n)),
            num_sleeping: AtomicUsize::new(0),
            num_searching: AtomicUsize::new(0),
            driver: Mutex::new(driver),
            driver_waker,
            io,
            timers,
            tasks: TaskRegistry::new(n),
            pool: StackPool::new(PoolConfig {
                stack_size: self.stack_size,
                max_cached: self.max_cached_stacks,
                ..PoolConfig::default()
            }),
            shutdown: AtomicBool::new(false),
            counters: (0..=n)
                .map(|_| CachePadded::new(Counters::default()))
                .collect(),
            preempt_epoch: AtomicU64::new(0),
            ticker: OnceLock::new(),
            budget: self.budget,
            num_workers: n,
        });
        let mut threads = Vec::with_capacity(n);
        for (index, queue) in locals.into_iter().enumerate() {
            let worker_shared = shared.clone();
            let spawned = thread::Builder::new()
                .name(format!("{}-{index}", self.thread_name))
                .spawn(move || worker_main(worker_shared, index, queue));
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    shutdown(&shared, threads);
                    return Err(e);
                }
            }
        }
        let ticker = match self.preempt_interval {
            None => None,
            Some(interval) => {
                let ticker_shared = Arc::downgrade(&shared);
                let hooks = self.tick_hooks;
                let idle_shared = Arc::downgrade(&shared);
                // With every worker asleep there is nothing to preempt: the ticker pauses
                // instead of waking up the machine every interval.
                let all_asleep = move || {
                    idle_shared
                        .upgrade()
                        .is_some_and(|s| s.num_sleeping.load(Ordering::SeqCst) == s.num_workers)
                };
                let started = Ticker::start_pausable(interval, all_asleep, move || {
                    if let Some(shared) = ticker_shared.upgrade() {
                        shared.preempt_epoch.fetch_add(1, Ordering::Relaxed);
                        // Backstop: a timer overdue while no idle worker watches the driver
                        // (the workers are all busy) gets a sleeping worker to take over.
                        if shared.timers.any_due() {
                            shared.ensure_driver_watch();
                        }
                    }
                    for hook in &hooks {
                        hook();
                    }
                });
                match started {
                    Ok(ticker) => {
                        let _ = shared.ticker.set(ticker.state().clone());
                        Some(ticker)
                    }
                    Err(e) => {
                        shutdown(&shared, threads);
                        return Err(e);
                    }
                }
            }
        };
        Ok(Runtime {
            handle: Handle { shared },
            threads,
            ticker,
        })
    }
}

/// Per-worker event counters (never reset), readable through [`Runtime::metrics`].
#[derive(Default)]
struct Counters {
    polls: AtomicU64,
    completed: AtomicU64,
    spawned: AtomicU64,
    parks: AtomicU64,
    idle_rounds: AtomicU64,
    steals: AtomicU64,
    timers_fired: AtomicU64,
    io_events: AtomicU64,
    stale_entries: AtomicU64,
}

/// Adds to a counter that only its own worker writes (a plain load and store, no locked
/// read-modify-write on the hot path).
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Ordering::Relaxed) + by, Ordering::Relaxed);
}

/// A snapshot of what the runtime has done since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    pub workers: usize,
    /// Tasks spawned.
    pub spawned: u64,
    /// Tasks whose body returned or panicked.
    pub completed: u64,
    /// Times a task's fiber was resumed.
    pub polls: u64,
    /// Times a worker blocked in the OS (condition variable or epoll) because it had no work.
    pub parks: u64,
    /// Times a worker ran out of local work and went looking (each is a bounded search).
    pub idle_rounds: u64,
    /// Successful steals from the injector or another worker.
    pub steals: u64,
    /// Timers that fired (cancelled timers never do).
    pub timers_fired: u64,
    /// I/O readiness events delivered.
    pub io_events: u64,
    /// Queue entries found not to be runnable (always 0: no task is ever queued twice).
    pub stale_entries: u64,
    /// Timers currently pending.
    pub pending_timers: usize,
}

#[derive(Default)]
struct Parker {
    token: AtomicBool,
    in_driver: AtomicBool,
    lock: Mutex<()>,
    condvar: Condvar,
}

impl Parker {
    fn park(&self) {
        let mut guard = lock(&self.lock);
        while !self.token.swap(false, Ordering::SeqCst) {
            guard = self.condvar.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn unpark(&self, driver_waker: &mio::Waker) {
        self.token.store(true, Ordering::SeqCst);
        if self.in_driver.load(Ordering::SeqCst) {
            let _ = driver_waker.wake();
        }
        drop(lock(&self.lock));
        self.condvar.notify_one();
    }
}

pub(crate) struct Shared {
    injector: Injector<Arc<Task>>,
    stealers: Box<[Stealer<Arc<Task>>]>,
    parkers: Box<[Parker]>,
    sleepers: Mutex<Vec<usize>>,
    num_sleeping: AtomicUsize,
    num_searching: AtomicUsize,
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
    fn this_worker(self: &Arc<Self>) -> Option<&WorkerLocal> {
        let worker = context::current_worker();
        // SAFETY: a non-null WORKER points at this thread's live worker loop, which outlives the
        // returned borrow (callers use it immediately and never across a fiber suspension).
        let worker = unsafe { worker.as_ref()? };
        ptr::eq(Arc::as_ptr(&worker.shared), Arc::as_ptr(self)).then_some(worker)
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
        let shard = worker.map_or(self.num_workers, |w| w.index);
        let (task, handle) = task::new_task(self, id, shard, stack, body);
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
            // Dropping the unstarted task drops its closure, which reports "cancelled".
            drop(task);
            return Ok(handle);
        }
        task.wake_task();
        Ok(handle)
    }

    /// Wakes one sleeping worker if nobody is already looking for work.
    fn notify_if_idle(&self) {
        fence(Ordering::SeqCst);
        if self.num_searching.load(Ordering::SeqCst) == 0
            && self.num_sleeping.load(Ordering::SeqCst) > 0
        {
            self.notify_one();
        }
    }

    fn notify_one(&self) {
        let index = {
            let mut sleepers = lock(&self.sleepers);
            if sleepers.is_empty() {
                return;
            }
            // Prefer a worker on its condition variable: kicking the driver out of epoll would
            // make it hand the driver role over again.
            let pick = sleepers
                .iter()
                .rposition(|&i| !self.parkers[i].in_driver.load(Ordering::Relaxed))
                .unwrap_or(sleepers.len() - 1);
            let index = sleepers.swap_remove(pick);
            self.num_sleeping.fetch_sub(1, Ordering::SeqCst);
            index
        };
        self.parkers[index].unpark(&self.driver_waker);
    }

    /// A new timer became the earliest: an idle worker blocked in the driver must recompute its
    /// deadline, and if none is, a sleeping worker must take the driver role (the busy worker
    /// that set the timer may not park for a long time).
    pub(crate) fn timer_moved_earlier(&self) {
        fence(Ordering::SeqCst);
        if self.timers.driver_parked.load(Ordering::SeqCst) {
            let _ = self.driver_waker.wake();
        } else {
            self.ensure_driver_watch();
        }
    }

    /// If timers or sockets are pending but no idle worker watches them from the driver (idle
    /// workers other than the driver sleep on condition variables), wake one so it takes the
    /// driver role; otherwise they would wait until a busy worker's next maintenance.
    pub(crate) fn ensure_driver_watch(&self) {
        if self.num_sleeping.load(Ordering::SeqCst) > 0
            && !self.timers.driver_parked.load(Ordering::SeqCst)
            && (self.timers.wake_deadline().is_some() || self.io.has_sources())
        {
            self.notify_one();
        }
    }

    pub(crate) fn metrics(&self) -> Metrics {
        let mut m = Metrics {
            workers: self.num_workers,
            pending_timers: self.timers.pending(),
            ..Metrics::default()
        };
        for c in self.counters.iter() {
            let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
            m.spawned += get(&c.spawned);
            m.completed += get(&c.completed);
            m.polls += get(&c.polls);
            m.parks += get(&c.parks);
            m.idle_rounds += get(&c.idle_rounds);
            m.steals += get(&c.steals);
            m.timers_fired += get(&c.timers_fired);
            m.io_events += get(&c.io_events);
            m.stale_entries += get(&c.stale_entries);
        }
        m
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
            let live = self.tasks.snapshot();
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

/// The state of one worker thread; also reached (through a thread-local pointer) by green
/// threads running on it, to queue the tasks they spawn or wake.
pub(crate) struct WorkerLocal {
    index: usize,
    shared: Arc<Shared>,
    queue: Worker<Arc<Task>>,
    lifo: Cell<Option<Arc<Task>>>,
    lifo_streak: Cell<u8>,
    tick: Cell<u32>,
    task_ids: Cell<(u64, u64)>,
    check_injector_first: Cell<bool>,
    rng: Cell<u32>,
    budget: Cell<u32>,
    task_epoch: Cell<u64>,
}

impl WorkerLocal {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn counters(&self) -> &Counters {
        &self.shared.counters[self.index]
    }

    /// Task ids come from the global counter in blocks, so spawning on a worker touches no
    /// shared cache line.
    fn next_task_id(&self) -> u64 {
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

    fn push_lifo(&self, task: Arc<Task>) {
        if let Some(previous) = self.lifo.replace(Some(task)) {
            self.queue.push(previous);
            self.shared.notify_if_idle();
        }
    }

    fn push_queue(&self, task: Arc<Task>) {
        self.queue.push(task);
        self.shared.notify_if_idle();
    }

    fn has_local_work(&self) -> bool {
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

    fn steal(&self) -> Option<Arc<Task>> {
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
        bump(
            &self.counters().timers_fired,
            shared.timers.fire_due() as u64,
        );
        if shared.io.has_sources()
            && let Ok(mut driver) = shared.driver.try_lock()
        {
            let now = shared.timers.now();
            driver.park(now, Some(now));
            let events = driver.dispatch(&shared.io);
            bump(&self.counters().io_events, events as u64);
        }
        self.ensure_driver_watch();
    }

    fn ensure_driver_watch(&self) {
        self.shared.ensure_driver_watch();
    }

    fn run_task(&self, task: Arc<Task>) {
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

    fn idle(&self) {
        let shared = &self.shared;
        bump(&self.counters().idle_rounds, 1);
        shared.num_searching.fetch_add(1, Ordering::SeqCst);
        for round in 0..SPIN_ROUNDS {
            if let Some(task) = self.steal() {
                self.stop_searching();
                self.run_task(task);
                return;
            }
            let fired = shared.timers.fire_due();
            if fired > 0 {
                bump(&self.counters().timers_fired, fired as u64);
                self.stop_searching();
                return;
            }
            if shared.is_shutdown() {
                shared.num_searching.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            if round + 1 < SPIN_ROUNDS {
                for _ in 0..SPIN_PAUSES {
                    std::hint::spin_loop();
                }
            }
        }
        self.park();
    }

    /// Leaves the searching state having found work; the last searcher to find work wakes
    /// another worker if there is more of it, so parallelism ramps up.
    fn stop_searching(&self) {
        if self.shared.num_searching.fetch_sub(1, Ordering::SeqCst) == 1 && !self.queue.is_empty() {
            self.shared.notify_if_idle();
        }
    }

    fn has_work(&self) -> bool {
        let shared = &self.shared;
        self.has_local_work()
            || !shared.injector.is_empty()
            || shared.stealers.iter().any(|s| !s.is_empty())
            || shared.timers.any_due()
            || shared.is_shutdown()
    }

    fn register_sleeper(&self) {
        let mut sleepers = lock(&self.shared.sleepers);
        sleepers.push(self.index);
        self.shared.num_sleeping.fetch_add(1, Ordering::SeqCst);
    }

    fn unregister_sleeper(&self) {
        let mut sleepers = lock(&self.shared.sleepers);
        if let Some(pos) = sleepers.iter().position(|&i| i == self.index) {
            sleepers.swap_remove(pos);
            self.shared.num_sleeping.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn park(&self) {
        let shared = &self.shared;
        self.register_sleeper();
        shared.num_searching.fetch_sub(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.has_work() {
            self.unregister_sleeper();
        } else {
            bump(&self.counters().parks, 1);
            self.block();
        }
        // The ticker may have paused while this worker counted as asleep.
        if let Some(ticker) = shared.ticker.get() {
            ticker.resume_if_paused();
        }
    }

    fn block(&self) {
        let shared = &self.shared;
        let parker = &shared.parkers[self.index];
        let Ok(mut driver) = shared.driver.try_lock() else {
            parker.park();
            self.unregister_sleeper();
            return;
        };
        parker.in_driver.store(true, Ordering::SeqCst);
        shared.timers.driver_parked.store(true, Ordering::SeqCst);
        let polled = !parker.token.swap(false, Ordering::SeqCst) && {
            let now = shared.timers.now();
            driver.park(now, shared.timers.wake_deadline());
            true
        };
        shared.timers.driver_parked.store(false, Ordering::SeqCst);
        parker.in_driver.store(false, Ordering::SeqCst);
        parker.token.store(false, Ordering::SeqCst);
        // Unregister before waking tasks, so the wake-ups below notify other workers, not us.
        self.unregister_sleeper();
        if polled {
            let events = driver.dispatch(&shared.io);
            bump(&self.counters().io_events, events as u64);
        }
        drop(driver);
        let fired = shared.timers.fire_due();
        bump(&self.counters().timers_fired, fired as u64);
        // Hand the driver role over: this worker is about to run tasks, and pending timers or
        // sockets need an idle worker watching them.
        // (Only with more than one task here: another worker woken now also finds work to steal.
        // A single long task is covered by the ticker, which checks for overdue timers.)
        if !self.queue.is_empty() {
            self.ensure_driver_watch();
        }
    }

    // Preemption state, read by `should_yield` on the green thread running on this worker.
    pub(crate) fn should_yield(&self) -> bool {
        self.budget.get() == 0
            || self.shared.preempt_epoch.load(Ordering::Relaxed) != self.task_epoch.get()
    }

    pub(crate) fn consume_budget(&self, units: u32) {
        self.budget.set(self.budget.get().saturating_sub(units));
    }
}

/// Counts a task body that returned or panicked (called on its fiber, i.e. on a worker).
pub(crate) fn note_completed() {
    let worker = context::current_worker();
    // SAFETY: task bodies run on a worker thread, whose worker loop outlives them.
    if let Some(worker) = unsafe { worker.as_ref() } {
        bump(&worker.counters().completed, 1);
    }
}

fn worker_main(shared: Arc<Shared>, index: usize, queue: Worker<Arc<Task>>) {
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

fn shutdown(shared: &Arc<Shared>, threads: Vec<thread::JoinHandle<()>>) {
    shared.shutdown.store(true, Ordering::SeqCst);
    for parker in shared.parkers.iter() {
        parker.unpark(&shared.driver_waker);
    }
    let _ = shared.driver_waker.wake();
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

    pub fn builder() -> Builder {
        Builder::new()
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

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

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

/// Returned by [`Runtime::enter`].
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
    /// The runtime of the calling green thread, worker, or `Runtime::enter` scope.
    ///
    /// # Panics
    /// Outside a runtime.
    pub fn current() -> Handle {
        Handle::try_current()
            .expect("no weft-sched runtime here: call from a green thread or inside Runtime::enter")
    }

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
        // SAFETY: a non-null current task is the live task running this code; borrowing its
        // runtime (instead of cloning the `Arc`) ends before this green thread can suspend.
        let shared = unsafe { (*task).shared() };
        return shared
            .spawn(body)
            .unwrap_or_else(|e| panic!("weft-sched: cannot map a stack for a green thread: {e}"));
    }
    Handle::current().spawn(body)
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
    // SAFETY: inside a green thread the worker pointer is this thread's live worker loop.
    unsafe { worker.as_ref() }.is_some_and(WorkerLocal::should_yield)
}

/// Spends `units` of the calling green thread's budget (refilled each time it is resumed).
pub fn consume_budget(units: u32) {
    if context::current_task().is_null() {
        return;
    }
    let worker = context::current_worker();
    // SAFETY: as in `should_yield`.
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
