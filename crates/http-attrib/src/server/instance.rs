//! One instance of the guest: a green thread that owns its wasmtime store (a store is driven by
//! one thread at a time, and this one never leaves it) and plays the WASIX main context for
//! the request contexts running in it.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Response;
use wasmtime::{Engine, Instance, Linker, Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use weft_sched::{Receiver, Sender};
use weft_wasix_context::{ContextId, ContextState, HostContexts, Resumed, WasixContexts};

use super::fetch::{FetchResponse, with_timeout};
use super::{HANDLER_EXPORT, Incoming, Shared, imports};
use crate::{Attribution, ContextExit, GreenAttribution, InstanceId, RequestId};

/// What an instance's green thread is told.
pub(crate) enum InstanceMsg {
    /// Run this request's handler in a new context.
    Start(Arc<Incoming>),
    /// A fetch started by a context of this instance finished.
    FetchDone {
        handle: i32,
        result: Result<FetchResponse, i32>,
    },
    /// The registry dropped this instance: nothing is left in it.
    Stop,
}

/// The store data of an HTTP guest's instance.
pub(crate) struct HostState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) contexts: WasixContexts,
    /// `None` only in stores that run no request (import checks, the instantiation probe).
    pub(crate) http: Option<InstanceHttp>,
}

impl HostState {
    pub(crate) fn placeholder() -> Self {
        HostState {
            wasi: WasiCtxBuilder::new().build_p1(),
            contexts: WasixContexts::default(),
            http: None,
        }
    }
}

fn contexts_of(state: &mut HostState) -> &mut WasixContexts {
    &mut state.contexts
}

/// A response being built by the guest.
pub(crate) struct Draft {
    pub(crate) status: u16,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Vec<u8>,
}

/// A request started on this instance.
pub(crate) struct RequestState {
    pub(crate) incoming: Arc<Incoming>,
    /// `None` once the response went out.
    pub(crate) draft: Option<Draft>,
}

/// Something a context can wait for.
pub(crate) enum OpHandle {
    Sleep {
        done: bool,
    },
    Fetch {
        done: Option<Result<FetchResponse, i32>>,
    },
}

impl OpHandle {
    pub(crate) fn is_done(&self) -> bool {
        match self {
            OpHandle::Sleep { done } => *done,
            OpHandle::Fetch { done } => done.is_some(),
        }
    }
}

/// A context's current run, for the CPU budget.
struct Running {
    request: Option<RequestId>,
    since: Instant,
}

/// Most handles a single instance may hold open (fetches and sleeps): bounds what a guest
/// that never closes them can make the host keep.
pub(crate) const MAX_HANDLES: usize = 65_536;

/// The per-instance host side of the `weft_http` imports.
pub(crate) struct InstanceHttp {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: InstanceId,
    pub(crate) attribution: GreenAttribution,
    pub(crate) requests: HashMap<RequestId, RequestState>,
    pub(crate) handles: HashMap<i32, OpHandle>,
    next_handle: i32,
    /// Set by the `block_on` import just before the guest switches to main.
    pub(crate) block_request: Option<(ContextId, i32)>,
    pub(crate) inbox: Sender<InstanceMsg>,
    /// Live contexts we know of (host-spawned handlers and guest-created ones).
    known: HashSet<ContextId>,
    /// Handler contexts and their request.
    handlers: HashMap<ContextId, RequestId>,
    /// Context ids below this were seen (or created and destroyed unseen).
    next_unseen: ContextId,
    /// The context that ran most recently, taken to be the creator of contexts we discover.
    last_active: ContextId,
    running: Option<Running>,
    /// The context the epoch callback preempted: it came back to main to let the others
    /// run, and goes back to the ready queue (no `block_on` involved).
    preempted: Option<ContextId>,
    cpu_used: HashMap<RequestId, Duration>,
    budget_exceeded: Option<RequestId>,
    pub(crate) timers: BTreeSet<(Instant, i32)>,
    drain_deadlines: BTreeSet<(Instant, RequestId)>,
    pub(crate) ready: VecDeque<ContextId>,
    waiting: HashMap<i32, Vec<ContextId>>,
}

