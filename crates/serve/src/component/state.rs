//! The store data of a component guest's instance: WASI, wasi:http, the attribution of its
//! tasks, and the CPU account kept by the store's call hook.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use wasmtime::component::{GuestTaskId, ResourceTable};
use wasmtime::{CallHook, StoreContextMut, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};
use weft_http_attrib::{ComponentAttribution, RequestId};
use weft_wasix_context::LoadError;

use super::outgoing::OutgoingHooks;
use crate::guest_wasi::GuestWasi;

/// The store data of one component instance.
pub(crate) struct ComponentState {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    pub(crate) hooks: OutgoingHooks,
    /// `None` only in stores that serve nothing (the instantiation probe).
    pub(crate) attribution: Option<ComponentAttribution>,
    pub(crate) cpu: TaskCpu,
    /// Linear memory per instance (`memory.grow` beyond it fails).
    pub(crate) limits: StoreLimits,
    /// Why `wasi` lacks a directory the configuration gives (one that could be opened at start
    /// but no longer can): instantiating the store fails with it, so no instance runs without
    /// what its guest was promised.
    pub(crate) wasi_error: Option<LoadError>,
}

impl ComponentState {
    pub(crate) fn new(
        wasi: &GuestWasi,
        hooks: OutgoingHooks,
        attribution: Option<ComponentAttribution>,
        budget: Duration,
        max_memory: usize,
    ) -> Self {
        let (wasi, wasi_error) = match wasi.builder() {
            Ok(mut builder) => (builder.build(), None),
            Err(error) => (WasiCtx::default(), Some(error)),
        };
        ComponentState {
            wasi,
            wasi_error,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks,
            attribution,
            cpu: TaskCpu::new(budget),
            limits: StoreLimitsBuilder::new().memory_size(max_memory).build(),
        }
    }

    /// The request the root task `root` runs for, if it is one of this instance's.
    fn request_of(&self, root: GuestTaskId) -> Option<RequestId> {
        self.attribution.as_ref()?.request_of(root)
    }
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.hooks,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

/// The attribution of a serving store (every serving store has one).
pub(crate) fn attribution_of(state: &mut ComponentState) -> &mut ComponentAttribution {
    state
        .attribution
        .as_mut()
        .expect("serving stores have an attribution")
}

/// Wasm run time per request in a store where many requests' tasks interleave. Wasmtime
/// reports no task switches, but its call hook sees every entry into wasm (a task starting or
/// a callback running: `CallingWasm`; a host import returning: `ReturningFromHost`) and every
/// exit, and at an entry the async call stack names the task whose code runs. So the time
/// between an entry and the next exit belongs to the request of that task's root.
#[derive(Debug)]
pub(crate) struct TaskCpu {
    budget: Duration,
    used: HashMap<RequestId, Duration>,
    running: Option<(RequestId, Instant)>,
    /// The request whose code entered wasm last: the one a trap interrupts.
    last_entered: Option<RequestId>,
    exceeded: Option<RequestId>,
}

impl TaskCpu {
    pub(crate) fn new(budget: Duration) -> Self {
        TaskCpu {
            budget,
            used: HashMap::new(),
            running: None,
            last_entered: None,
            exceeded: None,
        }
    }

    fn enter(&mut self, request: Option<RequestId>, now: Instant) {
        self.leave(now);
        self.last_entered = request;
        self.running = request.map(|r| (r, now));
    }

    fn leave(&mut self, now: Instant) {
        if let Some((request, since)) = self.running.take() {
            *self.used.entry(request).or_default() += now.saturating_duration_since(since);
        }
    }

    /// At an epoch tick: `Err` once the running request has used up its budget. The tick is
    /// handled in a libcall, which the call hook reports as a host call: the request whose
    /// code runs is the one that entered wasm last.
    pub(crate) fn check(&mut self, now: Instant) -> Result<(), (RequestId, Duration)> {
        let Some(request) = self.running.map(|(r, _)| r).or(self.last_entered) else {
            return Ok(());
        };
        let running = match self.running {
            Some((r, since)) if r == request => now.saturating_duration_since(since),
            _ => Duration::ZERO,
        };
        let used = self.used.get(&request).copied().unwrap_or_default() + running;
        if used > self.budget {
            self.exceeded = Some(request);
            return Err((request, self.budget));
        }
        Ok(())
    }

