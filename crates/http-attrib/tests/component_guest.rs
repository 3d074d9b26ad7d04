//! The component-model backend against hand-written async components running
//! on wasmtime 48: one instance, an async export called concurrently, host
//! imports that capture the async call stack.

use std::collections::{BTreeMap, HashSet};
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Instant, SystemTime};

use serde_json::json;

use wasmtime::component::{Accessor, Component, Linker, TypedFunc, Val};
use wasmtime::{Config, Engine, Store};
use weft_http_attrib::{
    AccessLogLine, Action, AttribError, Attribution, CallerStack, ComponentAttribution, InstanceId,
    Outcome, Policy, Registry, RequestId, SharedRegistry, TraceWriter,
};

/// A guest HTTP-handler shape: `handle(x, work-for)` fetches `x` (inside an
/// override for request `work-for` when that is not 0), answers with the
/// fetch's result, then fetches `x + 1000` after answering (post-response
/// work) and exits. With `work-for == -1` it answers its own
/// `current-request` token instead. `x == 77` traps. `x == 200` holds backpressure from its start until its
/// first fetch came back. A refused `enter` answers 0xbad and exits.
const GUEST: &str = r#"
(component
  (import "fetch" (func $fetch async (param "x" u32) (result u32)))
  (import "enter" (func $enter (param "token" u64) (result bool)))
  (import "exit" (func $exit (result bool)))
  (import "current-request" (func $current (result u64)))

  (core module $libc (memory (export "mem") 1))
  (core instance $libc (instantiate $libc))

  (core func $fetch_async (canon lower (func $fetch) async (memory $libc "mem")))
  (core func $enter_sync (canon lower (func $enter)))
  (core func $exit_sync (canon lower (func $exit)))
  (core func $current_sync (canon lower (func $current)))
  (core func $task_return (canon task.return (result u32)))
  (core func $ws_new (canon waitable-set.new))
  (core func $join (canon waitable.join))
  (core func $subtask_drop (canon subtask.drop))
  (core func $ctx_get (canon context.get i32 0))
  (core func $ctx_set (canon context.set i32 0))
  (core func $bp_inc (canon backpressure.inc))
  (core func $bp_dec (canon backpressure.dec))

  (core module $m
    (import "libc" "mem" (memory 1))
    (import "" "fetch" (func $fetch (param i32 i32) (result i32)))
    (import "" "enter" (func $enter (param i64) (result i32)))
    (import "" "exit" (func $exit (result i32)))
    (import "" "current" (func $current (result i64)))
    (import "" "task.return" (func $task_return (param i32)))
    (import "" "waitable-set.new" (func $ws_new (result i32)))
    (import "" "waitable.join" (func $join (param i32 i32)))
    (import "" "subtask.drop" (func $subtask_drop (param i32)))
    (import "" "context.get" (func $ctx_get (result i32)))
    (import "" "context.set" (func $ctx_set (param i32)))
    (import "" "backpressure.inc" (func $bp_inc))
    (import "" "backpressure.dec" (func $bp_dec))

    ;; A task's record, at 1024 + 16 * (x mod 256): +0 x, +4 fetch result,
    ;; +8 phase (0 before the answer, 1 after), +12 its waitable set.
    (func $record (param $x i32) (result i32)
      (i32.add (i32.const 1024)
        (i32.shl (i32.and (local.get $x) (i32.const 255)) (i32.const 4))))

    ;; Waits for the fetch whose status is given (or goes on if it returned).
    (func $await (param $rec i32) (param $status i32) (result i32)
      (if (i32.eq (i32.and (local.get $status) (i32.const 0xf)) (i32.const 2))
        (then (return (call $step (local.get $rec)))))
      (call $join (i32.shr_u (local.get $status) (i32.const 4))
                  (i32.load offset=12 (local.get $rec)))
      (i32.or (i32.const 2) (i32.shl (i32.load offset=12 (local.get $rec)) (i32.const 4))))

    ;; A fetch came back: answer and start the post-response fetch, or exit.
    (func $step (param $rec i32) (result i32)
      (if (i32.eqz (i32.load offset=8 (local.get $rec)))
        (then
          (if (i32.eq (i32.load (local.get $rec)) (i32.const 200)) (then (call $bp_dec)))
          (call $task_return (i32.load offset=4 (local.get $rec)))
          (i32.store offset=8 (local.get $rec) (i32.const 1))
          (return (call $await (local.get $rec)
            (call $fetch (i32.add (i32.load (local.get $rec)) (i32.const 1000))
                         (i32.add (local.get $rec) (i32.const 4)))))))
      (i32.const 0))

    (func (export "handle") (param $x i32) (param $work_for i64) (result i32)
      (local $rec i32) (local $status i32)
      (if (i32.eq (local.get $x) (i32.const 200)) (then (call $bp_inc)))
      (if (i32.eq (local.get $x) (i32.const 77)) (then unreachable))
      (local.set $rec (call $record (local.get $x)))
      (i32.store (local.get $rec) (local.get $x))
      (i32.store offset=8 (local.get $rec) (i32.const 0))
      (i32.store offset=12 (local.get $rec) (call $ws_new))
      (call $ctx_set (local.get $rec))
      ;; work-for = -1: answer with the caller's own token, plus 0x10000 if
      ;; an exit with nothing entered was accepted.
      (if (i64.eq (local.get $work_for) (i64.const -1))
        (then
          (call $task_return (i32.or (i32.wrap_i64 (call $current))
                                     (i32.shl (call $exit) (i32.const 16))))
          (return (i32.const 0))))
      (if (i64.ne (local.get $work_for) (i64.const 0))
        (then (if (i32.eqz (call $enter (local.get $work_for)))
          (then
            (call $task_return (i32.const 0xbad))
            (return (i32.const 0))))))
      (local.set $status
        (call $fetch (local.get $x) (i32.add (local.get $rec) (i32.const 4))))
      (if (i64.ne (local.get $work_for) (i64.const 0))
        (then (if (i32.eqz (call $exit)) (then unreachable))))
      (call $await (local.get $rec) (local.get $status)))

    (func (export "callback") (param $event i32) (param $handle i32) (param $status i32) (result i32)
      (if (i32.ne (local.get $event) (i32.const 1)) (then unreachable))
      (if (i32.ne (local.get $status) (i32.const 2)) (then unreachable))
      (call $subtask_drop (local.get $handle))
      (call $step (call $ctx_get)))

  )
  (core instance $i (instantiate $m
    (with "libc" (instance $libc))
    (with "" (instance
      (export "fetch" (func $fetch_async))
      (export "enter" (func $enter_sync))
      (export "exit" (func $exit_sync))
      (export "current" (func $current_sync))
      (export "task.return" (func $task_return))
      (export "waitable-set.new" (func $ws_new))
      (export "waitable.join" (func $join))
      (export "subtask.drop" (func $subtask_drop))
      (export "context.get" (func $ctx_get))
      (export "context.set" (func $ctx_set))
      (export "backpressure.inc" (func $bp_inc))
      (export "backpressure.dec" (func $bp_dec))
    ))
  ))
  (func (export "handle") async (param "x" u32) (param "work-for" u64) (result u32)
    (canon lift (core func $i "handle") async (callback (func $i "callback"))))

)
"#;

