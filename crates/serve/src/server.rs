//! [`Server`]: starting (load the guest, bind, probe one instance), stopping and waiting.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_http_attrib::{Registry, SharedRegistry, Stats, TraceWriter};
use weft_sched::{Receiver, Runtime};

use crate::config::ServeConfig;
use crate::dispatch::{RunSettings, Shared};
use crate::error::ServeError;
use crate::front::accept_loop;
use crate::guest::GuestKind;
use crate::metrics::Metrics;
use crate::ops::OpsListener;
use crate::otlp::{Endpoint, Otlp};
use crate::wasix::WasixGuest;

/// Stops a running server: it stops accepting, lets in-flight requests and their
/// post-response work finish (up to the drain timeout), then [`Server::wait`] returns.
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    handle: weft_sched::Handle,
}

impl ShutdownHandle {
    /// Begins the drain; returns at once.
    pub fn shutdown(&self) {
        let shared = self.shared.clone();
        let addr = self.addr;
        // On a green thread: pumping sends to instances and may touch the scheduler.
        self.handle.spawn(move || {
            shared.begin_shutdown();
            // Wakes the accept loop so it sees the flag.
            let _ = weft_sched::TcpStream::connect(addr);
        });
    }
}

/// What a server did, when it is over.
#[derive(Debug, Clone)]
pub struct ServeReport {
    /// Requests finished (answered, failed or drained), refusals not counted.
    pub served: usize,
    /// The registry's counters at the end.
    pub stats: Stats,
    /// Requests still live when the shutdown deadline passed, given up (`r7 GET /slow`).
    /// Empty when the drain finished in time.
    pub killed: Vec<String>,
}

/// A running `weft serve`.
pub struct Server {
    runtime: Runtime,
    shared: Arc<Shared>,
    addr: SocketAddr,
    drained_rx: Receiver<()>,
    /// `/metrics`, `/healthz`, `/readyz`; stops when the server is dropped.
    ops: Option<OpsListener>,
}

