//! Response bodies larger than the host's response buffer stream to the client: the host
//! holds at most the buffer, a guest that writes faster than its client reads waits (only
//! its context), a client that hangs up gives the guest `EPIPE`, and a body that cannot be
//! finished reaches the client cut short, never as complete; the same for a component's body
//! (the C `wasi:http/proxy` guest `p2_hello_c`). Loopback only; every wait is a hang guard,
//! not a timing check.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use weft_serve::{ServeConfig, Server};

mod support;
use support::{component_guest, loopback, request, stop};

/// Routes (first letter of the path after `/`):
/// - `b`: 200, then a body of `$big` zero bytes written 64 KiB at a time, waiting on
///   `response_writable` whenever a write is refused with `EAGAIN` (counted in `$waits`).
/// - `f`: the same, forever: until a write fails; its errno is kept in `$last`.
/// - `h`: a header after the head went out must be `EALREADY`: `200` if it was.
/// - `w`: `200` once some writer has waited for its client, `503` before.
/// - `p`: `200` once a writer saw `EPIPE`, `503` before.
/// - anything else: `200`, empty.
const GUEST: &str = r#"(module
  (import "weft_http_v1" "request_path" (func $path (param i32 i32 i32) (result i32)))
  (import "weft_http_v1" "response_status" (func $status (param i32) (result i32)))
  (import "weft_http_v1" "response_header" (func $header (param i32 i32 i32 i32) (result i32)))
  (import "weft_http_v1" "response_write" (func $write (param i32 i32) (result i32)))
  (import "weft_http_v1" "response_writable" (func $writable (result i32)))
  (import "weft_http_v1" "response_finish" (func $finish (result i32)))
  (import "weft_http_v1" "block_on" (func $block_on (param i32) (result i32)))
  (import "weft_http_v1" "handle_close" (func $close (param i32) (result i32)))
  (import "wasix_32v1" "context_switch" (func $switch (param i64) (result i32)))
  (memory (export "memory") 3)
  (global (export "__stack_pointer") (mut i32) (i32.const 65536))
  (global $waits (mut i32) (i32.const 0))
  (global $last (mut i32) (i32.const 0))
  (global $big i32 (i32.const 67108864))
  (table (export "__indirect_function_table") 1 funcref)
  (data (i32.const 3000) "x-late")

  ;; Writes all of [ptr, ptr + len): 0, or the first errno other than EAGAIN (negative).
  (func $write_all (param $ptr i32) (param $len i32) (result i32) (local $n i32) (local $h i32)
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $len)))
        (local.set $n (call $write (local.get $ptr) (local.get $len)))
        (if (i32.eq (local.get $n) (i32.const -6)) (then
          (global.set $waits (i32.add (global.get $waits) (i32.const 1)))
          (local.set $h (call $writable))
          (drop (call $block_on (local.get $h)))
          (drop (call $switch (i64.const 0)))
          (drop (call $close (local.get $h)))
          (br $more)))
        (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (local.get $n))))
        (local.set $ptr (i32.add (local.get $ptr) (local.get $n)))
        (local.set $len (i32.sub (local.get $len) (local.get $n)))
        (br $more)))
    (i32.const 0))

  (func $answer (param $ok i32)
    (drop (call $status (select (i32.const 200) (i32.const 503) (local.get $ok))))
    (drop (call $finish)))

  (func (export "weft_http_handle") (local $c i32) (local $sent i32) (local $r i32)
    (drop (call $path (i32.const 1024) (i32.const 256) (i32.const 0)))
    (local.set $c (i32.load8_u (i32.const 1025)))
    (if (i32.eq (local.get $c) (i32.const 98)) (then
      (block $end
        (loop $more
          (local.set $r (call $write_all (i32.const 65536) (i32.const 65536)))
          (br_if $end (i32.lt_s (local.get $r) (i32.const 0)))
          (local.set $sent (i32.add (local.get $sent) (i32.const 65536)))
          (br_if $more (i32.lt_u (local.get $sent) (global.get $big)))))
      (global.set $last (local.get $r))
      (drop (call $finish))
      (return)))
    (if (i32.eq (local.get $c) (i32.const 102)) (then
      (loop $more
        (local.set $r (call $write_all (i32.const 65536) (i32.const 65536)))
        (br_if $more (i32.eqz (local.get $r))))
      (global.set $last (local.get $r))
      (drop (call $finish))
      (return)))
    (if (i32.eq (local.get $c) (i32.const 104)) (then
      (drop (call $write_all (i32.const 65536) (i32.const 65536)))
      (drop (call $write_all (i32.const 65536) (i32.const 65536)))
      (if (i32.ne (call $header (i32.const 3000) (i32.const 6) (i32.const 3000) (i32.const 6))
                  (i32.const -7))
        (then (drop (call $write_all (i32.const 3000) (i32.const 6)))))
      (drop (call $finish))
      (return)))
    (if (i32.eq (local.get $c) (i32.const 119)) (then
      (call $answer (i32.gt_u (global.get $waits) (i32.const 0)))
      (return)))
    (if (i32.eq (local.get $c) (i32.const 112)) (then
      (call $answer (i32.eq (global.get $last) (i32.const -64)))
      (return)))
    (call $answer (i32.const 1))))"#;

