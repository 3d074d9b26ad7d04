//! One instance of a component guest: a green thread that owns its store and runs the store's
//! event loop (`run_concurrent`) for every request started in it. Inside the loop one future
//! per request awaits its handler's response; the loop also takes new requests from the inbox,
//! mirrors the guest's backpressure into the registry, finishes requests once their tasks have
//! exited (keep-alive: a 0.3 task may work on after returning its response), and ends work
//! that outlives its drain deadline.
//!
//! Response bodies are read outside the store, by the request's connection ([`super::response`]):
//! a 0.2 guest writing its body blocks the store until the reader takes it.

use std::collections::{BTreeSet, HashMap};
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Instant;

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures::stream::FuturesUnordered;
use wasmtime::component::{Accessor, Func, Resource, TypedFunc};
use wasmtime_wasi_http::p2::bindings::http::types as p2_types;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};
use wasmtime_wasi_http::p3::bindings::http::types as p3_types;
use wasmtime_wasi_http::{WasiBody, WasiHttpView};
use weft_http_attrib::{ComponentAttribution, InstanceId, RequestId, Started};

use super::ComponentGuest;
use super::state::{ComponentState, attribution_of};
use crate::dispatch::{Incoming, Shared};
use crate::guest::InstanceInbox;
use crate::upstream::full_body;

/// An instantiated guest.
pub(crate) enum Proxy {
    P2(wasmtime_wasi_http::p2::bindings::Proxy),
    P3(wasmtime_wasi_http::p3::bindings::Service),
}

type P2Handle = TypedFunc<
    (
        Resource<HostIncomingRequest>,
        Resource<HostResponseOutparam>,
    ),
    (),
>;
type P3Handle = TypedFunc<
    (Resource<p3_types::Request>,),
    (Result<Resource<p3_types::Response>, p3_types::ErrorCode>,),
>;

#[derive(Clone, Copy)]
enum Handler {
    P2(P2Handle),
    P3(P3Handle),
}

impl Handler {
    fn of(proxy: &Proxy) -> Self {
        match proxy {
            Proxy::P2(proxy) => Handler::P2(proxy.wasi_http_incoming_handler().func_handle()),
            Proxy::P3(service) => Handler::P3(service.wasi_http_handler().func_handle()),
        }
    }

    fn func(&self) -> Func {
        match self {
            Handler::P2(handle) => *handle.func(),
            Handler::P3(handle) => *handle.func(),
        }
    }
}

/// What an instance's green thread is told.
pub(crate) enum InstanceMsg {
    /// Run this request.
    Start(Arc<Incoming>),
    /// The response of `request` went out; work for it may go on until `deadline`.
    Responded {
        request: RequestId,
        deadline: Instant,
    },
    /// The registry dropped this instance: nothing is left in it.
    Stop,
}

/// The dispatcher's end of an instance's inbox.
pub(crate) struct Inbox(pub(crate) UnboundedSender<InstanceMsg>);

impl InstanceInbox for Inbox {
    fn start(&self, request: Arc<Incoming>) {
        let _ = self.0.unbounded_send(InstanceMsg::Start(request));
    }

    fn stop(&self) {
        let _ = self.0.unbounded_send(InstanceMsg::Stop);
    }
}

/// Runs `future` to completion on this green thread with tokio's runtime entered while it is
/// polled (only then: the green thread may resume on another worker between polls).
pub(crate) fn block_in_tokio<F: Future>(tokio: &tokio::runtime::Handle, future: F) -> F::Output {
    block_in_tokio_waiting(tokio, future, || {})
}

/// [`block_in_tokio`], calling `waiting` each time the future waits (before the green thread
/// parks).
fn block_in_tokio_waiting<F: Future>(
    tokio: &tokio::runtime::Handle,
    future: F,
    mut waiting: impl FnMut(),
) -> F::Output {
    let mut future = pin!(future);
    weft_sched::block_on(poll_fn(|cx| {
        let _entered = tokio.enter();
        let poll = future.as_mut().poll(cx);
        if poll.is_pending() {
            waiting();
        }
        poll
    }))
}

