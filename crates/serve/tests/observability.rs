//! Observability of `weft serve` on loopback, with a WAT guest: W3C Trace Context across two
//! chained servers, Prometheus metrics after a known workload, health and readiness through a
//! drain, two servers sharing one port (`SO_REUSEPORT`), and spans exported to an OTLP/HTTP
//! collector.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use weft_serve::{ServeConfig, ServeError, Server};

mod support;
use support::{GatedUpstream, stop, wait_until};

/// Commands by the path's first letter: `e` echo the path; `q` echo the `traceparent` it got,
/// `z` its `tracestate`; `r` GET the URL in `x-upstream` and answer with that status and
/// body; `f` the same with the status only; anything else `404`.
const GUEST: &str = r#"(module
  (import "weft_http_v1" "request_path" (func $path (param i32 i32 i32) (result i32)))
  (import "weft_http_v1" "request_header" (func $header (param i32 i32 i32 i32 i32) (result i32)))
  (import "weft_http_v1" "response_status" (func $status (param i32) (result i32)))
  (import "weft_http_v1" "response_write" (func $write (param i32 i32) (result i32)))
  (import "weft_http_v1" "response_finish" (func $finish (result i32)))
  (import "weft_http_v1" "fetch_start" (func $fetch (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "weft_http_v1" "fetch_status" (func $fetch_status (param i32) (result i32)))
  (import "weft_http_v1" "fetch_body" (func $fetch_body (param i32 i32 i32 i32) (result i32)))
  (import "weft_http_v1" "handle_ready" (func $ready (param i32) (result i32)))
  (import "weft_http_v1" "block_on" (func $block_on (param i32) (result i32)))
  (import "weft_http_v1" "handle_close" (func $close (param i32) (result i32)))
  (import "wasix_32v1" "context_switch" (func $switch (param i64) (result i32)))
  (memory (export "memory") 2)
  (global (export "__stack_pointer") (mut i32) (i32.const 65536))
  (table (export "__indirect_function_table") 1 funcref)
  (data (i32.const 3000) "x-upstream")
  (data (i32.const 3016) "GET")
  (data (i32.const 3100) "traceparent")
  (data (i32.const 3120) "tracestate")

  (func $wait (param $h i32)
    (block $done
      (loop $again
        (br_if $done (i32.ne (call $ready (local.get $h)) (i32.const 0)))
        (drop (call $block_on (local.get $h)))
        (drop (call $switch (i64.const 0)))
        (br $again))))
  (func $respond (param $st i32)
    (drop (call $status (local.get $st)))
    (drop (call $finish)))
  ;; Writes at most 1000 bytes at $at, $n of them (nothing when $n is an error).
  (func $write_some (param $at i32) (param $n i32)
    (if (i32.gt_s (local.get $n) (i32.const 1000)) (then (local.set $n (i32.const 1000))))
    (if (i32.gt_s (local.get $n) (i32.const 0))
      (then (drop (call $write (local.get $at) (local.get $n))))))
  (func $echo_header (param $name i32) (param $len i32)
    (call $write_some (i32.const 6000)
      (call $header (local.get $name) (local.get $len) (i32.const 6000) (i32.const 1000) (i32.const 0)))
    (call $respond (i32.const 200)))
  ;; GET x-upstream; answer with its status (502 if it failed) and, if $relay, its body.
  (func $upstream (param $relay i32) (local $len i32) (local $h i32) (local $st i32)
    (local.set $len (call $header (i32.const 3000) (i32.const 10) (i32.const 2048) (i32.const 500) (i32.const 0)))
    (if (i32.lt_s (local.get $len) (i32.const 0)) (then (call $respond (i32.const 400)) (return)))
    (local.set $h (call $fetch (i32.const 3016) (i32.const 3) (i32.const 2048) (local.get $len)
                               (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
    (if (i32.lt_s (local.get $h) (i32.const 0)) (then (call $respond (i32.const 502)) (return)))
    (call $wait (local.get $h))
    (local.set $st (call $fetch_status (local.get $h)))
    (if (i32.lt_s (local.get $st) (i32.const 100)) (then (local.set $st (i32.const 502))))
    (if (local.get $relay) (then
      (call $write_some (i32.const 6000)
        (call $fetch_body (local.get $h) (i32.const 6000) (i32.const 1000) (i32.const 0)))))
    (drop (call $close (local.get $h)))
    (call $respond (local.get $st)))

  (func (export "weft_http_handle") (local $len i32) (local $c i32)
    (local.set $len (call $path (i32.const 1024) (i32.const 256) (i32.const 0)))
    (local.set $c (i32.load8_u (i32.const 1025)))
    (if (i32.eq (local.get $c) (i32.const 101)) (then
      (drop (call $write (i32.const 1024) (local.get $len)))
      (call $respond (i32.const 200)) (return)))
    (if (i32.eq (local.get $c) (i32.const 113)) (then
      (call $echo_header (i32.const 3100) (i32.const 11)) (return)))
    (if (i32.eq (local.get $c) (i32.const 122)) (then
      (call $echo_header (i32.const 3120) (i32.const 10)) (return)))
    (if (i32.eq (local.get $c) (i32.const 114)) (then (call $upstream (i32.const 1)) (return)))
    (if (i32.eq (local.get $c) (i32.const 102)) (then (call $upstream (i32.const 0)) (return)))
    (call $respond (i32.const 404))))"#;

/// Written once: tests run in parallel and must never read a half-written file.
fn guest_file() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = scratch_dir();
        let path = dir.join("guest.wat");
        std::fs::write(&path, GUEST).unwrap();
        path
    })
    .clone()
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-observability-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config() -> ServeConfig {
    let mut config = ServeConfig::new(guest_file());
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.workers = 2;
    config.policy = weft_http_attrib::Policy::for_workers(2);
    config.access_log = false;
    config
}

fn with_metrics(mut config: ServeConfig) -> ServeConfig {
    config.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config
}

struct Reply {
    status: u16,
    body: String,
}

/// One request on its own connection; `None` if the connection was refused.
fn try_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Option<Reply> {
    let mut stream = TcpStream::connect(addr).ok()?;
    // A hang guard, not a timing check: a server that never answers fails the test.
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut text = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    stream.write_all(text.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Some(Reply {
        status,
        body: body.to_string(),
    })
}

fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    try_get(addr, path, headers).unwrap_or_else(|| panic!("GET {path} on {addr} failed"))
}

/// The request slices of a finished server's trace file, by path: their `args`.
fn traced_requests(path: &PathBuf) -> BTreeMap<String, serde_json::Value> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["cat"] == "request" && event["ph"] == "X")
        .map(|event| {
            let name = event["name"].as_str().unwrap();
            let path = name.split(' ').nth(1).unwrap().to_string();
            (path, event["args"].clone())
        })
        .collect()
}

