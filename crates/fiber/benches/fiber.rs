//! `cargo xtask bench fiber`: weft-fiber and corosensei side by side in one
//! process, printing `bench fiber.<metric> weft=... corosensei=... ratio=...`.
//!
//! How each side is set up:
//! - switch_roundtrip_ns: one fiber that suspends in a loop; one resume plus
//!   the suspend that answers it is one round trip. Both sides pass a u64 in
//!   and out.
//! - create_pooled_ns: the life of a short fiber on a recycled stack: create
//!   it, run it to completion (one resume), drop it. weft takes its stack
//!   from a `StackPool` and gives it back on drop; corosensei reuses one
//!   `DefaultStack`, handing it from one coroutine to the next with
//!   `Coroutine::with_stack` and `into_stack`, the cheapest it can do (no
//!   pool bookkeeping at all).
//! - create_fresh_ns: the same life with a newly mapped stack each time,
//!   256 KiB usable on both sides (weft `Stack::new`, corosensei
//!   `DefaultStack::new`), unmapped on drop.
//! - rss_per_suspended_kib: 100,000 fibers on 64 KiB stacks, each resumed
//!   once so it is suspended inside its body; resident memory growth per
//!   fiber from /proc/self/statm.
//!
//! Each figure is the median of several runs of the timed loop; the runs of
//! the two sides alternate (weft, corosensei, corosensei, weft, ...), so that
//! a shared machine whose speed drifts slows both sides alike.

use std::hint::black_box;
use std::time::Instant;

use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult};
use weft_fiber::{Fiber, FiberResult, PoolConfig, Stack, StackPool, Suspender};

const RUNS: usize = 9;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

/// Nanoseconds per iteration of one run of `body(iterations)`.
fn time_run(iterations: u64, body: &mut impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    body(iterations);
    start.elapsed().as_nanos() as f64 / iterations as f64
}

/// Median nanoseconds per iteration of `weft(iterations)` and of
/// `peer(iterations)`, their runs interleaved (each goes first every other
/// round).
fn measure(iterations: u64, mut weft: impl FnMut(u64), mut peer: impl FnMut(u64)) -> (f64, f64) {
    // Warm up.
    weft(iterations / 10);
    peer(iterations / 10);
    let (mut weft_ns, mut peer_ns) = (Vec::new(), Vec::new());
    for round in 0..RUNS {
        if round % 2 == 0 {
            weft_ns.push(time_run(iterations, &mut weft));
            peer_ns.push(time_run(iterations, &mut peer));
        } else {
            peer_ns.push(time_run(iterations, &mut peer));
            weft_ns.push(time_run(iterations, &mut weft));
        }
    }
    (median(weft_ns), median(peer_ns))
}

fn line(metric: &str, weft: f64, corosensei: f64) {
    println!(
        "bench fiber.{metric} weft={weft:.1} corosensei={corosensei:.1} ratio={:.2}",
        weft / corosensei
    );
}

fn switch_roundtrip() {
    const N: u64 = 2_000_000;
    let mut weft = Fiber::new(|s: &Suspender<u64, u64>, mut x: u64| {
        loop {
            x = s.suspend(x.wrapping_add(1));
        }
    });
    let mut coro = Coroutine::with_stack(
        DefaultStack::new(256 * 1024).unwrap(),
        |y: &corosensei::Yielder<u64, u64>, mut x: u64| {
            loop {
                x = y.suspend(x.wrapping_add(1));
            }
        },
    );
    let (weft_ns, coro_ns) = measure(
        N,
        |n| {
            for i in 0..n {
                black_box(weft.resume(black_box(i)));
            }
        },
        |n| {
            for i in 0..n {
                black_box(coro.resume(black_box(i)));
            }
        },
    );
    line("switch_roundtrip_ns", weft_ns, coro_ns);
}

