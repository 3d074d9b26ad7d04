#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod cancel;
mod context_future;
mod driver;
mod errno;
mod events;
mod guest_file;
mod host_access;
mod host_stacks;
mod rewrite;
mod shadow_stack;
mod table;
#[cfg(test)]
mod tests;

use wasmtime::{
    AsContextMut, Caller, Engine, Extern, ExternType, Instance, Linker, Memory, Module, Ref,
    RefType, StoreContextMut, Table, TypedFunc,
};

pub use context_future::MovedState;
use context_future::{ContextFuture, Owner};
use driver::{Driver, Ended};
pub use errno::Errno;
use events::EventLog;
pub use events::{ContextEvent, Entrypoint};
pub use guest_file::{
    GuestFileError, LoadError, MissingImport, check_entry, check_imports, first_missing_import,
    load_core_module, read_core_module,
};
pub use host_access::grant_host_access;
pub use host_stacks::{ContextBudget, PooledStacks};
pub use rewrite::{SAVING_MODULE, SAVING_SWITCH, rewrite_guest};
pub use shadow_stack::ShadowStackOverflow;
use shadow_stack::{Region, ShadowStacks, StackPointer, check_active, check_active_at};
pub use table::ContextState;
use table::{ContextTable, SwitchPlan};

/// A context id as the guest sees it.
pub type ContextId = u64;

/// The main context's id (`wasix_context_main` in wasix-libc).
pub const MAIN_CONTEXT: ContextId = 0;

/// The import module of the wasm32 API.
pub const IMPORT_MODULE: &str = "wasix_32v1";

/// Why a guest cannot use the context API safely. Reported by [`check_module`] at load time
/// and, at the latest, as a trap at the guest's first `context_create`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IncompatibleGuest {
    /// No exported `__stack_pointer` global.
    #[error(
        "the guest does not export its `__stack_pointer` global, which weft needs to give each \
         WASIX context its own shadow stack; link it with `-Wl,--export=__stack_pointer` \
         (`cargo xtask cc` does)"
    )]
    MissingStackPointer,
    /// `__stack_pointer` is exported but is not a mutable i32 global.
    #[error("the guest exports `__stack_pointer`, but not as a mutable i32 global")]
    BadStackPointer,
    /// No linear memory exported as `memory`.
    #[error("the guest does not export its linear memory as `memory`")]
    MissingMemory,
    /// No funcref table exported as `__indirect_function_table`.
    #[error(
        "the guest does not export a funcref table `__indirect_function_table`, which context \
         entrypoints index; link it with `-Wl,--export-table` (`cargo xtask cc` does)"
    )]
    MissingTable,
    /// The store's [`WasixContexts`] are already bound to another instance.
    #[error(
        "this store's WASIX contexts already belong to another instance; give each instance \
         that uses contexts its own store"
    )]
    ForeignInstance,
}

/// The trap main receives when a context's entrypoint returns (entrypoints must switch away,
/// never return). `weft run` exits with status 129 on it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("WASIX context {id} returned from its entrypoint (entrypoints must never return)")]
pub struct EntrypointReturned {
    /// The context whose entrypoint returned (now terminated).
    pub id: ContextId,
}

