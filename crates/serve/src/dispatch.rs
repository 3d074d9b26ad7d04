//! The dispatcher: the requests the server holds, the instances it runs, and [`Shared::pump`],
//! which applies the registry's [`Action`]s. Every event that changes the registry (submit,
//! response, exit, trap, backpressure) pumps, from whichever green thread saw it.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io::BufWriter;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::future::{self, Either};
use hyper::{Response, StatusCode};
use weft_http_attrib::{
    AccessLogLine, Action, InstanceId, Outcome, RequestId, SharedRegistry, Summary, TraceWriter,
};
use weft_sched::{Receiver, Sender};

use crate::body::{BodyStream, ResponseBody};
use crate::guest::{GuestKind, InstanceInbox};

/// Work that answers a request (through [`Incoming::respond`]) once it has read what it needs,
/// run by the request's connection. Work dropped unfinished (the client hung up, so the
/// connection or its reply channel went away) is finished in a green thread of its own, so
/// that the registry still hears how the request went; only [`ReadThenRespond::abandon`]
/// drops it for good.
pub(crate) struct ReadThenRespond(Option<Pin<Box<dyn Future<Output = ()> + Send>>>);

impl ReadThenRespond {
    pub(crate) fn new(work: impl Future<Output = ()> + Send + 'static) -> Self {
        ReadThenRespond(Some(Box::pin(work)))
    }

    /// Drops the work unfinished: the request was answered otherwise (a deadline, a failure),
    /// so what it reads is moot.
    pub(crate) fn abandon(mut self) {
        self.0 = None;
    }
}

impl Future for ReadThenRespond {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(work) = self.0.as_mut() else {
            return Poll::Ready(());
        };
        let done = work.as_mut().poll(cx);
        if done.is_ready() {
            self.0 = None;
        }
        done
    }
}

impl Drop for ReadThenRespond {
    fn drop(&mut self) {
        if let Some(work) = self.0.take() {
            weft_sched::spawn(move || weft_sched::block_on(work));
        }
    }
}

/// What a connection's green thread is sent for its request.
pub(crate) enum Reply {
    /// The response: the request is answered.
    Response(Response<ResponseBody>),
    /// Work the connection runs until a `Response` comes: reading a guest's response body
    /// where it will be sent, instead of in another green thread that would then hand it over
    /// (one hop less per request). Dropped unfinished when another response comes first (a
    /// deadline's `504`, a failure's `500`) or the client is gone.
    Read(ReadThenRespond),
}

/// A request as the server holds it until it is finished: what the guest reads, and where the
/// response goes. Held until answered even when its instance traps (it may be requeued).
pub(crate) struct Incoming {
    pub(crate) id: RequestId,
    pub(crate) header_value: String,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
    /// Taken by the response. A channel of [`REPLY_CAPACITY`]: one `Read`, then the response.
    pub(crate) responder: Mutex<Option<Sender<Reply>>>,
    pub(crate) status: Mutex<Option<u16>>,
    /// Its span in a distributed trace (`None` unless trace context is on).
    pub(crate) trace: Option<crate::trace_context::RequestSpan>,
}

impl Incoming {
    /// Sends the response (once; later calls do nothing). Returns whether it was sent now.
    pub(crate) fn respond(&self, shared: &Shared, response: Response<Bytes>) -> bool {
        let (parts, bytes) = response.into_parts();
        self.respond_with(
            || ResponseBody::new(bytes, shared.open_responses.clone()),
            parts,
        )
    }

    /// Sends a response whose body streams from `stream` as its writer fills it (once).
    pub(crate) fn respond_streaming(
        &self,
        shared: &Shared,
        parts: http::response::Parts,
        stream: Arc<BodyStream>,
    ) -> bool {
        self.respond_with(
            || ResponseBody::streamed(stream, shared.open_responses.clone()),
            parts,
        )
    }

    /// Has the request's connection run `read`, which answers the request when it is done.
    /// Does nothing once the request is answered; at most once per request.
    pub(crate) fn respond_after(&self, read: ReadThenRespond) {
        if let Some(responder) = self.responder.lock().unwrap().as_ref() {
            // Not sent when the client hung up: `read` is then finished elsewhere as it drops.
            let _ = responder.try_send(Reply::Read(read));
        }
    }

    fn respond_with(
        &self,
        body: impl FnOnce() -> ResponseBody,
        parts: http::response::Parts,
    ) -> bool {
        let Some(responder) = self.responder.lock().unwrap().take() else {
            return false;
        };
        *self.status.lock().unwrap() = Some(parts.status.as_u16());
        // The connection may be gone (client hung up): nothing to do then.
        let _ = responder.try_send(Reply::Response(Response::from_parts(parts, body())));
        true
    }

    pub(crate) fn responded(&self) -> bool {
        self.responder.lock().unwrap().is_none()
    }
}

