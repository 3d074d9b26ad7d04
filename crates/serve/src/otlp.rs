//! OpenTelemetry export ([`ServeConfig::otlp_endpoint`]): one span per request and a child span
//! per outgoing request, sent in batches to an OTLP/HTTP collector (protobuf, the messages of
//! `opentelemetry-proto`).
//!
//! Serving never waits for it: spans go into a bounded queue with `try_send` (when it is full
//! they are dropped and counted) and a thread of its own batches and posts them. A collector
//! that cannot be reached is reported once, when it starts failing, and once more if it comes
//! back; the spans of the batches that failed are dropped.
//!
//! [`ServeConfig::otlp_endpoint`]: crate::ServeConfig::otlp_endpoint

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::SpanId;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode,
};
use opentelemetry_sdk::trace::RandomIdGenerator;
use prost::Message;
use weft_http_attrib::{Outcome, Summary};

use crate::dispatch::outcome_name;
use crate::trace_context::RequestSpan;

/// Spans waiting to be sent; beyond it new ones are dropped.
const QUEUE: usize = 8192;
/// Spans per export request.
const MAX_BATCH: usize = 512;
/// How long a span may wait for its batch to fill.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Bounds on one export: connecting, and sending it and reading the answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a shutdown waits for the last batch to go out.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where spans go: an `http://` URL; a URL without a path posts to `/v1/traces`, OTLP/HTTP's
/// default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    host: String,
    port: u16,
    path: String,
}

