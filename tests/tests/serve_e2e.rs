//! `weft serve` end to end, on loopback only: the guest `guests/http/http_e2e.c` served by the
//! real `weft` binary, driven by a small HTTP/1.1 client, with an upstream HTTP server in this
//! process that records the `weft-request-id` of every request it receives.
//!
//! One test per behaviour of `weft serve`: attribution of every upstream request (200 concurrent
//! requests whose handlers sleep, fetch, use a helper context or hand work to a worker that
//! uses `enter`/`exit`; checked against the upstream's records, the access log, the response
//! headers and the trace's flow arrows), post-response work (kept alive, or killed and counted
//! at the drain deadline), backpressure, loop detection (508), malformed requests (400), a
//! trapping handler (500) and an infinite loop (CPU budget), each next to normal requests.
//!
//! No timing assertions: where a test needs "while X is still going on", the upstream holds a
//! request (a *gate*) until the test opens it, or the test waits for a line the guest logs. Every
//! wait is bounded by [`HANG_GUARD`], a guard against hanging CI, far above any real duration.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::thread;

use weft_e2e::serve::*;

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// The kinds of handlers of the attribution test and how many upstream requests each
/// makes.
const ATTRIBUTION_KINDS: [(&str, usize); 5] = [
    ("sleep", 1),
    ("fetch", 2),
    ("helper", 1),
    ("spawn", 1),
    ("worker", 1),
];
const CONCURRENT_REQUESTS: usize = 200;

#[test]
fn every_upstream_request_carries_the_id_of_the_request_that_caused_it() {
    let upstream = Upstream::start();
    let trace = std::env::temp_dir().join(format!("weft-serve-e2e-{}.json", std::process::id()));
    let serve = Serve::start("http_e2e", &["--trace", trace.to_str().unwrap()]);
    let base = upstream.base_url();
    let start = Arc::new(Barrier::new(CONCURRENT_REQUESTS));
    let clients: Vec<_> = (0..CONCURRENT_REQUESTS)
        .map(|n| {
            let (kind, _) = ATTRIBUTION_KINDS[n % ATTRIBUTION_KINDS.len()];
            let path = format!("/{kind}?n={n}");
            let (addr, base, start) = (serve.addr, base.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                let response = get(addr, &path, &[("x-upstream", &base)]);
                (path, response)
            })
        })
        .collect();
    let responses: HashMap<String, Response> =
        clients.into_iter().map(|c| c.join().unwrap()).collect();
    for (path, response) in &responses {
        assert_status(response, 200, path);
    }

    // Each incoming request's id, from the access log (and its own count of outgoing calls).
    let mut id_of = HashMap::new();
    let mut outgoing_of_request = HashMap::new();
    let mut expected_hits = 0;
    for n in 0..CONCURRENT_REQUESTS {
        let (kind, fetches) = ATTRIBUTION_KINDS[n % ATTRIBUTION_KINDS.len()];
        let path = format!("/{kind}?n={n}");
        let log = serve.access_log(&path);
        assert_eq!(field(&log, "status"), "200", "{log:?}");
        assert_eq!(field(&log, "outgoing"), fetches.to_string(), "{log:?}");
        assert_eq!(field(&log, "outcome"), "completed", "{log:?}");
        assert_eq!(
            responses[&path].request_id.as_deref(),
            Some(field(&log, "id")),
            "the response carries its request's id"
        );
        id_of.insert(format!("/up{path}"), field(&log, "id").to_string());
        outgoing_of_request.insert(field(&log, "request").to_string(), fetches);
        expected_hits += fetches;
    }
    let distinct_ids: HashSet<&String> = id_of.values().collect();
    assert_eq!(
        distinct_ids.len(),
        CONCURRENT_REQUESTS,
        "request ids are unique"
    );

    let hits = upstream.hits();
    let attributed = hits
        .iter()
        .filter(|hit| hit.request_id.is_some() && hit.request_id.as_ref() == id_of.get(&hit.path))
        .count();
    let wrong: Vec<&Hit> = hits
        .iter()
        .filter(|hit| hit.request_id.is_none() || hit.request_id.as_ref() != id_of.get(&hit.path))
        .take(10)
        .collect();
    eprintln!("attributed {attributed}/{} upstream requests", hits.len());
    assert!(
        wrong.is_empty(),
        "upstream requests with a missing or wrong {REQUEST_ID_HEADER} (first 10): {wrong:#?}"
    );
    assert_eq!(
        hits.len(),
        expected_hits,
        "every fetch reached the upstream once"
    );
    assert_eq!(attributed, expected_hits);
    // Helpers and workers were all ended by the guest: none was left for the drain to kill.
    let drained = serve.stop_cleanly();
    assert!(
        drained.contains("(0 refused, 0 failed, 0 stragglers)"),
        "{drained}"
    );

    // The trace shows the same: an arrow from each request's slice to each of its outgoing calls.
    let text = std::fs::read_to_string(&trace).expect("weft serve wrote the trace on SIGTERM");
    let _ = std::fs::remove_file(&trace);
    let outgoing_in_trace = outgoing_calls_by_request_in_trace(&text);
    assert_eq!(outgoing_in_trace, outgoing_of_request);
}

