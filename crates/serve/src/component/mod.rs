//! Standard `wasi:http` components as HTTP guests: `wasi:http/service@0.3.0` (an async
//! `handler`, many requests at once per instance) and `wasi:http/proxy@0.2.x` (the
//! `incoming-handler`, one request at a time per instance, instances reused), served through
//! wasmtime-wasi-http with the `wasi:cli` imports linked, as `wasmtime serve -Scli` does.
//!
//! An instance is a green thread that owns its store and drives the store's event loop for
//! every request running in it ([`instance`]); outgoing requests are attributed to the request
//! whose root task made them ([`outgoing`]).

mod instance;
mod outgoing;
mod pool;
mod response;
mod state;

use std::path::Path;
use std::sync::Arc;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use weft_http_attrib::InstanceId;
use weft_wasix_context::GuestFileError;

use crate::config::ServeConfig;
use crate::dispatch::Shared;
use crate::error::ServeError;
use crate::guest::{GuestKind, InstanceInbox};
use crate::guest_wasi::GuestWasi;
use outgoing::OutgoingHooks;
use state::ComponentState;

/// The export of a `wasi:http/service@0.3.x` component.
const P3_EXPORT: &str = "wasi:http/handler@0.3";
/// The export of a `wasi:http/proxy@0.2.x` component.
const P2_EXPORT: &str = "wasi:http/incoming-handler@0.2";

/// Whether the guest file is a component (binary or WAT) rather than a core module. Anything
/// that is neither is left to the core-module loader, which says what is wrong with it.
pub(crate) fn is_component(path: &Path) -> bool {
    matches!(
        weft_wasix_context::read_core_module(path),
        Err(GuestFileError::Component(_))
    )
}

/// Which world the component serves.
pub(crate) enum GuestPre {
    /// `wasi:http/proxy@0.2.x`.
    P2(ProxyPre<ComponentState>),
    /// `wasi:http/service@0.3.x`.
    P3(ServicePre<ComponentState>),
}

/// A loaded component guest, ready to instantiate.
pub(crate) struct ComponentGuest {
    engine: Engine,
    pre: GuestPre,
    /// wasmtime-wasi's clocks, stdio and wasi:http's body tasks need a tokio runtime entered
    /// while they are polled; its ambient runtime is entered around every poll of a store.
    tokio: tokio::runtime::Handle,
    /// The environment and directories of every instance's WASI context.
    wasi: GuestWasi,
}

impl ComponentGuest {
    /// Compiles the component at `config.wasm` and checks that it serves a `wasi:http` world
    /// with nothing imported that the host lacks.
    pub(crate) fn load(config: &ServeConfig) -> Result<Self, ServeError> {
        let path = &config.wasm;
        let wasi = config.guest_wasi();
        wasi.check()?;
        let refuse = |message: String| ServeError::Component {
            path: path.clone(),
            message,
        };
        let mut engine_config = Config::new();
        engine_config.wasm_component_model_async(true);
        engine_config.epoch_interruption(true);
        engine_config.allocation_strategy(pool::strategy(config));
        // Language runtimes make components of tens of megabytes: compile each once per
        // machine (the cache wasmtime's own CLI uses), not at every start.
        if let Ok(cache) = wasmtime::Cache::from_file(None) {
            engine_config.cache(Some(cache));
        }
        let engine =
            Engine::new(&engine_config).map_err(|e| ServeError::setup(format!("{e:?}")))?;
        let component = Component::from_file(&engine, path).map_err(|e| {
            ServeError::Load(
                GuestFileError::Invalid {
                    path: path.clone(),
                    message: one_line(&e),
                }
                .into(),
            )
        })?;

        let exports: Vec<String> = component
            .component_type()
            .exports(&engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let exports_p3 = exports.iter().any(|name| name.starts_with(P3_EXPORT));
        let exports_p2 = exports.iter().any(|name| name.starts_with(P2_EXPORT));
        if !exports_p3 && !exports_p2 {
            return Err(refuse(format!(
                "it is a component of another world: it exports neither `{P3_EXPORT}.x` \
                 (world `wasi:http/service`) nor `{P2_EXPORT}.x` (world `wasi:http/proxy`); \
                 its exports: {}",
                if exports.is_empty() {
                    "none".to_string()
                } else {
                    exports.join(", ")
                }
            )));
        }

        let linker = linker(&engine).map_err(|e| ServeError::setup(format!("{e:?}")))?;
        let instance_pre = linker.instantiate_pre(&component).map_err(|e| {
            refuse(format!(
                "{} (weft serve links wasi:http 0.2 and 0.3, and the wasi:cli, clocks, \
                 random, filesystem and sockets interfaces of WASI 0.2 and 0.3)",
                one_line(&e)
            ))
        })?;
        let pre = if exports_p3 {
            GuestPre::P3(ServicePre::new(instance_pre).map_err(|e| refuse(one_line(&e)))?)
        } else {
            GuestPre::P2(ProxyPre::new(instance_pre).map_err(|e| refuse(one_line(&e)))?)
        };
        let tokio = wasmtime_wasi::runtime::with_ambient_tokio_runtime(|| {
            tokio::runtime::Handle::current()
        });
        Ok(ComponentGuest {
            engine,
            pre,
            tokio,
            wasi,
        })
    }

    /// Whether this is a `wasi:http/proxy@0.2.x` guest.
    fn is_p2(&self) -> bool {
        matches!(self.pre, GuestPre::P2(_))
    }
}

/// One line from an error and its causes.
fn one_line(error: &wasmtime::Error) -> String {
    format!("{error:#}")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The linker every component guest is instantiated with: what `wasmtime serve -Scli` links,
/// with the imports that send requests shadowed by attributing versions.
fn linker(engine: &Engine) -> wasmtime::Result<Linker<ComponentState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    wasmtime_wasi::p3::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    outgoing::shadow_senders(&mut linker)?;
    Ok(linker)
}

impl GuestKind for ComponentGuest {
    fn engine(&self) -> &Engine {
        &self.engine
    }

