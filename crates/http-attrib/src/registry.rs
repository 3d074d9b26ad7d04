//! The request registry: request lifecycle, attribution of outgoing calls,
//! loop detection and the instance policy, as one state machine.
//!
//! It knows nothing of HTTP, wasmtime or clocks: the server tells it what
//! happened (with the time it happened) and asks it what to do next
//! ([`Registry::next_action`]). That keeps every policy decision in one place
//! and testable against a model.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::ids::{InstanceId, RequestId};

/// The name of the header that carries a request id on outgoing requests.
pub const REQUEST_ID_HEADER: &str = "weft-request-id";

/// Limits the registry enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Requests that have not had their response yet, per instance.
    /// Post-response work does not count: it does not hold a client waiting.
    pub max_in_flight_per_instance: usize,
    /// Requests an instance serves before it is retired (then dropped once
    /// nothing is left running in it).
    pub max_requests_per_instance: u64,
    /// Instances that take requests, including ones being created. Instances
    /// that no longer do (retired or trapped, finishing their last requests)
    /// come on top, up to as many again: a retiring instance's replacement
    /// does not wait for it to drain.
    pub max_instances: usize,
    /// Requests waiting for an instance (beyond those instances can start
    /// at once); beyond this, new requests are refused (`503`). May be 0.
    pub queue_capacity: usize,
    /// How long work for a request may go on after its response was sent.
    pub drain_timeout: Duration,
}

impl Policy {
    /// The defaults for a server with `workers` scheduler threads: one
    /// instance per worker. More instances than workers only take turns on
    /// the same cores, each bringing its own memory through the caches (a
    /// language runtime's instance touches megabytes per request): measured
    /// with Python components on two cores, two instances answered 10 to 20 %
    /// more requests than four, at less CPU each, I/O-bound ones included
    /// (a concurrent instance waits on many requests' I/O at once).
    pub fn for_workers(workers: usize) -> Self {
        let workers = workers.max(1);
        Policy {
            max_in_flight_per_instance: 16,
            max_requests_per_instance: 128,
            max_instances: workers,
            queue_capacity: 64 * 16 * workers,
            drain_timeout: Duration::from_secs(5),
        }
    }

    fn check(&self) -> Result<(), RegistryError> {
        let zero = |what| Err(RegistryError::BadPolicy(what));
        if self.max_in_flight_per_instance == 0 {
            return zero("max_in_flight_per_instance");
        }
        if self.max_requests_per_instance == 0 {
            return zero("max_requests_per_instance");
        }
        if self.max_instances == 0 {
            return zero("max_instances");
        }
        Ok(())
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::for_workers(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

/// Why the registry refused an incoming request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It carries a live request id of this very server: answering it would
    /// feed a loop (`508 Loop Detected`).
    LoopDetected {
        /// The live request whose id the incoming request carried: the
        /// incoming request descends from one of its outgoing calls.
        caused_by: RequestId,
    },
    /// The queue is full (`503 Service Unavailable`).
    Overloaded,
    /// The server is shutting down (`503 Service Unavailable`).
    ShuttingDown,
}

impl Refusal {
    /// The HTTP status to answer with.
    pub fn status(self) -> u16 {
        match self {
            Refusal::LoopDetected { .. } => 508,
            Refusal::Overloaded | Refusal::ShuttingDown => 503,
        }
    }
}

/// Misuse of the registry by its caller, or a guest naming something that is
/// not there. Never a panic: a guest's bad token is one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The request is not live: never submitted, or already finished (an
    /// event that arrives after the request was drained or failed, say).
    #[error("request {0} is not live")]
    UnknownRequest(RequestId),
    /// A token a guest passed is 0, or names no live request of this server
    /// (one that finished, or an id never issued).
    #[error("token {0} does not name a live request")]
    BadToken(u64),
    /// A guest on one instance named a request running on another: work
    /// may only be attributed to requests of the instance it runs in.
    #[error("request {request} belongs to instance {owner}, not {asked}")]
    ForeignRequest {
        /// The request the token named.
        request: RequestId,
        /// The instance that request was started on.
        owner: InstanceId,
        /// The instance of the guest that passed the token.
        asked: InstanceId,
    },
    /// The request is still queued, so it has no instance and no handler
    /// yet. [`Registry::drained`] also returns it for a request that has not
    /// responded, since only answered requests have a drain deadline.
    #[error("request {0} has not been started on an instance")]
    NotStarted(RequestId),
    /// [`Registry::response_sent`] or [`Registry::no_response`] for a request
    /// whose response was already reported.
    #[error("request {0} already had its response")]
    AlreadyResponded(RequestId),
    /// The instance was never added, or has already been dropped.
    #[error("instance {0} is not live")]
    UnknownInstance(InstanceId),
    /// [`Registry::add_instance`] without a pending
    /// [`Action::SpawnInstance`] while [`Policy::max_instances`] take
    /// requests (or twice that many are live); holds that maximum.
    #[error("already {0} instances, the policy's maximum")]
    TooManyInstances(usize),
    /// [`Registry::new`] got a policy with a limit of zero, which would let
    /// no request run; holds the field's name.
    #[error("policy field {0} must not be zero")]
    BadPolicy(&'static str),
}

/// What the server should do next; see [`Registry::next_action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run `request` on `instance` (its handler starts now).
    Start {
        /// The request taken from the front of the queue.
        request: RequestId,
        /// The instance chosen among those that take new requests: an idle one
        /// first (see [`Registry::instance_idle`]), then the least loaded.
        instance: InstanceId,
    },
    /// Requests wait and no instance can take them, or every one that could is
    /// busy: create one and report it with [`Registry::add_instance`] (or
    /// [`Registry::spawn_failed`]).
    SpawnInstance,
    /// Nothing is left running in this retired or trapped instance: drop it.
    DropInstance(InstanceId),
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response sent and all work for it finished.
    Completed,
    /// Response sent; work still running at the drain deadline was killed.
    Drained {
        /// Units of work (contexts, or the root task) that were killed.
        stragglers: u32,
    },
    /// Its handler finished without sending a response.
    NoResponse,
    /// Its instance trapped (because of it or of a sibling it could not be
    /// moved away from).
    Failed,
}

/// A finished request, for the access log and the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The request that finished.
    pub request: RequestId,
    /// The instance it last ran on; `None` only if it was never started.
    pub instance: Option<InstanceId>,
    /// How it ended.
    pub outcome: Outcome,
    /// Outgoing calls attributed to it ([`Registry::record_outgoing`]).
    pub outgoing: u32,
    /// When [`Registry::submit`] admitted it.
    pub submitted_at: Instant,
    /// When it was last started on an instance (a request requeued after a
    /// trap is started again); `None` if it never was.
    pub started_at: Option<Instant>,
    /// When its response went out; `None` if none did.
    pub responded_at: Option<Instant>,
    /// The time given to the registry call that finished it.
    pub finished_at: Instant,
}

impl Summary {
    /// From arrival to response (or to the end, when there was none).
    pub fn response_time(&self) -> Duration {
        self.responded_at.unwrap_or(self.finished_at) - self.submitted_at
    }

