//! One instance of a WASIX guest: a green thread that owns its wasmtime store (a store is
//! driven by one thread at a time, and this one never leaves it) and plays the WASIX main
//! context for the request contexts running in it, in the order its [`Scheduler`] says.
//!
//! [`Scheduler`]: super::scheduler::Scheduler

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use wasmtime::{Instance, Store, UpdateDeadline};
use weft_http_attrib::{Attribution, InstanceId, RequestId};
use weft_sched::{Receiver, Sender};
use weft_wasix_context::{ContextId, ContextState, HostContexts, Resumed, WasixContexts};

use super::fetch_client::FetchResponse;
use super::memory::InstanceMemory;
use super::scheduler::{HandleId, Parked};
use super::state::{HostState, InstanceHttp, contexts_of};
use super::{HANDLER_EXPORT, WasixGuest};
use crate::dispatch::{Incoming, Shared, plain_response};
use crate::guest::InstanceInbox;
use crate::timeout::with_timeout;

/// What an instance's green thread is told.
pub(crate) enum InstanceMsg {
    /// Run this request's handler in a new context.
    Start(Arc<Incoming>),
    /// A fetch started by a context of this instance finished.
    FetchDone {
        handle: HandleId,
        result: Result<FetchResponse, weft_wasix_context::Errno>,
    },
    /// The streamed response body a context waits on (`response_writable`) has room.
    Writable { handle: HandleId },
    /// The registry dropped this instance: nothing is left in it.
    Stop,
}

impl InstanceInbox for Sender<InstanceMsg> {
    fn start(&self, request: Arc<Incoming>) {
        let _ = self.send(InstanceMsg::Start(request));
    }

    fn stop(&self) {
        let _ = self.send(InstanceMsg::Stop);
    }
}

/// weft-sched's ticker advances the epoch about every 10 ms: a start code that is still
/// running at this many ticks has used about that much CPU time.
const TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// A store for one instance of `guest`. `Err` when a directory of the configuration can no
/// longer be opened: the instance is not created rather than run without it.
pub(crate) fn new_store(
    guest: &WasixGuest,
    http: Option<InstanceHttp>,
) -> wasmtime::Result<Store<HostState>> {
    let wasi = guest
        .wasi
        .builder()
        .map_err(|e| wasmtime::Error::msg(e.to_string()))?
        .build_p1();
    let mut store = Store::new(
        &guest.engine,
        HostState {
            wasi,
            contexts: WasixContexts::new(guest.contexts.clone()),
            http,
            memory: Some(InstanceMemory::new(
                guest.memory_budget.clone(),
                guest.max_instance_memory,
            )),
            init_ticks_left: None,
        },
    );
    store.limiter(|state| {
        state
            .memory
            .as_mut()
            .expect("serving stores account their memory")
    });
    // Every epoch tick (weft-sched's ticker) the running request's CPU budget is checked, and
    // the running context yields its worker (other instances and connections run meanwhile)
    // and resumes where it was. It is not switched away from: its guest is a single-threaded
    // program whose contexts switch only where it says (`context_switch`, `block_on`), so
    // running another context of the instance now could meet the allocator, or any other
    // state, half-updated (and memory the host grew meanwhile would break the allocator's
    // assumption that its heap grows contiguously). Instead the instance is marked stalled:
    // it takes no new requests, and another instance may come for them, until the context
    // comes back to the host; the CPU budget bounds how long that can take.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut context| {
        let HostState {
            http,
            init_ticks_left,
            ..
        } = context.data_mut();
        if let Some(left) = init_ticks_left {
            // The instance's start code (`_initialize`, C constructors).
            if *left == 0 {
                return Err(wasmtime::Error::msg(
                    "the guest's start code (`_initialize`) ran past its CPU budget",
                ));
            }
            *left -= 1;
            return Ok(UpdateDeadline::Yield(1));
        }
        let Some(http) = http.as_mut() else {
            return Ok(UpdateDeadline::Yield(1));
        };
        if !http.cpu.in_context() {
            return Ok(UpdateDeadline::Yield(1));
        }
        if let Err((request, budget)) = http.cpu.check(Instant::now()) {
            if let Some(metrics) = &http.shared.metrics {
                metrics.cpu_budget_trapped();
            }
            return Err(wasmtime::Error::msg(format!(
                "request {request} exceeded its CPU budget of {} ms",
                budget.as_millis()
            )));
        }
        // A tick finds a context at any point of its run: only one that ran for a whole tick
        // interval already is computing rather than just started.
        let computing = http
            .cpu
            .running_for(Instant::now())
            .is_some_and(|ran| ran >= TICK);
        if computing && !http.stalled {
            if let Some(metrics) = &http.shared.metrics {
                metrics.stalled();
            }
            http.set_stalled(true);
        }
        Ok(UpdateDeadline::Yield(1))
    });
    Ok(store)
}

