//! `weft serve` with standard `wasi:http` components built from Python by componentize-py and
//! from C by wit-bindgen's C bindings and clang (`cargo xtask build-guests` puts them in
//! `target/guests/components/`), on loopback: 0.2 and 0.3 guests served and reused, every
//! outgoing request attributed to the request whose task made it (also after the response),
//! traps isolated, other worlds refused.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use weft_serve::{ServeConfig, ServeError, Server};

mod support;
use support::*;

fn config(name: &str) -> ServeConfig {
    loopback(ServeConfig::new(component_guest(name)))
}

#[test]
fn a_p3_hello_component_is_served_and_its_instance_reused() {
    let server = Server::start(config("p3_hello")).unwrap();
    let addr = server.local_addr();
    for i in 0..6 {
        let reply = request(addr, &format!("/hi/{i}"), &[]);
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(
            reply
                .body
                .starts_with(&format!("hello from a p3 component: /hi/{i} ")),
            "{reply:?}"
        );
        assert!(reply.headers.contains_key("weft-request-id"), "{reply:?}");
    }
    let report = stop(server);
    assert_eq!(report.served, 6);
    assert_eq!(report.stats.completed, 6, "{:?}", report.stats);
    assert_eq!(report.stats.instances_created, 1, "{:?}", report.stats);
}

#[test]
fn concurrent_requests_are_spread_over_the_instances_allowed_though_one_could_take_them_all() {
    // An instance runs the code of its requests one at a time, on one worker: eight requests
    // at once on one instance (which takes sixteen) would leave the other worker idle. An
    // instance is busy from a request it is given until it next waits, and when every
    // instance is busy another is created.
    let server = Server::start(config("p3_hello")).unwrap();
    let addr = server.local_addr();
    assert_eq!(request(addr, "/first", &[]).status, 200);
    assert_eq!(server.stats().instances_created, 1, "{:?}", server.stats());
    let mut served = 1;
    for _wave in 0..10 {
        let replies = concurrently(8, |i| request(addr, &format!("/wave/{i}"), &[]));
        assert!(replies.iter().all(|r| r.status == 200), "{replies:?}");
        served += replies.len();
        if server.stats().instances_created > 1 {
            break;
        }
    }
    let report = stop(server);
    assert_eq!(
        report.stats.instances_created, 2,
        "one per worker: {:?}",
        report.stats
    );
    assert_eq!(report.stats.completed, served as u64, "{:?}", report.stats);
}

#[test]
fn a_p2_hello_component_is_served_by_reused_instances_one_request_at_a_time() {
    let server = Server::start(config("p2_hello")).unwrap();
    let addr = server.local_addr();
    let replies = concurrently(24, |i| request(addr, &format!("/p2/{i}"), &[]));
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(
            reply
                .body
                .starts_with(&format!("hello from a p2 component: /p2/{i} ")),
            "{reply:?}"
        );
    }
    let stats = server.stats();
    let report = stop(server);
    assert_eq!(report.stats.completed, 24, "{:?}", report.stats);
    // At most `max_instances` (4 with two workers) ever existed: each served several.
    assert!(stats.instances_created <= 4, "{stats:?}");
    // And some instance counted past its first request.
    assert!(
        replies.iter().any(|r| !r.body.contains("(request 1 of")),
        "{replies:?}"
    );
}

/// A 0.2 instance retired after its last request is dropped while that request's response
/// is still on its way to the client: the response arrives whole all the same.
#[test]
fn a_p2_instance_dropped_after_its_last_request_still_delivers_that_response() {
    let mut config = config("p2_hello");
    config.sequential_max_requests = 2;
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let replies = concurrently(48, |i| request(addr, &format!("/short/{i}"), &[]));
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(
            reply
                .body
                .starts_with(&format!("hello from a p2 component: /short/{i} "))
        );
    }
    let report = stop(server);
    assert_eq!(report.stats.completed, 48, "{:?}", report.stats);
    assert!(report.stats.instances_created >= 24, "{:?}", report.stats);
}

