//! `weft serve` end to end on loopback, with a WAT guest (the C guests and their tests live in
//! `tests/`): concurrency on one instance, attribution of fetches (handler, helper context,
//! post-response work, override), loop detection, traps, a looping handler, malformed HTTP,
//! backpressure, drain and shutdown.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use weft_serve::{ServeConfig, ServeError, Server};

mod support;
use support::*;
use weft_wasix_context::{GuestFileError, LoadError};

const GUEST: &str = r#"(module
  (import "weft_http_v1" "request_path" (func $path (param i32 i32 i32) (result i32)))
  (import "weft_http_v1" "request_header" (func $header (param i32 i32 i32 i32 i32) (result i32)))
  (import "weft_http_v1" "response_status" (func $status (param i32) (result i32)))
  (import "weft_http_v1" "response_write" (func $write (param i32 i32) (result i32)))
  (import "weft_http_v1" "response_finish" (func $finish (result i32)))
  (import "weft_http_v1" "fetch_start" (func $fetch (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "weft_http_v1" "fetch_status" (func $fetch_status (param i32) (result i32)))
  (import "weft_http_v1" "sleep_start" (func $sleep_start (param i64) (result i32)))
  (import "weft_http_v1" "handle_ready" (func $ready (param i32) (result i32)))
  (import "weft_http_v1" "block_on" (func $block_on (param i32) (result i32)))
  (import "weft_http_v1" "handle_close" (func $close (param i32) (result i32)))
  (import "weft_http_v1" "backpressure" (func $backpressure (param i32) (result i32)))
  (import "weft_http_v1" "request_token" (func $token (result i64)))
  (import "weft_http_v1" "enter" (func $enter (param i64) (result i32)))
  (import "weft_http_v1" "exit" (func $exit (result i32)))
  (import "weft_http_v1" "schedule" (func $schedule (param i64) (result i32)))
  (import "wasix_32v1" "context_create" (func $create (param i32 i32) (result i32)))
  (import "wasix_32v1" "context_switch" (func $switch (param i64) (result i32)))
  (import "wasix_32v1" "context_destroy" (func $destroy (param i64) (result i32)))
  (import "weft_http_v1" "context_self" (func $self (result i64)))
  (memory (export "memory") 2)
  (global (export "__stack_pointer") (mut i32) (i32.const 65536))
  (global $saved_token (mut i64) (i64.const 0))
  (table (export "__indirect_function_table") 4 funcref)
  (elem (i32.const 1) $helper $creator_w $creator_n)
  (data (i32.const 3000) "x-upstream")
  (data (i32.const 3016) "GET")

  (func $wait (param $h i32)
    (block $done
      (loop $again
        (br_if $done (i32.ne (call $ready (local.get $h)) (i32.const 0)))
        (drop (call $block_on (local.get $h)))
        (drop (call $switch (i64.const 0)))
        (br $again))))
  (func $sleep_ms (param $ms i64) (local $h i32)
    (local.set $h (call $sleep_start (i64.mul (local.get $ms) (i64.const 1000000))))
    (call $wait (local.get $h))
    (drop (call $close (local.get $h))))
  ;; GET the URL in the request's `x-upstream` header; its status or -errno.
  (func $fetch_upstream (result i32)
    (call $fetch_url (call $header (i32.const 3000) (i32.const 10) (i32.const 2048) (i32.const 500) (i32.const 0))))
  ;; GET the URL of length $len at 2048 (negative: that error).
  (func $fetch_url (param $len i32) (result i32) (local $h i32) (local $st i32)
    (if (i32.lt_s (local.get $len) (i32.const 0)) (then (return (local.get $len))))
    (local.set $h (call $fetch (i32.const 3016) (i32.const 3) (i32.const 2048) (local.get $len)
                               (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
    (if (i32.lt_s (local.get $h) (i32.const 0)) (then (return (local.get $h))))
    (call $wait (local.get $h))
    (local.set $st (call $fetch_status (local.get $h)))
    (drop (call $close (local.get $h)))
    (local.get $st))
  (func $respond (param $st i32)
    (drop (call $status (local.get $st)))
    (drop (call $finish)))
  (func $helper
    (drop (call $fetch_upstream)))
  ;; For `c`: W works for the remembered request (override) and switches straight back to the
  ;; handler, whose id is at 4112; `enter`'s result goes to 4132.
  (func $creator_w
    (i32.store (i32.const 4132) (call $enter (global.get $saved_token)))
    (loop $back (drop (call $switch (i64.load (i32.const 4112)))) (br $back)))
  ;; For `c`: N fetches the URL the handler read (length at 4100), keeps the status at 4128
  ;; and switches back to the handler.
  (func $creator_n
    (i32.store (i32.const 4128) (call $fetch_url (i32.load (i32.const 4100))))
    (loop $back (drop (call $switch (i64.load (i32.const 4112)))) (br $back)))

  (func (export "weft_http_handle") (local $len i32) (local $c i32) (local $st i32)
    (local.set $len (call $path (i32.const 1024) (i32.const 256) (i32.const 0)))
    (local.set $c (i32.load8_u (i32.const 1025)))
    ;; e: echo the path
    (if (i32.eq (local.get $c) (i32.const 101)) (then
      (drop (call $write (i32.const 1024) (local.get $len)))
      (call $respond (i32.const 200)) (return)))
    ;; s: sleep 5 ms, then echo
    (if (i32.eq (local.get $c) (i32.const 115)) (then
      (call $sleep_ms (i64.const 5))
      ;; the buffer is shared by all contexts: read the path again after waiting
      (local.set $len (call $path (i32.const 1024) (i32.const 256) (i32.const 0)))
      (drop (call $write (i32.const 1024) (local.get $len)))
      (call $respond (i32.const 200)) (return)))
    ;; f: fetch upstream, answer with its status (502 on failure)
    (if (i32.eq (local.get $c) (i32.const 102)) (then
      (local.set $st (call $fetch_upstream))
      (if (i32.lt_s (local.get $st) (i32.const 100)) (then (local.set $st (i32.const 502))))
      (call $respond (local.get $st)) (return)))
    ;; h: a helper context fetches (it runs alongside and returns when done)
    (if (i32.eq (local.get $c) (i32.const 104)) (then
      (drop (call $create (i32.const 0) (i32.const 1)))
      (drop (call $schedule (i64.load (i32.const 0))))
      (call $respond (i32.const 200)) (return)))
    ;; p: answer, then sleep and fetch (post-response work)
    (if (i32.eq (local.get $c) (i32.const 112)) (then
      (call $respond (i32.const 200))
      (call $sleep_ms (i64.const 30))
      (drop (call $fetch_upstream)) (return)))
    ;; w: remember this request's token, stay live 300 ms
    (if (i32.eq (local.get $c) (i32.const 119)) (then
      (global.set $saved_token (call $token))
      (call $sleep_ms (i64.const 300))
      (call $respond (i32.const 200)) (return)))
    ;; v: work for the remembered request (override), fetch for it
    (if (i32.eq (local.get $c) (i32.const 118)) (then
      ;; read our own header first: under the override, request_* read the other request
      (local.set $len (call $header (i32.const 3000) (i32.const 10) (i32.const 2048) (i32.const 500) (i32.const 0)))
      (if (i32.ne (call $enter (global.get $saved_token)) (i32.const 0)) (then
        (call $respond (i32.const 500)) (return)))
      (local.set $st (call $fetch_url (local.get $len)))
      (drop (call $exit))
      (call $respond (local.get $st)) (return)))
    ;; c: the handler lets W enter the remembered request's override, then creates N and
    ;; switches to it with no weft_http_v1 call in between; N fetches. N works for the
    ;; handler's request (its creator), not for the request W worked for when it last ran.
    (if (i32.eq (local.get $c) (i32.const 99)) (then
      (i32.store (i32.const 4100)
        (call $header (i32.const 3000) (i32.const 10) (i32.const 2048) (i32.const 500) (i32.const 0)))
      (i64.store (i32.const 4112) (call $self))
      (drop (call $create (i32.const 4104) (i32.const 2)))
      (drop (call $switch (i64.load (i32.const 4104))))
      (if (i32.ne (i32.load (i32.const 4132)) (i32.const 0)) (then
        (drop (call $destroy (i64.load (i32.const 4104))))
        (call $respond (i32.const 500)) (return)))
      (drop (call $create (i32.const 4120) (i32.const 3)))
      (drop (call $switch (i64.load (i32.const 4120))))
      (drop (call $destroy (i64.load (i32.const 4104))))
      (drop (call $destroy (i64.load (i32.const 4120))))
      (call $respond (i32.const 200)) (return)))
    ;; x: a bad token and an unbalanced exit are errors (-EINVAL), not traps
    (if (i32.eq (local.get $c) (i32.const 120)) (then
      (if (i32.and (i32.eq (call $enter (i64.const 987654321)) (i32.const -28))
                   (i32.eq (call $exit) (i32.const -28)))
        (then (call $respond (i32.const 200)))
        (else (call $respond (i32.const 500))))
      (return)))
    ;; b: backpressure on (never lifted), answer
    (if (i32.eq (local.get $c) (i32.const 98)) (then
      (drop (call $backpressure (i32.const 1)))
      (call $respond (i32.const 200)) (return)))
    ;; d: answer, then sleep far beyond any drain timeout
    (if (i32.eq (local.get $c) (i32.const 100)) (then
      (call $respond (i32.const 200))
      (call $sleep_ms (i64.const 60000)) (return)))
    ;; t: trap
    (if (i32.eq (local.get $c) (i32.const 116)) (then unreachable))
    ;; l: loop forever
    (if (i32.eq (local.get $c) (i32.const 108)) (then (loop $forever (br $forever))))
    ;; g: answer, then spin until a `k` request raises the flag at 4000 (it never waits)
    (if (i32.eq (local.get $c) (i32.const 103)) (then
      (call $respond (i32.const 200))
      (loop $spin (br_if $spin (i32.eqz (i32.load (i32.const 4000)))))
      (return)))
    ;; u: spin until the flag is up, then answer
    (if (i32.eq (local.get $c) (i32.const 117)) (then
      (loop $spin (br_if $spin (i32.eqz (i32.load (i32.const 4000)))))
      (call $respond (i32.const 200)) (return)))
    ;; k: raise the flag
    (if (i32.eq (local.get $c) (i32.const 107)) (then
      (i32.store (i32.const 4000) (i32.const 1))
      (call $respond (i32.const 200)) (return)))
    (call $respond (i32.const 404))))"#;

/// Written once: tests run in parallel and must never read a half-written file.
fn guest_file() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("weft-serve-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("guest.wat");
        std::fs::write(&path, GUEST).unwrap();
        path
    })
    .clone()
}

fn config() -> ServeConfig {
    loopback(ServeConfig::new(guest_file()))
}

#[test]
fn echoes_and_tags_responses_with_the_request_id() {
    let server = Server::start(config()).unwrap();
    let reply = request(server.local_addr(), "/echo?x=1", &[]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "/echo?x=1");
    assert!(reply.headers["weft-request-id"].ends_with("-1"));
    assert_eq!(request(server.local_addr(), "/nothing", &[]).status, 404);
    let report = stop(server);
    assert_eq!(report.served, 2);
}

#[test]
fn concurrent_requests_share_one_instance() {
    let mut config = config();
    config.policy.max_instances = 1;
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let clients: Vec<_> = (0..40)
        .map(|i| std::thread::spawn(move || request(addr, &format!("/sleep{i}"), &[])))
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let reply = client.join().unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, format!("/sleep{i}"));
    }
    let report = stop(server);
    assert_eq!(report.stats.instances_created, 1);
    assert_eq!(report.stats.completed, 40);
}