/// Follows every flow arrow of a Chrome trace from its tail (on a request's slice) to its head
/// (on an outgoing call's slice), checks both name the same request, and counts the arrows per
/// request.
fn outgoing_calls_by_request_in_trace(text: &str) -> HashMap<String, usize> {
    let json: serde_json::Value = serde_json::from_str(text).expect("the trace is JSON");
    let events = json["traceEvents"]
        .as_array()
        .or_else(|| json.as_array())
        .expect("trace events");
    let track = |e: &serde_json::Value| (e["pid"].as_u64(), e["tid"].as_u64());
    let time = |e: &serde_json::Value, key: &str| e[key].as_f64().unwrap_or(0.0);
    // Request and outgoing slices by (category, track): (start, end, request).
    type Track = (Option<u64>, Option<u64>);
    type Slices = Vec<(f64, f64, String)>;
    let mut slices: HashMap<(String, Track), Slices> = HashMap::new();
    for e in events.iter().filter(|e| e["ph"] == "X") {
        let Some(category @ ("request" | "outgoing")) = e["cat"].as_str() else {
            continue;
        };
        let request = e["args"]["request"]
            .as_str()
            .expect("slices name their request");
        slices
            .entry((category.to_string(), track(e)))
            .or_default()
            .push((
                time(e, "ts"),
                time(e, "ts") + time(e, "dur"),
                request.to_string(),
            ));
    }
    // The request named by the slice of `category` on `event`'s track that encloses it.
    let enclosing = |category: &str, event: &serde_json::Value| -> String {
        let ts = time(event, "ts");
        let found: Vec<&String> = slices
            .get(&(category.to_string(), track(event)))
            .into_iter()
            .flatten()
            .filter(|(start, end, _)| *start <= ts && ts <= *end)
            .map(|(_, _, request)| request)
            .collect();
        assert_eq!(found.len(), 1, "one {category} slice encloses {event}");
        found[0].clone()
    };
    let mut heads = HashMap::new();
    for head in events.iter().filter(|e| e["ph"] == "f") {
        assert!(
            heads.insert(head["id"].as_u64(), head).is_none(),
            "one head per arrow"
        );
    }
    let mut per_request = HashMap::new();
    for tail in events.iter().filter(|e| e["ph"] == "s") {
        let head = heads
            .remove(&tail["id"].as_u64())
            .unwrap_or_else(|| panic!("arrow {tail} has no head"));
        let request = enclosing("request", tail);
        assert_eq!(
            request,
            enclosing("outgoing", head),
            "arrow {tail} -> {head}"
        );
        *per_request.entry(request).or_insert(0) += 1;
    }
    assert!(heads.is_empty(), "arrow heads without a tail: {heads:?}");
    per_request
}

