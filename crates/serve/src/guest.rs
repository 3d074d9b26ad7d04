//! The one interface between the server and a kind of guest. The front end and the dispatcher
//! know requests, instances and the registry; how an instance is made and how it runs a request
//! is the guest kind's business (WASIX core modules, [`crate::wasix`]; `wasi:http` components,
//! [`crate::component`]).

use std::sync::Arc;

use wasmtime::Engine;
use weft_http_attrib::InstanceId;

use crate::dispatch::{Incoming, Shared};

/// A kind of guest the server can run.
pub(crate) trait GuestKind: Send + Sync + 'static {
    /// The engine the guest was compiled for (the server's ticker advances its epoch).
    fn engine(&self) -> &Engine;

    /// Whether an instance serves one request at a time. The policy then allows one request
    /// in flight per instance (the flags apply to every guest kind) and retires instances
    /// after [`ServeConfig::sequential_max_requests`](crate::ServeConfig::sequential_max_requests).
    fn one_request_at_a_time(&self) -> bool {
        false
    }

    /// Instantiates the guest once and drops it: a guest whose instantiation fails is a load
    /// error at startup, not a stream of 500s. `Err` holds wasmtime's message.
    fn probe(&self, shared: &Arc<Shared>) -> Result<(), String>;

    /// Makes the inbox of a new instance `id` and the body of the green thread that will run
    /// it. The inbox is registered before the thread starts, so requests can be sent at once.
    fn new_instance(
        self: Arc<Self>,
        shared: Arc<Shared>,
        id: InstanceId,
    ) -> (Arc<dyn InstanceInbox>, Box<dyn FnOnce() + Send>);
}

/// How the dispatcher talks to a running instance.
pub(crate) trait InstanceInbox: Send + Sync {
    /// Run `request` on this instance (the registry chose it).
    fn start(&self, request: Arc<Incoming>);
    /// The registry dropped this instance: nothing is left in it.
    fn stop(&self);
}
