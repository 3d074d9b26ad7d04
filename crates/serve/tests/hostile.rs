//! Hostile guests and clients against a real server on loopback: each attack gets its clear
//! error (an errno, a status, a refusal), and an innocent request on the same server (the same
//! instance where that applies) is still answered `200`. No timing assertions: every wait is a
//! hang guard.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use weft_serve::{ServeConfig, ServeError, Server};
use weft_wasix_context::LoadError;

mod support;
use support::{loopback, stop};

const GUEST: &str = r#"(module
  (import "weft_http_v1" "request_path" (func $path (param i32 i32 i32) (result i32)))
  (import "weft_http_v1" "response_status" (func $status (param i32) (result i32)))
  (import "weft_http_v1" "response_header" (func $header (param i32 i32 i32 i32) (result i32)))
  (import "weft_http_v1" "response_write" (func $write (param i32 i32) (result i32)))
  (import "weft_http_v1" "response_finish" (func $finish (result i32)))
  (import "weft_http_v1" "fetch_start" (func $fetch (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "weft_http_v1" "sleep_start" (func $sleep_start (param i64) (result i32)))
  (import "weft_http_v1" "block_on" (func $block_on (param i32) (result i32)))
  (import "wasix_32v1" "context_switch" (func $switch (param i64) (result i32)))
  (memory (export "memory") 2)
  (global (export "__stack_pointer") (mut i32) (i32.const 65536))
  (table (export "__indirect_function_table") 1 funcref)
  (data (i32.const 3016) "GET")
  (data (i32.const 3032) "http://127.0.0.1:99999/x")

  ;; Writes a header name unique to $n at 3000: `x` and four letters a..p.
  (func $name (param $n i32) (local $k i32)
    (i32.store8 (i32.const 3000) (i32.const 120))
    (loop $digit
      (i32.store8 (i32.add (i32.const 3001) (local.get $k))
        (i32.add (i32.const 97)
          (i32.and (i32.shr_u (local.get $n) (i32.mul (local.get $k) (i32.const 4))) (i32.const 15))))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br_if $digit (i32.lt_u (local.get $k) (i32.const 4)))))
  (func $respond (param $st i32)
    (drop (call $status (local.get $st)))
    (drop (call $finish)))
  (func $check (param $ok i32)
    (call $respond (select (i32.const 200) (i32.const 500) (local.get $ok))))

  (func (export "weft_http_handle") (local $len i32) (local $c i32) (local $n i32) (local $r i32)
    (local.set $len (call $path (i32.const 1024) (i32.const 256) (i32.const 0)))
    (local.set $c (i32.load8_u (i32.const 1025)))
    ;; e: echo the path
    (if (i32.eq (local.get $c) (i32.const 101)) (then
      (drop (call $write (i32.const 1024) (local.get $len)))
      (call $respond (i32.const 200)) (return)))
    ;; H: append headers with distinct names (`xaaaa`, `xaaab`...) until refused: the 129th
    ;; gets -EMSGSIZE
    (if (i32.eq (local.get $c) (i32.const 72)) (then
      (block $full
        (loop $more
          (call $name (local.get $n))
          (local.set $r (call $header (i32.const 3000) (i32.const 5) (i32.const 3000) (i32.const 5)))
          (br_if $full (i32.ne (local.get $r) (i32.const 0)))
          (local.set $n (i32.add (local.get $n) (i32.const 1)))
          (br_if $more (i32.lt_u (local.get $n) (i32.const 40000)))))
      (call $check (i32.and (i32.eq (local.get $n) (i32.const 128))
                            (i32.eq (local.get $r) (i32.const -35))))
      (return)))
    ;; S: statuses outside 100..=599 are -EINVAL
    (if (i32.eq (local.get $c) (i32.const 83)) (then
      (call $check (i32.and (i32.and (i32.eq (call $status (i32.const 999)) (i32.const -28))
                                     (i32.eq (call $status (i32.const 99)) (i32.const -28)))
                            (i32.eq (call $status (i32.const -1)) (i32.const -28))))
      (return)))
    ;; W: write 64 KiB at a time until refused: -EMSGSIZE at the body limit
    (if (i32.eq (local.get $c) (i32.const 87)) (then
      (block $full
        (loop $more
          (local.set $r (call $write (i32.const 0) (i32.const 65536)))
          (br_if $full (i32.lt_s (local.get $r) (i32.const 0)))
          (br $more)))
      (call $check (i32.eq (local.get $r) (i32.const -35)))
      (return)))
    ;; M: grow memory 1 MiB at a time until it fails; answer 200 when it did fail
    (if (i32.eq (local.get $c) (i32.const 77)) (then
      (block $full
        (loop $more
          (br_if $full (i32.eq (memory.grow (i32.const 16)) (i32.const -1)))
          (local.set $n (i32.add (local.get $n) (i32.const 1)))
          (br_if $more (i32.lt_u (local.get $n) (i32.const 65536)))))
      (call $check (i32.lt_u (local.get $n) (i32.const 65536)))
      (return)))
    ;; U: a URL whose port does not fit is -EINVAL, never sent
    (if (i32.eq (local.get $c) (i32.const 85)) (then
      (call $check (i32.eq (call $fetch (i32.const 3016) (i32.const 3) (i32.const 3032) (i32.const 24)
                                        (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
                           (i32.const -28)))
      (return)))
    ;; N: switch to main without block_on and never answer
    (if (i32.eq (local.get $c) (i32.const 78)) (then
      (drop (call $switch (i64.const 0)))
      (call $respond (i32.const 200)) (return)))
    ;; o: register a wait, then spin until the flag at 4000 is up, then switch to main
    (if (i32.eq (local.get $c) (i32.const 111)) (then
      (drop (call $block_on (call $sleep_start (i64.const 1000000))))
      (loop $spin (br_if $spin (i32.eqz (i32.load (i32.const 4000)))))
      (drop (call $switch (i64.const 0)))
      (call $respond (i32.const 200)) (return)))
    ;; k: raise the flag
    (if (i32.eq (local.get $c) (i32.const 107)) (then
      (i32.store (i32.const 4000) (i32.const 1))
      (call $respond (i32.const 200)) (return)))
    (call $respond (i32.const 404))))"#;

fn write_guest(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    // Written under a name of its own per test thread, then renamed: never read half-written.
    let tmp = dir.join(format!("{name}.{:?}.tmp", std::thread::current().id()));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

fn config() -> ServeConfig {
    loopback(ServeConfig::new(write_guest("hostile.wat", GUEST)))
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    // A hang guard, not a timing check: a server that never answers fails the test.
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    stream
}

/// Sends `raw` and reads until the server closes: the whole response text.
fn exchange(addr: SocketAddr, raw: &str) -> String {
    let mut stream = connect(addr);
    stream.write_all(raw.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"),
    );
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_string();
    (status, body)
}

#[test]
fn guest_supplied_headers_and_statuses_are_checked_before_they_reach_the_http_library() {
    let mut config = config();
    config.policy.max_instances = 1;
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    // 40,000 headers used to panic `HeaderMap`, losing the instance and every request on it.
    assert_eq!(get(addr, "/Headers").0, 200);
    assert_eq!(get(addr, "/Status").0, 200);
    assert_eq!(get(addr, "/echo").0, 200, "the same instance still serves");
    let report = stop(server);
    assert_eq!(report.stats.instances_created, 1);
    assert_eq!(report.stats.failed, 0);
}

/// With the header limits lifted, 40,000 headers reach `HeaderMap`, which panics past its
/// capacity: the panic fails that request and its instance as a trap would, and the server
/// goes on with a new instance.
#[test]
fn a_host_panic_in_an_instance_fails_only_that_instance() {
    let mut config = config();
    config.policy.max_instances = 1;
    config.limits.max_response_headers = usize::MAX;
    config.limits.max_response_header_bytes = usize::MAX;
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    assert_eq!(get(addr, "/Headers").0, 500);
    assert_eq!(get(addr, "/echo").0, 200);
    let report = stop(server);
    assert_eq!(report.stats.instances_created, 2);
    assert_eq!(report.stats.failed, 1);
}

#[test]
fn a_response_body_is_capped_and_the_guest_told() {
    let mut config = config();
    config.limits.max_response_body = 1 << 20;
    // Held whole (a larger body would stream: `tests/streaming.rs`).
    config.limits.response_buffer = 2 << 20;
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let (status, body) = get(addr, "/Write");
    assert_eq!(status, 200);
    assert_eq!(body.len(), 1 << 20);
    assert_eq!(get(addr, "/echo").0, 200);
    stop(server);
}

#[test]
fn linear_memory_is_bounded_per_instance_and_a_bloated_instance_is_retired() {
    let mut config = config();
    config.policy.max_instances = 1;
    config.limits.max_instance_memory = 32 << 20;
    config.limits.retire_memory = 16 << 20;
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    // memory.grow fails at the limit: the request can still answer.
    assert_eq!(get(addr, "/Memory").0, 200);
    // The instance now holds more than the retirement mark: the next request gets a new one.
    assert_eq!(get(addr, "/echo").0, 200);
    let report = stop(server);
    assert_eq!(report.stats.instances_created, 2);
    assert_eq!(report.stats.failed, 0);
}

#[test]
fn the_memory_budget_bounds_all_instances_together() {
    let mut config = config();
    config.policy.max_instances = 1;
    config.limits.max_instance_memory = 64 << 20;
    config.limits.memory_budget = 8 << 20;
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    assert_eq!(get(addr, "/Memory").0, 200);
    assert_eq!(get(addr, "/echo").0, 200);
    stop(server);
}

#[test]
fn a_url_whose_port_does_not_fit_is_refused() {
    let server = Server::start(config()).unwrap();
    assert_eq!(get(server.local_addr(), "/Url").0, 200);
    stop(server);
}

#[test]
fn a_request_that_never_answers_gets_504_and_its_context_is_killed() {
    let mut config = config();
    config.policy.max_instances = 1;
    config.limits.request_timeout = Duration::from_millis(300);
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let (status, _) = get(addr, "/Never");
    assert_eq!(status, 504);
    assert_eq!(get(addr, "/echo").0, 200);
    let report = stop(server);
    assert!(report.killed.is_empty());
    assert_eq!(report.stats.stragglers, 1);
}

#[test]
fn shutdown_has_a_deadline_and_names_what_it_killed() {
    let mut config = config();
    config.limits.request_timeout = Duration::from_secs(600);
    config.limits.shutdown_timeout = Duration::from_millis(300);
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let never = std::thread::spawn(move || get(addr, "/Never"));
    // Wait until the request is live on the server.
    while server.stats().submitted == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let report = stop(server);
    assert_eq!(report.killed.len(), 1, "{:?}", report.killed);
    assert!(
        report.killed[0].ends_with("GET /Never"),
        "{:?}",
        report.killed
    );
    assert_eq!(never.join().unwrap().0, 503);
}

/// What a context called before it spun (here a `block_on`) makes no difference: it stalls
/// its instance, the other requests are served elsewhere, and it ends at its CPU budget.
#[test]
fn a_context_that_waits_then_spins_stalls_its_instance_all_the_same() {
    let mut config = config();
    config.policy.max_instances = 1;
    config.cpu_budget = Duration::from_secs(1);
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let spinner = std::thread::spawn(move || get(addr, "/o"));
    for i in 0..4 {
        assert_eq!(get(addr, &format!("/echo{i}")).0, 200);
    }
    assert_eq!(spinner.join().unwrap().0, 500);
    let report = stop(server);
    assert_eq!(report.stats.failed, 1);
}

#[test]
fn start_code_that_never_finishes_is_refused_at_startup() {
    let guest = write_guest(
        "init-loop.wat",
        r#"(module
          (memory (export "memory") 1)
          (func (export "_initialize") (loop $forever (br $forever)))
          (func (export "weft_http_handle")))"#,
    );
    let mut config = config();
    config.wasm = guest;
    config.cpu_budget = Duration::from_millis(200);
    let error = Server::start(config).unwrap_err();
    assert!(
        matches!(&error, ServeError::Load(LoadError::Instantiate { message, .. }) if message.contains("start code")),
        "{error}"
    );
}

#[test]
fn a_body_that_never_comes_gets_408_and_a_declared_oversized_one_413_at_once() {
    let mut config = config();
    config.limits.body_timeout = Duration::from_millis(300);
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let stalled = exchange(
        addr,
        "POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\nconnection: close\r\n\r\n",
    );
    assert!(stalled.starts_with("HTTP/1.1 408"), "{stalled:?}");
    // Refused from its head: no `100 Continue`, nothing read.
    let oversized = exchange(
        addr,
        "POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 1073741824\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n",
    );
    assert!(oversized.starts_with("HTTP/1.1 413"), "{oversized:?}");
    assert!(!oversized.contains("100 Continue"), "{oversized:?}");
    assert_eq!(get(addr, "/echo").0, 200);
    stop(server);
}

#[test]
fn connect_is_answered_and_idle_connections_are_closed() {
    let mut config = config();
    config.limits.header_timeout = Duration::from_millis(300);
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let tunnel = exchange(
        addr,
        "CONNECT example.com:443 HTTP/1.1\r\nhost: example.com\r\n\r\n",
    );
    assert!(tunnel.starts_with("HTTP/1.1 405"), "{tunnel:?}");
    // A connection that never sends a request is closed by the server (read returns).
    let mut idle = connect(addr);
    let mut buf = Vec::new();
    let _ = idle.read_to_end(&mut buf);
    assert_eq!(get(addr, "/echo").0, 200);
    stop(server);
}

#[test]
fn connections_are_capped_per_client() {
    let mut config = config();
    config.limits.max_connections_per_client = 4;
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let held: Vec<TcpStream> = (0..4).map(|_| connect(addr)).collect();
    // A fifth connection is closed before anything is read: no response comes.
    let mut fifth = connect(addr);
    let _ = fifth.write_all(b"GET /echo HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    let mut response = Vec::new();
    let _ = fifth.read_to_end(&mut response);
    assert!(
        response.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    drop(held);
    // The slots come back once the held connections are gone.
    let mut served = false;
    for _ in 0..2000 {
        if get(addr, "/echo").0 == 200 {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(served);
    stop(server);
}

/// `/C...` creates contexts until `context_create` fails and answers `200` if it failed with
/// `EAGAIN`, with as many body bytes as it created; the contexts stay live (they are
/// stragglers of the request). Anything else is answered `200` at once.
const CONTEXT_HOG: &str = r#"(module
  (import "weft_http_v1" "request_path" (func $path (param i32 i32 i32) (result i32)))
  (import "weft_http_v1" "response_status" (func $status (param i32) (result i32)))
  (import "weft_http_v1" "response_write" (func $write (param i32 i32) (result i32)))
  (import "weft_http_v1" "response_finish" (func $finish (result i32)))
  (import "wasix_32v1" "context_create" (func $create (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global (export "__stack_pointer") (mut i32) (i32.const 65536))
  (table (export "__indirect_function_table") 2 funcref)
  (elem (i32.const 1) $never_run)
  (func $never_run)
  (func (export "weft_http_handle") (local $n i32) (local $r i32)
    (drop (call $path (i32.const 1024) (i32.const 256) (i32.const 0)))
    (if (i32.eq (i32.load8_u (i32.const 1025)) (i32.const 67)) (then
      (block $full
        (loop $more
          (local.set $r (call $create (i32.const 0) (i32.const 1)))
          (br_if $full (local.get $r))
          (local.set $n (i32.add (local.get $n) (i32.const 1)))
          (br_if $more (i32.lt_u (local.get $n) (i32.const 4096)))))
      (drop (call $status (select (i32.const 200) (i32.const 500)
                                  (i32.eq (local.get $r) (i32.const 6)))))
      (drop (call $write (i32.const 2048) (local.get $n)))
      (drop (call $finish))
      (return)))
    (drop (call $status (i32.const 200)))
    (drop (call $finish))))"#;

/// The live-context budget is the server's, not an instance's: a guest that creates all the
/// contexts it can gets `EAGAIN` well below its own `--max-contexts`, later creates in any
/// instance get `EAGAIN` too, and requests (which need a handler context each) are still
/// answered from the share kept for handlers.
#[test]
fn a_guest_exhausting_the_server_wide_context_budget_leaves_room_for_requests() {
    let mut config = loopback(ServeConfig::new(write_guest(
        "context_hog.wat",
        CONTEXT_HOG,
    )));
    config.contexts.max_contexts = 1000;
    config.limits.max_live_contexts = 64;
    // The hogs' contexts stay live until the shutdown kills them.
    config.policy.drain_timeout = Duration::from_secs(600);
    config.limits.shutdown_timeout = Duration::from_millis(300);
    config.policy.max_in_flight_per_instance = 1;
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    // 64 less the eighth kept for handlers, less its own handler.
    let (status, body) = get(addr, "/Create");
    assert_eq!((status, body.len()), (200, 55));
    let (status, body) = get(addr, "/Create");
    assert_eq!((status, body.len()), (200, 0), "the budget is the server's");
    for _ in 0..4 {
        assert_eq!(get(addr, "/innocent").0, 200);
    }
    let report = stop(server);
    assert_eq!(report.stats.failed, 0);
}

/// `/O` moves its stack pointer below its shadow-stack region and switches to main; `/C`
/// overwrites the bottom of its region (the canary) with its stack pointer inside and
/// switches; anything else answers 200.
const SHADOW_OVERFLOW_GUEST: &str = r#"(module
  (import "weft_http_v1" "request_path" (func $path (param i32 i32 i32) (result i32)))
  (import "weft_http_v1" "response_status" (func $status (param i32) (result i32)))
  (import "weft_http_v1" "response_finish" (func $finish (result i32)))
  (import "wasix_32v1" "context_switch" (func $switch (param i64) (result i32)))
  (memory (export "memory") 2)
  (global $sp (export "__stack_pointer") (mut i32) (i32.const 65536))
  (table (export "__indirect_function_table") 1 funcref)
  (func (export "weft_http_handle") (local $c i32)
    (drop (call $path (i32.const 1024) (i32.const 256) (i32.const 0)))
    (local.set $c (i32.load8_u (i32.const 1025)))
    (if (i32.eq (local.get $c) (i32.const 79)) (then
      (global.set $sp (i32.sub (global.get $sp) (i32.const 70000)))
      (drop (call $switch (i64.const 0)))))
    (if (i32.eq (local.get $c) (i32.const 67)) (then
      (i32.store8 (i32.sub (global.get $sp) (i32.const 65521)) (i32.const 0))
      (drop (call $switch (i64.const 0)))))
    (drop (call $status (i32.const 200)))
    (drop (call $finish))))"#;

#[test]
fn a_context_that_overflows_its_shadow_stack_fails_only_its_instance() {
    let mut config = loopback(ServeConfig::new(write_guest(
        "shadow_overflow.wat",
        SHADOW_OVERFLOW_GUEST,
    )));
    config.policy.max_instances = 1;
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    assert_eq!(get(addr, "/ok").0, 200);
    assert_eq!(get(addr, "/Overflow").0, 500);
    assert_eq!(get(addr, "/ok").0, 200, "a new instance serves");
    assert_eq!(get(addr, "/Canary").0, 500);
    assert_eq!(get(addr, "/ok").0, 200);
    let report = stop(server);
    assert_eq!(report.stats.instances_created, 3);
    assert_eq!(report.stats.failed, 2);
}
