//! Attribution for component-model async guests.
//!
//! Rules: each request runs as a root task started by the host with
//! `start_call_concurrent`; its `GuestTaskId` is bound to the request's
//! [`RequestId`] before any guest code runs. A host import, on entry (before
//! its first real `.await`, after which wasmtime 48 no longer shows the call
//! stack), captures the async call stack: the root task names the request, and
//! an override entered by the current task takes precedence.
//!
//! `GuestTaskId` is a table slot with no generation: a slot is reused once its
//! task is deleted. A root task is bound at start and only looked up while it
//! is on a live call stack, so a lookup always finds the right request; when
//! a new root task gets a slot we still hold, that proves the old task exited,
//! and its request's work is finished then. Task exit is otherwise only
//! reported for the whole store (`poll_no_interesting_tasks`), so that is
//! where requests still doing post-response work finish.

use std::collections::HashMap;
use std::task::{Context, Poll};
use std::time::Instant;

use wasmtime::AsContextMut;
use wasmtime::component::{
    Accessor, ComponentNamedList, Func, FuncCallConcurrent, GuestTaskId, HasData, Lift,
    LinkerInstance, Lower, TypedFunc, TypedFuncCallConcurrent, Val,
};

use crate::attribution::{AttribError, Attribution, OverrideStacks, SharedRegistry};
use crate::ids::{InstanceId, RequestId};
use crate::registry::Summary;

/// Where a host import was called from: captured on entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerStack {
    /// The task that called the import.
    pub current: GuestTaskId,
    /// The export call the host started: the root of the async call stack.
    pub root: GuestTaskId,
}

impl CallerStack {
    /// Reads the async call stack of the running task. Call it when a host
    /// import is entered, before anything is awaited.
    pub fn capture(mut store: impl AsContextMut) -> Result<Self, AttribError> {
        let mut store = store.as_context_mut();
        let mut stack = store
            .async_call_stack()
            .map_err(|e| AttribError::Wasmtime(e.to_string()))?;
        let current = stack.next().ok_or(AttribError::NotInTask)?;
        let root = stack.last().unwrap_or(current);
        Ok(CallerStack { current, root })
    }
}

/// A request's root task was started.
#[derive(Debug)]
pub struct Started<C> {
    /// Await it with `finish_call_concurrent`; it resolves when the task
    /// returns (its response), which may be before the task exits.
    pub call: C,
    /// The root task, now bound to the request.
    pub task: GuestTaskId,
    /// The request whose root task held the same slot before: that task has
    /// exited, so the request's work is finished; `finished` is its summary
    /// when it had answered.
    pub displaced: Option<(RequestId, Option<Summary>)>,
}

/// Attribution state of one component instance (one Store). Keep it in the
/// store's data and hand the functions here a getter for it.
#[derive(Debug)]
pub struct ComponentAttribution {
    registry: SharedRegistry,
    instance: InstanceId,
    roots: HashMap<GuestTaskId, RequestId>,
    overrides: OverrideStacks<GuestTaskId>,
    /// The root each override stack was entered under: a stack found under a
    /// different root belongs to an earlier task in a reused slot.
    override_roots: HashMap<GuestTaskId, GuestTaskId>,
    /// The backpressure last mirrored into the registry (`None`: not yet): the
    /// registry is told only of changes, not at every poll.
    mirrored_backpressure: Option<bool>,
}

impl ComponentAttribution {
    /// State for `instance`, a component instance registered in `registry`;
    /// no task is bound until a call is started.
    pub fn new(registry: SharedRegistry, instance: InstanceId) -> Self {
        ComponentAttribution {
            registry,
            instance,
            roots: HashMap::new(),
            overrides: OverrideStacks::new(),
            override_roots: HashMap::new(),
            mirrored_backpressure: None,
        }
    }

    /// Binds a new root task to `request` (which must be started on this
    /// instance). Use [`ComponentAttribution::start_call`] or
    /// [`ComponentAttribution::start_typed_call`], which call this before
    /// the task can run.
    pub fn bind_root(
        &mut self,
        task: GuestTaskId,
        request: RequestId,
        now: Instant,
    ) -> Result<Option<(RequestId, Option<Summary>)>, AttribError> {
        let mut registry = self.registry.lock();
        registry.validate_token(self.instance, request.get())?;
        let displaced = match self.roots.insert(task, request) {
            Some(old) if registry.is_live(old) => Some((old, registry.work_finished(old, now)?)),
            Some(old) => Some((old, None)),
            None => None,
        };
        drop(registry);
        if displaced.is_some() {
            self.overrides.forget(task);
            self.override_roots.remove(&task);
            self.forget_overrides_under(task);
        }
        Ok(displaced)
    }

