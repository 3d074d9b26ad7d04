//! `cargo xtask bench serve`: HTTP throughput and tail latency of `weft serve`.
//!
//! Starts the release `weft` binary on the trivial handler guest twice, once with concurrent
//! instance reuse (the default) and once with one fresh instance per request, then once on a
//! handler that makes one upstream fetch to a small HTTP server this process runs on loopback,
//! and once more on the trivial handler with observability on (Prometheus metrics and W3C
//! Trace Context), to compare with the first.
//! Each configuration is loaded by `wrk` (a second process) over 64 keep-alive connections,
//! with the access log off (`--quiet`) on every side: what is measured is serving, not writing
//! a line per request to stderr. Prints:
//!
//! ```text
//! bench serve.rps weft_reuse=<req/s> weft_per_request=<req/s> ratio=<reuse/per_request>
//! bench serve.p99_ms weft_reuse=<ms> weft_per_request=<ms>
//! bench serve.fetch_rps weft_reuse=<req/s>
//! bench serve.observability_overhead ratio=<rps_on/rps_off>
//! ```
//!
//! The four servers run side by side and are measured in turns, `--rounds` times (default 3),
//! so that the noise of a shared machine falls on all of them alike; each figure is the median
//! of its rounds. Options: `--duration SECS` (measured seconds per run, default 5),
//! `--rounds N` and `--connections N` (default 64).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::guests;
use crate::util::{self, Result, cargo, target_dir};

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
/// How long `weft serve` may take to accept its first connection.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Unmeasured load before the first round: instances, stacks and caches warm up.
const WARMUP: Duration = Duration::from_secs(2);

struct Options {
    duration: Duration,
    rounds: usize,
    connections: usize,
}

/// One server configuration under test.
struct Config<'a> {
    name: &'static str,
    guest: &'a Path,
    flags: &'a [&'a str],
    /// Sent with every request.
    header: Option<&'a str>,
}

/// One `wrk` run's results.
#[derive(Debug)]
struct Load {
    requests_per_second: f64,
    p99_ms: f64,
}

pub fn run(args: &[String]) -> Result {
    let options = parse_options(args)?;
    util::ensure_packages("bench serve", &[("wrk", "wrk")])?;
    util::run(cargo().args([
        "build",
        "--release",
        "--package",
        "weft-cli",
        "--bin",
        "weft",
    ]))?;
    guests::build_all()?;
    let weft = target_dir()
        .join("release")
        .join(format!("weft{}", std::env::consts::EXE_SUFFIX));
    let trivial = guest_path(TRIVIAL_GUEST)?;
    let fetch = guest_path(FETCH_GUEST)?;

    let upstream = Upstream::start()?;
    let upstream_header = format!("x-upstream: http://{}/", upstream.addr);

    let configs = [
        Config {
            name: "reuse",
            guest: &trivial,
            flags: &[],
            header: None,
        },
        Config {
            name: "per_request",
            guest: &trivial,
            flags: &[PER_REQUEST_FLAG],
            header: None,
        },
        Config {
            name: "fetch",
            guest: &fetch,
            flags: &[],
            header: Some(&upstream_header),
        },
        Config {
            name: "observed",
            guest: &trivial,
            flags: OBSERVED_FLAGS,
            header: None,
        },
    ];
    let [reuse, per_request, fetching, observed] = measure_in_turns(&weft, &configs, &options)?;
    drop(upstream);

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
        "bench serve.fetch_rps weft_reuse={:.0}",
        fetching.requests_per_second
    );
    println!(
        "bench serve.observability_overhead ratio={:.3}",
        ratio_of(observed.requests_per_second, reuse.requests_per_second)
    );
    Ok(())
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut options = Options {
        duration: Duration::from_secs(5),
        rounds: 3,
        connections: 64,
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
            "--duration" => options.duration = Duration::from_secs(value("--duration")?),
            "--rounds" => options.rounds = value("--rounds")? as usize,
            "--connections" => options.connections = value("--connections")? as usize,
            other => {
                return Err(format!(
                    "bench serve: unknown option `{other}` \
                     (known: --duration SECS, --rounds N, --connections N)"
                ));
            }
        }
    }
    Ok(options)
}

fn guest_path(name: &str) -> Result<PathBuf> {
    let path = guests::output_dir().join(format!("{name}.wasm"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("guest {} was not built", path.display()))
    }
}

/// Starts a server per configuration, warms each up, then measures them in turns; returns each
/// configuration's median requests per second and median p99 over the rounds.
fn measure_in_turns<const N: usize>(
    weft: &Path,
    configs: &[Config<'_>; N],
    options: &Options,
) -> Result<[Load; N]> {
    let mut servers = Vec::with_capacity(N);
    for config in configs {
        let server = WeftServer::start(weft, config.guest, config.flags)?;
        eprintln!(
            "xtask: bench serve: {}: {} {} on http://{}/",
            config.name,
            config
                .guest
                .file_name()
                .unwrap_or_default()
                .to_string_lossy(),
            config.flags.join(" "),
            server.addr
        );
        servers.push(server);
    }
    let url = |server: &WeftServer| format!("http://{}/", server.addr);
    for (config, server) in configs.iter().zip(&servers) {
        wrk(&url(server), config.header, WARMUP, options.connections)?;
    }
    let mut rounds: Vec<Vec<Load>> = (0..N).map(|_| Vec::new()).collect();
    for round in 1..=options.rounds {
        for ((config, server), loads) in configs.iter().zip(&servers).zip(&mut rounds) {
            let load = wrk(
                &url(server),
                config.header,
                options.duration,
                options.connections,
            )?;
            eprintln!(
                "xtask: bench serve: round {round} {}: {:.0} req/s, p99 {:.3} ms",
                config.name, load.requests_per_second, load.p99_ms
            );
            loads.push(load);
        }
    }
    for server in servers {
        server.stop()?;
    }
    Ok(std::array::from_fn(|i| Load {
        requests_per_second: median(rounds[i].iter().map(|l| l.requests_per_second)),
        p99_ms: median(rounds[i].iter().map(|l| l.p99_ms)),
    }))
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

fn wrk(url: &str, header: Option<&str>, duration: Duration, connections: usize) -> Result<Load> {
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
        // Far above any healthy latency here: a request this slow is a hang, and wrk reports it
        // as a timeout, which fails the bench.
        "--timeout",
        "2s",
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

/// A `weft serve` child process on a free loopback port.
struct WeftServer {
    child: Child,
    addr: SocketAddr,
}

impl WeftServer {
    fn start(weft: &Path, guest: &Path, flags: &[&str]) -> Result<WeftServer> {
        let addr = free_loopback_addr()?;
        let mut cmd = Command::new(weft);
        cmd.arg("serve")
            .arg(guest)
            .args(["--listen", &addr.to_string(), "--quiet"])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let description = util::describe(&cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start `{description}`: {e}"))?;
        let mut server = WeftServer { child, addr };
        let started = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("`{description}` exited at startup: {status}"));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(server);
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                return Err(format!(
                    "`{description}` accepts no connection after {STARTUP_TIMEOUT:?}"
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asks for a clean shutdown (SIGTERM), and insists (SIGKILL) if it does not come.
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
        eprintln!("xtask: bench serve: weft serve ignored SIGTERM for 15 s; killing it");
        Ok(())
    }
}

impl Drop for WeftServer {
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