#[test]
fn post_response_fetch_arrives_upstream_and_keeps_the_retired_instance_alive() {
    let upstream = Upstream::start();
    // Every instance retires after one request; post-response work must still keep it alive.
    let serve = Serve::start(
        "http_e2e",
        &["--max-requests", "1", "--drain-timeout", "100"],
    );
    let path = "/post?n=1&gate=post";
    let response = serve.get(path, &[("x-upstream", &upstream.base_url())]);
    // The response came back while the upstream still holds the fetch made after it.
    assert_status(&response, 200, path);
    assert_eq!(response.body, "post-response work scheduled\n");
    let hit = upstream.wait_for_hit("gate=post");
    let sent_id = hit
        .request_id
        .expect("the post-response fetch carries an id");
    assert!(
        !serve.has_line(|line| is_access_log_for(line, path)),
        "the request was logged as finished while its post-response fetch was still held\n{}",
        serve.dump()
    );

    // Meanwhile the retired instance takes no new request: another one serves it.
    assert_status(&serve.get("/hello?n=2", &[]), 200, "/hello?n=2");
    let hello = serve.access_log("/hello?n=2");

    upstream.open_gate("post");
    let done = serve.guest_log(&format!("post-response fetch done {path} status=200"));
    let post = serve.access_log(path);
    assert_eq!(
        field(&done, "id"),
        sent_id,
        "the guest's log line is attributed too"
    );
    assert_eq!(field(&post, "id"), sent_id);
    assert_eq!(field(&post, "status"), "200");
    assert_eq!(field(&post, "outgoing"), "1");
    assert_eq!(field(&post, "outcome"), "completed", "{post:?}");
    assert_eq!(field(&done, "instance"), field(&post, "instance"));
    assert_ne!(
        field(&hello, "instance"),
        field(&post, "instance"),
        "a retired instance (--max-requests 1) took another request"
    );
    let post_response_ms: f64 = field(&post, "post_response_ms").parse().unwrap();
    assert!(post_response_ms > 0.0, "{post:?}");
    serve.stop_cleanly();
}

#[test]
fn post_response_work_past_the_drain_deadline_is_killed_and_counted() {
    let upstream = Upstream::start();
    let serve = Serve::start("http_e2e", &["--drain-timeout", "0.2"]);
    let path = "/post?n=1&gate=never";
    let response = serve.get(path, &[("x-upstream", &upstream.base_url())]);
    assert_status(&response, 200, path);
    upstream.wait_for_hit("gate=never");
    // The upstream holds the fetch until the deadline has killed the context waiting for it.
    let post = serve.access_log(path);
    assert_eq!(field(&post, "outcome"), "drained", "{post:?}");
    assert_eq!(field(&post, "stragglers"), "1", "{post:?}");
    upstream.open_gate("never");
    assert_status(&serve.get("/hello", &[]), 200, "/hello after the drain");
    assert!(
        !serve.has_line(|line| line.contains("post-response fetch done")),
        "the killed context logged after its deadline\n{}",
        serve.dump()
    );
    let drained = serve.stop_cleanly();
    assert!(drained.contains(" 1 stragglers)"), "{drained}");
}

/// Starts `path` (a handler that holds `gate` upstream), waits until it is in its fetch, sends
/// `/hello?n=<n>` meanwhile, then lets the first one finish. Returns both instances.
fn instance_beside_a_held_request(
    serve: &Serve,
    upstream: &Upstream,
    path: &str,
    gate: &str,
    n: u32,
) -> (String, String) {
    let held = {
        let (addr, base, path) = (serve.addr, upstream.base_url(), path.to_string());
        thread::spawn(move || get(addr, &path, &[("x-upstream", &base)]))
    };
    upstream.wait_for_hit(&format!("gate={gate}"));
    let hello_path = format!("/hello?n={n}");
    assert_status(&serve.get(&hello_path, &[]), 200, &hello_path);
    upstream.open_gate(gate);
    assert_status(&held.join().unwrap(), 200, path);
    (
        field(&serve.access_log(path), "instance").to_string(),
        field(&serve.access_log(&hello_path), "instance").to_string(),
    )
}

#[test]
fn backpressure_moves_new_requests_to_another_instance() {
    let upstream = Upstream::start();
    let serve = Serve::start("http_e2e", &["--max-instances", "4"]);
    // Control: without backpressure, a second request shares the busy instance.
    let (held, beside) =
        instance_beside_a_held_request(&serve, &upstream, "/hold?n=1&gate=hold", "hold", 1);
    assert_eq!(
        held, beside,
        "without backpressure the instance is reused concurrently"
    );
    // With backpressure on, it goes to another instance.
    let (held, beside) =
        instance_beside_a_held_request(&serve, &upstream, "/bp?n=2&gate=bp", "bp", 2);
    assert_ne!(
        held, beside,
        "an instance under backpressure took a new request"
    );
    // Lifted: the server still serves.
    assert_status(&serve.get("/hello?n=3", &[]), 200, "/hello?n=3");
    serve.stop_cleanly();
}

