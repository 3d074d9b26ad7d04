//! `weft serve`: an HTTP/1.1 server (hyper on weft-sched) whose requests run as WASIX contexts
//! of reused instances of one guest.
//!
//! How a request flows: a connection's green thread parses it (hyper), reads its body, and
//! submits it to the [`Registry`](crate::Registry) (508 for a loop, 503 when full); the
//! dispatcher ([`Shared::pump`]) applies the registry's [`Action`]s: it sends `Start` to the
//! chosen instance's green thread, which owns that instance's wasmtime store and runs every
//! context of it (one at a time, as the WASIX main context). The handler context reads the
//! request and writes the response through the `weft_http` imports; the response goes back to
//! the connection over a one-slot channel. Waiting imports (`fetch`, `sleep`) park only the
//! calling context: the instance runs its other contexts meanwhile, and a fetch runs in its
//! own green thread.

mod body;
mod fetch;
mod imports;
mod instance;

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming as IncomingBody;
use hyper::{Request, Response, StatusCode};
use wasmtime::{Config, Engine, ExternType, InstancePre, Linker, Module, Store};
use weft_sched::{Receiver, Runtime, Sender, TcpListener};
use weft_wasix_context::{ContextConfig, GuestFileError, IncompatibleGuest};

use crate::registry::{Action, Policy, REQUEST_ID_HEADER, Registry, RegistryError, Stats, Summary};
use crate::{AccessLogLine, InstanceId, Outcome, RequestId, SharedRegistry, TraceWriter};

pub use body::ResponseBody;
use instance::{HostState, InstanceMsg};

/// The export every HTTP guest must provide: `void weft_http_handle(void)`.
pub const HANDLER_EXPORT: &str = "weft_http_handle";

/// Largest request body the server reads (beyond it: `413`).
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// What `weft serve` runs and how.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The guest: a core module (`.wasm`) or WAT text.
    pub wasm: PathBuf,
    /// Where to listen (`127.0.0.1:0` picks a port: see [`Server::local_addr`]).
    pub listen: SocketAddr,
    /// Scheduler worker threads.
    pub workers: usize,
    /// Instance policy (in flight, requests per instance, instances, queue, drain timeout).
    pub policy: Policy,
    /// One fresh instance per request (for comparison with reuse).
    pub per_request_instance: bool,
    /// Wasm run time a request may use, summed over its contexts; beyond it the request traps.
    pub cpu_budget: Duration,
    /// Write Chrome trace events here.
    pub trace: Option<PathBuf>,
    /// One access-log line per request on stderr.
    pub access_log: bool,
    /// WASIX context limits per instance.
    pub contexts: ContextConfig,
    /// Largest request body read.
    pub max_body: usize,
}

