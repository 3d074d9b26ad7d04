//! A VM that parks coroutines on a timer queue instead of busy-yielding, and the two bug classes
//! such schedulers commonly have (a finished coroutine stranding its starter; a coroutine woken
//! while already queued resumed from a stale entry), as tests without timing assertions:
//! progress is measured in polls and worker wake-ups, and waits are bounded only to detect hangs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use weft_sched::{
    Builder, Runtime, TaskHandle, channel, park, sleep, sleep_until, spawn, yield_now,
};

fn runtime(workers: usize) -> Runtime {
    Builder::new()
        .workers(workers)
        // The ticker thread is not a worker, but keep the runtime fully idle while sleeping.
        .preempt_interval(None)
        .build()
        .unwrap()
}

/// Many tasks sleep at the same time; all complete, each is resumed exactly twice (start, then
/// the timer), and the workers block in the OS instead of spinning while they wait.
#[test]
fn many_concurrent_sleepers_complete_while_workers_stay_parked() {
    const SLEEPERS: usize = 1000;
    for workers in [1, 2] {
        let rt = runtime(workers);
        let sleeping = Arc::new(AtomicUsize::new(0));
        let max_sleeping = Arc::new(AtomicUsize::new(0));
        let (s, m) = (sleeping.clone(), max_sleeping.clone());
        let spawner = rt.spawn(move || {
            let deadline = Instant::now() + Duration::from_millis(500);
            let sleepers: Vec<_> = (0..SLEEPERS)
                .map(|i| {
                    let (s, m) = (s.clone(), m.clone());
                    spawn(move || {
                        let now_sleeping = s.fetch_add(1, Ordering::SeqCst) + 1;
                        m.fetch_max(now_sleeping, Ordering::SeqCst);
                        sleep_until(deadline);
                        s.fetch_sub(1, Ordering::SeqCst);
                        assert!(Instant::now() >= deadline);
                        i
                    })
                })
                .collect();
            sleepers
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum::<usize>()
        });
        // Wait (hang-guarded by the spawner finishing) until every sleeper sleeps.
        while sleeping.load(Ordering::SeqCst) < SLEEPERS && !spawner.is_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let before = rt.metrics();
        assert_eq!(spawner.join().unwrap(), SLEEPERS * (SLEEPERS - 1) / 2);
        let m = rt.metrics();
        assert_eq!(
            max_sleeping.load(Ordering::SeqCst),
            SLEEPERS,
            "the sleeps overlapped instead of running one after another"
        );
        assert_eq!(m.completed, SLEEPERS as u64 + 1);
        assert_eq!(m.timers_fired, SLEEPERS as u64, "{m:?}");
        assert_eq!(m.stale_entries, 0);
        // From "all asleep" to "all done": each sleeper is resumed once more (its timer fired)
        // and the spawner once per join that had to wait. Busy-yielding sleepers would be
        // polled thousands of times.
        eprintln!("{workers} worker(s), all asleep: {before:?}\n  all done: {m:?}");
        let polls = m.polls - before.polls;
        assert!(
            polls <= 2 * SLEEPERS as u64 + 1,
            "too many polls: {before:?} -> {m:?}"
        );
        assert!(polls >= SLEEPERS as u64, "{before:?} -> {m:?}");
        // While everybody sleeps the workers are blocked in the OS: a handful of parks and idle
        // searches per worker for the whole wait, not one per spin.
        let parks = m.parks - before.parks;
        let idle_rounds = m.idle_rounds - before.idle_rounds;
        assert!(
            parks <= 10 * workers as u64,
            "workers woke too often: {before:?} -> {m:?}"
        );
        assert!(
            idle_rounds <= 20 * workers as u64,
            "workers searched too often: {before:?} -> {m:?}"
        );
    }
}

/// A dropped (cancelled) sleep leaves nothing behind: no pending timer, no firing, no wake-up.
#[test]
fn cancelled_sleeps_cost_nothing_later() {
    let rt = runtime(1);
    rt.spawn(|| {
        for _ in 0..100 {
            let mut long = std::pin::pin!(weft_sched::Sleep::new(Duration::from_secs(3600)));
            // Register the timer by polling once, then drop it.
            let waker = weft_sched::current().waker();
            let _ = long
                .as_mut()
                .poll(&mut std::task::Context::from_waker(&waker));
        }
    })
    .join()
    .unwrap();
    let m = rt.metrics();
    assert_eq!(m.pending_timers, 0);
    assert_eq!(m.timers_fired, 0);
    let parks = m.parks;
    // An idle runtime with no timers sleeps until kicked: a short real sleep here sees no park
    // (and no wake-up) caused by the cancelled timers.
    std::thread::sleep(Duration::from_millis(20));
    assert!(rt.metrics().parks <= parks + 1);
}

use std::future::Future;

