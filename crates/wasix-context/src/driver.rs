//! The driver: main's side of a switch. It polls the active context's future until that
//! context switches back to main, finishes, or waits for something real (then the
//! driver is `Pending` too, and its own caller's executor wakes it up).
//!
//! Only main drives (a guest main inside its `context_switch`, or the host in
//! [`crate::HostContexts::resume`]); a context switching to another context merely
//! suspends itself and the driver resumes the target. So contexts nest at most one deep
//! under main, whatever the switching pattern.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use wasmtime::{AsContextMut, StoreContextMut};

use crate::context_future::{ContextFuture, Owner};
use crate::shadow_stack::{check_active, check_active_at};
use crate::{ContextEvent, ContextId, GuestBinding, MAIN_CONTEXT, WasixContexts};

/// How driving ended when no trap ended it. A returned entrypoint is reported as a value,
/// not as an error: [`crate::HostContexts::resume`] expects it at the end of every request,
/// and a `wasmtime::Error` would capture a backtrace (with `RUST_BACKTRACE` set) only to
/// be thrown away. Guest main turns it into the [`crate::EntrypointReturned`] trap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// A context switched to main.
    SwitchedToMain,
    /// This context's entrypoint returned; it is terminated.
    Returned(ContextId),
}

pub(crate) struct Driver<'a, T, G>
where
    T: Send + 'static,
    G: Fn(&mut T) -> &mut WasixContexts + Copy,
{
    store: StoreContextMut<'a, T>,
    get: G,
    guest: GuestBinding,
    /// The active context and its future, out of the table while it runs (invariant 2 of
    /// `context_future`).
    running: Option<(ContextId, ContextFuture)>,
    /// Main called through a rewritten guest's switch wrapper, which restores main's
    /// `__stack_pointer` itself when its switch returns.
    main_restores_itself: bool,
}

impl<'a, T, G> Driver<'a, T, G>
where
    T: Send + 'static,
    G: Fn(&mut T) -> &mut WasixContexts + Copy,
{
    /// Switches from main to `target` (a suspended context, checked by the caller) and
    /// returns the future that runs contexts until main is switched back to.
    /// `main_stack_pointer` is given when main's own switch wrapper restores it.
    pub fn start(
        mut store: StoreContextMut<'a, T>,
        get: G,
        target: ContextId,
        main_stack_pointer: Option<u32>,
    ) -> wasmtime::Result<Self> {
        let state = get(store.data_mut());
        let guest = state
            .guest
            .expect("a context exists, so the guest was bound when it was created");
        let main_sp = match main_stack_pointer {
            Some(sp) => sp,
            None => guest.stack_pointer.get(&mut store),
        };
        let state = get(store.data_mut());
        state.main_stack_pointer = main_sp;
        state.requested_switch = None;
        state.switch_stack_pointer = None;
        state.switch_in_host = false;
        state.table.switch(MAIN_CONTEXT, target);
        let mut driver = Driver {
            store,
            get,
            guest,
            running: None,
            main_restores_itself: main_stack_pointer.is_some(),
        };
        driver.enter(target);
        Ok(driver)
    }

    /// Makes `id` (now active in the table) the running context: restores its stack
    /// pointer (unless its switch wrapper will) and takes out its future, starting its
    /// entrypoint on first entry.
    fn enter(&mut self, id: ContextId) {
        let state = (self.get)(self.store.data_mut());
        let owner = Owner::of(state);
        let slot = state
            .table
            .payload_mut(id)
            .expect("the active context is in the table");
        let sp = (!slot.restores_itself).then_some(slot.saved_stack_pointer);
        let future = slot.future.take();
        let entrypoint = if future.is_none() {
            slot.entrypoint.take()
        } else {
            None
        };
        if let Some(sp) = sp {
            self.guest.stack_pointer.set(&mut self.store, sp);
        }
        let future = match (future, entrypoint) {
            (Some(future), _) => future,
            (None, Some(entrypoint)) => {
                ContextFuture::start(self.store.as_context_mut(), entrypoint, owner)
            }
            (None, None) => unreachable!("a suspended context has its future or its entrypoint"),
        };
        self.running = Some((id, future));
    }

    /// The running context finished or was abandoned: it becomes terminated, its future
    /// disposed, its region freed, and main's stack pointer is back.
    fn terminate_running(&mut self) {
        let running = self.running.take();
        let state = (self.get)(self.store.data_mut());
        let owner = Owner::of(state);
        let id = state.table.terminate_active();
        state.events.push(ContextEvent::Terminated { id });
        if let Some(region) = state
            .table
            .payload_mut(id)
            .and_then(|slot| slot.region.take())
        {
            state.shadow_stacks.release(region);
        }
        let main_sp = state.main_stack_pointer;
        self.guest.stack_pointer.set(&mut self.store, main_sp);
        if let Some((_, future)) = running {
            // Invariant 1 of `context_future`: we hold the store and leave it alone meanwhile.
            future.dispose(owner);
        }
    }
}