/// Clients that hang up before their answer leave nothing behind: their requests are still
/// finished (the body read, the registry told), so the one instance serves on. A request left
/// unfinished would hold it until the request timeout, an hour here.
#[test]
fn requests_whose_clients_hang_up_still_finish_and_free_their_instance() {
    let mut config = config("p2_hello");
    config.policy.max_instances = 1;
    config.limits.request_timeout = Duration::from_secs(3600);
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    for round in 0..4 {
        let gone: Vec<std::net::TcpStream> = (0..16)
            .map(|i| {
                let mut stream = std::net::TcpStream::connect(addr).unwrap();
                let text = format!("GET /gone/{round}/{i} HTTP/1.1\r\nhost: test\r\n\r\n");
                std::io::Write::write_all(&mut stream, text.as_bytes()).unwrap();
                stream
            })
            .collect();
        // Some are answered before this, some while it runs, some after.
        drop(gone);
        let reply = request(addr, &format!("/after/{round}"), &[]);
        assert_eq!(reply.status, 200, "round {round}: {reply:?}");
    }
    let report = stop(server);
    assert!(report.killed.is_empty(), "{report:?}");
    assert_eq!(report.stats.failed, 0, "{:?}", report.stats);
}

/// The ids `replies` carried, with how many calls each says it made (its body lists their
/// statuses).
fn calls_per_id(replies: &[Reply]) -> HashMap<String, usize> {
    replies
        .iter()
        .map(|reply| {
            assert_eq!(reply.status, 200, "{reply:?}");
            let calls = reply.body.split_whitespace().skip(1).count();
            assert!(
                reply.body.split_whitespace().skip(1).all(|s| s == "200"),
                "{reply:?}"
            );
            (reply.headers["weft-request-id"].clone(), calls)
        })
        .collect()
}

/// Every call the upstream saw carried the id of one of `expected`'s requests, each as many
/// times as that request made calls.
fn assert_attributed(upstream: &Upstream, expected: &HashMap<String, usize>) {
    let seen = upstream.seen();
    let mut counted: HashMap<String, usize> = HashMap::new();
    for (path, id) in &seen {
        assert!(expected.contains_key(id), "{path} carried {id:?}: {seen:?}");
        *counted.entry(id.clone()).or_default() += 1;
    }
    assert_eq!(&counted, expected, "{seen:?}");
}

#[test]
fn every_outgoing_request_carries_the_id_of_the_request_that_caused_it() {
    let upstream = Upstream::start();
    let mut config = config("p3_fetch");
    config.policy.max_instances = 2;
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    // Waves of concurrent requests on the same few instances: root tasks reuse the task slots
    // of earlier, exited ones, and every call is still attributed to its own request.
    let mut expected = HashMap::new();
    for _wave in 0..3 {
        let replies = concurrently(8, |i| {
            let path = match i % 2 {
                0 => "/sequential?n=2",
                _ => "/concurrent?n=3",
            };
            request(addr, path, &[upstream.header()])
        });
        expected.extend(calls_per_id(&replies));
    }
    assert_eq!(expected.len(), 24);
    assert_eq!(expected.values().sum::<usize>(), 60);
    assert_attributed(&upstream, &expected);
    let stats = server.stats();
    assert!(stats.instances_created <= 2, "{stats:?}");
    let report = stop(server);
    assert_eq!(report.stats.outgoing, 60, "{:?}", report.stats);
    assert_eq!(report.stats.completed, 24, "{:?}", report.stats);
}

#[test]
fn p2_outgoing_requests_are_attributed_too() {
    let upstream = Upstream::start();
    let server = Server::start(config("p2_fetch")).unwrap();
    let addr = server.local_addr();
    let replies = concurrently(8, |i| {
        request(
            addr,
            &format!("/fetch?n={}", 1 + i % 2),
            &[upstream.header()],
        )
    });
    let expected = calls_per_id(&replies);
    assert_eq!(expected.values().sum::<usize>(), 12);
    assert_attributed(&upstream, &expected);
    let report = stop(server);
    assert_eq!(report.stats.outgoing, 12, "{:?}", report.stats);
}

