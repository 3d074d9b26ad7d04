//! Reading the incoming request: `request_method`, `request_path`, `request_header`,
//! `request_body`. All follow the read convention of [`memory::read_into`].

use wasmtime::{Caller, Linker};
use weft_wasix_context::Errno;

use super::memory::{guest_slice, read_into, ret};
use super::{IMPORT_MODULE, current, with_guest};
use crate::dispatch::Incoming;
use crate::wasix::state::HostState;

/// Adds `name(buf, cap, offset)`: a read of what `field` picks from the caller's request.
fn add_read(
    linker: &mut Linker<HostState>,
    name: &str,
    field: fn(&Incoming) -> &[u8],
) -> wasmtime::Result<()> {
    linker.func_wrap(
        IMPORT_MODULE,
        name,
        move |mut caller: Caller<'_, HostState>, buf: i32, cap: i32, offset: i32| {
            with_guest(&mut caller, |memory, http, contexts| {
                ret(current(http, contexts).and_then(|request| {
                    let incoming = http.requests[&request].incoming.clone();
                    read_into(memory, buf, cap, offset, field(&incoming))
                }))
            })
        },
    )?;
    Ok(())
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    add_read(linker, "request_method", |incoming| {
        incoming.method.as_bytes()
    })?;
    add_read(linker, "request_path", |incoming| incoming.path.as_bytes())?;
    linker.func_wrap(
        IMPORT_MODULE,
        "request_header",
        |mut caller: Caller<'_, HostState>,
         name: i32,
         name_len: i32,
         buf: i32,
         cap: i32,
         offset: i32| {
            with_guest(&mut caller, |memory, http, contexts| {
                ret((|| {
                    let request = current(http, contexts)?;
                    let name = guest_slice(memory, name, name_len)?;
                    let name = http::HeaderName::from_bytes(name).map_err(|_| Errno::Noent)?;
                    let incoming = http.requests[&request].incoming.clone();
                    let value = incoming.headers.get(&name).ok_or(Errno::Noent)?;
                    read_into(memory, buf, cap, offset, value.as_bytes())
                })())
            })
        },
    )?;
    add_read(linker, "request_body", |incoming| &incoming.body)?;
    Ok(())
}
