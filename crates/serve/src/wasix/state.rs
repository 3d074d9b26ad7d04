//! The store data of a WASIX HTTP guest's instance: WASI, the contexts, and the host side of
//! the `weft_http_v1` imports ([`InstanceHttp`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::Response;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use weft_http_attrib::{ContextExit, GreenAttribution, InstanceId, REQUEST_ID_HEADER, RequestId};
use weft_sched::{Receiver, Sender};
use weft_wasix_context::{ContextEvent, ContextId, Errno, MAIN_CONTEXT, WasixContexts};

use super::instance::InstanceMsg;
use super::scheduler::{CpuAccount, Scheduler};
use crate::body::{BodyStream, StreamWriter};
use crate::dispatch::{Incoming, Shared};

/// The store data of an HTTP guest's instance.
pub(crate) struct HostState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) contexts: WasixContexts,
    /// `None` only in stores that run no request (import checks, the instantiation probe).
    pub(crate) http: Option<InstanceHttp>,
    /// The instance's linear memory account (`None` in import checks).
    pub(crate) memory: Option<super::memory::InstanceMemory>,
    /// While the instance's start code runs: the epoch ticks it may still use.
    pub(crate) init_ticks_left: Option<u64>,
}

impl HostState {
    /// A store's data that serves nothing (import checks).
    pub(crate) fn placeholder() -> Self {
        HostState {
            wasi: WasiCtxBuilder::new().build_p1(),
            contexts: WasixContexts::default(),
            http: None,
            memory: None,
            init_ticks_left: None,
        }
    }
}

pub(crate) fn contexts_of(state: &mut HostState) -> &mut WasixContexts {
    &mut state.contexts
}

/// The guest made more context events between two host calls than the host keeps.
#[derive(Debug, thiserror::Error)]
#[error(
    "the guest created and destroyed contexts faster than they could be attributed ({0} events \
     lost between two host calls); its instance is ended"
)]
pub(crate) struct EventsLost(usize);

/// A response being built by the guest: held whole until it is finished or its body outgrows
/// the response buffer; then its head goes out and the body streams ([`Draft::stream`]).
pub(crate) struct Draft {
    pub(crate) status: u16,
    pub(crate) headers: http::HeaderMap,
    /// Bytes of header names and values so far (bounded by the server's limits).
    pub(crate) header_bytes: usize,
    /// The body while it is held whole.
    pub(crate) body: Vec<u8>,
    /// Body bytes written so far, held or streamed (bounded by `max_response_body`).
    pub(crate) written: usize,
    /// Once the head went out: where the rest of the body goes.
    pub(crate) stream: Option<StreamWriter>,
}

impl Draft {
    fn new() -> Self {
        Draft {
            status: 200,
            headers: http::HeaderMap::new(),
            header_bytes: 0,
            body: Vec::new(),
            written: 0,
            stream: None,
        }
    }

    /// The status and headers can still change (the head has not gone out).
    pub(crate) fn head_open(&self) -> Result<(), Errno> {
        match self.stream {
            None => Ok(()),
            Some(_) => Err(Errno::Already),
        }
    }
}

/// A request started on this instance.
pub(crate) struct RequestState {
    pub(crate) incoming: Arc<Incoming>,
    /// `None` once the response went out.
    pub(crate) draft: Option<Draft>,
}

/// The per-instance host side of the `weft_http_v1` imports.
pub(crate) struct InstanceHttp {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: InstanceId,
    pub(crate) attribution: GreenAttribution,
    pub(crate) requests: HashMap<RequestId, RequestState>,
    pub(crate) scheduler: Scheduler,
    pub(crate) cpu: CpuAccount,
    pub(crate) inbox: Sender<InstanceMsg>,
    /// The instance loop's inbox, read here too when the instance stalls.
    inbox_rx: Receiver<InstanceMsg>,
    /// Messages taken from the inbox while stalled, for the loop to handle first.
    pub(crate) held: VecDeque<InstanceMsg>,
    /// Handler contexts and their request.
    pub(crate) handlers: HashMap<ContextId, RequestId>,
    /// The running context passed an epoch tick without coming back to the host: the
    /// registry was told ([`weft_http_attrib::Registry::set_stalled`]).
    pub(crate) stalled: bool,
    /// Contexts whose entrypoint ended, to destroy from main.
    terminated: Vec<ContextId>,
    /// This instance's share of the live-contexts metric.
    live_contexts: crate::metrics::ContextGauge,
}

