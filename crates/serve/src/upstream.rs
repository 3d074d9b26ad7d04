//! Keep-alive connections to upstream servers, shared by every instance of a server.
//!
//! Guests of both kinds call upstreams (a WASIX `fetch`, a component's `wasi:http` send), and a
//! new TCP connection per call costs a connect, a handshake of hyper's and a green thread to
//! drive it: on loopback more than the exchange itself. So a connection goes back to its
//! origin's list once its response head has arrived, and the next call to that origin takes one
//! that is ready again (its previous response read to the end). The protocol, all under one
//! lock and none of it across an await:
//!
//! - **Take**: drop the origin's connections that are closed or idle for longer than
//!   [`IDLE_TIMEOUT`] (shorter than the keep-alive timeouts servers commonly use, so a kept
//!   connection is seldom one the upstream is about to close), then take the most recently
//!   kept one that is ready. One still busy with its previous response stays for later.
//! - **Send**: on a taken connection with `try_send_request`. When it turns out closed before
//!   the request went out, hyper hands the request back and the next one is tried, then a new
//!   connection: a request is never sent twice.
//! - **Keep**: after the response head, while the connection is open and the lists hold fewer
//!   than [`MAX_IDLE_PER_ORIGIN`] for the origin and [`MAX_IDLE`] in all; otherwise it is
//!   dropped and closes once its response is read. So a guest calling many origins can make
//!   the server hold at most [`MAX_IDLE`] connections, each with its driving green thread.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use wasmtime_wasi_http::WasiBody;
use weft_http_attrib::REQUEST_ID_HEADER;

/// How long a kept connection may wait for its next request.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Most connections kept for one origin.
pub(crate) const MAX_IDLE_PER_ORIGIN: usize = 64;
/// Most connections kept in all.
pub(crate) const MAX_IDLE: usize = 256;

/// Where a request goes: host and port (plain `http` only).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Origin {
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The origin refused the connection.
    Refused,
    /// Connecting timed out.
    ConnectTimeout,
    /// No connection could be opened for another reason.
    Connect(std::io::Error),
    /// The exchange failed.
    Http(hyper::Error),
}

/// Why a guest's request cannot go to an origin.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unaddressable {
    /// Not an absolute `http` URI (weft sends plain http only).
    NotHttp,
    /// Its authority cannot be a `Host` header, or its path not a request target.
    BadUri,
    /// The request id cannot be a header value.
    BadId,
}

/// Readies `request` (with the absolute URI a guest gave) to go to its origin, and says which:
/// its `weft-request-id` is `request_id` (one the guest set is replaced), it gets a `Host`
/// header from the URI when the guest set none, and its URI is put in origin form (HTTP/1.1 to
/// an origin server names only the path in the request line).
pub(crate) fn address<B>(
    request: &mut http::Request<B>,
    request_id: &str,
) -> Result<Origin, Unaddressable> {
    let uri = request.uri();
    if uri.scheme_str() != Some("http") {
        return Err(Unaddressable::NotHttp);
    }
    let authority = uri.authority().ok_or(Unaddressable::NotHttp)?;
    let origin = Origin {
        host: authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port: authority.port_u16().unwrap_or(80),
    };
    let host =
        http::HeaderValue::from_str(authority.as_str()).map_err(|_| Unaddressable::BadUri)?;
    let target: http::Uri = uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .parse()
        .map_err(|_| Unaddressable::BadUri)?;
    let id = http::HeaderValue::from_str(request_id).map_err(|_| Unaddressable::BadId)?;
    let headers = request.headers_mut();
    headers.insert(REQUEST_ID_HEADER, id);
    headers.entry(http::header::HOST).or_insert(host);
    *request.uri_mut() = target;
    Ok(origin)
}

struct Kept {
    sender: SendRequest<WasiBody>,
    since: Instant,
}

/// The connections of one server.
#[derive(Default)]
pub(crate) struct Upstreams {
    idle: Mutex<HashMap<Origin, Vec<Kept>>>,
}

