//! Outgoing requests: `fetch_start` (returns a handle at once; the request runs in a green
//! thread of its own, carrying the caller's request id), `fetch_status`, `fetch_body`.

use std::time::Instant;

use wasmtime::{Caller, Linker};
use weft_http_attrib::Attribution;
use weft_wasix_context::Errno;

use super::memory::{guest_slice, read_into, ret};
use super::{IMPORT_MODULE, current, with_guest};
use crate::wasix::fetch_client::{FetchRequest, FetchResponse};
use crate::wasix::instance::InstanceMsg;
use crate::wasix::scheduler::{HandleId, Operation, Scheduler};
use crate::wasix::state::HostState;

/// The finished fetch behind `handle`, or what the fetch imports answer instead: `EAGAIN`
/// while it is in flight, its errno when it failed, `EBADF` for a handle that is no fetch.
fn fetched(scheduler: &Scheduler, handle: HandleId) -> Result<&FetchResponse, Errno> {
    match scheduler.operation(handle) {
        Some(Operation::Fetch {
            done: Some(Ok(response)),
        }) => Ok(response),
        Some(Operation::Fetch { done: None }) => Err(Errno::Again),
        Some(Operation::Fetch {
            done: Some(Err(errno)),
        }) => Err(*errno),
        _ => Err(Errno::Badf),
    }
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        IMPORT_MODULE,
        "fetch_start",
        |mut caller: Caller<'_, HostState>,
         method: i32,
         method_len: i32,
         url: i32,
         url_len: i32,
         headers: i32,
         headers_len: i32,
         body: i32,
         body_len: i32| {
            with_guest(&mut caller, |memory, http, contexts| {
                ret((|| {
                    let method = guest_slice(memory, method, method_len)?;
                    let url = guest_slice(memory, url, url_len)?;
                    let headers = guest_slice(memory, headers, headers_len)?;
                    let body = guest_slice(memory, body, body_len)?.to_vec();
                    let mut request = FetchRequest::parse(method, url, headers, body)?;
                    current(http, contexts)?;
                    let outgoing = http
                        .attribution
                        .record_outgoing(&contexts.active())
                        .map_err(|_| Errno::Inval)?;
                    // The call is a child of the span of the request it is attributed to
                    // (which is on this instance: overrides cannot name another's requests).
                    let request_span = http
                        .requests
                        .get(&outgoing.request)
                        .and_then(|state| state.incoming.trace.as_ref());
                    if let Some(span) = request_span {
                        span.inject(&mut request.headers);
                    }
                    let client_span = crate::otlp::ClientSpan::start(
                        http.shared.otlp.as_ref(),
                        request_span,
                        &request.method,
                        &request.uri,
                    );
                    let handle = http
                        .scheduler
                        .open(Operation::Fetch { done: None })
                        .ok_or(Errno::Again)?;
                    let shared = http.shared.clone();
                    let inbox = http.inbox.clone();
                    let label = format!("{} {}", request.method, request.uri);
                    let span = shared
                        .trace
                        .lock()
                        .unwrap()
                        .as_mut()
                        .and_then(|trace| {
                            trace
                                .outgoing_started(outgoing.request, Instant::now())
                                .ok()
                        })
                        .flatten();
                    weft_sched::spawn(move || {
                        let result = request.send(&shared.upstreams, &outgoing.header_value);
                        if let Some(client_span) = client_span {
                            client_span
                                .finish(result.as_ref().map(|r| r.status).map_err(|e| e.name()));
                        }
                        if let Some(span) = span
                            && let Some(trace) = shared.trace.lock().unwrap().as_mut()
                        {
                            let status = match &result {
                                Ok(response) => serde_json::json!(response.status),
                                Err(errno) => serde_json::json!(errno.name()),
                            };
                            let _ = trace.outgoing_finished(
                                span,
                                Instant::now(),
                                &label,
                                serde_json::json!({"id": outgoing.header_value, "status": status}),
                            );
                        }
                        let _ = inbox.send(InstanceMsg::FetchDone { handle, result });
                    });
                    Ok(handle)
                })())
            })
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "fetch_status",
        |mut caller: Caller<'_, HostState>, handle: i32| {
            with_guest(&mut caller, |_, http, _| {
                ret(fetched(&http.scheduler, handle).map(|response| i32::from(response.status)))
            })
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "fetch_body",
        |mut caller: Caller<'_, HostState>, handle: i32, buf: i32, cap: i32, offset: i32| {
            with_guest(&mut caller, |memory, http, _| {
                ret(fetched(&http.scheduler, handle)
                    .and_then(|response| read_into(memory, buf, cap, offset, &response.body)))
            })
        },
    )?;
    Ok(())
}