/// Bug class 1: a coroutine that finished after the coroutine that started it had already
/// finished stranded every parked coroutine. Here parents finish first, children later, and
/// unrelated parked tasks must all still complete.
#[test]
fn tasks_finishing_after_their_spawner_strand_nobody() {
    for workers in [1, 3] {
        let rt = runtime(workers);
        let (tx, rx) = channel::<usize>(1);
        // Unrelated tasks parked on the channel while the ancestry below dies out.
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let rx = rx.clone();
                rt.spawn(move || rx.recv().unwrap())
            })
            .collect();
        drop(rx);
        let finished_parents = Arc::new(AtomicUsize::new(0));
        let fp = finished_parents.clone();
        let grandparent = rt.spawn(move || {
            let fp2 = fp.clone();
            drop(spawn(move || {
                // The parent spawns the child and finishes at once.
                let fp3 = fp2.clone();
                drop(spawn(move || {
                    // The child outlives both ancestors before it feeds the waiters.
                    while fp3.load(Ordering::SeqCst) < 2 {
                        sleep(Duration::from_millis(1));
                    }
                    for i in 0..8 {
                        tx.send(i).unwrap();
                    }
                }));
                fp2.fetch_add(1, Ordering::SeqCst);
            }));
            fp.fetch_add(1, Ordering::SeqCst);
        });
        grandparent.join().unwrap();
        let mut got: Vec<usize> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
        got.sort();
        assert_eq!(got, (0..8).collect::<Vec<_>>());
        assert_eq!(finished_parents.load(Ordering::SeqCst), 2);
    }
}

/// Bug class 2: a coroutine woken while already queued left a stale run-queue entry, and resuming
/// it after it finished restarted its body. Here tasks are woken many times over while running,
/// yielding, parked and after they finished; each body runs exactly once and no finished task is
/// ever polled again.
#[test]
fn tasks_woken_twice_or_after_finishing_are_never_rerun() {
    const ROUNDS: usize = 200;
    for workers in [1, 3] {
        let rt = runtime(workers);
        let starts = Arc::new(AtomicUsize::new(0));
        let progress = Arc::new(AtomicUsize::new(0));
        let (st, pr) = (starts.clone(), progress.clone());
        let target = rt.spawn(move || {
            st.fetch_add(1, Ordering::SeqCst);
            for round in 1..=ROUNDS {
                if round % 2 == 0 {
                    yield_now();
                } else {
                    park();
                }
                pr.store(round, Ordering::SeqCst);
            }
            7
        });
        let handle: TaskHandle = target.task();
        // Several OS threads hammer the task with unparks and raw wakes until it finishes.
        let hammers = 3;
        let barrier = Arc::new(Barrier::new(hammers + 1));
        let threads: Vec<_> = (0..hammers)
            .map(|_| {
                let (h, b, p) = (handle.clone(), barrier.clone(), progress.clone());
                std::thread::spawn(move || {
                    b.wait();
                    while p.load(Ordering::SeqCst) < ROUNDS {
                        h.unpark();
                        h.waker().wake_by_ref();
                    }
                })
            })
            .collect();
        barrier.wait();
        assert_eq!(target.join().unwrap(), 7);
        for t in threads {
            t.join().unwrap();
        }
        assert!(handle.is_finished());
        let before = rt.metrics();
        // Wakes after the end: none may resume (or restart) the finished task.
        for _ in 0..1000 {
            handle.unpark();
            handle.waker().wake();
        }
        // A marker task runs after anything those wakes could have queued.
        rt.spawn(|| ()).join().unwrap();
        let after = rt.metrics();
        assert_eq!(starts.load(Ordering::SeqCst), 1, "the body restarted");
        assert_eq!(after.polls, before.polls + 1, "a finished task was resumed");
        assert_eq!(after.stale_entries, 0);
        // Parks may have consumed early tokens, but each park round needed a wake: the task was
        // polled at least once per round and never more than once per wake it received.
        assert!(before.polls > ROUNDS as u64 / 2);
    }
}

/// Deadlines spread 10 µs apart over 2 ms: idle workers wake up a handful of times for the
/// whole burst (the coalescing window), not once per timer, and no sleep ends early.
#[test]
fn a_burst_of_nearby_deadlines_costs_few_wake_ups() {
    const TIMERS: u32 = 200;
    let rt = runtime(2);
    let base = Instant::now() + Duration::from_millis(300);
    let sleepers: Vec<_> = (0..TIMERS)
        .map(|i| {
            let deadline = base + Duration::from_micros(10 * u64::from(i));
            rt.spawn(move || {
                sleep_until(deadline);
                assert!(Instant::now() >= deadline);
            })
        })
        .collect();
    while rt.metrics().pending_timers < TIMERS as usize && Instant::now() < base {
        std::thread::sleep(Duration::from_millis(1));
    }
    let before = rt.metrics();
    for s in sleepers {
        s.join().unwrap();
    }
    let after = rt.metrics();
    eprintln!("{before:?}\n{after:?}");
    assert_eq!(after.timers_fired, u64::from(TIMERS));
    // 2 ms of deadlines / 250 µs window = 8 windows; allow for both workers and stragglers.
    let parks = after.parks - before.parks;
    assert!(
        parks <= 60,
        "{parks} parks for {TIMERS} timers: {before:?} -> {after:?}"
    );
}
