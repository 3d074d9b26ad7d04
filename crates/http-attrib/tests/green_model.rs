//! The registry and the green-thread backend, driven together by random
//! operation sequences and checked step by step against a simple model:
//! ids are never reused, every outgoing call is attributed to the request
//! the model says (override, else root, inherited through context creation),
//! the instance policy holds, drains and stragglers are counted.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use weft_http_attrib::{
    Action, AttribError, Attribution, ContextExit, ContextId, GreenAttribution, InstanceId,
    Outcome, Policy, Refusal, Registry, RegistryError, RequestId, SharedRegistry,
};

const TAG: u64 = 0xfeed_f00d_0000_0001;
const MAIN: ContextId = 0;

fn policy() -> Policy {
    Policy {
        max_in_flight_per_instance: 2,
        max_requests_per_instance: 3,
        max_instances: 2,
        queue_capacity: 3,
        drain_timeout: Duration::from_millis(10),
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A new request, maybe carrying one of the ids issued so far (or a
    /// foreign server's id) in its `weft-request-id` header.
    Submit {
        header: Option<usize>,
        foreign: bool,
    },
    /// Run `next_action` until it settles, doing what it says.
    Dispatch,
    SpawnContext {
        context: usize,
    },
    ExitContext {
        context: usize,
    },
    Respond {
        request: usize,
    },
    Fetch {
        context: usize,
    },
    Enter {
        context: usize,
        token: usize,
        bogus: bool,
    },
    ExitOverride {
        context: usize,
    },
    Backpressure {
        instance: usize,
        on: bool,
    },
    /// The instance's guest runs without coming back to the host (`on`), or came back.
    Stall {
        instance: usize,
        on: bool,
    },
    /// The instance ran out of work to do (its worker is free).
    Idle {
        instance: usize,
    },
    Advance {
        ms: u64,
    },
    DrainExpired,
    Trap {
        instance: usize,
        culprit: Option<usize>,
    },
    /// The server learned a handler ended without answering.
    NoResponse {
        request: usize,
    },
    Retire {
        instance: usize,
    },
    Shutdown,
}

fn op() -> impl Strategy<Value = Op> {
    let ix = || 0usize..64;
    prop_oneof![
        30 => (proptest::option::weighted(0.3, ix()), any::<bool>())
            .prop_map(|(header, foreign)| Op::Submit { header, foreign }),
        40 => Just(Op::Dispatch),
        30 => ix().prop_map(|context| Op::SpawnContext { context }),
        30 => ix().prop_map(|context| Op::ExitContext { context }),
        30 => ix().prop_map(|request| Op::Respond { request }),
        40 => ix().prop_map(|context| Op::Fetch { context }),
        20 => (ix(), ix(), proptest::bool::weighted(0.2))
            .prop_map(|(context, token, bogus)| Op::Enter { context, token, bogus }),
        20 => ix().prop_map(|context| Op::ExitOverride { context }),
        10 => (ix(), any::<bool>()).prop_map(|(instance, on)| Op::Backpressure { instance, on }),
        10 => (ix(), any::<bool>()).prop_map(|(instance, on)| Op::Stall { instance, on }),
        20 => ix().prop_map(|instance| Op::Idle { instance }),
        20 => (1u64..8).prop_map(|ms| Op::Advance { ms }),
        10 => Just(Op::DrainExpired),
        10 => (ix(), proptest::option::of(ix())).prop_map(|(instance, culprit)| Op::Trap { instance, culprit }),
        10 => ix().prop_map(|request| Op::NoResponse { request }),
        10 => ix().prop_map(|instance| Op::Retire { instance }),
        // Rare, so most runs exercise the server before it stops.
        1 => Just(Op::Shutdown),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Queued,
    Running(InstanceId),
}

#[derive(Debug)]
struct MRequest {
    phase: Phase,
    responded_at: Option<Instant>,
    work_done: bool,
    outgoing: u32,
}

#[derive(Debug, Default)]
struct MInstance {
    closed: bool,
    backpressure: bool,
    stalled: bool,
    /// `None` until it first reports idle; then whether it was given a request since.
    busy: Option<bool>,
    served: u64,
    /// Every context of the instance (MAIN always), with its root.
    contexts: BTreeMap<ContextId, Option<RequestId>>,
    overrides: HashMap<ContextId, Vec<RequestId>>,
}

impl MInstance {
    fn effective(&self, context: ContextId) -> Option<RequestId> {
        self.overrides
            .get(&context)
            .and_then(|s| s.last().copied())
            .or(self.contexts[&context])
    }
}

#[derive(Debug, Default)]
struct Counters {
    completed: u64,
    drained: u64,
    stragglers: u64,
    failed: u64,
    requeued: u64,
    outgoing: u64,
    refused_loop: u64,
    refused_overload: u64,
    refused_shutdown: u64,
    no_response: u64,
}

struct World {
    now: Instant,
    registry: SharedRegistry,
    green: BTreeMap<InstanceId, GreenAttribution>,
    // The model.
    issued: Vec<RequestId>,
    requests: BTreeMap<RequestId, MRequest>,
    queue: VecDeque<RequestId>,
    instances: BTreeMap<InstanceId, MInstance>,
    next_context: ContextId,
    shutting_down: bool,
    counters: Counters,
}

impl World {
    fn new() -> Self {
        World {
            now: Instant::now(),
            registry: SharedRegistry::new(Registry::new(policy(), TAG).unwrap()),
            green: BTreeMap::new(),
            issued: Vec::new(),
            requests: BTreeMap::new(),
            queue: VecDeque::new(),
            instances: BTreeMap::new(),
            next_context: 1,
            shutting_down: false,
            counters: Counters::default(),
        }
    }

    fn eligible(&self, instance: &MInstance, id: InstanceId) -> bool {
        let p = policy();
        let in_flight = self
            .requests
            .values()
            .filter(|r| r.phase == Phase::Running(id) && r.responded_at.is_none())
            .count();
        !instance.closed
            && !instance.backpressure
            && !instance.stalled
            && in_flight < p.max_in_flight_per_instance
            && instance.served < p.max_requests_per_instance
    }

    /// Whether the policy lets one more instance be added: those that take requests (or
    /// would, but for being stalled) below `max_instances`, and all (retired, trapped and
    /// stalled ones included) below twice it.
    fn room_for_an_instance(&self) -> bool {
        let p = policy();
        self.counted(None) < p.max_instances && self.instances.len() < 2 * p.max_instances
    }

    /// Instances counted against `max_instances`: open, under their request budget and not
    /// stalled, `except` one.
    fn counted(&self, except: Option<InstanceId>) -> usize {
        let p = policy();
        self.instances
            .iter()
            .filter(|(id, m)| {
                Some(**id) != except
                    && !m.closed
                    && !m.stalled
                    && m.served < p.max_requests_per_instance
            })
            .count()
    }

    /// Requests the instances could start at once.
    fn room(&self) -> usize {
        let p = policy();
        self.instances
            .iter()
            .filter(|(id, m)| self.eligible(m, **id))
            .map(|(id, m)| {
                let in_flight = self
                    .requests
                    .values()
                    .filter(|r| r.phase == Phase::Running(*id) && r.responded_at.is_none())
                    .count();
                (p.max_in_flight_per_instance - in_flight)
                    .min((p.max_requests_per_instance - m.served) as usize)
            })
            .sum()
    }

    /// Every context of every instance, in a stable order.
    fn contexts(&self) -> Vec<(InstanceId, ContextId)> {
        self.instances
            .iter()
            .flat_map(|(&i, m)| m.contexts.keys().map(move |&c| (i, c)))
            .collect()
    }

    fn pick_instance(&self, ix: usize) -> Option<InstanceId> {
        let ids: Vec<InstanceId> = self.instances.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[ix % ids.len()])
    }

    fn pick_context(&self, ix: usize) -> Option<(InstanceId, ContextId)> {
        let all = self.contexts();
        (!all.is_empty()).then(|| all[ix % all.len()])
    }

    fn finish(&mut self, request: RequestId) {
        self.requests.remove(&request);
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Submit { header, foreign } => {
                let header_value = header.filter(|_| !self.issued.is_empty()).map(|ix| {
                    let id = self.issued[ix % self.issued.len()];
                    let tag = if foreign { TAG ^ 1 } else { TAG };
                    (id, format!("{tag:016x}-{}", id.get()))
                });
                let loops = header_value
                    .as_ref()
                    .filter(|(id, _)| !foreign && self.requests.contains_key(id))
                    .map(|(id, _)| *id);
                let got = self
                    .registry
                    .lock()
                    .submit(header_value.as_ref().map(|(_, v)| v.as_str()), self.now);
                if let Some(caused_by) = loops {
                    assert_eq!(got, Err(Refusal::LoopDetected { caused_by }));
                    self.counters.refused_loop += 1;
                } else if self.shutting_down {
                    assert_eq!(got, Err(Refusal::ShuttingDown));
                    self.counters.refused_shutdown += 1;
                } else if self.queue.len() >= policy().queue_capacity + self.room() {
                    // Requeued requests count too: the queue is that full.
                    assert_eq!(got, Err(Refusal::Overloaded));
                    self.counters.refused_overload += 1;
                } else {
                    let id = got.expect("admitted");
                    assert!(
                        self.issued.iter().all(|&old| old < id),
                        "ids only go up, never reused"
                    );
                    self.issued.push(id);
                    self.requests.insert(
                        id,
                        MRequest {
                            phase: Phase::Queued,
                            responded_at: None,
                            work_done: false,
                            outgoing: 0,
                        },
                    );
                    self.queue.push_back(id);
                }
            }
            Op::Dispatch => self.dispatch(),
            Op::SpawnContext { context } => {
                let Some((instance, parent)) = self.pick_context(context) else {
                    return;
                };
                let created = self.next_context;
                self.next_context += 1;
                let got = self
                    .green
                    .get_mut(&instance)
                    .unwrap()
                    .context_created(parent, created);
                let model = self.instances.get_mut(&instance).unwrap();
                let expected = model.effective(parent);
                assert_eq!(got, Ok(expected));
                model.contexts.insert(created, expected);
            }
            Op::ExitContext { context } => {
                let Some((instance, context)) = self.pick_context(context) else {
                    return;
                };
                if context == MAIN {
                    return;
                }
                let got = self
                    .green
                    .get_mut(&instance)
                    .unwrap()
                    .context_exited(context, self.now)
                    .unwrap();
                let model = self.instances.get_mut(&instance).unwrap();
                let root = model.contexts.remove(&context).unwrap();
                model.overrides.remove(&context);
                let Some(request) = root else {
                    assert_eq!(got, ContextExit::Unattributed);
                    return;
                };
                let left = model
                    .contexts
                    .values()
                    .filter(|r| **r == Some(request))
                    .count() as u32;
                if left > 0 {
                    assert_eq!(
                        got,
                        ContextExit::WorkLeft {
                            request,
                            contexts_left: left
                        }
                    );
                    return;
                }
                let ContextExit::LastForRequest {
                    request: r,
                    finished,
                } = got
                else {
                    panic!("expected the last context of {request}, got {got:?}");
                };
                assert_eq!(r, request);
                match self.requests.get_mut(&request) {
                    Some(m) if m.responded_at.is_some() => {
                        let summary = finished.expect("answered and all work done: finished");
                        assert_eq!(
                            (summary.outcome, summary.outgoing),
                            (Outcome::Completed, m.outgoing)
                        );
                        self.counters.completed += 1;
                        self.finish(request);
                    }
                    Some(m) => {
                        assert!(finished.is_none());
                        m.work_done = true;
                    }
                    None => assert!(finished.is_none()),
                }
            }
            Op::Respond { request } => {
                if self.issued.is_empty() {
                    return;
                }
                let id = self.issued[request % self.issued.len()];
                let got = self.registry.lock().response_sent(id, self.now);
                match self.requests.get_mut(&id) {
                    None => assert_eq!(got, Err(RegistryError::UnknownRequest(id))),
                    Some(m) if m.phase == Phase::Queued => {
                        assert_eq!(got, Err(RegistryError::NotStarted(id)))
                    }
                    Some(m) if m.responded_at.is_some() => {
                        assert_eq!(got, Err(RegistryError::AlreadyResponded(id)))
                    }
                    Some(m) => {
                        m.responded_at = Some(self.now);
                        if m.work_done {
                            let summary = got.unwrap().expect("work was done: finished");
                            assert_eq!(summary.outcome, Outcome::Completed);
                            self.counters.completed += 1;
                            self.finish(id);
                        } else {
                            assert_eq!(got, Ok(None));
                        }
                    }
                }
            }
            Op::Fetch { context } => {
                let Some((instance, context)) = self.pick_context(context) else {
                    return;
                };
                let got = self.green[&instance].record_outgoing(&context);
                match self.instances[&instance].effective(context) {
                    None => assert_eq!(got, Err(AttribError::Unattributed("context"))),
                    Some(request) => match self.requests.get_mut(&request) {
                        Some(m) => {
                            let out = got.expect("attributed to a live request");
                            assert_eq!(out.request, request);
                            assert_eq!(out.header_value, format!("{TAG:016x}-{}", request.get()));
                            m.outgoing += 1;
                            self.counters.outgoing += 1;
                        }
                        None => assert_eq!(
                            got,
                            Err(AttribError::Registry(RegistryError::UnknownRequest(
                                request
                            )))
                        ),
                    },
                }
            }
            Op::Enter {
                context,
                token,
                bogus,
            } => {
                let Some((instance, context)) = self.pick_context(context) else {
                    return;
                };
                let token = match (bogus, self.issued.len()) {
                    (true, _) | (_, 0) => [0, u64::MAX, 1 << 40][token % 3],
                    (false, n) => self.issued[token % n].get(),
                };
                let got = self
                    .green
                    .get_mut(&instance)
                    .unwrap()
                    .enter(&context, token);
                let target = RequestId::from_token(token).filter(|r| {
                    self.requests
                        .get(r)
                        .is_some_and(|m| m.phase == Phase::Running(instance))
                });
                let model = self.instances.get_mut(&instance).unwrap();
                let depth = model.overrides.get(&context).map_or(0, Vec::len);
                match target {
                    Some(request) if depth < weft_http_attrib::MAX_OVERRIDE_DEPTH => {
                        assert_eq!(got, Ok(request));
                        model.overrides.entry(context).or_default().push(request);
                    }
                    Some(_) => assert_eq!(got, Err(AttribError::OverrideTooDeep)),
                    None => assert!(matches!(got, Err(AttribError::Registry(_))), "{got:?}"),
                }
            }
            Op::ExitOverride { context } => {
                let Some((instance, context)) = self.pick_context(context) else {
                    return;
                };
                let got = self.green.get_mut(&instance).unwrap().exit(&context);
                let model = self.instances.get_mut(&instance).unwrap();
                match model.overrides.get_mut(&context).and_then(Vec::pop) {
                    Some(request) => assert_eq!(got, Ok(request)),
                    None => assert_eq!(got, Err(AttribError::UnbalancedExit)),
                }
            }
            Op::Backpressure { instance, on } => {
                let Some(id) = self.pick_instance(instance) else {
                    return;
                };
                self.registry.lock().set_backpressure(id, on).unwrap();
                self.instances.get_mut(&id).unwrap().backpressure = on;
            }
            Op::Idle { instance } => {
                let Some(id) = self.pick_instance(instance) else {
                    return;
                };
                self.registry.lock().instance_idle(id).unwrap();
                self.instances.get_mut(&id).unwrap().busy = Some(false);
            }
            Op::Stall { instance, on } => {
                let Some(id) = self.pick_instance(instance) else {
                    return;
                };
                self.registry.lock().set_stalled(id, on).unwrap();
                let others = self.counted(Some(id));
                let m = self.instances.get_mut(&id).unwrap();
                let was = std::mem::replace(&mut m.stalled, on);
                // Back while the others fill the limit: retired.
                if was
                    && !on
                    && !m.closed
                    && m.served < policy().max_requests_per_instance
                    && others >= policy().max_instances
                {
                    m.closed = true;
                }
            }
            Op::Advance { ms } => self.now += Duration::from_millis(ms),
            Op::DrainExpired => {
                let expired = self.registry.lock().expired(self.now);
                let expected: Vec<RequestId> = self
                    .requests
                    .iter()
                    .filter(|(_, m)| {
                        !m.work_done
                            && m.responded_at
                                .is_some_and(|at| at + policy().drain_timeout <= self.now)
                    })
                    .map(|(&id, _)| id)
                    .collect();
                assert_eq!(expired, expected);
                for request in expired {
                    let Phase::Running(instance) = self.requests[&request].phase else {
                        panic!("{request} expired while queued");
                    };
                    let (summary, killed) = self
                        .green
                        .get_mut(&instance)
                        .unwrap()
                        .drain(request, self.now)
                        .unwrap();
                    let model = self.instances.get_mut(&instance).unwrap();
                    let expected_killed: Vec<ContextId> = model
                        .contexts
                        .iter()
                        .filter(|(_, r)| **r == Some(request))
                        .map(|(&c, _)| c)
                        .collect();
                    assert_eq!(killed, expected_killed);
                    assert!(!killed.is_empty(), "an expired request still has work");
                    for context in &killed {
                        model.contexts.remove(context);
                        model.overrides.remove(context);
                    }
                    let stragglers = killed.len() as u32;
                    assert_eq!(summary.outcome, Outcome::Drained { stragglers });
                    self.counters.drained += 1;
                    self.counters.stragglers += u64::from(stragglers);
                    self.finish(request);
                }
            }
            Op::NoResponse { request } => {
                if self.issued.is_empty() {
                    return;
                }
                let id = self.issued[request % self.issued.len()];
                let got = self.registry.lock().no_response(id, self.now);
                match self.requests.get(&id) {
                    None => assert_eq!(got, Err(RegistryError::UnknownRequest(id))),
                    Some(m) if m.phase == Phase::Queued => {
                        assert_eq!(got, Err(RegistryError::NotStarted(id)))
                    }
                    Some(m) if m.responded_at.is_some() => {
                        assert_eq!(got, Err(RegistryError::AlreadyResponded(id)))
                    }
                    Some(m) => {
                        let summary = got.unwrap();
                        assert_eq!(
                            (summary.outcome, summary.outgoing),
                            (Outcome::NoResponse, m.outgoing)
                        );
                        self.counters.no_response += 1;
                        self.finish(id);
                    }
                }
            }
            Op::Retire { instance } => {
                let Some(id) = self.pick_instance(instance) else {
                    return;
                };
                self.registry.lock().retire(id).unwrap();
                self.instances.get_mut(&id).unwrap().closed = true;
            }
            Op::Shutdown => {
                self.registry.lock().begin_shutdown();
                self.shutting_down = true;
            }
            Op::Trap { instance, culprit } => {
                let Some(id) = self.pick_instance(instance) else {
                    return;
                };
                let on_it: Vec<RequestId> = self
                    .requests
                    .iter()
                    .filter(|(_, m)| m.phase == Phase::Running(id))
                    .map(|(&r, _)| r)
                    .collect();
                let culprit = culprit
                    .filter(|_| !on_it.is_empty())
                    .map(|ix| on_it[ix % on_it.len()]);
                let fallout = self
                    .registry
                    .lock()
                    .instance_trapped(id, culprit, self.now)
                    .unwrap();
                let (mut failed, mut requeued) = (Vec::new(), Vec::new());
                for &r in &on_it {
                    let m = &self.requests[&r];
                    if Some(r) == culprit || m.responded_at.is_some() || m.outgoing > 0 {
                        failed.push(r);
                    } else {
                        requeued.push(r);
                    }
                }
                assert_eq!(
                    fallout.failed.iter().map(|s| s.request).collect::<Vec<_>>(),
                    failed
                );
                assert!(fallout.failed.iter().all(|s| s.outcome == Outcome::Failed));
                assert_eq!(fallout.requeued, requeued);
                for r in failed {
                    self.counters.failed += 1;
                    self.finish(r);
                }
                for &r in requeued.iter().rev() {
                    let m = self.requests.get_mut(&r).unwrap();
                    m.phase = Phase::Queued;
                    m.work_done = false;
                    self.queue.push_front(r);
                    self.counters.requeued += 1;
                }
                // The trapped instance's contexts die with it.
                self.green.remove(&id);
                let model = self.instances.get_mut(&id).unwrap();
                model.closed = true;
                model.contexts.clear();
                model.overrides.clear();
            }
        }
    }

    fn dispatch(&mut self) {
        for _ in 0..100 {
            let action = self.registry.lock().next_action(self.now);
            match action {
                None => break,
                Some(Action::Start { request, instance }) => {
                    assert_eq!(
                        self.queue.pop_front(),
                        Some(request),
                        "first come, first served"
                    );
                    let model = &self.instances[&instance];
                    assert!(
                        self.eligible(model, instance),
                        "started on an instance that takes no work"
                    );
                    if model.busy == Some(true) {
                        assert!(
                            !self
                                .instances
                                .iter()
                                .any(|(&id, m)| self.eligible(m, id) && m.busy != Some(true)),
                            "started on a busy instance next to an idle one"
                        );
                        assert!(
                            !self.room_for_an_instance(),
                            "started on a busy instance while another could be added"
                        );
                    }
                    let model = self.instances.get_mut(&instance).unwrap();
                    if let Some(busy) = &mut model.busy {
                        *busy = true;
                    }
                    model.served += 1;
                    if model.served >= policy().max_requests_per_instance {
                        model.closed = true;
                    }
                    let m = self.requests.get_mut(&request).unwrap();
                    m.phase = Phase::Running(instance);
                    let handler = self.next_context;
                    self.next_context += 1;
                    self.green
                        .get_mut(&instance)
                        .unwrap()
                        .request_started(handler, request)
                        .unwrap();
                    model.contexts.insert(handler, Some(request));
                }
                Some(Action::SpawnInstance) => {
                    assert!(!self.queue.is_empty());
                    // None takes work, or every one that does is busy.
                    assert!(
                        !self
                            .instances
                            .iter()
                            .any(|(&id, m)| self.eligible(m, id) && m.busy != Some(true))
                    );
                    assert!(self.room_for_an_instance());
                    let id = self.registry.lock().add_instance().unwrap();
                    assert!(
                        !self.instances.contains_key(&id),
                        "instance ids are never reused"
                    );
                    self.green
                        .insert(id, GreenAttribution::new(self.registry.clone(), id));
                    let mut model = MInstance::default();
                    model.contexts.insert(MAIN, None);
                    self.instances.insert(id, model);
                }
                Some(Action::DropInstance(id)) => {
                    let model = self
                        .instances
                        .remove(&id)
                        .expect("dropping a live instance");
                    assert!(
                        model.closed,
                        "only retired or trapped instances are dropped"
                    );
                    assert!(
                        !self
                            .requests
                            .values()
                            .any(|m| m.phase == Phase::Running(id)),
                        "dropped with requests still on it"
                    );
                    // Contexts may outlive their requests (a worker holding
                    // an override of a finished one); none works for a live one.
                    if let Some(green) = self.green.remove(&id) {
                        for &request in self.requests.keys() {
                            assert!(green.contexts_of(request).is_empty());
                        }
                    }
                }
            }
        }
        // Settled: whatever still waits has nowhere to go.
        if !self.queue.is_empty() {
            assert!(
                !self.instances.iter().any(|(&id, m)| self.eligible(m, id)),
                "a request waits next to a free instance"
            );
            assert!(
                !self.room_for_an_instance(),
                "a request waits while an instance could be added"
            );
        }
    }

    fn check(&self) {
        let registry = self.registry.lock();
        assert_eq!(registry.live_requests(), self.requests.len());
        assert_eq!(registry.queue_len(), self.queue.len());
        // The queue's bound is checked where it applies, at each submit: room
        // counted then may vanish later (backpressure, a trap) and admitted
        // requests are never dropped for it.
        for (id, m) in &self.requests {
            assert!(registry.is_live(*id));
            let on = match m.phase {
                Phase::Queued => None,
                Phase::Running(i) => Some(i),
            };
            assert_eq!(registry.instance_of(*id), on);
        }
        for (&id, m) in &self.instances {
            let in_flight = self
                .requests
                .values()
                .filter(|r| r.phase == Phase::Running(id) && r.responded_at.is_none())
                .count();
            assert!(in_flight <= policy().max_in_flight_per_instance);
            assert!(m.served <= policy().max_requests_per_instance);
            assert_eq!(registry.accepts_requests(id), self.eligible(m, id));
        }
        let model_deadline = self
            .requests
            .values()
            .filter(|m| !m.work_done)
            .filter_map(|m| m.responded_at)
            .min()
            .map(|at| at + policy().drain_timeout);
        assert_eq!(registry.next_deadline(), model_deadline);
        let s = registry.stats();
        let c = &self.counters;
        assert_eq!(
            (
                s.completed,
                s.drained,
                s.stragglers,
                s.failed,
                s.requeued,
                s.outgoing,
                s.refused_loop,
                s.refused_overload,
                s.refused_shutdown,
                s.no_response,
            ),
            (
                c.completed,
                c.drained,
                c.stragglers,
                c.failed,
                c.requeued,
                c.outgoing,
                c.refused_loop,
                c.refused_overload,
                c.refused_shutdown,
                c.no_response,
            )
        );
        assert_eq!(s.submitted, self.issued.len() as u64);
        assert_eq!(
            registry.is_drained(),
            self.shutting_down && self.requests.is_empty() && self.instances.is_empty()
        );
        let ids: BTreeSet<RequestId> = self.issued.iter().copied().collect();
        assert_eq!(ids.len(), self.issued.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Off)),
        ..ProptestConfig::default()
    })]

    #[test]
    fn registry_and_green_attribution_match_the_model(ops in proptest::collection::vec(op(), 1..120)) {
        let mut world = World::new();
        for op in &ops {
            world.apply(op);
            world.check();
        }
    }
}

