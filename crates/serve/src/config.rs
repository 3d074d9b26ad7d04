//! What a server runs and how: [`ServeConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use weft_http_attrib::Policy;
use weft_wasix_context::ContextConfig;

/// Largest request body the server reads (beyond it: `413`).
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

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
    /// The defaults for serving `wasm`: loopback port 8080, one worker per core, the
    /// registry's default policy, a 10 s CPU budget per request, access log on.
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

    /// The policy actually applied: `per_request_instance` turns reuse off.
    pub(crate) fn effective_policy(&self) -> Policy {
        let mut policy = self.policy.clone();
        if self.per_request_instance {
            policy.max_in_flight_per_instance = 1;
            policy.max_requests_per_instance = 1;
            policy.max_instances = policy.max_instances.max(64 * self.workers.max(1));
        }
        policy
    }
}