    fn forget_overrides_under(&mut self, root: GuestTaskId) {
        let stale: Vec<GuestTaskId> = self
            .override_roots
            .iter()
            .filter(|(_, r)| **r == root)
            .map(|(&t, _)| t)
            .collect();
        for task in stale {
            self.override_roots.remove(&task);
            self.overrides.forget(task);
        }
    }

    /// Starts `func` as the root task of `request`.
    pub fn start_call<'a, T: Send + 'static>(
        mut store: impl AsContextMut<Data = T>,
        get: fn(&mut T) -> &mut ComponentAttribution,
        func: Func,
        params: &'a [Val],
        results: &'a mut [Val],
        request: RequestId,
        now: Instant,
    ) -> Result<Started<FuncCallConcurrent<'a, T>>, AttribError> {
        let mut store = store.as_context_mut();
        get(store.data_mut()).check_startable(request)?;
        let call = func
            .start_call_concurrent(&mut store, params, results)
            .map_err(|e| AttribError::Wasmtime(e.to_string()))?;
        let task = call.task();
        let displaced = get(store.data_mut()).bind_root(task, request, now)?;
        Ok(Started {
            call,
            task,
            displaced,
        })
    }

    /// Starts the typed `func` as the root task of `request`.
    pub fn start_typed_call<T, P, R>(
        mut store: impl AsContextMut<Data = T>,
        get: fn(&mut T) -> &mut ComponentAttribution,
        func: TypedFunc<P, R>,
        params: P,
        request: RequestId,
        now: Instant,
    ) -> Result<Started<TypedFuncCallConcurrent<T, P, R>>, AttribError>
    where
        T: Send + 'static,
        P: ComponentNamedList + Lower + 'static,
        R: ComponentNamedList + Lift + 'static,
    {
        let mut store = store.as_context_mut();
        get(store.data_mut()).check_startable(request)?;
        let call = func
            .start_call_concurrent(&mut store, params)
            .map_err(|e| AttribError::Wasmtime(e.to_string()))?;
        let task = call.task();
        let displaced = get(store.data_mut()).bind_root(task, request, now)?;
        Ok(Started {
            call,
            task,
            displaced,
        })
    }

    fn check_startable(&self, request: RequestId) -> Result<(), AttribError> {
        self.registry
            .lock()
            .validate_token(self.instance, request.get())?;
        Ok(())
    }

    /// The request a root task was started for, if it is still bound.
    pub fn request_of(&self, task: GuestTaskId) -> Option<RequestId> {
        self.roots.get(&task).copied()
    }

    /// Root tasks bound and not yet seen to exit.
    pub fn bound_roots(&self) -> usize {
        self.roots.len()
    }

    /// Every task of the store has exited: every bound request's work is
    /// finished. Returns the requests that finished by it.
    pub fn all_tasks_exited(&mut self, now: Instant) -> Result<Vec<Summary>, AttribError> {
        let mut bound: Vec<RequestId> = self.roots.drain().map(|(_, r)| r).collect();
        bound.sort();
        self.overrides.clear();
        self.override_roots.clear();
        let mut registry = self.registry.lock();
        let mut finished = Vec::new();
        for request in bound {
            if registry.is_live(request)
                && let Some(summary) = registry.work_finished(request, now)?
            {
                finished.push(summary);
            }
        }
        Ok(finished)
    }

    /// Keep-alive: `Ready` once every task of the store has exited (requests
    /// still working after their response keep it `Pending`), having
    /// finished the bound requests (see
    /// [`ComponentAttribution::all_tasks_exited`]). Call it inside
    /// `run_concurrent`; wasmtime keeps one waker per store for this.
    pub fn poll_idle<T, D: HasData + ?Sized>(
        accessor: &Accessor<T, D>,
        get: fn(&mut T) -> &mut ComponentAttribution,
        cx: &mut Context<'_>,
        now: Instant,
    ) -> Poll<Result<Vec<Summary>, AttribError>> {
        match accessor.poll_no_interesting_tasks(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                Poll::Ready(accessor.with(|mut access| {
                    get(access.as_context_mut().data_mut()).all_tasks_exited(now)
                }))
            }
        }
    }

    /// Backpressure: whether the instance behind `func` takes a concurrent
    /// call now, mirrored into the registry so new requests go elsewhere (or
    /// wait) while the guest holds `backpressure.inc`. When `Pending`, the
    /// waker fires once the guest lifts it (or any instance in the store
    /// becomes callable: poll again).
    pub fn poll_ready<T, D: HasData + ?Sized>(
        accessor: &Accessor<T, D>,
        get: fn(&mut T) -> &mut ComponentAttribution,
        func: Func,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), AttribError>> {
        let ready = accessor.poll_ready_for_concurrent_call(func, cx);
        let result = accessor.with(|mut access| {
            let mut store = access.as_context_mut();
            let this = get(store.data_mut());
            let on = ready.is_pending();
            if this.mirrored_backpressure == Some(on) {
                return Ok(());
            }
            let result = this.registry.lock().set_backpressure(this.instance, on);
            if result.is_ok() {
                this.mirrored_backpressure = Some(on);
            }
            result
        });
        match (ready, result) {
            (_, Err(e)) => Poll::Ready(Err(e.into())),
            (Poll::Ready(()), Ok(())) => Poll::Ready(Ok(())),
            (Poll::Pending, Ok(())) => Poll::Pending,
        }
    }

    /// The store is being dropped: bound requests whose tasks were not seen
    /// to exit end here. Those that had answered are drained with their
    /// root task counted as one straggler; those that had not get
    /// [`Outcome::NoResponse`](crate::Outcome::NoResponse). Requests the
    /// instance handed over ([`Registry::handed_over`](crate::Registry::handed_over))
    /// are no longer its own: whoever sends their response finishes them.
    pub fn store_dropped(&mut self, now: Instant) -> Result<Vec<Summary>, AttribError> {
        let mut bound: Vec<RequestId> = self.roots.drain().map(|(_, r)| r).collect();
        bound.sort();
        self.overrides.clear();
        self.override_roots.clear();
        let mut registry = self.registry.lock();
        let mut finished = Vec::new();
        for request in bound {
            if !registry.is_live(request) || registry.was_handed_over(request) {
                continue;
            }
            let responded = registry.has_responded(request);
            let summary = if responded {
                registry.drained(request, 1, now)?
            } else {
                registry.no_response(request, now)?
            };
            finished.push(summary);
        }
        Ok(finished)
    }

    /// Defines the guest-facing attribution imports in `linker`:
    /// - `current-request: func() -> u64`: the token of the request the
    ///   caller works for (0 if none), to hand to a worker;
    /// - `enter: func(token: u64) -> bool`: scoped override; false (and no
    ///   effect) for a token that is not a live request of this instance;
    /// - `exit: func() -> bool`: ends the innermost override; false if none.
    pub fn add_scope_to_linker<T: 'static>(
        linker: &mut LinkerInstance<'_, T>,
        get: fn(&mut T) -> &mut ComponentAttribution,
    ) -> wasmtime::Result<()> {
        linker.func_wrap("current-request", move |mut store, (): ()| {
            let token = CallerStack::capture(&mut store)
                .and_then(|stack| get(store.data_mut()).attribute(&stack))
                .map_or(0, RequestId::get);
            Ok((token,))
        })?;
        linker.func_wrap("enter", move |mut store, (token,): (u64,)| {
            let entered = CallerStack::capture(&mut store)
                .and_then(|stack| get(store.data_mut()).enter(&stack, token));
            Ok((entered.is_ok(),))
        })?;
        linker.func_wrap("exit", move |mut store, (): ()| {
            let exited = CallerStack::capture(&mut store)
                .and_then(|stack| get(store.data_mut()).exit(&stack));
            Ok((exited.is_ok(),))
        })?;
        Ok(())
    }
}