impl ServeConfig {
    pub fn new(wasm: impl Into<PathBuf>) -> Self {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        ServeConfig {
            wasm: wasm.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers,
            policy: Policy::for_workers(workers),
            per_request_instance: false,
            cpu_budget: Duration::from_secs(10),
            trace: None,
            access_log: true,
            contexts: ContextConfig::default(),
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

/// Why the server could not start (nothing was served).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    File(#[from] GuestFileError),
    #[error(
        "`{path}` imports `{module}.{name}` ({kind}), which weft does not provide (it provides \
         wasi_snapshot_preview1, wasix_32v1.context_* and weft_http.*)"
    )]
    UnknownImport {
        path: PathBuf,
        module: String,
        name: String,
        kind: &'static str,
    },
    #[error("`{path}` cannot use WASIX contexts: {source}")]
    Incompatible {
        path: PathBuf,
        source: IncompatibleGuest,
    },
    #[error(
        "`{0}` exports no `weft_http_handle` function of type [] -> []: it is not an HTTP guest"
    )]
    NoHandler(PathBuf),
    #[error("cannot instantiate `{path}`: {message}")]
    Instantiate { path: PathBuf, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create trace file `{path}`: {source}")]
    Trace {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad policy: {0}")]
    Policy(#[from] RegistryError),
    #[error("{0}")]
    Setup(String),
}

/// A request as the server holds it until it is finished: what the guest reads, and where the
/// response goes. Held until answered even when its instance traps (it may be requeued).
pub(crate) struct Incoming {
    pub(crate) id: RequestId,
    pub(crate) header_value: String,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
    responder: Mutex<Option<Sender<Response<ResponseBody>>>>,
    status: Mutex<Option<u16>>,
}

impl Incoming {
    /// Sends the response (once; later calls do nothing). Returns whether it was sent now.
    pub(crate) fn respond(&self, shared: &Shared, response: Response<Bytes>) -> bool {
        let Some(responder) = self.responder.lock().unwrap().take() else {
            return false;
        };
        *self.status.lock().unwrap() = Some(response.status().as_u16());
        let (parts, bytes) = response.into_parts();
        let body = ResponseBody::new(bytes, shared.open_responses.clone());
        // The connection may be gone (client hung up): nothing to do then.
        let _ = responder.try_send(Response::from_parts(parts, body));
        true
    }

    pub(crate) fn responded(&self) -> bool {
        self.responder.lock().unwrap().is_none()
    }
}

/// Settings the instances need at run time.
pub(crate) struct RunSettings {
    pub(crate) cpu_budget: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) access_log: bool,
    pub(crate) contexts: ContextConfig,
    pub(crate) max_body: usize,
}

/// What all green threads of a server share.
pub(crate) struct Shared {
    pub(crate) registry: SharedRegistry,
    pub(crate) settings: RunSettings,
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) engine: Engine,
    instances: Mutex<HashMap<InstanceId, Sender<InstanceMsg>>>,
    requests: Mutex<HashMap<RequestId, Arc<Incoming>>>,
    pub(crate) trace: Mutex<Option<TraceWriter<BufWriter<File>>>>,
    open_responses: Arc<AtomicUsize>,
    shutting_down: AtomicBool,
    drained_tx: Sender<()>,
    served: AtomicUsize,
}

impl Shared {
    /// Applies the registry's actions until it has none. Called after every event that may
    /// free or need capacity; safe to call from any green thread at any time.
    pub(crate) fn pump(self: &Arc<Self>) {
        self.apply_actions();
        if self.shutting_down.load(Ordering::Acquire) {
            // Instances are retired only once nothing waits for one: retiring them earlier
            // would strand queued requests (a retired instance takes none).
            let retired = {
                let mut registry = self.registry.lock();
                if registry.queue_len() == 0 {
                    let ids: Vec<InstanceId> =
                        self.instances.lock().unwrap().keys().copied().collect();
                    for id in ids {
                        let _ = registry.retire(id);
                    }
                    true
                } else {
                    false
                }
            };
            if retired {
                self.apply_actions();
            }
        }
        self.check_drained();
    }

    fn apply_actions(self: &Arc<Self>) {
        loop {
            let now = Instant::now();
            let action = {
                let mut registry = self.registry.lock();
                match registry.next_action(now) {
                    Some(Action::SpawnInstance) => match registry.add_instance() {
                        Ok(id) => {
                            // Registered before the registry lock is released: another pump
                            // may start a request on it right away.
                            let (tx, rx) = weft_sched::unbounded();
                            self.instances.lock().unwrap().insert(id, tx.clone());
                            Some(Ok((id, tx, rx)))
                        }
                        Err(_) => {
                            registry.spawn_failed();
                            None
                        }
                    },
                    Some(other) => Some(Err(other)),
                    None => None,
                }
            };
            match action {
                None => break,
                Some(Ok((instance, tx, rx))) => self.spawn_instance(instance, tx, rx),
                Some(Err(Action::Start { request, instance })) => {
                    let incoming = self.requests.lock().unwrap().get(&request).cloned();
                    let inbox = self.instances.lock().unwrap().get(&instance).cloned();
                    match (incoming, inbox) {
                        (Some(incoming), Some(inbox)) => {
                            let _ = inbox.send(InstanceMsg::Start(incoming));
                        }
                        // Impossible by construction (requests are registered before they
                        // can be started; instances before they get requests); say so loudly.
                        _ => eprintln!(
                            "weft serve: internal error: cannot start {request} on {instance}"
                        ),
                    }
                }
                Some(Err(Action::DropInstance(instance))) => {
                    if let Some(inbox) = self.instances.lock().unwrap().remove(&instance) {
                        let _ = inbox.send(InstanceMsg::Stop);
                    }
                }
                Some(Err(Action::SpawnInstance)) => unreachable!("handled under the lock"),
            }
        }
    }