/// The upstream the guest's `fetch` reaches: records which request each call
/// was attributed to and holds calls until the test lets them return.
#[derive(Default)]
struct Upstream {
    calls: Vec<(u32, Result<RequestId, AttribError>)>,
    in_flight: u32,
    max_in_flight: u32,
    /// First-phase fetches (x < 1000) return once this many were in flight
    /// at once: proof that the requests ran concurrently on one instance.
    concurrency_needed: u32,
    /// Fetches for these x return at once.
    open: HashSet<u32>,
    wakers: Vec<Waker>,
}

impl Upstream {
    fn may_return(&self, x: u32) -> bool {
        self.open.contains(&x) || (x < 1000 && self.max_in_flight >= self.concurrency_needed)
    }

    fn wake_all(&mut self) {
        for waker in self.wakers.drain(..) {
            waker.wake();
        }
    }

    fn open(&mut self, x: u32) {
        self.open.insert(x);
        self.wake_all();
    }

    fn attributed(&self, x: u32) -> Option<&Result<RequestId, AttribError>> {
        self.calls
            .iter()
            .find(|(called, _)| *called == x)
            .map(|(_, r)| r)
    }
}

/// The guest's `handle` export.
type Handle = TypedFunc<(u32, u64), (u32,)>;

struct Host {
    attribution: ComponentAttribution,
    upstream: Arc<Mutex<Upstream>>,
    trace: Option<Arc<Mutex<TraceWriter<Vec<u8>>>>>,
}

fn attribution(host: &mut Host) -> &mut ComponentAttribution {
    &mut host.attribution
}

