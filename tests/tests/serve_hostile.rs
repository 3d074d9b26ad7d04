//! `weft serve` against the hostile guest `guests/http/http_hostile.c`: every attack gets its
//! clear answer while an innocent request on the same server is answered `200`; a soak of mixed
//! innocent and hostile traffic leaves the server's memory and mappings as it found them.
//! Loopback only, bounded in count and time, no timing assertions.

use std::thread;
use std::time::{Duration, Instant};

use weft_e2e::serve::*;

const GUEST: &str = "http_hostile";

/// Small limits, so the attacks reach them quickly.
const LIMITS: &[&str] = &[
    "--max-response-body",
    "1048576",
    "--max-instance-memory",
    "67108864",
    "--memory-budget",
    "268435456",
    "--max-contexts",
    "4096",
];

fn body_of(serve: &Serve, path: &str) -> String {
    let response = serve.get(path, &[]);
    assert_status(&response, 200, path);
    response.body
}

#[test]
fn every_attack_gets_a_clear_answer_and_the_innocent_request_is_served() {
    let serve = Serve::start(GUEST, LIMITS);
    assert_eq!(body_of(&serve, "/headers"), "headers 128 err EMSGSIZE\n");
    assert_eq!(body_of(&serve, "/status"), "status err EINVAL\n");
    assert_eq!(body_of(&serve, "/write").len(), 1 << 20);
    let malloc = body_of(&serve, "/malloc");
    assert!(malloc.starts_with("malloc null after "), "{malloc:?}");
    let contexts = body_of(&serve, "/contexts");
    assert!(
        contexts.ends_with("err ENOMEM\n") || contexts.ends_with("err EAGAIN\n"),
        "{contexts:?}"
    );
    assert_eq!(body_of(&serve, "/badurl"), "fetch err EINVAL\n");
    assert_eq!(body_of(&serve, "/ok"), "ok\n");
    let stderr = serve.stop_cleanly();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_handler_that_never_answers_gets_504_and_does_not_hold_up_shutdown() {
    let mut flags = LIMITS.to_vec();
    flags.extend(["--request-timeout", "0.5", "--max-instances", "1"]);
    let serve = Serve::start(GUEST, &flags);
    assert_status(&serve.get("/never", &[]), 504, "/never");
    assert_status(&serve.get("/ok", &[]), 200, "/ok on the same instance");
    serve.stop_cleanly();
}

/// A context that registered a wait (`block_on`) and then spins stalls its instance all the
/// same: the other requests are served meanwhile (by another instance, as the stalled one
/// does not count against `--max-instances`), and the spinner ends at its CPU budget.
#[test]
fn a_context_that_spins_after_registering_a_wait_stalls_only_its_instance() {
    let mut flags = LIMITS.to_vec();
    flags.extend(["--max-instances", "1", "--cpu-budget-ms", "1000"]);
    let serve = Serve::start(GUEST, &flags);
    let addr = serve.addr;
    let spinner = thread::spawn(move || get(addr, "/spin", &[]));
    for _ in 0..4 {
        assert_status(&serve.get("/ok", &[]), 200, "/ok beside the spinner");
    }
    assert_status(&spinner.join().unwrap(), 500, "/spin past its CPU budget");
    assert_status(&serve.get("/ok", &[]), 200, "/ok after the spinner");
    serve.stop_cleanly();
}

/// Regression: a context that computed past an epoch tick was switched away from, and other
/// requests ran on its instance meanwhile, in the middle of whatever it was doing: under
/// mixed load a request's memory allocation then overlapped a shadow stack the host had
/// grown memory for meanwhile (the soak test saw innocent requests answered `500`). Now no
/// other request runs on an instance while one of its contexts computes; they go to another
/// instance, and see the computation's global either before it began or after it ended.
#[test]
fn no_other_request_runs_on_an_instance_while_one_of_its_contexts_computes() {
    let mut flags = LIMITS.to_vec();
    flags.extend(["--max-instances", "1"]);
    let serve = Serve::start(GUEST, &flags);
    let addr = serve.addr;
    let busy = thread::spawn(move || get(addr, "/busy", &[]));
    serve.guest_log("busy start");
    for _ in 0..4 {
        assert_eq!(body_of(&serve, "/observe"), "busy 0\n");
    }
    let busy = busy.join().unwrap();
    assert_status(&busy, 200, "/busy");
    assert_eq!(busy.body, "busy done\n");
    serve.stop_cleanly();
}

#[test]
fn shutdown_past_its_deadline_exits_1_naming_what_it_killed() {
    let mut flags = LIMITS.to_vec();
    flags.extend(["--request-timeout", "600", "--shutdown-timeout", "0.5"]);
    let serve = Serve::start(GUEST, &flags);
    let addr = serve.addr;
    let never = thread::spawn(move || get(addr, "/never", &[]));
    serve.wait_for_line("the /never request to start", |_| true);
    // The request is live once the server has read it; give the client a moment to send it.
    thread::sleep(Duration::from_millis(200));
    let (code, stderr) = serve.terminate();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("killed: ") && stderr.contains("GET /never"),
        "{stderr}"
    );
    assert_status(
        &never.join().unwrap(),
        503,
        "/never at the shutdown deadline",
    );
}

