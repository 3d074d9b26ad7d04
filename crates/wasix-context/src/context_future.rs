//! The one unsafe part of the crate: a context's call stack, kept as a suspended
//! `call_async` future whose store borrow is extended to `'static`.
//!
//! Wasmtime runs each `call_async` on its own fiber, and a suspended fiber is exactly a
//! suspended guest call stack: that is what a WASIX context is. But the future borrows the
//! store mutably for as long as it lives, and a context must outlive the host call that
//! started it (it stays suspended in the store's data between switches). So the future is
//! created from a `StoreContextMut` whose lifetime is extended to `'static`.
//!
//! # Invariants (upheld by the rest of the crate, each named where it is relied on)
//!
//! 1. **Exclusive, quiet access while polled or dropped.** A [`ContextFuture`] is polled or
//!    dropped only by code that itself holds `&mut` access to the same store (a `Caller` in
//!    a host function, or the `StoreContextMut` of a host-driven resume) and does not touch
//!    the store through that access until the poll or drop returns. The two `&mut` paths
//!    are then used one after the other, never interleaved, as with any reborrow.
//! 2. **Never polled from two places at once.** While a future runs it is *out* of the
//!    context table (held by the one driver polling it), so a host call made by the running
//!    context (create, destroy, switch) can never reach the future that is running it.
//! 3. **Dropped before the store.** Dropping a suspended future disposes its fiber, which
//!    resumes it once (wasmtime unwinds it with a "future dropped" error) and so needs the
//!    store alive. (A context suspended in its own `context_switch` is instead polled once
//!    more, by `crate::cancel`, to trap out of that switch, and then dropped finished: the
//!    same resumption and unwind, under the same conditions.) Every future is dropped on one
//!    of these paths: `context_destroy`, termination, the driver being dropped,
//!    [`crate::HostContexts::release_all`], and as the last resort [`Drop for WasixContexts`](crate::WasixContexts), which runs while the
//!    store's data is dropped: wasmtime 48 (`Store::drop`, `store.rs:2422`) drops `T`
//!    before it frees the store's internals, so the store the fiber resumes into is still
//!    whole. (During that last path wasmtime's call hooks, if any, must not read `T`.)
//! 4. **One store.** A future is only driven with the store it was created from: its state
//!    stays in that store's data (invariant 5 checks it; behind that, wasmtime itself panics
//!    on a mismatched store id, so a violation is loud, never silent).
//! 5. **Never touched once its state left the store.** Safe code can move a
//!    [`crate::WasixContexts`] out of the store's data (`mem::take`, `Store::into_data`) and
//!    drop it after the store, or put it into another store. So each future remembers the
//!    address of the `WasixContexts` that created it (stable while it sits in the store's
//!    boxed data) and is polled or disposed only through that same address ([`Owner`]);
//!    otherwise polling fails with a trap and disposing leaks the fiber instead of resuming it
//!    into a store that may be gone. An implicit drop (a path that forgot to dispose) leaks
//!    too: the safe default.
//!
//! Preemption ([`crate::WasixContexts::preempt_to_main`]) adds no new path: it only sets the
//! switch request from inside the running context's epoch callback (which, like a host call,
//! borrows the store data through the running fiber and never reaches a future: invariant 2),
//! and the epoch yield that follows is an ordinary `Pending` of the running future. Its
//! driver then saves the future into the table exactly as for a `context_switch` to main, so
//! it is later polled again by a driver holding the same store (1, 4, 5) or disposed by one
//! of the paths of invariant 3.

use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::task::{Context, Poll};

use wasmtime::{StoreContextMut, TypedFunc};

use crate::WasixContexts;

type BoxedCall = Pin<Box<dyn Future<Output = wasmtime::Result<()>> + Send>>;

/// Where a [`WasixContexts`] lives right now (invariant 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owner(usize);

impl Owner {
    pub(crate) fn of(state: &WasixContexts) -> Self {
        Owner(state as *const WasixContexts as usize)
    }
}

/// The trap a context gets if its state was moved out of the store that runs it.
#[derive(Debug, thiserror::Error)]
#[error("the WASIX context state was moved out of the store its contexts belong to")]
pub struct MovedState;