    /// How long work went on after the response.
    pub fn post_response_time(&self) -> Duration {
        self.responded_at
            .map_or(Duration::ZERO, |at| self.finished_at - at)
    }
}

/// What happened to the requests of an instance that trapped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrapFallout {
    /// Finished as [`Outcome::Failed`]: the culprit, and siblings that had
    /// already answered or made outgoing calls (retrying would repeat them).
    pub failed: Vec<Summary>,
    /// Siblings with no response and no outgoing call yet: back at the front
    /// of the queue under the same id, to run again on another instance.
    /// The server must still hold their request bodies.
    pub requeued: Vec<RequestId>,
}

/// Counters over the registry's whole life.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests admitted by [`Registry::submit`] (refusals not counted).
    pub submitted: u64,
    /// Requests finished as [`Outcome::Completed`].
    pub completed: u64,
    /// Requests finished as [`Outcome::Drained`].
    pub drained: u64,
    /// Units of work (contexts, tasks) killed at drain deadlines.
    pub stragglers: u64,
    /// Requests finished as [`Outcome::NoResponse`].
    pub no_response: u64,
    /// Requests finished as [`Outcome::Failed`].
    pub failed: u64,
    /// Times a request went back to the queue after its instance trapped
    /// (one request may count more than once).
    pub requeued: u64,
    /// Incoming requests refused as [`Refusal::LoopDetected`].
    pub refused_loop: u64,
    /// Incoming requests refused as [`Refusal::Overloaded`].
    pub refused_overload: u64,
    /// Incoming requests refused as [`Refusal::ShuttingDown`].
    pub refused_shutdown: u64,
    /// Outgoing calls recorded with [`Registry::record_outgoing`].
    pub outgoing: u64,
    /// Instances registered with [`Registry::add_instance`].
    pub instances_created: u64,
    /// Instances dropped through [`Action::DropInstance`].
    pub instances_dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InstanceState {
    Active,
    /// Takes no new requests; dropped when empty.
    Retiring,
    /// Takes no new requests; dropped when empty.
    Trapped,
}

#[derive(Debug)]
struct InstanceRecord {
    state: InstanceState,
    backpressure: bool,
    /// Its guest is running code that has not come back to the host for a while
    /// ([`Registry::set_stalled`]).
    stalled: bool,
    /// `None` until the instance first reports it ran out of work
    /// ([`Registry::instance_idle`]); from then on, whether it was given a request since.
    busy: Option<bool>,
    /// Started, not yet responded.
    in_flight: usize,
    /// Started, not yet finished (in flight or post-response).
    live: usize,
    served: u64,
}

#[derive(Debug)]
struct RequestRecord {
    instance: Option<InstanceId>,
    submitted_at: Instant,
    started_at: Option<Instant>,
    responded_at: Option<Instant>,
    deadline: Option<Instant>,
    work_done: bool,
    outgoing: u32,
    /// Its instance is done with it ([`Registry::handed_over`]): it no longer counts there.
    handed_over: bool,
}

/// The registry. One per server, shared by all instances (behind a
/// [`SharedRegistry`](crate::SharedRegistry) when threads share it).
#[derive(Debug)]
pub struct Registry {
    policy: Policy,
    server_tag: u64,
    next_request: u64,
    next_instance: u64,
    requests: HashMap<RequestId, RequestRecord>,
    instances: BTreeMap<InstanceId, InstanceRecord>,
    queue: VecDeque<RequestId>,
    /// Drain deadlines of answered requests still working, soonest first.
    deadlines: BTreeSet<(Instant, RequestId)>,
    spawning: usize,
    shutting_down: bool,
    stats: Stats,
}

impl Registry {
    /// `server_tag` tells this server's ids from another server's in the
    /// `weft-request-id` header; [`Registry::random_server_tag`] makes one.
    pub fn new(policy: Policy, server_tag: u64) -> Result<Self, RegistryError> {
        policy.check()?;
        Ok(Registry {
            policy,
            server_tag,
            next_request: 1,
            next_instance: 1,
            requests: HashMap::new(),
            instances: BTreeMap::new(),
            queue: VecDeque::new(),
            deadlines: BTreeSet::new(),
            spawning: 0,
            shutting_down: false,
            stats: Stats::default(),
        })
    }

