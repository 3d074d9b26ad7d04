//! `cargo xtask bench sched`: weft-sched and tokio's multi-thread runtime (same worker count)
//! side by side in one process, printing `bench sched.<metric> weft=... tokio=... ratio=...`.
//!
//! How each side is set up (everything timed runs inside the runtime, on a task/green thread):
//! - spawn_join_ns: one task spawns a trivial task and joins it, N times in a row.
//! - yield_pingpong_ns: two tasks each yield N times; nanoseconds per yield.
//! - chained_spawn_ns: each task spawns the next (detached) N deep; the last signals a channel
//!   the main thread waits on; nanoseconds per link.
//! - timer_late_us: one task sleeps 1.0, 1.1, ... 1.9 ms in turn; lateness = observed minus
//!   requested duration; median over all sleeps of all runs.
//! - sleepers_10k: 10,000 tasks each sleep 1 s at the same time; wall time from the first spawn
//!   to the last join, and the process CPU time (user + system, all threads) over that span.
//!   A first, cold run per side is printed on a comment line and not counted.
//!
//! Each figure is the median of several runs.

use std::hint::black_box;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const RUNS: usize = 5;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

fn line(metric: &str, weft: f64, tokio: f64, precision: usize) {
    println!(
        "bench sched.{metric} weft={weft:.precision$} tokio={tokio:.precision$} ratio={:.2}",
        weft / tokio
    );
}

fn process_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: the pointer is to a live `MaybeUninit<rusage>` that getrusage may write; the
    // struct was zero-initialised and all-zero bytes are a valid `rusage` (plain integers), so
    // `assume_init` is sound whether or not the call filled it.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

struct Runtimes {
    weft: weft_sched::Runtime,
    tokio: tokio::runtime::Runtime,
}