/// The capacity of a request's reply channel: a `Read` and the response never wait.
pub(crate) const REPLY_CAPACITY: usize = 2;

/// Waits for the response to a request, running the `Read` work it is sent meanwhile. `None`
/// if the request was dropped unanswered.
pub(crate) async fn await_reply(replies: Receiver<Reply>) -> Option<Response<ResponseBody>> {
    let mut reading: Option<ReadThenRespond> = None;
    loop {
        let reply = match reading.as_mut() {
            None => replies.recv_async().await,
            Some(read) => match future::select(read, pin!(replies.recv_async())).await {
                Either::Left(((), _)) => {
                    reading = None;
                    continue;
                }
                Either::Right((reply, _)) => reply,
            },
        };
        match reply {
            Ok(Reply::Response(response)) => {
                if let Some(read) = reading.take() {
                    read.abandon();
                }
                return Some(response);
            }
            // A second run of the request (its first instance trapped): the first run's work,
            // dropped here, ends elsewhere, as it would have had it reached the client.
            Ok(Reply::Read(read)) => reading = Some(read),
            Err(_) => return None,
        }
    }
}

/// Settings every guest kind applies at run time.
pub(crate) struct RunSettings {
    pub(crate) cpu_budget: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) access_log: bool,
    pub(crate) max_body: usize,
    pub(crate) limits: crate::config::Limits,
}

/// What all green threads of a server share.
pub(crate) struct Shared {
    pub(crate) registry: SharedRegistry,
    pub(crate) settings: RunSettings,
    pub(crate) guest: Arc<dyn GuestKind>,
    pub(crate) instances: Mutex<HashMap<InstanceId, Arc<dyn InstanceInbox>>>,
    pub(crate) requests: Mutex<HashMap<RequestId, Arc<Incoming>>>,
    pub(crate) trace: Mutex<Option<TraceWriter<BufWriter<File>>>>,
    pub(crate) open_responses: Arc<AtomicUsize>,
    pub(crate) shutting_down: AtomicBool,
    /// When the shutdown began (its deadline counts from then).
    pub(crate) shutdown_began: Mutex<Option<Instant>>,
    pub(crate) drained_tx: Sender<()>,
    pub(crate) served: AtomicUsize,
    /// `None` unless a metrics address is configured.
    pub(crate) metrics: Option<Arc<crate::metrics::Metrics>>,
    pub(crate) trace_context: bool,
    /// `None` unless spans are exported.
    pub(crate) otlp: Option<Arc<crate::otlp::Otlp>>,
    /// Connections kept open to the upstreams guests call.
    pub(crate) upstreams: crate::upstream::Upstreams,
}

impl Shared {
    /// Applies the registry's actions until it has none. Called after every event that may
    /// free or need capacity; safe to call from any green thread at any time.
    pub(crate) fn pump(self: &Arc<Self>) {
        self.apply_actions();
        if self.shutting_down.load(Ordering::Acquire) {
            // Instances are retired only once nothing waits for one: retiring them earlier
            // would strand queued requests (a retired instance takes none).
            let retired = {
                let mut registry = self.registry.lock();
                if registry.queue_len() == 0 {
                    let ids: Vec<InstanceId> =
                        self.instances.lock().unwrap().keys().copied().collect();
                    for id in ids {
                        let _ = registry.retire(id);
                    }
                    true
                } else {
                    false
                }
            };
            if retired {
                self.apply_actions();
            }
        }
        self.check_drained();
    }

    fn apply_actions(self: &Arc<Self>) {
        loop {
            let now = Instant::now();
            let action = {
                let mut registry = self.registry.lock();
                match registry.next_action(now) {
                    Some(Action::SpawnInstance) => match registry.add_instance() {
                        Ok(id) => {
                            // Registered before the registry lock is released: another pump
                            // may start a request on it right away.
                            let (inbox, body) = self.guest.clone().new_instance(self.clone(), id);
                            self.instances.lock().unwrap().insert(id, inbox);
                            Some(Ok((id, body)))
                        }
                        Err(_) => {
                            registry.spawn_failed();
                            None
                        }
                    },
                    Some(other) => Some(Err(other)),
                    None => None,
                }
            };
            match action {
                None => break,
                Some(Ok((instance, body))) => {
                    if let Some(trace) = self.trace.lock().unwrap().as_mut() {
                        let _ = trace.instance_started(instance);
                    }
                    weft_sched::spawn(body);
                }
                Some(Err(Action::Start { request, instance })) => {
                    if let Some(metrics) = &self.metrics {
                        metrics.request_started(instance);
                    }
                    let incoming = self.requests.lock().unwrap().get(&request).cloned();
                    let inbox = self.instances.lock().unwrap().get(&instance).cloned();
                    match (incoming, inbox) {
                        (Some(incoming), Some(inbox)) => inbox.start(incoming),
                        // Impossible by construction (requests are registered before they
                        // can be started; instances before they get requests); say so loudly.
                        _ => eprintln!(
                            "weft serve: internal error: cannot start {request} on {instance}"
                        ),
                    }
                }
                Some(Err(Action::DropInstance(instance))) => {
                    if let Some(metrics) = &self.metrics {
                        metrics.instance_dropped(instance);
                    }
                    if let Some(inbox) = self.instances.lock().unwrap().remove(&instance) {
                        inbox.stop();
                    }
                }
                Some(Err(Action::SpawnInstance)) => unreachable!("handled under the lock"),
            }
        }
    }