/// Why the host could not start or resume a context.
#[derive(Debug, thiserror::Error)]
pub enum HostCallError {
    /// The instance cannot use the context API.
    #[error(transparent)]
    Incompatible(#[from] IncompatibleGuest),
    /// [`HostContexts::spawn`] found no export of that name and type `[] -> []`.
    #[error("the guest has no export `{0}` of type [] -> []")]
    NoSuchEntrypoint(String),
    /// The errno the guest's call would have got (limit, memory, a context in the wrong
    /// state).
    #[error(transparent)]
    Errno(#[from] Errno),
    /// A context runs: the host acts as main only while main is the active context.
    #[error("a context is already running; the host can only resume from the main context")]
    Busy,
    /// The [`WasixContexts`] left the store data it was bound in.
    #[error(transparent)]
    Moved(#[from] MovedState),
}

/// Limits of one instance's contexts.
#[derive(Clone, Debug)]
pub struct ContextConfig {
    /// Live contexts (suspended or terminated but not yet destroyed) per instance, main
    /// not counted. `context_create` beyond it fails with `EAGAIN`.
    pub max_contexts: usize,
    /// Live contexts that may still need a native stack (created, not yet terminated or
    /// destroyed), counted across every store sharing this budget; `context_create` and
    /// [`HostContexts::spawn`] beyond it fail with `EAGAIN`. The default is the
    /// process-wide [`ContextBudget::process`], sized from the kernel's mapping limit.
    pub live_context_budget: ContextBudget,
    /// Bytes of linear memory given to each context as its C shadow stack.
    pub shadow_stack_size: usize,
    /// Bytes of native stack wasm frames may use in each context (and in main): wasmtime's
    /// `max_wasm_stack`. Each stack gets [`HOST_STACK_HEADROOM`] more for the host functions
    /// (WASI) the guest calls, so a deep guest traps cleanly instead of leaving host code no
    /// room. Engine settings: apply them with [`ContextConfig::configure_engine`].
    pub stack_size: usize,
    /// Take context stacks from a weft-fiber [`StackPool`](weft_fiber::StackPool) that
    /// recycles them ([`PooledStacks`]) instead of wasmtime mapping one per context (an
    /// engine setting too).
    pub pooled_stacks: bool,
    /// Record [`ContextEvent`]s for the embedder to drain with
    /// [`WasixContexts::take_events`]. Off by default: nothing is recorded and nothing is
    /// paid.
    pub record_events: bool,
    /// With `record_events`, the most events kept between two
    /// [`take_events`](WasixContexts::take_events); later ones are discarded and counted in
    /// [`WasixContexts::dropped_events`]. An embedder that drains at every host call never
    /// gets near it; it bounds the memory of one that does not.
    pub max_pending_events: usize,
}

impl Default for ContextConfig {
    fn default() -> Self {
        ContextConfig {
            max_contexts: 16 * 1024,
            live_context_budget: ContextBudget::process(),
            shadow_stack_size: 64 * 1024,
            stack_size: 512 * 1024,
            pooled_stacks: true,
            record_events: false,
            max_pending_events: 64 * 1024,
        }
    }
}

/// Native stack kept above the wasm budget of each stack for host functions (wasmtime's own
/// default keeps 1.5 MiB; WASI preview 1 calls need far less). Untouched pages cost no memory.
pub const HOST_STACK_HEADROOM: usize = 512 * 1024;

/// The smallest wasm stack budget [`ContextConfig::configure_engine`] applies.
pub const MIN_STACK_SIZE: usize = 16 * 1024;

impl ContextConfig {
    /// Applies `stack_size` (plus [`HOST_STACK_HEADROOM`]) and `pooled_stacks` to an engine
    /// configuration.
    pub fn configure_engine(&self, config: &mut wasmtime::Config) {
        let wasm_stack = self.stack_size.max(MIN_STACK_SIZE);
        let stack = wasm_stack + HOST_STACK_HEADROOM;
        config.async_stack_size(stack);
        config.max_wasm_stack(wasm_stack);
        if self.pooled_stacks {
            config.with_host_stack(PooledStacks::with_budget(
                stack,
                self.max_contexts.min(1024),
                self.live_context_budget.clone(),
            ));
        }
    }
}

/// Checks, before instantiating, that a guest importing the context API exports what the
/// host-managed shadow stacks need. Guests that do not import the API always pass.
pub fn check_module(module: &Module) -> Result<(), IncompatibleGuest> {
    if !module
        .imports()
        .any(|import| import.module() == IMPORT_MODULE || import.module() == SAVING_MODULE)
    {
        return Ok(());
    }
    let export = |name: &str| module.exports().find(|e| e.name() == name).map(|e| e.ty());
    match export("__stack_pointer") {
        None => return Err(IncompatibleGuest::MissingStackPointer),
        Some(ExternType::Global(global))
            if global.mutability() == wasmtime::Mutability::Var
                && matches!(global.content(), wasmtime::ValType::I32) => {}
        Some(_) => return Err(IncompatibleGuest::BadStackPointer),
    }
    if !matches!(export("memory"), Some(ExternType::Memory(_))) {
        return Err(IncompatibleGuest::MissingMemory);
    }
    match export("__indirect_function_table") {
        Some(ExternType::Table(table)) if table.element().matches(&RefType::FUNCREF) => Ok(()),
        _ => Err(IncompatibleGuest::MissingTable),
    }
}

/// The exports of the instance whose contexts this state manages.
#[derive(Clone, Copy, Debug)]
struct GuestBinding {
    memory: Memory,
    table: Table,
    stack_pointer: StackPointer,
}

impl GuestBinding {
    /// Checks the exports the shadow stacks and entrypoints need.
    fn from_exports(
        store: impl AsContextMut,
        stack_pointer: Option<Extern>,
        memory: Option<Extern>,
        table: Option<Extern>,
    ) -> Result<Self, IncompatibleGuest> {
        let stack_pointer = StackPointer::new(&store, stack_pointer.and_then(Extern::into_global))?;
        let memory = memory
            .and_then(Extern::into_memory)
            .ok_or(IncompatibleGuest::MissingMemory)?;
        let table = table
            .and_then(Extern::into_table)
            .filter(|table| table.ty(&store).element().matches(&RefType::FUNCREF))
            .ok_or(IncompatibleGuest::MissingTable)?;
        Ok(GuestBinding {
            memory,
            table,
            stack_pointer,
        })
    }
}

/// The guest binding of the store's instance, looked up (and checked) on first use. Later
/// calls only check that they come from that same instance (its memory).
fn binding<T, S>(
    store: &mut S,
    get: impl Fn(&mut T) -> &mut WasixContexts + Copy,
    mut export: impl FnMut(&mut S, &str) -> Option<Extern>,
) -> Result<GuestBinding, IncompatibleGuest>
where
    T: Send + 'static,
    S: AsContextMut<Data = T>,
{
    let memory = export(store, "memory");
    if let Some(guest) = get(store.as_context_mut().data_mut()).guest {
        let bound = guest.memory.data_ptr(&*store);
        return match memory.and_then(Extern::into_memory) {
            Some(memory) if memory.data_ptr(&*store) == bound => Ok(guest),
            _ => Err(IncompatibleGuest::ForeignInstance),
        };
    }
    let stack_pointer = export(store, "__stack_pointer");
    let table = export(store, "__indirect_function_table");
    let guest = GuestBinding::from_exports(&mut *store, stack_pointer, memory, table)?;
    let mut store = store.as_context_mut();
    let engine = store.engine().clone();
    let state = get(store.data_mut());
    state.guest = Some(guest);
    state.engine = Some(engine);
    state.home = Some(Owner::of(state));
    Ok(guest)
}

/// What the table keeps per context.
struct Slot {
    /// Taken when the context first runs (cloning a `TypedFunc` costs a type-registry
    /// round trip, too much for every switch).
    entrypoint: Option<TypedFunc<(), ()>>,
    /// `None` until first resumed, and while the context runs (its driver holds it).
    future: Option<ContextFuture>,
    saved_stack_pointer: u32,
    /// The context suspended inside a rewritten guest's switch wrapper, which puts
    /// `saved_stack_pointer` back in `__stack_pointer` itself when it resumes
    /// ([`rewrite_guest`]); otherwise (first entry, preempted, an unrewritten guest) the host
    /// must.
    restores_itself: bool,
    /// The context is suspended in its own `context_switch`, where destroying it can end its
    /// call cheaply ([`cancel`]); otherwise (preempted, never run) it is disposed.
    in_switch: bool,
    /// Released when the context terminates.
    region: Option<Region>,
}

/// The per-store state of the context API. Put one in your store's data and hand
/// [`add_to_linker`] an accessor to it.
pub struct WasixContexts {
    table: ContextTable<Slot>,
    shadow_stacks: ShadowStacks,
    guest: Option<GuestBinding>,
    /// Main's `__stack_pointer` while another context runs.
    main_stack_pointer: u32,
    /// Set by a non-main context's `context_switch` just before it suspends.
    requested_switch: Option<ContextId>,
    /// With `requested_switch`, when the switch came through [`SAVING_SWITCH`]: the
    /// context's `__stack_pointer`, which its wrapper restores itself on resumption.
    switch_stack_pointer: Option<u32>,
    /// With `requested_switch`, when it came from `context_switch` (not a preemption).
    switch_in_host: bool,
    /// The engine of the bound instance's store (to make the error [`cancel`] recycles).
    engine: Option<Engine>,
    /// Where this state sat in its store's data when it bound its instance: every entry
    /// point refuses to run elsewhere (invariant 5 of `context_future`).
    home: Option<Owner>,
    /// Lifecycle events not yet taken by the embedder (empty unless recording).
    events: EventLog,
    /// Entrypoints already type-checked.
    entrypoints: EntrypointCache,
}

/// Identifies a function within its store: the address of its `VMFuncRef`, which the
/// store owns and never frees or reuses while it lives. The cache that holds these keys
/// belongs to a [`WasixContexts`] that only ever serves one store (invariant 5 of
/// `context_future`, checked by every entry point before it looks anything up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EntrypointKey(usize);

impl EntrypointKey {
    fn of<T>(store: &mut StoreContextMut<'_, T>, func: wasmtime::Func) -> Self {
        EntrypointKey(func.to_raw(store).addr())
    }
}

/// The last few entrypoints type-checked as `[] -> []`, most recent replacing the oldest.
#[derive(Default)]
struct EntrypointCache {
    entries: Vec<(EntrypointKey, TypedFunc<(), ()>)>,
    /// The entry the next insertion replaces once the cache is full.
    next: usize,
}

impl EntrypointCache {
    const CAPACITY: usize = 8;

    fn get(&self, key: EntrypointKey) -> Option<TypedFunc<(), ()>> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, typed)| typed.clone())
    }

