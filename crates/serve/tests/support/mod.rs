//! What the serve tests share: a plain HTTP/1.1 client, an upstream server that records the
//! `weft-request-id` of every request it gets, and small waits. Each test file uses part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_serve::{ServeConfig, ServeReport, Server};

/// `config` on a loopback port of its own, two workers, no access log.
pub fn loopback(mut config: ServeConfig) -> ServeConfig {
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.workers = 2;
    config.policy = weft_serve::Policy::for_workers(2);
    config.access_log = false;
    config
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// `GET path` on a connection of its own, with `headers`.
pub fn request(addr: SocketAddr, path: &str, headers: &[(&str, String)]) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    // A hang guard, not a timing check: a server that never answers fails the test.
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut text = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    stream.write_all(text.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    parse_reply(&response)
}

pub fn parse_reply(response: &str) -> Reply {
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

/// Runs `n` requests at once, each from its own thread.
pub fn concurrently(n: usize, make: impl Fn(usize) -> Reply + Send + Sync) -> Vec<Reply> {
    std::thread::scope(|scope| {
        let make = &make;
        let handles: Vec<_> = (0..n).map(|i| scope.spawn(move || make(i))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// An upstream HTTP server that records the path and `weft-request-id` of every request.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Upstream {
    pub fn start() -> Upstream {
        Upstream::answering_after(Duration::ZERO)
    }

    /// An upstream that waits `delay` before it answers.
    pub fn answering_after(delay: Duration) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let record = record.clone();
                std::thread::spawn(move || {
                    let Some(head) = read_head(&mut stream) else {
                        return;
                    };
                    let text = String::from_utf8_lossy(&head).to_string();
                    let reply = parse_reply(&text);
                    let path = text.split(' ').nth(1).unwrap_or("").to_string();
                    let id = reply
                        .headers
                        .get("weft-request-id")
                        .cloned()
                        .unwrap_or_default();
                    record.lock().unwrap().push((path, id));
                    std::thread::sleep(delay);
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    );
                });
            }
        });
        Upstream { addr, seen }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The `x-upstream` header of a guest that fetches from here.
    pub fn header(&self) -> (&'static str, String) {
        ("x-upstream", self.addr.to_string())
    }

    /// Every (path, weft-request-id) received so far.
    pub fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }

    /// The id the request for `path` carried, once it arrived.
    pub fn wait_for(&self, path: &str) -> String {
        let mut id = None;
        wait_until(&format!("the upstream to see {path}"), || {
            id = self
                .seen()
                .into_iter()
                .find(|(p, _)| p == path)
                .map(|(_, id)| id);
            id.is_some()
        });
        id.unwrap()
    }
}

/// Polls `condition` until it holds; a hang guard (60 s), not a timing check.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Drains the server and returns its report.
pub fn stop(server: Server) -> ServeReport {
    server.shutdown_handle().shutdown();
    server.wait().unwrap()
}

/// A component guest built by `cargo xtask build-guests`; fails (never skips) when it is
/// missing.
pub fn component_guest(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join("target")
        });
    let path = target
        .join("guests")
        .join("components")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask build-guests`",
        path.display()
    );
    path
}

/// An upstream that takes one request, records its `weft-request-id`, and answers `200 ok`
/// only when released: a guest waiting for it stays in the middle of its work for as long as
/// a test needs.
pub struct GatedUpstream {
    pub addr: SocketAddr,
    seen: std::sync::mpsc::Receiver<String>,
    release: std::sync::mpsc::Sender<()>,
}

impl GatedUpstream {
    pub fn start() -> GatedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen_tx, seen) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let Some(head) = read_head(&mut stream) else {
                return;
            };
            let reply = parse_reply(&String::from_utf8_lossy(&head));
            let id = reply.headers.get("weft-request-id").cloned();
            let _ = seen_tx.send(id.unwrap_or_default());
            let _ = release_rx.recv_timeout(Duration::from_secs(120));
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        });
        GatedUpstream {
            addr,
            seen,
            release,
        }
    }

    /// The `weft-request-id` of the request it holds, once that request arrived (a hang
    /// guard, not a timing check).
    pub fn wait_for_request(&self) -> String {
        self.seen
            .recv_timeout(Duration::from_secs(60))
            .expect("the guest's outgoing request never arrived")
    }

    /// Lets it answer.
    pub fn release(&self) {
        let _ = self.release.send(());
    }
}

/// Reads a request head byte by byte (so nothing of a body is consumed), up to its blank line;
/// `None` if the connection ends first.
fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(head)
}