impl Runtimes {
    fn new(workers: usize) -> Runtimes {
        Runtimes {
            weft: weft_sched::Builder::new().workers(workers).build().unwrap(),
            tokio: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// Runs `weft_body` in a green thread and `tokio_body` in a tokio task, each `RUNS` times
    /// (after a warm-up), returning the medians of what they return.
    fn compare<Fut>(
        &self,
        weft_body: impl FnOnce() -> f64 + Send + Clone + 'static,
        tokio_body: impl Fn() -> Fut,
    ) -> (f64, f64)
    where
        Fut: Future<Output = f64> + Send + 'static,
    {
        let run_weft = || self.weft.spawn(weft_body.clone()).join().unwrap();
        let run_tokio = || self.tokio.block_on(self.tokio.spawn(tokio_body())).unwrap();
        run_weft();
        run_tokio();
        let mut weft = Vec::new();
        let mut tokio = Vec::new();
        for _ in 0..RUNS {
            weft.push(run_weft());
            tokio.push(run_tokio());
        }
        (median(weft), median(tokio))
    }
}

fn spawn_join(rts: &Runtimes) {
    const N: u32 = 20_000;
    let (weft, tokio) = rts.compare(
        || {
            let start = Instant::now();
            for i in 0..N {
                black_box(weft_sched::spawn(move || black_box(i)).join().unwrap());
            }
            start.elapsed().as_nanos() as f64 / f64::from(N)
        },
        || async {
            let start = Instant::now();
            for i in 0..N {
                black_box(tokio::spawn(async move { black_box(i) }).await.unwrap());
            }
            start.elapsed().as_nanos() as f64 / f64::from(N)
        },
    );
    line("spawn_join_ns", weft, tokio, 1);
}

fn yield_pingpong(rts: &Runtimes) {
    const N: u32 = 100_000;
    let (weft, tokio) = rts.compare(
        || {
            let start = Instant::now();
            let tasks: Vec<_> = (0..2)
                .map(|_| {
                    weft_sched::spawn(|| {
                        for _ in 0..N {
                            weft_sched::yield_now();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.join().unwrap();
            }
            start.elapsed().as_nanos() as f64 / f64::from(2 * N)
        },
        || async {
            let start = Instant::now();
            let tasks: Vec<_> = (0..2)
                .map(|_| {
                    tokio::spawn(async {
                        for _ in 0..N {
                            tokio::task::yield_now().await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            start.elapsed().as_nanos() as f64 / f64::from(2 * N)
        },
    );
    line("yield_pingpong_ns", weft, tokio, 1);
}

fn chained_spawn(rts: &Runtimes) {
    const N: u32 = 10_000;
    fn weft_chain(n: u32, done: mpsc::Sender<()>) {
        if n == 0 {
            done.send(()).unwrap();
        } else {
            drop(weft_sched::spawn(move || weft_chain(n - 1, done)));
        }
    }
    fn tokio_chain(n: u32, done: mpsc::Sender<()>) {
        if n == 0 {
            done.send(()).unwrap();
        } else {
            drop(tokio::spawn(async move { tokio_chain(n - 1, done) }));
        }
    }
    let run_weft = || {
        let (tx, rx) = mpsc::channel();
        let start = Instant::now();
        drop(rts.weft.spawn(move || weft_chain(N, tx)));
        rx.recv().unwrap();
        start.elapsed().as_nanos() as f64 / f64::from(N)
    };
    let run_tokio = || {
        let (tx, rx) = mpsc::channel();
        let start = Instant::now();
        drop(rts.tokio.spawn(async move { tokio_chain(N, tx) }));
        rx.recv().unwrap();
        start.elapsed().as_nanos() as f64 / f64::from(N)
    };
    run_weft();
    run_tokio();
    let mut weft = Vec::new();
    let mut tokio = Vec::new();
    for _ in 0..RUNS {
        weft.push(run_weft());
        tokio.push(run_tokio());
    }
    line("chained_spawn_ns", median(weft), median(tokio), 1);
}

fn timer_lateness(rts: &Runtimes) {
    const SLEEPS: u64 = 100;
    fn request(i: u64) -> Duration {
        Duration::from_micros(1000 + (i % 10) * 100)
    }
    let weft_samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let tokio_samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (ws, ts) = (weft_samples.clone(), tokio_samples.clone());
    rts.compare(
        move || {
            for i in 0..SLEEPS {
                let start = Instant::now();
                weft_sched::sleep(request(i));
                let late = start.elapsed().saturating_sub(request(i));
                ws.lock().unwrap().push(late.as_nanos() as f64 / 1000.0);
            }
            0.0
        },
        move || {
            let ts = ts.clone();
            async move {
                for i in 0..SLEEPS {
                    let start = Instant::now();
                    tokio::time::sleep(request(i)).await;
                    let late = start.elapsed().saturating_sub(request(i));
                    ts.lock().unwrap().push(late.as_nanos() as f64 / 1000.0);
                }
                0.0
            }
        },
    );
    let weft = median(weft_samples.lock().unwrap().clone());
    let tokio = median(tokio_samples.lock().unwrap().clone());
    line("timer_late_us", weft, tokio, 1);
}

fn sleepers_10k(rts: &Runtimes) {
    const TASKS: usize = 10_000;
    const SLEEP: Duration = Duration::from_secs(1);
    let run_weft = || {
        let cpu = process_cpu_seconds();
        let start = Instant::now();
        rts.weft
            .spawn(|| {
                let tasks: Vec<_> = (0..TASKS)
                    .map(|_| weft_sched::spawn(|| weft_sched::sleep(SLEEP)))
                    .collect();
                for t in tasks {
                    t.join().unwrap();
                }
            })
            .join()
            .unwrap();
        (start.elapsed().as_secs_f64(), process_cpu_seconds() - cpu)
    };
    let run_tokio = || {
        let cpu = process_cpu_seconds();
        let start = Instant::now();
        rts.tokio
            .block_on(rts.tokio.spawn(async {
                let tasks: Vec<_> = (0..TASKS)
                    .map(|_| tokio::spawn(tokio::time::sleep(SLEEP)))
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            }))
            .unwrap();
        (start.elapsed().as_secs_f64(), process_cpu_seconds() - cpu)
    };
    // The first run of each side maps 10,000 fiber stacks (weft) or grows the allocator's heap
    // (tokio); it is reported on a comment line and left out of the medians.
    let (cold_weft_wall, cold_weft_cpu) = run_weft();
    let (cold_tokio_wall, cold_tokio_cpu) = run_tokio();
    println!(
        "# sleepers_10k first (cold) run: weft wall={cold_weft_wall:.3} cpu={cold_weft_cpu:.3}, tokio wall={cold_tokio_wall:.3} cpu={cold_tokio_cpu:.3}"
    );
    let runs = 3;
    let (mut ww, mut wc, mut tw, mut tc) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let (wall, cpu) = run_weft();
        ww.push(wall);
        wc.push(cpu);
        let (wall, cpu) = run_tokio();
        tw.push(wall);
        tc.push(cpu);
    }
    println!(
        "# sleepers_10k runs: weft wall={ww:.3?} cpu={wc:.3?}, tokio wall={tw:.3?} cpu={tc:.3?}"
    );
    println!(
        "bench sched.sleepers_10k_wall_s weft={:.3} tokio={:.3}",
        median(ww),
        median(tw)
    );
    println!(
        "bench sched.sleepers_10k_cpu_s weft={:.3} tokio={:.3}",
        median(wc),
        median(tc)
    );
}

fn main() {
    // `cargo bench` passes --bench; any other argument filters by metric name.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("# sched bench: {workers} workers on each side, {RUNS} runs, medians");
    let rts = Runtimes::new(workers);
    if wanted("spawn_join") {
        spawn_join(&rts);
    }
    if wanted("yield_pingpong") {
        yield_pingpong(&rts);
    }
    if wanted("chained_spawn") {
        chained_spawn(&rts);
    }
    if wanted("timer_late") {
        timer_lateness(&rts);
    }
    if wanted("sleepers_10k") {
        sleepers_10k(&rts);
    }
}