impl Upstreams {
    /// Sends `request` (its URI in origin form, its `Host` header set) to `origin` and returns
    /// the response head, its body still streaming. Blocks only the calling green thread.
    pub(crate) async fn send(
        &self,
        origin: &Origin,
        mut request: http::Request<WasiBody>,
    ) -> Result<http::Response<Incoming>, SendError> {
        while let Some(mut sender) = self.take(origin) {
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.keep(origin, sender);
                    return Ok(response);
                }
                Err(mut error) => match error.take_message() {
                    // Not sent: closed under our feet. The next one, or a new one.
                    Some(back) => request = back,
                    None => return Err(SendError::Http(error.into_error())),
                },
            }
        }
        let mut sender = connect(origin).await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(SendError::Http)?;
        self.keep(origin, sender);
        Ok(response)
    }

    /// How many connections are kept now.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.idle.lock().unwrap().values().map(Vec::len).sum()
    }

    fn take(&self, origin: &Origin) -> Option<SendRequest<WasiBody>> {
        let mut idle = self.idle.lock().unwrap();
        let list = idle.get_mut(origin)?;
        let now = Instant::now();
        list.retain(|kept| {
            !kept.sender.is_closed() && now.saturating_duration_since(kept.since) < IDLE_TIMEOUT
        });
        let ready = list.iter().rposition(|kept| kept.sender.is_ready());
        let taken = ready.map(|at| list.remove(at).sender);
        if list.is_empty() {
            idle.remove(origin);
        }
        taken
    }

    fn keep(&self, origin: &Origin, sender: SendRequest<WasiBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap();
        let total: usize = idle.values().map(Vec::len).sum();
        let list = idle.entry(origin.clone()).or_default();
        if list.len() < MAX_IDLE_PER_ORIGIN && total < MAX_IDLE {
            list.push(Kept {
                sender,
                since: Instant::now(),
            });
        } else if list.is_empty() {
            idle.remove(origin);
        }
    }
}

