//! Writing the response: `response_status`, `response_header`, `response_write`,
//! `response_finish`. The draft goes out at `response_finish` or when the handler returns.

use wasmtime::{Caller, Linker};
use weft_wasix_context::{Errno, WasixContexts};

use super::memory::{guest_slice, ret};
use super::{IMPORT_MODULE, current, with_guest};
use crate::wasix::state::{Draft, HostState, InstanceHttp};

/// The draft of the caller's request; `EALREADY` once its response went out.
fn draft<'a>(
    http: &'a mut InstanceHttp,
    contexts: &WasixContexts,
) -> Result<&'a mut Draft, Errno> {
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
                    let status = u16::try_from(status).map_err(|_| Errno::Inval)?;
                    http::StatusCode::from_u16(status).map_err(|_| Errno::Inval)?;
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
                    draft(http, contexts)?.headers.append(name, value);
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
                    draft(http, contexts)?.body.extend_from_slice(bytes);
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