/// Instantiates the guest and runs its start code, within the CPU budget.
async fn instantiate(
    guest: &WasixGuest,
    store: &mut Store<HostState>,
) -> wasmtime::Result<Instance> {
    let ticks = (guest.init_budget.as_millis() / TICK.as_millis()).max(1);
    store.data_mut().init_ticks_left = Some(u64::try_from(ticks).unwrap_or(u64::MAX));
    let result = async {
        let instance = guest.pre.instantiate_async(&mut *store).await?;
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut *store, "_initialize") {
            init.call_async(&mut *store, ()).await?;
        }
        Ok(instance)
    }
    .await;
    store.data_mut().init_ticks_left = None;
    result
}

/// Instantiates the guest once, serving nothing: a load-time check.
pub(crate) fn probe(guest: &WasixGuest) -> Result<(), String> {
    let mut store = new_store(guest, None).map_err(|e| format!("{e:?}"))?;
    weft_sched::block_on(instantiate(guest, &mut store))
        .map(drop)
        .map_err(|e| format!("{e:?}"))
}

/// The body of an instance's green thread.
pub(crate) fn run_instance(
    guest: Arc<WasixGuest>,
    shared: Arc<Shared>,
    id: InstanceId,
    inbox_tx: Sender<InstanceMsg>,
    inbox: Receiver<InstanceMsg>,
) {
    let http = InstanceHttp::new(shared.clone(), id, inbox_tx, inbox.clone());
    let created = new_store(&guest, Some(http)).and_then(|mut store| {
        weft_sched::block_on(instantiate(&guest, &mut store)).map(|instance| (store, instance))
    });
    let (store, instance) = match created {
        Ok(created) => created,
        Err(error) => {
            instantiation_failed(&shared, id, &inbox, &error);
            return;
        }
    };
    let mut runner = Runner {
        store,
        instance,
        host: HostContexts::new(contexts_of),
        lost_events: None,
        retiring: false,
        started_since_idle: true,
    };
    // A panic in host code (an import, the scheduler, a library) ends this instance as a trap
    // would: its culprit fails, untouched siblings are requeued, the registry drops the
    // instance. Left to unwind, it would end the green thread unseen and strand every request
    // sent here.
    let served = catch_unwind(AssertUnwindSafe(|| runner.serve(&inbox)));
    let trapped = match served {
        Ok(trapped) => trapped,
        Err(panic) => {
            let culprit = runner.http().cpu.running_request();
            let culprit_text = culprit.map_or("-".to_string(), |r| r.to_string());
            eprintln!(
                "weft serve: instance {id} failed (request {culprit_text}): the host panicked: {}",
                panic_message(&panic)
            );
            shared.instance_failed(id, culprit);
            true
        }
    };
    // Contexts still suspended die here, before the store.
    let released = catch_unwind(AssertUnwindSafe(move || {
        let _ = runner.host.release_all(&mut runner.store);
        drop(runner);
    }));
    if let Err(panic) = released {
        eprintln!(
            "weft serve: instance {id}: releasing its store panicked: {}",
            panic_message(&panic)
        );
    }
    if trapped {
        shared.pump();
    }
}

/// The text of a panic payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

fn instantiation_failed(
    shared: &Arc<Shared>,
    id: InstanceId,
    inbox: &Receiver<InstanceMsg>,
    error: &wasmtime::Error,
) {
    eprintln!("weft serve: instance {id} could not be created: {error:?}");
    // Requests already sent here fail (so a guest that cannot be instantiated makes 500s,
    // not a loop); ones whose start is still on its way go back to the queue.
    while let Ok(message) = inbox.try_recv() {
        if let InstanceMsg::Start(incoming) = message {
            incoming.respond(
                shared,
                plain_response(503, "no instance of the guest could be created\n"),
            );
            shared.no_response(incoming.id);
        }
    }
    shared.instance_failed(id, None);
    shared.pump();
}

struct Runner {
    store: Store<HostState>,
    instance: Instance,
    host: HostContexts<fn(&mut HostState) -> &mut WasixContexts>,
    lost_events: Option<super::state::EventsLost>,
    /// Retired for holding too much memory (asked once).
    retiring: bool,
    /// A request was started since the instance last waited (true at first, so the registry
    /// hears of the instance's first wait).
    started_since_idle: bool,
}

