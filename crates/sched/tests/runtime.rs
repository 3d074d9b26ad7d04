//! Behaviour of the runtime seen through its public API. No timing assertions: progress is
//! checked by counting wake-ups and polls, and waits are bounded only as hang detectors.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_sched::{Builder, Runtime, channel, park, sleep, spawn, unbounded, yield_now};

fn runtime(workers: usize) -> Runtime {
    Builder::new().workers(workers).build().unwrap()
}

#[test]
fn spawn_and_join_from_outside_and_inside() {
    for workers in [1, 3] {
        let rt = runtime(workers);
        assert_eq!(rt.spawn(|| 40 + 2).join().unwrap(), 42);
        let nested = rt.spawn(|| {
            let children: Vec<_> = (0..100u64).map(|i| spawn(move || i * 2)).collect();
            children.into_iter().map(|c| c.join().unwrap()).sum::<u64>()
        });
        assert_eq!(nested.join().unwrap(), 9900);
    }
}

#[test]
fn yield_now_interleaves_tasks_on_one_worker() {
    let rt = runtime(1);
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    // Both tasks are spawned by a green thread before either runs, so the order is decided by
    // the scheduler alone.
    rt.spawn(move || {
        let handles: Vec<_> = (0..2)
            .map(|id| {
                let log = l.clone();
                spawn(move || {
                    for step in 0..3 {
                        log.lock().unwrap().push((id, step));
                        yield_now();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    })
    .join()
    .unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 6);
    // Round robin: no task runs two steps in a row while the other is runnable.
    let switches = log.windows(2).filter(|w| w[0].0 != w[1].0).count();
    assert_eq!(switches, 5, "{log:?}");
}

#[test]
fn sleep_parks_only_the_green_thread() {
    let rt = runtime(1);
    let start = Instant::now();
    let sleeper = rt.spawn(move || {
        sleep(Duration::from_millis(20));
        Instant::now()
    });
    // On the single worker, this task runs while the sleeper sleeps.
    let busy = rt.spawn(|| (0..1000).fold(0u64, |a, b| a.wrapping_add(b)));
    assert_eq!(busy.join().unwrap(), 499500);
    let woke = sleeper.join().unwrap();
    assert!(
        woke >= start + Duration::from_millis(20),
        "a sleep never ends early"
    );
}

#[test]
fn park_and_unpark_in_either_order() {
    let rt = runtime(2);
    // unpark first: park returns at once.
    let early = rt.spawn(|| {
        weft_sched::current().unpark();
        park();
        1
    });
    assert_eq!(early.join().unwrap(), 1);
    // park first: a later unpark from another green thread resumes it.
    let flag = Arc::new(AtomicUsize::new(0));
    let f = flag.clone();
    let parked = rt.spawn(move || {
        while f.load(Ordering::SeqCst) == 0 {
            park();
        }
        2
    });
    let handle = parked.task();
    rt.spawn(move || {
        flag.store(1, Ordering::SeqCst);
        handle.unpark();
    })
    .join()
    .unwrap();
    assert_eq!(parked.join().unwrap(), 2);
}

#[test]
fn panics_are_reported_through_the_join_handle() {
    let rt = runtime(2);
    let err = rt
        .spawn(|| -> u32 { panic!("boom {}", 7) })
        .join()
        .unwrap_err();
    assert!(err.is_panic());
    assert_eq!(err.panic_message(), Some("boom 7"));
    // The worker survives.
    assert_eq!(rt.spawn(|| 5).join().unwrap(), 5);
    // A panic payload can be re-raised.
    let payload = rt
        .spawn(|| std::panic::panic_any(11u8))
        .join()
        .unwrap_err()
        .into_panic();
    assert_eq!(payload.downcast_ref::<u8>(), Some(&11));
}

#[test]
fn bounded_channel_parks_senders_and_receivers() {
    for workers in [1, 2] {
        let rt = runtime(workers);
        let (tx, rx) = channel::<usize>(2);
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let tx = tx.clone();
                rt.spawn(move || {
                    for i in 0..250 {
                        tx.send(p * 1000 + i).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let consumer = rt.spawn(move || {
            let mut got: Vec<usize> = rx.iter().collect();
            got.sort();
            got
        });
        for p in producers {
            p.join().unwrap();
        }
        let got = consumer.join().unwrap();
        let mut want: Vec<usize> = (0..4)
            .flat_map(|p| (0..250).map(move |i| p * 1000 + i))
            .collect();
        want.sort();
        assert_eq!(got, want);
    }
}

#[test]
fn channel_disconnects_and_works_from_plain_threads() {
    let rt = runtime(2);
    let (tx, rx) = unbounded::<u32>();
    let receiver = rt.spawn(move || rx.recv());
    // Sent from a plain OS thread; received in a green thread.
    tx.send(9).unwrap();
    assert_eq!(receiver.join().unwrap(), Ok(9));
    let (tx, rx) = channel::<u32>(1);
    let sender = rt.spawn(move || {
        tx.send(1).unwrap();
        tx.send(2).unwrap(); // parks until the plain thread below receives
    });
    assert_eq!(rx.recv(), Ok(1)); // blocks this OS thread
    assert_eq!(rx.recv(), Ok(2));
    sender.join().unwrap();
    assert!(rx.recv().is_err(), "all senders gone");
}

#[test]
fn block_on_inside_a_green_thread_parks_until_woken() {
    let rt = runtime(1);
    let (tx, rx) = std::sync::mpsc::channel::<std::task::Waker>();
    let waiter = rt.spawn(move || {
        let mut polls = 0;
        let mut fired = false;
        weft_sched::block_on(std::future::poll_fn(|cx| {
            polls += 1;
            if fired {
                return std::task::Poll::Ready(());
            }
            fired = true;
            tx.send(cx.waker().clone()).unwrap();
            std::task::Poll::Pending
        }));
        polls
    });
    // Another green thread on the same (single) worker runs while the first is parked.
    assert_eq!(rt.spawn(|| 3).join().unwrap(), 3);
    rx.recv().unwrap().wake(); // from a plain thread
    assert_eq!(
        waiter.join().unwrap(),
        2,
        "polled once, then once more after the wake"
    );
}

#[test]
fn runtime_block_on_runs_futures_with_the_runtime_entered() {
    let rt = runtime(2);
    let out = rt.block_on(async {
        weft_sched::Sleep::new(Duration::from_millis(2)).await;
        spawn(|| 8).await.unwrap()
    });
    assert_eq!(out, 8);
}

#[test]
fn dropping_the_runtime_cancels_parked_tasks() {
    let rt = runtime(2);
    let dropped = Arc::new(AtomicUsize::new(0));
    struct CountOnDrop(Arc<AtomicUsize>);
    impl Drop for CountOnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let d = dropped.clone();
    let forever = rt.spawn(move || {
        let _guard = CountOnDrop(d);
        sleep(Duration::from_secs(3600));
    });
    // Make sure it started and parked.
    while rt.metrics().pending_timers == 0 {
        std::thread::yield_now();
    }
    drop(rt);
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the parked fiber was unwound"
    );
    assert!(forever.join().unwrap_err().is_cancelled());
}

#[test]
fn zero_workers_is_an_error() {
    assert!(Builder::new().workers(0).build().is_err());
}

#[test]
fn should_yield_turns_true_after_a_tick_or_when_the_budget_is_spent() {
    let ticks = Arc::new(AtomicUsize::new(0));
    let t = ticks.clone();
    let rt = Builder::new()
        .workers(1)
        .budget(10)
        .preempt_interval(Some(Duration::from_millis(1)))
        .on_tick(move || {
            t.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    assert!(
        !weft_sched::should_yield(),
        "never true outside green threads"
    );
    let spins = rt
        .spawn(|| {
            assert!(!weft_sched::should_yield(), "fresh budget, same epoch");
            // A loop that never blocks: the ticker makes should_yield true eventually.
            let guard = Instant::now();
            let mut spins = 0u64;
            while !weft_sched::should_yield() {
                spins += 1;
                assert!(
                    guard.elapsed() < Duration::from_secs(60),
                    "the ticker never ticked"
                );
                std::hint::spin_loop();
            }
            // Yielding refills the budget and resets the epoch.
            yield_now();
            weft_sched::consume_budget(9);
            let after_nine = weft_sched::should_yield();
            weft_sched::consume_budget(1);
            (spins, after_nine, weft_sched::should_yield())
        })
        .join()
        .unwrap();
    assert!(spins.0 > 0);
    // `after_nine` may be true only if a tick landed in between; the budget alone must trip it.
    assert!(spins.2, "budget exhausted");
    let _ = spins.1;
    assert!(
        ticks.load(Ordering::SeqCst) >= 1,
        "on_tick hooks run on the ticker"
    );
}

#[test]
fn spawn_outside_a_runtime_panics_with_a_clear_message() {
    let err = std::panic::catch_unwind(|| spawn(|| 1)).unwrap_err();
    let message = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(message.contains("no weft-sched runtime"), "{message}");
}

/// A green thread spinning without ever yielding holds its worker; timers and the tasks they
/// wake must still be served by the other (idle) worker.
#[test]
fn timers_fire_while_another_worker_is_stuck_in_a_task() {
    for round in 0..20 {
        let rt = runtime(2);
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let spinner = rt.spawn(move || {
            let guard = Instant::now();
            while d.load(Ordering::SeqCst) == 0 {
                assert!(
                    guard.elapsed() < Duration::from_secs(60),
                    "timer starved (round {round})"
                );
                std::hint::spin_loop();
            }
        });
        let d = done.clone();
        let sleeper = rt.spawn(move || {
            sleep(Duration::from_millis(1));
            d.store(1, Ordering::SeqCst);
        });
        sleeper.join().unwrap();
        spinner.join().unwrap();
    }
}

#[test]
fn sleep_future_accessors_and_reset() {
    let rt = runtime(1);
    rt.spawn(|| {
        let start = Instant::now();
        let mut s = weft_sched::Sleep::new(Duration::from_secs(3600));
        assert!(!s.is_elapsed());
        assert!(s.deadline() >= start + Duration::from_secs(3600));
        s.reset(Instant::now() + Duration::from_millis(1));
        weft_sched::block_on(&mut s);
        assert!(s.is_elapsed());
        assert!(Instant::now() >= start + Duration::from_millis(1));
    })
    .join()
    .unwrap();
    assert_eq!(rt.metrics().pending_timers, 0);
}

#[test]
fn dropping_the_runtime_cancels_tasks_parked_on_each_other() {
    let rt = runtime(2);
    let (tx_a, rx_a) = channel::<u8>(1);
    let (tx_b, rx_b) = channel::<u8>(1);
    // Each task keeps the sender the other one waits on: a reference cycle through their stacks.
    let a = rt.spawn(move || {
        let _keep = tx_b;
        rx_a.recv()
    });
    let b = rt.spawn(move || {
        let _keep = tx_a;
        rx_b.recv()
    });
    let parked_task = rt.spawn(park);
    while rt.metrics().polls < 3 {
        std::thread::yield_now();
    }
    drop(rt);
    assert!(a.join().unwrap_err().is_cancelled());
    assert!(b.join().unwrap_err().is_cancelled());
    assert!(parked_task.join().unwrap_err().is_cancelled());
}

#[test]
fn public_types_are_send_and_sync_where_expected() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Runtime>();
    send_sync::<weft_sched::Handle>();
    send_sync::<weft_sched::TaskHandle>();
    send_sync::<weft_sched::JoinHandle<u32>>();
    send_sync::<weft_sched::Sender<u32>>();
    send_sync::<weft_sched::Receiver<u32>>();
    send_sync::<weft_sched::TcpStream>();
    send_sync::<weft_sched::TcpListener>();
    send_sync::<weft_sched::Sleep>();
    send::<weft_sched::JoinError>();
}

#[test]
fn results_of_any_size_come_back_whether_the_child_finishes_parks_or_yields_first() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let outside = rt.spawn(|| [3u64; 32]).join().unwrap();
    assert_eq!(outside, [3u64; 32]);
    let total = rt
        .spawn(|| {
            let mut total = 0u64;
            for i in 0..200u64 {
                // Joined right after the spawn: the child is next on this worker.
                let text = weft_sched::spawn(move || format!("{i}")).join().unwrap();
                total += text.parse::<u64>().unwrap();
                let big = weft_sched::spawn(move || [i; 16]).join().unwrap();
                total += big[15];
                let slept = weft_sched::spawn(move || {
                    weft_sched::sleep(std::time::Duration::from_micros(10));
                    i
                });
                total += slept.join().unwrap();
                let yielded = weft_sched::spawn(move || {
                    weft_sched::yield_now();
                    i
                });
                total += yielded.join().unwrap();
            }
            total
        })
        .join()
        .unwrap();
    assert_eq!(total, 4 * (0..200u64).sum::<u64>());
}

/// A task whose `join` returned is finished for every handle to it: `TaskHandle::is_finished`
/// once read the scheduler's state, which a worker sets only after the result is out, so a
/// joiner on another thread could see its joined task unfinished.
#[test]
fn a_joined_task_is_finished_for_its_task_handle_too() {
    let rt = runtime(2);
    for _ in 0..20_000 {
        let join = rt.spawn(|| 1);
        let task = join.task();
        assert_eq!(join.join().unwrap(), 1);
        assert!(task.is_finished());
    }
}