impl InstanceHttp {
    pub(crate) fn new(
        shared: Arc<Shared>,
        id: InstanceId,
        inbox: Sender<InstanceMsg>,
        inbox_rx: Receiver<InstanceMsg>,
    ) -> Self {
        InstanceHttp {
            attribution: GreenAttribution::new(shared.registry.clone(), id),
            cpu: CpuAccount::new(shared.settings.cpu_budget),
            live_contexts: crate::metrics::ContextGauge::new(shared.metrics.clone()),
            shared,
            id,
            requests: HashMap::new(),
            scheduler: Scheduler::default(),
            inbox,
            inbox_rx,
            held: VecDeque::new(),
            handlers: HashMap::new(),
            stalled: false,
            terminated: Vec::new(),
        }
    }

    /// Tells the registry whether this instance's running context is stalled (see
    /// [`InstanceHttp::stalled`]), when that changes. On stalling, the requests sent here and
    /// not started yet go back to the queue (they would wait for the stalled context); the
    /// inbox's other messages are kept in [`InstanceHttp::held`] for the loop.
    pub(crate) fn set_stalled(&mut self, on: bool) {
        if self.stalled == on {
            return;
        }
        self.stalled = on;
        {
            let mut registry = self.shared.registry.lock();
            let _ = registry.set_stalled(self.id, on);
            if on {
                while let Ok(message) = self.inbox_rx.try_recv() {
                    match message {
                        InstanceMsg::Start(incoming) if registry.give_back(incoming.id).is_ok() => {
                        }
                        message => self.held.push_back(message),
                    }
                }
            }
        }
        self.shared.pump();
    }

    /// `request` starts in the new handler context `context`.
    pub(crate) fn request_started(
        &mut self,
        context: ContextId,
        incoming: Arc<Incoming>,
        now: Instant,
    ) {
        let request = incoming.id;
        self.handlers.insert(context, request);
        self.requests.insert(
            request,
            RequestState {
                incoming,
                draft: Some(Draft::new()),
            },
        );
        if let Err(error) = self.attribution.request_started(context, request) {
            eprintln!("weft serve: internal error: {error}");
        }
        self.scheduler
            .answer_by(request, now + self.shared.settings.limits.request_timeout);
        self.scheduler.make_ready(context);
        if let Some(trace) = self.shared.trace.lock().unwrap().as_mut() {
            let _ = trace.request_started(request, self.id, now);
        }
    }

    /// Applies what the guest did to its contexts since the last call: a created context
    /// works for the request of the context that created it (weft-wasix-context reports the
    /// exact creator); a terminated one is queued for [`take_terminated`](Self::take_terminated);
    /// a destroyed one is accounted (its request may be finished). Called at every host call
    /// and after every resume, so a creation is applied before anything the new context does.
    ///
    /// `Err` when the guest churned through so many contexts between two host calls that
    /// events were lost: attribution can no longer be exact, so the instance must end (a trap).
    pub(crate) fn apply_context_events(
        &mut self,
        contexts: &mut WasixContexts,
    ) -> Result<(), EventsLost> {
        let dropped = contexts.dropped_events();
        let now = Instant::now();
        let events: Vec<ContextEvent> = contexts.take_events().collect();
        for event in events {
            match event {
                ContextEvent::Created { id, creator, .. } => {
                    // Host spawns are registered by `request_started`; a creator that works
                    // for no request leaves the new context unattributed.
                    if creator != MAIN_CONTEXT {
                        let _ = self.attribution.context_created(creator, id);
                    }
                }
                ContextEvent::Terminated { id } => self.terminated.push(id),
                ContextEvent::Destroyed { id } => self.context_gone(id, now),
            }
        }
        self.live_contexts.set(contexts.live_contexts());
        if dropped > 0 {
            return Err(EventsLost(dropped));
        }
        Ok(())
    }

    /// The contexts that terminated since the last call.
    pub(crate) fn take_terminated(&mut self) -> Vec<ContextId> {
        std::mem::take(&mut self.terminated)
    }