impl InstanceHttp {
    fn new(shared: Arc<Shared>, id: InstanceId, inbox: Sender<InstanceMsg>) -> Self {
        InstanceHttp {
            attribution: GreenAttribution::new(shared.registry.clone(), id),
            shared,
            id,
            requests: HashMap::new(),
            handles: HashMap::new(),
            next_handle: 1,
            block_request: None,
            inbox,
            known: HashSet::new(),
            handlers: HashMap::new(),
            next_unseen: 1,
            last_active: 0,
            running: None,
            preempted: None,
            cpu_used: HashMap::new(),
            budget_exceeded: None,
            timers: BTreeSet::new(),
            drain_deadlines: BTreeSet::new(),
            ready: VecDeque::new(),
            waiting: HashMap::new(),
        }
    }

    /// A new handle id, or `None` when the instance holds too many.
    pub(crate) fn add_handle(&mut self, handle: OpHandle) -> Option<i32> {
        if self.handles.len() >= MAX_HANDLES {
            return None;
        }
        let id = self.next_handle;
        // Handles are never reused within an instance (2^31 of them would have to be made).
        self.next_handle = self.next_handle.checked_add(1)?;
        self.handles.insert(id, handle);
        Some(id)
    }

    /// `handle` is done: its waiters become ready.
    pub(crate) fn complete(&mut self, handle: i32) {
        if let Some(waiters) = self.waiting.remove(&handle) {
            self.ready.extend(waiters);
        }
    }

    /// Brings our view of the instance's contexts up to date with the context table: contexts
    /// destroyed by the guest exit (their request may be finished), contexts created by the
    /// guest inherit the attribution of the context that ran last. Called at every host call
    /// and after every resume, so a created context is seen before its creator can change
    /// what it works for (`enter`/`exit` are host calls too).
    pub(crate) fn sync_contexts(&mut self, contexts: &WasixContexts) {
        let now = Instant::now();
        let gone: Vec<ContextId> = self
            .known
            .iter()
            .copied()
            .filter(|&c| contexts.state(c).is_none())
            .collect();
        for context in gone {
            self.context_gone(context, now);
        }
        // Ids are handed out in increasing order and never reused, so the live contexts we
        // do not know yet are at or above `next_unseen`.
        let mut unknown = contexts.live_contexts().saturating_sub(self.known.len());
        let mut id = self.next_unseen;
        let limit = self.next_unseen.saturating_add(1 << 24);
        while unknown > 0 && id < limit {
            if contexts.state(id).is_some() {
                self.known.insert(id);
                // A creator that works for no request leaves the new context unattributed.
                let _ = self.attribution.context_created(self.last_active, id);
                unknown -= 1;
            }
            id += 1;
        }
        self.next_unseen = self.next_unseen.max(id);
        let active = contexts.active();
        if active != 0 {
            self.last_active = active;
        }
    }

    /// `context` no longer exists: account its exit.
    fn context_gone(&mut self, context: ContextId, now: Instant) {
        self.known.remove(&context);
        self.handlers.remove(&context);
        match self.attribution.context_exited(context, now) {
            Ok(ContextExit::LastForRequest { request, finished }) => {
                if let Some(summary) = finished {
                    self.forget(request);
                    self.shared.finish(&summary);
                } else {
                    // Its last context is gone and no response went out: 500.
                    let summary = self.shared.registry.lock().no_response(request, now);
                    self.forget(request);
                    if let Ok(summary) = summary {
                        self.shared.finish(&summary);
                    }
                }
            }
            Ok(_) => {}
            Err(error) => eprintln!("weft serve: internal error: {error}"),
        }
    }

    fn forget(&mut self, request: RequestId) {
        self.requests.remove(&request);
        self.cpu_used.remove(&request);
    }

    /// Sends the response of `request` as drafted (once).
    pub(crate) fn send_response(&mut self, request: RequestId) -> bool {
        let Some(state) = self.requests.get_mut(&request) else {
            return false;
        };
        let Some(draft) = state.draft.take() else {
            return false;
        };
        let mut response = Response::new(Bytes::from(draft.body));
        *response.status_mut() =
            http::StatusCode::from_u16(draft.status).unwrap_or(http::StatusCode::OK);
        *response.headers_mut() = draft.headers;
        if let Ok(value) = http::HeaderValue::from_str(&state.incoming.header_value) {
            // The client can quote it (logs, traces); a guest-set value is replaced.
            response
                .headers_mut()
                .insert(crate::REQUEST_ID_HEADER, value);
        }
        state.incoming.respond(&self.shared, response);
        let now = Instant::now();
        let sent = self.shared.registry.lock().response_sent(request, now);
        match sent {
            Ok(Some(summary)) => {
                self.forget(request);
                self.shared.finish(&summary);
            }
            Ok(None) => {
                self.drain_deadlines
                    .insert((now + self.shared.settings.drain_timeout, request));
            }
            Err(error) => eprintln!("weft serve: internal error: {error}"),
        }
        true
    }

