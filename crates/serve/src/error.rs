//! Why a server could not start: [`ServeError`].

use std::net::SocketAddr;
use std::path::PathBuf;

use weft_http_attrib::RegistryError;
use weft_wasix_context::LoadError;

/// Why the server could not start (nothing was served).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The guest could not be loaded: the same error `weft run` gives for the same file.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The guest is a component that cannot be served (another world, a missing import).
    #[error("`{path}` cannot be served: {message}")]
    Component {
        /// The guest file.
        path: PathBuf,
        /// What is wrong with it, on one line.
        message: String,
    },
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why the OS refused.
        source: std::io::Error,
    },
    /// The trace file could not be created.
    #[error("cannot create trace file `{path}`: {source}")]
    Trace {
        /// The file asked for.
        path: PathBuf,
        /// Why the OS refused.
        source: std::io::Error,
    },
    /// The instance policy is inconsistent.
    #[error("bad policy: {0}")]
    Policy(#[from] RegistryError),
}

impl ServeError {
    pub(crate) fn setup(message: impl Into<String>) -> Self {
        ServeError::Load(LoadError::Setup(message.into()))
    }
}
