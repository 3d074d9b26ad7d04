//! Many fibers driven by random resume/drop sequences, checked against a
//! plain model of what each fiber should have done.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use weft_fiber::{Fiber, FiberResult, PoolConfig, StackPool, Suspender};

/// What a resume asks the fiber body to do next.
#[derive(Clone, Copy, Debug)]
enum Command {
    Yield(u64),
    Return,
    Panic,
}

#[derive(Clone, Debug)]
enum Op {
    Create,
    Resume(usize, Command),
    Drop(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Create),
        6 => (any::<usize>(), prop_oneof![
            8 => any::<u64>().prop_map(Command::Yield),
            1 => Just(Command::Return),
            1 => Just(Command::Panic),
        ]).prop_map(|(i, c)| Op::Resume(i, c)),
        1 => any::<usize>().prop_map(Op::Drop),
    ]
}

#[derive(Debug, PartialEq)]
enum ModelState {
    Unstarted,
    Suspended,
    Finished,
}

struct Model {
    state: ModelState,
    acc: u64,
    dropped: bool,
}

struct Live {
    fiber: Fiber<Command, u64, u64>,
    /// Set when the body's captured guard is dropped.
    guard_drops: Arc<AtomicUsize>,
}

struct Guard(Arc<AtomicUsize>);
impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn body(id: u64, guard: Guard) -> impl FnOnce(&Suspender<Command, u64>, Command) -> u64 + Send {
    move |s, mut command| {
        let _guard = guard;
        let mut acc = id;
        loop {
            match command {
                Command::Yield(v) => {
                    acc = acc.wrapping_mul(6364136223846793005).wrapping_add(v);
                    command = s.suspend(acc);
                }
                Command::Return => return acc,
                Command::Panic => panic!("planned panic {acc}"),
            }
        }
    }
}

fn run(ops: Vec<Op>, pool: Option<StackPool>) {
    let mut live: Vec<Live> = Vec::new();
    let mut model: Vec<Model> = Vec::new();
    for op in ops {
        match op {
            Op::Create => {
                let id = live.len() as u64;
                let drops = Arc::new(AtomicUsize::new(0));
                let body = body(id, Guard(drops.clone()));
                let fiber = match &pool {
                    Some(pool) => Fiber::with_stack(pool.take().unwrap(), body),
                    None => Fiber::new(body),
                };
                live.push(Live {
                    fiber,
                    guard_drops: drops,
                });
                model.push(Model {
                    state: ModelState::Unstarted,
                    acc: id,
                    dropped: false,
                });
            }
            Op::Resume(_, _) | Op::Drop(_) if live.is_empty() => {}
            Op::Resume(i, command) => {
                let i = i % live.len();
                let m = &mut model[i];
                if m.dropped || m.state == ModelState::Finished {
                    continue;
                }
                let got = catch_unwind(AssertUnwindSafe(|| live[i].fiber.resume(command)));
                match command {
                    Command::Yield(v) => {
                        m.acc = m.acc.wrapping_mul(6364136223846793005).wrapping_add(v);
                        m.state = ModelState::Suspended;
                        assert_eq!(got.unwrap(), FiberResult::Yield(m.acc));
                    }
                    Command::Return => {
                        m.state = ModelState::Finished;
                        assert_eq!(got.unwrap(), FiberResult::Return(m.acc));
                    }
                    Command::Panic => {
                        m.state = ModelState::Finished;
                        let payload = got.unwrap_err();
                        let message = payload.downcast_ref::<String>().unwrap();
                        assert_eq!(message, &format!("planned panic {}", m.acc));
                    }
                }
                assert_eq!(live[i].fiber.is_finished(), m.state == ModelState::Finished);
                let expected_drops = usize::from(m.state == ModelState::Finished);
                assert_eq!(live[i].guard_drops.load(Ordering::SeqCst), expected_drops);
            }
            Op::Drop(i) => {
                let i = i % live.len();
                if model[i].dropped {
                    continue;
                }
                model[i].dropped = true;
                // Replace with a finished placeholder to keep indices stable.
                let mut placeholder = Fiber::new(|_: &Suspender<Command, u64>, _| 0);
                placeholder.resume(Command::Return);
                let old = std::mem::replace(&mut live[i].fiber, placeholder);
                drop(old);
                assert_eq!(
                    live[i].guard_drops.load(Ordering::SeqCst),
                    1,
                    "every fiber's captures are dropped exactly once"
                );
            }
        }
    }
    let guards: Vec<_> = live.iter().map(|l| l.guard_drops.clone()).collect();
    drop(live);
    for drops in guards {
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }
}

fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let planned = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|m| m.starts_with("planned panic"));
            if !planned {
                default(info);
            }
        }));
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn fibers_match_the_model(ops in proptest::collection::vec(op(), 1..200)) {
        quiet_panics();
        run(ops, None);
    }

    #[test]
    fn pooled_fibers_match_the_model(ops in proptest::collection::vec(op(), 1..200)) {
        quiet_panics();
        let pool = StackPool::new(PoolConfig { stack_size: 32 * 1024, max_cached: 8, ..PoolConfig::default() });
        run(ops, Some(pool));
    }
}