    fn insert(&mut self, key: EntrypointKey, typed: TypedFunc<(), ()>) {
        if self.entries.len() < Self::CAPACITY {
            self.entries.push((key, typed));
        } else {
            self.entries[self.next] = (key, typed);
            self.next = (self.next + 1) % Self::CAPACITY;
        }
    }
}

impl WasixContexts {
    /// Empty state with these limits; it binds to the first instance that uses it.
    pub fn new(config: ContextConfig) -> Self {
        WasixContexts {
            table: ContextTable::new(config.max_contexts, config.live_context_budget),
            shadow_stacks: ShadowStacks::new(config.shadow_stack_size),
            guest: None,
            main_stack_pointer: 0,
            requested_switch: None,
            switch_stack_pointer: None,
            switch_in_host: false,
            engine: None,
            home: None,
            events: EventLog::new(config.record_events, config.max_pending_events),
            entrypoints: EntrypointCache::default(),
        }
    }

    /// `MovedState` if this state was moved away from the store data it was bound in.
    fn check_home(&self) -> Result<(), MovedState> {
        match self.home {
            Some(home) if home != Owner::of(self) => Err(MovedState),
            _ => Ok(()),
        }
    }

    /// The active context (main when no context runs).
    pub fn active(&self) -> ContextId {
        self.table.active()
    }

