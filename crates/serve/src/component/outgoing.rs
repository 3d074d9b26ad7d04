//! Outgoing requests of component guests, attributed.
//!
//! wasmtime-wasi-http sends through [`WasiHttpHooks::send_request`], which sees neither the
//! store nor the calling task. So the two imports that send (`wasi:http/client.send` in 0.3,
//! `wasi:http/outgoing-handler.handle` in 0.2) are shadowed in the linker by functions that
//! read the async call stack on entry (it is gone after the first real await), attribute the
//! call, leave the attribution in the hooks, and run the original import, which calls the hook
//! before it awaits anything. The hook takes the attribution out; a send that finds none
//! (it did not come through a shadowed import) is refused rather than sent unattributed.
//!
//! The exchange itself is hyper's HTTP/1.1 client over weft-sched's `TcpStream`, in green
//! threads of its own, on connections kept between calls (`crate::upstream`, shared with
//! WASIX guests); only plain `http` is sent.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use wasmtime::AsContextMut;
use wasmtime::component::{Accessor, Linker, Resource};
use wasmtime_wasi_http::p2::bindings::http::outgoing_handler::Host as _;
use wasmtime_wasi_http::p2::bindings::http::types as p2_types;
use wasmtime_wasi_http::p2::types::{HostFutureIncomingResponse, HostOutgoingRequest};
use wasmtime_wasi_http::p3::bindings::http::client::HostWithStore as _;
use wasmtime_wasi_http::p3::bindings::http::types as p3_types;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttp, WasiHttpHooks, WasiHttpView,
};
use weft_http_attrib::{AttribError, Attribution, CallerStack, Outgoing};

use super::state::{ComponentState, attribution_of};
use crate::dispatch::Shared;
use crate::upstream::{SendError, Unaddressable, Upstreams, address};

/// The 0.2 import that sends, as wasmtime-wasi-http's bindings name it in the linker.
pub(crate) const P2_OUTGOING_HANDLER: &str = "wasi:http/outgoing-handler@0.2.12";
/// The 0.3 import that sends.
pub(crate) const P3_CLIENT: &str = "wasi:http/client@0.3.0";

/// How long the response head may take when the guest sets no timeout of its own.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The hooks of one store: carries the attribution of the call being entered to
/// [`WasiHttpHooks::send_request`].
pub(crate) struct OutgoingHooks {
    /// `None` in stores that serve nothing.
    shared: Option<Arc<Shared>>,
    pending: Option<Result<Outgoing, AttribError>>,
}

impl OutgoingHooks {
    pub(crate) fn new(shared: Option<Arc<Shared>>) -> Self {
        OutgoingHooks {
            shared,
            pending: None,
        }
    }
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutgoingHooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_result: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let outgoing = match self.pending.take() {
            Some(Ok(outgoing)) => outgoing,
            Some(Err(error)) => {
                eprintln!("weft serve: an outgoing request was refused: {error}");
                return Box::new(async { Err(HttpError::HttpRequestDenied) });
            }
            None => {
                eprintln!(
                    "weft serve: internal error: an outgoing request came through no \
                     attributed import; refused"
                );
                return Box::new(async { Err(HttpError::HttpRequestDenied) });
            }
        };
        let shared = self.shared.clone();
        if let Some(shared) = &shared
            && let Some(incoming) = shared.requests.lock().unwrap().get(&outgoing.request)
            && let Some(span) = &incoming.trace
        {
            // The call is a child of the span of the request it is attributed to.
            span.inject(request.headers_mut());
        }
        let (tx, rx) = futures::channel::oneshot::channel();
        weft_sched::spawn(move || {
            let label = format!("{} {}", request.method(), request.uri());
            let span = shared.as_ref().and_then(|shared| {
                shared
                    .trace
                    .lock()
                    .unwrap()
                    .as_mut()
                    .and_then(|trace| {
                        trace
                            .outgoing_started(outgoing.request, Instant::now())
                            .ok()
                    })
                    .flatten()
            });
            let fallback;
            let upstreams = match &shared {
                Some(shared) => &shared.upstreams,
                None => {
                    fallback = Upstreams::default();
                    &fallback
                }
            };
            let result = send(upstreams, request, &outgoing.header_value, options);
            if let (Some(shared), Some(span)) = (&shared, span)
                && let Some(trace) = shared.trace.lock().unwrap().as_mut()
            {
                let status = match &result {
                    Ok(response) => serde_json::json!(response.status().as_u16()),
                    Err(error) => serde_json::json!(format!("{error:?}")),
                };
                let _ = trace.outgoing_finished(
                    span,
                    Instant::now(),
                    &label,
                    serde_json::json!({"id": outgoing.header_value, "status": status}),
                );
            }
            let _ = tx.send(result);
        });
        Box::new(async move {
            let response = rx.await.unwrap_or(Err(HttpError::InternalError(Some(
                "the sending green thread ended".to_string(),
            ))))?;
            // The connection is driven by a green thread of its own: nothing left to poll.
            let io: Box<dyn Future<Output = Result<(), HttpError>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, io))
        })
    }
}

