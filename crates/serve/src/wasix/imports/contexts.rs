//! Waiting and context scheduling: `handle_ready`, `block_on`, `handle_close`,
//! `context_self`, `schedule`. `block_on` only records the wait; the guest then switches to
//! main, and the instance's scheduler resumes it when the handle is done.

use wasmtime::{Caller, Linker};
use weft_wasix_context::{ContextState, Errno};

use super::memory::ret;
use super::{IMPORT_MODULE, with_guest};
use crate::wasix::scheduler::ScheduleError;
use crate::wasix::state::HostState;

fn schedule_errno(error: ScheduleError) -> Errno {
    match error {
        ScheduleError::BadHandle => Errno::Badf,
        ScheduleError::Invalid => Errno::Inval,
    }
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        IMPORT_MODULE,
        "handle_ready",
        |mut caller: Caller<'_, HostState>, handle: i32| {
            with_guest(&mut caller, |_, http, _| {
                ret(http
                    .scheduler
                    .operation(handle)
                    .map(|op| i32::from(op.is_done()))
                    .ok_or(Errno::Badf))
            })
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "block_on",
        |mut caller: Caller<'_, HostState>, handle: i32| {
            with_guest(&mut caller, |_, http, contexts| {
                ret(http
                    .scheduler
                    .block_on(contexts.active(), handle)
                    .map(|()| 0)
                    .map_err(schedule_errno))
            })
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "handle_close",
        |mut caller: Caller<'_, HostState>, handle: i32| {
            with_guest(&mut caller, |_, http, _| {
                ret(if http.scheduler.close(handle) {
                    Ok(0)
                } else {
                    Err(Errno::Badf)
                })
            })
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "context_self",
        |caller: Caller<'_, HostState>| -> i64 {
            // Context ids stay far below 2^63 (one per create).
            caller.data().contexts.active() as i64
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "schedule",
        |mut caller: Caller<'_, HostState>, context: i64| {
            with_guest(&mut caller, |_, http, contexts| {
                ret((|| {
                    let context = u64::try_from(context).map_err(|_| Errno::Inval)?;
                    if contexts.state(context) != Some(ContextState::Suspended) {
                        return Err(Errno::Inval);
                    }
                    http.scheduler
                        .schedule(contexts.active(), context)
                        .map_err(schedule_errno)?;
                    Ok(0)
                })())
            })
        },
    )?;
    Ok(())
}
