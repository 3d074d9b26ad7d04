//! What a guest is given of its host, set up the same way by every weft front end (`weft run`,
//! `weft serve`): the environment variables and directories its command line names, nothing
//! else, and one error, in the same words, for a directory that cannot be opened.

use std::path::PathBuf;

use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::LoadError;

/// Gives the guest of `builder` the variables `env` (name, value) and the host directories
/// `dirs` (host path, path in the guest), read-write. `Err` names the first directory that
/// cannot be opened.
pub fn grant_host_access(
    builder: &mut WasiCtxBuilder,
    env: &[(String, String)],
    dirs: &[(PathBuf, String)],
) -> Result<(), LoadError> {
    for (key, value) in env {
        builder.env(key, value);
    }
    for (host, guest) in dirs {
        builder
            .preopened_dir(host, guest, FsPerms::ReadWrite)
            .map_err(|e| {
                LoadError::Setup(format!(
                    "cannot preopen directory `{}`: {e:#}",
                    host.display()
                ))
            })?;
    }
    Ok(())
}