/// A server with trace context on, writing its trace to `name`.
fn traced_server(name: &str) -> (Server, PathBuf) {
    let trace = scratch_dir().join(format!("{name}.json"));
    let mut config = config();
    config.trace_context = true;
    config.trace = Some(trace.clone());
    (Server::start(config).unwrap(), trace)
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[test]
fn a_fetch_carries_the_trace_with_its_request_span_as_parent() {
    let (b, b_trace) = traced_server("chain-b");
    let (a, a_trace) = traced_server("chain-a");
    let upstream = format!("http://{}/q", b.local_addr());
    let reply = get(a.local_addr(), "/r", &[("x-upstream", &upstream)]);
    assert_eq!(reply.status, 200);
    stop(a);
    stop(b);

    // What B received, as B's guest read it.
    let parts: Vec<&str> = reply.body.split('-').collect();
    assert_eq!(parts.len(), 4, "a traceparent: {:?}", reply.body);
    let (version, trace_id, parent, flags) = (parts[0], parts[1], parts[2], parts[3]);
    assert_eq!(
        (version, flags),
        ("00", "01"),
        "a new trace here is sampled"
    );
    assert!(
        is_hex(trace_id, 32) && is_hex(parent, 16),
        "{:?}",
        reply.body
    );

    let a_request = &traced_requests(&a_trace)["/r"];
    assert_eq!(a_request["trace_id"], trace_id, "B joined A's trace");
    assert_eq!(a_request["span"], parent, "B's parent is A's request span");
    assert!(
        a_request["parent"].is_null(),
        "no incoming traceparent: A's request is the root"
    );
    let b_request = &traced_requests(&b_trace)["/q"];
    assert_eq!(b_request["trace_id"], trace_id);
    assert_eq!(b_request["parent"], parent);
    assert_ne!(
        b_request["span"], parent,
        "B's request is a span of its own"
    );
}

#[test]
fn an_incoming_traceparent_and_tracestate_are_continued() {
    let (b, _) = traced_server("continue-b");
    let (a, a_trace) = traced_server("continue-a");
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{client_trace}-{client_span}-01");
    let incoming = [
        ("traceparent", traceparent.as_str()),
        ("tracestate", "vendor=opaque"),
    ];
    let to_b = |path: &str| format!("http://{}{path}", b.local_addr());
    let via_a = |path: &str| {
        let upstream = to_b(path);
        let mut headers = incoming.to_vec();
        headers.push(("x-upstream", &upstream));
        get(a.local_addr(), &format!("/r{path}"), &headers)
    };
    let sent_on = via_a("/q");
    let state_sent_on = via_a("/z");
    // B's own tracing ignores a client that sends no traceparent to it directly: nothing to
    // check there. A is what continues the client's trace.
    stop(a);
    stop(b);

    let a_requests = traced_requests(&a_trace);
    let a_request = &a_requests["/r/q"];
    assert_eq!(a_request["trace_id"], client_trace);
    assert_eq!(
        a_request["parent"], client_span,
        "A's request is a child of the client's span"
    );
    let a_span = a_request["span"].as_str().unwrap();
    assert_ne!(a_span, client_span);
    assert_eq!(
        sent_on.body,
        format!("00-{client_trace}-{a_span}-01"),
        "the fetch carries the client's trace and A's span"
    );
    assert_eq!(
        state_sent_on.body, "vendor=opaque",
        "tracestate is passed on"
    );
}

/// `weft_requests_total` by (status, outcome), and the other samples by name.
fn scrape(metrics: SocketAddr) -> (BTreeMap<(String, String), u64>, BTreeMap<String, f64>) {
    let reply = get(metrics, "/metrics", &[]);
    assert_eq!(reply.status, 200);
    let mut requests = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in reply.body.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap();
        if let Some(labels) = name.strip_prefix("weft_requests_total{") {
            let label = |key: &str| {
                let start = labels.find(&format!("{key}=\"")).unwrap() + key.len() + 2;
                labels[start..].split('"').next().unwrap().to_string()
            };
            requests.insert((label("status"), label("outcome")), value as u64);
        } else {
            samples.insert(name.to_string(), value);
        }
    }
    (requests, samples)
}