/// Responses a 0.2 handler has set but that are not yet handed to their connections. A 0.2
/// handler sets its response and then writes the body; handed over at once, the connection
/// would wake to read each piece as it comes. Held until the handler returns, the body is
/// whole by then and read in one go. Held no longer than that, or until the instance waits
/// for anything (a guest writing more body than its channel holds waits for the reader): the
/// instance's green thread hands them over before it parks, so a reader is always there.
#[derive(Default)]
struct Deferred(std::sync::Mutex<Vec<Box<dyn FnOnce() + Send>>>);

impl Deferred {
    fn hold(&self, deliver: Box<dyn FnOnce() + Send>) {
        self.0.lock().unwrap().push(deliver);
    }

    fn hand_over(&self) {
        let held = std::mem::take(&mut *self.0.lock().unwrap());
        for deliver in held {
            deliver();
        }
    }
}

/// The body of an instance's green thread.
pub(crate) fn run_instance(
    guest: Arc<ComponentGuest>,
    shared: Arc<Shared>,
    id: InstanceId,
    inbox_tx: UnboundedSender<InstanceMsg>,
    mut inbox: UnboundedReceiver<InstanceMsg>,
) {
    let attribution = ComponentAttribution::new(shared.registry.clone(), id);
    let mut store = guest.new_store(Some(shared.clone()), Some(attribution), &shared.settings);
    let proxy = match block_in_tokio(&guest.tokio, guest.instantiate(&mut store)) {
        Ok(proxy) => proxy,
        Err(error) => {
            eprintln!("weft serve: instance {id} could not be created: {error:?}");
            // Requests already sent here fail (a guest that cannot be instantiated makes
            // 500s, not a loop); the registry requeues those whose start is on its way.
            while let Ok(message) = inbox.try_recv() {
                if let InstanceMsg::Start(incoming) = message {
                    shared.no_response(incoming.id);
                }
            }
            shared.instance_failed(id, None);
            shared.pump();
            return;
        }
    };
    let serving = Serving {
        shared: shared.clone(),
        id,
        inbox: inbox_tx,
        handler: Handler::of(&proxy),
        deferred: Arc::new(Deferred::default()),
        // Reported idle at its first wait: from then on the registry counts it busy from
        // each request it is given to its next wait.
        started_since_idle: AtomicBool::new(true),
    };
    let result = block_in_tokio_waiting(
        &guest.tokio,
        store.run_concurrent(async |accessor| serving.run(accessor, &mut inbox).await),
        || serving.waiting(),
    )
    .and_then(|result| result);
    match result {
        Ok(()) => {
            // Stopped by the registry: nothing is live here any more, but say so if it was.
            let left = attribution_of(store.data_mut()).store_dropped(Instant::now());
            for summary in left.into_iter().flatten() {
                shared.finish(&summary);
            }
        }
        Err(error) => {
            let culprit = store.data().cpu.culprit();
            let culprit_text = culprit.map_or("-".to_string(), |r| r.to_string());
            eprintln!("weft serve: instance {id} trapped (request {culprit_text}): {error:?}");
            shared.instance_failed(id, culprit);
        }
    }
    {
        // Resources of the store may own tokio tasks, aborted as they drop.
        let _entered = guest.tokio.enter();
        drop(store);
    }
    shared.pump();
}

type RequestIo =
    Pin<Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send + 'static>>;

type RequestFuture<'a> = Pin<Box<dyn Future<Output = wasmtime::Result<()>> + Send + 'a>>;

struct Serving {
    shared: Arc<Shared>,
    id: InstanceId,
    inbox: UnboundedSender<InstanceMsg>,
    handler: Handler,
    deferred: Arc<Deferred>,
    /// A request was started since the instance last waited.
    started_since_idle: AtomicBool,
}

impl Serving {
    /// The store's event loop waits: every task is blocked (on I/O, a timer, a reader) or
    /// gone, so the worker is free. Held responses go out, and the registry hears the instance
    /// is idle (once per request started meanwhile, not at every wait): it prefers idle
    /// instances, and adds one when all are busy, so a guest that computes does not hold many
    /// requests on one worker while another worker has nothing to run.
    fn waiting(&self) {
        self.deferred.hand_over();
        if self.started_since_idle.swap(false, Ordering::Relaxed) {
            let _ = self.shared.registry.lock().instance_idle(self.id);
        }
    }

