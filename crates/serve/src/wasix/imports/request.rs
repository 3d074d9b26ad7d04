//! Reading the incoming request: `request_method`, `request_path`, `request_header`,
//! `request_body`. All follow the read convention of [`memory::read_into`].

use wasmtime::{Caller, Linker};
use weft_wasix_context::Errno;

use super::memory::{guest_slice, read_into, ret};
use super::{IMPORT_MODULE, current, with_guest};
use crate::wasix::state::HostState;

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        IMPORT_MODULE,
        "request_method",
        |mut caller: Caller<'_, HostState>, buf: i32, cap: i32, offset: i32| {
            with_guest(&mut caller, |memory, http, contexts| {
                ret(current(http, contexts).and_then(|request| {
                    let incoming = http.requests[&request].incoming.clone();
                    read_into(memory, buf, cap, offset, incoming.method.as_bytes())
                }))
            })
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "request_path",
        |mut caller: Caller<'_, HostState>, buf: i32, cap: i32, offset: i32| {
            with_guest(&mut caller, |memory, http, contexts| {
                ret(current(http, contexts).and_then(|request| {
                    let incoming = http.requests[&request].incoming.clone();
                    read_into(memory, buf, cap, offset, incoming.path.as_bytes())
                }))
            })
        },
    )?;
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
    linker.func_wrap(
        IMPORT_MODULE,
        "request_body",
        |mut caller: Caller<'_, HostState>, buf: i32, cap: i32, offset: i32| {
            with_guest(&mut caller, |memory, http, contexts| {
                ret(current(http, contexts).and_then(|request| {
                    let incoming = http.requests[&request].incoming.clone();
                    read_into(memory, buf, cap, offset, &incoming.body)
                }))
            })
        },
    )?;
    Ok(())
}