impl Attribution for ComponentAttribution {
    type Caller = CallerStack;

    fn instance(&self) -> InstanceId {
        self.instance
    }

    fn registry(&self) -> &SharedRegistry {
        &self.registry
    }

    fn attribute(&self, caller: &CallerStack) -> Result<RequestId, AttribError> {
        let entered = self
            .overrides
            .top(caller.current)
            .filter(|_| self.override_roots.get(&caller.current) == Some(&caller.root));
        entered
            .or_else(|| self.roots.get(&caller.root).copied())
            .ok_or(AttribError::Unattributed("task"))
    }

    fn enter(&mut self, caller: &CallerStack, token: u64) -> Result<RequestId, AttribError> {
        let request = self.registry.lock().validate_token(self.instance, token)?;
        if self.override_roots.get(&caller.current) != Some(&caller.root) {
            // Left behind by an earlier task in the same slot.
            self.overrides.forget(caller.current);
        }
        self.overrides.push(caller.current, request)?;
        self.override_roots.insert(caller.current, caller.root);
        Ok(request)
    }

    fn exit(&mut self, caller: &CallerStack) -> Result<RequestId, AttribError> {
        if self.override_roots.get(&caller.current) != Some(&caller.root) {
            return Err(AttribError::UnbalancedExit);
        }
        let request = self.overrides.pop(caller.current)?;
        if self.overrides.top(caller.current).is_none() {
            self.override_roots.remove(&caller.current);
        }
        Ok(request)
    }
}
