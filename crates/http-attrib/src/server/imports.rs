//! The `weft_http` imports (the ABI of `guests/include/weft/http.h`). Each one is attributed
//! to the request the calling context works for. None of them blocks: waiting is the guest
//! switching to main after `block_on` (see `instance.rs`).
//!
//! Conventions: `>= 0` is success, `< 0` is minus a WASI errno; reads copy at most `cap`
//! bytes and return the full length; a buffer outside memory is `-EFAULT`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use wasmtime::{Caller, Extern, Linker};
use weft_wasix_context::WasixContexts;

use super::fetch::{FetchRequest, FetchResponse};
use super::instance::{HostState, InstanceHttp, InstanceMsg, OpHandle};
use crate::{Attribution, RequestId};

const MODULE: &str = "weft_http";

pub(crate) const EAGAIN: i32 = 6;
pub(crate) const EALREADY: i32 = 7;
pub(crate) const EBADF: i32 = 8;
pub(crate) const EFAULT: i32 = 21;
pub(crate) const EINVAL: i32 = 28;
pub(crate) const ENOENT: i32 = 44;

/// Runs `f` with the guest's memory, the instance's HTTP state and its contexts, after
/// bringing the context bookkeeping up to date.
fn with_guest<R>(
    caller: &mut Caller<'_, HostState>,
    f: impl FnOnce(&mut [u8], &mut InstanceHttp, &WasixContexts) -> R,
) -> wasmtime::Result<R> {
    let memory = caller
        .get_export("memory")
        .and_then(Extern::into_memory)
        .ok_or_else(|| wasmtime::Error::msg("the guest exports no `memory`"))?;
    let (memory, state) = memory.data_and_store_mut(caller);
    let HostState { contexts, http, .. } = state;
    let http = http
        .as_mut()
        .ok_or_else(|| wasmtime::Error::msg("weft_http called outside `weft serve`"))?;
    http.sync_contexts(contexts);
    Ok(f(memory, http, contexts))
}

fn guest_slice(memory: &[u8], ptr: i32, len: i32) -> Result<&[u8], i32> {
    let len = usize::try_from(len).map_err(|_| EINVAL)?;
    let start = ptr as u32 as usize;
    let end = start.checked_add(len).ok_or(EFAULT)?;
    memory.get(start..end).ok_or(EFAULT)
}

/// Copies up to `cap` bytes of `data` to `ptr`; the full length, or `-errno`.
fn copy_out(memory: &mut [u8], ptr: i32, cap: i32, data: &[u8]) -> i32 {
    let Ok(cap) = usize::try_from(cap) else {
        return -EINVAL;
    };
    let start = ptr as u32 as usize;
    let Some(dest) = start
        .checked_add(cap)
        .and_then(|end| memory.get_mut(start..end))
    else {
        return -EFAULT;
    };
    let n = cap.min(data.len());
    dest[..n].copy_from_slice(&data[..n]);
    i32::try_from(data.len()).unwrap_or(i32::MAX)
}

/// Copies `data[offset..]`, at most `cap` bytes: the number copied, or `-errno`.
fn copy_from_offset(memory: &mut [u8], ptr: i32, cap: i32, data: &[u8], offset: i32) -> i32 {
    let Ok(offset) = usize::try_from(offset) else {
        return -EINVAL;
    };
    let rest = data.get(offset..).unwrap_or(&[]);
    match copy_out(memory, ptr, cap, rest) {
        n if n < 0 => n,
        _ => rest.len().min(cap as usize) as i32,
    }
}

fn errno(result: Result<i32, i32>) -> i32 {
    result.unwrap_or_else(|e| -e)
}

/// The request the calling context works for, if it is live on this instance.
fn current(http: &InstanceHttp, contexts: &WasixContexts) -> Result<RequestId, i32> {
    let request = http
        .attribution
        .attribute(&contexts.active())
        .map_err(|_| EINVAL)?;
    if http.requests.contains_key(&request) {
        Ok(request)
    } else {
        Err(EINVAL)
    }
}

