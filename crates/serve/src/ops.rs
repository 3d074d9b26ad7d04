//! The operations listener ([`ServeConfig::metrics_addr`]): `/metrics`, `/healthz`, `/readyz`.
//!
//! A std listener on a thread of its own, apart from the scheduler that serves guests: a
//! scrape or a probe is answered even when every worker is busy, and a saturated server is
//! not slowed by its own monitoring. Connections are answered one at a time and closed; each
//! has a short I/O timeout, so a stuck client delays the next probe by at most that.
//!
//! [`ServeConfig::metrics_addr`]: crate::ServeConfig::metrics_addr

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::dispatch::Shared;
use crate::metrics::{self, Metrics};

/// How long one probe or scrape connection may take to send its request or take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head read.
const MAX_HEAD: usize = 8 << 10;

/// The running listener; dropping it stops the thread.
pub(crate) struct OpsListener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl OpsListener {
    /// Binds `addr` and answers on a new thread until dropped.
    pub(crate) fn start(
        addr: SocketAddr,
        shared: Arc<Shared>,
        metrics: Arc<Metrics>,
    ) -> io::Result<OpsListener> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("weft-serve-ops".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stopped.load(Ordering::Acquire) {
                        return;
                    }
                    match stream {
                        Ok(stream) => {
                            let _ = answer(stream, &shared, &metrics);
                        }
                        // Out of descriptors and the like: back off instead of spinning.
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })?;
        Ok(OpsListener {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for OpsListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(mut stream: TcpStream, shared: &Shared, metrics: &Metrics) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let (method, path) = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or("").to_string();
                let path = request.path.unwrap_or("").to_string();
                break (method, path);
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => continue,
            _ => {
                return respond(
                    &mut stream,
                    "400 Bad Request",
                    "text/plain",
                    "bad request\n",
                );
            }
        }
    };
    if method != "GET" && method != "HEAD" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "GET or HEAD\n",
        );
    }
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match path {
        "/metrics" => ("200 OK", metrics::CONTENT_TYPE, metrics.encode()),
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
        "/readyz" if shared.shutting_down.load(Ordering::Acquire) => (
            "503 Service Unavailable",
            "text/plain",
            "draining\n".to_string(),
        ),
        "/readyz" => ("200 OK", "text/plain", "ready\n".to_string()),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    write_response(&mut stream, status, content_type, &body, method == "GET")
}

fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) -> io::Result<()> {
    write_response(stream, status, content_type, body, true)
}

fn write_response(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
    with_body: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if with_body {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}