    /// A tag that differs between servers and between runs (from the
    /// process id, the time and std's per-process random hash keys).
    pub fn random_server_tag() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        if let Ok(since_epoch) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)
        {
            hasher.write_u128(since_epoch.as_nanos());
        }
        hasher.finish()
    }

    /// The limits this registry enforces, as given to [`Registry::new`].
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Counters since the registry was created.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The value of the `weft-request-id` header for outgoing calls made on
    /// behalf of `request`.
    pub fn header_value(&self, request: RequestId) -> String {
        format!("{:016x}-{}", self.server_tag, request.get())
    }

    /// Reads a `weft-request-id` header value. `Some` only for an id this
    /// server issued (live or not); other servers' ids and garbage are `None`.
    pub fn parse_header_value(&self, value: &str) -> Option<RequestId> {
        let (tag, seq) = value.trim().split_once('-')?;
        if tag.len() != 16 || u64::from_str_radix(tag, 16).ok()? != self.server_tag {
            return None;
        }
        if !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let seq: u64 = seq.parse().ok()?;
        (seq < self.next_request).then(|| RequestId::from_token(seq))?
    }

    /// Is `request` submitted and not finished?
    pub fn is_live(&self, request: RequestId) -> bool {
        self.requests.contains_key(&request)
    }

    /// Has the response of live `request` gone out?
    pub fn has_responded(&self, request: RequestId) -> bool {
        self.requests
            .get(&request)
            .is_some_and(|r| r.responded_at.is_some())
    }

    /// Has live `request`'s instance handed it over ([`Registry::handed_over`])?
    pub fn was_handed_over(&self, request: RequestId) -> bool {
        self.requests.get(&request).is_some_and(|r| r.handed_over)
    }

    /// The instance `request` runs on, if it has been started.
    pub fn instance_of(&self, request: RequestId) -> Option<InstanceId> {
        self.requests.get(&request)?.instance
    }

    /// Requests submitted and not finished: queued, in flight, or still
    /// working after their response.
    pub fn live_requests(&self) -> usize {
        self.requests.len()
    }

    /// Requests waiting for an instance, including ones requeued after a
    /// trap.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Live instances, excluding ones being created.
    pub fn instance_count(&self) -> usize {
        self.instances.len()
    }

    /// Live instances that take no new requests (retiring or trapped), waiting
    /// for their last request to finish.
    pub fn retiring_instance_count(&self) -> usize {
        self.instances
            .values()
            .filter(|r| r.state != InstanceState::Active)
            .count()
    }

    /// Requests started on an instance and not yet answered (post-response
    /// work and queued requests not counted).
    pub fn in_flight(&self) -> usize {
        self.instances.values().map(|r| r.in_flight).sum()
    }

    /// Admits an incoming request, given the `weft-request-id` headers it
    /// carries (any number: a proxy may have added its own), into the queue.
    /// Call [`Registry::next_action`] afterwards.
    pub fn submit<'a>(
        &mut self,
        request_id_headers: impl IntoIterator<Item = &'a str>,
        now: Instant,
    ) -> Result<RequestId, Refusal> {
        for value in request_id_headers {
            if let Some(caused_by) = self.parse_header_value(value)
                && self.is_live(caused_by)
            {
                self.stats.refused_loop += 1;
                return Err(Refusal::LoopDetected { caused_by });
            }
        }
        if self.shutting_down {
            self.stats.refused_shutdown += 1;
            return Err(Refusal::ShuttingDown);
        }
        if self.queue.len() >= self.policy.queue_capacity + self.immediate_room() {
            self.stats.refused_overload += 1;
            return Err(Refusal::Overloaded);
        }
        let request = RequestId::from_seq(self.next_request);
        self.next_request += 1;
        self.requests.insert(
            request,
            RequestRecord {
                instance: None,
                submitted_at: now,
                started_at: None,
                responded_at: None,
                deadline: None,
                work_done: false,
                outgoing: 0,
                handed_over: false,
            },
        );
        self.queue.push_back(request);
        self.stats.submitted += 1;
        Ok(request)
    }

    /// Refuses every later [`Registry::submit`]; what is queued or running
    /// goes on (drain it with `next_action` as usual).
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// True once shutdown began and nothing is left: no request, no instance
    /// still to drop.
    pub fn is_drained(&self) -> bool {
        self.shutting_down && self.requests.is_empty() && self.instances.is_empty()
    }

    fn accepts_new(&self, record: &InstanceRecord) -> bool {
        record.state == InstanceState::Active
            && !record.backpressure
            && !record.stalled
            && record.in_flight < self.policy.max_in_flight_per_instance
            && record.served < self.policy.max_requests_per_instance
    }

    /// How many requests instances could start right now: those do not
    /// wait, so they do not count against the queue's capacity.
    fn immediate_room(&self) -> usize {
        self.instances
            .values()
            .filter(|r| self.accepts_new(r))
            .map(|r| {
                let in_flight_room = self.policy.max_in_flight_per_instance - r.in_flight;
                let budget_room = self.policy.max_requests_per_instance - r.served;
                in_flight_room.min(usize::try_from(budget_room).unwrap_or(usize::MAX))
            })
            .sum()
    }

    /// The next thing the server should do, or `None` when all is settled.
    /// Call it in a loop after every event.
    pub fn next_action(&mut self, now: Instant) -> Option<Action> {
        let empty_dead = self
            .instances
            .iter()
            .find(|(_, r)| r.state != InstanceState::Active && r.live == 0)
            .map(|(&id, _)| id);
        if let Some(id) = empty_dead {
            self.instances.remove(&id);
            self.stats.instances_dropped += 1;
            return Some(Action::DropInstance(id));
        }
        let &request = self.queue.front()?;
        // An idle instance first, then the least loaded one that takes work:
        // spreads load, and an instance near its request budget is not
        // preferred over a fresh one.
        let target = self
            .instances
            .iter()
            .filter(|(_, r)| self.accepts_new(r))
            .min_by_key(|(id, r)| (r.busy == Some(true), r.in_flight, r.served, **id))
            .map(|(&id, r)| (id, r.busy == Some(true)));
        if let Some((instance, busy)) = target {
            // Every instance that could take it is busy: an instance runs its
            // requests' code one at a time, on one worker, so piling requests on
            // busy ones leaves the other workers idle. Ask for one more instance
            // (one at a time, within the limit). The request then goes to the
            // least loaded: the new one once it is added (it has nothing in
            // flight), else a busy one, so it never waits for an instance that
            // may not come.
            if busy && self.spawning == 0 && self.has_room_for_an_instance() {
                self.spawning += 1;
                return Some(Action::SpawnInstance);
            }
            self.queue.pop_front();
            let record = self.instances.get_mut(&instance).expect("target exists");
            if let Some(busy) = &mut record.busy {
                *busy = true;
            }
            record.in_flight += 1;
            record.live += 1;
            record.served += 1;
            if record.served >= self.policy.max_requests_per_instance {
                record.state = InstanceState::Retiring;
            }
            let entry = self.requests.get_mut(&request).expect("queued is live");
            entry.instance = Some(instance);
            entry.started_at = Some(now);
            return Some(Action::Start { request, instance });
        }
        // Instances still being created will take the first queued requests;
        // only ask for more when the queue outnumbers what they will accept.
        let spawning_capacity = self.spawning * self.policy.max_in_flight_per_instance;
        if self.queue.len() > spawning_capacity && self.has_room_for_an_instance() {
            self.spawning += 1;
            return Some(Action::SpawnInstance);
        }
        None
    }

    /// Whether one more instance fits [`Policy::max_instances`]: those taking
    /// requests (and being created) below it, and all, retiring and stalled
    /// ones included, below twice it.
    fn has_room_for_an_instance(&self) -> bool {
        let max = self.policy.max_instances;
        self.counted_instances(None) + self.spawning < max
            && self.instances.len() + self.spawning < max.saturating_mul(2)
    }

    /// Instances that count against [`Policy::max_instances`]: active and not
    /// stalled, `except` one.
    fn counted_instances(&self, except: Option<InstanceId>) -> usize {
        self.instances
            .iter()
            .filter(|(id, r)| {
                r.state == InstanceState::Active && !r.stalled && Some(**id) != except
            })
            .count()
    }

    /// Registers a new instance: one asked for by [`Action::SpawnInstance`],
    /// or one created up front (pre-warming), within `max_instances`.
    pub fn add_instance(&mut self) -> Result<InstanceId, RegistryError> {
        if self.spawning > 0 {
            self.spawning -= 1;
        } else if !self.has_room_for_an_instance() {
            return Err(RegistryError::TooManyInstances(self.policy.max_instances));
        }
        let id = InstanceId(self.next_instance);
        self.next_instance += 1;
        self.instances.insert(
            id,
            InstanceRecord {
                state: InstanceState::Active,
                backpressure: false,
                stalled: false,
                busy: None,
                in_flight: 0,
                live: 0,
                served: 0,
            },
        );
        self.stats.instances_created += 1;
        Ok(id)
    }

    /// Creating an instance asked for by [`Action::SpawnInstance`] failed.
    pub fn spawn_failed(&mut self) {
        self.spawning = self.spawning.saturating_sub(1);
    }

    fn instance_mut(&mut self, instance: InstanceId) -> Result<&mut InstanceRecord, RegistryError> {
        self.instances
            .get_mut(&instance)
            .ok_or(RegistryError::UnknownInstance(instance))
    }

    /// The guest asked for no more concurrent requests (`true`) or lifted
    /// that (`false`). Requests go to other instances or wait meanwhile.
    pub fn set_backpressure(
        &mut self,
        instance: InstanceId,
        on: bool,
    ) -> Result<(), RegistryError> {
        self.instance_mut(instance)?.backpressure = on;
        Ok(())
    }

    /// Whether the guest of `instance` currently asks for no more concurrent
    /// requests (see [`Registry::set_backpressure`]); `false` for an instance
    /// that is not live.
    pub fn has_backpressure(&self, instance: InstanceId) -> bool {
        self.instances
            .get(&instance)
            .is_some_and(|r| r.backpressure)
    }

    /// The guest of `instance` has been running for a while without coming
    /// back to the host (`true`: a long computation or a loop; its instance can
    /// start nothing else meanwhile), or came back (`false`). While stalled it
    /// takes no new requests and does not count against
    /// [`Policy::max_instances`], so another instance may be created for
    /// them (within twice the limit, as for retiring ones). When it comes back
    /// and the others already fill the limit, it is retired: it finishes what it
    /// has and is dropped.
    pub fn set_stalled(&mut self, instance: InstanceId, on: bool) -> Result<(), RegistryError> {
        let record = self.instance_mut(instance)?;
        let was = std::mem::replace(&mut record.stalled, on);
        if was && !on && record.state == InstanceState::Active {
            let others = self.counted_instances(Some(instance));
            if others + self.spawning >= self.policy.max_instances {
                self.retire(instance)?;
            }
        }
        Ok(())
    }

    /// `instance` ran out of work: every request it started is waiting (for
    /// I/O, a timer, its client) or done, so its worker is free. From an
    /// instance's first report on, the registry counts it busy from each
    /// request it is given to its next report: new requests go to idle
    /// instances first, and when every instance that could take one is busy,
    /// another is created (within [`Policy::max_instances`]). An instance that
    /// never reports is never counted busy.
    pub fn instance_idle(&mut self, instance: InstanceId) -> Result<(), RegistryError> {
        self.instance_mut(instance)?.busy = Some(false);
        Ok(())
    }

    /// Does `instance` take new requests now?
    pub fn accepts_requests(&self, instance: InstanceId) -> bool {
        self.instances
            .get(&instance)
            .is_some_and(|r| self.accepts_new(r))
    }

    /// Stop giving `instance` new requests; it is dropped once empty.
    pub fn retire(&mut self, instance: InstanceId) -> Result<(), RegistryError> {
        let record = self.instance_mut(instance)?;
        if record.state == InstanceState::Active {
            record.state = InstanceState::Retiring;
        }
        Ok(())
    }

    /// The instance `request` was started on could not start it (no room for another
    /// request: its memory or its contexts ran out) and ran nothing of it. The request goes
    /// back to the front of the queue for another instance, and this one is retired: it takes
    /// no new requests and is dropped once its others are finished.
    pub fn could_not_start(&mut self, request: RequestId) -> Result<(), RegistryError> {
        let instance = self.give_back(request)?;
        self.retire(instance)
    }

    /// The instance `request` was started on gives it back before running anything of it
    /// (it stalled, see [`Registry::set_stalled`]): the request goes back to the front of the
    /// queue for another instance. Returns that instance.
    pub fn give_back(&mut self, request: RequestId) -> Result<InstanceId, RegistryError> {
        let (record, instance) = self.started(request)?;
        if record.responded_at.is_some() || record.outgoing > 0 || record.handed_over {
            return Err(RegistryError::AlreadyResponded(request));
        }
        let record = self.requests.get_mut(&request).expect("checked live");
        record.instance = None;
        record.started_at = None;
        record.work_done = false;
        let instance_record = self.instance_mut(instance)?;
        instance_record.in_flight -= 1;
        instance_record.live -= 1;
        self.queue.push_front(request);
        self.stats.requeued += 1;
        Ok(instance)
    }

    fn started(&self, request: RequestId) -> Result<(&RequestRecord, InstanceId), RegistryError> {
        let record = self
            .requests
            .get(&request)
            .ok_or(RegistryError::UnknownRequest(request))?;
        let instance = record.instance.ok_or(RegistryError::NotStarted(request))?;
        Ok((record, instance))
    }

    /// Checks a token a guest running on `instance` passed to `enter`: it must
    /// name a live request started on that same instance (a guest may not
    /// attribute work to another instance's requests, nor to finished ones).
    pub fn validate_token(
        &self,
        instance: InstanceId,
        token: u64,
    ) -> Result<RequestId, RegistryError> {
        let request = RequestId::from_token(token).ok_or(RegistryError::BadToken(token))?;
        let Some(record) = self.requests.get(&request) else {
            return Err(RegistryError::BadToken(token));
        };
        match record.instance {
            Some(owner) if owner == instance => Ok(request),
            Some(owner) => Err(RegistryError::ForeignRequest {
                request,
                owner,
                asked: instance,
            }),
            None => Err(RegistryError::NotStarted(request)),
        }
    }

    /// Records an outgoing call made for `request` and returns the
    /// `weft-request-id` header value it must carry.
    pub fn record_outgoing(&mut self, request: RequestId) -> Result<String, RegistryError> {
        self.started(request)?;
        let record = self.requests.get_mut(&request).expect("checked live");
        record.outgoing += 1;
        self.stats.outgoing += 1;
        Ok(self.header_value(request))
    }

    /// The response of `request` went out. Work for it may go on until
    /// `now + drain_timeout`. Returns the summary if nothing was left running.
    pub fn response_sent(
        &mut self,
        request: RequestId,
        now: Instant,
    ) -> Result<Option<Summary>, RegistryError> {
        let (record, instance) = self.started(request)?;
        if record.responded_at.is_some() {
            return Err(RegistryError::AlreadyResponded(request));
        }
        let (work_done, handed_over) = (record.work_done, record.handed_over);
        let deadline = now + self.policy.drain_timeout;
        let record = self.requests.get_mut(&request).expect("checked live");
        record.responded_at = Some(now);
        record.deadline = Some(deadline);
        self.deadlines.insert((deadline, request));
        if !handed_over {
            self.instance_mut(instance)?.in_flight -= 1;
        }
        Ok(work_done.then(|| self.finish(request, Outcome::Completed, now)))
    }

    /// The instance of `request` is done with it: its handler returned after handing its
    /// response (head and whole body, or the means to read it) to whoever sends it, who calls
    /// [`Registry::response_sent`] (or [`Registry::no_response`]) later. The request stops
    /// counting on its instance at once, so an instance that takes one request at a time is
    /// given the next while the client still receives this one, and the instance's fate (a
    /// trap, its drop) no longer concerns it; its work counts as done. Nothing changes for a
    /// request whose response was sent already.
    pub fn handed_over(&mut self, request: RequestId) -> Result<(), RegistryError> {
        let (record, instance) = self.started(request)?;
        if record.responded_at.is_some() || record.handed_over {
            return Ok(());
        }
        let record = self.requests.get_mut(&request).expect("checked live");
        record.handed_over = true;
        record.work_done = true;
        let instance = self.instance_mut(instance)?;
        instance.in_flight -= 1;
        instance.live -= 1;
        Ok(())
    }

    /// Everything running for `request` has exited (its contexts, or its
    /// task). Finishes it as [`Outcome::Completed`] if it had answered.
    /// Otherwise it stays live: a component task's result may still be on its
    /// way to [`Registry::response_sent`]; a server that knows no response
    /// will come calls [`Registry::no_response`].
    pub fn work_finished(
        &mut self,
        request: RequestId,
        now: Instant,
    ) -> Result<Option<Summary>, RegistryError> {
        let (record, _) = self.started(request)?;
        let responded = record.responded_at.is_some();
        self.requests
            .get_mut(&request)
            .expect("checked live")
            .work_done = true;
        Ok(responded.then(|| self.finish(request, Outcome::Completed, now)))
    }

    /// The handler of `request` ended without a response (the server answers
    /// `500`); any work still running for it is the caller's to stop.
    pub fn no_response(
        &mut self,
        request: RequestId,
        now: Instant,
    ) -> Result<Summary, RegistryError> {
        let (record, _) = self.started(request)?;
        if record.responded_at.is_some() {
            return Err(RegistryError::AlreadyResponded(request));
        }
        Ok(self.finish(request, Outcome::NoResponse, now))
    }

    /// Responded requests whose work is still running past the drain deadline.
    /// The server kills that work and reports it with [`Registry::drained`].
    pub fn expired(&self, now: Instant) -> Vec<RequestId> {
        let mut due: Vec<RequestId> = self
            .deadlines
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .map(|&(_, request)| request)
            .collect();
        due.sort();
        due
    }

    /// The earliest drain deadline, for the server's timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(deadline, _)| deadline)
    }

    /// `stragglers` units of work still running for `request` at its drain
    /// deadline were killed.
    pub fn drained(
        &mut self,
        request: RequestId,
        stragglers: u32,
        now: Instant,
    ) -> Result<Summary, RegistryError> {
        let (record, _) = self.started(request)?;
        if record.responded_at.is_none() {
            return Err(RegistryError::NotStarted(request));
        }
        self.stats.stragglers += u64::from(stragglers);
        Ok(self.finish(request, Outcome::Drained { stragglers }, now))
    }

    /// `instance` trapped, while running `culprit` if that is known. The
    /// instance takes no new requests and is dropped once empty; see
    /// [`TrapFallout`] for its requests.
    pub fn instance_trapped(
        &mut self,
        instance: InstanceId,
        culprit: Option<RequestId>,
        now: Instant,
    ) -> Result<TrapFallout, RegistryError> {
        self.instance_mut(instance)?.state = InstanceState::Trapped;
        let mut on_instance: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.instance == Some(instance) && !r.handed_over)
            .map(|(&id, _)| id)
            .collect();
        on_instance.sort();
        let mut fallout = TrapFallout::default();
        // Requeue in reverse so they keep their order at the queue's front.
        for &request in on_instance.iter().rev() {
            let record = &self.requests[&request];
            let retryable =
                Some(request) != culprit && record.responded_at.is_none() && record.outgoing == 0;
            if retryable {
                let record = self.requests.get_mut(&request).expect("listed");
                record.instance = None;
                record.started_at = None;
                record.work_done = false;
                let instance = self.instance_mut(instance)?;
                instance.in_flight -= 1;
                instance.live -= 1;
                self.queue.push_front(request);
                self.stats.requeued += 1;
                fallout.requeued.push(request);
            }
        }
        fallout.requeued.reverse();
        for request in on_instance {
            if self
                .requests
                .get(&request)
                .is_some_and(|r| r.instance.is_some())
            {
                fallout
                    .failed
                    .push(self.finish(request, Outcome::Failed, now));
            }
        }
        Ok(fallout)
    }

    fn finish(&mut self, request: RequestId, outcome: Outcome, now: Instant) -> Summary {
        let record = self
            .requests
            .remove(&request)
            .expect("finishing a live request");
        if let Some(deadline) = record.deadline {
            self.deadlines.remove(&(deadline, request));
        }
        let counted = record.instance.filter(|_| !record.handed_over);
        if let Some(instance) = counted.and_then(|id| self.instances.get_mut(&id)) {
            if record.responded_at.is_none() {
                instance.in_flight -= 1;
            }
            instance.live -= 1;
        }
        match outcome {
            Outcome::Completed => self.stats.completed += 1,
            Outcome::Drained { .. } => self.stats.drained += 1,
            Outcome::NoResponse => self.stats.no_response += 1,
            Outcome::Failed => self.stats.failed += 1,
        }
        Summary {
            request,
            instance: record.instance,
            outcome,
            outgoing: record.outgoing,
            submitted_at: record.submitted_at,
            started_at: record.started_at,
            responded_at: record.responded_at,
            finished_at: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(policy: Policy) -> Registry {
        Registry::new(policy, 0xabcd).unwrap()
    }

    fn small() -> Policy {
        Policy {
            max_in_flight_per_instance: 2,
            max_requests_per_instance: 3,
            max_instances: 2,
            queue_capacity: 4,
            drain_timeout: Duration::from_millis(50),
        }
    }

    /// Runs `next_action` until it settles, adding instances when asked.
    fn settle(reg: &mut Registry, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        while let Some(action) = reg.next_action(now) {
            if action == Action::SpawnInstance {
                reg.add_instance().unwrap();
            }
            actions.push(action);
        }
        actions
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let p = Policy::for_workers(4);
        assert_eq!(p.max_in_flight_per_instance, 16);
        assert_eq!(p.max_requests_per_instance, 128);
        assert_eq!(p.max_instances, 4);
        assert_eq!(p.drain_timeout, Duration::from_secs(5));
        assert!(Policy::default().max_instances >= 2);
    }

    fn one_at_a_time() -> Policy {
        Policy {
            max_in_flight_per_instance: 1,
            max_requests_per_instance: 100,
            max_instances: 1,
            ..small()
        }
    }

    #[test]
    fn a_handed_over_request_frees_its_place_and_finishes_when_sent() {
        let now = Instant::now();
        let mut reg = registry(one_at_a_time());
        let (a, b) = (reg.submit([], now).unwrap(), reg.submit([], now).unwrap());
        let started = settle(&mut reg, now);
        let instance = reg.instance_of(a).unwrap();
        assert_eq!(
            started,
            [
                Action::SpawnInstance,
                Action::Start {
                    request: a,
                    instance
                }
            ]
        );
        assert!(!reg.was_handed_over(a));
        reg.handed_over(a).unwrap();
        assert!(reg.was_handed_over(a));
        // The next request goes to the same instance while `a` is still on its way out.
        assert_eq!(
            settle(&mut reg, now),
            [Action::Start {
                request: b,
                instance
            }]
        );
        assert!(reg.is_live(a));
        assert_eq!(reg.in_flight(), 1);
        let summary = reg
            .response_sent(a, now)
            .unwrap()
            .expect("its work was done");
        assert_eq!(summary.outcome, Outcome::Completed);
        assert_eq!(summary.instance, Some(instance));
        assert_eq!(reg.in_flight(), 1, "b's place is untouched");
        // Handing over again, or after the response, changes nothing.
        assert!(reg.handed_over(b).is_ok() && reg.handed_over(b).is_ok());
        assert_eq!(reg.in_flight(), 0);
        assert_eq!(
            reg.no_response(b, now).unwrap().outcome,
            Outcome::NoResponse
        );
        assert_eq!(reg.live_requests(), 0);
        assert!(reg.could_not_start(a).is_err());
    }

    #[test]
    fn a_trap_after_the_hand_over_leaves_the_handed_over_request_alone() {
        let now = Instant::now();
        let mut reg = registry(one_at_a_time());
        let (a, b) = (reg.submit([], now).unwrap(), reg.submit([], now).unwrap());
        settle(&mut reg, now);
        let instance = reg.instance_of(a).unwrap();
        reg.handed_over(a).unwrap();
        settle(&mut reg, now);
        let fallout = reg.instance_trapped(instance, Some(b), now).unwrap();
        assert_eq!(fallout.failed.len(), 1);
        assert_eq!(fallout.failed[0].request, b);
        assert!(fallout.requeued.is_empty());
        // The trapped instance holds nothing any more: it is dropped at once.
        assert!(
            settle(&mut reg, now).contains(&Action::DropInstance(instance)),
            "{reg:?}"
        );
        let summary = reg.response_sent(a, now).unwrap().expect("done");
        assert_eq!(summary.outcome, Outcome::Completed);
        assert_eq!(reg.live_requests(), 0);
    }

    #[test]
    fn zero_limits_are_refused() {
        let p = Policy {
            max_in_flight_per_instance: 0,
            ..small()
        };
        assert_eq!(
            Registry::new(p, 1).unwrap_err(),
            RegistryError::BadPolicy("max_in_flight_per_instance")
        );
    }

    #[test]
    fn header_values_round_trip_and_only_ours_parse() {
        let now = Instant::now();
        let mut reg = registry(small());
        let r = reg.submit([], now).unwrap();
        let value = reg.header_value(r);
        assert_eq!(value, format!("000000000000abcd-{}", r.get()));
        assert_eq!(reg.parse_header_value(&value), Some(r));
        assert_eq!(reg.parse_header_value(&format!(" {value} ")), Some(r));
        for other in [
            "000000000000abce-1",
            "abcd-1",
            "000000000000abcd-",
            "000000000000abcd-+1",
            "000000000000abcd-0",
            "000000000000abcd-99",
            "000000000000abcd-1-1",
            "",
            "\u{e9}\u{e9}",
        ] {
            assert_eq!(reg.parse_header_value(other), None, "{other:?}");
        }
    }

    #[test]
    fn a_live_id_coming_back_is_a_loop_and_a_finished_one_is_not() {
        let now = Instant::now();
        let mut reg = registry(small());
        let r = reg.submit([], now).unwrap();
        settle(&mut reg, now);
        let ours = reg.header_value(r);
        let refusal = reg.submit(["proxy-id", ours.as_str()], now).unwrap_err();
        assert_eq!(refusal, Refusal::LoopDetected { caused_by: r });
        assert_eq!(refusal.status(), 508);
        reg.response_sent(r, now).unwrap();
        reg.work_finished(r, now).unwrap();
        assert!(reg.submit([ours.as_str()], now).is_ok());
        assert_eq!(reg.stats().refused_loop, 1);
    }

    #[test]
    fn a_full_queue_refuses_with_503() {
        let now = Instant::now();
        let mut reg = registry(Policy {
            max_instances: 1,
            queue_capacity: 2,
            ..small()
        });
        for _ in 0..2 {
            reg.submit([], now).unwrap();
        }
        let refusal = reg.submit([], now).unwrap_err();
        assert_eq!((refusal, refusal.status()), (Refusal::Overloaded, 503));
        // Dispatching frees the queue: in-flight requests are not queued.
        settle(&mut reg, now);
        assert_eq!(reg.queue_len(), 0);
        reg.submit([], now).unwrap();
        reg.submit([], now).unwrap();
        assert!(reg.submit([], now).is_err());
    }

    #[test]
    fn with_no_queue_requests_run_while_there_is_room() {
        let now = Instant::now();
        let mut reg = registry(Policy {
            max_instances: 1,
            queue_capacity: 0,
            ..small()
        });
        assert_eq!(
            reg.submit([], now),
            Err(Refusal::Overloaded),
            "no instance yet, no queue"
        );
        reg.add_instance().unwrap();
        reg.submit([], now).unwrap();
        reg.submit([], now).unwrap();
        assert_eq!(
            reg.submit([], now),
            Err(Refusal::Overloaded),
            "two in flight is the most"
        );
        assert_eq!(settle(&mut reg, now).len(), 2);
        assert_eq!(reg.submit([], now), Err(Refusal::Overloaded));
    }

    #[test]
    fn instances_are_spawned_as_needed_but_not_twice_for_the_same_requests() {
        let now = Instant::now();
        let mut reg = registry(Policy {
            max_instances: 3,
            ..small()
        });
        reg.submit([], now).unwrap();
        reg.submit([], now).unwrap();
        assert_eq!(reg.next_action(now), Some(Action::SpawnInstance));
        // The instance being created will take both (2 in flight each).
        assert_eq!(reg.next_action(now), None);
        reg.submit([], now).unwrap();
        assert_eq!(reg.next_action(now), Some(Action::SpawnInstance));
        reg.spawn_failed();
        let i = reg.add_instance().unwrap();
        let started = settle(&mut reg, now);
        assert!(matches!(started[0], Action::Start { instance, .. } if instance == i));
        assert_eq!(reg.instance_count(), 2);
    }

    #[test]
    fn an_instance_is_retired_after_its_request_budget_and_dropped_when_empty() {
        let now = Instant::now();
        let mut reg = registry(Policy {
            max_instances: 1,
            max_in_flight_per_instance: 16,
            ..small()
        });
        let first = reg.add_instance().unwrap();
        let rs: Vec<RequestId> = (0..4).map(|_| reg.submit([], now).unwrap()).collect();
        let actions = settle(&mut reg, now);
        // Three starts spend the budget; the fourth request goes to a replacement created
        // while the first drains.
        assert_eq!(actions.len(), 5, "{actions:?}");
        assert_eq!(actions[3], Action::SpawnInstance);
        assert!(
            matches!(actions[4], Action::Start { request, instance } if request == rs[3] && instance != first)
        );
        assert!(!reg.accepts_requests(first));
        for &r in &rs[..3] {
            reg.response_sent(r, now).unwrap();
            assert!(
                settle(&mut reg, now).is_empty(),
                "not dropped while {r} works"
            );
            reg.work_finished(r, now).unwrap();
        }
        assert_eq!(settle(&mut reg, now), [Action::DropInstance(first)]);
    }

    #[test]
    fn retiring_instances_come_on_top_of_the_limit_up_to_as_many_again() {
        let now = Instant::now();
        let mut reg = registry(Policy {
            max_instances: 1,
            max_in_flight_per_instance: 1,
            max_requests_per_instance: 1,
            queue_capacity: 8,
            ..small()
        });
        let rs: Vec<RequestId> = (0..3).map(|_| reg.submit([], now).unwrap()).collect();
        let actions = settle(&mut reg, now);
        // One instance takes the first request and retires; one replacement takes the second;
        // the third waits: two are live, one retiring and one active, twice the limit.
        let starts = actions
            .iter()
            .filter(|a| matches!(a, Action::Start { .. }))
            .count();
        let spawns = actions
            .iter()
            .filter(|a| **a == Action::SpawnInstance)
            .count();
        assert_eq!((spawns, starts), (2, 2), "{actions:?}");
        assert_eq!(reg.queue_len(), 1);
        assert!(matches!(
            reg.add_instance(),
            Err(RegistryError::TooManyInstances(1))
        ));
        reg.response_sent(rs[0], now).unwrap();
        reg.work_finished(rs[0], now).unwrap();
        let actions = settle(&mut reg, now);
        assert!(actions.contains(&Action::SpawnInstance), "{actions:?}");
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Start { request, .. } if *request == rs[2])),
            "{actions:?}"
        );
    }

    #[test]
    fn a_stalled_instance_takes_nothing_new_and_a_replacement_comes_on_top() {
        let now = Instant::now();
        let mut reg = registry(Policy {
            max_instances: 1,
            ..small()
        });
        let first = reg.add_instance().unwrap();
        let r = reg.submit([], now).unwrap();
        settle(&mut reg, now);
        assert_eq!(reg.instance_of(r), Some(first));
        reg.set_stalled(first, true).unwrap();
        assert!(!reg.accepts_requests(first));
        let next = reg.submit([], now).unwrap();
        assert_eq!(reg.next_action(now), Some(Action::SpawnInstance));
        let second = reg.add_instance().unwrap();
        assert_eq!(
            reg.next_action(now),
            Some(Action::Start {
                request: next,
                instance: second
            })
        );
        reg.set_stalled(second, true).unwrap();
        reg.submit([], now).unwrap();
        assert_eq!(
            reg.next_action(now),
            None,
            "two stalled instances are twice the limit: the request waits"
        );
        // Back while the other is still stalled: it takes requests again.
        reg.set_stalled(first, false).unwrap();
        assert!(reg.accepts_requests(first));
        // Back while the limit is full: retired, dropped once its request is done.
        reg.set_stalled(second, false).unwrap();
        assert!(!reg.accepts_requests(second));
        reg.response_sent(next, now).unwrap();
        reg.work_finished(next, now).unwrap();
        assert!(settle(&mut reg, now).contains(&Action::DropInstance(second)));
        assert_eq!(
            reg.set_stalled(InstanceId(99), true),
            Err(RegistryError::UnknownInstance(InstanceId(99)))
        );
    }

    #[test]
    fn a_request_given_back_unstarted_goes_first_to_another_instance() {
        let now = Instant::now();
        let mut reg = registry(small());
        let first = reg.add_instance().unwrap();
        let (a, b) = (reg.submit([], now).unwrap(), reg.submit([], now).unwrap());
        settle(&mut reg, now);
        assert_eq!(reg.instance_of(a), Some(first));
        assert_eq!(reg.instance_of(b), Some(first));
        reg.set_stalled(first, true).unwrap();
        assert_eq!(reg.give_back(b), Ok(first));
        assert_eq!(reg.instance_of(b), None);
        assert_eq!(reg.in_flight(), 1);
        let later = reg.submit([], now).unwrap();
        let actions = settle(&mut reg, now);
        let second = reg.instance_of(b).expect("started again");
        assert_ne!(second, first);
        let order: Vec<RequestId> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { request, .. } => Some(*request),
                _ => None,
            })
            .collect();
        assert_eq!(order, vec![b, later], "the given-back request goes first");
        reg.response_sent(a, now).unwrap();
        assert_eq!(
            reg.give_back(a),
            Err(RegistryError::AlreadyResponded(a)),
            "an answered request cannot be given back"
        );
    }

    #[test]
    fn post_response_work_finishes_or_is_drained_at_the_deadline() {
        let t0 = Instant::now();
        let mut reg = registry(small());
        let (a, b) = (reg.submit([], t0).unwrap(), reg.submit([], t0).unwrap());
        settle(&mut reg, t0);
        assert_eq!(reg.record_outgoing(a).unwrap(), reg.header_value(a));
        reg.response_sent(a, t0).unwrap();
        reg.response_sent(b, t0).unwrap();
        assert_eq!(reg.next_deadline(), Some(t0 + Duration::from_millis(50)));
        let t1 = t0 + Duration::from_millis(20);
        let done = reg.work_finished(a, t1).unwrap().unwrap();
        assert_eq!((done.outcome, done.outgoing), (Outcome::Completed, 1));
        assert_eq!(done.post_response_time(), Duration::from_millis(20));
        assert!(reg.expired(t1).is_empty());
        let t2 = t0 + Duration::from_millis(50);
        assert_eq!(reg.expired(t2), vec![b]);
        let drained = reg.drained(b, 2, t2).unwrap();
        assert_eq!(drained.outcome, Outcome::Drained { stragglers: 2 });
        assert_eq!((reg.stats().drained, reg.stats().stragglers), (1, 2));
        assert_eq!(
            reg.record_outgoing(b),
            Err(RegistryError::UnknownRequest(b))
        );
    }

    #[test]
    fn work_finishing_before_the_answer_waits_for_it_or_for_no_response() {
        let now = Instant::now();
        let mut reg = registry(small());
        let (a, b) = (reg.submit([], now).unwrap(), reg.submit([], now).unwrap());
        settle(&mut reg, now);
        assert_eq!(reg.work_finished(a, now), Ok(None));
        let done = reg.response_sent(a, now).unwrap().unwrap();
        assert_eq!(done.outcome, Outcome::Completed);
        assert_eq!(reg.work_finished(b, now), Ok(None));
        assert_eq!(
            reg.no_response(b, now).unwrap().outcome,
            Outcome::NoResponse
        );
        assert_eq!(reg.live_requests(), 0);
    }

    #[test]
    fn backpressure_moves_requests_to_another_instance_or_holds_them() {
        let now = Instant::now();
        let mut reg = registry(small());
        let first = reg.add_instance().unwrap();
        reg.set_backpressure(first, true).unwrap();
        let r = reg.submit([], now).unwrap();
        assert_eq!(reg.next_action(now), Some(Action::SpawnInstance));
        let second = reg.add_instance().unwrap();
        assert_eq!(
            reg.next_action(now),
            Some(Action::Start {
                request: r,
                instance: second
            })
        );
        reg.set_backpressure(second, true).unwrap();
        let held = reg.submit([], now).unwrap();
        assert_eq!(
            reg.next_action(now),
            None,
            "both hold backpressure, no room for a third"
        );
        reg.set_backpressure(first, false).unwrap();
        assert_eq!(
            reg.next_action(now),
            Some(Action::Start {
                request: held,
                instance: first
            })
        );
        assert_eq!(
            reg.set_backpressure(InstanceId(99), true),
            Err(RegistryError::UnknownInstance(InstanceId(99)))
        );
    }

    #[test]
    fn requests_go_to_idle_instances_and_busy_ones_bring_another() {
        let now = Instant::now();
        let mut reg = registry(Policy {
            max_requests_per_instance: 100,
            ..small()
        });
        let start = |request, instance| Some(Action::Start { request, instance });
        let first = reg.add_instance().unwrap();
        // An instance that never reports is never busy: it takes what fits.
        let a = reg.submit([], now).unwrap();
        let b = reg.submit([], now).unwrap();
        assert_eq!(reg.next_action(now), start(a, first));
        assert_eq!(reg.next_action(now), start(b, first));
        reg.response_sent(a, now).unwrap();
        reg.response_sent(b, now).unwrap();

        // Reporting, it is busy from its next request to its next report.
        reg.instance_idle(first).unwrap();
        let c = reg.submit([], now).unwrap();
        assert_eq!(reg.next_action(now), start(c, first));
        let d = reg.submit([], now).unwrap();
        assert_eq!(
            reg.next_action(now),
            Some(Action::SpawnInstance),
            "the only instance is busy and there is room for another"
        );
        assert_eq!(
            reg.next_action(now),
            start(d, first),
            "one instance asked for at a time; until it comes, a busy one takes the request"
        );
        let second = reg.add_instance().unwrap();
        let e = reg.submit([], now).unwrap();
        assert_eq!(reg.next_action(now), start(e, second), "the new one");
        reg.response_sent(c, now).unwrap();
        reg.response_sent(d, now).unwrap();
        reg.instance_idle(second).unwrap();
        let f = reg.submit([], now).unwrap();
        assert_eq!(
            reg.next_action(now),
            start(f, second),
            "the idle instance first, though the busy one has less in flight"
        );
        let g = reg.submit([], now).unwrap();
        assert_eq!(
            reg.next_action(now),
            start(g, first),
            "both busy and no room for a third: the least loaded"
        );
        assert_eq!(
            reg.instance_idle(InstanceId(99)),
            Err(RegistryError::UnknownInstance(InstanceId(99)))
        );
    }

    #[test]
    fn tokens_must_name_a_live_request_of_the_same_instance() {
        let now = Instant::now();
        let mut reg = registry(small());
        let first = reg.add_instance().unwrap();
        let r = reg.submit([], now).unwrap();
        settle(&mut reg, now);
        assert_eq!(reg.validate_token(first, r.get()), Ok(r));
        assert_eq!(
            reg.validate_token(first, 0),
            Err(RegistryError::BadToken(0))
        );
        assert_eq!(
            reg.validate_token(first, 77),
            Err(RegistryError::BadToken(77))
        );
        let other = InstanceId(first.get() + 1);
        assert!(matches!(
            reg.validate_token(other, r.get()),
            Err(RegistryError::ForeignRequest { .. })
        ));
        reg.set_backpressure(first, true).unwrap();
        let queued = reg.submit([], now).unwrap();
        assert_eq!(
            reg.validate_token(first, queued.get()),
            Err(RegistryError::NotStarted(queued))
        );
    }

    #[test]
    fn a_request_an_instance_could_not_start_goes_to_another_instance() {
        let now = Instant::now();
        let mut reg = registry(Policy {
            max_in_flight_per_instance: 4,
            ..small()
        });
        let first = reg.add_instance().unwrap();
        let a = reg.submit([], now).unwrap();
        let b = reg.submit([], now).unwrap();
        settle(&mut reg, now);
        assert_eq!(reg.instance_of(b), Some(first));
        reg.could_not_start(b).unwrap();
        assert!(!reg.accepts_requests(first), "retired");
        assert_eq!(reg.stats().requeued, 1);
        let actions = settle(&mut reg, now);
        assert_eq!(actions[0], Action::SpawnInstance);
        assert!(
            matches!(actions[1], Action::Start { request, instance } if request == b && instance != first)
        );
        // Only a request of which nothing ran can be moved.
        reg.record_outgoing(a).unwrap();
        assert_eq!(
            reg.could_not_start(a),
            Err(RegistryError::AlreadyResponded(a))
        );
    }

    #[test]
    fn a_trap_fails_the_culprit_and_requeues_untouched_siblings() {
        let now = Instant::now();
        let mut reg = registry(Policy {
            max_in_flight_per_instance: 4,
            ..small()
        });
        let first = reg.add_instance().unwrap();
        let rs: Vec<RequestId> = (0..3).map(|_| reg.submit([], now).unwrap()).collect();
        settle(&mut reg, now);
        reg.record_outgoing(rs[1]).unwrap();
        let fallout = reg.instance_trapped(first, Some(rs[0]), now).unwrap();
        let failed: Vec<RequestId> = fallout.failed.iter().map(|s| s.request).collect();
        assert_eq!(
            failed,
            [rs[0], rs[1]],
            "the culprit, and the sibling whose fetch went out"
        );
        assert_eq!(fallout.requeued, [rs[2]]);
        assert!(!reg.accepts_requests(first));
        let actions = settle(&mut reg, now);
        assert_eq!(actions[0], Action::DropInstance(first));
        assert!(matches!(actions[2], Action::Start { request, .. } if request == rs[2]));
        assert_eq!(reg.instance_of(rs[2]).map(|i| i == first), Some(false));
    }

    #[test]
    fn shutdown_refuses_new_requests_and_drains_the_rest() {
        let now = Instant::now();
        let mut reg = registry(small());
        let r = reg.submit([], now).unwrap();
        settle(&mut reg, now);
        reg.begin_shutdown();
        assert_eq!(reg.submit([], now), Err(Refusal::ShuttingDown));
        assert!(!reg.is_drained());
        reg.response_sent(r, now).unwrap();
        reg.work_finished(r, now).unwrap();
        let instance = reg.instance_of(r);
        assert_eq!(instance, None, "finished requests are forgotten");
        let only = InstanceId(1);
        reg.retire(only).unwrap();
        assert_eq!(settle(&mut reg, now), [Action::DropInstance(only)]);
        assert!(reg.is_drained());
    }

    #[test]
    fn in_flight_and_retiring_counts_follow_the_lifecycle() {
        let now = Instant::now();
        let mut reg = registry(Policy {
            max_instances: 1,
            ..small()
        });
        let a = reg.submit([], now).unwrap();
        let b = reg.submit([], now).unwrap();
        let _queued = reg.submit([], now).unwrap();
        settle(&mut reg, now);
        assert_eq!((reg.in_flight(), reg.queue_len()), (2, 1));
        assert_eq!(reg.retiring_instance_count(), 0);
        reg.response_sent(a, now).unwrap();
        assert_eq!(reg.in_flight(), 1, "post-response work is not in flight");
        let instance = reg.instance_of(b).unwrap();
        reg.retire(instance).unwrap();
        assert_eq!(reg.retiring_instance_count(), 1);
    }
}
