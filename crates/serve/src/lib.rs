#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod body;
mod config;
mod dispatch;
mod error;
mod front;
mod guest;
mod server;
pub mod wasix;

pub use body::ResponseBody;
pub use config::{DEFAULT_MAX_BODY, ServeConfig};
pub use error::ServeError;
pub use server::{ServeReport, Server, ShutdownHandle};
