//! Idle workers: searching for work, going to sleep, and being woken, without losing a wake-up.
//!
//! # State
//!
//! * [`Idle::num_searching`]: workers that ran out of local work and are stealing. A producer
//!   leaves waking to them: a searcher re-checks every queue before it sleeps.
//! * [`Idle::sleepers`] (a mutex-protected list) and its mirror [`Idle::num_sleeping`], readable
//!   without the lock: workers that announced they are about to block, or are blocked. A
//!   sleeper is taken off the list by whoever wakes it (`notify_one`), or by itself when it
//!   wakes up or finds work before blocking (`cancel_park`).
//! * Per worker, a [`Parker`]: `token` (a wake-up is pending) and `in_driver` (this worker blocks
//!   in the reactor's `epoll_wait` rather than on its condition variable).
//! * In [`Timers`](crate::timer::Timers): `earliest` (the nearest deadline, mirrored from the
//!   heap) and `driver_parked` (a worker blocks in the driver with a deadline read from
//!   `earliest`).
//!
//! # Who does what
//!
//! * **Producer** (spawn, wake, a worker queueing a task others can steal): pushes the task,
//!   then [`Idle::notify_if_idle`]: fence **F1**, read `num_searching` and `num_sleeping`, and
//!   wake one sleeper if nobody searches and someone sleeps. A worker firing a batch of timers
//!   pushes every task they wake first and calls `notify_if_idle` once after the last push
//!   (`WorkerLocal::fire_timers`): the same order, push before F1, for the whole batch.
//! * **Worker running dry** (`WorkerLocal::idle`): [`Idle::start_searching`], steal for a bounded
//!   while; if nothing turns up, [`Idle::prepare_park`]: join `sleepers`, leave `num_searching`,
//!   fence **F2**; only then re-check every queue, the timers and shutdown (`has_work`). Work
//!   found: [`Idle::cancel_park`]. None: block, in the driver if its lock is free, else on the
//!   condition variable.
//! * **Searcher that found work** ([`Idle::finish_searching`]): leave `num_searching`; if it
//!   was the last searcher, fence **F7**, then look at every queue and, if work is left there,
//!   `notify_if_idle`.
//! * **Blocking in the driver**: [`Parker::enter_driver`] (`in_driver = true`, fence **F6**, take
//!   the token: if there was one, do not poll), then `Timers::enter_driver`
//!   (`driver_parked = true`, fence **F4**, read `earliest` for the epoll deadline).
//! * **Blocking on the condition variable**: [`Parker::park`] takes the token under the parker's
//!   mutex, waiting until there is one.
//! * **Waking a sleeper** ([`Idle::notify_one`]): take one off `sleepers`, then
//!   [`Parker::unpark`]: `token = true`, fence **F5**, read `in_driver` and if set kick the
//!   reactor (`mio::Waker`, an eventfd), then lock and unlock the mutex and notify the condition
//!   variable.
//! * **A new earliest timer** (`Shared::timer_moved_earlier`): `Timers::insert` publishes
//!   `earliest`, then `Timers::driver_needs_kick`: fence **F3**, read `driver_parked`; kick the
//!   driver if set, else wake a sleeper to take the driver role (`ensure_driver_watch`).
//!
//! # Why no wake-up is lost
//!
//! Each fenced pair is the store-buffering (Dekker) pattern: each side writes its own flag,
//! issues a `SeqCst` fence, then reads the other side's flag. `SeqCst` fences are totally
//! ordered; whichever of the two fences comes first, the read after the later one sees the write
//! before the earlier one. So at least one side always sees the other:
//!
//! * **F1 ↔ F2**: the producer sees the sleeper (and wakes one), or the parking worker's re-check
//!   sees the task (and does not block). A searcher the producer relied on re-checks after F2
//!   too, when it gives up.
//! * **F1 ↔ F7**: if that searcher finds other work instead, and is the last searcher, either the
//!   producer sees it gone (and wakes a sleeper), or its look at the queues after F7 sees the
//!   task and it wakes a sleeper. It cannot count on reaching the task through its own loop: the
//!   task it found may keep its worker for good (a green thread that never yields).
//! * **F3 ↔ F4**: the timer's inserter sees `driver_parked` (and kicks the eventfd; a kick is
//!   sticky, so an `epoll_wait` that starts after it returns at once), or the driver's deadline
//!   already includes the new timer.
//! * **F5 ↔ F6**: the waker sees `in_driver` (and kicks), or the driver takes the token and does
//!   not poll.
//! * The condition-variable path needs no fence: `park` reads the token under the mutex and
//!   `unpark` takes that mutex after setting it, so `park` either sees the token or is already
//!   waiting when the notification comes.
//!
//! Both sides of every pair fence explicitly. For F1 ↔ F2 that is necessary: a queue push is a
//! release store, not `SeqCst`. For the two driver pairs, `SeqCst` loads and stores alone would
//! also do in the C++ model, but the fences make the argument the same everywhere, keep one
//! weakened access from silently breaking a pair, and let loom (which models `SeqCst` accesses
//! as acquire/release) check it as written. The model checks at the end of this file and of
//! `timer.rs` each fail when one of their fences is weakened (F1 ↔ F7 also fails without the
//! searcher's last look).
//!
//! Extra wake-ups are harmless: a worker woken after it already found work keeps the token, its
//! next `park` returns at once, and it searches again before sleeping.
//!
//! Handing the driver role over (`ensure_driver_watch`) is a latency measure, not part of this
//! argument: a parking worker that finds the driver lock taken sleeps on its condition variable,
//! and the lock's holder either blocks in the driver itself or is a busy worker whose periodic
//! maintenance fires timers and polls sockets; the ticker thread wakes a sleeper to take over
//! when a timer is overdue.