async fn fetch(accessor: &Accessor<Host>, x: u32) -> wasmtime::Result<(u32,)> {
    // Captured on entry: after the first await the call stack is gone.
    let (attributed, upstream, trace) = accessor.with(|mut access| {
        let attributed = CallerStack::capture(&mut access).and_then(|stack| {
            access
                .get()
                .attribution
                .record_outgoing(&stack)
                .map(|o| o.request)
        });
        let host = access.get();
        (attributed, host.upstream.clone(), host.trace.clone())
    });
    let span = match (&trace, &attributed) {
        (Some(trace), Ok(request)) => trace
            .lock()
            .unwrap()
            .outgoing_started(*request, Instant::now())
            .unwrap(),
        _ => None,
    };
    {
        let mut up = upstream.lock().unwrap();
        up.calls.push((x, attributed));
        up.in_flight += 1;
        up.max_in_flight = up.max_in_flight.max(up.in_flight);
        up.wake_all();
    }
    poll_fn(|cx| {
        let mut up = upstream.lock().unwrap();
        if up.may_return(x) {
            up.in_flight -= 1;
            Poll::Ready(())
        } else {
            up.wakers.push(cx.waker().clone());
            Poll::Pending
        }
    })
    .await;
    if let (Some(trace), Some(span)) = (trace, span) {
        let label = format!("GET http://upstream/{x}");
        trace
            .lock()
            .unwrap()
            .outgoing_finished(span, Instant::now(), &label, json!({"status": 200}))
            .unwrap();
    }
    Ok((x * 2,))
}

struct Fixture {
    store: Store<Host>,
    handle: Handle,
    registry: SharedRegistry,
    instance: InstanceId,
    upstream: Arc<Mutex<Upstream>>,
}

struct Guest {
    engine: Engine,
    component: Component,
    linker: Linker<Host>,
}

fn guest() -> Guest {
    let mut config = Config::new();
    config.wasm_component_model_async(true);
    let engine = Engine::new(&config).unwrap();
    let component = Component::new(&engine, wat::parse_str(GUEST).unwrap()).unwrap();
    let mut linker = Linker::<Host>::new(&engine);
    linker
        .root()
        .func_wrap_concurrent("fetch", |accessor, (x,): (u32,)| {
            Box::pin(fetch(accessor, x))
        })
        .unwrap();
    ComponentAttribution::add_scope_to_linker(&mut linker.root(), attribution).unwrap();
    Guest {
        engine,
        component,
        linker,
    }
}

fn instantiate(guest: &Guest, host: Host) -> (Store<Host>, Handle) {
    let mut store = Store::new(&guest.engine, host);
    let instance = block_on(guest.linker.instantiate_async(&mut store, &guest.component)).unwrap();
    let handle = instance.get_typed_func(&mut store, "handle").unwrap();
    (store, handle)
}

fn fixture(concurrency_needed: u32) -> Fixture {
    let policy = Policy {
        max_instances: 2,
        ..Policy::for_workers(1)
    };
    let registry = SharedRegistry::new(Registry::new(policy, 0x5eed).unwrap());
    let instance = registry.lock().add_instance().unwrap();
    let upstream = Arc::new(Mutex::new(Upstream {
        concurrency_needed,
        ..Upstream::default()
    }));
    let host = Host {
        attribution: ComponentAttribution::new(registry.clone(), instance),
        upstream: upstream.clone(),
        trace: None,
    };
    let (store, handle) = instantiate(&guest(), host);
    Fixture {
        store,
        handle,
        registry,
        instance,
        upstream,
    }
}

/// Submits a request and starts it on the only instance.
fn admit(registry: &SharedRegistry, instance: InstanceId) -> RequestId {
    let mut registry = registry.lock();
    let request = registry.submit([], Instant::now()).unwrap();
    match registry.next_action(Instant::now()) {
        Some(Action::Start {
            request: started,
            instance: on,
        }) => {
            assert_eq!((started, on), (request, instance));
        }
        other => panic!("expected a start, got {other:?}"),
    }
    request
}

/// One poll of `poll_idle`, without waiting.
async fn idle_now(accessor: &Accessor<Host>) -> Poll<Vec<weft_http_attrib::Summary>> {
    poll_fn(|cx| {
        Poll::Ready(
            ComponentAttribution::poll_idle(accessor, attribution, cx, Instant::now())
                .map(|r| r.unwrap()),
        )
    })
    .await
}

async fn idle(accessor: &Accessor<Host>) -> Vec<weft_http_attrib::Summary> {
    poll_fn(|cx| {
        ComponentAttribution::poll_idle(accessor, attribution, cx, Instant::now())
            .map(|r| r.unwrap())
    })
    .await
}