    /// `context` no longer exists: account its exit.
    pub(crate) fn context_gone(&mut self, context: ContextId, now: Instant) {
        self.handlers.remove(&context);
        self.scheduler.forget_context(context);
        match self.attribution.context_exited(context, now) {
            Ok(ContextExit::LastForRequest { request, finished }) => {
                self.forget(request);
                match finished {
                    Some(summary) => self.shared.finish(&summary),
                    // Its last context is gone and no response went out: 500.
                    None => self.shared.no_response(request),
                }
            }
            Ok(_) => {}
            Err(error) => eprintln!("weft serve: internal error: {error}"),
        }
    }

    pub(crate) fn forget(&mut self, request: RequestId) {
        self.requests.remove(&request);
        self.cpu.forget(request);
        self.scheduler.answered(request);
    }

    /// Appends `bytes` to the body of `request`'s response; how many were taken. Held whole
    /// while the body fits the response buffer; past it the head goes out and the body
    /// streams, taking what the client's unread bytes leave room for (`EAGAIN`: none).
    pub(crate) fn write_body(&mut self, request: RequestId, bytes: &[u8]) -> Result<usize, Errno> {
        let limits = &self.shared.settings.limits;
        let (max_total, buffer) = (limits.max_response_body, limits.response_buffer);
        let state = self.requests.get_mut(&request).ok_or(Errno::Inval)?;
        let draft = state.draft.as_mut().ok_or(Errno::Already)?;
        let left = max_total.saturating_sub(draft.written);
        if left == 0 && !bytes.is_empty() {
            return Err(Errno::Msgsize);
        }
        let bytes = &bytes[..bytes.len().min(left)];
        if draft.stream.is_none() {
            if draft.body.len() + bytes.len() <= buffer {
                draft.body.extend_from_slice(bytes);
                draft.written += bytes.len();
                return Ok(bytes.len());
            }
            // The body outgrows what the host holds: the head goes out now, with what is
            // held as the stream's first bytes (it fits: it is at most the buffer).
            let stream = BodyStream::new(buffer);
            let held = std::mem::take(&mut draft.body);
            stream.write(&held)?;
            let response = head(draft, &state.incoming.header_value);
            state
                .incoming
                .respond_streaming(&self.shared, response.into_parts().0, stream.clone());
            draft.stream = Some(StreamWriter::new(stream));
            // The client has its answer's head: the request is answered for the registry
            // (it cannot be retried elsewhere now), but its answer deadline runs on until the
            // body is finished.
            if let Err(error) = self
                .shared
                .registry
                .lock()
                .response_sent(request, Instant::now())
            {
                eprintln!("weft serve: internal error: {error}");
            }
        }
        let stream = draft.stream.as_ref().expect("streaming");
        let taken = stream.stream().write(bytes)?;
        draft.written += taken;
        Ok(taken)
    }

    /// Sends the response of `request` as drafted, or ends its streamed body (once).
    pub(crate) fn send_response(&mut self, request: RequestId) -> bool {
        let Some(state) = self.requests.get_mut(&request) else {
            return false;
        };
        let Some(mut draft) = state.draft.take() else {
            return false;
        };
        self.scheduler.answered(request);
        let now = Instant::now();
        if let Some(stream) = draft.stream.take() {
            // The registry heard of the response when its head went out; what runs on now is
            // post-response work, bounded by the drain deadline.
            stream.finish();
            if self.shared.registry.lock().is_live(request) {
                self.scheduler
                    .drain_by(request, now + self.shared.settings.drain_timeout);
            }
            return true;
        }
        let mut response = head(&mut draft, &state.incoming.header_value);
        *response.body_mut() = Bytes::from(draft.body);
        state.incoming.respond(&self.shared, response);
        let sent = self.shared.registry.lock().response_sent(request, now);
        match sent {
            Ok(Some(summary)) => {
                self.forget(request);
                self.shared.finish(&summary);
            }
            Ok(None) => self
                .scheduler
                .drain_by(request, now + self.shared.settings.drain_timeout),
            Err(error) => eprintln!("weft serve: internal error: {error}"),
        }
        true
    }
}

/// A response with `draft`'s status and headers (taken from it) and an empty body, carrying
/// the request's id.
fn head(draft: &mut Draft, request_id: &str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    *response.status_mut() =
        http::StatusCode::from_u16(draft.status).unwrap_or(http::StatusCode::OK);
    *response.headers_mut() = std::mem::take(&mut draft.headers);
    if let Ok(value) = http::HeaderValue::from_str(request_id) {
        // The client can quote it (logs, traces); a guest-set value is replaced.
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}
