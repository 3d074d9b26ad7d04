#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod body;
mod component;
mod config;
mod connections;
mod dispatch;
mod error;
mod front;
mod guest;
mod guest_wasi;
mod listen;
mod metrics;
mod ops;
mod otlp;
mod server;
mod timeout;
mod trace_context;
mod upstream;
pub mod wasix;

pub use body::ResponseBody;
pub use config::{DEFAULT_MAX_BODY, DEFAULT_SEQUENTIAL_MAX_REQUESTS, Limits, ServeConfig};
pub use error::ServeError;
pub use server::{ServeReport, Server, ShutdownHandle};
/// The instance policy [`ServeConfig::policy`] takes (from `weft-http-attrib`).
pub use weft_http_attrib::Policy;