    /// Contexts created and not yet destroyed (main not counted).
    pub fn live_contexts(&self) -> usize {
        self.table.len()
    }

    /// The state of `id`; `None` once destroyed or if it never existed.
    pub fn state(&self, id: ContextId) -> Option<ContextState> {
        self.table.state(id)
    }

    /// Takes the [`ContextEvent`]s recorded since the last call, oldest first (the returned
    /// `Drain` removes them all, even if dropped unread). Always empty unless
    /// [`ContextConfig::record_events`] is on.
    ///
    /// # Contract
    ///
    /// Events accumulate between two calls, as many as the guest's work in between produces:
    /// three per context at most (created, terminated, destroyed), but a guest can create and
    /// destroy contexts in a loop without calling back into the embedder. So call it at every
    /// host call the guest makes into the embedder and after every
    /// [`HostContexts::resume`] (and after [`HostContexts::release_all`]); then the list
    /// stays small. It is bounded anyway: at most [`ContextConfig::max_pending_events`] are
    /// kept, later ones are discarded and counted by [`dropped_events`](Self::dropped_events).
    /// Events are never reordered, merged or dropped otherwise, so when `dropped_events()`
    /// is 0 the drained list is exact and complete.
    pub fn take_events(&mut self) -> std::vec::Drain<'_, ContextEvent> {
        self.events.take()
    }

    /// Events discarded since the last [`take_events`](Self::take_events) because
    /// [`ContextConfig::max_pending_events`] were already pending (the oldest are kept, the
    /// newest discarded). Check it before draining: when it is not 0, the drained list
    /// misses events at its end, and the embedder must resynchronize from
    /// [`state`](Self::state) and [`live_contexts`](Self::live_contexts). `take_events`
    /// resets it to 0.
    pub fn dropped_events(&self) -> usize {
        self.events.dropped()
    }

    /// Preemption, for hosts that play main themselves ([`HostContexts`], e.g. a server
    /// running one context per request): asks that the active context be switched back to
    /// main at its next suspension. Call it from an epoch-deadline callback that then returns
    /// [`wasmtime::UpdateDeadline::Yield`]: the yield suspends the context's call, its driver
    /// sees the request, saves the context where it stands (suspended, like any context that
    /// switched to main) and [`HostContexts::resume`] returns [`Resumed::SwitchedToMain`].
    /// Resuming it later finishes the yield and the wasm continues where it was interrupted.
    ///
    /// `true` if a preemption was requested: a non-main context is active and no switch is
    /// pending. `false` otherwise (main is active, or the context is already switching), and
    /// then nothing changes.
    ///
    /// Not for guests that run their own `main`: there the driver is main's
    /// `context_switch`, which would return to main's code as if the context had switched to
    /// it, behind the guest scheduler's back.
    ///
    /// The context is interrupted anywhere, not where its program switches: until it is
    /// resumed, run no other context of the instance and create none in it (which grows
    /// memory for a shadow stack) unless the guest is written to be interrupted anywhere. A C
    /// guest is not: its allocator could be met half-way through an update, or find memory
    /// grown between two of its own `memory.grow`s and take the new shadow stack for heap.
    pub fn preempt_to_main(&mut self) -> bool {
        if self.table.active() == MAIN_CONTEXT || self.requested_switch.is_some() {
            return false;
        }
        self.requested_switch = Some(MAIN_CONTEXT);
        true
    }

    /// Checks that the active context's C frames stayed within its shadow-stack region: its
    /// `__stack_pointer` inside it and the canary in its lowest 16 bytes intact. `Ok` while
    /// main is active (main's stack is the guest's own) or before the guest created a context.
    ///
    /// weft checks this itself at every `context_*` call a context makes, before a context's
    /// stack pointer is saved (a switch, a preemption) and when its entrypoint returns. Call
    /// it also at the start of your own host functions (`get` is the projection given to
    /// [`add_to_linker`]) and trap with the error: then a context that overflowed cannot
    /// reach your code with memory it has overwritten. It costs a global read, two compares
    /// and a 16-byte compare. It borrows the store, not `&self`, because reading a global
    /// needs the store mutably.
    pub fn check_active_shadow_stack<T: 'static>(
        store: impl AsContextMut<Data = T>,
        get: impl Fn(&mut T) -> &mut WasixContexts,
    ) -> Result<(), ShadowStackOverflow> {
        check_active(store, get)
    }

    /// Removes every context and releases its region and its call stack, recording a
    /// `Destroyed` event for each (in id order). The caller holds the store and leaves it
    /// alone meanwhile (invariant 1 of `context_future`).
    fn release_everything(&mut self) {
        self.requested_switch = None;
        self.switch_stack_pointer = None;
        self.switch_in_host = false;
        let owner = Owner::of(self);
        let mut futures = Vec::new();
        let mut ids = Vec::new();
        let recording = self.events.is_recording();
        for (id, slot) in self.table.drain() {
            if let Some(region) = slot.region {
                self.shadow_stacks.release(region);
            }
            futures.extend(slot.future.map(|future| (future, slot.in_switch)));
            if recording {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        for id in ids {
            self.events.push(ContextEvent::Destroyed { id });
        }
        for (future, in_switch) in futures {
            match &self.engine {
                Some(engine) if in_switch => {
                    cancel::cancel(future, owner, cancel::error(|| engine.clone()));
                }
                _ => future.dispose(owner),
            }
        }
    }
}

impl Default for WasixContexts {
    fn default() -> Self {
        WasixContexts::new(ContextConfig::default())
    }
}

impl Drop for WasixContexts {
    fn drop(&mut self) {
        // Invariant 3 of `context_future`: the last-resort path, while the store drops its
        // data (the store itself is still whole). Disposing resumes each fiber once; a state
        // moved out of its store leaks them instead (invariant 5). Nobody can take events
        // any more, so none are recorded.
        self.events.stop_recording();
        self.release_everything();
    }
}

/// Adds `wasix_32v1.context_create`, `context_switch` and `context_destroy` to `linker`, and
/// the [`SAVING_SWITCH`] that guests rewritten by [`rewrite_guest`] call instead of
/// `context_switch`.
/// `get` projects the store data to its [`WasixContexts`]. Guests must be entered with
/// `call_async` (`context_switch` is an async host function).
pub fn add_to_linker<T, G>(linker: &mut Linker<T>, get: G) -> wasmtime::Result<()>
where
    T: Send + 'static,
    G: Fn(&mut T) -> &mut WasixContexts + Copy + Send + Sync + Unpin + 'static,
{
    linker.func_wrap(
        IMPORT_MODULE,
        "context_create",
        move |mut caller: Caller<'_, T>, new_context_ptr: i32, entrypoint: i32| {
            context_create(&mut caller, get, new_context_ptr as u32, entrypoint as u32)
        },
    )?;
    linker.func_wrap_async(
        IMPORT_MODULE,
        "context_switch",
        move |caller: Caller<'_, T>, (target,): (i64,)| {
            Box::new(context_switch(caller, get, target as u64, None))
        },
    )?;
    linker.func_wrap_async(
        SAVING_MODULE,
        SAVING_SWITCH,
        move |caller: Caller<'_, T>, (target, stack_pointer): (i64, i32)| {
            Box::new(context_switch(
                caller,
                get,
                target as u64,
                Some(stack_pointer as u32),
            ))
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "context_destroy",
        move |mut caller: Caller<'_, T>, id: i64| -> wasmtime::Result<i32> {
            get(caller.data_mut()).check_home()?;
            check_active(&mut caller, get)?;
            Ok(errno_result(destroy(&mut caller, get, id as u64)))
        },
    )?;
    Ok(())
}

