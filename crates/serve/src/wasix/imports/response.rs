//! Writing the response: `response_status`, `response_header`, `response_write`,
//! `response_finish`. The draft goes out at `response_finish` or when the handler returns.

use wasmtime::{Caller, Linker};
use weft_wasix_context::{Errno, WasixContexts};

use super::memory::{guest_slice, ret};
use super::{IMPORT_MODULE, current, with_guest};
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
                    let max = http.shared.settings.limits.max_response_body;
                    let draft = draft(http, contexts)?;
                    if draft.body.len() + bytes.len() > max {
                        return Err(Errno::Msgsize);
                    }
                    draft.body.extend_from_slice(bytes);
                    Ok(len)
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
