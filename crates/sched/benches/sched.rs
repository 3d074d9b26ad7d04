//! `cargo xtask bench sched`: weft-sched and tokio's multi-thread runtime (same worker count)
//! side by side in one process, printing
//! `bench sched.<metric> weft=<median> tokio=<median> ratio=<weft/tokio> weft_min=.. weft_max=..
//! tokio_min=.. tokio_max=..` (one line per metric).
//!
//! How each side is set up (everything timed runs inside the runtime, on a task/green thread):
//! - spawn_join_ns: one task spawns a trivial task and joins it, N times in a row.
//! - yield_pingpong_ns: two tasks each yield N times; nanoseconds per yield.
//! - chained_spawn_ns: each task spawns the next (detached) N deep; the last signals a channel
//!   the main thread waits on; nanoseconds per link.
//! - timer_late_us: one task sleeps 1.0, 1.1, ... 1.9 ms in turn; lateness = observed minus
//!   requested duration; one figure per run (the median over its sleeps).
//! - sleepers_10k: 10,000 tasks each sleep 1 s at the same time; wall time from the first spawn
//!   to the last join, and the process CPU time (user + system, all threads) over that span.
//!   A first, cold run per side is printed on a comment line and not counted.
//!
//! Runs of the two sides alternate (weft, tokio, weft, ...) after one warm-up run each, so a
//! neighbour's load on a shared machine hits both sides alike; the median, min and max are over
//! those runs. The header lines say what the figures were measured on: CPU model and count, the
//! cpufreq governor, `RUST_BACKTRACE`, and thread placement (neither runtime pins its workers;
//! the header prints the CPUs the process may run on).

use std::hint::black_box;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Runs per side of the short benchmarks (each takes a few milliseconds).
const RUNS: usize = 15;
/// Runs per side of the 10,000-sleeper benchmark (each takes a second).
const SLEEPER_RUNS: usize = 5;

/// The median, min and max of one side's runs.
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(mut samples: Vec<f64>) -> Stats {
        assert!(!samples.is_empty());
        samples.sort_by(|a, b| a.total_cmp(b));
        Stats {
            median: samples[samples.len() / 2],
            min: samples[0],
            max: samples[samples.len() - 1],
        }
    }
}

fn line(metric: &str, weft: Vec<f64>, tokio: Vec<f64>, precision: usize) {
    let (w, t) = (Stats::of(weft), Stats::of(tokio));
    println!(
        "bench sched.{metric} weft={:.precision$} tokio={:.precision$} ratio={:.2} \
         weft_min={:.precision$} weft_max={:.precision$} tokio_min={:.precision$} tokio_max={:.precision$}",
        w.median,
        t.median,
        w.median / t.median,
        w.min,
        w.max,
        t.min,
        t.max,
    );
}

/// What the figures were measured on, as `#` comment lines.
fn print_environment(workers: usize) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim())
        })
        .unwrap_or("unknown");
    let online = std::thread::available_parallelism().map_or(0, |n| n.get());
    let logical = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    println!(
        "# cpu: {model}; {logical} logical CPUs in /proc/cpuinfo, {online} available to this process"
    );
    let governor = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor");
    match governor {
        Ok(g) => println!("# cpufreq governor: {}", g.trim()),
        Err(_) => println!("# cpufreq governor: not visible"),
    }
    match std::env::var("RUST_BACKTRACE") {
        Ok(v) => println!("# RUST_BACKTRACE={v}"),
        Err(_) => println!("# RUST_BACKTRACE not set"),
    }
    println!(
        "# placement: neither runtime pins its threads ({workers} workers each side, scheduled by \
         the OS on CPUs {})",
        allowed_cpus()
    );
}

/// The CPUs this process may run on, e.g. `0-1`, from its affinity mask.
fn allowed_cpus() -> String {
    let mut set = std::mem::MaybeUninit::<libc::cpu_set_t>::zeroed();
    // SAFETY: the pointer is to a live, zero-initialised `cpu_set_t` of the size passed;
    // sched_getaffinity only writes within it, and an all-zero `cpu_set_t` is valid.
    let set = unsafe {
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), set.as_mut_ptr()) != 0 {
            return "unknown".to_string();
        }
        set.assume_init()
    };
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the size of the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    let mut ranges: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        while i + 1 < cpus.len() && cpus[i + 1] == cpus[i] + 1 {
            i += 1;
        }
        ranges.push(if cpus[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", cpus[i])
        });
        i += 1;
    }
    ranges.join(",")
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