fn errno_result(result: Result<(), Errno>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(errno) => errno.raw(),
    }
}

fn context_create<T: Send + 'static>(
    caller: &mut Caller<'_, T>,
    get: impl Fn(&mut T) -> &mut WasixContexts + Copy,
    new_context_ptr: u32,
    entrypoint: u32,
) -> wasmtime::Result<i32> {
    get(caller.data_mut()).check_home()?;
    // An incompatible guest traps here, with the reason, instead of corrupting memory.
    let guest = binding(caller, get, |caller, name| caller.get_export(name))?;
    check_active(&mut *caller, get)?;
    let mut store = caller.as_context_mut();
    let result = create_inner(
        &mut store,
        get,
        guest,
        Some(new_context_ptr),
        Entrypoint::Table(entrypoint),
        |store| match guest.table.get(store, u64::from(entrypoint)) {
            Some(Ref::Func(Some(func))) => Some(func),
            _ => None,
        },
    );
    Ok(errno_result(result.map(|_| ())))
}

/// `func` as a `[] -> []` entrypoint, or `None` if it has another type.
///
/// `Func::typed` loads the function's type from the engine's type registry twice (a lock
/// and reference-count traffic each time), which dominated `context_create`; guests start
/// their contexts on a handful of functions, so the checked `TypedFunc`s are kept
/// ([`EntrypointCache`]) and cloned.
fn typed_entrypoint<T: Send + 'static>(
    store: &mut StoreContextMut<'_, T>,
    get: impl Fn(&mut T) -> &mut WasixContexts + Copy,
    func: wasmtime::Func,
) -> Option<TypedFunc<(), ()>> {
    let key = EntrypointKey::of(store, func);
    if let Some(typed) = get(store.data_mut()).entrypoints.get(key) {
        return Some(typed);
    }
    let typed = func.typed::<(), ()>(&*store).ok()?;
    get(store.data_mut()).entrypoints.insert(key, typed.clone());
    Some(typed)
}