    pub(crate) fn settings_budget(&self) -> Duration {
        self.shared.settings.cpu_budget
    }
}

/// The linker every HTTP guest is instantiated with.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut HostState| &mut state.wasi)?;
    weft_wasix_context::add_to_linker(&mut linker, contexts_of)?;
    imports::add_to_linker(&mut linker)?;
    Ok(linker)
}

fn new_store(shared: &Shared, http: Option<InstanceHttp>) -> Store<HostState> {
    let wasi = WasiCtxBuilder::new()
        .inherit_stdout()
        .inherit_stderr()
        .build_p1();
    let mut store = Store::new(
        &shared.engine,
        HostState {
            wasi,
            contexts: WasixContexts::new(shared.settings.contexts.clone()),
            http,
        },
    );
    // Every epoch tick (weft-sched's ticker) the running request's CPU budget is checked, and
    // the running context is preempted back to the instance loop (main), which runs the
    // instance's other ready contexts and takes new requests before it resumes this one
    // behind them: a looping handler holds up neither its instance nor its worker.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut context| {
        let HostState { contexts, http, .. } = context.data_mut();
        let Some(http) = http.as_mut() else {
            return Ok(UpdateDeadline::Yield(1));
        };
        let Some(running) = &http.running else {
            // Wasm run by the host outside any context (`_initialize`): just share the worker.
            return Ok(UpdateDeadline::Yield(1));
        };
        if let Some(request) = running.request {
            // Time used in earlier runs (`cpu_used`, summed per run) plus this run so far.
            let used =
                http.cpu_used.get(&request).copied().unwrap_or_default() + running.since.elapsed();
            let budget = http.settings_budget();
            if used > budget {
                http.budget_exceeded = Some(request);
                return Err(wasmtime::Error::msg(format!(
                    "request {request} exceeded its CPU budget of {} ms",
                    budget.as_millis()
                )));
            }
        }
        // A context between `block_on` and its switch to main is about to come back anyway
        // (and its `block_request` must stay its own).
        if http.block_request.is_none() {
            let active = contexts.active();
            if contexts.preempt_to_main() {
                http.preempted = Some(active);
            }
        }
        Ok(UpdateDeadline::Yield(1))
    });
    store
}

async fn instantiate(shared: &Shared, store: &mut Store<HostState>) -> wasmtime::Result<Instance> {
    let instance = shared.pre.instantiate_async(&mut *store).await?;
    if let Ok(init) = instance.get_typed_func::<(), ()>(&mut *store, "_initialize") {
        init.call_async(&mut *store, ()).await?;
    }
    Ok(instance)
}

/// Instantiates the guest once, serving nothing: a load-time check.
pub(crate) fn probe_instantiate(shared: &Shared) -> Result<(), String> {
    let mut store = new_store(shared, None);
    weft_sched::block_on(instantiate(shared, &mut store))
        .map(drop)
        .map_err(|e| format!("{e:?}"))
}

/// The body of an instance's green thread.
pub(crate) fn run_instance(
    shared: Arc<Shared>,
    id: InstanceId,
    inbox_tx: Sender<InstanceMsg>,
    inbox: Receiver<InstanceMsg>,
) {
    let http = InstanceHttp::new(shared.clone(), id, inbox_tx);
    let mut store = new_store(&shared, Some(http));
    let instance = match weft_sched::block_on(instantiate(&shared, &mut store)) {
        Ok(instance) => instance,
        Err(error) => {
            instantiation_failed(&shared, id, &inbox, &error);
            return;
        }
    };
    let mut runner = Runner {
        store,
        instance,
        host: HostContexts::new(contexts_of),
    };
    let trapped = runner.serve(&inbox);
    // Contexts still suspended die here, before the store.
    let _ = runner.host.release_all(&mut runner.store);
    drop(runner);
    if trapped {
        shared.pump();
    }
}