fn create_pooled() {
    const N: u64 = 1_000_000;
    let pool = StackPool::new(PoolConfig {
        stack_size: 64 * 1024,
        max_cached: 16,
        ..PoolConfig::default()
    });
    let mut stack = Some(DefaultStack::new(64 * 1024).unwrap());
    let (weft_ns, coro_ns) = measure(
        N,
        |n| {
            for i in 0..n {
                let mut fiber = Fiber::with_stack(
                    pool.take().unwrap(),
                    move |_: &Suspender<u64, ()>, x: u64| x + i,
                );
                assert!(matches!(black_box(fiber.resume(1)), FiberResult::Return(_)));
            }
        },
        |n| {
            for i in 0..n {
                let mut coro = Coroutine::with_stack(
                    stack.take().unwrap(),
                    move |_: &corosensei::Yielder<u64, ()>, x: u64| x + i,
                );
                assert!(matches!(
                    black_box(coro.resume(1)),
                    CoroutineResult::Return(_)
                ));
                stack = Some(coro.into_stack());
            }
        },
    );
    line("create_pooled_ns", weft_ns, coro_ns);
}

fn create_fresh() {
    const N: u64 = 20_000;
    let (weft_ns, coro_ns) = measure(
        N,
        |n| {
            for i in 0..n {
                let stack = Stack::new(256 * 1024).unwrap();
                let mut fiber =
                    Fiber::with_stack(stack, move |_: &Suspender<u64, ()>, x: u64| x + i);
                assert!(matches!(black_box(fiber.resume(1)), FiberResult::Return(_)));
            }
        },
        |n| {
            for i in 0..n {
                let stack = DefaultStack::new(256 * 1024).unwrap();
                let mut coro = Coroutine::with_stack(
                    stack,
                    move |_: &corosensei::Yielder<u64, ()>, x: u64| x + i,
                );
                assert!(matches!(
                    black_box(coro.resume(1)),
                    CoroutineResult::Return(_)
                ));
            }
        },
    );
    line("create_fresh_ns", weft_ns, coro_ns);
}

fn resident_kib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: f64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
    pages * page / 1024.0
}

const MAP_COUNT_KNOB: &str = "/proc/sys/vm/max_map_count";

/// Each stack is two mappings (guard + usable); 100,000 stacks need more
/// than Linux's default 65,530 per process. Raises the limit when allowed;
/// returns the value to restore afterwards.
fn make_room_for_mappings(needed: usize) -> Result<Option<usize>, String> {
    let current: usize = std::fs::read_to_string(MAP_COUNT_KNOB)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(usize::MAX);
    if current >= needed {
        return Ok(None);
    }
    std::fs::write(MAP_COUNT_KNOB, needed.to_string())
        .map(|()| Some(current))
        .map_err(|e| {
            format!("vm.max_map_count is {current}, {needed} needed ({e}); run as root or `sysctl -w vm.max_map_count={needed}`")
        })
}

fn rss_per_suspended() {
    const FIBERS: usize = 100_000;
    let restore = match make_room_for_mappings(2 * FIBERS + 65_536) {
        Ok(restore) => restore,
        Err(why) => {
            println!("bench fiber.rss_per_suspended_kib skipped: {why}");
            return;
        }
    };
    let before = resident_kib();
    let mut fibers = Vec::with_capacity(FIBERS);
    for i in 0..FIBERS {
        let stack = Stack::new(64 * 1024).unwrap();
        let mut fiber = Fiber::with_stack(stack, move |s: &Suspender<u64, u64>, x: u64| {
            let mut local = [x; 8];
            local[i % 8] = s.suspend(local.iter().sum());
            local.iter().sum::<u64>()
        });
        black_box(fiber.resume(i as u64));
        fibers.push(fiber);
    }
    let after = resident_kib();
    println!(
        "bench fiber.rss_per_suspended_kib weft={:.2}",
        (after - before) / FIBERS as f64
    );
    drop(fibers);
    if let Some(previous) = restore {
        let _ = std::fs::write(MAP_COUNT_KNOB, previous.to_string());
    }
}

fn main() {
    // `cargo bench` passes --bench; any other argument filters by metric name.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    if wanted("switch_roundtrip") {
        switch_roundtrip();
    }
    if wanted("create_pooled") {
        create_pooled();
    }
    if wanted("create_fresh") {
        create_fresh();
    }
    if wanted("rss_per_suspended") {
        rss_per_suspended();
    }
}