/// Creates a suspended context running the function `resolve` finds; writes its id at
/// `new_context_ptr` when the guest asked (host calls get it returned). Records `Created`
/// with the active context as the creator.
fn create_inner<T: Send + 'static>(
    store: &mut StoreContextMut<'_, T>,
    get: impl Fn(&mut T) -> &mut WasixContexts + Copy,
    guest: GuestBinding,
    new_context_ptr: Option<u32>,
    kind: Entrypoint,
    resolve: impl FnOnce(&mut StoreContextMut<'_, T>) -> Option<wasmtime::Func>,
) -> Result<ContextId, Errno> {
    let func = resolve(store).ok_or(Errno::Inval)?;
    let entrypoint = typed_entrypoint(store, get, func).ok_or(Errno::Inval)?;
    if let Some(ptr) = new_context_ptr {
        let end = u64::from(ptr) + 8;
        if end > guest.memory.data_size(&*store) as u64 {
            return Err(Errno::Fault);
        }
    }
    // Argument errors first, then the resource limits, as POSIX calls do. The stack-budget
    // unit is taken here, although wasmtime maps the stack only at the first resume: there
    // a refusal could only trap. Host spawns may use the budget's host reserve.
    let reservation = get(store.data_mut())
        .table
        .reserve(new_context_ptr.is_none())?;
    let mut shadow_stacks = std::mem::replace(
        &mut get(store.data_mut()).shadow_stacks,
        ShadowStacks::new(0),
    );
    let region = shadow_stacks.allocate(&mut *store, guest.memory);
    let state = get(store.data_mut());
    state.shadow_stacks = shadow_stacks;
    let region = region?;
    let id = state.table.insert(
        Slot {
            entrypoint: Some(entrypoint),
            future: None,
            saved_stack_pointer: state.shadow_stacks.top(region),
            restores_itself: false,
            in_switch: false,
            region: Some(region),
        },
        reservation,
    );
    let creator = state.table.active();
    state.events.push(ContextEvent::Created {
        id,
        creator,
        entrypoint: kind,
    });
    if let Some(ptr) = new_context_ptr {
        guest
            .memory
            .write(&mut *store, ptr as usize, &id.to_le_bytes())
            .expect("bounds were checked above and memory never shrinks");
    }
    Ok(id)
}