#[test]
fn concurrent_requests_on_one_instance_are_attributed_and_kept_alive_after_their_response() {
    let Fixture {
        mut store,
        handle,
        registry,
        instance,
        upstream,
    } = fixture(2);
    let (r1, r2) = (admit(&registry, instance), admit(&registry, instance));

    let finished = block_on(store.run_concurrent(async |accessor| {
        let now = Instant::now();
        let s1 = accessor
            .with(|mut a| {
                ComponentAttribution::start_typed_call(&mut a, attribution, handle, (1, 0), r1, now)
            })
            .unwrap();
        let s2 = accessor
            .with(|mut a| {
                ComponentAttribution::start_typed_call(&mut a, attribution, handle, (2, 0), r2, now)
            })
            .unwrap();
        assert_ne!(s1.task, s2.task);
        assert!(s1.displaced.is_none() && s2.displaced.is_none());

        // Both answer only once both fetches were in flight together.
        assert_eq!(
            handle
                .finish_call_concurrent(accessor, s1.call)
                .await
                .unwrap(),
            (2,)
        );
        assert_eq!(
            handle
                .finish_call_concurrent(accessor, s2.call)
                .await
                .unwrap(),
            (4,)
        );
        for request in [r1, r2] {
            assert_eq!(
                registry
                    .lock()
                    .response_sent(request, Instant::now())
                    .unwrap(),
                None
            );
        }

        // Answered, but the post-response fetches still run: kept alive.
        assert!(idle_now(accessor).await.is_pending());
        assert!(registry.lock().is_live(r1) && registry.lock().is_live(r2));
        assert_eq!(accessor.with(|mut a| a.get().attribution.bound_roots()), 2);

        {
            let mut up = upstream.lock().unwrap();
            up.open(1001);
            up.open(1002);
        }
        idle(accessor).await
    }))
    .unwrap();

    assert_eq!(
        finished.iter().map(|s| s.request).collect::<Vec<_>>(),
        [r1, r2]
    );
    for summary in &finished {
        assert_eq!(summary.outcome, Outcome::Completed);
        assert_eq!(summary.outgoing, 2);
        assert!(summary.responded_at.is_some());
    }
    let up = upstream.lock().unwrap();
    assert_eq!(up.max_in_flight, 2);
    assert_eq!(up.calls.len(), 4);
    assert_eq!(up.attributed(1), Some(&Ok(r1)));
    assert_eq!(up.attributed(2), Some(&Ok(r2)));
    assert_eq!(up.attributed(1001), Some(&Ok(r1)));
    assert_eq!(up.attributed(1002), Some(&Ok(r2)));
    let registry = registry.lock();
    assert_eq!(registry.stats().completed, 2);
    assert_eq!(registry.stats().outgoing, 4);
    assert_eq!(registry.live_requests(), 0);
}

#[test]
fn scoped_override_attributes_to_the_entered_request_and_bad_tokens_are_refused() {
    let Fixture {
        mut store,
        handle,
        registry,
        instance,
        upstream,
    } = fixture(2);
    let (worker, other) = (admit(&registry, instance), admit(&registry, instance));
    // A live request of another instance, and a token nobody has.
    let foreign = {
        let mut reg = registry.lock();
        let second = reg.add_instance().unwrap();
        reg.set_backpressure(instance, true).unwrap();
        let foreign = reg.submit([], Instant::now()).unwrap();
        assert_eq!(
            reg.next_action(Instant::now()),
            Some(Action::Start {
                request: foreign,
                instance: second
            })
        );
        reg.set_backpressure(instance, false).unwrap();
        // Keep what follows on the first instance.
        reg.retire(second).unwrap();
        foreign
    };
    let (refused_foreign, refused_bogus) = (admit(&registry, instance), admit(&registry, instance));
    let asks_token = admit(&registry, instance);
    upstream.lock().unwrap().open.extend([1001, 1002]);

    block_on(store.run_concurrent(async |accessor| {
        let now = Instant::now();
        let start = |x: u32, work_for: u64, request: RequestId| {
            accessor
                .with(|mut a| {
                    ComponentAttribution::start_typed_call(
                        &mut a,
                        attribution,
                        handle,
                        (x, work_for),
                        request,
                        now,
                    )
                })
                .unwrap()
        };
        // `worker`'s handler does its first fetch for `other`.
        let s1 = start(1, other.get(), worker);
        let s2 = start(2, 0, other);
        let s3 = start(3, foreign.get(), refused_foreign);
        let s4 = start(4, 0xdead_beef, refused_bogus);
        let s5 = start(5, u64::MAX, asks_token);
        let own_token = u32::try_from(asks_token.get()).unwrap();
        assert_eq!(
            handle
                .finish_call_concurrent(accessor, s5.call)
                .await
                .unwrap(),
            (own_token,),
            "no unbalanced exit"
        );
        assert_eq!(
            handle
                .finish_call_concurrent(accessor, s3.call)
                .await
                .unwrap(),
            (0xbad,)
        );
        assert_eq!(
            handle
                .finish_call_concurrent(accessor, s4.call)
                .await
                .unwrap(),
            (0xbad,)
        );
        assert_eq!(
            handle
                .finish_call_concurrent(accessor, s1.call)
                .await
                .unwrap(),
            (2,)
        );
        assert_eq!(
            handle
                .finish_call_concurrent(accessor, s2.call)
                .await
                .unwrap(),
            (4,)
        );
        idle(accessor).await
    }))
    .unwrap();

    let up = upstream.lock().unwrap();
    assert_eq!(up.attributed(1), Some(&Ok(other)), "inside the override");
    assert_eq!(
        up.attributed(1001),
        Some(&Ok(worker)),
        "after exit, its own root"
    );
    assert_eq!(up.attributed(2), Some(&Ok(other)));
    assert_eq!(up.attributed(1002), Some(&Ok(other)));
    assert!(
        up.attributed(3).is_none() && up.attributed(4).is_none(),
        "refused enter: no fetch"
    );
    assert_eq!(up.calls.len(), 4);
}