impl Endpoint {
    pub(crate) fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "`{url}`: only http:// collectors are supported (put a local collector in front of an https one)"
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("`{url}` names no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let path = match uri.path() {
            "" | "/" => "/v1/traces".to_string(),
            path => path.to_string(),
        };
        Ok(Endpoint {
            host,
            port: uri.port_u16().unwrap_or(4318),
            path,
        })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "http://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

/// Turns the server's monotonic instants into the wall-clock nanoseconds OTLP wants.
#[derive(Debug, Clone, Copy)]
struct Clock {
    instant: Instant,
    unix_nanos: u64,
}

impl Clock {
    fn now() -> Clock {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            instant: Instant::now(),
            unix_nanos: u64::try_from(unix.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    fn unix_nanos(&self, at: Instant) -> u64 {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        if at >= self.instant {
            self.unix_nanos.saturating_add(nanos(at - self.instant))
        } else {
            self.unix_nanos.saturating_sub(nanos(self.instant - at))
        }
    }
}

/// The exporter of one server.
pub(crate) struct Otlp {
    clock: Clock,
    /// `None` once shut down.
    queue: Mutex<Option<SyncSender<Span>>>,
    dropped: AtomicU64,
    thread: Mutex<Option<(JoinHandle<()>, Receiver<()>)>>,
}

impl Otlp {
    /// Starts the export thread. Nothing is sent until the first batch.
    pub(crate) fn start(endpoint: Endpoint) -> io::Result<Otlp> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let (done_tx, done_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("weft-serve-otlp".into())
            .spawn(move || {
                export_loop(&endpoint, &rx);
                let _ = done_tx.send(());
            })?;
        Ok(Otlp {
            clock: Clock::now(),
            queue: Mutex::new(Some(tx)),
            dropped: AtomicU64::new(0),
            thread: Mutex::new(Some((thread, done_rx))),
        })
    }

    fn enqueue(&self, span: Span) {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let Some(queue) = queue.as_ref() else { return };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = queue.try_send(span) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request finished: its span (kind server), from arrival to the end of its last work.
    pub(crate) fn request_finished(
        &self,
        span: &RequestSpan,
        summary: &Summary,
        request_id: &str,
        method: &str,
        path: &str,
        status: Option<u16>,
    ) {
        let mut attributes = vec![
            string("weft.request_id", request_id),
            string("http.request.method", method),
            string("url.path", path.split('?').next().unwrap_or(path)),
            int("weft.outgoing", i64::from(summary.outgoing)),
            string("weft.outcome", outcome_name(&summary.outcome)),
            double(
                "weft.post_response_ms",
                summary.post_response_time().as_secs_f64() * 1e3,
            ),
        ];
        if let Some(instance) = summary.instance {
            attributes.push(string("weft.instance", &instance.to_string()));
        }
        if let Some(status) = status {
            attributes.push(int("http.response.status_code", i64::from(status)));
        }
        if let Outcome::Drained { stragglers } = summary.outcome {
            attributes.push(int("weft.stragglers", i64::from(stragglers)));
        }
        let failed = status.is_none_or(|s| s >= 500) || summary.outcome == Outcome::Failed;
        self.enqueue(Span {
            trace_id: span.trace_id.to_bytes().to_vec(),
            span_id: span.span_id.to_bytes().to_vec(),
            parent_span_id: span.parent.map_or_else(Vec::new, |p| p.to_bytes().to_vec()),
            trace_state: span.trace_state_header(),
            flags: u32::from(span.flags.to_u8()),
            name: method.to_string(),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: self.clock.unix_nanos(summary.submitted_at),
            end_time_unix_nano: self.clock.unix_nanos(summary.finished_at),
            attributes,
            status: failed.then(|| Status {
                code: StatusCode::Error as i32,
                message: String::new(),
            }),
            ..Span::default()
        });
    }

    /// Spans dropped so far because the queue was full (the collector is slow or away).
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Stops taking spans, sends what is queued (waiting a bounded time) and ends the thread.
    pub(crate) fn shutdown(&self) {
        drop(self.queue.lock().unwrap_or_else(|p| p.into_inner()).take());
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((thread, done)) = thread
            && done.recv_timeout(FLUSH_TIMEOUT).is_ok()
        {
            let _ = thread.join();
        }
    }
}

/// An outgoing request being made for a request whose span is exported: its span (kind
/// client, a child of the request's) is sent when [`ClientSpan::finish`] is called.
pub(crate) struct ClientSpan {
    otlp: std::sync::Arc<Otlp>,
    parent: RequestSpan,
    span_id: SpanId,
    method: String,
    url: String,
    started: Instant,
}

impl ClientSpan {
    /// `None` unless spans are exported and the request has one.
    pub(crate) fn start(
        otlp: Option<&std::sync::Arc<Otlp>>,
        parent: Option<&RequestSpan>,
        method: &http::Method,
        url: &http::Uri,
    ) -> Option<ClientSpan> {
        let (otlp, parent) = (otlp?, parent?);
        Some(ClientSpan {
            otlp: otlp.clone(),
            parent: parent.clone(),
            span_id: crate::trace_context::new_span_id(&RandomIdGenerator::default()),
            method: method.to_string(),
            url: url.to_string(),
            started: Instant::now(),
        })
    }

    /// The request ended: with the upstream's status, or the errno the guest got.
    pub(crate) fn finish(self, result: Result<u16, &str>) {
        let mut attributes = vec![
            string("http.request.method", &self.method),
            string("url.full", &self.url),
        ];
        let failed = match result {
            Ok(status) => {
                attributes.push(int("http.response.status_code", i64::from(status)));
                status >= 500
            }
            Err(errno) => {
                attributes.push(string("error.type", errno));
                true
            }
        };
        let otlp = &self.otlp;
        otlp.enqueue(Span {
            trace_id: self.parent.trace_id.to_bytes().to_vec(),
            span_id: self.span_id.to_bytes().to_vec(),
            parent_span_id: self.parent.span_id.to_bytes().to_vec(),
            trace_state: self.parent.trace_state_header(),
            flags: u32::from(self.parent.flags.to_u8()),
            name: self.method.clone(),
            kind: SpanKind::Client as i32,
            start_time_unix_nano: otlp.clock.unix_nanos(self.started),
            end_time_unix_nano: otlp.clock.unix_nanos(Instant::now()),
            attributes,
            status: failed.then(|| Status {
                code: StatusCode::Error as i32,
                message: String::new(),
            }),
            ..Span::default()
        });
    }
}

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    attribute(key, any_value::Value::StringValue(value.to_string()))
}

fn int(key: &str, value: i64) -> KeyValue {
    attribute(key, any_value::Value::IntValue(value))
}

fn double(key: &str, value: f64) -> KeyValue {
    attribute(key, any_value::Value::DoubleValue(value))
}

fn export_loop(endpoint: &Endpoint, spans: &Receiver<Span>) {
    let mut failing = false;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let open = match spans.recv_timeout(BATCH_DELAY) {
            Ok(span) => {
                batch.push(span);
                // Take what is already there, up to a batch, without waiting.
                while batch.len() < MAX_BATCH {
                    match spans.try_recv() {
                        Ok(span) => batch.push(span),
                        Err(_) => break,
                    }
                }
                true
            }
            Err(RecvTimeoutError::Timeout) => true,
            Err(RecvTimeoutError::Disconnected) => false,
        };
        let full = batch.len() >= MAX_BATCH;
        if !batch.is_empty() && (full || !open || waited_long_enough(&batch)) {
            let sent = post(endpoint, &encode(std::mem::take(&mut batch)));
            match (sent, failing) {
                (Err(error), false) => {
                    eprintln!(
                        "weft serve: cannot export spans to {endpoint}: {error}; spans are \
                         dropped until it answers (reported once)"
                    );
                    failing = true;
                }
                (Ok(()), true) => {
                    eprintln!("weft serve: exporting spans to {endpoint} again");
                    failing = false;
                }
                _ => {}
            }
        }
        if !open && batch.is_empty() {
            return;
        }
    }
}

/// A batch that is not full goes out once its oldest span waited [`BATCH_DELAY`]; spans end
/// when their request does, so the first span's end time says how long ago that was.
fn waited_long_enough(batch: &[Span]) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    batch.first().is_some_and(|span| {
        now.saturating_sub(span.end_time_unix_nano)
            >= u64::try_from(BATCH_DELAY.as_nanos()).unwrap_or(u64::MAX)
    })
}

fn encode(spans: Vec<Span>) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string("service.name", "weft-serve")],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "weft-serve".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..InstrumentationScope::default()
                }),
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
    .encode_to_vec()
}

