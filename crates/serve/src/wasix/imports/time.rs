//! Timers: `sleep_start` opens a handle that is done after the given time.

use std::time::{Duration, Instant};

use wasmtime::{Caller, Linker};
use weft_wasix_context::Errno;

use super::memory::ret;
use super::{IMPORT_MODULE, with_guest};
use crate::wasix::state::HostState;

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        IMPORT_MODULE,
        "sleep_start",
        |mut caller: Caller<'_, HostState>, nanos: i64| {
            with_guest(&mut caller, |_, http, _| {
                ret((|| {
                    let nanos = u64::try_from(nanos).map_err(|_| Errno::Inval)?;
                    http.scheduler
                        .sleep(Instant::now(), Duration::from_nanos(nanos))
                        .ok_or(Errno::Again)
                })())
            })
        },
    )?;
    Ok(())
}
