//! `weft serve` as a child process for end-to-end tests, a plain HTTP/1.1 client, and a
//! recording upstream server: what the serve tests share.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::{guest, weft};

pub const REQUEST_ID_HEADER: &str = "weft-request-id";
/// What `weft serve` prints on stdout once it listens.
pub const READY_PREFIX: &str = "weft serve: listening on http://";
/// A wait that lasts longer than this means a hang (a bug): the test fails.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// The upstream test server
// ---------------------------------------------------------------------------------------------

/// One request the upstream received.
#[derive(Clone, Debug)]
pub struct Hit {
    pub path: String,
    pub request_id: Option<String>,
}

#[derive(Default)]
pub struct UpstreamState {
    pub hits: Vec<Hit>,
    pub open_gates: HashSet<String>,
}

/// HTTP/1.1 on loopback, keep-alive, a thread per connection. Records every request; answers
/// 200 "upstream ok", but holds a request whose query has `gate=NAME` until the test opens
/// gate NAME.
pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<(Mutex<UpstreamState>, Condvar)>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
        let addr = listener.local_addr().expect("upstream address");
        let state: Arc<(Mutex<UpstreamState>, Condvar)> = Arc::default();
        let shared = state.clone();
        // Detached: it lives as long as the test process, like the listener it owns.
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                thread::spawn(move || serve_upstream_connection(stream, &state));
            }
        });
        Upstream { addr, state }
    }

    /// What the guest's `x-upstream` header should say.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.state.0.lock().unwrap().hits.clone()
    }

    /// Waits until a request whose path contains `needle` has arrived, and returns it.
    pub fn wait_for_hit(&self, needle: &str) -> Hit {
        let (lock, arrived) = &*self.state;
        let deadline = Instant::now() + HANG_GUARD;
        let mut state = lock.lock().unwrap();
        loop {
            if let Some(hit) = state.hits.iter().find(|hit| hit.path.contains(needle)) {
                return hit.clone();
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| {
                    panic!("no upstream request for {needle:?} within {HANG_GUARD:?}")
                });
            state = arrived.wait_timeout(state, left).unwrap().0;
        }
    }

    pub fn open_gate(&self, name: &str) {
        let (lock, changed) = &*self.state;
        lock.lock().unwrap().open_gates.insert(name.to_string());
        changed.notify_all();
    }
}

/// One parsed HTTP/1.x message head, as either side of the connection reads it.
pub struct Head {
    pub start_line: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a start line and headers; `None` at a clean end of the stream.
pub fn read_head(reader: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut line = String::new();
    let start_line = loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let trimmed = line.trim_end();
        if !trimmed.is_empty() {
            break trimmed.to_string();
        }
    };
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    Ok(Some(Head {
        start_line,
        headers,
    }))
}

/// Reads the body the head announces (`content-length` or chunked); `read_to_end` decides
/// what a message without either has (a response's body runs to the end of the stream).
pub fn read_body(
    reader: &mut impl BufRead,
    head: &Head,
    read_to_end: bool,
) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if head
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size_text = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        return Ok(body);
                    }
                }
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            line.clear();
            reader.read_line(&mut line)?;
        }
    } else if let Some(length) = head.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| std::io::Error::other(format!("bad content-length {length:?}")))?;
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    } else if read_to_end {
        reader.read_to_end(&mut body)?;
    }
    Ok(body)
}

pub fn serve_upstream_connection(stream: TcpStream, state: &(Mutex<UpstreamState>, Condvar)) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    while let Ok(Some(head)) = read_head(&mut reader) {
        if read_body(&mut reader, &head, false).is_err() {
            return;
        }
        let path = head
            .start_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        let gate = query_value(&path, "gate").map(str::to_string);
        let (lock, changed) = state;
        {
            let mut state = lock.lock().unwrap();
            state.hits.push(Hit {
                path,
                request_id: head.header(REQUEST_ID_HEADER).map(str::to_string),
            });
            changed.notify_all();
            if let Some(gate) = gate {
                let deadline = Instant::now() + HANG_GUARD;
                while !state.open_gates.contains(&gate) && Instant::now() < deadline {
                    state = changed.wait_timeout(state, HANG_GUARD).unwrap().0;
                }
            }
        }
        let close = head
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let response =
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 11\r\n\r\nupstream ok";
        if writer.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// The value of `key=` in the query of `path`.
pub fn query_value<'a>(path: &'a str, key: &str) -> Option<&'a str> {
    let (_, query) = path.split_once('?')?;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// The `weft-request-id` the server put on the response.
    pub request_id: Option<String>,
    pub body: String,
}

