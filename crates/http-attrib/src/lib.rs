#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod access_log;
mod attribution;
mod component;
mod green;
mod ids;
mod registry;
mod trace;

pub use access_log::{AccessLogLine, TraceFields};
pub use attribution::{AttribError, Attribution, MAX_OVERRIDE_DEPTH, Outgoing, SharedRegistry};
pub use component::{CallerStack, ComponentAttribution, Started};
pub use green::{ActiveContext, ContextExit, ContextId, GreenAttribution};
pub use ids::{InstanceId, RequestId};
pub use registry::{
    Action, Outcome, Policy, REQUEST_ID_HEADER, Refusal, Registry, RegistryError, Stats, Summary,
    TrapFallout,
};
pub use trace::{OutgoingSpan, TraceWriter};

/// The JSON values [`TraceWriter`] takes as slice arguments (`serde_json::json!`).
pub use serde_json;