#[test]
fn metrics_count_a_known_workload_exactly() {
    let mut config = with_metrics(config());
    // Instances retire after two requests, so reuse is observed while the server runs.
    config.policy.max_requests_per_instance = 2;
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let metrics = server.metrics_addr().unwrap();
    for i in 0..5 {
        assert_eq!(get(addr, &format!("/e{i}"), &[]).status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(addr, "/nothing", &[]).status, 404);
    }
    // A fetch back into the server itself: the inner request is refused (508), and the
    // outer one answers with that status.
    let own = format!("http://{addr}/e");
    assert_eq!(get(addr, "/f", &[("x-upstream", &own)]).status, 508);

    let expected: BTreeMap<(String, String), u64> = [
        (("200", "completed"), 5),
        (("404", "completed"), 3),
        (("508", "completed"), 1),
        (("508", "refused_loop"), 1),
    ]
    .into_iter()
    .map(|((s, o), n)| ((s.to_string(), o.to_string()), n))
    .collect();
    // A response can reach the client just before its request is accounted as finished, and
    // its instance dropped.
    wait_until("every request and instance to be counted", || {
        let (requests, samples) = scrape(metrics);
        requests == expected
            && samples["weft_contexts_live"] == 0.0
            && samples["weft_instances_retired_total"] >= 4.0
            && samples["weft_instance_requests_count"] == samples["weft_instances_retired_total"]
    });
    let (requests, samples) = scrape(metrics);
    assert_eq!(requests, expected, "counted once each, no more");
    assert_eq!(samples["weft_request_duration_seconds_count"], 9.0);
    assert_eq!(samples["weft_post_response_seconds_count"], 9.0);
    assert_eq!(samples["weft_outgoing_requests_total"], 1.0);
    assert_eq!(samples["weft_requests_in_flight"], 0.0);
    assert_eq!(samples["weft_queue_depth"], 0.0);
    assert_eq!(samples["weft_stragglers_total"], 0.0);
    assert_eq!(samples["weft_cpu_budget_traps_total"], 0.0);
    assert!(samples.contains_key("weft_stalls_total"));
    // Nine requests, two per instance: at least four instances were retired and dropped, and
    // each had served two.
    assert!(
        samples["weft_instances_retired_total"] >= 4.0,
        "{samples:?}"
    );
    let retired = samples["weft_instance_requests_count"];
    assert_eq!(retired, samples["weft_instances_retired_total"]);
    assert_eq!(samples["weft_instance_requests_sum"], 2.0 * retired);
    assert_eq!(
        samples["weft_instances_created_total"],
        retired + samples["weft_instances_live"]
    );
    stop(server);
}