use std::sync::atomic::Ordering;

use super::Shared;
use super::metrics::bump;
use super::worker::WorkerLocal;
use crate::sync::{AtomicBool, AtomicUsize, Condvar, Mutex, fence, lock};

/// Rounds of steal attempts before a worker parks; between them it spins this many pause
/// instructions per round (about a microsecond in all): enough to catch work handed over by a
/// worker that is about to wake this one, far too little to burn a core.
const SPIN_ROUNDS: u32 = 2;
const SPIN_PAUSES: u32 = 32;

/// Where one worker sleeps: a wake-up token plus the two ways to block (condition variable or
/// the reactor).
pub(crate) struct Parker {
    /// A wake-up is pending; consumed by the worker when it blocks or leaves the driver.
    token: AtomicBool,
    /// The worker blocks in the reactor: waking it takes a kick of the reactor's waker.
    in_driver: AtomicBool,
    lock: Mutex<()>,
    condvar: Condvar,
}

impl Parker {
    pub(crate) fn new() -> Parker {
        Parker {
            token: AtomicBool::new(false),
            in_driver: AtomicBool::new(false),
            lock: Mutex::new(()),
            condvar: Condvar::new(),
        }
    }

    /// Blocks on the condition variable until a token is available, and consumes it.
    pub(crate) fn park(&self) {
        let mut guard = lock(&self.lock);
        // Read under the mutex that `unpark` takes after setting the token: no fence needed.
        while !self.take_token() {
            guard = self.condvar.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Consumes the token if there is one.
    ///
    /// Every write of `token` is a read-modify-write (this compare-exchange, which writes
    /// nothing when it fails, and the swap in `unpark`). Loom orders a plain store only after
    /// the stores its thread has seen, so a later read-modify-write could still read an older
    /// value than a concurrent store: a false alarm the C++ model rules out, avoided at no cost
    /// (a `SeqCst` store is an `xchg` on x86 anyway).
    fn take_token(&self) -> bool {
        self.token
            .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Leaves a token and wakes the worker wherever it blocks; `kick_driver` interrupts the
    /// reactor's poll.
    pub(crate) fn unpark(&self, kick_driver: impl FnOnce()) {
        self.token.swap(true, Ordering::SeqCst);
        // F5, pairs with F6 in `enter_driver`: either this load sees `in_driver` and we kick the
        // poll, or the worker's token swap after F6 sees our token and it does not poll.
        fence(Ordering::SeqCst);
        if self.in_driver.load(Ordering::SeqCst) {
            kick_driver();
        }
        drop(lock(&self.lock));
        self.condvar.notify_one();
    }

    /// The worker is about to block in the reactor. Returns true if a token was pending (it is
    /// consumed): then the worker must not block.
    pub(crate) fn enter_driver(&self) -> bool {
        self.in_driver.store(true, Ordering::SeqCst);
        // F6, pairs with F5 in `unpark`: either the swap below sees the unparker's token, or
        // its load of `in_driver` after F5 sees ours and it kicks the poll.
        fence(Ordering::SeqCst);
        self.take_token()
    }

    /// The worker is back from the reactor; a token left meanwhile is consumed by this wake-up
    /// (the worker looks for work before it can block again).
    pub(crate) fn leave_driver(&self) {
        self.in_driver.store(false, Ordering::SeqCst);
        self.take_token();
    }

    fn is_in_driver(&self) -> bool {
        self.in_driver.load(Ordering::Relaxed)
    }
}

/// The idle bookkeeping of a runtime: who searches, who sleeps, and how to wake them.
pub(crate) struct Idle {
    parkers: Box<[Parker]>,
    /// Indexes of the workers that are about to block or blocked; see the module doc.
    sleepers: Mutex<Vec<usize>>,
    /// `sleepers.len()`, readable without the lock (changed only under it).
    num_sleeping: AtomicUsize,
    /// Workers between `start_searching` and `stop_searching`/`prepare_park`.
    num_searching: AtomicUsize,
}

impl Idle {
    pub(crate) fn new(workers: usize) -> Idle {
        Idle {
            parkers: (0..workers).map(|_| Parker::new()).collect(),
            sleepers: Mutex::new(Vec::with_capacity(workers)),
            num_sleeping: AtomicUsize::new(0),
            num_searching: AtomicUsize::new(0),
        }
    }

    pub(crate) fn parker(&self, worker: usize) -> &Parker {
        &self.parkers[worker]
    }

    pub(crate) fn num_sleeping(&self) -> usize {
        self.num_sleeping.load(Ordering::SeqCst)
    }

    /// Every worker is asleep (or about to be): the preemption ticker may pause.
    pub(crate) fn all_asleep(&self) -> bool {
        self.num_sleeping() == self.parkers.len()
    }

    /// A worker ran out of local work and starts looking elsewhere.
    pub(crate) fn start_searching(&self) {
        self.num_searching.fetch_add(1, Ordering::SeqCst);
    }

    /// A searcher gives up without parking (shutdown); true if it was the last searcher.
    pub(crate) fn stop_searching(&self) -> bool {
        self.num_searching.fetch_sub(1, Ordering::SeqCst) == 1
    }

    /// A searcher found work and goes to run it. If it was the last searcher, producers may have
    /// skipped waking anyone on its account (they saw it searching) while it found something
    /// else, and the task it runs may never give its worker back: so it checks for work it
    /// leaves behind (`more_work`: queued anywhere) and hands that over to a sleeper.
    pub(crate) fn finish_searching(
        &self,
        more_work: impl FnOnce() -> bool,
        kick_driver: impl FnOnce(),
    ) {
        if self.num_searching.fetch_sub(1, Ordering::SeqCst) == 1 {
            // F7, pairs with F1 in `notify_if_idle`: either the producer's load after F1 sees
            // this searcher gone (and wakes a sleeper itself), or `more_work` after this fence
            // sees the task queued before F1.
            fence(Ordering::SeqCst);
            if more_work() {
                self.notify_if_idle(kick_driver);
            }
        }
    }

    /// After queueing work: wakes one sleeping worker if nobody is already looking for work.
    pub(crate) fn notify_if_idle(&self, kick_driver: impl FnOnce()) {
        // F1, pairs with F2 in `prepare_park`: either these loads see a parking worker's
        // registration, or that worker's re-check after F2 sees the work queued before F1.
        fence(Ordering::SeqCst);
        if self.num_searching.load(Ordering::SeqCst) == 0
            && self.num_sleeping.load(Ordering::SeqCst) > 0
        {
            self.notify_one(kick_driver);
        }
    }

    /// Wakes one sleeping worker, preferring one on its condition variable (kicking the driver
    /// out of epoll would make it hand the driver role over again). False if none sleeps.
    pub(crate) fn notify_one(&self, kick_driver: impl FnOnce()) -> bool {
        let index = {
            let mut sleepers = lock(&self.sleepers);
            if sleepers.is_empty() {
                return false;
            }
            let pick = sleepers
                .iter()
                .rposition(|&i| !self.parkers[i].is_in_driver())
                .unwrap_or(sleepers.len() - 1);
            let index = sleepers.swap_remove(pick);
            self.num_sleeping.fetch_sub(1, Ordering::SeqCst);
            index
        };
        self.parkers[index].unpark(kick_driver);
        true
    }

    /// Wakes every worker (shutdown).
    pub(crate) fn unpark_all(&self, kick_driver: impl Fn()) {
        for parker in self.parkers.iter() {
            parker.unpark(&kick_driver);
        }
    }

    /// A searcher found nothing: it joins the sleepers and stops searching. The caller must then
    /// re-check for work (and `cancel_park` if there is some) before it blocks.
    pub(crate) fn prepare_park(&self, worker: usize) {
        {
            let mut sleepers = lock(&self.sleepers);
            sleepers.push(worker);
            self.num_sleeping.fetch_add(1, Ordering::SeqCst);
        }
        self.num_searching.fetch_sub(1, Ordering::SeqCst);
        // F2, pairs with F1 in `notify_if_idle`: either the caller's re-check after this fence
        // sees work queued before F1, or the producer's loads after F1 see this registration
        // and wake a sleeper.
        fence(Ordering::SeqCst);
    }

    /// The worker is awake (it found work, or it was woken): it leaves the sleepers, unless
    /// whoever woke it already took it off. True if it was still listed.
    pub(crate) fn cancel_park(&self, worker: usize) -> bool {
        let mut sleepers = lock(&self.sleepers);
        match sleepers.iter().position(|&i| i == worker) {
            Some(pos) => {
                sleepers.swap_remove(pos);
                self.num_sleeping.fetch_sub(1, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }
}

impl Shared {
    /// Interrupts the worker blocked in the reactor's poll (sticky: a poll that starts after the
    /// kick returns at once).
    pub(crate) fn kick_driver(&self) {
        let _ = self.driver_waker.wake();
    }

    /// Wakes one sleeping worker if nobody is already looking for work (see
    /// [`Idle::notify_if_idle`]).
    pub(crate) fn notify_if_idle(&self) {
        self.idle.notify_if_idle(|| self.kick_driver());
    }

    /// A new timer became the earliest: an idle worker blocked in the driver must recompute its
    /// deadline, and if none is, a sleeping worker must take the driver role (the busy worker
    /// that set the timer may not park for a long time).
    pub(crate) fn timer_moved_earlier(&self) {
        // `driver_needs_kick` holds F3, which pairs with F4 in `Timers::enter_driver`.
        if self.timers.driver_needs_kick() {
            self.kick_driver();
        } else {
            self.ensure_driver_watch();
        }
    }

    /// If timers or sockets are pending but no idle worker watches them from the driver (idle
    /// workers other than the driver sleep on condition variables), wake one so it takes the
    /// driver role; otherwise they would wait until a busy worker's next maintenance.
    pub(crate) fn ensure_driver_watch(&self) {
        if self.idle.num_sleeping() > 0
            && !self.timers.is_driver_parked()
            && (self.timers.wake_deadline().is_some() || self.io.has_sources())
        {
            self.idle.notify_one(|| self.kick_driver());
        }
    }
}

impl WorkerLocal {
    /// The worker found no local work: search (steal) for a bounded while, then park.
    pub(super) fn idle(&self) {
        let shared = &self.shared;
        bump(&self.counters().idle_rounds, 1);
        shared.idle.start_searching();
        for round in 0..SPIN_ROUNDS {
            if let Some(task) = self.steal() {
                self.stop_searching();
                self.run_task(task);
                return;
            }
            let fired = self.fire_timers();
            if fired > 0 {
                bump(&self.counters().timers_fired, fired as u64);
                self.stop_searching();
                return;
            }
            if shared.is_shutdown() {
                shared.idle.stop_searching();
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
    /// another worker if there is more of it anywhere (see `Idle::finish_searching`), so
    /// parallelism ramps up and nothing waits behind the task this worker is about to run.
    fn stop_searching(&self) {
        let shared = &self.shared;
        shared.idle.finish_searching(
            || {
                !self.queue.is_empty()
                    || !shared.injector.is_empty()
                    || shared.stealers.iter().any(|s| !s.is_empty())
            },
            || shared.kick_driver(),
        );
    }

    /// Anything that should keep this worker from blocking: queued tasks anywhere, a due timer,
    /// or shutdown. Read after F2.
    fn has_work(&self) -> bool {
        let shared = &self.shared;
        self.has_local_work()
            || !shared.injector.is_empty()
            || shared.stealers.iter().any(|s| !s.is_empty())
            || shared.timers.any_due()
            || shared.is_shutdown()
    }

    fn park(&self) {
        let shared = &self.shared;
        shared.idle.prepare_park(self.index);
        if self.has_work() {
            shared.idle.cancel_park(self.index);
        } else {
            bump(&self.counters().parks, 1);
            self.block();
        }
        // The ticker may have paused while this worker counted as asleep.
        if let Some(ticker) = shared.ticker.get() {
            ticker.resume_if_paused();
        }
    }

    /// Blocks until woken: in the driver if its lock is free (and then dispatches I/O events and
    /// fires due timers), else on this worker's condition variable.
    fn block(&self) {
        let shared = &self.shared;
        let parker = shared.idle.parker(self.index);
        let Ok(mut driver) = shared.driver.try_lock() else {
            parker.park();
            shared.idle.cancel_park(self.index);
            return;
        };
        let polled = !parker.enter_driver() && {
            let deadline = shared.timers.enter_driver();
            driver.park(shared.timers.now(), deadline);
            true
        };
        shared.timers.leave_driver();
        parker.leave_driver();
        // Unregister before waking tasks, so the wake-ups below notify other workers, not us.
        shared.idle.cancel_park(self.index);
        if polled {
            let events = driver.dispatch(&shared.io);
            bump(&self.counters().io_events, events as u64);
        }
        drop(driver);
        let fired = self.fire_timers();
        bump(&self.counters().timers_fired, fired as u64);
        // Hand the driver role over: this worker is about to run tasks, and pending timers or
        // sockets need an idle worker watching them.
        // (Only with more than one task here: another worker woken now also finds work to steal.
        // A single long task is covered by the ticker, which checks for overdue timers.)
        if !self.queue.is_empty() {
            shared.ensure_driver_watch();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::thread;

    fn counting_kick() -> (Arc<AtomicUsize>, impl Fn() + Clone) {
        let kicks = Arc::new(AtomicUsize::new(0));
        let k = kicks.clone();
        (kicks, move || {
            k.fetch_add(1, Ordering::SeqCst);
        })
    }

    #[test]
    fn parking_and_cancelling_keep_the_count_in_step_with_the_list() {
        let idle = Idle::new(3);
        idle.start_searching();
        idle.start_searching();
        idle.prepare_park(0);
        idle.prepare_park(2);
        assert_eq!(idle.num_sleeping(), 2);
        assert_eq!(idle.num_searching.load(Ordering::SeqCst), 0);
        assert!(!idle.all_asleep());
        assert!(idle.cancel_park(2));
        assert!(!idle.cancel_park(2), "a second cancel finds nothing");
        assert_eq!(idle.num_sleeping(), 1);
        assert_eq!(*lock(&idle.sleepers), vec![0]);
    }

    #[test]
    fn all_asleep_once_every_worker_parked() {
        let idle = Idle::new(2);
        for w in 0..2 {
            idle.start_searching();
            idle.prepare_park(w);
        }
        assert!(idle.all_asleep());
        assert!(idle.cancel_park(1));
        assert!(!idle.all_asleep());
    }

    #[test]
    fn only_the_last_searcher_reports_being_last() {
        let idle = Idle::new(2);
        idle.start_searching();
        idle.start_searching();
        assert!(!idle.stop_searching());
        assert!(idle.stop_searching());
    }

    #[test]
    fn new_work_wakes_nobody_while_a_worker_searches() {
        let idle = Idle::new(2);
        idle.start_searching();
        idle.prepare_park(0);
        idle.start_searching(); // worker 1 is still looking
        let (kicks, kick) = counting_kick();
        idle.notify_if_idle(kick.clone());
        assert_eq!(idle.num_sleeping(), 1, "the searcher will find the work");
        assert!(!idle.parker(0).token.load(Ordering::SeqCst));
        idle.stop_searching();
        idle.notify_if_idle(kick);
        assert_eq!(idle.num_sleeping(), 0);
        assert!(
            idle.parker(0).token.load(Ordering::SeqCst),
            "the sleeper got a token"
        );
        assert_eq!(kicks.load(Ordering::SeqCst), 0, "it was not in the driver");
        assert!(
            !idle.cancel_park(0),
            "the waker already took it off the list"
        );
    }

    #[test]
    fn notify_one_prefers_a_condvar_sleeper_and_kicks_only_the_driver() {
        let idle = Idle::new(3);
        for w in 0..3 {
            idle.start_searching();
            idle.prepare_park(w);
        }
        // Worker 2 registered last but blocks in the driver.
        assert!(!idle.parker(2).enter_driver());
        let (kicks, kick) = counting_kick();
        assert!(idle.notify_one(kick.clone()));
        assert!(idle.parker(1).token.load(Ordering::SeqCst));
        assert!(idle.notify_one(kick.clone()));
        assert!(idle.parker(0).token.load(Ordering::SeqCst));
        assert_eq!(kicks.load(Ordering::SeqCst), 0);
        assert!(idle.notify_one(kick.clone()), "then the driver");
        assert_eq!(kicks.load(Ordering::SeqCst), 1);
        assert!(!idle.notify_one(kick), "nobody left");
        assert_eq!(idle.num_sleeping(), 0);
    }

    #[test]
    fn a_token_left_before_entering_the_driver_skips_the_poll() {
        let parker = Parker::new();
        let (kicks, kick) = counting_kick();
        parker.unpark(kick.clone());
        assert_eq!(kicks.load(Ordering::SeqCst), 0);
        assert!(parker.enter_driver(), "the token is taken: do not poll");
        parker.leave_driver();
        assert!(!parker.enter_driver(), "and it was consumed");
        parker.unpark(kick);
        assert_eq!(kicks.load(Ordering::SeqCst), 1, "in the driver: kicked");
        parker.leave_driver();
        assert!(!parker.token.load(Ordering::SeqCst), "leaving consumes it");
    }

    #[test]
    fn park_returns_at_once_after_an_unpark_and_waits_for_one_otherwise() {
        let parker = Arc::new(Parker::new());
        parker.unpark(|| {});
        parker.park(); // the token was there
        let p = parker.clone();
        let waiter = thread::spawn(move || p.park());
        parker.unpark(|| {});
        waiter.join().unwrap();
        assert!(!parker.token.load(Ordering::SeqCst));
    }

    #[test]
    fn unpark_all_leaves_every_worker_a_token() {
        let idle = Idle::new(3);
        assert!(!idle.parker(1).enter_driver());
        let (kicks, kick) = counting_kick();
        idle.unpark_all(kick);
        assert_eq!(kicks.load(Ordering::SeqCst), 1);
        assert!(idle.parkers.iter().all(|p| p.token.load(Ordering::SeqCst)));
    }
}

/// Model checks of the protocol above: run with
/// `RUSTFLAGS="--cfg loom" cargo test -p weft-sched --release --lib loom`.
///
/// They drive the real `Idle` and `Parker`; only the run queue (a crossbeam deque, not
/// instrumented) is stood in for by an atomic written with Release and read with Acquire, the
/// orderings crossbeam gives a push and an emptiness check.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicBool;
    use loom::thread;

    /// F1 ↔ F2: a task queued while the only worker searches, parks and blocks is never
    /// stranded (a lost wake-up shows up as a loom deadlock: the worker blocked forever).
    #[test]
    fn loom_work_queued_while_a_worker_parks_is_never_stranded() {
        loom::model(|| {
            let idle = Arc::new(Idle::new(1));
            let queued = Arc::new(AtomicBool::new(false));
            let worker = {
                let (idle, queued) = (idle.clone(), queued.clone());
                thread::spawn(move || {
                    let has_work = || queued.load(Ordering::Acquire);
                    // The worker loop: `next_task`, then `idle`'s search, park and block.
                    loop {
                        if has_work() {
                            return;
                        }
                        idle.start_searching();
                        if has_work() {
                            idle.stop_searching();
                            return;
                        }
                        idle.prepare_park(0);
                        if has_work() {
                            idle.cancel_park(0);
                            continue;
                        }
                        idle.parker(0).park();
                        idle.cancel_park(0);
                    }
                })
            };
            // A producer (spawn from outside): push, then notify.
            queued.store(true, Ordering::Release);
            idle.notify_if_idle(|| {});
            worker.join().unwrap();
        });
    }

    /// F1 ↔ F2 with two workers: the one task (which shuts the runtime down, as `Runtime`'s
    /// drop does: flag, then unpark everyone) is run by one of them whatever the interleaving,
    /// and then both exit. A lost wake-up or a lost shutdown shows up as a loom deadlock.
    #[test]
    fn loom_two_workers_one_task_then_shutdown() {
        loom::model(|| {
            let idle = Arc::new(Idle::new(2));
            let queued = Arc::new(AtomicBool::new(false));
            let shutdown = Arc::new(AtomicBool::new(false));
            let workers: Vec<_> = (0..2)
                .map(|index| {
                    let (idle, queued, shutdown) = (idle.clone(), queued.clone(), shutdown.clone());
                    thread::spawn(move || {
                        let take = || {
                            queued
                                .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
                                .is_ok()
                        };
                        let run_task = || {
                            shutdown.store(true, Ordering::SeqCst);
                            idle.unpark_all(|| {});
                        };
                        loop {
                            if shutdown.load(Ordering::Acquire) {
                                return;
                            }
                            if take() {
                                run_task();
                                continue;
                            }
                            idle.start_searching();
                            if take() {
                                idle.stop_searching();
                                run_task();
                                continue;
                            }
                            idle.prepare_park(index);
                            if queued.load(Ordering::Acquire) || shutdown.load(Ordering::Acquire) {
                                idle.cancel_park(index);
                                continue;
                            }
                            idle.parker(index).park();
                            idle.cancel_park(index);
                        }
                    })
                })
                .collect();
            queued.store(true, Ordering::Release);
            idle.notify_if_idle(|| {});
            for worker in workers {
                worker.join().unwrap();
            }
            assert!(!queued.load(Ordering::Acquire), "the task ran");
        });
    }

    /// F1 ↔ F7: a task queued while the only searcher finds other work (which then keeps its
    /// worker for good) and the other worker parks is handed over: the producer sees the
    /// searcher gone and wakes the sleeper, or the searcher's last look sees the task and does.
    /// A lost hand-over shows up as a loom deadlock (worker 0 blocked forever).
    #[test]
    fn loom_the_last_searcher_hands_over_work_it_leaves_behind() {
        loom::model(|| {
            let idle = Arc::new(Idle::new(2));
            let queued = Arc::new(AtomicBool::new(false));
            // Worker 1 is searching when the model starts.
            idle.start_searching();
            let worker0 = {
                let (idle, queued) = (idle.clone(), queued.clone());
                thread::spawn(move || {
                    let has_work = || queued.load(Ordering::Acquire);
                    loop {
                        if has_work() {
                            return;
                        }
                        idle.start_searching();
                        if has_work() {
                            idle.finish_searching(|| false, || {});
                            return;
                        }
                        idle.prepare_park(0);
                        if has_work() {
                            idle.cancel_park(0);
                            continue;
                        }
                        idle.parker(0).park();
                        idle.cancel_park(0);
                    }
                })
            };
            let producer = {
                let (idle, queued) = (idle.clone(), queued.clone());
                thread::spawn(move || {
                    queued.store(true, Ordering::Release);
                    idle.notify_if_idle(|| {});
                })
            };
            // Worker 1 found other work: it stops searching and never looks at the queues again.
            idle.finish_searching(|| queued.load(Ordering::Acquire), || {});
            producer.join().unwrap();
            worker0.join().unwrap();
        });
    }

    /// F5 ↔ F6: an unpark racing with a worker entering the driver either leaves the token the
    /// worker takes (so it does not poll) or kicks the poll. The kick is an eventfd write, which
    /// is sticky: one at any time before or during the poll ends it.
    #[test]
    fn loom_unpark_reaches_a_worker_entering_the_driver() {
        loom::model(|| {
            let parker = Arc::new(Parker::new());
            let kicked = Arc::new(AtomicBool::new(false));
            let unparker = {
                let (parker, kicked) = (parker.clone(), kicked.clone());
                thread::spawn(move || parker.unpark(|| kicked.store(true, Ordering::Release)))
            };
            let skips_poll = parker.enter_driver();
            unparker.join().unwrap();
            let kicked = kicked.load(Ordering::Acquire);
            parker.leave_driver();
            assert!(
                skips_poll || kicked,
                "lost wake-up: the worker polls with no kick coming"
            );
        });
    }

    /// `notify_one` racing with a worker joining the sleepers and blocking on its condition
    /// variable (the path without a fence): the worker wakes, and the bookkeeping ends
    /// consistent.
    #[test]
    fn loom_condvar_sleeper_is_woken_by_notify_one() {
        loom::model(|| {
            let idle = Arc::new(Idle::new(1));
            idle.start_searching();
            let worker = {
                let idle = idle.clone();
                thread::spawn(move || {
                    idle.prepare_park(0);
                    idle.parker(0).park();
                    idle.cancel_park(0);
                })
            };
            while !idle.notify_one(|| {}) {
                thread::yield_now();
            }
            worker.join().unwrap();
            assert_eq!(idle.num_sleeping(), 0);
            assert!(lock(&idle.sleepers).is_empty());
        });
    }
}