#[test]
fn a_request_coming_back_with_a_live_id_is_refused_with_508() {
    let serve = Serve::start("http_e2e", &[]);
    // The guest fetches this very server: the inner request carries the outer one's live id.
    let response = serve.get("/loop?n=1", &[("x-self", &serve.url("/hello?inner=1"))]);
    assert_status(&response, 200, "/loop?n=1");
    assert_eq!(response.body, "inner=508\n");
    serve.wait_for_line("508 refusal", |line| {
        line.starts_with("weft serve: refused")
            && logfmt(line).get("status").is_some_and(|s| s == "508")
    });
    let outer = serve.access_log("/loop?n=1");
    assert_eq!(field(&outer, "outgoing"), "1");

    // A finished request's id and another server's are no loop.
    let finished_id = field(&outer, "id").to_string();
    let again = serve.get("/hello?n=2", &[(REQUEST_ID_HEADER, &finished_id)]);
    assert_status(&again, 200, "a finished request's id");
    let foreign = serve.get("/hello?n=3", &[(REQUEST_ID_HEADER, "0123456789abcdef-1")]);
    assert_status(&foreign, 200, "another server's id");
    serve.stop_cleanly();
}

#[test]
fn malformed_requests_get_400_and_the_server_keeps_serving() {
    let serve = Serve::start("http_e2e", &[]);
    let malformed: [&[u8]; 3] = [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nhost: x\r\nno colon in this header\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nhost: x\r\ncontent-length: lots\r\n\r\n",
    ];
    for raw in malformed {
        let response = exchange(serve.addr, raw);
        assert_status(&response, 400, &String::from_utf8_lossy(raw));
        assert_status(
            &serve.get("/hello", &[]),
            200,
            "/hello after a malformed request",
        );
    }
    serve.stop_cleanly();
}

#[test]
fn a_trapping_handler_gets_500_and_other_requests_are_unaffected() {
    // One instance: the trap happens next to the sleeping requests.
    let serve = Serve::start("http_e2e", &["--max-instances", "1"]);
    let nappers: Vec<_> = (0..8)
        .map(|n| {
            let addr = serve.addr;
            thread::spawn(move || {
                let path = format!("/nap?ms=2000&n={n}");
                (get(addr, &path, &[]), path)
            })
        })
        .collect();
    let first_naps: Vec<_> = (0..8)
        .map(|n| serve.guest_log(&format!("napping /nap?ms=2000&n={n}")))
        .collect();
    assert_status(&serve.get("/trap?n=1", &[]), 500, "/trap");
    serve.wait_for_line("trap report", |line| line.contains("trapped (request"));
    let trap = serve.access_log("/trap?n=1");
    assert_eq!(field(&trap, "outcome"), "failed", "{trap:?}");
    for (napper, first_nap) in nappers.into_iter().zip(&first_naps) {
        let (response, path) = napper.join().unwrap();
        // It was asleep on the instance that trapped, and still got its answer.
        assert_eq!(field(first_nap, "instance"), field(&trap, "instance"));
        assert_status(&response, 200, &path);
        assert_eq!(response.body, "nap done\n");
        assert_eq!(field(&serve.access_log(&path), "outcome"), "completed");
    }
    assert_status(&serve.get("/hello?n=2", &[]), 200, "/hello after the trap");
    assert_ne!(
        field(&serve.access_log("/hello?n=2"), "instance"),
        field(&trap, "instance"),
        "the trapped instance took a new request"
    );
    serve.stop_cleanly();
}

#[test]
fn an_infinite_loop_does_not_stall_other_requests() {
    let serve = Serve::start("http_e2e", &["--cpu-budget-ms", "500"]);
    let spinner = {
        let addr = serve.addr;
        thread::spawn(move || get(addr, "/spin?n=1", &[]))
    };
    serve.guest_log("spinning /spin?n=1");
    let others: Vec<_> = (0..16)
        .map(|n| {
            let addr = serve.addr;
            thread::spawn(move || {
                let path = if n % 2 == 0 {
                    format!("/hello?n={n}")
                } else {
                    format!("/nap?ms=20&n={n}")
                };
                (get(addr, &path, &[]), path)
            })
        })
        .collect();
    for other in others {
        let (response, path) = other.join().unwrap();
        assert_status(&response, 200, &path);
    }
    assert_status(&spinner.join().unwrap(), 500, "/spin past its CPU budget");
    serve.wait_for_line("CPU budget trap", |line| {
        line.contains("exceeded its CPU budget")
    });
    assert_eq!(field(&serve.access_log("/spin?n=1"), "outcome"), "failed");
    serve.stop_cleanly();
}