#[test]
fn readiness_turns_503_when_the_drain_begins_and_health_stays_200() {
    let server = Server::start(with_metrics(config())).unwrap();
    let addr = server.local_addr();
    let ops = server.metrics_addr().unwrap();
    assert_eq!(get(ops, "/healthz", &[]).status, 200);
    assert_eq!(get(ops, "/readyz", &[]).status, 200);
    assert_eq!(get(ops, "/elsewhere", &[]).status, 404);

    let upstream = GatedUpstream::start();
    let url = format!("http://{}/", upstream.addr);
    let client = std::thread::spawn(move || get(addr, "/f", &[("x-upstream", &url)]).status);
    upstream.wait_for_request();
    assert_eq!(get(ops, "/readyz", &[]).status, 200);

    server.shutdown_handle().shutdown();
    wait_until("readiness to drop", || {
        get(ops, "/readyz", &[]).status == 503
    });
    assert_eq!(get(ops, "/healthz", &[]).status, 200, "draining is alive");

    upstream.release();
    assert_eq!(
        client.join().unwrap(),
        200,
        "the request in flight finished"
    );
    server.wait().unwrap();
    assert!(
        try_get(ops, "/healthz", &[]).is_none_or(|reply| reply.status == 0),
        "the listener is gone with the server"
    );
}

#[test]
fn two_servers_bound_with_reuse_port_share_the_port_and_both_serve() {
    let mut first = config();
    first.reuse_port = true;
    let first = Server::start(first).unwrap();
    let mut second = config();
    second.reuse_port = true;
    second.listen = first.local_addr();
    let second = Server::start(second).unwrap();
    assert_eq!(second.local_addr(), first.local_addr());

    // Without the option the port is taken.
    let mut third = config();
    third.listen = first.local_addr();
    assert!(matches!(
        Server::start(third),
        Err(ServeError::Listen { .. })
    ));

    // The kernel spreads connections by their source port: each server gets some.
    let addr = first.local_addr();
    let mut sent = 0;
    while first.stats().completed == 0 || second.stats().completed == 0 {
        assert!(sent < 500, "one server got all {sent} connections");
        assert_eq!(get(addr, "/e", &[]).status, 200);
        sent += 1;
    }
    stop(first);
    stop(second);
}