/// `stack_pointer` is the caller's `__stack_pointer` when it came through a rewritten
/// guest's wrapper, which restores it on return (so the host need not).
async fn context_switch<T: Send + 'static, G>(
    mut caller: Caller<'_, T>,
    get: G,
    target: ContextId,
    stack_pointer: Option<u32>,
) -> wasmtime::Result<i32>
where
    G: Fn(&mut T) -> &mut WasixContexts + Copy + Send + Sync + Unpin + 'static,
{
    let state = get(caller.data_mut());
    state.check_home()?;
    let plan = state.table.plan_switch(target);
    if !matches!(plan, Ok(SwitchPlan::Switch { .. })) {
        // A real switch is checked by the driver, where the stack pointer is saved.
        match stack_pointer {
            Some(sp) => check_active_at(&mut caller, get, sp)?,
            None => check_active(&mut caller, get)?,
        }
    }
    let (from, to) = match plan {
        Err(errno) => return Ok(errno.raw()),
        Ok(SwitchPlan::NoOp) => return Ok(0),
        Ok(SwitchPlan::Switch { from, to }) => (from, to),
    };
    if from == MAIN_CONTEXT {
        // Main drives: it runs the other contexts until one switches back to it.
        match Driver::start(caller.as_context_mut(), get, to, stack_pointer)?.await? {
            Ended::SwitchedToMain => Ok(0),
            Ended::Returned(id) => Err(EntrypointReturned { id }.into()),
        }
    } else {
        // A context suspends itself; the driver polling it sees the request and resumes
        // the target (saving and restoring the stack pointers).
        let state = get(caller.data_mut());
        state.requested_switch = Some(to);
        state.switch_stack_pointer = stack_pointer;
        state.switch_in_host = true;
        cancel::SuspendOnce::new().await?;
        Ok(0)
    }
}

fn destroy<T: Send + 'static>(
    store: &mut impl AsContextMut<Data = T>,
    get: impl Fn(&mut T) -> &mut WasixContexts + Copy,
    id: ContextId,
) -> Result<(), Errno> {
    let mut store = store.as_context_mut();
    let state = get(store.data_mut());
    let Some(slot) = state.table.destroy(id)? else {
        return Ok(());
    };
    state.events.push(ContextEvent::Destroyed { id });
    if let Some(region) = slot.region {
        state.shadow_stacks.release(region);
    }
    if let Some(future) = slot.future {
        // Invariant 1 of `context_future`: we hold the store (through `store`) and do not
        // use it while the fiber is ended and disposed.
        let owner = Owner::of(state);
        if slot.in_switch {
            let error = cancel::error(|| store.engine().clone());
            cancel::cancel(future, owner, error);
        } else {
            future.dispose(owner);
        }
    }
    Ok(())
}

/// Host-side control of an instance's contexts, for embedders that run guest code as
/// contexts themselves (e.g. one context per request of a reused instance, with no guest
/// `main` running). The host plays the main context: a context that switches to
/// [`MAIN_CONTEXT`] returns control to the host's [`resume`](Self::resume).
pub struct HostContexts<G> {
    get: G,
}

