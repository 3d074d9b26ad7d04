//! [`Builder`]: a runtime's configuration, its validation, and starting the threads.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use crossbeam_deque::{Injector, Worker};
use crossbeam_utils::CachePadded;

use super::handle::{Handle, Runtime};
use super::idle::Idle;
use super::metrics::Counters;
use super::worker::worker_main;
use super::{Shared, shutdown};
use crate::driver;
use crate::fiber::{PoolConfig, StackPool};
use crate::preempt::Ticker;
use crate::task::{Task, TaskRegistry};
use crate::timer::Timers;

/// Configures and builds a [`Runtime`].
///
/// ```
/// use std::time::Duration;
///
/// let rt = weft_sched::Builder::new()
///     .workers(2)
///     .stack_size(512 * 1024)
///     .preempt_interval(Some(Duration::from_millis(5)))
///     .build()
///     .unwrap();
/// assert_eq!(rt.handle().workers(), 2);
/// ```
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
    /// The default configuration: one worker per available core, 256 KiB stacks, a 10 ms
    /// preemption ticker.
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

    /// Rejects configurations no runtime can be built from, before any thread is started.
    fn validate(&self) -> io::Result<()> {
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
        Ok(())
    }

    /// Starts the worker threads (and the ticker thread, unless disabled).
    ///
    /// # Errors
    /// `InvalidInput` for zero workers or a zero preemption interval; otherwise whatever
    /// creating the reactor or a thread reported (the threads already started are stopped).
    pub fn build(self) -> io::Result<Runtime> {
        self.validate()?;
        let n = self.workers;
        let timers = Timers::new(self.timer_coalescing);
        // Read after the timer base was taken, so timerfd deadlines are never early.
        let monotonic_base = driver::monotonic_now_ns();
        let (driver, io, driver_waker) = driver::new_reactor(monotonic_base)?;
        let locals: Vec<Worker<Arc<Task>>> = (0..n).map(|_| Worker::new_fifo()).collect();
        let shared = Arc::new(Shared {
            injector: Injector::new(),
            stealers: locals.iter().map(Worker::stealer).collect(),
            idle: Idle::new(n),
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
                let all_asleep = move || idle_shared.upgrade().is_some_and(|s| s.idle.all_asleep());
                let started = Ticker::start_pausable(interval, all_asleep, move || {
                    if let Some(shared) = ticker_shared.upgrade() {
                        shared
                            .preempt_epoch
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        Ok(Runtime::from_parts(
            Handle::from_shared(shared),
            threads,
            ticker,
        ))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let builder = Builder::default();
        assert!(builder.workers >= 1);
        assert_eq!(builder.stack_size, crate::DEFAULT_STACK_SIZE);
        assert_eq!(builder.preempt_interval, Some(Duration::from_millis(10)));
        builder.validate().unwrap();
    }

    #[test]
    fn zero_workers_and_a_zero_interval_are_rejected_before_anything_starts() {
        let err = Builder::new().workers(0).validate().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("at least one worker"), "{err}");
        let err = Builder::new()
            .preempt_interval(Some(Duration::ZERO))
            .validate()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("preemption interval"), "{err}");
        // `build` reports the same errors.
        assert!(Builder::new().workers(0).build().is_err());
    }

    #[test]
    fn one_worker_and_no_ticker_are_valid() {
        Builder::new()
            .workers(1)
            .preempt_interval(None)
            .validate()
            .unwrap();
    }

    #[test]
    fn setters_record_their_values() {
        let builder = Builder::new()
            .workers(3)
            .stack_size(1 << 20)
            .max_cached_stacks(7)
            .timer_coalescing(Duration::from_micros(10))
            .budget(5)
            .thread_name("pool")
            .on_tick(|| {})
            .on_tick(|| {});
        assert_eq!(builder.workers, 3);
        assert_eq!(builder.stack_size, 1 << 20);
        assert_eq!(builder.max_cached_stacks, 7);
        assert_eq!(builder.timer_coalescing, Duration::from_micros(10));
        assert_eq!(builder.budget, 5);
        assert_eq!(builder.thread_name, "pool");
        assert_eq!(builder.tick_hooks.len(), 2);
    }

    #[test]
    fn worker_threads_carry_the_name_prefix() {
        let rt = Builder::new()
            .workers(1)
            .thread_name("named")
            .preempt_interval(None)
            .build()
            .unwrap();
        let name = rt
            .spawn(|| std::thread::current().name().map(str::to_owned))
            .join()
            .unwrap();
        assert_eq!(name.as_deref(), Some("named-0"));
    }
}