impl Server {
    /// Loads the guest (refusing it with a clear [`ServeError`] if it cannot serve), binds,
    /// and starts serving on a new weft-sched runtime.
    pub fn start(config: ServeConfig) -> Result<Server, ServeError> {
        let guest: Arc<dyn GuestKind> = if crate::component::is_component(&config.wasm) {
            Arc::new(crate::component::ComponentGuest::load(&config)?)
        } else {
            Arc::new(WasixGuest::load(&config)?)
        };
        let policy = config.effective_policy(guest.one_request_at_a_time());
        let drain_timeout = policy.drain_timeout;
        let registry = Registry::new(policy, Registry::random_server_tag())?;
        let trace = match &config.trace {
            Some(path) => {
                let trace_error = |source| ServeError::Trace {
                    path: path.clone(),
                    source,
                };
                let file = File::create(path).map_err(trace_error)?;
                Some(TraceWriter::new(BufWriter::new(file), Instant::now()).map_err(trace_error)?)
            }
            None => None,
        };

        let tick_engine = guest.engine().clone();
        let runtime = Runtime::builder()
            .workers(config.workers.max(1))
            .stack_size(2 << 20)
            .on_tick(move || tick_engine.increment_epoch())
            .build()
            .map_err(|e| ServeError::setup(format!("cannot start the scheduler: {e}")))?;

        let (drained_tx, drained_rx) = weft_sched::channel(1);
        let otlp = match &config.otlp_endpoint {
            Some(url) => {
                let endpoint = Endpoint::parse(url)
                    .map_err(|e| ServeError::setup(format!("--otlp-endpoint: {e}")))?;
                let otlp = Otlp::start(endpoint).map_err(|e| {
                    ServeError::setup(format!("cannot start the span exporter: {e}"))
                })?;
                Some(Arc::new(otlp))
            }
            None => None,
        };
        let registry = SharedRegistry::new(registry);
        let shared = Arc::new(Shared {
            registry: registry.clone(),
            settings: RunSettings {
                cpu_budget: config.cpu_budget,
                drain_timeout,
                access_log: config.access_log,
                max_body: config.max_body,
                limits: config.limits.clone(),
            },
            guest,
            instances: Mutex::new(HashMap::new()),
            requests: Mutex::new(HashMap::new()),
            trace: Mutex::new(trace),
            open_responses: Arc::new(AtomicUsize::new(0)),
            shutting_down: AtomicBool::new(false),
            shutdown_began: Mutex::new(None),
            drained_tx,
            served: AtomicUsize::new(0),
            upstreams: Default::default(),
            metrics: config.metrics_addr.map(|_| Metrics::new(registry.clone())),
            // Exported spans need ids, and are only worth having when they join up.
            trace_context: config.trace_context || otlp.is_some(),
            otlp,
        });

        let probe = shared.clone();
        runtime
            .spawn(move || probe.guest.probe(&probe))
            .join()
            .map_err(|e| ServeError::setup(format!("instantiation probe panicked: {e:?}")))?
            .map_err(|message| weft_wasix_context::LoadError::Instantiate {
                path: config.wasm.clone(),
                message,
            })?;

        let listen = config.listen;
        let listen_error = |source| ServeError::Listen {
            addr: listen,
            source,
        };
        let reuse_port = config.reuse_port;
        let listener = runtime
            .spawn(move || crate::listen::bind(listen, reuse_port))
            .join()
            .map_err(|e| ServeError::setup(format!("{e:?}")))?
            .map_err(listen_error)?;
        let addr = listener.local_addr().map_err(listen_error)?;
        let ops = match (config.metrics_addr, &shared.metrics) {
            (Some(metrics_addr), Some(metrics)) => Some(
                OpsListener::start(metrics_addr, shared.clone(), metrics.clone()).map_err(
                    |source| ServeError::Listen {
                        addr: metrics_addr,
                        source,
                    },
                )?,
            ),
            _ => None,
        };
        let accept_shared = shared.clone();
        runtime.spawn(move || accept_loop(accept_shared, listener));
        Ok(Server {
            runtime,
            shared,
            addr,
            drained_rx,
            ops,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of `/metrics`, `/healthz` and `/readyz`, when
    /// [`ServeConfig::metrics_addr`] is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().map(OpsListener::local_addr)
    }

    /// A handle that stops the server from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: self.shared.clone(),
            addr: self.addr,
            handle: self.runtime.handle().clone(),
        }
    }

    /// The registry's counters so far.
    pub fn stats(&self) -> Stats {
        self.shared.registry.lock().stats().clone()
    }

    /// Blocks until a [`ShutdownHandle::shutdown`] has drained the server, then finishes the
    /// trace file and stops the scheduler.
    ///
    /// The drain has [`Limits::shutdown_timeout`](crate::Limits::shutdown_timeout): past it,
    /// what is still live is answered `503`, given up, and named in
    /// [`ServeReport::killed`]; the scheduler's threads are then left to the process's exit.
    pub fn wait(self) -> std::io::Result<ServeReport> {
        let timeout = self.shared.settings.limits.shutdown_timeout;
        let mut killed = Vec::new();
        loop {
            if self.drained_rx.try_recv().is_ok() {
                break;
            }
            let began = *self.shared.shutdown_began.lock().unwrap();
            if began.is_some_and(|began| began.elapsed() >= timeout) {
                killed = self.shared.abandon_live_requests();
                break;
            }
            // The server's own threads do the work; this one only watches the clock.
            std::thread::sleep(Duration::from_millis(5));
        }
        // Responses handed to hyper are still being written: give them a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.shared.open_responses.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let report = ServeReport {
            served: self.shared.served.load(Ordering::Relaxed),
            stats: self.stats(),
            killed,
        };
        if let Some(trace) = self.shared.trace.lock().unwrap().take() {
            let mut out = trace.finish()?;
            out.flush()?;
        }
        if let Some(otlp) = &self.shared.otlp {
            otlp.shutdown();
            let dropped = otlp.dropped();
            if dropped > 0 {
                eprintln!("weft serve: {dropped} spans were dropped: the export queue was full");
            }
        }
        if report.killed.is_empty() {
            drop(self.runtime);
        } else {
            // Some green thread may still be stuck in a guest; joining the workers could wait
            // for it forever.
            std::mem::forget(self.runtime);
        }
        Ok(report)
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}