    /// The store's event loop runs while this runs: until the registry stops the instance
    /// (`Ok`) or a request's call fails, which poisons the store (`Err`).
    async fn run(
        &self,
        accessor: &Accessor<ComponentState>,
        inbox: &mut UnboundedReceiver<InstanceMsg>,
    ) -> wasmtime::Result<()> {
        let mut running: FuturesUnordered<RequestFuture<'_>> = FuturesUnordered::new();
        let mut deadlines: BTreeSet<(Instant, RequestId)> = BTreeSet::new();
        // Requests that must answer by then (`request_timeout`), with what answers them.
        let mut answer_by: BTreeSet<(Instant, RequestId)> = BTreeSet::new();
        let mut unanswered: HashMap<RequestId, Arc<Incoming>> = HashMap::new();
        let mut timer: Option<(Instant, Pin<Box<weft_sched::Sleep>>)> = None;
        let mut backpressure = false;
        poll_fn(|cx| {
            loop {
                while let Poll::Ready(Some(result)) = running.poll_next_unpin(cx) {
                    if let Err(error) = result {
                        return Poll::Ready(Err(error));
                    }
                }
                match inbox.poll_next_unpin(cx) {
                    Poll::Ready(Some(InstanceMsg::Start(incoming))) => {
                        self.started_since_idle.store(true, Ordering::Relaxed);
                        let timeout = self.shared.settings.limits.request_timeout;
                        answer_by.insert((Instant::now() + timeout, incoming.id));
                        unanswered.insert(incoming.id, incoming.clone());
                        if let Some(future) = self.start(accessor, incoming) {
                            running.push(future);
                        }
                        continue;
                    }
                    Poll::Ready(Some(InstanceMsg::Responded { request, deadline })) => {
                        deadlines.insert((deadline, request));
                        continue;
                    }
                    Poll::Ready(Some(InstanceMsg::Stop) | None) => return Poll::Ready(Ok(())),
                    Poll::Pending => {}
                }

                // Backpressure: while the guest holds it (or a 0.2 call runs), new requests
                // go to other instances or wait.
                match ComponentAttribution::poll_ready(
                    accessor,
                    attribution_of,
                    self.handler.func(),
                    cx,
                ) {
                    Poll::Ready(Ok(())) if backpressure => {
                        backpressure = false;
                        self.shared.pump();
                    }
                    Poll::Ready(_) => {}
                    Poll::Pending => backpressure = true,
                }

                // Keep-alive: requests finish once every task of the store has exited.
                if let Poll::Ready(result) =
                    ComponentAttribution::poll_idle(accessor, attribution_of, cx, Instant::now())
                {
                    accessor.with(|mut access| access.get().cpu.all_exited());
                    match result {
                        Ok(finished) if !finished.is_empty() => {
                            for summary in &finished {
                                self.shared.finish(summary);
                            }
                            self.shared.pump();
                        }
                        Ok(_) => {}
                        Err(error) => eprintln!("weft serve: internal error: {error}"),
                    }
                }

                let now = Instant::now();
                while let Some(&(at, request)) = answer_by.first() {
                    if at > now {
                        break;
                    }
                    answer_by.pop_first();
                    if let Some(incoming) = unanswered.remove(&request) {
                        self.answer_timed_out(&incoming, now);
                    }
                }
                unanswered.retain(|_, incoming| !incoming.responded());
                answer_by.retain(|(_, request)| unanswered.contains_key(request));
                while let Some(&(at, request)) = deadlines.first() {
                    if at > now {
                        break;
                    }
                    deadlines.pop_first();
                    self.drain(request, now);
                }
                let next = [deadlines.first(), answer_by.first()]
                    .into_iter()
                    .flatten()
                    .map(|&(at, _)| at)
                    .min();
                if let Some(at) = next {
                    if timer.as_ref().is_none_or(|(set, _)| *set != at) {
                        let wait = at.saturating_duration_since(now);
                        timer = Some((at, Box::pin(weft_sched::Sleep::new(wait))));
                    }
                    if let Some((_, sleep)) = timer.as_mut()
                        && sleep.as_mut().poll(cx).is_ready()
                    {
                        timer = None;
                        continue;
                    }
                }
                return Poll::Pending;
            }
        })
        .await
    }