fn instantiation_failed(
    shared: &Arc<Shared>,
    id: InstanceId,
    inbox: &Receiver<InstanceMsg>,
    error: &wasmtime::Error,
) {
    eprintln!("weft serve: instance {id} could not be created: {error:?}");
    let now = Instant::now();
    // Requests already sent here fail (so a guest that cannot be instantiated makes 500s,
    // not a loop); ones whose start is still on its way go back to the queue.
    while let Ok(message) = inbox.try_recv() {
        if let InstanceMsg::Start(incoming) = message {
            let summary = shared.registry.lock().no_response(incoming.id, now);
            if let Ok(summary) = summary {
                shared.finish(&summary);
            }
        }
    }
    let fallout = shared.registry.lock().instance_trapped(id, None, now);
    if let Ok(fallout) = fallout {
        for summary in &fallout.failed {
            shared.finish(summary);
        }
    }
    shared.pump();
}

struct Runner {
    store: Store<HostState>,
    instance: Instance,
    host: HostContexts<fn(&mut HostState) -> &mut WasixContexts>,
}

impl Runner {
    fn http(&mut self) -> &mut InstanceHttp {
        self.store
            .data_mut()
            .http
            .as_mut()
            .expect("serving stores have HTTP state")
    }

    fn sync(&mut self) {
        let HostState { contexts, http, .. } = self.store.data_mut();
        http.as_mut()
            .expect("serving stores have HTTP state")
            .sync_contexts(contexts);
    }

