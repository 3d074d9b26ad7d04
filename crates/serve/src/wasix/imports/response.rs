//! Writing the response: `response_status`, `response_header`, `response_write`,
//! `response_writable`, `response_finish`. The draft goes out whole at `response_finish` or
//! when the handler returns, unless its body outgrows the response buffer first: then its
//! head goes out and the body streams (see [`InstanceHttp::write_body`]).

use wasmtime::{Caller, Linker};
use weft_wasix_context::{Errno, WasixContexts};

use super::memory::{guest_slice, ret};
use super::{IMPORT_MODULE, current, with_guest};
use crate::wasix::instance::InstanceMsg;
use crate::wasix::scheduler::Operation;
use crate::wasix::state::{Draft, HostState, InstanceHttp};

/// The draft of the caller's request; `EALREADY` once its response went out.
fn draft<'a>(http: &'a mut InstanceHttp, contexts: &WasixContexts) -> Result<&'a mut Draft, Errno> {
    let request = current(http, contexts)?;
    http.requests
        .get_mut(&request)
        .and_then(|state| state.draft.as_mut())
        .ok_or(Errno::Already)
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        IMPORT_MODULE,
        "response_status",
        |mut caller: Caller<'_, HostState>, status: i32| {
            with_guest(&mut caller, |_, http, contexts| {
                ret((|| {
                    let draft = draft(http, contexts)?;
                    draft.head_open()?;
                    // HTTP/1.1 status codes are 100..=599; anything else would go out with no
                    // reason phrase a client understands.
                    let status = u16::try_from(status)
                        .ok()
                        .filter(|s| (100..=599).contains(s))
                        .ok_or(Errno::Inval)?;
                    draft.status = status;
                    Ok(0)
                })())
            })
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "response_header",
        |mut caller: Caller<'_, HostState>,
         name: i32,
         name_len: i32,
         value: i32,
         value_len: i32| {
            with_guest(&mut caller, |memory, http, contexts| {
                ret((|| {
                    let name = guest_slice(memory, name, name_len)?;
                    let value = guest_slice(memory, value, value_len)?;
                    let name = http::HeaderName::from_bytes(name).map_err(|_| Errno::Inval)?;
                    let value = http::HeaderValue::from_bytes(value).map_err(|_| Errno::Inval)?;
                    let limits = http.shared.settings.limits.clone();
                    let draft = draft(http, contexts)?;
                    draft.head_open()?;
                    // Checked before `HeaderMap` sees it: past its capacity it panics.
                    let bytes = draft.header_bytes + name.as_str().len() + value.len();
                    if draft.headers.len() >= limits.max_response_headers
                        || bytes > limits.max_response_header_bytes
                    {
                        return Err(Errno::Msgsize);
                    }
                    draft.header_bytes = bytes;
                    draft.headers.append(name, value);
                    Ok(0)
                })())
            })
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "response_write",
        |mut caller: Caller<'_, HostState>, buf: i32, len: i32| {
            with_guest(&mut caller, |memory, http, contexts| {
                ret((|| {
                    let bytes = guest_slice(memory, buf, len)?;
                    let request = current(http, contexts)?;
                    let taken = http.write_body(request, bytes)?;
                    // At most `len`, an i32.
                    Ok(i32::try_from(taken).unwrap_or(i32::MAX))
                })())
            })
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "response_writable",
        |mut caller: Caller<'_, HostState>| {
            with_guest(&mut caller, |_, http, contexts| {
                ret((|| {
                    let stream = draft(http, contexts)?
                        .stream
                        .as_ref()
                        .map(|writer| writer.stream().clone());
                    let handle = http
                        .scheduler
                        .open(Operation::Writable { done: false })
                        .ok_or(Errno::Again)?;
                    match stream {
                        // Held whole: there is room until the head goes out.
                        None => http.scheduler.writable(handle),
                        Some(stream) => {
                            let inbox = http.inbox.clone();
                            stream.on_writable(Box::new(move || {
                                let _ = inbox.send(InstanceMsg::Writable { handle });
                            }));
                        }
                    }
                    Ok(handle)
                })())
            })
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "response_finish",
        |mut caller: Caller<'_, HostState>| {
            with_guest(&mut caller, |_, http, contexts| {
                ret((|| {
                    let request = current(http, contexts)?;
                    if http.send_response(request) {
                        Ok(0)
                    } else {
                        Err(Errno::Already)
                    }
                })())
            })
        },
    )?;
    Ok(())
}