    /// `incoming` did not answer within `request_timeout`: the client gets `504`, and its task,
    /// which cannot be stopped alone, ends with the instance, which is retired.
    fn answer_timed_out(&self, incoming: &Incoming, now: Instant) {
        let request = incoming.id;
        if !self.shared.registry.lock().is_live(request) {
            return;
        }
        let answered = incoming.respond(
            &self.shared,
            crate::dispatch::plain_response(504, "the request did not answer in time\n"),
        );
        if !answered {
            return;
        }
        eprintln!(
            "weft serve: request {request} did not answer within {} ms: 504, its instance {} \
             is retired",
            self.shared.settings.limits.request_timeout.as_millis(),
            self.id
        );
        let summary = {
            let mut registry = self.shared.registry.lock();
            let _ = registry.retire(self.id);
            match registry.response_sent(request, now) {
                Ok(Some(summary)) => Some(summary),
                Ok(None) => registry.drained(request, 1, now).ok(),
                Err(_) => None,
            }
        };
        if let Some(summary) = summary {
            self.shared.finish(&summary);
        }
        self.shared.pump();
    }

    /// The drain deadline of `request` passed while its task still runs: it is finished with
    /// its task counted as a straggler, and the instance is retired so that the task ends with
    /// the store once nothing else runs in it (a single task cannot be stopped).
    fn drain(&self, request: RequestId, now: Instant) {
        let summary = {
            let mut registry = self.shared.registry.lock();
            if !registry.is_live(request) {
                return;
            }
            let summary = registry.drained(request, 1, now);
            let _ = registry.retire(self.id);
            summary
        };
        if let Ok(summary) = summary {
            self.shared.finish(&summary);
        }
        self.shared.pump();
    }