/// One `POST` of an encoded batch; `Ok` on a 2xx answer.
fn post(endpoint: &Endpoint, body: &[u8]) -> Result<(), String> {
    let addrs: Vec<SocketAddr> = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", endpoint.host))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(connected) => {
                stream = Some(connected);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = stream.ok_or_else(|| match last {
        Some(e) => e.to_string(),
        None => "no address".to_string(),
    })?;
    let io = |e: io::Error| e.to_string();
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    let host = if endpoint.host.contains(':') {
        format!("[{}]:{}", endpoint.host, endpoint.port)
    } else {
        format!("{}:{}", endpoint.host, endpoint.port)
    };
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/x-protobuf\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        endpoint.path,
        body.len()
    );
    stream.write_all(head.as_bytes()).map_err(io)?;
    stream.write_all(body).map_err(io)?;
    let mut answer = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).map_err(io)?;
        if n == 0 {
            return Err("the collector closed the connection without an answer".to_string());
        }
        answer.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&answer) {
            Ok(httparse::Status::Complete(_)) => {
                let code = response.code.unwrap_or(0);
                return if (200..300).contains(&code) {
                    Ok(())
                } else {
                    Err(format!("the collector answered {code}"))
                };
            }
            Ok(httparse::Status::Partial) if answer.len() < 64 << 10 => {}
            _ => return Err("the collector's answer is not HTTP".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_default_to_the_otlp_traces_path_and_port() {
        let e = Endpoint::parse("http://collector").unwrap();
        assert_eq!(e.to_string(), "http://collector:4318/v1/traces");
        let e = Endpoint::parse("http://127.0.0.1:9999/custom/path").unwrap();
        assert_eq!(e.to_string(), "http://127.0.0.1:9999/custom/path");
        let e = Endpoint::parse("http://[::1]:4318/").unwrap();
        assert_eq!(e.to_string(), "http://[::1]:4318/v1/traces");
        assert!(Endpoint::parse("https://collector").is_err());
        assert!(Endpoint::parse("not a url").is_err());
    }

    #[test]
    fn instants_map_to_wall_clock_nanoseconds() {
        let clock = Clock::now();
        let later = clock.instant + Duration::from_millis(3);
        assert_eq!(clock.unix_nanos(later), clock.unix_nanos + 3_000_000);
        if let Some(earlier) = clock.instant.checked_sub(Duration::from_millis(2)) {
            assert_eq!(clock.unix_nanos(earlier), clock.unix_nanos - 2_000_000);
        }
    }

    #[test]
    fn a_batch_encodes_as_one_export_request() {
        let bytes = encode(vec![Span {
            name: "GET".to_string(),
            ..Span::default()
        }]);
        let request = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].name, "GET");
    }
}
