//! Behaviour of `Fiber`: values in and out, panics, drops, threads, pools.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use weft_fiber::{Fiber, FiberResult, PoolConfig, Stack, StackPool, Suspender};

#[test]
fn values_flow_both_ways() {
    let mut fiber = Fiber::new(|suspender: &Suspender<i32, String>, first: i32| {
        let second = suspender.suspend(format!("got {first}"));
        let third = suspender.suspend(format!("got {second}"));
        first + second + third
    });
    assert!(!fiber.is_started());
    assert_eq!(fiber.resume(1), FiberResult::Yield("got 1".to_string()));
    assert!(fiber.is_started());
    assert_eq!(fiber.resume(2), FiberResult::Yield("got 2".to_string()));
    assert!(!fiber.is_finished());
    assert_eq!(fiber.resume(3), FiberResult::Return(6));
    assert!(fiber.is_finished());
}

#[test]
#[should_panic(expected = "resumed a fiber that has finished")]
fn resuming_a_finished_fiber_panics() {
    let mut fiber = Fiber::new(|_: &Suspender, ()| ());
    assert_eq!(fiber.resume(()), FiberResult::Return(()));
    fiber.resume(());
}

#[test]
fn suspend_from_deep_inside_calls() {
    fn depth(suspender: &Suspender<(), u32>, n: u32) -> u32 {
        if n == 0 {
            suspender.suspend(0);
            return 0;
        }
        let mut local = [n; 16];
        local[n as usize % 16] += depth(suspender, n - 1);
        suspender.suspend(n);
        local.iter().sum::<u32>() / 16
    }
    let mut fiber = Fiber::new(|s: &Suspender<(), u32>, ()| depth(s, 200));
    for expected in 0..=200 {
        assert_eq!(fiber.resume(()), FiberResult::Yield(expected));
    }
    assert!(matches!(fiber.resume(()), FiberResult::Return(_)));
}

#[test]
fn panic_propagates_to_the_resumer_and_finishes_the_fiber() {
    let mut fiber = Fiber::new(|s: &Suspender<(), ()>, ()| {
        s.suspend(());
        panic!("boom inside the fiber");
    });
    assert_eq!(fiber.resume(()), FiberResult::Yield(()));
    let err = catch_unwind(AssertUnwindSafe(|| fiber.resume(()))).unwrap_err();
    assert_eq!(err.downcast_ref::<&str>(), Some(&"boom inside the fiber"));
    assert!(fiber.is_finished());
}

struct CountDrop(Arc<AtomicUsize>);
impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn dropping_a_suspended_fiber_runs_its_destructors() {
    let drops = Arc::new(AtomicUsize::new(0));
    let counter = drops.clone();
    let mut fiber = Fiber::new(move |s: &Suspender<(), ()>, ()| {
        let _outer = CountDrop(counter.clone());
        let inner = || {
            let _inner = CountDrop(counter.clone());
            s.suspend(());
            unreachable!("a dropped fiber is never resumed normally");
        };
        inner();
    });
    assert_eq!(fiber.resume(()), FiberResult::Yield(()));
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(fiber);
    // _inner and _outer, innermost first.
    assert_eq!(drops.load(Ordering::SeqCst), 2);
    assert_eq!(
        Arc::strong_count(&drops),
        1,
        "the body's captures were dropped"
    );
}