    fn one_request_at_a_time(&self) -> bool {
        // A 0.2 handler is lifted synchronously: wasmtime runs one call per instance at a
        // time and queues the others behind it, where the registry cannot see them.
        self.is_p2()
    }

    fn probe(&self, shared: &Arc<Shared>) -> Result<(), String> {
        let mut store = self.new_store(None, None, &shared.settings);
        instance::block_in_tokio(&self.tokio, self.instantiate(&mut store))
            .map(drop)
            .map_err(|e| format!("{e:?}"))
    }

    fn new_instance(
        self: Arc<Self>,
        shared: Arc<Shared>,
        id: InstanceId,
    ) -> (Arc<dyn InstanceInbox>, Box<dyn FnOnce() + Send>) {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let inbox = instance::Inbox(tx.clone());
        let body = move || instance::run_instance(self, shared, id, tx, rx);
        (Arc::new(inbox), Box::new(body))
    }
}

impl ComponentGuest {
    fn new_store(
        &self,
        shared: Option<Arc<Shared>>,
        attribution: Option<weft_http_attrib::ComponentAttribution>,
        settings: &crate::dispatch::RunSettings,
    ) -> Store<ComponentState> {
        let mut store = Store::new(
            &self.engine,
            ComponentState::new(
                &self.wasi,
                OutgoingHooks::new(shared),
                attribution,
                settings.cpu_budget,
                settings.limits.max_instance_memory,
            ),
        );
        store.limiter(|state| &mut state.limits);
        store.call_hook(state::call_hook);
        // Every epoch tick the running request's CPU budget is checked, and the worker is
        // shared with other green threads.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut context| {
            if let Err((request, budget)) = context.data_mut().cpu.check(std::time::Instant::now())
            {
                return Err(wasmtime::Error::msg(format!(
                    "request {request} exceeded its CPU budget of {} ms",
                    budget.as_millis()
                )));
            }
            Ok(wasmtime::UpdateDeadline::Yield(1))
        });
        store
    }

    async fn instantiate(
        &self,
        store: &mut Store<ComponentState>,
    ) -> wasmtime::Result<instance::Proxy> {
        if let Some(error) = store.data_mut().wasi_error.take() {
            return Err(wasmtime::Error::msg(error.to_string()));
        }
        Ok(match &self.pre {
            GuestPre::P2(pre) => instance::Proxy::P2(pre.instantiate_async(store).await?),
            GuestPre::P3(pre) => instance::Proxy::P3(pre.instantiate_async(store).await?),
        })
    }
}