/// A body from bytes the server already holds (a WASIX guest's request body, an incoming
/// request's body for a component).
pub(crate) fn full_body(bytes: Bytes) -> WasiBody {
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A new connection to `origin`, driven by a green thread of its own until it closes.
async fn connect(origin: &Origin) -> Result<SendRequest<WasiBody>, SendError> {
    // Connecting parks only this green thread; the OS bounds how long it takes.
    let stream =
        weft_sched::TcpStream::connect((origin.host.as_str(), origin.port)).map_err(|error| {
            match error.kind() {
                std::io::ErrorKind::ConnectionRefused => SendError::Refused,
                std::io::ErrorKind::TimedOut => SendError::ConnectTimeout,
                _ => SendError::Connect(error),
            }
        })?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(stream)
        .await
        .map_err(SendError::Http)?;
    weft_sched::spawn(move || {
        let _ = weft_sched::block_on(connection);
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// An HTTP/1.1 upstream on a std thread: answers every request `ok`, keeps connections
    /// open unless the request says `connection: close`; counts the connections it accepted.
    /// To `/partial` it sends 2 bytes of a body of 10: the connection stays busy.
    fn upstream() -> (Origin, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let origin = Origin {
            host: "127.0.0.1".to_string(),
            port: listener.local_addr().unwrap().port(),
        };
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    loop {
                        let (mut close, mut partial) = (false, false);
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line.eq_ignore_ascii_case("connection: close\r\n") {
                                close = true;
                            }
                            partial |= line.starts_with("GET /partial ");
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let connection = if close { "close" } else { "keep-alive" };
                        let length = if partial { 10 } else { 2 };
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {length}\r\nconnection: {connection}\r\n\r\nok"
                        );
                        if stream.write_all(answer.as_bytes()).is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        (origin, accepted)
    }

    fn get(origin: &Origin, close: bool) -> http::Request<WasiBody> {
        request(origin, "/", close)
    }

    fn request(origin: &Origin, path: &str, close: bool) -> http::Request<WasiBody> {
        let mut request = http::Request::builder().uri(path).header(
            http::header::HOST,
            format!("{}:{}", origin.host, origin.port),
        );
        if close {
            request = request.header(http::header::CONNECTION, "close");
        }
        request.body(full_body(Bytes::new())).unwrap()
    }

    /// Sends `requests` one after the other (each body read to the end) on `upstreams`.
    fn exchange(upstreams: Arc<Upstreams>, origin: Origin, close: bool, requests: usize) {
        let rt = weft_sched::Runtime::builder().workers(1).build().unwrap();
        rt.spawn(move || {
            for _ in 0..requests {
                let response =
                    weft_sched::block_on(upstreams.send(&origin, get(&origin, close))).unwrap();
                assert_eq!(response.status(), 200);
                let body = weft_sched::block_on(response.into_body().collect()).unwrap();
                assert_eq!(&body.to_bytes()[..], b"ok");
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn address_sets_the_id_and_host_and_puts_the_uri_in_origin_form() {
        let mut request = http::Request::builder()
            .uri("http://[::1]:8080/a/b?c=1")
            .header(REQUEST_ID_HEADER, "forged")
            .body(())
            .unwrap();
        let origin = address(&mut request, "00ff-7").unwrap();
        assert_eq!(
            origin,
            Origin {
                host: "::1".to_string(),
                port: 8080
            }
        );
        assert_eq!(request.uri(), "/a/b?c=1");
        let ids: Vec<_> = request
            .headers()
            .get_all(REQUEST_ID_HEADER)
            .iter()
            .collect();
        assert_eq!(ids, ["00ff-7"], "the guest's id is replaced, not added to");
        assert_eq!(request.headers()[http::header::HOST], "[::1]:8080");
        // A Host the guest set stays; no port means 80.
        let mut request = http::Request::builder()
            .uri("http://example.test")
            .header(http::header::HOST, "other.test")
            .body(())
            .unwrap();
        let origin = address(&mut request, "1").unwrap();
        assert_eq!(origin.port, 80);
        assert_eq!(request.uri(), "/");
        assert_eq!(request.headers()[http::header::HOST], "other.test");
        let mut https = http::Request::builder().uri("https://x/").body(()).unwrap();
        assert_eq!(address(&mut https, "1"), Err(Unaddressable::NotHttp));
        let mut relative = http::Request::builder().uri("/x").body(()).unwrap();
        assert_eq!(address(&mut relative, "1"), Err(Unaddressable::NotHttp));
        let mut plain = http::Request::builder().uri("http://x/").body(()).unwrap();
        assert_eq!(address(&mut plain, "bad\nid"), Err(Unaddressable::BadId));
    }

    #[test]
    fn one_connection_serves_requests_one_after_the_other() {
        let (origin, accepted) = upstream();
        let upstreams = Arc::new(Upstreams::default());
        exchange(upstreams.clone(), origin, false, 20);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(upstreams.kept(), 1);
    }

    #[test]
    fn a_connection_the_upstream_closes_is_not_reused() {
        let (origin, accepted) = upstream();
        let upstreams = Arc::new(Upstreams::default());
        exchange(upstreams.clone(), origin, true, 5);
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn connections_kept_are_bounded_per_origin_and_in_all() {
        let upstreams = Upstreams::default();
        let rt = weft_sched::Runtime::builder().workers(1).build().unwrap();
        let upstreams = Arc::new(upstreams);
        let shared = upstreams.clone();
        let origins: Vec<Origin> = (0..MAX_IDLE / MAX_IDLE_PER_ORIGIN + 1)
            .map(|_| upstream().0)
            .collect();
        rt.spawn(move || {
            for origin in &origins {
                // Connections whose responses are unfinished stay busy: each request needs a
                // connection of its own, and all are offered to the lists.
                let mut held = Vec::new();
                for _ in 0..MAX_IDLE_PER_ORIGIN + 1 {
                    let partial = request(origin, "/partial", false);
                    let response = weft_sched::block_on(shared.send(origin, partial)).unwrap();
                    held.push(response);
                }
                let kept_here = shared.idle.lock().unwrap().get(origin).map_or(0, Vec::len);
                assert!(kept_here <= MAX_IDLE_PER_ORIGIN);
            }
        })
        .join()
        .unwrap();
        assert_eq!(upstreams.kept(), MAX_IDLE);
    }
}