    fn spawn_instance(
        self: &Arc<Self>,
        instance: InstanceId,
        tx: Sender<InstanceMsg>,
        rx: Receiver<InstanceMsg>,
    ) {
        if let Some(trace) = self.trace.lock().unwrap().as_mut() {
            let _ = trace.instance_started(instance);
        }
        let shared = self.clone();
        weft_sched::spawn(move || instance::run_instance(shared, instance, tx, rx));
    }

    /// A request is over: answer it if nobody did (500), log it, trace it, forget it.
    pub(crate) fn finish(&self, summary: &Summary) {
        let incoming = self.requests.lock().unwrap().remove(&summary.request);
        let Some(incoming) = incoming else { return };
        if !incoming.responded() {
            incoming.respond(self, plain_response(500, "the request failed\n"));
        }
        self.served.fetch_add(1, Ordering::Relaxed);
        let status = *incoming.status.lock().unwrap();
        if self.settings.access_log {
            let line = AccessLogLine {
                finished_at: SystemTime::now(),
                summary,
                header_id: &incoming.header_value,
                method: &incoming.method,
                path: &incoming.path,
                status,
            };
            eprintln!("{line}");
        }
        if let Some(trace) = self.trace.lock().unwrap().as_mut() {
            let label = format!(
                "{} {} {}",
                incoming.method,
                incoming.path,
                status.map_or("-".to_string(), |s| s.to_string())
            );
            let args = serde_json::json!({
                "id": incoming.header_value,
                "outgoing": summary.outgoing,
                "outcome": outcome_name(&summary.outcome),
                "post_response_ms": summary.post_response_time().as_secs_f64() * 1e3,
            });
            let _ = trace.request_finished(summary.request, summary.finished_at, &label, args);
        }
    }

    fn check_drained(&self) {
        if self.shutting_down.load(Ordering::Acquire) && self.registry.lock().is_drained() {
            let _ = self.drained_tx.try_send(());
        }
    }

    fn begin_shutdown(self: &Arc<Self>) {
        if self.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        self.registry.lock().begin_shutdown();
        self.pump();
    }
}

fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Completed => "completed",
        Outcome::Drained { .. } => "drained",
        Outcome::NoResponse => "no_response",
        Outcome::Failed => "failed",
    }
}

pub(crate) fn plain_response(status: u16, text: &str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(text.to_string()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    response
}

/// Stops a running server: it stops accepting, lets in-flight requests and their
/// post-response work finish (up to the drain timeout), then [`Server::wait`] returns.
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    handle: weft_sched::Handle,
}

impl ShutdownHandle {
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
    pub served: usize,
    pub stats: Stats,
}

/// A running `weft serve`.
pub struct Server {
    runtime: Runtime,
    shared: Arc<Shared>,
    addr: SocketAddr,
    drained_rx: Receiver<()>,
}