    /// A request is over: answer it if nobody did (500), log it, trace it, forget it.
    pub(crate) fn finish(&self, summary: &Summary) {
        let incoming = self.requests.lock().unwrap().remove(&summary.request);
        let Some(incoming) = incoming else { return };
        if !incoming.responded() {
            incoming.respond(self, plain_response(500, "the request failed\n"));
        }
        self.served.fetch_add(1, Ordering::Relaxed);
        let status = *incoming.status.lock().unwrap();
        if let Some(metrics) = &self.metrics {
            metrics.request_finished(summary, status);
        }
        if let (Some(otlp), Some(span)) = (&self.otlp, &incoming.trace) {
            let (id, method, path) = (&incoming.header_value, &incoming.method, &incoming.path);
            otlp.request_finished(span, summary, id, method, path, status);
        }
        if self.settings.access_log {
            let span = incoming.trace.as_ref().map(|span| span.hex());
            let line = AccessLogLine {
                finished_at: SystemTime::now(),
                summary,
                header_id: &incoming.header_value,
                method: &incoming.method,
                path: &incoming.path,
                status,
                trace: span.as_ref().map(|span| span.fields()),
            };
            eprintln!("{line}");
        }
        if let Some(trace) = self.trace.lock().unwrap().as_mut() {
            let label = format!(
                "{} {} {}",
                incoming.method,
                incoming.path,
                status.map_or("-".to_string(), |s| s.to_string())
            );
            let mut args = serde_json::json!({
                "id": incoming.header_value,
                "outgoing": summary.outgoing,
                "outcome": outcome_name(&summary.outcome),
                "post_response_ms": summary.post_response_time().as_secs_f64() * 1e3,
            });
            if let Some(span) = &incoming.trace {
                span.annotate(&mut args);
            }
            let _ = trace.request_finished(summary.request, summary.finished_at, &label, args);
        }
    }

    /// Fails every request of an instance that trapped or could not be created, and lets the
    /// registry requeue the ones it had not touched.
    pub(crate) fn instance_failed(
        self: &Arc<Self>,
        instance: InstanceId,
        culprit: Option<RequestId>,
    ) {
        let fallout = self
            .registry
            .lock()
            .instance_trapped(instance, culprit, Instant::now());
        if let Ok(fallout) = fallout {
            for summary in &fallout.failed {
                self.finish(summary);
            }
        }
    }

    /// `request` ended without a response: it is answered 500 and finished.
    pub(crate) fn no_response(&self, request: RequestId) {
        let summary = self.registry.lock().no_response(request, Instant::now());
        if let Ok(summary) = summary {
            self.finish(&summary);
        }
    }

    /// At the shutdown deadline: what is still live is answered `503` if it has not been
    /// answered and given up; returns a line for each (`r7 GET /slow`).
    pub(crate) fn abandon_live_requests(&self) -> Vec<String> {
        let live: Vec<Arc<Incoming>> = self.requests.lock().unwrap().values().cloned().collect();
        let mut killed: Vec<(RequestId, String)> = live
            .iter()
            .map(|incoming| {
                incoming.respond(self, plain_response(503, "the server shut down\n"));
                (
                    incoming.id,
                    format!("{} {} {}", incoming.id, incoming.method, incoming.path),
                )
            })
            .collect();
        killed.sort();
        killed.into_iter().map(|(_, line)| line).collect()
    }

    fn check_drained(&self) {
        if self.shutting_down.load(Ordering::Acquire) && self.registry.lock().is_drained() {
            let _ = self.drained_tx.try_send(());
        }
    }

    pub(crate) fn begin_shutdown(self: &Arc<Self>) {
        if self.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        *self.shutdown_began.lock().unwrap() = Some(Instant::now());
        self.registry.lock().begin_shutdown();
        self.pump();
    }
}

pub(crate) fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Completed => "completed",
        Outcome::Drained { .. } => "drained",
        Outcome::NoResponse => "no_response",
        Outcome::Failed => "failed",
    }
}

/// A short `text/plain` response the server makes itself (refusals, failures).
pub(crate) fn plain_response(status: u16, text: &str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(text.to_string()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    response
}