/// Sends `request` carrying `header_value` as its `weft-request-id` (replacing any the guest
/// set) on a kept or new connection, and returns the response head with its body still
/// streaming. Runs in a green thread.
fn send(
    upstreams: &Upstreams,
    request: http::Request<WasiBody>,
    header_value: &str,
    options: Option<RequestOptions>,
) -> Result<http::Response<WasiBody>, HttpError> {
    let mut request = request;
    let origin = address(&mut request, header_value).map_err(|error| match error {
        Unaddressable::NotHttp => {
            HttpError::InternalError(Some("weft serve sends plain http only".to_string()))
        }
        Unaddressable::BadUri => HttpError::HttpRequestUriInvalid,
        Unaddressable::BadId => HttpError::InternalError(Some("bad request id".to_string())),
    })?;
    let first_byte_timeout = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(DEFAULT_TIMEOUT);
    let exchange = async move {
        let response = upstreams
            .send(&origin, request)
            .await
            .map_err(|error| match error {
                SendError::Refused => HttpError::ConnectionRefused,
                SendError::ConnectTimeout => HttpError::ConnectionTimeout,
                SendError::Connect(e) => HttpError::Connect(e),
                SendError::Http(e) => HttpError::from(e),
            })?;
        Ok::<_, HttpError>(response.map(|body| body.map_err(HttpError::from).boxed_unsync()))
    };
    with_deadline(first_byte_timeout, exchange).ok_or(HttpError::HttpResponseTimeout)?
}

/// Runs `future` on this green thread; `None` if `limit` passes first.
fn with_deadline<F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut timer = pin!(weft_sched::Sleep::new(limit));
    weft_sched::block_on(poll_fn(move |cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    }))
}

/// Attributes the outgoing call the running task is entering, for the hook to take.
fn attribute(mut store: impl AsContextMut<Data = ComponentState>) {
    let mut store = store.as_context_mut();
    let attributed = CallerStack::capture(&mut store).and_then(|stack| {
        if store.data_mut().attribution.is_none() {
            return Err(AttribError::Unattributed("store"));
        }
        attribution_of(store.data_mut()).record_outgoing(&stack)
    });
    store.data_mut().hooks.pending = Some(attributed);
}

fn http_view(state: &mut ComponentState) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
    state.http()
}

/// Shadows the imports that send with attributing versions (the linker must hold the
/// originals already).
pub(crate) fn shadow_senders(linker: &mut Linker<ComponentState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.instance(P2_OUTGOING_HANDLER)?.func_wrap(
        "handle",
        |mut store,
         (request, options): (
            Resource<HostOutgoingRequest>,
            Option<Resource<p2_types::RequestOptions>>,
        )| {
            attribute(&mut store);
            let result = store.data_mut().http().handle(request, options);
            store.data_mut().hooks.pending = None;
            let result: Result<Resource<HostFutureIncomingResponse>, p2_types::ErrorCode> =
                match result {
                    Ok(future) => Ok(future),
                    Err(error) => Err(error.downcast()?),
                };
            Ok((result,))
        },
    )?;
    linker.instance(P3_CLIENT)?.func_wrap_concurrent(
        "send",
        |accessor: &Accessor<ComponentState>, (request,): (Resource<p3_types::Request>,)| {
            Box::pin(async move {
                let http = accessor.with_getter::<WasiHttp>(http_view);
                let mut send = pin!(WasiHttp::send(&http, request));
                // The original calls the hook in its first poll, before it awaits anything.
                let first = poll_fn(|cx| {
                    accessor.with(|mut access| attribute(&mut access));
                    let polled = send.as_mut().poll(cx);
                    accessor.with(|mut access| access.get().hooks.pending = None);
                    Poll::Ready(polled)
                })
                .await;
                let result = match first {
                    Poll::Ready(result) => result,
                    Poll::Pending => send.await,
                };
                let result: Result<Resource<p3_types::Response>, p3_types::ErrorCode> = match result
                {
                    Ok(response) => Ok(response),
                    Err(error) => Err(error.downcast()?),
                };
                Ok((result,))
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
