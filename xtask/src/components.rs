//! The component guests of `cargo xtask build-guests`: every directory under
//! `guests/components/` holding an `app.py` is one Python `wasi:http` component, built with
//! componentize-py into `<target>/guests/components/<directory>.wasm`.
//!
//! The first line of `app.py` names the world: `# xtask-world: wasi:http/service@0.3.0` or
//! `# xtask-world: wasi:http/proxy@0.2.12`. The WIT is vendored in `guests/components/wit/`
//! (`p3` for 0.3, `p2` for 0.2), as wasmtime-wasi-http 48 ships it.
//!
//! C components (`guests/components/c/`) are built by [`crate::c_components`] into the same
//! folder.
//!
//! componentize-py is pinned and installed with pip into `<target>/pytools` (PyPI is the only
//! source needed). A component is rebuilt only when something under its directory, the WIT
//! or the pinned version changed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{Result, describe, have, mtime, newest_under, target_dir, workspace_root};

/// The componentize-py release the guests are built with.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
/// The folder pip records that release's installation in.
const COMPONENTIZE_PY_DIST_INFO: &str = "componentize_py-0.25.1.dist-info";

/// Where the component guests land.
pub fn output_dir() -> PathBuf {
    target_dir().join("guests").join("components")
}

struct Guest {
    name: String,
    dir: PathBuf,
    world: String,
    wit: PathBuf,
}

pub fn build_all() -> Result {
    build_python()?;
    crate::c_components::build_all(&output_dir())
}

fn build_python() -> Result {
    let root = workspace_root().join("guests").join("components");
    let guests = find_guests(&root)?;
    if guests.is_empty() {
        return Err(format!("no component guests under {}", root.display()));
    }
    let c_dir = crate::c_components::sources_dir();
    for guest in &guests {
        let clash = c_dir.join(format!("{}.c", guest.name));
        if clash.exists() {
            return Err(format!(
                "{} and {} would both build {}.wasm: rename one",
                guest.dir.display(),
                clash.display(),
                guest.name
            ));
        }
    }
    let tools = target_dir().join("pytools");
    let out_dir = output_dir();
    fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let stamp = out_dir.join(".componentize-py");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(COMPONENTIZE_PY) {
        fs::write(&stamp, COMPONENTIZE_PY)
            .map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    }
    let mut stale = Vec::new();
    for guest in &guests {
        let newest = newest_under(&guest.dir)?
            .max(newest_under(&guest.wit)?)
            .max(mtime(&stamp)?);
        let output = out_dir.join(format!("{}.wasm", guest.name));
        let up_to_date = mtime(&output).is_ok_and(|built| built >= newest);
        if !up_to_date {
            stale.push((guest, output));
        }
    }
    if stale.is_empty() {
        eprintln!(
            "xtask: {} component guests up to date in {}",
            guests.len(),
            out_dir.display()
        );
        return Ok(());
    }
    let componentize = find_or_install(&tools)?;
    eprintln!(
        "xtask: building {} of {} component guests with {COMPONENTIZE_PY} into {}",
        stale.len(),
        guests.len(),
        out_dir.display()
    );
    // One at a time: each build uses a core and a few hundred megabytes.
    for (guest, output) in stale {
        build_one(&componentize, &tools, guest, &output)?;
    }
    Ok(())
}

/// The guests: directories with an `app.py` whose first line names the world.
fn find_guests(root: &Path) -> Result<Vec<Guest>> {
    let mut guests = Vec::new();
    let entries = fs::read_dir(root).map_err(|e| format!("cannot read {}: {e}", root.display()))?;
    for entry in entries {
        let dir = entry
            .map_err(|e| format!("cannot read {}: {e}", root.display()))?
            .path();
        let app = dir.join("app.py");
        if !app.is_file() {
            continue;
        }
        let text =
            fs::read_to_string(&app).map_err(|e| format!("cannot read {}: {e}", app.display()))?;
        let world = parse_world(&text).ok_or_else(|| {
            format!(
                "{}: the first line must be `# xtask-world: <world>`",
                app.display()
            )
        })?;
        let wit = root.join("wit").join(wit_dir(&world)?);
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        guests.push(Guest {
            name,
            dir,
            world,
            wit,
        });
    }
    guests.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(guests)
}