/// One instance and a CPU budget far beyond the test's life: the spinning context keeps its
/// instance (no other context of the guest runs in the middle of its code), which stalls: it
/// gives back what it had not started and takes nothing new, and the other requests are
/// served by another instance, although `--max-instances` is 1. The spinner never ends (no
/// budget trap in time, and a graceful shutdown would wait for it), so the server is killed at
/// the end; the spinner then has had no answer at all.
#[test]
fn an_infinite_loop_stalls_only_its_own_instance() {
    let serve = Serve::start(
        "http_e2e",
        &["--max-instances", "1", "--cpu-budget-ms", "600000"],
    );
    let spinner = {
        let addr = serve.addr;
        thread::spawn(move || {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
            let request =
                format!("GET /spin?n=1 HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).unwrap();
            let mut answer = Vec::new();
            // Ends when the server is killed (EOF, or a reset).
            let _ = stream.read_to_end(&mut answer);
            answer
        })
    };
    let spinning = serve.guest_log("spinning /spin?n=1");
    let others: Vec<_> = (0..16)
        .map(|n| {
            let addr = serve.addr;
            thread::spawn(move || {
                let path = if n % 2 == 0 {
                    format!("/hello?n={n}")
                } else {
                    format!("/nap?ms=20&n={n}")
                };
                (get(addr, &path, &[]), path)
            })
        })
        .collect();
    for other in others {
        let (response, path) = other.join().unwrap();
        assert_status(&response, 200, &path);
        assert_ne!(
            field(&serve.access_log(&path), "instance"),
            field(&spinning, "instance"),
            "{path} was served by the spinner's instance"
        );
    }
    assert!(!spinner.is_finished(), "the spinner is still running");
    assert!(
        !serve.has_line(|line| line.contains("exceeded its CPU budget")),
        "no budget trap explains it\n{}",
        serve.dump()
    );
    drop(serve);
    let answer = spinner.join().unwrap();
    assert!(
        answer.is_empty(),
        "the spinner was never answered: {:?}",
        String::from_utf8_lossy(&answer)
    );
}

// ---------------------------------------------------------------------------------------------
// The harness itself (no weft involved)
// ---------------------------------------------------------------------------------------------

#[test]
fn harness_logfmt_reads_plain_and_quoted_values() {
    let line = r#"2026-11-21T14:03:07.412Z request=r17 id=3f2a9c0d11e4b7a8-17 path="/a?n=1" msg="say \"hi\"" status=200"#;
    let fields = logfmt(line);
    assert_eq!(fields["request"], "r17");
    assert_eq!(fields["id"], "3f2a9c0d11e4b7a8-17");
    assert_eq!(fields["path"], "/a?n=1");
    assert_eq!(fields["msg"], r#"say "hi""#);
    assert_eq!(fields["status"], "200");
    assert!(!fields.contains_key("2026-11-21T14:03:07.412Z"));
}

#[test]
fn harness_upstream_records_ids_and_holds_gated_requests() {
    let upstream = Upstream::start();
    let response = get(upstream.addr, "/up/x?n=1", &[(REQUEST_ID_HEADER, "abc-1")]);
    assert_status(&response, 200, "upstream");
    assert_eq!(response.body, "upstream ok");
    let held = {
        let addr = upstream.addr;
        thread::spawn(move || get(addr, "/up/y?gate=g", &[]))
    };
    let hit = upstream.wait_for_hit("gate=g");
    assert_eq!(hit.request_id, None);
    assert!(!held.is_finished() || upstream.state.0.lock().unwrap().open_gates.contains("g"));
    upstream.open_gate("g");
    assert_status(&held.join().unwrap(), 200, "gated");
    let hits = upstream.hits();
    assert_eq!(hits[0].path, "/up/x?n=1");
    assert_eq!(hits[0].request_id.as_deref(), Some("abc-1"));
}
