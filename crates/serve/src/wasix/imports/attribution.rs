//! Attribution and instance-wide calls: `request_token`, `enter`, `exit` (the scoped
//! override: "I work for that request now"), `log` (a line tagged with the request),
//! `backpressure` (no new requests for this instance while on).

use wasmtime::{Caller, Linker};
use weft_http_attrib::Attribution;
use weft_wasix_context::Errno;

use super::memory::{guest_slice, ret};
use super::{IMPORT_MODULE, with_guest};
use crate::wasix::state::HostState;

/// Longest log message kept; the rest is cut (a guest cannot make the host print megabytes
/// per call).
const MAX_LOG_LINE: usize = 4096;

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        IMPORT_MODULE,
        "request_token",
        |mut caller: Caller<'_, HostState>| {
            with_guest(&mut caller, |_, http, contexts| {
                // 0 (no request has it) for a context that works for none. Request ids
                // count up from 1 and stay far below 2^63.
                http.attribution
                    .attribute(&contexts.active())
                    .map_or(0, |request| request.get() as i64)
            })
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "enter",
        |mut caller: Caller<'_, HostState>, token: i64| {
            with_guest(&mut caller, |_, http, contexts| {
                ret((|| {
                    let token = u64::try_from(token).map_err(|_| Errno::Inval)?;
                    http.attribution
                        .enter(&contexts.active(), token)
                        .map_err(|_| Errno::Inval)?;
                    Ok(0)
                })())
            })
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "exit",
        |mut caller: Caller<'_, HostState>| {
            with_guest(&mut caller, |_, http, contexts| {
                ret(http
                    .attribution
                    .exit(&contexts.active())
                    .map(|_| 0)
                    .map_err(|_| Errno::Inval))
            })
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "log",
        |mut caller: Caller<'_, HostState>, level: i32, buf: i32, len: i32| {
            with_guest(&mut caller, |memory, http, contexts| {
                ret((|| {
                    let message = guest_slice(memory, buf, len)?;
                    let message =
                        String::from_utf8_lossy(&message[..message.len().min(MAX_LOG_LINE)]);
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
        IMPORT_MODULE,
        "backpressure",
        |mut caller: Caller<'_, HostState>, on: i32| {
            with_guest(&mut caller, |_, http, _| {
                let result = http
                    .shared
                    .registry
                    .lock()
                    .set_backpressure(http.id, on != 0);
                if result.is_err() {
                    return ret(Err(Errno::Inval));
                }
                // Lifting it may let queued requests start here.
                http.shared.pump();
                0
            })
        },
    )?;
    Ok(())
}