#[test]
fn concurrent_requests_are_spread_over_the_instances_allowed_though_one_could_take_them_all() {
    // An instance runs its contexts one at a time, on one worker: it is busy from a request
    // it is given until it next waits, and when every instance is busy another is created
    // (within `max_instances`, two here), though one instance would take sixteen requests.
    let server = Server::start(config()).unwrap();
    let addr = server.local_addr();
    assert_eq!(request(addr, "/e", &[]).body, "/e");
    let mut served = 1;
    // Fewer than the 128 requests after which an instance is replaced.
    for _wave in 0..10 {
        let replies = concurrently(8, |i| request(addr, &format!("/e{i}"), &[]));
        for (i, reply) in replies.iter().enumerate() {
            assert_eq!(reply.body, format!("/e{i}"), "{reply:?}");
        }
        served += replies.len();
        if server.stats().instances_created > 1 {
            break;
        }
    }
    let report = stop(server);
    assert_eq!(report.stats.instances_created, 2, "{:?}", report.stats);
    assert_eq!(report.stats.completed, served as u64, "{:?}", report.stats);
}

#[test]
fn every_fetch_carries_the_id_of_the_request_that_caused_it() {
    let upstream = Upstream::start();
    let server = Server::start(config()).unwrap();
    let addr = server.local_addr();
    let clients: Vec<_> = (0..30)
        .map(|i| {
            let url = upstream.url(&format!("/f{i}"));
            std::thread::spawn(move || request(addr, "/fetch", &[("x-upstream", url)]))
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let reply = client.join().unwrap();
        assert_eq!(reply.status, 200, "upstream answered 200");
        assert_eq!(
            upstream.wait_for(&format!("/f{i}")),
            reply.headers["weft-request-id"]
        );
    }
    let report = stop(server);
    assert_eq!(report.stats.outgoing, 30);
}

#[test]
fn a_helper_context_works_for_its_creators_request() {
    let upstream = Upstream::start();
    let server = Server::start(config()).unwrap();
    let reply = request(
        server.local_addr(),
        "/helper",
        &[("x-upstream", upstream.url("/from-helper"))],
    );
    assert_eq!(reply.status, 200);
    assert_eq!(
        upstream.wait_for("/from-helper"),
        reply.headers["weft-request-id"]
    );
    stop(server);
}

#[test]
fn post_response_work_is_kept_alive_and_attributed() {
    let upstream = Upstream::start();
    let mut config = config();
    config.policy.max_requests_per_instance = 1; // retired after this request...
    let server = Server::start(config).unwrap();
    let reply = request(
        server.local_addr(),
        "/post",
        &[("x-upstream", upstream.url("/after-response"))],
    );
    assert_eq!(reply.status, 200);
    // ...but not dropped before its post-response fetch went out.
    assert_eq!(
        upstream.wait_for("/after-response"),
        reply.headers["weft-request-id"]
    );
    wait_until("the request to finish", || server.stats().completed == 1);
    assert_eq!(server.stats().instances_dropped, 1);
    assert_eq!(server.stats().stragglers, 0);
    stop(server);
}

/// What [`beside_a_waiting_request`] saw.
struct Beside {
    /// The reply to `/wait`, the request whose token the guest stored.
    waiting: Reply,
    /// The reply to the route that ran while `/wait` did.
    reply: Reply,
    /// The `weft-request-id` its outgoing request carried.
    carried: String,
}

/// On a single instance, runs `/wait` (which stores its request's token in a global for
/// 300 ms) and, meanwhile, `route` with an `x-upstream` header. `route` answers 500 while no
/// token is stored, so it is retried until `/wait` has started.
fn beside_a_waiting_request(route: &str, server: &Server, upstream: &Upstream) -> Beside {
    let addr = server.local_addr();
    let waiting = std::thread::spawn(move || request(addr, "/wait", &[]));
    let mut done = None;
    for attempt in 0..200 {
        let path = format!("{route}{attempt}");
        let reply = request(addr, route, &[("x-upstream", upstream.url(&path))]);
        if reply.status == 200 {
            done = Some((path, reply));
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let (path, reply) = done.unwrap_or_else(|| panic!("{route} never ran beside /wait"));
    Beside {
        waiting: waiting.join().unwrap(),
        reply,
        carried: upstream.wait_for(&path),
    }
}

fn single_instance_server() -> Server {
    let mut config = config();
    config.policy.max_instances = 1;
    Server::start(config).unwrap()
}

#[test]
fn the_override_attributes_work_to_another_live_request() {
    let upstream = Upstream::start();
    let server = single_instance_server();
    let seen = beside_a_waiting_request("/v", &server, &upstream);
    assert_eq!(seen.carried, seen.waiting.headers["weft-request-id"]);
    assert_ne!(seen.carried, seen.reply.headers["weft-request-id"]);
    // Bad tokens and unbalanced exits are errors, not traps.
    assert_eq!(request(server.local_addr(), "/x", &[]).status, 200);
    stop(server);
}

/// `/c` lets a helper enter `/wait`'s request, then creates a context and switches to it with
/// no host call in between: the new context works for `/c`'s request, its creator's.
#[test]
fn a_created_context_works_for_its_creator_even_after_switching_through_others() {
    let upstream = Upstream::start();
    let server = single_instance_server();
    let seen = beside_a_waiting_request("/c", &server, &upstream);
    assert_eq!(seen.carried, seen.reply.headers["weft-request-id"]);
    assert_ne!(seen.carried, seen.waiting.headers["weft-request-id"]);
    stop(server);
}

#[test]
fn a_request_coming_back_with_a_live_id_is_refused_with_508() {
    let server = Server::start(config()).unwrap();
    let addr = server.local_addr();
    let reply = request(
        addr,
        "/fetch",
        &[("x-upstream", format!("http://{addr}/echo"))],
    );
    // The inner request carried the outer one's live id: 508, which the guest passes on.
    assert_eq!(reply.status, 508);
    let report = stop(server);
    assert_eq!(report.stats.refused_loop, 1);
}

#[test]
fn a_trapping_handler_gets_500_and_the_server_goes_on() {
    let server = Server::start(config()).unwrap();
    let addr = server.local_addr();
    assert_eq!(request(addr, "/trap", &[]).status, 500);
    assert_eq!(request(addr, "/echo", &[]).status, 200);
    let report = stop(server);
    assert_eq!(report.stats.failed, 1);
}

#[test]
fn a_looping_handler_does_not_stall_others_and_exhausts_its_budget() {
    let mut config = config();
    config.cpu_budget = Duration::from_millis(300);
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let looping = std::thread::spawn(move || request(addr, "/loop", &[]));
    for i in 0..10 {
        assert_eq!(request(addr, &format!("/s{i}"), &[]).status, 200);
    }
    assert_eq!(looping.join().unwrap().status, 500);
    stop(server);
}

/// Contexts that spin (one after its answer, one before) are never switched away from: each
/// stalls its instance, which gives back what it had not started and takes nothing new, and
/// the other requests are served by other instances (stalled ones do not count against
/// `max_instances`). Nothing raises the flag the spinners wait for in their own instance, so
/// they end at their CPU budget.
#[test]
fn spinning_contexts_stall_only_their_instance() {
    let mut config = config();
    config.policy.max_instances = 2;
    config.cpu_budget = Duration::from_secs(1);
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    // Answered, then spinning in post-response work.
    assert_eq!(request(addr, "/gate", &[]).status, 200);
    // Spinning before it answers.
    let unanswered = std::thread::spawn(move || request(addr, "/until-flag", &[]));
    for i in 0..8 {
        let reply = request(addr, &format!("/echo{i}"), &[]);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, format!("/echo{i}"));
    }
    assert_eq!(unanswered.join().unwrap().status, 500);
    let report = stop(server);
    assert_eq!(report.stats.completed, 8, "the echoes");
    assert_eq!(
        report.stats.failed, 2,
        "the two spinners, at their CPU budget"
    );
}

#[test]
fn malformed_http_gets_400_and_the_server_keeps_serving() {
    let server = Server::start(config()).unwrap();
    let addr = server.local_addr();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(b"NOT HTTP AT ALL\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 400"), "{response:?}");
    assert_eq!(request(addr, "/echo", &[]).status, 200);
    stop(server);
}

#[test]
fn backpressure_sends_new_requests_to_another_instance() {
    let mut config = config();
    config.policy.max_instances = 2;
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    assert_eq!(request(addr, "/backpressure", &[]).status, 200);
    assert_eq!(request(addr, "/echo", &[]).status, 200);
    assert_eq!(server.stats().instances_created, 2);
    stop(server);
}

#[test]
fn work_past_the_drain_deadline_is_killed_and_counted() {
    let mut config = config();
    config.policy.drain_timeout = Duration::from_millis(100);
    let server = Server::start(config).unwrap();
    assert_eq!(request(server.local_addr(), "/dawdle", &[]).status, 200);
    wait_until("the straggler to be killed", || {
        server.stats().stragglers == 1
    });
    assert_eq!(server.stats().drained, 1);
    stop(server);
}

#[test]
fn shutdown_drains_post_response_work_and_writes_the_trace() {
    let upstream = Upstream::start();
    let trace = std::env::temp_dir().join(format!("weft-serve-trace-{}.json", std::process::id()));
    let mut config = config();
    config.trace = Some(trace.clone());
    let server = Server::start(config).unwrap();
    let reply = request(
        server.local_addr(),
        "/post",
        &[("x-upstream", upstream.url("/during-shutdown"))],
    );
    assert_eq!(reply.status, 200);
    let report = stop(server); // right after the response: the fetch is still to come
    assert_eq!(report.stats.completed, 1);
    assert_eq!(
        upstream.wait_for("/during-shutdown"),
        reply.headers["weft-request-id"]
    );
    let text = std::fs::read_to_string(&trace).unwrap();
    let json: weft_http_attrib::serde_json::Value =
        weft_http_attrib::serde_json::from_str(&text).unwrap();
    let events = json["traceEvents"].as_array().unwrap();
    assert!(events.iter().any(|e| e["ph"] == "s"), "a flow arrow starts");
    assert!(events.iter().any(|e| e["ph"] == "f"), "and ends");
    assert!(events.iter().any(|e| e["cat"] == "context"));
    let _ = std::fs::remove_file(trace);
}

#[test]
fn guests_that_cannot_serve_are_refused_at_load() {
    let dir = std::env::temp_dir().join(format!("weft-serve-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let start = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let mut config = config();
        config.wasm = path;
        Server::start(config).unwrap_err()
    };
    let no_handler = start("none.wat", "(module (memory (export \"memory\") 1))");
    assert!(
        matches!(no_handler, ServeError::Load(LoadError::MissingEntry { .. })),
        "{no_handler}"
    );
    let unknown = start(
        "unknown.wat",
        r#"(module (import "env" "nope" (func)) (func (export "weft_http_handle")))"#,
    );
    assert!(unknown.to_string().contains("env.nope"), "{unknown}");
    let missing = start("missing.wat", "");
    assert!(
        matches!(
            missing,
            ServeError::Load(LoadError::File(GuestFileError::NotWasm(_)))
        ),
        "{missing}"
    );
}

#[test]
fn shutdown_serves_requests_still_waiting_in_the_queue() {
    let mut config = config();
    config.policy.max_instances = 1;
    config.policy.max_in_flight_per_instance = 1;
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let clients: Vec<_> = (0..6)
        .map(|i| std::thread::spawn(move || request(addr, &format!("/s{i}"), &[])))
        .collect();
    wait_until("all requests to be submitted", || {
        server.stats().submitted == 6
    });
    let report = stop(server);
    for client in clients {
        assert_eq!(client.join().unwrap().status, 200);
    }
    assert_eq!(report.stats.completed, 6);
    assert_eq!(report.stats.instances_created, 1);
}

#[test]
fn per_request_instances_serve_each_request_in_a_fresh_instance() {
    let mut config = config();
    config.per_request_instance = true;
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let clients: Vec<_> = (0..5)
        .map(|i| std::thread::spawn(move || request(addr, &format!("/sleep{i}"), &[])))
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        assert_eq!(client.join().unwrap().body, format!("/sleep{i}"));
    }
    let report = stop(server);
    assert_eq!(report.stats.instances_created, 5);
    assert_eq!(report.stats.instances_dropped, 5);
}

/// Regression: an instance was put in the dispatcher's map only after the registry lock was
/// released, so a concurrent dispatcher could be told to start a request on it before it was
/// there, and that request was never answered. Instance churn makes that window frequent.
#[test]
fn requests_are_never_lost_while_instances_churn() {
    let mut config = config();
    config.policy.max_requests_per_instance = 2;
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let clients: Vec<_> = (0..8)
        .map(|c| {
            std::thread::spawn(move || {
                for i in 0..25 {
                    let reply = request(addr, &format!("/e{c}-{i}"), &[]);
                    assert_eq!(reply.status, 200);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    let report = stop(server);
    assert_eq!(report.stats.completed, 200);
    assert!(report.stats.instances_created >= 100);
}
