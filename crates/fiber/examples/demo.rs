//! The weft-fiber demo (`cargo xtask demo` runs it): a generator, two fibers
//! playing ping-pong through their resumer, a panic crossing the fiber
//! boundary, a fiber resumed on three OS threads, and ten thousand fibers
//! alive at once on pooled stacks.

use std::panic::{AssertUnwindSafe, catch_unwind};

use weft_fiber::{Fiber, FiberResult, PoolConfig, StackPool, Suspender};

fn main() {
    // 1. A generator: Fibonacci numbers, produced lazily from a plain loop.
    let mut fib = Fiber::new(|s: &Suspender<(), u64>, ()| {
        let (mut a, mut b) = (0u64, 1u64);
        for _ in 0..12 {
            s.suspend(a);
            (a, b) = (b, a + b);
        }
        "done"
    });
    let mut numbers = Vec::new();
    while let FiberResult::Yield(n) = fib.resume(()) {
        numbers.push(n.to_string());
    }
    println!("generator:  {}", numbers.join(" "));

    // 2. Ping-pong: each player suspends with its move; the resumer relays it.
    let player = |name: &'static str| {
        Fiber::new(move |s: &Suspender<u32, String>, mut ball: u32| {
            loop {
                ball = s.suspend(format!("{name} hits {ball}"));
                ball += 1;
            }
        })
    };
    let (mut ping, mut pong) = (player("ping"), player("pong"));
    let mut rally = Vec::new();
    for ball in 0..3 {
        rally.push(ping.resume(ball * 2).into_yield().unwrap());
        rally.push(pong.resume(ball * 2 + 1).into_yield().unwrap());
    }
    println!("ping-pong:  {}", rally.join(", "));

    // 3. A panic inside a fiber comes out of resume(), in the resumer.
    let mut faulty = Fiber::new(|s: &Suspender<(), ()>, ()| {
        s.suspend(());
        panic!("a bug deep inside the fiber");
    });
    faulty.resume(());
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let caught = catch_unwind(AssertUnwindSafe(|| faulty.resume(())));
    std::panic::set_hook(quiet);
    let message = caught.unwrap_err();
    println!(
        "panic:      resume() re-raised {:?}; the fiber is finished: {}",
        message.downcast_ref::<&str>().unwrap(),
        faulty.is_finished()
    );

    // 4. One fiber, suspended and resumed on three different OS threads.
    let mut traveller = Fiber::new(|s: &Suspender<(), String>, ()| {
        for leg in 1..=3 {
            let here = std::thread::current().name().unwrap_or("?").to_string();
            s.suspend(format!("leg {leg} on {here}"));
        }
    });
    let mut legs = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        let (back, leg) = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let leg = traveller.resume(()).into_yield().unwrap();
                (traveller, leg)
            })
            .unwrap()
            .join()
            .unwrap();
        traveller = back;
        legs.push(leg);
    }
    println!("migration:  {}", legs.join(", "));

    // 5. Ten thousand live fibers on pooled 16 KiB stacks, then recycled.
    let pool = StackPool::new(PoolConfig {
        stack_size: 16 * 1024,
        max_cached: 10_000,
        ..PoolConfig::default()
    });
    let mut crowd: Vec<Fiber<u64, u64, u64>> = (0..10_000u64)
        .map(|id| {
            Fiber::with_stack(pool.take().unwrap(), move |s: &Suspender<u64, u64>, x| {
                let y = s.suspend(x + id);
                x + y + id
            })
        })
        .collect();
    let yielded: u64 = crowd
        .iter_mut()
        .map(|f| f.resume(1).into_yield().unwrap())
        .sum();
    let returned: u64 = crowd
        .iter_mut()
        .map(|f| f.resume(1).into_return().unwrap())
        .sum();
    drop(crowd);
    println!(
        "crowd:      10000 fibers suspended at once (sum of yields {yielded}, of returns {returned}); \
         {} stacks back in the pool for the next burst",
        pool.cached()
    );
}