impl Runner {
    fn http(&mut self) -> &mut InstanceHttp {
        self.store
            .data_mut()
            .http
            .as_mut()
            .expect("serving stores have HTTP state")
    }

    /// Applies the guest's context events (creations, terminations, destructions). When
    /// events were lost the instance is marked to end, as on a trap.
    fn sync(&mut self) {
        let HostState { contexts, http, .. } = self.store.data_mut();
        let result = http
            .as_mut()
            .expect("serving stores have HTTP state")
            .apply_context_events(contexts);
        if let Err(lost) = result {
            self.lost_events.get_or_insert(lost);
        }
    }

    /// Ends the instance as a trap would, if its context events were lost.
    fn check_lost_events(&mut self) -> Result<(), ()> {
        let Some(lost) = self.lost_events.take() else {
            return Ok(());
        };
        let http = self.http();
        let (id, shared) = (http.id, http.shared.clone());
        eprintln!("weft serve: instance {id} ended: {lost}");
        shared.instance_failed(id, None);
        Err(())
    }

    /// Serves until the registry drops the instance (`false`) or it traps (`true`).
    fn serve(&mut self, inbox: &Receiver<InstanceMsg>) -> bool {
        loop {
            while let Some(message) = self.http().held.pop_front() {
                if !self.handle(message) {
                    return false;
                }
            }
            while let Ok(message) = inbox.try_recv() {
                if !self.handle(message) {
                    return false;
                }
            }
            self.fire_timers();
            if self.check_lost_events().is_err() {
                return true;
            }
            if let Some(context) = self.http().scheduler.next_ready() {
                if self.run_context(context).is_err() || self.check_lost_events().is_err() {
                    return true;
                }
                self.retire_if_too_big();
                weft_sched::yield_if_needed();
                continue;
            }
            self.waiting();
            let message = match self.http().scheduler.next_deadline() {
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

    /// An instance whose linear memory grew past the retirement mark takes no new requests
    /// and is dropped once the ones it has are finished (memory never shrinks).
    fn retire_if_too_big(&mut self) {
        if self.retiring {
            return;
        }
        let held = self.store.data().memory.as_ref().map_or(0, |m| m.held());
        let http = self.http();
        let (id, shared) = (http.id, http.shared.clone());
        let limit = shared.settings.limits.retire_memory;
        if held <= limit {
            return;
        }
        self.retiring = true;
        eprintln!(
            "weft serve: instance {id} holds {} MiB of linear memory (over {} MiB): retired",
            held >> 20,
            limit >> 20
        );
        let _ = shared.registry.lock().retire(id);
        shared.pump();
    }

    /// `false` to stop.
    /// Nothing is ready to run: every context waits (for a fetch, a timer, a reader) and
    /// the inbox is empty, so the worker is free. The registry hears the instance is idle
    /// (once per request started meanwhile, not at every wait): it prefers idle instances and
    /// adds one when all are busy, so requests that compute do not pile up on one worker
    /// while another has nothing to run.
    fn waiting(&mut self) {
        if std::mem::take(&mut self.started_since_idle) {
            let http = self.http();
            let _ = http.shared.registry.lock().instance_idle(http.id);
        }
    }

    fn handle(&mut self, message: InstanceMsg) -> bool {
        match message {
            InstanceMsg::Stop => return false,
            InstanceMsg::Start(incoming) => {
                self.started_since_idle = true;
                self.start(incoming);
            }
            InstanceMsg::FetchDone { handle, result } => {
                self.http().scheduler.fetch_done(handle, result);
            }
            InstanceMsg::Writable { handle } => self.http().scheduler.writable(handle),
        }
        true
    }

    fn start(&mut self, incoming: Arc<Incoming>) {
        let request = incoming.id;
        self.sync();
        match self
            .host
            .spawn(&mut self.store, &self.instance, HANDLER_EXPORT)
        {
            Ok(context) => {
                self.sync();
                self.http()
                    .request_started(context, incoming, Instant::now());
            }
            Err(error) => {
                // No context for it (the instance's memory or its context limit is used up):
                // it cannot run here. Another instance can take it, unless this one had
                // nothing else live (a fresh instance that cannot start one request would
                // not do better next time).
                let http = self.http();
                let (id, shared) = (http.id, http.shared.clone());
                let busy = !http.requests.is_empty();
                eprintln!("weft serve: instance {id} cannot start {request}: {error}");
                if !(busy && shared.registry.lock().could_not_start(request).is_ok()) {
                    incoming.respond(
                        &shared,
                        plain_response(503, "the guest has no room for this request\n"),
                    );
                    shared.no_response(request);
                }
                self.retiring = true;
                shared.pump();
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        let expired = self.http().scheduler.fire_timers(now);
        for request in expired.answers {
            self.answer_timed_out(request, now);
        }
        for request in expired.drains {
            self.drain(request, now);
        }
    }

    /// `request` did not answer in time: the client gets `504`, and what still works for it
    /// is killed and counted, as at a drain deadline.
    fn answer_timed_out(&mut self, request: RequestId, now: Instant) {
        let http = self.http();
        let shared = http.shared.clone();
        let Some(state) = http.requests.get_mut(&request) else {
            return;
        };
        let Some(draft) = state.draft.take() else {
            return; // answered meanwhile
        };
        if draft.stream.is_some() {
            // Its head went out; dropping the unfinished stream cuts the body short, so the
            // client cannot take it for complete.
            drop(draft);
            eprintln!(
                "weft serve: request {request} did not finish its response within {} ms: its \
                 body is cut short, its contexts are killed",
                shared.settings.limits.request_timeout.as_millis()
            );
            self.http().scheduler.answered(request);
            self.drain(request, now);
            return;
        }
        state.incoming.respond(
            &shared,
            plain_response(504, "the request did not answer in time\n"),
        );
        eprintln!(
            "weft serve: request {request} did not answer within {} ms: 504, its contexts are killed",
            shared.settings.limits.request_timeout.as_millis()
        );
        let sent = shared.registry.lock().response_sent(request, now);
        match sent {
            Ok(Some(summary)) => {
                self.http().forget(request);
                shared.finish(&summary);
            }
            Ok(None) => self.drain(request, now),
            Err(error) => eprintln!("weft serve: internal error: {error}"),
        }
    }

    /// The drain deadline of `request` passed: kill what still works for it.
    fn drain(&mut self, request: RequestId, now: Instant) {
        let http = self.http();
        if !http.shared.registry.lock().is_live(request) {
            return;
        }
        let Ok((summary, stragglers)) = http.attribution.drain(request, now) else {
            return;
        };
        for &context in &stragglers {
            http.handlers.remove(&context);
            http.scheduler.forget_context(context);
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
            let request = http.attribution.attribute(&context).ok();
            http.cpu.start(request, start);
            request
        };
        let result = weft_sched::block_on(self.host.resume(&mut self.store, context));
        let end = Instant::now();
        let http = self.http();
        http.cpu.stop(end);
        if result.is_ok() {
            http.set_stalled(false);
        }
        if let Some(trace) = http.shared.trace.lock().unwrap().as_mut() {
            let _ = trace.context_run(http.id, context, request, start, end);
        }
        match result {
            Ok(Resumed::SwitchedToMain) => {
                self.sync();
                let http = self.http();
                if http.scheduler.parked() == Parked::Stray {
                    eprintln!(
                        "weft serve: a context of instance {} switched to main without \
                         weft_http_v1 block_on: it is left suspended",
                        http.id
                    );
                }
                self.reap_terminated();
                self.pump();
                Ok(())
            }
            Ok(Resumed::Returned) => {
                self.sync();
                self.reap_terminated();
                self.pump();
                Ok(())
            }
            Err(error) => {
                let http = self.http();
                let culprit = http.cpu.take_exceeded().or(request);
                let (id, shared) = (http.id, http.shared.clone());
                let culprit_text = culprit.map_or("-".to_string(), |r| r.to_string());
                eprintln!("weft serve: instance {id} trapped (request {culprit_text}): {error:?}");
                shared.instance_failed(id, culprit);
                Err(())
            }
        }
    }

    /// Contexts whose entrypoint returned: a handler's response goes out now if it has not,
    /// and the context is destroyed (its request finishes when its last context is gone).
    fn reap_terminated(&mut self) {
        loop {
            let terminated = self.http().take_terminated();
            if terminated.is_empty() {
                return;
            }
            for context in terminated {
                let http = self.http();
                if let Some(&request) = http.handlers.get(&context) {
                    http.send_response(request);
                }
                let _ = self.host.destroy(&mut self.store, context);
            }
            self.sync();
        }
    }

    /// Responses and exits free capacity: let the dispatcher use it.
    fn pump(&mut self) {
        let shared = self.http().shared.clone();
        shared.pump();
    }
}