/// The suspended (or not yet started) call of a context's entrypoint.
pub(crate) struct ContextFuture {
    /// Dropped only by [`dispose`](Self::dispose) (invariant 5).
    call: ManuallyDrop<BoxedCall>,
    owner: Owner,
}

impl ContextFuture {
    /// Starts `entrypoint` as a new call stack; it runs on the first [`poll`](Self::poll).
    /// `owner` is the `WasixContexts` (in `store`'s data) that will keep it.
    pub(crate) fn start<T: Send + 'static>(
        store: StoreContextMut<'_, T>,
        entrypoint: TypedFunc<(), ()>,
        owner: Owner,
    ) -> Self {
        // SAFETY: the lifetime is the only thing changed (same type otherwise). The
        // resulting borrow is used only while invariants 1-5 of this module hold: the
        // future is polled and dropped under exclusive access to this same store, never
        // concurrently with another use, and always before the store is freed.
        let store: StoreContextMut<'static, T> = unsafe {
            std::mem::transmute::<StoreContextMut<'_, T>, StoreContextMut<'static, T>>(store)
        };
        ContextFuture {
            call: ManuallyDrop::new(Box::pin(
                async move { entrypoint.call_async(store, ()).await },
            )),
            owner,
        }
    }

    /// Runs the context until it suspends (`Pending`) or its entrypoint finishes.
    /// The caller upholds invariant 1: it holds `&mut` access to the store and does not
    /// use it during this call; `owner` is where the state is now.
    pub(crate) fn poll(
        &mut self,
        owner: Owner,
        cx: &mut Context<'_>,
    ) -> Poll<wasmtime::Result<()>> {
        if owner != self.owner {
            return Poll::Ready(Err(MovedState.into()));
        }
        self.call.as_mut().poll(cx)
    }

    /// Drops the call, which resumes a suspended fiber once to unwind it (invariant 3);
    /// leaks it instead if the state is no longer where it was (invariant 5). Same duty as
    /// [`poll`](Self::poll) for the caller.
    pub(crate) fn dispose(mut self, owner: Owner) {
        if owner == self.owner {
            // SAFETY: `call` is dropped exactly once: here, and `self` (which has no drop
            // glue for it) is consumed.
            unsafe { ManuallyDrop::drop(&mut self.call) }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Tests aimed at the invariants above: dropping suspended futures through each path
    //! must neither crash nor leak, including while the store itself is being dropped.
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Waker;
    use wasmtime::{Config, Engine, Linker, Module, Store};

    /// A guest whose entrypoint calls a host function that stays pending once; a
    /// counter tells how many times the host future was dropped (fiber disposed).
    fn setup() -> (Store<Arc<AtomicUsize>>, TypedFunc<(), ()>) {
        let engine = Engine::new(&Config::new()).unwrap();
        let module = Module::new(
            &engine,
            r#"(module
                (import "host" "pause" (func $pause))
                (func (export "entry") call $pause call $pause))"#,
        )
        .unwrap();
        let mut linker: Linker<Arc<AtomicUsize>> = Linker::new(&engine);
        linker
            .func_wrap_async("host", "pause", |caller, ()| {
                let disposed = caller.data().clone();
                Box::new(PendingOnce {
                    polled: false,
                    on_drop: disposed,
                })
            })
            .unwrap();
        let mut store = Store::new(&engine, Arc::new(AtomicUsize::new(0)));
        let instance = poll_ready(linker.instantiate_async(&mut store, &module)).unwrap();
        let entry = instance.get_typed_func(&mut store, "entry").unwrap();
        (store, entry)
    }

    struct PendingOnce {
        polled: bool,
        on_drop: Arc<AtomicUsize>,
    }
    impl Future for PendingOnce {
        type Output = wasmtime::Result<()>;
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
            if std::mem::replace(&mut self.polled, true) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
    }
    impl Drop for PendingOnce {
        fn drop(&mut self) {
            self.on_drop.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_ready<F: Future>(future: F) -> F::Output {
        match std::pin::pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(output) => output,
            Poll::Pending => panic!("instantiation does not wait"),
        }
    }

    const HERE: Owner = Owner(1);
    const ELSEWHERE: Owner = Owner(2);

    fn poll_once(future: &mut ContextFuture) -> Poll<wasmtime::Result<()>> {
        future.poll(HERE, &mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn suspended_future_disposed_before_store_unwinds_its_fiber() {
        let (mut store, entry) = setup();
        let mut future = ContextFuture::start(store.as_context_mut(), entry.clone(), HERE);
        assert!(poll_once(&mut future).is_pending());
        future.dispose(HERE);
        assert_eq!(store.data().load(Ordering::SeqCst), 1);
        // The store is still usable afterwards: a fresh call runs to completion.
        let mut again = ContextFuture::start(store.as_context_mut(), entry, HERE);
        assert!(poll_once(&mut again).is_pending());
        assert!(poll_once(&mut again).is_pending());
        assert!(matches!(poll_once(&mut again), Poll::Ready(Ok(()))));
        again.dispose(HERE);
    }

    #[test]
    fn finished_and_unstarted_futures_dispose_without_resuming() {
        let (mut store, entry) = setup();
        let unstarted = ContextFuture::start(store.as_context_mut(), entry, HERE);
        unstarted.dispose(HERE);
        assert_eq!(store.data().load(Ordering::SeqCst), 0);
    }

    /// Invariant 5: a future whose state moved is neither run nor resumed to be disposed,
    /// and an implicit drop leaks rather than resume into a store that may be gone.
    #[test]
    fn a_future_away_from_its_owner_is_never_touched() {
        let (mut store, entry) = setup();
        let mut future = ContextFuture::start(store.as_context_mut(), entry.clone(), HERE);
        assert!(poll_once(&mut future).is_pending());
        let moved = future.poll(ELSEWHERE, &mut Context::from_waker(Waker::noop()));
        assert!(matches!(moved, Poll::Ready(Err(e)) if e.downcast_ref::<MovedState>().is_some()));
        future.dispose(ELSEWHERE);
        {
            let mut dropped = ContextFuture::start(store.as_context_mut(), entry, HERE);
            assert!(poll_once(&mut dropped).is_pending());
            // Goes out of scope without `dispose`.
        }
        assert_eq!(
            store.data().load(Ordering::SeqCst),
            0,
            "both leaked, none resumed"
        );
        drop(store);
    }

    /// Invariant 3's last resort: the future lives in the store's own data and is
    /// disposed while the store drops that data (as `Drop for WasixContexts` does).
    #[test]
    fn suspended_future_inside_store_data_is_disposed_on_store_drop() {
        struct Data {
            future: Option<ContextFuture>,
            disposed: Arc<AtomicUsize>,
        }
        impl Drop for Data {
            fn drop(&mut self) {
                if let Some(future) = self.future.take() {
                    future.dispose(HERE);
                }
            }
        }
        let engine = Engine::new(&Config::new()).unwrap();
        let module = Module::new(
            &engine,
            r#"(module (import "host" "pause" (func $pause))
                       (func (export "entry") call $pause))"#,
        )
        .unwrap();
        let mut linker: Linker<Data> = Linker::new(&engine);
        linker
            .func_wrap_async("host", "pause", |caller: wasmtime::Caller<'_, Data>, ()| {
                Box::new(PendingOnce {
                    polled: false,
                    on_drop: caller.data().disposed.clone(),
                })
            })
            .unwrap();
        let disposed = Arc::new(AtomicUsize::new(0));
        let mut store = Store::new(
            &engine,
            Data {
                future: None,
                disposed: disposed.clone(),
            },
        );
        let instance = poll_ready(linker.instantiate_async(&mut store, &module)).unwrap();
        let entry = instance.get_typed_func(&mut store, "entry").unwrap();
        let mut future = ContextFuture::start(store.as_context_mut(), entry, HERE);
        assert!(poll_once(&mut future).is_pending());
        store.data_mut().future = Some(future);
        drop(store);
        assert_eq!(disposed.load(Ordering::SeqCst), 1);
    }

    use wasmtime::AsContextMut;
}