    /// Serves until the registry drops the instance (`false`) or it traps (`true`).
    fn serve(&mut self, inbox: &Receiver<InstanceMsg>) -> bool {
        loop {
            while let Ok(message) = inbox.try_recv() {
                if !self.handle(message) {
                    return false;
                }
            }
            self.fire_timers();
            if let Some(context) = self.http().ready.pop_front() {
                if self.run_context(context).is_err() {
                    return true;
                }
                weft_sched::yield_if_needed();
                continue;
            }
            let deadline = {
                let http = self.http();
                let timer = http.timers.first().map(|&(at, _)| at);
                let drain = http.drain_deadlines.first().map(|&(at, _)| at);
                timer.into_iter().chain(drain).min()
            };
            let message = match deadline {
                None => inbox.recv().ok(),
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    weft_sched::block_on(with_timeout(inbox.recv_async(), wait))
                        .and_then(Result::ok)
                }
            };
            if let Some(message) = message
                && !self.handle(message)
            {
                return false;
            }
        }
    }

    /// `false` to stop.
    fn handle(&mut self, message: InstanceMsg) -> bool {
        match message {
            InstanceMsg::Stop => return false,
            InstanceMsg::Start(incoming) => self.start(incoming),
            InstanceMsg::FetchDone { handle, result } => {
                let http = self.http();
                if let Some(OpHandle::Fetch { done }) = http.handles.get_mut(&handle) {
                    *done = Some(result);
                }
                http.complete(handle);
            }
        }
        true
    }

    fn start(&mut self, incoming: Arc<Incoming>) {
        let request = incoming.id;
        let now = Instant::now();
        self.sync();
        match self
            .host
            .spawn(&mut self.store, &self.instance, HANDLER_EXPORT)
        {
            Ok(context) => {
                let id = self.http().id;
                let http = self.http();
                http.known.insert(context);
                http.next_unseen = http.next_unseen.max(context + 1);
                http.handlers.insert(context, request);
                http.requests.insert(
                    request,
                    RequestState {
                        incoming,
                        draft: Some(Draft {
                            status: 200,
                            headers: http::HeaderMap::new(),
                            body: Vec::new(),
                        }),
                    },
                );
                if let Err(error) = http.attribution.request_started(context, request) {
                    eprintln!("weft serve: internal error: {error}");
                }
                http.ready.push_back(context);
                if let Some(trace) = http.shared.trace.lock().unwrap().as_mut() {
                    let _ = trace.request_started(request, id, now);
                }
            }
            Err(error) => {
                // No context for it (the live-context limit): it cannot run here.
                eprintln!("weft serve: cannot start {request}: {error}");
                let shared = self.http().shared.clone();
                let summary = shared.registry.lock().no_response(request, now);
                if let Ok(summary) = summary {
                    shared.finish(&summary);
                }
                shared.pump();
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        let http = self.http();
        while let Some(&(at, handle)) = http.timers.first() {
            if at > now {
                break;
            }
            http.timers.pop_first();
            if let Some(OpHandle::Sleep { done }) = http.handles.get_mut(&handle) {
                *done = true;
            }
            http.complete(handle);
        }
        let mut expired = Vec::new();
        while let Some(&(at, request)) = http.drain_deadlines.first() {
            if at > now {
                break;
            }
            http.drain_deadlines.pop_first();
            expired.push(request);
        }
        for request in expired {
            self.drain(request, now);
        }
    }

    /// The drain deadline of `request` passed: kill what still works for it.
    fn drain(&mut self, request: RequestId, now: Instant) {
        let http = self.http();
        if !http.shared.registry.lock().is_live(request) {
            return;
        }
        let drained = http.attribution.drain(request, now);
        let Ok((summary, stragglers)) = drained else {
            return;
        };
        for &context in &stragglers {
            http.known.remove(&context);
            http.handlers.remove(&context);
        }
        http.forget(request);
        for context in stragglers {
            // Suspended or terminated: both can be destroyed from main.
            let _ = self.host.destroy(&mut self.store, context);
        }
        let shared = self.http().shared.clone();
        shared.finish(&summary);
        self.sync();
        shared.pump();
    }

    /// Resumes `context` until it waits, returns or traps. `Err` if the instance trapped.
    fn run_context(&mut self, context: ContextId) -> Result<(), ()> {
        if self.store.data().contexts.state(context) != Some(ContextState::Suspended) {
            return Ok(()); // destroyed (or drained) while it waited
        }
        let start = Instant::now();
        let request = {
            let http = self.http();
            http.last_active = context;
            let request = http.attribution.attribute(&context).ok();
            http.running = Some(Running {
                request,
                since: start,
            });
            request
        };
        let result = weft_sched::block_on(self.host.resume(&mut self.store, context));
        let end = Instant::now();
        let http = self.http();
        http.running = None;
        let preempted = http.preempted.take();
        if let Some(request) = request {
            *http.cpu_used.entry(request).or_default() += end - start;
        }
        if let Some(trace) = http.shared.trace.lock().unwrap().as_mut() {
            let _ = trace.context_run(http.id, context, request, start, end);
        }
        match result {
            Ok(Resumed::SwitchedToMain) => {
                self.sync();
                let http = self.http();
                if let Some(preempted) = preempted {
                    // Behind the contexts that were ready meanwhile; its CPU time so far is
                    // in `cpu_used`, so its budget keeps counting across preemptions.
                    http.ready.push_back(preempted);
                    self.pump_if_needed();
                    return Ok(());
                }
                match http.block_request.take() {
                    Some((waiter, handle)) => {
                        let done =
                            handle == 0 || http.handles.get(&handle).is_none_or(OpHandle::is_done);
                        if done {
                            http.ready.push_back(waiter);
                        } else {
                            http.waiting.entry(handle).or_default().push(waiter);
                        }
                    }
                    None => eprintln!(
                        "weft serve: a context of instance {} switched to main without \
                         weft_http block_on: it is left suspended",
                        http.id
                    ),
                }
                self.pump_if_needed();
                Ok(())
            }
            Ok(Resumed::Returned) => {
                self.sync();
                self.reap_terminated();
                self.pump_if_needed();
                Ok(())
            }
            Err(error) => {
                let http = self.http();
                let culprit = http.budget_exceeded.take().or(request);
                let (id, shared) = (http.id, http.shared.clone());
                let culprit_text = culprit.map_or("-".to_string(), |r| r.to_string());
                eprintln!("weft serve: instance {id} trapped (request {culprit_text}): {error:?}");
                let fallout = shared
                    .registry
                    .lock()
                    .instance_trapped(id, culprit, Instant::now());
                if let Ok(fallout) = fallout {
                    for summary in &fallout.failed {
                        shared.finish(summary);
                    }
                }
                Err(())
            }
        }
    }

    /// Handler contexts whose entrypoint returned: their response goes out now if it has not,
    /// and the context is destroyed (its request finishes when its last context is gone).
    fn reap_terminated(&mut self) {
        let terminated: Vec<ContextId> = {
            let HostState { contexts, http, .. } = self.store.data();
            let http = http.as_ref().expect("serving stores have HTTP state");
            http.known
                .iter()
                .copied()
                .filter(|&c| contexts.state(c) == Some(ContextState::Terminated))
                .collect()
        };
        for context in terminated {
            let http = self.http();
            if let Some(&request) = http.handlers.get(&context) {
                http.send_response(request);
            }
            let _ = self.host.destroy(&mut self.store, context);
        }
        self.sync();
    }

    /// Responses and exits free capacity: let the dispatcher use it.
    fn pump_if_needed(&mut self) {
        let shared = self.http().shared.clone();
        shared.pump();
    }
}