impl<T, G> Future for Driver<'_, T, G>
where
    T: Send + 'static,
    G: Fn(&mut T) -> &mut WasixContexts + Copy + Unpin,
{
    type Output = wasmtime::Result<Ended>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let owner = Owner::of((this.get)(this.store.data_mut()));
            let (id, future) = this
                .running
                .as_mut()
                .expect("a driver is polled only while a context runs");
            let id = *id;
            // Invariant 1 of `context_future`: `this.store` is ours and unused while polled.
            let poll = future.poll(owner, cx);
            match poll {
                Poll::Ready(result) => {
                    // A request served by a context that never switches ends here: the last
                    // chance to name an overflow instead of leaving it to the next request.
                    let result = result.and_then(|()| Ok(check_active(&mut this.store, this.get)?));
                    this.terminate_running();
                    return Poll::Ready(result.map(|()| Ended::Returned(id)));
                }
                Poll::Pending => {
                    let state = (this.get)(this.store.data_mut());
                    let Some(target) = state.requested_switch.take() else {
                        // Waiting on something real (I/O, an epoch yield): so are we.
                        return Poll::Pending;
                    };
                    // Before its stack pointer is saved: a context that overflowed must not
                    // run again, nor let anyone else run over what it overwrote.
                    // A rewritten guest passed its stack pointer, and restores it on return.
                    let in_switch = std::mem::take(&mut state.switch_in_host);
                    let (sp, restores_itself) = match state.switch_stack_pointer.take() {
                        Some(sp) => (sp, true),
                        None => (this.guest.stack_pointer.get(&mut this.store), false),
                    };
                    if let Err(overflow) = check_active_at(&mut this.store, this.get, sp) {
                        this.terminate_running();
                        return Poll::Ready(Err(overflow.into()));
                    }
                    let (_, future) = this.running.take().expect("it was just polled");
                    let state = (this.get)(this.store.data_mut());
                    let slot = state
                        .table
                        .payload_mut(id)
                        .expect("the running context is in the table");
                    slot.saved_stack_pointer = sp;
                    slot.restores_itself = restores_itself;
                    slot.in_switch = in_switch;
                    slot.future = Some(future);
                    state.table.switch(id, target);
                    if target == MAIN_CONTEXT {
                        if !this.main_restores_itself {
                            let main_sp = state.main_stack_pointer;
                            this.guest.stack_pointer.set(&mut this.store, main_sp);
                        }
                        return Poll::Ready(Ok(Ended::SwitchedToMain));
                    }
                    this.enter(target);
                }
            }
        }
    }
}

impl<T, G> Drop for Driver<'_, T, G>
where
    T: Send + 'static,
    G: Fn(&mut T) -> &mut WasixContexts + Copy,
{
    fn drop(&mut self) {
        // Dropped while a context still runs (main's call was cancelled, or a panic
        // unwinds through us): that context can never continue where it was, so it is
        // terminated and its future disposed here, while we still hold the store
        // (invariant 3 of `context_future`).
        if self.running.is_some() {
            self.terminate_running();
        }
    }
}