#[test]
fn guest_backpressure_routes_new_requests_elsewhere_until_lifted() {
    let Fixture {
        mut store,
        handle,
        registry,
        instance,
        upstream,
    } = fixture(u32::MAX);
    let r = admit(&registry, instance);
    upstream.lock().unwrap().open.insert(1200);

    block_on(store.run_concurrent(async |accessor| {
        let func = *handle.func();
        let ready_now = || async {
            poll_fn(|cx| {
                Poll::Ready(ComponentAttribution::poll_ready(
                    accessor,
                    attribution,
                    func,
                    cx,
                ))
            })
            .await
        };
        assert_eq!(ready_now().await, Poll::Ready(Ok(())));
        let started = accessor
            .with(|mut a| {
                ComponentAttribution::start_typed_call(
                    &mut a,
                    attribution,
                    handle,
                    (200, 0),
                    r,
                    Instant::now(),
                )
            })
            .unwrap();
        // Let the guest run up to its fetch, holding backpressure.
        poll_fn(|_| {
            if upstream.lock().unwrap().attributed(200).is_some() {
                Poll::Ready(())
            } else {
                // The guest has not reached its fetch yet: let the store run.
                Poll::Pending::<()>
            }
        })
        .await_with_wake()
        .await;
        assert!(ready_now().await.is_pending());
        {
            let mut reg = registry.lock();
            assert!(reg.has_backpressure(instance) && !reg.accepts_requests(instance));
            reg.submit([], Instant::now()).unwrap();
            assert_eq!(
                reg.next_action(Instant::now()),
                Some(Action::SpawnInstance),
                "routed elsewhere"
            );
        }
        upstream.lock().unwrap().open(200);
        assert_eq!(
            handle
                .finish_call_concurrent(accessor, started.call)
                .await
                .unwrap(),
            (400,)
        );
        poll_fn(|cx| ComponentAttribution::poll_ready(accessor, attribution, func, cx))
            .await
            .unwrap();
        assert!(!registry.lock().has_backpressure(instance));
        idle(accessor).await
    }))
    .unwrap();
}

#[test]
fn reused_task_slots_never_mix_up_requests() {
    let Fixture {
        mut store,
        handle,
        registry,
        instance,
        upstream,
    } = fixture(1);
    upstream.lock().unwrap().open.extend(1000..1100);
    let mut requests = Vec::new();
    let mut reused = 0;
    block_on(store.run_concurrent(async |accessor| {
        let mut seen = HashSet::new();
        for x in 0..40u32 {
            let request = admit(&registry, instance);
            requests.push(request);
            let started = accessor
                .with(|mut a| {
                    ComponentAttribution::start_typed_call(
                        &mut a,
                        attribution,
                        handle,
                        (x, 0),
                        request,
                        Instant::now(),
                    )
                })
                .unwrap();
            if !seen.insert(started.task) {
                reused += 1;
                let (displaced, finished) = started
                    .displaced
                    .expect("a reused slot displaces its old request");
                assert!(requests.contains(&displaced) && displaced != request);
                assert_eq!(finished.map(|s| s.outcome), Some(Outcome::Completed));
            }
            assert_eq!(
                handle
                    .finish_call_concurrent(accessor, started.call)
                    .await
                    .unwrap(),
                (x * 2,)
            );
            registry
                .lock()
                .response_sent(request, Instant::now())
                .unwrap();
            // Wait for the post-response fetch to have been made.
            poll_fn(|_| {
                let done = upstream.lock().unwrap().attributed(x + 1000).is_some();
                if done { Poll::Ready(()) } else { Poll::Pending }
            })
            .await_with_wake()
            .await;
        }
        idle(accessor).await
    }))
    .unwrap();
    assert!(
        reused > 0,
        "wasmtime 48 reuses task slots; this test relies on it"
    );
    let up = upstream.lock().unwrap();
    for (x, request) in requests.iter().enumerate() {
        let x = x as u32;
        assert_eq!(up.attributed(x), Some(&Ok(*request)));
        assert_eq!(up.attributed(x + 1000), Some(&Ok(*request)));
    }
    let reg = registry.lock();
    assert_eq!(reg.stats().completed, 40);
    assert_eq!(reg.live_requests(), 0);
}