/// The attribution rules end to end on one instance, spelled out.
#[test]
fn helpers_inherit_and_workers_enter() {
    let now = Instant::now();
    let registry = SharedRegistry::new(Registry::new(policy(), TAG).unwrap());
    let (a, b) = {
        let mut reg = registry.lock();
        (reg.submit([], now).unwrap(), reg.submit([], now).unwrap())
    };
    assert_eq!(
        registry.lock().next_action(now),
        Some(Action::SpawnInstance)
    );
    let instance = registry.lock().add_instance().unwrap();
    let mut green = GreenAttribution::new(registry.clone(), instance);
    assert_eq!(green.instance(), instance);
    for (context, request) in [(1, a), (2, b)] {
        assert_eq!(
            registry.lock().next_action(now),
            Some(Action::Start { request, instance })
        );
        green.request_started(context, request).unwrap();
    }
    assert_eq!(
        green.request_started(2, a),
        Err(AttribError::ContextInUse(2))
    );
    // A helper of a's handler works for a.
    assert_eq!(green.context_created(1, 10), Ok(Some(a)));
    assert_eq!(
        green.context_created(1, 10),
        Err(AttribError::ContextInUse(10))
    );
    // What the wasix-context side provides: the running context.
    struct Running(ContextId);
    impl weft_http_attrib::ActiveContext for Running {
        fn active_context(&self) -> ContextId {
            self.0
        }
    }
    assert_eq!(green.attribute_active(&Running(10)), Ok(a));
    assert_eq!(
        green.attribute_active(&Running(MAIN)),
        Err(AttribError::Unattributed("context"))
    );
    assert_eq!(green.attributed_contexts(), 3);
    assert_eq!(green.record_outgoing(&10).unwrap().request, a);
    // The guest's own worker (created by main) works for nobody until it enters.
    assert_eq!(green.context_created(MAIN, 20), Ok(None));
    assert_eq!(
        green.record_outgoing(&20),
        Err(AttribError::Unattributed("context"))
    );
    assert_eq!(green.enter(&20, b.get()), Ok(b));
    assert_eq!(green.record_outgoing(&20).unwrap().request, b);
    // A context it creates while working for b works for b.
    assert_eq!(green.context_created(20, 21), Ok(Some(b)));
    assert_eq!(green.exit(&20), Ok(b));
    assert_eq!(green.exit(&20), Err(AttribError::UnbalancedExit));
    assert_eq!(green.record_outgoing(&21).unwrap().request, b);
    // A token for nothing is refused, and changes nothing.
    assert!(green.enter(&1, 999).is_err());
    assert_eq!(green.attribute(&1), Ok(a));
    // a answers; its helper keeps it alive; the helper's exit finishes it.
    assert_eq!(registry.lock().response_sent(a, now), Ok(None));
    assert_eq!(
        green.context_exited(1, now),
        Ok(ContextExit::WorkLeft {
            request: a,
            contexts_left: 1
        })
    );
    let ContextExit::LastForRequest {
        finished: Some(summary),
        ..
    } = green.context_exited(10, now).unwrap()
    else {
        panic!("a's last context");
    };
    assert_eq!((summary.outcome, summary.outgoing), (Outcome::Completed, 1));
    // b answers, and its helper overstays the drain deadline: killed, counted.
    registry.lock().response_sent(b, now).unwrap();
    assert_eq!(
        green.context_exited(2, now).unwrap(),
        ContextExit::WorkLeft {
            request: b,
            contexts_left: 1
        }
    );
    let late = now + policy().drain_timeout;
    assert_eq!(registry.lock().expired(late), vec![b]);
    let (summary, killed) = green.drain(b, late).unwrap();
    assert_eq!(
        (summary.outcome, killed),
        (Outcome::Drained { stragglers: 1 }, vec![21])
    );
    assert_eq!(
        green.context_exited(21, late),
        Ok(ContextExit::Unattributed)
    );
    assert_eq!(registry.lock().stats().stragglers, 1);
}
