//! Small helpers shared by the xtask subcommands: running commands, finding
//! the workspace, and installing missing system packages.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};

pub type Result<T = ()> = std::result::Result<T, String>;

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The shared target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target"),
    }
}

/// A `cargo` command using the same cargo that runs the xtask.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs `cmd`, echoing it first; an unsuccessful exit becomes an error.
pub fn run(cmd: &mut Command) -> Result {
    let status = status(cmd)?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed: {status}", describe(cmd)))
    }
}

/// Runs `cmd`, echoing it first, and returns its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    eprintln!("$ {}", describe(cmd));
    cmd.status()
        .map_err(|e| format!("cannot start `{}`: {e}", describe(cmd)))
}

pub fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// True when `program` can be found on `PATH` (or is an existing path).
pub fn have(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Makes sure every `(program, debian_package)` pair is present. Missing
/// packages are installed with apt-get when running as root with apt
/// available; otherwise the exact command to run is returned as the error.
pub fn ensure_packages(what: &str, needed: &[(&str, &str)]) -> Result {
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(program, _)| !have(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let install = format!(
        "apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !is_root() || !have("apt-get") {
        return Err(format!(
            "{what} needs packages that are not installed. Run:\n    sudo apt-get update && sudo {install}"
        ));
    }
    eprintln!(
        "xtask: installing {what} prerequisites: {}",
        missing.join(" ")
    );
    if !APT_UPDATED.swap(true, Ordering::SeqCst) {
        run(Command::new("apt-get").args(["update", "-q"]))?;
    }
    run(Command::new("sh").args(["-c", &format!("DEBIAN_FRONTEND=noninteractive {install}")]))?;
    for (program, package) in needed {
        if !have(program) {
            return Err(format!(
                "installed {package} but `{program}` is still missing from PATH"
            ));
        }
    }
    Ok(())
}

/// Runs a tool, returning its diagnostics (stdout then stderr); failure carries the command
/// and its output.
pub fn run_captured(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .output()
        .map_err(|e| format!("cannot start `{}`: {e}", describe(cmd)))?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "`{}` failed ({}):\n{text}",
            describe(cmd),
            output.status
        ))
    }
}

/// When `path` was last modified.
pub fn mtime(path: &Path) -> Result<std::time::SystemTime> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|e| format!("cannot read the time of {}: {e}", path.display()))
}

/// The newest modification time of anything under `dir` (Python's `__pycache__` excepted:
/// importing a guest's sources writes there without changing them).
pub fn newest_under(dir: &Path) -> Result<std::time::SystemTime> {
    let mut newest = mtime(dir)?;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry
                .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
                .path();
            if path.file_name().is_some_and(|n| n == "__pycache__") {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else {
                newest = newest.max(mtime(&path)?);
            }
        }
    }
    Ok(newest)
}