fn parse_world(app: &str) -> Option<String> {
    let world = app.lines().next()?.strip_prefix("# xtask-world:")?.trim();
    (!world.is_empty()).then(|| world.to_string())
}

/// The vendored WIT a world is found in.
fn wit_dir(world: &str) -> Result<&'static str> {
    if world.starts_with("wasi:http/service@0.3") {
        Ok("p3")
    } else if world.starts_with("wasi:http/proxy@0.2") {
        Ok("p2")
    } else {
        Err(format!(
            "world `{world}`: expected wasi:http/service@0.3.x or wasi:http/proxy@0.2.x"
        ))
    }
}

/// The pinned componentize-py in `tools`, installed there with pip when missing.
fn find_or_install(tools: &Path) -> Result<PathBuf> {
    let script = tools.join("bin").join("componentize-py");
    let installed = tools.join(COMPONENTIZE_PY_DIST_INFO);
    if script.is_file() && installed.is_dir() {
        return Ok(script);
    }
    let install = format!(
        "python3 -m pip install --target {} {COMPONENTIZE_PY}",
        tools.display()
    );
    if !have("python3") {
        return Err(format!(
            "the component guests need {COMPONENTIZE_PY} and python3 (3.10 or later), which is \
             missing: install python3 and pip, then run `{install}`"
        ));
    }
    eprintln!(
        "xtask: installing {COMPONENTIZE_PY} into {}",
        tools.display()
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "pip", "install", "--quiet", "--upgrade", "--target"])
        .arg(tools)
        .arg(COMPONENTIZE_PY);
    let output = cmd
        .output()
        .map_err(|e| format!("cannot start `{}`: {e}", describe(&cmd)))?;
    if !output.status.success() || !script.is_file() {
        return Err(format!(
            "`{}` failed ({}); run `{install}` by hand to see why:\n{}",
            describe(&cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(script)
}

/// Builds into a scratch file, then moves it into place, so an interrupted build never leaves
/// a fresh-looking broken output behind. The sources are copied out first: the Python inside
/// componentize-py writes `__pycache__` folders next to what it compiles.
fn build_one(componentize: &Path, tools: &Path, guest: &Guest, output: &Path) -> Result {
    let temporary = output.with_extension("wasm.partial");
    let sources = output.with_extension("src");
    let _ = fs::remove_dir_all(&sources);
    copy_sources(&guest.dir, &sources)?;
    let mut cmd = Command::new("python3");
    cmd.arg(componentize)
        .env("PYTHONPATH", tools)
        .arg("-d")
        .arg(&guest.wit)
        .arg("-w")
        .arg(&guest.world)
        .arg("componentize")
        .arg("-p")
        .arg(&sources)
        .arg("app")
        .arg("-o")
        .arg(&temporary);
    let result = cmd
        .output()
        .map_err(|e| format!("cannot start `{}`: {e}", describe(&cmd)))?;
    if !result.status.success() {
        let _ = fs::remove_file(&temporary);
        return Err(format!(
            "`{}` failed ({}):\n{}{}",
            describe(&cmd),
            result.status,
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    fs::rename(&temporary, output)
        .map_err(|e| format!("cannot move {} into place: {e}", temporary.display()))?;
    eprintln!("  built {}", output.display());
    Ok(())
}

/// Copies the files under `from` (not Python's caches) to `to`.
fn copy_sources(from: &Path, to: &Path) -> Result {
    fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    let entries = fs::read_dir(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot read {}: {e}", from.display()))?
            .path();
        let Some(name) = path.file_name() else {
            continue;
        };
        if name == "__pycache__" {
            continue;
        }
        if path.is_dir() {
            copy_sources(&path, &to.join(name))?;
        } else {
            fs::copy(&path, to.join(name))
                .map_err(|e| format!("cannot copy {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_world_line_picks_the_vendored_wit() {
        let world = parse_world("# xtask-world: wasi:http/service@0.3.0\nimport x\n").unwrap();
        assert_eq!(world, "wasi:http/service@0.3.0");
        assert_eq!(wit_dir(&world), Ok("p3"));
        assert_eq!(wit_dir("wasi:http/proxy@0.2.12"), Ok("p2"));
        assert!(wit_dir("wasi:cli/command@0.2.0").is_err());
        assert_eq!(parse_world("import x\n# xtask-world: w\n"), None);
        assert_eq!(parse_world("# xtask-world:   \n"), None);
    }
}