#[test]
fn a_call_back_into_the_server_with_a_live_id_is_refused_with_508() {
    let mut config = config("p3_fetch");
    config.policy.max_instances = 1;
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let reply = request(addr, "/sequential?n=1", &[("x-upstream", addr.to_string())]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "/sequential 508\n");
    let report = stop(server);
    assert_eq!(report.stats.refused_loop, 1, "{:?}", report.stats);
}

#[test]
fn per_request_instances_serve_each_request_in_a_fresh_instance() {
    let mut config = config("p3_hello");
    config.per_request_instance = true;
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    for i in 0..3 {
        let reply = request(addr, &format!("/fresh/{i}"), &[]);
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(
            reply.body.ends_with("(request 1 of this instance)\n"),
            "{reply:?}"
        );
    }
    let report = stop(server);
    assert_eq!(report.stats.instances_created, 3, "{:?}", report.stats);
}

#[test]
fn a_spinning_handler_exhausts_its_cpu_budget_and_the_server_goes_on() {
    let mut config = config("p3_fetch");
    config.cpu_budget = Duration::from_millis(300);
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let reply = request(addr, "/spin", &[]);
    assert_eq!(reply.status, 500, "{reply:?}");
    assert_eq!(request(addr, "/hello", &[]).status, 200);
    let report = stop(server);
    assert_eq!(report.stats.failed, 1, "{:?}", report.stats);
}

#[test]
fn work_after_the_response_is_attributed_and_keeps_its_instance_alive() {
    let upstream = Upstream::start();
    let server = Server::start(config("p3_fetch")).unwrap();
    let addr = server.local_addr();
    let replies = concurrently(4, |_| request(addr, "/after?n=2", &[upstream.header()]));
    let ids: BTreeSet<String> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{r:?}");
            r.headers["weft-request-id"].clone()
        })
        .collect();
    wait_until("the calls made after the responses", || {
        upstream.seen().len() == 8
    });
    let seen = upstream.seen();
    for id in &ids {
        assert_eq!(seen.iter().filter(|(_, i)| i == id).count(), 2, "{seen:?}");
    }
    wait_until("the requests to finish", || server.stats().completed == 4);
    let report = stop(server);
    assert_eq!(report.stats.outgoing, 8, "{:?}", report.stats);
    assert_eq!(
        (report.stats.drained, report.stats.stragglers),
        (0, 0),
        "{:?}",
        report.stats
    );
}

#[test]
fn work_past_the_drain_deadline_is_counted_and_its_instance_retired() {
    let upstream = Upstream::answering_after(Duration::from_secs(5));
    let mut config = config("p3_fetch");
    config.policy.drain_timeout = Duration::from_millis(200);
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let reply = request(addr, "/after?n=1", &[upstream.header()]);
    assert_eq!(reply.status, 200, "{reply:?}");
    wait_until("the request to be drained", || server.stats().drained == 1);
    assert_eq!(server.stats().stragglers, 1, "{:?}", server.stats());
    wait_until("its instance to be dropped", || {
        server.stats().instances_dropped == 1
    });
    assert_eq!(request(addr, "/hello", &[]).status, 200);
    let report = stop(server);
    assert_eq!(report.stats.outgoing, 1, "{:?}", report.stats);
}

#[test]
fn a_request_that_does_not_answer_in_time_gets_504_and_the_server_goes_on() {
    let upstream = Upstream::answering_after(Duration::from_secs(5));
    let mut config = config("p3_fetch");
    config.limits.request_timeout = Duration::from_millis(300);
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let reply = request(addr, "/sequential?n=1", &[upstream.header()]);
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(request(addr, "/hello", &[]).status, 200);
    let report = stop(server);
    assert_eq!(report.stats.stragglers, 1, "{:?}", report.stats);
}