impl Server {
    /// Loads the guest (refusing it with a clear [`ServeError`] if it cannot serve), binds,
    /// and starts serving on a new weft-sched runtime.
    pub fn start(config: ServeConfig) -> Result<Server, ServeError> {
        let path = config.wasm.clone();
        let bytes = weft_wasix_context::read_core_module(&path)?;
        let mut engine_config = Config::new();
        config.contexts.configure_engine(&mut engine_config);
        engine_config.epoch_interruption(true);
        let engine =
            Engine::new(&engine_config).map_err(|e| ServeError::Setup(format!("{e:?}")))?;
        let module = Module::new(&engine, &bytes).map_err(|e| GuestFileError::Invalid {
            path: path.clone(),
            message: format!("{e:#}"),
        })?;
        weft_wasix_context::check_module(&module).map_err(|source| ServeError::Incompatible {
            path: path.clone(),
            source,
        })?;
        let handler_ok = module.exports().any(|export| {
            export.name() == HANDLER_EXPORT
                && matches!(export.ty(), ExternType::Func(f) if f.params().len() == 0 && f.results().len() == 0)
        });
        if !handler_ok {
            return Err(ServeError::NoHandler(path));
        }
        let linker = instance::linker(&engine).map_err(|e| ServeError::Setup(format!("{e:?}")))?;
        check_imports(&linker, &engine, &module, &path)?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| ServeError::Instantiate {
                path: path.clone(),
                message: format!("{e:#}"),
            })?;

        let mut policy = config.policy.clone();
        if config.per_request_instance {
            policy.max_in_flight_per_instance = 1;
            policy.max_requests_per_instance = 1;
            policy.max_instances = policy.max_instances.max(64 * config.workers.max(1));
        }
        let drain_timeout = policy.drain_timeout;
        let registry = Registry::new(policy, Registry::random_server_tag())?;

        let trace = match &config.trace {
            Some(path) => {
                let file = File::create(path).map_err(|source| ServeError::Trace {
                    path: path.clone(),
                    source,
                })?;
                Some(
                    TraceWriter::new(BufWriter::new(file), Instant::now()).map_err(|source| {
                        ServeError::Trace {
                            path: path.clone(),
                            source,
                        }
                    })?,
                )
            }
            None => None,
        };

        let tick_engine = engine.clone();
        let runtime = Runtime::builder()
            .workers(config.workers.max(1))
            .stack_size(2 << 20)
            .on_tick(move || tick_engine.increment_epoch())
            .build()
            .map_err(|e| ServeError::Setup(format!("cannot start the scheduler: {e}")))?;

        let (drained_tx, drained_rx) = weft_sched::channel(1);
        let shared = Arc::new(Shared {
            registry: SharedRegistry::new(registry),
            settings: RunSettings {
                cpu_budget: config.cpu_budget,
                drain_timeout,
                access_log: config.access_log,
                contexts: config.contexts.clone(),
                max_body: config.max_body,
            },
            pre,
            engine,
            instances: Mutex::new(HashMap::new()),
            requests: Mutex::new(HashMap::new()),
            trace: Mutex::new(trace),
            open_responses: Arc::new(AtomicUsize::new(0)),
            shutting_down: AtomicBool::new(false),
            drained_tx,
            served: AtomicUsize::new(0),
        });

        // Instantiate once up front: a guest whose instantiation fails is a load error, not
        // a stream of 500s.
        let probe = shared.clone();
        runtime
            .spawn(move || instance::probe_instantiate(&probe))
            .join()
            .map_err(|e| ServeError::Setup(format!("instantiation probe panicked: {e:?}")))?
            .map_err(|message| ServeError::Instantiate {
                path: path.clone(),
                message,
            })?;