fn draft<'a>(
    http: &'a mut InstanceHttp,
    contexts: &WasixContexts,
) -> Result<&'a mut super::instance::Draft, i32> {
    let request = current(http, contexts)?;
    http.requests
        .get_mut(&request)
        .and_then(|state| state.draft.as_mut())
        .ok_or(EALREADY)
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        MODULE,
        "request_method",
        |mut caller: Caller<'_, HostState>, buf: i32, cap: i32| {
            with_guest(&mut caller, |memory, http, contexts| {
                errno(current(http, contexts).map(|request| {
                    let method = http.requests[&request].incoming.method.clone();
                    copy_out(memory, buf, cap, method.as_bytes())
                }))
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "request_path",
        |mut caller: Caller<'_, HostState>, buf: i32, cap: i32| {
            with_guest(&mut caller, |memory, http, contexts| {
                errno(current(http, contexts).map(|request| {
                    let incoming = http.requests[&request].incoming.clone();
                    copy_out(memory, buf, cap, incoming.path.as_bytes())
                }))
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "request_header",
        |mut caller: Caller<'_, HostState>, name: i32, name_len: i32, buf: i32, cap: i32| {
            with_guest(&mut caller, |memory, http, contexts| {
                errno((|| {
                    let request = current(http, contexts)?;
                    let name = guest_slice(memory, name, name_len)?;
                    let name = http::HeaderName::from_bytes(name).map_err(|_| ENOENT)?;
                    let incoming = http.requests[&request].incoming.clone();
                    let value = incoming.headers.get(&name).ok_or(ENOENT)?;
                    Ok(copy_out(memory, buf, cap, value.as_bytes()))
                })())
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "request_body",
        |mut caller: Caller<'_, HostState>, buf: i32, cap: i32, offset: i32| {
            with_guest(&mut caller, |memory, http, contexts| {
                errno(current(http, contexts).map(|request| {
                    let incoming = http.requests[&request].incoming.clone();
                    copy_from_offset(memory, buf, cap, &incoming.body, offset)
                }))
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "response_status",
        |mut caller: Caller<'_, HostState>, status: i32| {
            with_guest(&mut caller, |_, http, contexts| {
                errno((|| {
                    let draft = draft(http, contexts)?;
                    let status = u16::try_from(status).map_err(|_| EINVAL)?;
                    http::StatusCode::from_u16(status).map_err(|_| EINVAL)?;
                    draft.status = status;
                    Ok(0)
                })())
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "response_header",
        |mut caller: Caller<'_, HostState>,
         name: i32,
         name_len: i32,
         value: i32,
         value_len: i32| {
            with_guest(&mut caller, |memory, http, contexts| {
                errno((|| {
                    let name = guest_slice(memory, name, name_len)?;
                    let value = guest_slice(memory, value, value_len)?;
                    let name = http::HeaderName::from_bytes(name).map_err(|_| EINVAL)?;
                    let value = http::HeaderValue::from_bytes(value).map_err(|_| EINVAL)?;
                    draft(http, contexts)?.headers.append(name, value);
                    Ok(0)
                })())
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "response_write",
        |mut caller: Caller<'_, HostState>, buf: i32, len: i32| {
            with_guest(&mut caller, |memory, http, contexts| {
                errno((|| {
                    let bytes = guest_slice(memory, buf, len)?;
                    draft(http, contexts)?.body.extend_from_slice(bytes);
                    Ok(len)
                })())
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "response_finish",
        |mut caller: Caller<'_, HostState>| {
            with_guest(&mut caller, |_, http, contexts| {
                errno((|| {
                    let request = current(http, contexts)?;
                    if http.send_response(request) {
                        Ok(0)
                    } else {
                        Err(EALREADY)
                    }
                })())
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
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
                errno((|| {
                    let method = guest_slice(memory, method, method_len)?;
                    let url = guest_slice(memory, url, url_len)?;
                    let headers = guest_slice(memory, headers, headers_len)?;
                    let body = guest_slice(memory, body, body_len)?.to_vec();
                    let request = FetchRequest::parse(method, url, headers, body)?;
                    current(http, contexts)?;
                    let outgoing = http
                        .attribution
                        .record_outgoing(&contexts.active())
                        .map_err(|_| EINVAL)?;
                    let handle = http
                        .add_handle(OpHandle::Fetch { done: None })
                        .ok_or(EAGAIN)?;
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
                        let result = request.send(&outgoing.header_value);
                        if let Some(span) = span
                            && let Some(trace) = shared.trace.lock().unwrap().as_mut()
                        {
                            let status = match &result {
                                Ok(response) => serde_json::json!(response.status),
                                Err(errno) => serde_json::json!(format!("errno {errno}")),
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
        MODULE,
        "fetch_status",
        |mut caller: Caller<'_, HostState>, handle: i32| {
            with_guest(&mut caller, |_, http, _| {
                match fetched(&http.handles, handle) {
                    Ok(response) => i32::from(response.status),
                    Err(negative_errno) => negative_errno,
                }
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fetch_body",
        |mut caller: Caller<'_, HostState>, handle: i32, buf: i32, cap: i32, offset: i32| {
            with_guest(&mut caller, |memory, http, _| {
                match fetched(&http.handles, handle) {
                    Ok(response) => copy_from_offset(memory, buf, cap, &response.body, offset),
                    Err(negative_errno) => negative_errno,
                }
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "sleep_start",
        |mut caller: Caller<'_, HostState>, nanos: i64| {
            with_guest(&mut caller, |_, http, _| {
                let Ok(nanos) = u64::try_from(nanos) else {
                    return -EINVAL;
                };
                let Some(handle) = http.add_handle(OpHandle::Sleep { done: false }) else {
                    return -EAGAIN;
                };
                let now = Instant::now();
                // Capped at a day: beyond it `Instant` arithmetic could overflow.
                let delay = Duration::from_nanos(nanos).min(Duration::from_secs(86_400));
                http.timers.insert((now + delay, handle));
                handle
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "handle_ready",
        |mut caller: Caller<'_, HostState>, handle: i32| {
            with_guest(&mut caller, |_, http, _| match http.handles.get(&handle) {
                Some(op) => i32::from(op.is_done()),
                None => -EBADF,
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "block_on",
        |mut caller: Caller<'_, HostState>, handle: i32| {
            with_guest(&mut caller, |_, http, contexts| {
                let active = contexts.active();
                if active == 0 {
                    return -EINVAL;
                }
                if handle != 0 && !http.handles.contains_key(&handle) {
                    return -EBADF;
                }
                http.block_request = Some((active, handle));
                0
            })
        },
    )?;
    linker.func_wrap(MODULE, "context_self", |caller: Caller<'_, HostState>| {
        caller.data().contexts.active() as i64
    })?;
    linker.func_wrap(
        MODULE,
        "schedule",
        |mut caller: Caller<'_, HostState>, context: i64| {
            with_guest(&mut caller, |_, http, contexts| {
                let context = context as u64;
                if context == 0
                    || context == contexts.active()
                    || contexts.state(context) != Some(weft_wasix_context::ContextState::Suspended)
                {
                    return -EINVAL;
                }
                http.ready.push_back(context);
                0
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "handle_close",
        |mut caller: Caller<'_, HostState>, handle: i32| {
            with_guest(&mut caller, |_, http, _| {
                match http.handles.remove(&handle) {
                    Some(_) => {
                        http.timers.retain(|&(_, h)| h != handle);
                        // Anyone still waiting on it must not wait forever.
                        http.complete(handle);
                        0
                    }
                    None => -EBADF,
                }
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "log",
        |mut caller: Caller<'_, HostState>, level: i32, buf: i32, len: i32| {
            with_guest(&mut caller, |memory, http, contexts| {
                errno((|| {
                    let message = guest_slice(memory, buf, len)?;
                    let message = String::from_utf8_lossy(message);
                    let request = http.attribution.attribute(&contexts.active()).ok();
                    let (request_text, id) = match request {
                        Some(request) => (
                            request.to_string(),
                            http.shared.registry.lock().header_value(request),
                        ),
                        None => ("-".to_string(), "-".to_string()),
                    };
                    eprintln!(
                        "weft-guest level={} request={request_text} id={id} instance={} msg={:?}",
                        level.clamp(0, 3),
                        http.id,
                        message.trim_end_matches('\n')
                    );
                    Ok(0)
                })())
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "backpressure",
        |mut caller: Caller<'_, HostState>, on: i32| {
            with_guest(&mut caller, |_, http, _| {
                let result = http
                    .shared
                    .registry
                    .lock()
                    .set_backpressure(http.id, on != 0);
                if result.is_err() {
                    return -EINVAL;
                }
                // Lifting it may let queued requests start here.
                http.shared.pump();
                0
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "request_token",
        |mut caller: Caller<'_, HostState>| {
            with_guest(&mut caller, |_, http, contexts| {
                http.attribution
                    .attribute(&contexts.active())
                    .map_or(0, |request| request.get() as i64)
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "enter",
        |mut caller: Caller<'_, HostState>, token: i64| {
            with_guest(&mut caller, |_, http, contexts| {
                match http.attribution.enter(&contexts.active(), token as u64) {
                    Ok(_) => 0,
                    Err(_) => -EINVAL,
                }
            })
        },
    )?;
    linker.func_wrap(MODULE, "exit", |mut caller: Caller<'_, HostState>| {
        with_guest(&mut caller, |_, http, contexts| {
            match http.attribution.exit(&contexts.active()) {
                Ok(_) => 0,
                Err(_) => -EINVAL,
            }
        })
    })?;
    Ok(())
}

/// The finished fetch behind `handle`, or what the fetch imports answer instead: `-EAGAIN`
/// while it is in flight, `-errno` when it failed, `-EBADF` for a handle that is no fetch.
fn fetched(handles: &HashMap<i32, OpHandle>, handle: i32) -> Result<&FetchResponse, i32> {
    match handles.get(&handle) {
        Some(OpHandle::Fetch {
            done: Some(Ok(response)),
        }) => Ok(response),
        Some(OpHandle::Fetch { done: None }) => Err(-EAGAIN),
        Some(OpHandle::Fetch {
            done: Some(Err(errno)),
        }) => Err(-errno),
        _ => Err(-EBADF),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_out_returns_the_full_length_and_checks_bounds() {
        let mut memory = vec![0u8; 16];
        assert_eq!(copy_out(&mut memory, 4, 3, b"hello"), 5);
        assert_eq!(&memory[4..8], b"hel\0");
        assert_eq!(copy_out(&mut memory, 14, 4, b"hello"), -EFAULT);
        assert_eq!(copy_out(&mut memory, -1, 4, b"hello"), -EFAULT);
        assert_eq!(copy_out(&mut memory, 0, -1, b"x"), -EINVAL);
        assert_eq!(copy_out(&mut memory, 16, 0, b"x"), 1);
    }

    #[test]
    fn copy_from_offset_pages_through_data() {
        let mut memory = vec![0u8; 8];
        assert_eq!(copy_from_offset(&mut memory, 0, 4, b"abcdef", 0), 4);
        assert_eq!(copy_from_offset(&mut memory, 0, 4, b"abcdef", 4), 2);
        assert_eq!(&memory[..2], b"ef");
        assert_eq!(copy_from_offset(&mut memory, 0, 4, b"abcdef", 6), 0);
        assert_eq!(copy_from_offset(&mut memory, 0, 4, b"abcdef", 100), 0);
        assert_eq!(copy_from_offset(&mut memory, 0, 4, b"abcdef", -1), -EINVAL);
    }

    #[test]
    fn guest_slice_refuses_ranges_outside_memory() {
        let memory = [1u8; 8];
        assert_eq!(guest_slice(&memory, 2, 3), Ok(&memory[2..5]));
        assert_eq!(guest_slice(&memory, 6, 3), Err(EFAULT));
        assert_eq!(guest_slice(&memory, 0, -1), Err(EINVAL));
    }
}