#[test]
fn a_trapping_request_gets_500_and_its_neighbours_are_served() {
    let upstream = Upstream::start();
    let mut config = config("p3_fetch");
    config.policy.max_instances = 1;
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let replies = concurrently(9, |i| {
        let path = if i == 4 { "/trap" } else { "/hello" };
        request(addr, path, &[upstream.header()])
    });
    for (i, reply) in replies.iter().enumerate() {
        let expected = if i == 4 { 500 } else { 200 };
        assert_eq!(reply.status, expected, "request {i}: {reply:?}");
    }
    // And the server goes on, on a fresh instance.
    assert_eq!(request(addr, "/hello", &[]).status, 200);
    let report = stop(server);
    assert!(report.stats.failed >= 1, "{:?}", report.stats);
}

#[test]
fn a_component_of_another_world_is_refused_with_its_exports_named() {
    let dir = std::env::temp_dir().join(format!("weft-components-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("other-world.wat");
    std::fs::write(
        &path,
        r#"(component
            (core module $m (func (export "run") (result i32) (i32.const 0)))
            (core instance $i (instantiate $m))
            (func (export "run") (result u32) (canon lift (core func $i "run"))))"#,
    )
    .unwrap();
    let mut config = config("p3_hello");
    config.wasm = path.clone();
    let error = Server::start(config).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, ServeError::Component { .. }), "{message}");
    assert!(message.contains("another world"), "{message}");
    assert!(message.contains("wasi:http/service"), "{message}");
    assert!(message.contains("its exports: run"), "{message}");
    assert!(!message.contains('\n'), "{message}");

    let path = dir.join("missing-import.wat");
    std::fs::write(
        &path,
        r#"(component
            (import "example:nothing/here@1.0.0" (instance (export "f" (func))))
            (import "wasi:http/types@0.2.12" (instance))
            (core module $m)
            (core instance $i (instantiate $m))
            (instance (export "wasi:http/incoming-handler@0.2.12")))"#,
    )
    .unwrap();
    let mut config = self::config("p3_hello");
    config.wasm = path;
    let message = Server::start(config).unwrap_err().to_string();
    assert!(message.contains("example:nothing/here@1.0.0"), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

// C components (`guests/components/c/`): the same host paths, with no language runtime in the
// guest, so the instance's own state is exactly what the C code keeps.

#[test]
fn a_c_p2_component_is_served_and_its_instance_reused_request_after_request() {
    let server = Server::start(config("p2_hello_c")).unwrap();
    let addr = server.local_addr();
    let mut ids = BTreeSet::new();
    for i in 1..=5 {
        let reply = request(addr, &format!("/c/{i}?q=x"), &[]);
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(
            reply.body,
            format!("hello from a C p2 component: GET /c/{i}?q=x (request {i} of this instance)\n")
        );
        assert_eq!(reply.headers["content-type"], "text/plain", "{reply:?}");
        ids.insert(reply.headers["weft-request-id"].clone());
    }
    assert_eq!(ids.len(), 5, "{ids:?}");
    let report = stop(server);
    assert_eq!(report.served, 5);
    assert_eq!(report.stats.completed, 5, "{:?}", report.stats);
    assert_eq!(report.stats.instances_created, 1, "{:?}", report.stats);
    assert_eq!(report.stats.failed, 0, "{:?}", report.stats);
}

/// The C fetch guest's answer: its path, the status of each call, and the last call's body.
fn c_fetch_statuses(reply: &Reply) -> Vec<String> {
    assert_eq!(reply.status, 200, "{reply:?}");
    let mut lines = reply.body.lines();
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    assert_eq!(first.next(), Some("/fetch"), "{reply:?}");
    let statuses: Vec<String> = first.map(str::to_string).collect();
    assert_eq!(lines.next(), Some("ok"), "the upstream's body: {reply:?}");
    statuses
}

#[test]
fn a_c_p2_components_outgoing_requests_carry_the_id_of_the_request_that_made_them() {
    let upstream = Upstream::start();
    let server = Server::start(config("p2_fetch_c")).unwrap();
    let addr = server.local_addr();
    // One at a time first: one instance serves them all, so every id differs only by request.
    let mut expected = HashMap::new();
    for n in 1..=3 {
        let reply = request(addr, &format!("/fetch?n={n}"), &[upstream.header()]);
        assert_eq!(c_fetch_statuses(&reply), vec!["200"; n], "{reply:?}");
        expected.insert(reply.headers["weft-request-id"].clone(), n);
    }
    assert_eq!(server.stats().instances_created, 1, "{:?}", server.stats());
    // Then at once, on as many instances as the policy allows.
    let replies = concurrently(6, |i| {
        request(
            addr,
            &format!("/fetch?n={}", 1 + i % 2),
            &[upstream.header()],
        )
    });
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(c_fetch_statuses(reply), vec!["200"; 1 + i % 2], "{reply:?}");
        expected.insert(reply.headers["weft-request-id"].clone(), 1 + i % 2);
    }
    assert_eq!(expected.len(), 9);
    assert_attributed(&upstream, &expected);
    // Each call went where the guest sent it.
    let seen = upstream.seen();
    assert!(
        seen.iter().all(|(path, _)| path.starts_with("/c/")),
        "{seen:?}"
    );
    let report = stop(server);
    assert_eq!(report.stats.outgoing, 15, "{:?}", report.stats);
    assert_eq!(report.stats.completed, 9, "{:?}", report.stats);
}