#[test]
fn a_trapping_request_fails_alone_and_its_instance_takes_no_more() {
    let Fixture {
        mut store,
        handle,
        registry,
        instance,
        upstream,
    } = fixture(u32::MAX);
    let (sibling, culprit) = (admit(&registry, instance), admit(&registry, instance));
    let outcome = block_on(store.run_concurrent(async |accessor| {
        let now = Instant::now();
        let s1 = accessor
            .with(|mut a| {
                ComponentAttribution::start_typed_call(
                    &mut a,
                    attribution,
                    handle,
                    (1, 0),
                    sibling,
                    now,
                )
            })
            .unwrap();
        let s2 = accessor
            .with(|mut a| {
                ComponentAttribution::start_typed_call(
                    &mut a,
                    attribution,
                    handle,
                    (77, 0),
                    culprit,
                    now,
                )
            })
            .unwrap();
        let trapped = handle.finish_call_concurrent(accessor, s2.call).await;
        drop(s1);
        trapped
    }));
    // wasmtime reports the trap through the call or through the event loop.
    let err = match outcome {
        Ok(call) => call.unwrap_err(),
        Err(loop_err) => loop_err,
    };
    assert!(format!("{err:?}").contains("unreachable"), "{err:?}");
    let fallout = registry
        .lock()
        .instance_trapped(instance, Some(culprit), Instant::now())
        .unwrap();
    assert_eq!(
        fallout.failed.iter().map(|s| s.request).collect::<Vec<_>>(),
        [sibling, culprit]
    );
    assert!(
        fallout.requeued.is_empty(),
        "the sibling's fetch went out: not retried"
    );
    assert_eq!(upstream.lock().unwrap().attributed(1), Some(&Ok(sibling)));
    assert!(!registry.lock().accepts_requests(instance));
    let dropped = store
        .data_mut()
        .attribution
        .store_dropped(Instant::now())
        .unwrap();
    assert!(dropped.is_empty(), "the registry already finished both");
}

#[test]
fn a_store_dropped_during_post_response_work_counts_a_straggler() {
    let Fixture {
        mut store,
        handle,
        registry,
        instance,
        ..
    } = fixture(1);
    let r = admit(&registry, instance);
    block_on(store.run_concurrent(async |accessor| {
        let started = accessor
            .with(|mut a| {
                ComponentAttribution::start_typed_call(
                    &mut a,
                    attribution,
                    handle,
                    (5, 0),
                    r,
                    Instant::now(),
                )
            })
            .unwrap();
        assert_eq!(
            handle
                .finish_call_concurrent(accessor, started.call)
                .await
                .unwrap(),
            (10,)
        );
        registry.lock().response_sent(r, Instant::now()).unwrap();
        // Its post-response fetch (1005) never returns.
        assert!(idle_now(accessor).await.is_pending());
    }))
    .unwrap();
    let dropped = store
        .data_mut()
        .attribution
        .store_dropped(Instant::now())
        .unwrap();
    assert_eq!(dropped.len(), 1);
    assert_eq!(
        (dropped[0].request, dropped[0].outcome),
        (r, Outcome::Drained { stragglers: 1 })
    );
    assert_eq!(registry.lock().stats().stragglers, 1);
}

#[test]
fn dynamically_typed_calls_are_attributed_too() {
    let Fixture {
        mut store,
        handle,
        registry,
        instance,
        upstream,
    } = fixture(1);
    upstream.lock().unwrap().open.insert(1009);
    let func = *handle.func();
    let r = admit(&registry, instance);
    let finished = block_on(store.run_concurrent(async |accessor| {
        let params = [Val::U32(9), Val::U64(0)];
        let mut results = [Val::U32(0)];
        let started = accessor
            .with(|mut a| {
                ComponentAttribution::start_call(
                    &mut a,
                    attribution,
                    func,
                    &params,
                    &mut results,
                    r,
                    Instant::now(),
                )
            })
            .unwrap();
        let task = started.task;
        assert_eq!(
            accessor.with(|mut a| a.get().attribution.request_of(task)),
            Some(r)
        );
        assert_eq!(
            accessor.with(|mut a| a.get().attribution.instance()),
            instance
        );
        func.finish_call_concurrent(accessor, started.call)
            .await
            .unwrap();
        assert_eq!(results, [Val::U32(18)]);
        registry.lock().response_sent(r, Instant::now()).unwrap();
        let finished = idle(accessor).await;
        assert_eq!(
            accessor.with(|mut a| a.get().attribution.request_of(task)),
            None
        );
        finished
    }))
    .unwrap();
    assert_eq!(
        finished
            .iter()
            .map(|s| (s.request, s.outcome))
            .collect::<Vec<_>>(),
        [(r, Outcome::Completed)]
    );
    let up = upstream.lock().unwrap();
    assert_eq!(
        (up.attributed(9), up.attributed(1009)),
        (Some(&Ok(r)), Some(&Ok(r)))
    );
}