fn config() -> ServeConfig {
    let dir = std::env::temp_dir().join(format!("weft-streaming-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path: PathBuf = dir.join("streaming.wat");
    let tmp = dir.join(format!("streaming.{:?}.tmp", std::thread::current().id()));
    std::fs::write(&tmp, GUEST).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let mut config = loopback(ServeConfig::new(path));
    config.policy.max_instances = 1;
    config.limits.response_buffer = 64 << 10;
    config.limits.max_response_body = 1 << 30;
    config
}

/// Sends `GET path` and reads up to the end of the response head: the open connection and
/// the head.
fn open(addr: SocketAddr, path: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    (stream, String::from_utf8(head).unwrap())
}

/// The chunks of a `transfer-encoding: chunked` body: the decoded bytes, and whether the
/// final (empty) chunk came, i.e. whether the body was complete.
fn dechunk(mut raw: &[u8]) -> (usize, bool) {
    let mut total = 0;
    loop {
        let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return (total, false);
        };
        let size = std::str::from_utf8(&raw[..end])
            .ok()
            .and_then(|line| usize::from_str_radix(line.split(';').next()?.trim(), 16).ok());
        let Some(size) = size else {
            return (total, false);
        };
        raw = &raw[end + 2..];
        if size == 0 {
            return (total, raw.starts_with(b"\r\n"));
        }
        if raw.len() < size + 2 {
            return (total + raw.len().min(size), false);
        }
        total += size;
        raw = &raw[size + 2..];
    }
}

/// Polls `path` until it answers 200 (a hang guard bounds it).
fn eventually_ok(addr: SocketAddr, path: &str) {
    for _ in 0..4000 {
        if request(addr, path, &[]).status == 200 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{path} never answered 200");
}

#[test]
fn a_body_larger_than_the_response_buffer_streams_while_the_client_reads() {
    let server = Server::start(config()).unwrap();
    let addr = server.local_addr();
    let (mut stream, head) = open(addr, "/big");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    // The client reads nothing more yet: 64 MiB cannot all be buffered (the host holds 64 KiB,
    // the sockets a few MiB), so the writer waits, and only its context does: the instance
    // serves other requests meanwhile.
    eventually_ok(addr, "/waits");
    assert_eq!(request(addr, "/echo", &[]).status, 200);
    let mut body = Vec::new();
    stream.read_to_end(&mut body).unwrap();
    assert_eq!(dechunk(&body), (64 << 20, true));
    let report = stop(server);
    assert_eq!(report.stats.instances_created, 1);
    assert_eq!(report.stats.failed, 0);
}

#[test]
fn the_head_is_fixed_once_it_went_out() {
    let server = Server::start(config()).unwrap();
    let addr = server.local_addr();
    let (mut stream, head) = open(addr, "/head");
    assert!(!head.contains("x-late"), "{head}");
    let mut body = Vec::new();
    stream.read_to_end(&mut body).unwrap();
    // 128 KiB of zeros; six more bytes had the late header not been refused with EALREADY.
    assert_eq!(dechunk(&body), (128 << 10, true));
    stop(server);
}

#[test]
fn a_client_that_hangs_up_mid_stream_gives_the_guest_epipe() {
    let server = Server::start(config()).unwrap();
    let addr = server.local_addr();
    let (stream, _) = open(addr, "/forever");
    drop(stream);
    eventually_ok(addr, "/pipe");
    assert_eq!(request(addr, "/echo", &[]).status, 200);
    let report = stop(server);
    assert_eq!(report.stats.failed, 0);
}

#[test]
fn a_stream_that_is_not_finished_in_time_reaches_the_client_cut_short() {
    let mut config = config();
    config.limits.request_timeout = Duration::from_millis(500);
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let (mut stream, head) = open(addr, "/forever");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Not reading: the writer waits until the request's deadline kills it.
    eventually_ok(addr, "/waits");
    let mut body = Vec::new();
    let _ = stream.read_to_end(&mut body);
    let (_, complete) = dechunk(&body);
    assert!(
        !complete,
        "a cut-short body must not end with the final chunk"
    );
    assert_eq!(request(addr, "/echo", &[]).status, 200);
    let report = stop(server);
    assert_eq!(report.stats.stragglers, 1);
}

fn component_config() -> ServeConfig {
    let mut config = loopback(ServeConfig::new(component_guest("p2_hello_c")));
    config.policy.max_instances = 1;
    config.limits.response_buffer = 64 << 10;
    config.limits.max_response_body = 1 << 30;
    config
}

#[test]
fn a_components_large_body_streams_as_the_client_reads() {
    let server = Server::start(component_config()).unwrap();
    let addr = server.local_addr();
    let (mut stream, head) = open(addr, &format!("/big?bytes={}", 64 << 20));
    // The head came before the body was whole: a whole body would carry its length.
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let mut body = Vec::new();
    stream.read_to_end(&mut body).unwrap();
    assert_eq!(dechunk(&body), (64 << 20, true));
    // A body that fits the buffer goes out whole, with its length.
    let (mut stream, head) = open(addr, "/big?bytes=1000");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 1000"),
        "{head}"
    );
    let mut body = Vec::new();
    stream.read_to_end(&mut body).unwrap();
    assert_eq!(body.len(), 1000);
    let report = stop(server);
    assert_eq!(report.stats.failed, 0);
    assert_eq!(report.stats.instances_created, 1);
}

#[test]
fn a_component_whose_client_hangs_up_mid_stream_goes_on_serving() {
    let server = Server::start(component_config()).unwrap();
    let addr = server.local_addr();
    let (stream, _) = open(addr, &format!("/big?bytes={}", 1 << 30));
    drop(stream);
    // The guest's writes fail once its body is dropped; its handler returns and the same
    // (sequentially reused) instance takes the next request.
    let reply = request(addr, "/after", &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.body.contains("request 2 of this instance"),
        "{reply:?}"
    );
    let report = stop(server);
    assert_eq!(report.stats.failed, 0);
}
