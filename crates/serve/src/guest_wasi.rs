//! What every guest instance's WASI context gets from the server's configuration: its
//! environment and preopened directories (`--env`, `--dir`), for both guest kinds.

use std::path::PathBuf;

use wasmtime_wasi::WasiCtxBuilder;
use weft_wasix_context::{LoadError, grant_host_access};

/// The part of a guest instance's WASI context that the configuration decides: its environment
/// and preopened directories ([`ServeConfig::env`], [`ServeConfig::dirs`]). Kept by each guest
/// kind, which builds one context per store from it.
#[derive(Clone, Debug, Default)]
pub(crate) struct GuestWasi {
    pub(crate) env: Vec<(String, String)>,
    pub(crate) dirs: Vec<(PathBuf, String)>,
}

impl GuestWasi {
    /// A builder with the guest's stdout and stderr inherited (its prints land in the
    /// server's output), the environment set and the directories opened.
    pub(crate) fn builder(&self) -> Result<WasiCtxBuilder, LoadError> {
        let mut builder = WasiCtxBuilder::new();
        builder.inherit_stdout().inherit_stderr();
        grant_host_access(&mut builder, &self.env, &self.dirs)?;
        Ok(builder)
    }

    /// Opens every directory once: a directory that cannot be opened is a load error at start,
    /// not a failure of every instance.
    pub(crate) fn check(&self) -> Result<(), LoadError> {
        self.builder().map(drop)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_directory_that_cannot_be_opened_is_named_in_one_line() {
        let mut config = crate::ServeConfig::new("guest.wasm");
        let missing = std::env::temp_dir()
            .join("weft-serve-no-such-dir")
            .join("x");
        config.dirs.push((missing.clone(), "/data".to_string()));
        let message = config.guest_wasi().check().unwrap_err().to_string();
        assert!(
            message.starts_with(&format!(
                "cannot preopen directory `{}`: ",
                missing.display()
            )),
            "{message}"
        );
        assert_eq!(message.lines().count(), 1, "{message}");
        assert!(
            crate::ServeConfig::new("guest.wasm")
                .guest_wasi()
                .check()
                .is_ok()
        );
    }
}
