//! `cargo xtask demo`: the main demo.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::guests;
use crate::util::{Result, cargo};

/// The demo guests of `guests/demos/`, run through `weft run` in this order.
const DEMO_GUESTS: &[(&str, &str)] = &[
    (
        "ping_pong",
        "main and one context hit a ball back and forth",
    ),
    (
        "generator",
        "generators, one yielding from deep inside a tree walk",
    ),
    (
        "greenlets",
        "a greenlet-like library on the raw context API",
    ),
    (
        "producer_consumer",
        "producers and consumers on a bounded queue, scheduled cooperatively",
    ),
];

pub fn run() -> Result {
    eprintln!("== weft-fiber: generators, ping-pong, and panics crossing a fiber boundary ==");
    crate::util::run(cargo().args([
        "run",
        "--quiet",
        "--release",
        "--package",
        "weft-fiber",
        "--example",
        "demo",
    ]))?;

    guests::build_all()?;
    // The debug build of weft is the one the tests share; a release build of wasmtime would
    // cost minutes for guests that run in milliseconds.
    crate::util::run(cargo().args(["build", "--quiet", "--package", "weft-cli", "--bin", "weft"]))?;
    let weft = crate::util::target_dir().join("debug").join("weft");
    for (name, what) in DEMO_GUESTS {
        eprintln!("\n== weft run {name}.wasm: {what} ==");
        let guest = guests::output_dir().join(format!("{name}.wasm"));
        crate::util::run(std::process::Command::new(&weft).arg("run").arg(guest))?;
    }
    serve_demo(&weft)
}

/// `weft serve` on loopback: server A runs the handler guest of the end-to-end tests, server B
/// a hello handler that A fetches from. Shows reuse, attribution, loop detection and
/// post-response work, then both access logs, the trace links between them (W3C Trace
/// Context: each of B's requests names A's request span as its parent) and a clean drain on
/// SIGINT.
fn serve_demo(weft: &Path) -> Result {
    eprintln!(
        "\n== weft serve: requests, attributed fetches, loop detection, post-response work =="
    );
    let upstream = Server::start(weft, "http_hello")?;
    let server = Server::start(weft, "http_e2e")?;
    let upstream_url = format!("http://{}", upstream.addr);
    let self_url = format!("http://{}", server.addr);
    let requests = [
        DemoRequest {
            path: "/hello",
            what: "a plain request",
            headers: vec![],
        },
        DemoRequest {
            path: "/fetch",
            what: "two fetches from B, each carrying this request's weft-request-id",
            headers: vec![("x-upstream", upstream_url.as_str())],
        },
        DemoRequest {
            path: "/loop",
            what: "a fetch back into A itself: refused with 508 Loop Detected",
            headers: vec![("x-self", self_url.as_str())],
        },
        DemoRequest {
            path: "/post",
            what: "answers first, then fetches from B after the response (post-response work)",
            headers: vec![("x-upstream", upstream_url.as_str())],
        },
    ];
    for DemoRequest {
        path,
        what,
        headers,
    } in &requests
    {
        let (status, id, body) = get(server.addr, path, headers)?;
        println!("GET {path:<7} -> {status} {body:?}  [{id}]  ({what})");
    }
    let a_log = server.stop()?;
    let b_log = upstream.stop()?;
    println!("\nserver A's access log (one line per request; `outgoing` counts its fetches):");
    a_log.lines().for_each(|line| println!("  {line}"));
    println!("server B's access log (the requests A made):");
    b_log.lines().for_each(|line| println!("  {line}"));
    println!("\nacross servers (traceparent): A's request span -> the parent of B's request");
    for (a_line, b_line) in cross_server_links(&a_log, &b_log) {
        let show = |line: &str, key: &str| log_field(line, key).unwrap_or("-").to_string();
        println!(
            "  A {} span={} -> B {} parent={}  (trace_id={})",
            show(a_line, "path"),
            show(a_line, "span"),
            show(b_line, "path"),
            show(b_line, "parent"),
            show(b_line, "trace_id"),
        );
    }
    Ok(())
}

/// Pairs each access-log line of B with the line of A whose `span` is its `parent`.
fn cross_server_links<'a>(a_log: &'a str, b_log: &'a str) -> Vec<(&'a str, &'a str)> {
    b_log
        .lines()
        .filter_map(|b_line| {
            let parent = log_field(b_line, "parent")?;
            let a_line = a_log
                .lines()
                .find(|a_line| log_field(a_line, "span") == Some(parent))?;
            Some((a_line, b_line))
        })
        .collect()
}

/// The value of `key` in a logfmt line (unquoted values only, as ids and demo paths are).
fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// One request of the serve demo: what it shows and the headers it needs.
struct DemoRequest<'a> {
    path: &'static str,
    what: &'static str,
    headers: Vec<(&'static str, &'a str)>,
}

/// A `weft serve` child on an ephemeral loopback port.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(weft: &Path, guest: &str) -> Result<Server> {
        let guest = guests::output_dir().join(format!("{guest}.wasm"));
        let mut child = Command::new(weft)
            .args(["serve", "--listen", "127.0.0.1:0", "--drain-timeout", "2"])
            .arg("--trace-context")
            .arg(&guest)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start weft serve: {e}"))?;
        let mut first_line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut first_line)
            .map_err(|e| format!("weft serve: {e}"))?;
        let addr = first_line
            .trim()
            .rsplit("http://")
            .next()
            .and_then(|addr| addr.parse().ok())
            .ok_or_else(|| format!("weft serve did not say where it listens: {first_line:?}"))?;
        Ok(Server { child, addr })
    }

    /// SIGINT (drains in-flight and post-response work), then the access log from stderr.
    fn stop(mut self) -> Result<String> {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let mut log = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            stderr
                .read_to_string(&mut log)
                .map_err(|e| format!("weft serve: {e}"))?;
        }
        let status = self.child.wait().map_err(|e| format!("weft serve: {e}"))?;
        if !status.success() {
            return Err(format!("weft serve exited with {status}:\n{log}"));
        }
        Ok(log)
    }
}

/// One HTTP/1.1 GET with `Connection: close`: (status, weft-request-id, body).
fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String, String)> {
    let fail = |e: std::io::Error| format!("GET {path}: {e}");
    let mut stream = TcpStream::connect(addr).map_err(fail)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(fail)?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).map_err(fail)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(fail)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("GET {path}: not an HTTP response: {head:?}"))?;
    let id = head
        .lines()
        .find_map(|line| line.strip_prefix("weft-request-id: "))
        .unwrap_or("-")
        .to_string();
    Ok((status, id, body.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b_lines_are_linked_to_the_a_line_whose_span_is_their_parent() {
        let a_log = "t request=r1 path=/hello status=200 trace_id=aa parent=- span=s1\n\
                     weft serve: refused method=GET path=\"/x\" status=508\n\
                     t request=r2 path=/fetch status=200 trace_id=bb parent=- span=s2\n";
        let b_log = "t request=r1 path=/ status=200 trace_id=bb parent=s2 span=s9\n\
                     t request=r2 path=/ status=200 trace_id=cc parent=zz span=s8\n";
        let links = cross_server_links(a_log, b_log);
        assert_eq!(links.len(), 1);
        assert_eq!(log_field(links[0].0, "path"), Some("/fetch"));
        assert_eq!(log_field(links[0].1, "parent"), Some("s2"));
        assert_eq!(log_field(links[0].1, "request"), Some("r1"));
        assert_eq!(log_field("a=1 ab=2", "b"), None);
    }
}