/// Resident memory (KiB) and mapping count of a process.
fn footprint(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .count();
    (rss, maps)
}

/// Mixed innocent and hostile traffic for `WEFT_SOAK_SECS` seconds (3 by default;
/// `cargo xtask soak` runs it longer): every innocent request gets `200`, nothing panics, and
/// afterwards the server holds no more memory or mappings than its instances may keep.
#[test]
fn soak_mixed_traffic_leaves_the_server_as_it_found_it() {
    let secs: u64 = std::env::var("WEFT_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut flags = LIMITS.to_vec();
    flags.extend(["--request-timeout", "1", "--max-instances", "2", "--quiet"]);
    let serve = Serve::start(GUEST, &flags);
    let addr = serve.addr;
    // Warm up: instances created, pools filled.
    for path in ["/ok", "/malloc", "/contexts", "/ok"] {
        serve.get(path, &[]);
    }
    let (rss_before, maps_before) = footprint(serve.pid());
    let until = Instant::now() + Duration::from_secs(secs);
    // Each thread returns what it sent and what came back that should not have.
    let innocent = thread::spawn(move || {
        let (mut sent, mut wrong) = (0u64, Vec::new());
        while Instant::now() < until {
            let status = get(addr, "/ok", &[]).status;
            if status != 200 {
                wrong.push(("/ok", status));
            }
            sent += 1;
        }
        (sent, wrong)
    });
    let routes = std::env::var("WEFT_SOAK_ROUTES")
        .unwrap_or_else(|_| "/malloc /headers /write /contexts /never /badurl".to_string());
    let routes: Vec<&'static str> = routes
        .split_whitespace()
        .map(|route| &*Box::leak(route.to_string().into_boxed_str()))
        .collect();
    let hostile: Vec<_> = routes
        .into_iter()
        .map(|path| {
            thread::spawn(move || {
                let (mut sent, mut wrong) = (0u64, Vec::new());
                while Instant::now() < until {
                    let status = get(addr, path, &[]).status;
                    if status != 200 && !(path == "/never" && status == 504) {
                        wrong.push((path, status));
                    }
                    sent += 1;
                }
                (sent, wrong)
            })
        })
        .collect();
    let (served, mut wrong) = innocent.join().unwrap();
    let mut attacks = 0;
    for thread in hostile {
        let (sent, mut unexpected) = thread.join().unwrap();
        attacks += sent;
        wrong.append(&mut unexpected);
    }
    assert!(served > 0 && attacks > 0);
    assert!(
        wrong.is_empty(),
        "unexpected answers {wrong:?} over {served} innocent and {attacks} hostile requests\n{}",
        serve.dump()
    );
    let (rss_after, maps_after) = footprint(serve.pid());
    // Two instances may each keep up to their memory limit (64 MiB) and their contexts'
    // stacks; anything beyond that grew without bound.
    assert!(
        rss_after <= rss_before + 256 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB over {served} innocent and {attacks} hostile requests"
    );
    assert!(
        maps_after <= maps_before + 4096,
        "mappings grew from {maps_before} to {maps_after}"
    );
    let stderr = serve.stop_cleanly();
    assert!(!stderr.contains("panicked"), "{stderr}");
}