/// Sends `raw` bytes on a fresh connection and reads one response.
pub fn exchange(addr: SocketAddr, raw: &[u8]) -> Response {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    writer.write_all(raw).expect("send the request");
    let mut reader = BufReader::new(stream);
    let head = read_head(&mut reader)
        .expect("read the response head")
        .unwrap_or_else(|| panic!("the server closed the connection without a response"));
    let status = head
        .start_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {:?}", head.start_line));
    let body = read_body(&mut reader, &head, true).expect("read the response body");
    Response {
        status,
        request_id: head.header(REQUEST_ID_HEADER).map(str::to_string),
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut raw = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    exchange(addr, raw.as_bytes())
}

// ---------------------------------------------------------------------------------------------
// `weft serve` as a child process
// ---------------------------------------------------------------------------------------------

/// `weft serve <guest> --listen 127.0.0.1:0 <flags>`, its stderr collected line by line.
pub struct Serve {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr: Arc<(Mutex<Vec<String>>, Condvar)>,
    pub command: String,
}

impl Serve {
    pub fn start(guest_name: &str, flags: &[&str]) -> Serve {
        let mut cmd = Command::new(weft());
        cmd.arg("serve")
            .arg(guest(guest_name))
            .args(["--listen", "127.0.0.1:0"])
            // Tests hold requests open on purpose and CI machines are slow: the answer
            // deadline is left to the tests that are about it.
            .args(if flags.contains(&"--request-timeout") {
                &[][..]
            } else {
                &["--request-timeout", "600"][..]
            })
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let command = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));

        let stderr: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let pipe = child.stderr.take().unwrap();
        let lines = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                lines.0.lock().unwrap().push(line);
                lines.1.notify_all();
            }
        });
        let (ready, listening) = mpsc::channel();
        let pipe = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix(READY_PREFIX) {
                    let _ = ready.send(addr.trim_end_matches('/').to_string());
                }
            }
        });
        let mut serve = Serve {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            stderr,
            command,
        };
        let deadline = Instant::now() + HANG_GUARD;
        let addr = loop {
            match listening.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => break addr,
                Err(_) if Instant::now() > deadline => {
                    panic!("{} printed no ready line\n{}", serve.command, serve.dump())
                }
                Err(_) => {}
            }
            if let Some(status) = serve.child.try_wait().unwrap() {
                panic!(
                    "{} exited at startup: {status}\n{}",
                    serve.command,
                    serve.dump()
                );
            }
        };
        serve.addr = addr
            .parse()
            .unwrap_or_else(|e| panic!("bad address {addr:?} in the ready line: {e}"));
        serve
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        get(self.addr, path, headers)
    }

    pub fn dump(&self) -> String {
        format!(
            "--- weft serve stderr ---\n{}",
            self.stderr.0.lock().unwrap().join("\n")
        )
    }

    /// Waits for a stderr line that `matches`, and returns it.
    pub fn wait_for_line(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let (lock, grew) = &*self.stderr;
        let deadline = Instant::now() + HANG_GUARD;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().find(|line| matches(line)) {
                return line.clone();
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                drop(lines);
                panic!(
                    "weft serve printed no {what} within {HANG_GUARD:?}\n{}",
                    self.dump()
                );
            };
            lines = grew.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Whether a stderr line that `matches` has been printed so far.
    pub fn has_line(&self, matches: impl Fn(&str) -> bool) -> bool {
        self.stderr
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|line| matches(line))
    }

    /// The access-log line of the request for `path` (waiting for it), as key -> value.
    pub fn access_log(&self, path: &str) -> HashMap<String, String> {
        let line = self.wait_for_line(&format!("access-log line for {path}"), |line| {
            is_access_log_for(line, path)
        });
        logfmt(&line)
    }

    /// The guest's `log` line containing `message`, waiting for it.
    pub fn guest_log(&self, message: &str) -> HashMap<String, String> {
        let line = self.wait_for_line(&format!("guest log {message:?}"), |line| {
            line.starts_with("weft-guest ") && logfmt(line).get("msg").is_some_and(|m| m == message)
        });
        logfmt(&line)
    }

    /// SIGTERM: in-flight work drains and weft exits 0. Returns the `drained, ...` line.
    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the process to exit: its exit code and everything it
    /// printed on stderr.
    pub fn terminate(mut self) -> (Option<i32>, String) {
        let exit = self.sigterm_and_wait();
        // The stderr reader may still be collecting the last lines.
        thread::sleep(Duration::from_millis(50));
        (exit.code(), self.dump())
    }

    /// SIGTERM, then a clean drain: exit 0 and the `drained` line, which it returns.
    pub fn stop_cleanly(mut self) -> String {
        let exit = self.sigterm_and_wait();
        assert_eq!(
            exit.code(),
            Some(0),
            "weft serve exited with {exit} after SIGTERM\n{}",
            self.dump()
        );
        self.wait_for_line("drained line after SIGTERM", |line| {
            line.starts_with("weft serve: drained")
        })
    }

    fn sigterm_and_wait(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                return exit;
            }
            assert!(
                Instant::now() < deadline,
                "weft serve did not exit after SIGTERM\n{}",
                self.dump()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn is_access_log_for(line: &str, path: &str) -> bool {
    if line.starts_with("weft-guest ") || !line.contains(" outcome=") {
        return false;
    }
    logfmt(line).get("path").is_some_and(|p| p == path)
}

/// Parses `key=value key="quoted \"value\""` pairs (words without `=` are skipped).
pub fn logfmt(line: &str) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ' ').is_some() {}
        if chars.peek().is_none() {
            return fields;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != ' ' && *c != '=') {
            key.push(c);
        }
        if chars.next_if_eq(&'=').is_none() {
            continue;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some('t') => value.push('\t'),
                        Some('r') => value.push('\r'),
                        Some(other) => value.push(other),
                        None => break,
                    },
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ' ') {
                value.push(c);
            }
        }
        fields.insert(key, value);
    }
}

pub fn field<'a>(fields: &'a HashMap<String, String>, key: &str) -> &'a str {
    fields
        .get(key)
        .unwrap_or_else(|| panic!("no {key}= in {fields:?}"))
}

pub fn assert_status(response: &Response, status: u16, what: &str) {
    assert_eq!(
        response.status, status,
        "{what}: expected {status}, got {response:?}"
    );
}
