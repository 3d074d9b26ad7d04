//! Property test: random programs of spawn / yield / sleep / park / unpark / join / finish run on
//! 1 and 3 workers, checked against a model computed from the programs alone: every task body
//! runs exactly once, every join returns the value the model predicts, every park is released by
//! its unpark (no lost wake-up), and nothing is resumed after it finished.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use proptest::prelude::*;
use weft_sched::{Builder, Runtime, TaskHandle, park, sleep, spawn, yield_now};

#[derive(Clone, Debug)]
enum Leaf {
    Yield,
    SleepMs(u8),
}

#[derive(Clone, Debug)]
enum Op {
    Compute(u32),
    Yield,
    SleepMs(u8),
    /// Park until a freshly spawned unparker (which first runs `delay`) grants it; `twice` makes
    /// the unparker unpark twice (a double wake).
    Park {
        delay: Vec<Leaf>,
        twice: bool,
    },
    /// Spawn a child that runs `steps` and returns `value`, then join it.
    SpawnJoin {
        steps: Vec<Leaf>,
        value: u32,
    },
    /// Spawn a child and never join it; it may finish after its parent.
    SpawnDetached {
        steps: Vec<Leaf>,
    },
    /// Unpark this task itself (leaves a token; the next park consumes it early, then re-parks
    /// until its grant, which the loop below handles).
    UnparkSelf,
}

fn leaf() -> impl Strategy<Value = Leaf> {
    prop_oneof![Just(Leaf::Yield), (0u8..3).prop_map(Leaf::SleepMs)]
}

fn op() -> impl Strategy<Value = Op> {
    let leaves = || proptest::collection::vec(leaf(), 0..4);
    prop_oneof![
        (0u32..1000).prop_map(Op::Compute),
        Just(Op::Yield),
        (0u8..3).prop_map(Op::SleepMs),
        (leaves(), any::<bool>()).prop_map(|(delay, twice)| Op::Park { delay, twice }),
        (leaves(), 0u32..1000).prop_map(|(steps, value)| Op::SpawnJoin { steps, value }),
        leaves().prop_map(|steps| Op::SpawnDetached { steps }),
        Just(Op::UnparkSelf),
    ]
}

/// What the model predicts for one program: its result and how many tasks it spawns.
fn model(program: &[Op]) -> (u64, u64) {
    let mut value = 0u64;
    let mut spawned = 0u64;
    for op in program {
        match op {
            Op::Compute(x) => value += u64::from(*x),
            Op::SpawnJoin { value: v, .. } => {
                value += u64::from(*v);
                spawned += 1;
            }
            Op::SpawnDetached { .. } | Op::Park { .. } => spawned += 1,
            Op::Yield | Op::SleepMs(_) | Op::UnparkSelf => {}
        }
    }
    (value, spawned)
}

fn run_leaves(steps: &[Leaf]) {
    for step in steps {
        match step {
            Leaf::Yield => yield_now(),
            Leaf::SleepMs(ms) => sleep(Duration::from_millis(u64::from(*ms))),
        }
    }
}

struct Counters {
    bodies_started: AtomicUsize,
    bodies_finished: AtomicUsize,
}

fn run_program(program: Vec<Op>, counters: Arc<Counters>) -> u64 {
    counters.bodies_started.fetch_add(1, Ordering::SeqCst);
    let grant = Arc::new(AtomicUsize::new(0));
    let mut parks = 0;
    let mut value = 0u64;
    for op in program {
        match op {
            Op::Compute(x) => value += u64::from(x),
            Op::Yield => yield_now(),
            Op::SleepMs(ms) => sleep(Duration::from_millis(u64::from(ms))),
            Op::Park { delay, twice } => {
                parks += 1;
                let me: TaskHandle = weft_sched::current();
                let (g, c) = (grant.clone(), counters.clone());
                drop(spawn(move || {
                    c.bodies_started.fetch_add(1, Ordering::SeqCst);
                    run_leaves(&delay);
                    g.store(parks, Ordering::SeqCst);
                    me.unpark();
                    if twice {
                        me.unpark();
                    }
                    c.bodies_finished.fetch_add(1, Ordering::SeqCst);
                }));
                while grant.load(Ordering::SeqCst) < parks {
                    park();
                }
            }
            Op::SpawnJoin { steps, value: v } => {
                let c = counters.clone();
                let child = spawn(move || {
                    c.bodies_started.fetch_add(1, Ordering::SeqCst);
                    run_leaves(&steps);
                    c.bodies_finished.fetch_add(1, Ordering::SeqCst);
                    v
                });
                value += u64::from(child.join().expect("child must not fail"));
            }
            Op::SpawnDetached { steps } => {
                let c = counters.clone();
                drop(spawn(move || {
                    c.bodies_started.fetch_add(1, Ordering::SeqCst);
                    run_leaves(&steps);
                    c.bodies_finished.fetch_add(1, Ordering::SeqCst);
                }));
            }
            Op::UnparkSelf => weft_sched::current().unpark(),
        }
    }
    counters.bodies_finished.fetch_add(1, Ordering::SeqCst);
    value
}

fn check(workers: usize, programs: Vec<Vec<Op>>) -> Result<(), TestCaseError> {
    let rt: Runtime = Builder::new().workers(workers).build().unwrap();
    let counters = Arc::new(Counters {
        bodies_started: AtomicUsize::new(0),
        bodies_finished: AtomicUsize::new(0),
    });
    let expected: Vec<(u64, u64)> = programs.iter().map(|p| model(p)).collect();
    let expected_tasks: u64 = expected.iter().map(|(_, s)| 1 + s).sum();
    let handles: Vec<_> = programs
        .into_iter()
        .map(|p| {
            let c = counters.clone();
            rt.spawn(move || run_program(p, c))
        })
        .collect();
    // Join on a helper thread so a lost wake-up shows up as a failure, not a hung test.
    let (tx, rx) = mpsc::channel();
    let handle = rt.handle().clone();
    std::thread::spawn(move || {
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().map_err(|e| e.to_string()))
            .collect();
        // Detached children may outlive their parents: wait for them through the runtime too.
        while handle.metrics().completed < expected_tasks {
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = tx.send(results);
    });
    let results = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("deadlock: some task was never woken (lost wake-up)");
    for (got, (want, _)) in results.into_iter().zip(&expected) {
        prop_assert_eq!(got, Ok(*want));
    }
    let metrics = rt.metrics();
    prop_assert_eq!(metrics.spawned, expected_tasks);
    prop_assert_eq!(metrics.completed, expected_tasks);
    prop_assert_eq!(metrics.stale_entries, 0);
    prop_assert_eq!(
        counters.bodies_started.load(Ordering::SeqCst) as u64,
        expected_tasks
    );
    prop_assert_eq!(
        counters.bodies_finished.load(Ordering::SeqCst) as u64,
        expected_tasks
    );
    // Nothing runs after finishing: no poll happens once everything completed.
    let polls = metrics.polls;
    std::thread::sleep(Duration::from_millis(2));
    prop_assert_eq!(rt.metrics().polls, polls);
    Ok(())
}

fn programs() -> impl Strategy<Value = Vec<Vec<Op>>> {
    proptest::collection::vec(proptest::collection::vec(op(), 0..8), 1..6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn one_worker_matches_the_model(programs in programs()) {
        check(1, programs)?;
    }

    #[test]
    fn three_workers_match_the_model(programs in programs()) {
        check(3, programs)?;
    }
}