#[test]
fn dropping_an_unstarted_fiber_drops_its_body_unrun() {
    let drops = Arc::new(AtomicUsize::new(0));
    let guard = CountDrop(drops.clone());
    let fiber = Fiber::new(move |_: &Suspender, ()| {
        let _keep = &guard;
        panic!("must not run");
    });
    drop(fiber);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn a_body_that_catches_the_unwind_and_suspends_again_is_still_dropped() {
    let drops = Arc::new(AtomicUsize::new(0));
    let counter = drops.clone();
    let mut fiber = Fiber::new(move |s: &Suspender<(), ()>, ()| {
        let _guard = CountDrop(counter);
        let caught = catch_unwind(AssertUnwindSafe(|| s.suspend(())));
        assert!(caught.is_err());
        // A stubborn body suspends once more; the drop asks it again.
        s.suspend(());
    });
    fiber.resume(());
    drop(fiber);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn fibers_nest() {
    let mut outer = Fiber::new(|s: &Suspender<(), u32>, ()| {
        let mut inner = Fiber::new(|s2: &Suspender<(), u32>, ()| {
            s2.suspend(1);
            s2.suspend(2);
            3
        });
        while let FiberResult::Yield(v) = inner.resume(()) {
            s.suspend(v * 10);
        }
        99
    });
    assert_eq!(outer.resume(()), FiberResult::Yield(10));
    assert_eq!(outer.resume(()), FiberResult::Yield(20));
    assert_eq!(outer.resume(()), FiberResult::Return(99));
}

#[test]
fn a_send_fiber_resumes_on_other_threads() {
    let mut fiber = Fiber::new(
        |s: &Suspender<u64, std::thread::ThreadId>, mut total: u64| {
            for _ in 0..3 {
                total += s.suspend(std::thread::current().id());
            }
            total
        },
    );
    let mut threads = Vec::new();
    for round in 0..3u64 {
        let (fiber_back, thread) = std::thread::spawn(move || {
            let seen = fiber.resume(round).into_yield().unwrap();
            (fiber, seen)
        })
        .join()
        .unwrap();
        fiber = fiber_back;
        threads.push(thread);
    }
    assert_eq!(fiber.resume(10), FiberResult::Return(13));
    threads.dedup();
    assert_eq!(threads.len(), 3, "each resume ran on its own thread");
}

#[test]
fn large_bodies_are_boxed_instead_of_filling_the_stack() {
    let big = [7u8; 64 * 1024];
    let stack = Stack::new(Stack::MIN_SIZE).unwrap();
    let mut fiber = Fiber::with_stack(stack, move |_: &Suspender, ()| {
        big.iter().map(|&b| b as u64).sum::<u64>()
    });
    assert_eq!(fiber.resume(()), FiberResult::Return(7 * 64 * 1024));
}

#[test]
fn pooled_stacks_are_reused_by_later_fibers() {
    let pool = StackPool::new(PoolConfig {
        stack_size: 32 * 1024,
        max_cached: 4,
        ..PoolConfig::default()
    });
    let first = {
        let mut fiber = Fiber::with_stack(pool.take().unwrap(), |_: &Suspender, ()| 1);
        fiber.resume(());
        fiber.stack().range()
    };
    assert_eq!(pool.cached(), 1);
    let mut fiber = Fiber::with_stack(pool.take().unwrap(), |_: &Suspender, ()| 2);
    assert_eq!(fiber.stack().range(), first);
    assert_eq!(fiber.resume(()), FiberResult::Return(2));
}

#[test]
fn many_suspended_fibers_keep_their_own_state() {
    let mut fibers: Vec<Fiber<u64, u64, u64>> = (0..500u64)
        .map(|id| {
            Fiber::new(move |s: &Suspender<u64, u64>, mut acc: u64| {
                for _ in 0..5 {
                    acc = acc.wrapping_mul(31).wrapping_add(id);
                    acc += s.suspend(acc);
                }
                acc
            })
        })
        .collect();
    let mut expected: Vec<u64> = (0..500).map(|_| 1).collect();
    let mut inputs: Vec<u64> = vec![1; 500];
    for _round in 0..5 {
        for (id, fiber) in fibers.iter_mut().enumerate() {
            let acc = expected[id].wrapping_mul(31).wrapping_add(id as u64);
            assert_eq!(fiber.resume(inputs[id]), FiberResult::Yield(acc));
            expected[id] = acc + 2;
            inputs[id] = 2;
        }
    }
    for (id, fiber) in fibers.iter_mut().enumerate() {
        assert_eq!(fiber.resume(2), FiberResult::Return(expected[id]));
    }
}

/// Values travel in a register when they fit in a word and by address when
/// they do not; both ways, with padding, niches, zero sizes and destructors.
#[test]
fn values_of_every_shape_cross_the_switch() {
    fn round_trip<T>(values: Vec<T>)
    where
        T: Clone + PartialEq + std::fmt::Debug + Send + 'static,
    {
        let expected = values.clone();
        let mut fiber = Fiber::new(move |s: &Suspender<T, T>, first: T| {
            let mut seen = vec![first];
            for v in &values {
                seen.push(s.suspend(v.clone()));
            }
            seen
        });
        let mut inputs = expected.clone();
        inputs.insert(0, expected[0].clone());
        let mut yielded = Vec::new();
        let mut sent = Vec::new();
        for input in inputs {
            sent.push(input.clone());
            match fiber.resume(input) {
                FiberResult::Yield(y) => yielded.push(y),
                FiberResult::Return(seen) => {
                    assert_eq!(seen, sent);
                    assert_eq!(yielded, expected);
                    return;
                }
            }
        }
        panic!("the fiber did not return");
    }
    round_trip(vec![(), ()]);
    round_trip(vec![7u8, 0, 255]);
    round_trip(vec![(1u8, 0x0102_0304u32), (9, 0)]);
    round_trip(vec![Some(5u32), None, Some(u32::MAX)]);
    round_trip(vec![[1u8, 2, 3], [4, 5, 6]]);
    round_trip(vec![u128::MAX, 1 << 100]);
    round_trip(vec![Some(Box::new(3u64)), None]);
    round_trip(vec![
        "a".to_string(),
        "long enough to be on the heap".repeat(3),
    ]);
    round_trip(vec![[0x5au8; 100], [0xa5; 100]]);
}

#[test]
fn a_pooled_stack_freed_on_another_thread_returns_to_its_pool() {
    let pool = StackPool::new(PoolConfig {
        stack_size: 32 * 1024,
        max_cached: 4,
        ..PoolConfig::default()
    });
    let mut fiber = Fiber::with_stack(pool.take().unwrap(), |s: &Suspender<(), u32>, ()| {
        s.suspend(1);
        2
    });
    assert_eq!(fiber.resume(()), FiberResult::Yield(1));
    let range = fiber.stack().range();
    std::thread::spawn(move || {
        assert_eq!(fiber.resume(()), FiberResult::Return(2));
        // The stack becomes this thread's spare, then, when the thread
        // exits, goes to the pool's shared cache.
    })
    .join()
    .unwrap();
    assert_eq!(pool.cached(), 1);
    let again = Fiber::with_stack(pool.take().unwrap(), |_: &Suspender, ()| ());
    assert_eq!(again.stack().range(), range);
}