    /// The request a trap that just surfaced should be blamed on: the one over budget if that
    /// is why, else the one whose code ran last.
    pub(crate) fn culprit(&self) -> Option<RequestId> {
        self.exceeded.or(self.last_entered)
    }

    /// Every task of the store has exited: no request can run more code here, so every
    /// account is closed (a request whose task exited unseen is closed here too).
    pub(crate) fn all_exited(&mut self) {
        self.used.clear();
    }
}

/// The store's call hook: keeps [`TaskCpu`] current.
pub(crate) fn call_hook(
    mut store: StoreContextMut<'_, ComponentState>,
    hook: CallHook,
) -> wasmtime::Result<()> {
    let now = Instant::now();
    if hook.entering_host() {
        store.data_mut().cpu.leave(now);
        return Ok(());
    }
    // Outside any task (instantiation) the stack is unavailable: nobody's time.
    let root = store.async_call_stack().ok().and_then(|stack| stack.last());
    let state = store.data_mut();
    let request = root.and_then(|root| state.request_of(root));
    state.cpu.enter(request, now);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wasi_context_has_the_configured_env_and_directories() {
        use wasmtime_wasi::cli::WasiCliView;
        use wasmtime_wasi::filesystem::WasiFilesystemView;
        use wasmtime_wasi::p2::bindings::cli::environment::Host as _;
        use wasmtime_wasi::p2::bindings::filesystem::preopens::Host as _;

        let dir = std::env::temp_dir().join(format!("weft-serve-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = crate::ServeConfig::new("guest.wasm");
        config.env.push(("A".into(), "1".into()));
        config.dirs.push((dir.clone(), "/data".into()));
        let mut state = ComponentState::new(
            &config.guest_wasi(),
            OutgoingHooks::new(None),
            None,
            Duration::from_secs(1),
            1 << 20,
        );
        assert!(state.wasi_error.is_none());
        assert_eq!(
            state.cli().get_environment().unwrap(),
            [("A".to_string(), "1".to_string())]
        );
        let preopens = state.filesystem().get_directories().unwrap();
        let names: Vec<&str> = preopens.iter().map(|(_, name)| name.as_str()).collect();
        assert_eq!(names, ["/data"]);

        // Gone since the start: the store is marked, so instantiating it fails.
        std::fs::remove_dir(&dir).unwrap();
        let state = ComponentState::new(
            &config.guest_wasi(),
            OutgoingHooks::new(None),
            None,
            Duration::from_secs(1),
            1 << 20,
        );
        assert!(state.wasi_error.is_some());
    }

    #[test]
    fn cpu_is_summed_per_request_and_the_last_entered_is_blamed() {
        let (a, b) = (
            RequestId::from_token(1).unwrap(),
            RequestId::from_token(2).unwrap(),
        );
        let mut cpu = TaskCpu::new(Duration::from_millis(10));
        let t0 = Instant::now();
        cpu.enter(Some(a), t0);
        cpu.enter(Some(b), t0 + Duration::from_millis(6));
        assert_eq!(cpu.culprit(), Some(b));
        cpu.leave(t0 + Duration::from_millis(7));
        cpu.enter(Some(a), t0 + Duration::from_millis(20));
        assert_eq!(cpu.check(t0 + Duration::from_millis(23)), Ok(()));
        assert_eq!(
            cpu.check(t0 + Duration::from_millis(25)),
            Err((a, Duration::from_millis(10)))
        );
        assert_eq!(cpu.culprit(), Some(a));
        cpu.all_exited();
        // Ticks arrive in a libcall, after the hook saw wasm leave: the last one in pays.
        cpu.enter(Some(b), t0 + Duration::from_millis(30));
        cpu.leave(t0 + Duration::from_millis(45));
        assert_eq!(
            cpu.check(t0 + Duration::from_millis(46)),
            Err((b, Duration::from_millis(10)))
        );
        // Time in no request's task is nobody's.
        cpu.enter(None, t0);
        assert_eq!(cpu.check(t0 + Duration::from_secs(60)), Ok(()));
    }
}