/// How a host-driven [`HostContexts::resume`] ended (a trap is the `Err` case, after which
/// the context is terminated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resumed {
    /// The context switched to main: it is suspended and can be resumed again.
    SwitchedToMain,
    /// The entrypoint returned: the context is terminated; destroy it to free its id.
    Returned,
}

impl<G> HostContexts<G> {
    /// Host control through `get`, the same projection of the store data to its
    /// [`WasixContexts`] as given to [`add_to_linker`].
    pub fn new(get: G) -> Self {
        HostContexts { get }
    }

    /// Creates a suspended context that will run `instance`'s export `entrypoint`
    /// (type `[] -> []`). Fails like `context_create` (limit, shadow-stack memory).
    pub fn spawn<T>(
        &self,
        mut store: impl AsContextMut<Data = T>,
        instance: &Instance,
        entrypoint: &str,
    ) -> Result<ContextId, HostCallError>
    where
        T: Send + 'static,
        G: Fn(&mut T) -> &mut WasixContexts + Copy,
    {
        let mut store = store.as_context_mut();
        (self.get)(store.data_mut()).check_home()?;
        let guest = bind_instance(&mut store, self.get, instance)?;
        let func = instance
            .get_func(&mut store, entrypoint)
            .filter(|&func| typed_entrypoint(&mut store, self.get, func).is_some())
            .ok_or_else(|| HostCallError::NoSuchEntrypoint(entrypoint.to_string()))?;
        Ok(create_inner(
            &mut store,
            self.get,
            guest,
            None,
            Entrypoint::Export,
            |_| Some(func),
        )?)
    }

    /// Runs context `id` until it switches to main, returns, or traps.
    pub async fn resume<T>(
        &self,
        mut store: impl AsContextMut<Data = T>,
        id: ContextId,
    ) -> wasmtime::Result<Resumed>
    where
        T: Send + 'static,
        G: Fn(&mut T) -> &mut WasixContexts + Copy + Send + Sync + Unpin + 'static,
    {
        let mut store = store.as_context_mut();
        let state = (self.get)(store.data_mut());
        state.check_home()?;
        if state.table.active() != MAIN_CONTEXT {
            return Err(HostCallError::Busy.into());
        }
        match state.table.plan_switch(id).map_err(HostCallError::from)? {
            SwitchPlan::NoOp => Err(HostCallError::Errno(Errno::Inval).into()),
            SwitchPlan::Switch { to, .. } => match Driver::start(store, self.get, to, None)?.await?
            {
                Ended::SwitchedToMain => Ok(Resumed::SwitchedToMain),
                Ended::Returned(_) => Ok(Resumed::Returned),
            },
        }
    }

    /// Destroys a suspended or terminated context, as `context_destroy` does.
    pub fn destroy<T>(
        &self,
        mut store: impl AsContextMut<Data = T>,
        id: ContextId,
    ) -> Result<(), HostCallError>
    where
        T: Send + 'static,
        G: Fn(&mut T) -> &mut WasixContexts + Copy,
    {
        let mut store = store.as_context_mut();
        (self.get)(store.data_mut()).check_home()?;
        Ok(destroy(&mut store, self.get, id)?)
    }

    /// Destroys every context (running nothing): call it when the guest's main returned,
    /// trapped or exited, before reusing or dropping the store. Dropping the store does
    /// this too, as a last resort. `Busy` while a context runs (from inside a guest call).
    pub fn release_all<T>(
        &self,
        mut store: impl AsContextMut<Data = T>,
    ) -> Result<(), HostCallError>
    where
        T: Send + 'static,
        G: Fn(&mut T) -> &mut WasixContexts + Copy,
    {
        let mut store = store.as_context_mut();
        let state = (self.get)(store.data_mut());
        if state.table.active() != MAIN_CONTEXT {
            return Err(HostCallError::Busy);
        }
        // Invariant 1 of `context_future`: `store` is held and unused while they drop.
        state.release_everything();
        Ok(())
    }
}

fn bind_instance<T: Send + 'static>(
    store: &mut StoreContextMut<'_, T>,
    get: impl Fn(&mut T) -> &mut WasixContexts + Copy,
    instance: &Instance,
) -> Result<GuestBinding, IncompatibleGuest> {
    binding(store, get, |store, name| {
        instance.get_export(&mut *store, name)
    })
}
