//! WASIX core modules as HTTP guests: each request runs as a WASIX context of a reused
//! instance, and the guest talks HTTP through the `weft_http_v1` imports
//! (`docs/weft-http-abi.md`). Instances are green threads (`instance.rs`); which context runs
//! when is the scheduler's business (`scheduler.rs`); the imports live in `imports/`, one file
//! per area.

mod fetch_client;
mod imports;
mod instance;
mod memory;
mod scheduler;
mod state;

use std::sync::Arc;

use wasmtime::{Config, Engine, InstancePre, Linker, Store};
use weft_http_attrib::InstanceId;
use weft_wasix_context::{ContextConfig, LoadError};

use crate::config::ServeConfig;
use crate::dispatch::Shared;
use crate::guest::{GuestKind, InstanceInbox};
use crate::guest_wasi::GuestWasi;
use instance::InstanceMsg;
use state::{HostState, contexts_of};

pub use imports::{ABI_VERSION, IMPORT_MODULE, import_signatures};

/// The export every WASIX HTTP guest must provide: `void weft_http_handle(void)`.
pub const HANDLER_EXPORT: &str = "weft_http_handle";

/// What a WASIX guest's host provides, for the unknown-import message.
const PROVIDED: &str = "wasi_snapshot_preview1, wasix_32v1.context_* and weft_http_v1.*";

/// A loaded WASIX HTTP guest, ready to instantiate.
pub(crate) struct WasixGuest {
    engine: Engine,
    pre: InstancePre<HostState>,
    contexts: ContextConfig,
    memory_budget: Arc<memory::MemoryBudget>,
    max_instance_memory: usize,
    /// CPU time an instance's start code (`_initialize`, C constructors) may use.
    init_budget: std::time::Duration,
    /// The environment and directories of every instance's WASI context.
    wasi: GuestWasi,
}

impl WasixGuest {
    /// Compiles and checks the guest of `config`: a core module, with the handler export,
    /// importing nothing the host lacks.
    pub(crate) fn load(config: &ServeConfig) -> Result<Self, LoadError> {
        let path = &config.wasm;
        let wasi = config.guest_wasi();
        wasi.check()?;
        let mut contexts = config.contexts.clone();
        contexts.record_events = true;
        // One budget for every instance of the server: each instance's own `max_contexts`
        // cannot stop many instances together from exhausting the process's mappings.
        contexts.live_context_budget = config.limits.live_context_budget();
        let mut engine_config = Config::new();
        contexts.configure_engine(&mut engine_config);
        engine_config.epoch_interruption(true);
        let engine = Engine::new(&engine_config).map_err(|e| LoadError::Setup(format!("{e:?}")))?;
        let module = weft_wasix_context::load_core_module(&engine, path)?;
        weft_wasix_context::check_entry(&module, path, HANDLER_EXPORT, "an HTTP guest")?;
        let linker = linker(&engine).map_err(|e| LoadError::Setup(format!("{e:?}")))?;
        let mut store = Store::new(&engine, HostState::placeholder());
        weft_wasix_context::check_imports(&linker, &mut store, &module, path, PROVIDED)?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| LoadError::Instantiate {
                path: path.clone(),
                message: format!("{e:#}"),
            })?;
        Ok(WasixGuest {
            engine,
            pre,
            contexts,
            memory_budget: memory::MemoryBudget::new(config.limits.memory_budget),
            max_instance_memory: config.limits.max_instance_memory,
            init_budget: config.cpu_budget,
            wasi,
        })
    }
}

/// The linker every WASIX HTTP guest is instantiated with.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut HostState| &mut state.wasi)?;
    weft_wasix_context::add_to_linker(&mut linker, contexts_of)?;
    imports::add_to_linker(&mut linker)?;
    Ok(linker)
}

impl GuestKind for WasixGuest {
    fn engine(&self) -> &Engine {
        &self.engine
    }

    fn probe(&self, _shared: &Arc<Shared>) -> Result<(), String> {
        instance::probe(self)
    }

    fn new_instance(
        self: Arc<Self>,
        shared: Arc<Shared>,
        id: InstanceId,
    ) -> (Arc<dyn InstanceInbox>, Box<dyn FnOnce() + Send>) {
        let (tx, rx) = weft_sched::unbounded::<InstanceMsg>();
        let inbox = tx.clone();
        let body = move || instance::run_instance(self, shared, id, tx, rx);
        (Arc::new(inbox), Box::new(body))
    }
}