/// An OTLP/HTTP collector: decodes every export request and passes its spans on.
struct FakeCollector {
    url: String,
    spans: mpsc::Receiver<opentelemetry_proto::tonic::trace::v1::Span>,
}

impl FakeCollector {
    fn start() -> FakeCollector {
        use prost::Message;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, spans) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut data = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head_len, body_len) = loop {
                    let Ok(n) = stream.read(&mut chunk) else {
                        break (0, 0);
                    };
                    if n == 0 {
                        break (0, 0);
                    }
                    data.extend_from_slice(&chunk[..n]);
                    if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                        assert!(head.starts_with("post /v1/traces "), "{head}");
                        assert!(head.contains("content-type: application/x-protobuf"));
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        break (end + 4, len);
                    }
                };
                while data.len() < head_len + body_len {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => data.extend_from_slice(&chunk[..n]),
                    }
                }
                let request =
                    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                        &data[head_len..],
                    )
                    .unwrap();
                for resource in request.resource_spans {
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            let _ = tx.send(span);
                        }
                    }
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        FakeCollector { url, spans }
    }

    fn take(&self, count: usize) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
        (0..count)
            .map(|_| {
                self.spans
                    .recv_timeout(Duration::from_secs(60))
                    .expect("a span arrives")
            })
            .collect()
    }
}

fn attribute(
    span: &opentelemetry_proto::tonic::trace::v1::Span,
    key: &str,
) -> opentelemetry_proto::tonic::common::v1::any_value::Value {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone()?.value)
        .unwrap_or_else(|| panic!("no attribute {key} in {span:?}"))
}

#[test]
fn a_request_and_its_fetch_are_exported_as_parent_and_child_spans() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    let collector = FakeCollector::start();
    let b = Server::start(config()).unwrap();
    let mut a = config();
    a.otlp_endpoint = Some(collector.url.clone());
    let a = Server::start(a).unwrap();
    let upstream = format!("http://{}/e", b.local_addr());
    let reply = get(a.local_addr(), "/r", &[("x-upstream", &upstream)]);
    assert_eq!(reply.status, 200);
    // The drain sends what is queued.
    stop(a);
    stop(b);

    let mut spans = collector.take(2);
    spans.sort_by_key(|span| span.kind);
    let (server, client) = (&spans[0], &spans[1]);
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(client.kind, SpanKind::Client as i32);
    assert_eq!(server.trace_id.len(), 16);
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(client.parent_span_id, server.span_id);
    assert!(server.parent_span_id.is_empty(), "the trace began at A");
    assert!(server.start_time_unix_nano <= client.start_time_unix_nano);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);
    assert_eq!(
        attribute(server, "http.response.status_code"),
        Value::IntValue(200)
    );
    assert_eq!(attribute(server, "weft.outgoing"), Value::IntValue(1));
    assert_eq!(
        attribute(server, "weft.outcome"),
        Value::StringValue("completed".into())
    );
    assert_eq!(
        attribute(server, "weft.instance"),
        Value::StringValue("i1".into())
    );
    assert!(matches!(
        attribute(server, "weft.request_id"),
        Value::StringValue(id) if id.ends_with("-1")
    ));
    assert!(matches!(
        attribute(server, "weft.post_response_ms"),
        Value::DoubleValue(ms) if ms >= 0.0
    ));
    assert_eq!(
        attribute(client, "http.response.status_code"),
        Value::IntValue(200)
    );
    assert_eq!(attribute(client, "url.full"), Value::StringValue(upstream));
}

#[test]
fn an_unreachable_collector_does_not_hold_up_serving() {
    // A port that was free a moment ago: nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = config();
    config.otlp_endpoint = Some(format!("http://{closed}"));
    let server = Server::start(config).unwrap();
    for i in 0..20 {
        assert_eq!(get(server.local_addr(), &format!("/e{i}"), &[]).status, 200);
    }
    server.shutdown_handle().shutdown();
    let report = server.wait().unwrap();
    assert_eq!(report.served, 20);
}