        let listen = config.listen;
        let listener = runtime
            .spawn(move || TcpListener::bind(listen))
            .join()
            .map_err(|e| ServeError::Setup(format!("{e:?}")))?
            .map_err(|source| ServeError::Listen {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Listen {
            addr: listen,
            source,
        })?;
        let accept_shared = shared.clone();
        runtime.spawn(move || accept_loop(accept_shared, listener));
        Ok(Server {
            runtime,
            shared,
            addr,
            drained_rx,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

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
    pub fn wait(self) -> std::io::Result<ServeReport> {
        let _ = self.drained_rx.recv();
        // Responses handed to hyper are still being written: give them a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.shared.open_responses.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let report = ServeReport {
            served: self.shared.served.load(Ordering::Relaxed),
            stats: self.stats(),
        };
        if let Some(trace) = self.shared.trace.lock().unwrap().take() {
            let mut out = trace.finish()?;
            out.flush()?;
        }
        drop(self.runtime);
        Ok(report)
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            // Out of descriptors and the like: back off a little instead of spinning.
            Err(_) => {
                weft_sched::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if shared.shutting_down.load(Ordering::Acquire) {
            return;
        }
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        weft_sched::spawn(move || {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(serve_one(shared, request).await) }
            });
            // Malformed requests are answered 400 by hyper, which then closes the connection.
            let _ = weft_sched::block_on(
                hyper::server::conn::http1::Builder::new()
                    .timer(weft_sched::hyper_rt::HyperTimer::current())
                    .serve_connection(stream, service),
            );
        });
    }
}

async fn serve_one(shared: Arc<Shared>, request: Request<IncomingBody>) -> Response<ResponseBody> {
    let refuse = |status: u16, text: &str| {
        let (parts, bytes) = plain_response(status, text).into_parts();
        Response::from_parts(
            parts,
            ResponseBody::new(bytes, shared.open_responses.clone()),
        )
    };
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or_else(
        || parts.uri.path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    let body = match Limited::new(body, shared.settings.max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            return if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                refuse(413, "request body too large\n")
            } else {
                refuse(400, "cannot read the request body\n")
            };
        }
    };
    let (tx, rx) = weft_sched::channel(1);
    let submitted = {
        let ids: Vec<&str> = parts
            .headers
            .get_all(REQUEST_ID_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let mut registry = shared.registry.lock();
        match registry.submit(ids, Instant::now()) {
            Ok(id) => {
                let incoming = Arc::new(Incoming {
                    id,
                    header_value: registry.header_value(id),
                    method: parts.method.to_string(),
                    path: path.clone(),
                    headers: parts.headers.clone(),
                    body,
                    responder: Mutex::new(Some(tx)),
                    status: Mutex::new(None),
                });
                // Registered under the registry lock: no pump can start it before it is here.
                shared.requests.lock().unwrap().insert(id, incoming);
                Ok(id)
            }
            Err(refusal) => Err(refusal),
        }
    };
    match submitted {
        Ok(_) => {
            shared.pump();
            match rx.recv_async().await {
                Ok(response) => response,
                Err(_) => refuse(500, "the request was lost\n"),
            }
        }
        Err(refusal) => {
            let status = refusal.status();
            if shared.settings.access_log {
                eprintln!(
                    "weft serve: refused method={} path={:?} status={status} reason={}",
                    parts.method,
                    path,
                    match refusal {
                        crate::Refusal::LoopDetected { .. } => "loop_detected",
                        crate::Refusal::Overloaded => "overloaded",
                        crate::Refusal::ShuttingDown => "shutting_down",
                    }
                );
            }
            let text = if status == 508 {
                "loop detected: this request carries the id of one of this server's live requests\n"
            } else {
                "service unavailable\n"
            };
            refuse(status, text)
        }
    }
}

fn check_imports(
    linker: &Linker<HostState>,
    engine: &Engine,
    module: &Module,
    path: &Path,
) -> Result<(), ServeError> {
    let mut store = Store::new(engine, HostState::placeholder());
    match weft_wasix_context::first_missing_import(linker, &mut store, module) {
        None => Ok(()),
        Some(missing) => Err(ServeError::UnknownImport {
            path: path.to_path_buf(),
            module: missing.module,
            name: missing.name,
            kind: missing.kind,
        }),
    }
}
