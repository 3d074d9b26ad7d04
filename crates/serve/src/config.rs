//! What a server runs and how: [`ServeConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use weft_http_attrib::Policy;
use weft_wasix_context::{ContextBudget, ContextConfig};

use crate::guest_wasi::GuestWasi;

/// Largest request body the server reads (beyond it: `413`).
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// The default of [`ServeConfig::sequential_max_requests`].
pub const DEFAULT_SEQUENTIAL_MAX_REQUESTS: u64 = 1024;

/// What a guest and a client may make the host hold or wait for: every resource either of
/// them controls is bounded here (`docs/SECURITY.md` lists each limit and what happens at it).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Response body bytes a guest may write per request in all (`response_write` beyond
    /// it: `EMSGSIZE`).
    pub max_response_body: usize,
    /// Response body bytes the host holds per request: a draft growing past it goes out as
    /// a streamed response, and a guest writing faster than its client reads gets `EAGAIN`
    /// (and waits on `response_writable`) once this much is unread.
    pub response_buffer: usize,
    /// Response headers per request (`response_header` beyond it: `EMSGSIZE`).
    pub max_response_headers: usize,
    /// Bytes of response header names and values per request.
    pub max_response_header_bytes: usize,
    /// Linear memory per instance; `memory.grow` beyond it fails (malloc returns NULL).
    pub max_instance_memory: usize,
    /// Linear memory of all instances together; growth beyond it fails too.
    pub memory_budget: usize,
    /// An instance holding more memory than this is retired once its requests finish.
    pub retire_memory: usize,
    /// Time a request has to answer; then `504`, and what still runs for it is killed.
    pub request_timeout: Duration,
    /// Time a shutdown may take; then what is left is killed and the server reports it.
    pub shutdown_timeout: Duration,
    /// Time a client has to send a request's head (and, between requests, the idle time of a
    /// kept-alive connection) before the connection is closed.
    pub header_timeout: Duration,
    /// Time a client has to send a request's body once its head arrived (then `408`).
    pub body_timeout: Duration,
    /// Open client connections in all; more are closed at once.
    pub max_connections: usize,
    /// Open client connections per client address; more are closed at once.
    pub max_connections_per_client: usize,
    /// Live WASIX contexts of all instances together (each may hold a native stack: two of
    /// the process's kernel mappings). Beyond it `context_create` fails with `EAGAIN`; an
    /// eighth is kept for the contexts the server starts to handle requests, so guests
    /// creating all they can still leave room for other instances' requests. Replaces
    /// `contexts.live_context_budget`. The default is [`ContextBudget::default_limit`].
    pub max_live_contexts: usize,
}

impl Limits {
    /// The budget `max_live_contexts` gives, with its share for request handlers.
    pub(crate) fn live_context_budget(&self) -> ContextBudget {
        let limit = self.max_live_contexts;
        ContextBudget::with_host_reserve(limit, (limit / 8).max(1))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_response_body: 16 << 20,
            response_buffer: 256 << 10,
            max_response_headers: 128,
            max_response_header_bytes: 64 << 10,
            max_instance_memory: 256 << 20,
            memory_budget: 4 << 30,
            retire_memory: 128 << 20,
            request_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_connections_per_client: 256,
            max_live_contexts: ContextBudget::default_limit(),
        }
    }
}

/// What `weft serve` runs and how.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The guest: a core module (`.wasm`) or WAT text.
    pub wasm: PathBuf,
    /// Where to listen (`127.0.0.1:0` picks a port: see [`Server::local_addr`](crate::Server::local_addr)).
    pub listen: SocketAddr,
    /// Scheduler worker threads.
    pub workers: usize,
    /// Instance policy (in flight, requests per instance, instances, queue, drain timeout).
    pub policy: Policy,
    /// Requests an instance that serves one request at a time (a `wasi:http/proxy` 0.2
    /// component) serves before it is retired; `policy.max_requests_per_instance` is for the
    /// others. Larger by default ([`DEFAULT_SEQUENTIAL_MAX_REQUESTS`]): such an instance takes
    /// its requests one by one, and replacing it (a language runtime's instance costs
    /// milliseconds of CPU: about 2 ms for a Python one) every 128 requests would cost about 15 %
    /// of the serving time.
    pub sequential_max_requests: u64,
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
    /// Bounds on what guests and clients can make the server hold or wait for.
    pub limits: Limits,
    /// Serve `/metrics` (Prometheus text format), `/healthz` and `/readyz` on this address,
    /// apart from `listen` (see [`Server::metrics_addr`](crate::Server::metrics_addr)).
    /// `None` (the default): no such listener, and no metrics are kept.
    pub metrics_addr: Option<SocketAddr>,
    /// W3C Trace Context: continue an incoming `traceparent` as a child span (or start a
    /// trace), send each fetch with the request's span as its parent, and log the ids.
    /// Off by default.
    pub trace_context: bool,
    /// Bind `listen` with `SO_REUSEPORT`, so several processes serve one port and the kernel
    /// spreads connections across them. Off by default.
    pub reuse_port: bool,
    /// Export a span per request (and one per outgoing request) to this OpenTelemetry
    /// collector, over OTLP/HTTP with protobuf (`http://host:port`; the path defaults to
    /// `/v1/traces`). Implies [`trace_context`](Self::trace_context). `None` by default.
    pub otlp_endpoint: Option<String>,
    /// Environment variables every instance's guest sees (`NAME`, `VALUE`), of both guest
    /// kinds. Empty by default: a guest sees none of the host's.
    pub env: Vec<(String, String)>,
    /// Host directories every instance's guest may read and write, as (host path, path in the
    /// guest), of both guest kinds. Each is opened again for every instance; one that cannot
    /// be opened when the server starts refuses the start. Empty by default.
    pub dirs: Vec<(PathBuf, String)>,
}

impl ServeConfig {
    /// The defaults for serving `wasm`: loopback port 8080, one worker per core, the
    /// registry's default policy, a 10 s CPU budget per request, access log on.
    pub fn new(wasm: impl Into<PathBuf>) -> Self {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        ServeConfig {
            wasm: wasm.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers,
            policy: Policy::for_workers(workers),
            sequential_max_requests: DEFAULT_SEQUENTIAL_MAX_REQUESTS,
            per_request_instance: false,
            cpu_budget: Duration::from_secs(10),
            trace: None,
            access_log: true,
            contexts: ContextConfig::default(),
            max_body: DEFAULT_MAX_BODY,
            limits: Limits::default(),
            metrics_addr: None,
            trace_context: false,
            reuse_port: false,
            otlp_endpoint: None,
            env: Vec::new(),
            dirs: Vec::new(),
        }
    }

    /// What every instance's WASI context is given from this configuration.
    pub(crate) fn guest_wasi(&self) -> GuestWasi {
        GuestWasi {
            env: self.env.clone(),
            dirs: self.dirs.clone(),
        }
    }

    /// The policy actually applied to a guest whose instances serve one request at a time
    /// (`one_at_a_time`) or not: `per_request_instance` turns reuse off.
    pub(crate) fn effective_policy(&self, one_at_a_time: bool) -> Policy {
        let mut policy = self.policy.clone();
        if one_at_a_time {
            policy.max_in_flight_per_instance = 1;
            policy.max_requests_per_instance = self.sequential_max_requests;
        }
        if self.per_request_instance {
            policy.max_in_flight_per_instance = 1;
            policy.max_requests_per_instance = 1;
            policy.max_instances = policy.max_instances.max(64 * self.workers.max(1));
        }
        policy
    }
}