    /// Starts `incoming`'s handler as a new root task; the future awaits its response.
    fn start<'a>(
        &self,
        accessor: &'a Accessor<ComponentState>,
        incoming: Arc<Incoming>,
    ) -> Option<RequestFuture<'a>> {
        let request = incoming.id;
        if let Some(trace) = self.shared.trace.lock().unwrap().as_mut() {
            let _ = trace.request_started(request, self.id, Instant::now());
        }
        let started = match self.handler {
            Handler::P3(handle) => self.start_p3(accessor, handle, incoming),
            Handler::P2(handle) => self.start_p2(accessor, handle, incoming),
        };
        match started {
            Ok(future) => Some(future),
            Err(error) => {
                eprintln!("weft serve: cannot start {request}: {error:?}");
                self.shared.no_response(request);
                self.shared.pump();
                None
            }
        }
    }

    /// A new root task held the slot of an earlier one, which has therefore exited.
    fn displaced<C>(&self, started: &Started<C>) {
        if let Some((_, Some(summary))) = &started.displaced {
            self.shared.finish(summary);
        }
    }

    fn start_p3<'a>(
        &self,
        accessor: &'a Accessor<ComponentState>,
        handle: P3Handle,
        incoming: Arc<Incoming>,
    ) -> wasmtime::Result<RequestFuture<'a>> {
        let http_request = incoming_request(&incoming)?;
        let now = Instant::now();
        let (started, request_io) = accessor.with(|mut access| -> wasmtime::Result<_> {
            let (request, request_io) =
                wasmtime_wasi_http::p3::Request::from_http(&mut access.get().hooks, http_request);
            let request_io: RequestIo = Box::pin(request_io);
            let resource = access.get().table.push(request)?;
            let started = ComponentAttribution::start_typed_call(
                &mut access,
                attribution_of,
                handle,
                (resource,),
                incoming.id,
                now,
            )
            .map_err(wasmtime::Error::msg)?;
            Ok((started, request_io))
        })?;
        self.displaced(&started);
        let shared = self.shared.clone();
        let inbox = self.inbox.clone();
        Ok(Box::pin(async move {
            let (result,) = handle
                .finish_call_concurrent(accessor, started.call)
                .await?;
            match result {
                Ok(response) => {
                    let response = accessor.with(|mut access| -> wasmtime::Result<_> {
                        let response = access.get().table.delete(response)?;
                        response.into_http_with_getter(&mut access, request_io, http_view)
                    });
                    match response {
                        Ok(response) => super::response::deliver(shared, incoming, inbox, response),
                        Err(error) => {
                            eprintln!(
                                "weft serve: the response of {} is unusable: {error:?}",
                                incoming.id
                            );
                            shared.no_response(incoming.id);
                            shared.pump();
                        }
                    }
                }
                Err(code) => {
                    eprintln!(
                        "weft serve: the handler of {} answered with error {code:?}",
                        incoming.id
                    );
                    shared.no_response(incoming.id);
                    shared.pump();
                }
            }
            Ok(())
        }))
    }

    fn start_p2<'a>(
        &self,
        accessor: &'a Accessor<ComponentState>,
        handle: P2Handle,
        incoming: Arc<Incoming>,
    ) -> wasmtime::Result<RequestFuture<'a>> {
        let http_request = incoming_request(&incoming)?;
        let now = Instant::now();
        let responded = Arc::new(AtomicBool::new(false));
        let on_response = {
            let (shared, incoming, inbox) =
                (self.shared.clone(), incoming.clone(), self.inbox.clone());
            let responded = responded.clone();
            let deferred = self.deferred.clone();
            move |response: Result<http::Response<WasiBody>, p2_types::ErrorCode>| {
                responded.store(true, Ordering::Release);
                match response {
                    Ok(response) => deferred.hold(Box::new(move || {
                        super::response::deliver(shared, incoming, inbox, response)
                    })),
                    Err(code) => {
                        eprintln!(
                            "weft serve: the handler of {} set error {code:?} as its response",
                            incoming.id
                        );
                        shared.no_response(incoming.id);
                        shared.pump();
                    }
                }
            }
        };
        let started = accessor.with(|mut access| -> wasmtime::Result<_> {
            let mut http = access.get().http();
            let request = http.new_incoming_request(p2_types::Scheme::Http, http_request)?;
            let outparam = http.new_response_outparam_from_callback(on_response)?;
            ComponentAttribution::start_typed_call(
                &mut access,
                attribution_of,
                handle,
                (request, outparam),
                incoming.id,
                now,
            )
            .map_err(wasmtime::Error::msg)
        })?;
        self.displaced(&started);
        let shared = self.shared.clone();
        let deferred = self.deferred.clone();
        Ok(Box::pin(async move {
            handle
                .finish_call_concurrent(accessor, started.call)
                .await?;
            deferred.hand_over();
            if responded.load(Ordering::Acquire) {
                // The response is with the connection, its body written (a 0.2 handler writes
                // it before it returns): the instance takes its next request now, while the
                // client still receives this one.
                let handed = shared.registry.lock().handed_over(incoming.id);
                if handed.is_ok() {
                    shared.pump();
                }
            } else {
                eprintln!(
                    "weft serve: the handler of {} returned without setting a response",
                    incoming.id
                );
                shared.no_response(incoming.id);
                shared.pump();
            }
            Ok(())
        }))
    }
}

fn http_view(state: &mut ComponentState) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
    state.http()
}

/// The request as wasmtime-wasi-http takes it: an absolute URI (the guest reads scheme and
/// authority from it).
fn incoming_request(incoming: &Incoming) -> wasmtime::Result<http::Request<WasiBody>> {
    let authority = incoming
        .headers
        .get(http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .filter(|host| host.parse::<http::uri::Authority>().is_ok())
        .unwrap_or("localhost");
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(incoming.path.as_str())
        .build()?;
    let mut request = http::Request::builder()
        .method(incoming.method.as_str())
        .uri(uri)
        .body(full_body(incoming.body.clone()))?;
    *request.headers_mut() = incoming.headers.clone();
    Ok(request)
}