#[test]
fn a_request_not_started_on_this_instance_cannot_be_bound() {
    let Fixture {
        mut store,
        handle,
        registry,
        ..
    } = fixture(1);
    let queued = registry.lock().submit([], Instant::now()).unwrap();
    block_on(store.run_concurrent(async |accessor| {
        let Err(err) = accessor.with(|mut a| {
            ComponentAttribution::start_typed_call(
                &mut a,
                attribution,
                handle,
                (1, 0),
                queued,
                Instant::now(),
            )
        }) else {
            panic!("bound a request that is not started here");
        };
        assert!(matches!(err, AttribError::Registry(_)), "{err:?}");
    }))
    .unwrap();
}

/// What `weft serve` will do, minus HTTP: requests admitted by the registry,
/// instances spawned, reused and retired as it says, every call attributed,
/// traced and logged.
#[test]
fn a_server_loop_spreads_reuses_and_retires_instances_and_attributes_every_call() {
    let guest = guest();
    let policy = Policy {
        max_in_flight_per_instance: 4,
        max_requests_per_instance: 6,
        max_instances: 3,
        queue_capacity: 64,
        drain_timeout: std::time::Duration::from_secs(5),
    };
    let registry = SharedRegistry::new(Registry::new(policy, 0x5e4e).unwrap());
    let upstream = Arc::new(Mutex::new(Upstream {
        open: (1000..1100).collect(),
        ..Upstream::default()
    }));
    let trace = Arc::new(Mutex::new(
        TraceWriter::new(Vec::new(), Instant::now()).unwrap(),
    ));
    type Served = (Store<Host>, Handle, Vec<RequestId>);
    let mut instances: BTreeMap<InstanceId, Served> = BTreeMap::new();
    let requests: Vec<RequestId> = (0..20)
        .map(|_| registry.lock().submit([], Instant::now()).unwrap())
        .collect();
    let (mut log, mut batches, mut dropped) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        loop {
            let action = registry.lock().next_action(Instant::now());
            match action {
                None => break,
                Some(Action::Start { request, instance }) => {
                    trace
                        .lock()
                        .unwrap()
                        .request_started(request, instance, Instant::now())
                        .unwrap();
                    instances.get_mut(&instance).unwrap().2.push(request);
                }
                Some(Action::SpawnInstance) => {
                    let id = registry.lock().add_instance().unwrap();
                    trace.lock().unwrap().instance_started(id).unwrap();
                    let host = Host {
                        attribution: ComponentAttribution::new(registry.clone(), id),
                        upstream: upstream.clone(),
                        trace: Some(trace.clone()),
                    };
                    let (store, handle) = instantiate(&guest, host);
                    instances.insert(id, (store, handle, Vec::new()));
                }
                Some(Action::DropInstance(id)) => {
                    let (mut store, ..) = instances.remove(&id).unwrap();
                    assert!(
                        store
                            .data_mut()
                            .attribution
                            .store_dropped(Instant::now())
                            .unwrap()
                            .is_empty()
                    );
                    dropped.push(id);
                }
            }
        }
        let Some((&id, _)) = instances.iter().find(|(_, served)| !served.2.is_empty()) else {
            break;
        };
        let (store, handle, pending) = instances.get_mut(&id).unwrap();
        let (handle, batch) = (*handle, std::mem::take(pending));
        batches.push((id, batch.len()));
        {
            // Each batch answers only once all of it is in flight at once.
            let mut up = upstream.lock().unwrap();
            up.concurrency_needed = batch.len() as u32;
            up.max_in_flight = 0;
        }
        let finished = block_on(store.run_concurrent(async |accessor| {
            let mut finished = Vec::new();
            let calls: Vec<_> = batch
                .iter()
                .map(|&r| {
                    let x = r.get() as u32;
                    accessor
                        .with(|mut a| {
                            ComponentAttribution::start_typed_call(
                                &mut a,
                                attribution,
                                handle,
                                (x, 0),
                                r,
                                Instant::now(),
                            )
                        })
                        .unwrap()
                })
                .collect();
            for (&r, started) in batch.iter().zip(calls) {
                let (answer,) = handle
                    .finish_call_concurrent(accessor, started.call)
                    .await
                    .unwrap();
                assert_eq!(answer, 2 * r.get() as u32);
                finished.extend(registry.lock().response_sent(r, Instant::now()).unwrap());
            }
            finished.extend(idle(accessor).await);
            finished
        }))
        .unwrap();
        for summary in finished {
            let header_id = registry.lock().header_value(summary.request);
            let label = format!("GET /{} 200", summary.request.get());
            let args = json!({"outgoing": summary.outgoing});
            trace
                .lock()
                .unwrap()
                .request_finished(summary.request, summary.finished_at, &label, args)
                .unwrap();
            let line = AccessLogLine {
                finished_at: SystemTime::now(),
                summary: &summary,
                header_id: &header_id,
                method: "GET",
                path: "/",
                status: Some(200),
                trace: None,
            };
            log.push(line.to_string());
        }
    }

    // Every request answered, once, with both of its calls attributed to it.
    assert_eq!(log.len(), 20);
    assert!(
        log.iter()
            .all(|l| l.contains(" outgoing=2 ") && l.ends_with(" outcome=completed")),
        "{log:#?}"
    );
    let up = upstream.lock().unwrap();
    assert_eq!(up.calls.len(), 40);
    for r in &requests {
        let x = r.get() as u32;
        assert_eq!(
            (up.attributed(x), up.attributed(x + 1000)),
            (Some(&Ok(*r)), Some(&Ok(*r)))
        );
    }
    // The policy: at most 4 at once, at most 6 per instance, then retired.
    assert!(
        batches.iter().all(|&(_, n)| (1..=4).contains(&n)),
        "{batches:?}"
    );
    let mut served: BTreeMap<InstanceId, usize> = BTreeMap::new();
    for &(id, n) in &batches {
        *served.entry(id).or_default() += n;
    }
    assert!(served.values().all(|&n| n <= 6), "{served:?}");
    assert!(
        batches.iter().filter(|(id, _)| *id == batches[0].0).count() >= 2,
        "an instance is reused: {batches:?}"
    );
    assert!(
        !dropped.is_empty() && dropped.iter().all(|id| served[id] == 6),
        "retired after 6: {dropped:?}"
    );
    let stats = registry.lock().stats().clone();
    assert_eq!(
        (stats.completed, stats.outgoing, stats.stragglers),
        (20, 40, 0)
    );
    assert_eq!(registry.lock().live_requests(), 0);

    // The trace: a slice per request, per call, and an arrow from each
    // request to each of its calls.
    drop(up);
    for (_, (mut store, ..)) in instances {
        assert!(
            store
                .data_mut()
                .attribution
                .store_dropped(Instant::now())
                .unwrap()
                .is_empty()
        );
    }
    let bytes = Arc::into_inner(trace)
        .unwrap()
        .into_inner()
        .unwrap()
        .finish()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let events = doc["traceEvents"].as_array().unwrap();
    let count = |cat: &str| {
        events
            .iter()
            .filter(|e| e["ph"] == "X" && e["cat"] == cat)
            .count()
    };
    assert_eq!((count("request"), count("outgoing")), (20, 40));
    let flow_requests = |ph: &str| -> BTreeMap<u64, String> {
        events
            .iter()
            .filter(|e| e["ph"] == ph)
            .map(|e| {
                let (pid, tid, ts) = (&e["pid"], &e["tid"], e["ts"].as_f64().unwrap());
                let slice = events
                    .iter()
                    .find(|x| {
                        let (start, dur) = (
                            x["ts"].as_f64().unwrap_or(-1.0),
                            x["dur"].as_f64().unwrap_or(-1.0),
                        );
                        x["ph"] == "X"
                            && &x["pid"] == pid
                            && &x["tid"] == tid
                            && start <= ts
                            && ts <= start + dur
                    })
                    .expect("every flow end binds to a slice");
                (
                    e["id"].as_u64().unwrap(),
                    slice["args"]["request"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let (from, to) = (flow_requests("s"), flow_requests("f"));
    assert_eq!(from.len(), 40);
    assert_eq!(from, to, "each arrow joins a request to a call made for it");
}

#[test]
fn a_host_call_outside_any_task_is_not_attributed() {
    let Fixture { mut store, .. } = fixture(1);
    let err = CallerStack::capture(&mut store).unwrap_err();
    assert!(
        matches!(err, AttribError::NotInTask | AttribError::Wasmtime(_)),
        "{err:?}"
    );
}

/// Runs a future to completion on this thread. Everything that can wake it
/// (the guest, the fake upstream) runs on this thread too, so a poll that is
/// pending without having been woken is a stall: fail instead of hanging.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        flag.0.store(false, Ordering::SeqCst);
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        assert!(
            flag.0.load(Ordering::SeqCst),
            "stalled: pending with nothing left to wake it"
        );
    }
}

/// A condition polled from inside `run_concurrent` that becomes true as the
/// store's other tasks run: yields once per poll (waking itself) so the
/// store's event loop gets to run in between.
trait AwaitWithWake {
    fn await_with_wake(self) -> impl Future<Output = ()>;
}

impl<F: FnMut(&mut Context<'_>) -> Poll<()>> AwaitWithWake for std::future::PollFn<F> {
    fn await_with_wake(self) -> impl Future<Output = ()> {
        let mut inner = Box::pin(self);
        let mut polls = 0u32;
        poll_fn(move |cx| match inner.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => {
                polls += 1;
                assert!(polls < 10_000, "condition never became true");
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
    }
}