/// One warm-up run of each side, then `runs` alternating runs of each; returns every side's
/// figures.
fn alternate(
    runs: usize,
    mut run_weft: impl FnMut() -> f64,
    mut run_tokio: impl FnMut() -> f64,
) -> (Vec<f64>, Vec<f64>) {
    run_weft();
    run_tokio();
    let mut weft = Vec::with_capacity(runs);
    let mut tokio = Vec::with_capacity(runs);
    for _ in 0..runs {
        weft.push(run_weft());
        tokio.push(run_tokio());
    }
    (weft, tokio)
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

    /// Runs `weft_body` in a green thread and `tokio_body` in a tokio task, alternating (see
    /// `alternate`), returning what every run returned.
    fn compare<Fut>(
        &self,
        weft_body: impl FnOnce() -> f64 + Send + Clone + 'static,
        tokio_body: impl Fn() -> Fut,
    ) -> (Vec<f64>, Vec<f64>)
    where
        Fut: Future<Output = f64> + Send + 'static,
    {
        self.compare_runs(RUNS, weft_body, tokio_body)
    }

    fn compare_runs<Fut>(
        &self,
        runs: usize,
        weft_body: impl FnOnce() -> f64 + Send + Clone + 'static,
        tokio_body: impl Fn() -> Fut,
    ) -> (Vec<f64>, Vec<f64>)
    where
        Fut: Future<Output = f64> + Send + 'static,
    {
        alternate(
            runs,
            || self.weft.spawn(weft_body.clone()).join().unwrap(),
            || self.tokio.block_on(self.tokio.spawn(tokio_body())).unwrap(),
        )
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
    let (weft, tokio) = alternate(RUNS, run_weft, run_tokio);
    line("chained_spawn_ns", weft, tokio, 1);
}

fn timer_lateness(rts: &Runtimes) {
    const SLEEPS: u64 = 100;
    /// Each run takes about 150 ms.
    const TIMER_RUNS: usize = 7;
    fn request(i: u64) -> Duration {
        Duration::from_micros(1000 + (i % 10) * 100)
    }
    fn median_us(mut late: Vec<Duration>) -> f64 {
        late.sort();
        late[late.len() / 2].as_nanos() as f64 / 1000.0
    }
    let (weft, tokio) = rts.compare_runs(
        TIMER_RUNS,
        || {
            let late = (0..SLEEPS).map(|i| {
                let start = Instant::now();
                weft_sched::sleep(request(i));
                start.elapsed().saturating_sub(request(i))
            });
            median_us(late.collect())
        },
        || async {
            let mut late = Vec::new();
            for i in 0..SLEEPS {
                let start = Instant::now();
                tokio::time::sleep(request(i)).await;
                late.push(start.elapsed().saturating_sub(request(i)));
            }
            median_us(late)
        },
    );
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
    // (tokio); it is reported on a comment line and left out of the figures.
    let (cold_weft_wall, cold_weft_cpu) = run_weft();
    let (cold_tokio_wall, cold_tokio_cpu) = run_tokio();
    println!(
        "# sleepers_10k first (cold) run: weft wall={cold_weft_wall:.3} cpu={cold_weft_cpu:.3}, tokio wall={cold_tokio_wall:.3} cpu={cold_tokio_cpu:.3}"
    );
    let (mut ww, mut wc, mut tw, mut tc) = (vec![], vec![], vec![], vec![]);
    for _ in 0..SLEEPER_RUNS {
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
    line("sleepers_10k_wall_s", ww, tw, 3);
    line("sleepers_10k_cpu_s", wc, tc, 3);
}

fn main() {
    // `cargo bench` passes --bench; any other argument filters by metric name.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "# sched bench: {workers} workers on each side; {RUNS} runs per side ({SLEEPER_RUNS} for the \
         sleepers), alternating; median, min, max"
    );
    print_environment(workers);
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