#[test]
fn a_c_p2_fetch_without_an_upstream_is_answered_400_without_calls() {
    let server = Server::start(config("p2_fetch_c")).unwrap();
    let addr = server.local_addr();
    let reply = request(addr, "/fetch?n=2", &[]);
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.body, "no x-upstream header\n");
    let report = stop(server);
    assert_eq!(report.stats.outgoing, 0, "{:?}", report.stats);
}

#[test]
fn a_c_p3_component_is_served_and_its_instance_reused_request_after_request() {
    let server = Server::start(config("p3_service_c")).unwrap();
    let addr = server.local_addr();
    for i in 1..=4 {
        let reply = request(addr, &format!("/p3/{i}"), &[]);
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(
            reply.body,
            format!("hello from a C p3 component: GET /p3/{i} (request {i} of this instance)\n")
        );
    }
    let report = stop(server);
    assert_eq!(report.stats.completed, 4, "{:?}", report.stats);
    assert_eq!(report.stats.instances_created, 1, "{:?}", report.stats);
    assert_eq!(report.stats.failed, 0, "{:?}", report.stats);
}

#[test]
fn a_c_p3_component_under_backpressure_is_given_no_new_request() {
    let upstream = GatedUpstream::start();
    let server = Server::start(config("p3_service_c")).unwrap();
    let addr = server.local_addr();
    let first = request(addr, "/first", &[]);
    assert!(
        first.body.ends_with("(request 1 of this instance)\n"),
        "{first:?}"
    );
    // `/hold` raises backpressure, then waits for the gated upstream.
    let held = std::thread::spawn(move || {
        request(addr, "/hold", &[("x-upstream", upstream.addr.to_string())])
    });
    let outgoing_id = upstream.wait_for_request();
    // Its instance refuses new tasks now: this request needs a second instance.
    let beside = request(addr, "/beside", &[]);
    assert_eq!(beside.status, 200, "{beside:?}");
    assert!(
        beside.body.ends_with("(request 1 of this instance)\n"),
        "an instance under backpressure took a new request: {beside:?}"
    );
    assert_eq!(server.stats().instances_created, 2, "{:?}", server.stats());
    upstream.release();
    let held = held.join().unwrap();
    assert_eq!(held.status, 200, "{held:?}");
    assert_eq!(held.body, "/hold 200\n");
    // The call made under backpressure is still attributed to the request that made it.
    assert_eq!(outgoing_id, held.headers["weft-request-id"]);
    let report = stop(server);
    assert_eq!(report.stats.completed, 3, "{:?}", report.stats);
    assert_eq!(report.stats.outgoing, 1, "{:?}", report.stats);
}
