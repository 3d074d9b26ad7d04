//! C `wasi:http` components: every `guests/components/c/*.c` whose first line names its world
//! (`// xtask-world: wasi:http/proxy@0.2.12`) is built into
//! `<target>/guests/components/<stem>.wasm`, and `cargo xtask cc --world WORLD FILE.c` builds a
//! user's file the same way.
//!
//! The steps are those of wit-bindgen's C workflow, done with pinned crates instead of
//! downloaded binaries: the `xtask-wit` helper writes the world's bindings (`<world>.h`,
//! `<world>.c`, `<world>_component_type.o`) with wit-bindgen-c; the wasm C toolchain of
//! [`crate::toolchain`] compiles the guest and the bindings into a wasip1 reactor; `xtask-wit`
//! then makes a component of it with the preview1 reactor adapter (`component new`).
//!
//! `xtask-wit` is a second binary of this crate behind the `c-components` feature, built the
//! first time a C component is needed, so the crates behind it never slow down plain
//! `cargo xtask`.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::toolchain::{self, Toolchain};
use crate::util::{
    Result, cargo, describe, mtime, newest_under, run, run_captured, target_dir, workspace_root,
};

/// Extra warnings the project's own C components must compile cleanly with (the generated
/// bindings are compiled on their own, without them).
const PROJECT_WARNING_FLAGS: &[&str] = &["-Wall", "-Wextra", "-Werror"];

/// Every C component is a reactor: the host calls its exports, never `_start`, and
/// `component new` turns `_initialize` into the component's start.
const COMPONENT_FLAGS: &[&str] = &["-O2", "-mexec-model=reactor"];

/// A world a C component can be built for, with the vendored WIT it is found in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct World {
    /// The fully qualified name, as the vendored WIT spells it.
    pub name: &'static str,
    /// The folder under `guests/components/wit/`.
    wit: &'static str,
    /// The world's own name, which wit-bindgen gives the files it writes (`proxy.h`).
    stem: &'static str,
}

const WORLDS: &[World] = &[
    World {
        name: "wasi:http/proxy@0.2.12",
        wit: "p2",
        stem: "proxy",
    },
    World {
        name: "wasi:http/service@0.3.0",
        wit: "p3",
        stem: "service",
    },
];

impl World {
    /// `wasi:http/proxy` or `wasi:http/proxy@0.2.12`; other versions are refused rather than
    /// silently built against the vendored ones.
    pub fn parse(name: &str) -> Result<World> {
        let (unversioned, version) = match name.split_once('@') {
            Some((unversioned, version)) => (unversioned, Some(version)),
            None => (name, None),
        };
        WORLDS
            .iter()
            .find(|world| {
                let (known, known_version) = world.name.split_once('@').unwrap_or((world.name, ""));
                known == unversioned && version.is_none_or(|v| v == known_version)
            })
            .copied()
            .ok_or_else(|| {
                let known: Vec<&str> = WORLDS.iter().map(|w| w.name).collect();
                format!(
                    "world `{name}`: C components can be built for {} (the WIT vendored in \
                     guests/components/wit, as wasmtime-wasi-http 48 serves it)",
                    known.join(" or ")
                )
            })
    }

    fn wit_dir(&self) -> PathBuf {
        components_root().join("wit").join(self.wit)
    }
}

/// The world a source names on its first line (`// xtask-world: ...`), if it does.
pub fn world_line(source_text: &str) -> Option<&str> {
    let world = source_text
        .lines()
        .next()?
        .trim()
        .strip_prefix("// xtask-world:")?
        .trim();
    (!world.is_empty()).then_some(world)
}

fn components_root() -> PathBuf {
    workspace_root().join("guests").join("components")
}

/// The folder of the project's C components.
pub fn sources_dir() -> PathBuf {
    components_root().join("c")
}

struct Guest {
    name: String,
    source: PathBuf,
    world: World,
}

/// Builds the project's C components that are out of date into `out_dir`.
pub fn build_all(out_dir: &Path) -> Result {
    let dir = sources_dir();
    let guests = find_guests(&dir)?;
    if guests.is_empty() {
        return Ok(());
    }
    let toolchain = toolchain::find_or_install()?;
    let stamp = out_dir.join(".c-components");
    let fingerprint = fingerprint(&toolchain);
    if fs::read_to_string(&stamp).ok().as_deref() != Some(fingerprint.as_str()) {
        fs::write(&stamp, &fingerprint)
            .map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    }
    // A shared header or the WIT changing rebuilds them all: they are small.
    let shared = newest_under(&dir)?.max(mtime(&stamp)?);
    let mut stale = Vec::new();
    for guest in &guests {
        let newest = shared.max(newest_under(&guest.world.wit_dir())?);
        let output = out_dir.join(format!("{}.wasm", guest.name));
        if !mtime(&output).is_ok_and(|built| built >= newest) {
            stale.push((guest, output));
        }
    }
    if stale.is_empty() {
        eprintln!(
            "xtask: {} C components up to date in {}",
            guests.len(),
            out_dir.display()
        );
        return Ok(());
    }
    eprintln!(
        "xtask: building {} of {} C components with {} into {}",
        stale.len(),
        guests.len(),
        toolchain.name,
        out_dir.display()
    );
    let tool = wit_tool()?;
    let mut bindings: Vec<(World, Bindings)> = Vec::new();
    for (guest, _) in &stale {
        if !bindings.iter().any(|(world, _)| *world == guest.world) {
            bindings.push((
                guest.world,
                Bindings::generate(&tool, &toolchain, guest.world)?,
            ));
        }
    }
    for (guest, output) in stale {
        let (_, made) = bindings
            .iter()
            .find(|(world, _)| *world == guest.world)
            .expect("generated above");
        let mut flags: Vec<OsString> = PROJECT_WARNING_FLAGS.iter().map(OsString::from).collect();
        flags.push("-I".into());
        flags.push(dir.clone().into_os_string());
        build(
            &tool,
            &toolchain,
            made,
            std::slice::from_ref(&guest.source),
            &flags,
            &output,
        )?;
        eprintln!("  built {}", output.display());
    }
    Ok(())
}

/// `cargo xtask cc --world WORLD FILE.c... [-o OUT.wasm] [extra clang flags]`, `args` without
/// the `--world` option. Without `-o`, the output is `<stem of the first C file>.wasm`.
pub fn cc(world: World, args: &[String]) -> Result {
    let mut output = None;
    let mut sources = Vec::new();
    let mut flags: Vec<OsString> = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "-o" {
            let path = rest.next().ok_or("cc: -o needs a file name")?;
            output = Some(PathBuf::from(path));
        } else if let Some(path) = arg.strip_prefix("-o") {
            output = Some(PathBuf::from(path));
        } else if arg.ends_with(".c") {
            sources.push(PathBuf::from(arg));
        } else {
            flags.push(arg.into());
        }
    }
    let first = sources.first().ok_or("cc: no .c file given")?;
    let output = output.unwrap_or_else(|| {
        let mut name = first.file_stem().unwrap_or_default().to_os_string();
        name.push(".wasm");
        PathBuf::from(name)
    });
    let toolchain = toolchain::find_or_install()?;
    let tool = wit_tool()?;
    let bindings = Bindings::generate(&tool, &toolchain, world)?;
    // The bindings' header is found next to the generated files; the project's C components
    // include their shared helpers from their own folder, so a copy of one builds as is.
    flags.push("-I".into());
    flags.push(sources_dir().into_os_string());
    build(&tool, &toolchain, &bindings, &sources, &flags, &output)?;
    eprintln!("xtask: built {} ({})", output.display(), world.name);
    Ok(())
}

/// A world's generated bindings: a header to include, and two objects to link.
struct Bindings {
    include: PathBuf,
    object: PathBuf,
    component_type: PathBuf,
}

impl Bindings {
    /// Writes the bindings into `<target>/guests/components/.c-bindings/<p2|p3>/` and compiles
    /// their C part (without the project's warnings: it is generated code).
    fn generate(tool: &Path, toolchain: &Toolchain, world: World) -> Result<Bindings> {
        let dir = crate::components::output_dir()
            .join(".c-bindings")
            .join(world.wit);
        run_captured(
            Command::new(tool)
                .arg("bindgen")
                .arg(world.wit_dir())
                .arg(world.name)
                .arg(&dir),
        )?;
        let source = dir.join(format!("{}.c", world.stem));
        let object = dir.join(format!("{}.o", world.stem));
        run_captured(
            toolchain
                .bare_command()
                .arg("-O2")
                .arg("-c")
                .arg(&source)
                .arg("-o")
                .arg(&object),
        )?;
        Ok(Bindings {
            include: dir.clone(),
            object,
            component_type: dir.join(format!("{}_component_type.o", world.stem)),
        })
    }
}

/// Compiles `sources` with `bindings` into a core module, then makes a component of it at
/// `output`; both steps go through scratch files, so an interrupted build never leaves a
/// fresh-looking broken output behind.
fn build(
    tool: &Path,
    toolchain: &Toolchain,
    bindings: &Bindings,
    sources: &[PathBuf],
    flags: &[OsString],
    output: &Path,
) -> Result {
    let name = output.file_name().unwrap_or_default();
    let scratch = crate::components::output_dir().join(".c-build");
    fs::create_dir_all(&scratch)
        .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    // The linker records the file name as the module's name (shown in wasm backtraces).
    let core = scratch.join(name);
    let mut partial = output.as_os_str().to_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let diagnostics = run_captured(
        toolchain
            .bare_command()
            .args(COMPONENT_FLAGS)
            .arg("-I")
            .arg(&bindings.include)
            .args(flags)
            .args(sources)
            .arg(&bindings.object)
            .arg(&bindings.component_type)
            .arg("-o")
            .arg(&core),
    )?;
    if !diagnostics.is_empty() {
        eprint!("{diagnostics}");
    }
    let made = run_captured(Command::new(tool).arg("component").arg(&core).arg(&partial));
    let _ = fs::remove_file(&core);
    if let Err(e) = made {
        let _ = fs::remove_file(&partial);
        return Err(e);
    }
    fs::rename(&partial, output)
        .map_err(|e| format!("cannot move {} into place: {e}", partial.display()))
}

/// Builds `xtask-wit` (once per run; cargo makes it a no-op when nothing changed) and returns
/// its path.
fn wit_tool() -> Result<PathBuf> {
    static TOOL: OnceLock<Result<PathBuf>> = OnceLock::new();
    TOOL.get_or_init(|| {
        let tool = target_dir()
            .join("debug")
            .join(format!("xtask-wit{}", std::env::consts::EXE_SUFFIX));
        let mut cmd = cargo();
        cmd.args(["build", "-p", "xtask", "--features", "c-components"])
            .args(["--bin", "xtask-wit"]);
        if tool.is_file() {
            cmd.arg("--quiet");
        } else {
            eprintln!(
                "xtask: building the xtask-wit helper for C components (wit-bindgen-c, \
                 wit-component; about a minute the first time)"
            );
        }
        run(&mut cmd)?;
        if tool.is_file() {
            Ok(tool)
        } else {
            Err(format!(
                "`{}` succeeded but left no {}",
                describe(&cmd),
                tool.display()
            ))
        }
    })
    .clone()
}

/// What the outputs depend on besides their sources: the compiler, and the pinned crates of
/// `xtask-wit` (read from this crate's manifest, so changing a pin rebuilds every component).
fn fingerprint(toolchain: &Toolchain) -> String {
    let mut text = toolchain.fingerprint();
    text.push('\n');
    text.push_str(&COMPONENT_FLAGS.join(" "));
    text.push('\n');
    text.push_str(&PROJECT_WARNING_FLAGS.join(" "));
    for pin in include_str!("../Cargo.toml")
        .lines()
        .filter(|line| line.contains("optional = true"))
    {
        text.push('\n');
        text.push_str(pin);
    }
    text
}

/// The project's C components: `*.c` files in `dir` with a world line. A `.c` file without one
/// is refused, so a typo never drops a guest silently.
fn find_guests(dir: &Path) -> Result<Vec<Guest>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    let mut guests = Vec::new();
    for entry in entries {
        let source = entry
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .path();
        if source.extension().is_none_or(|e| e != "c") {
            continue;
        }
        let text = fs::read_to_string(&source)
            .map_err(|e| format!("cannot read {}: {e}", source.display()))?;
        let world = world_line(&text).ok_or_else(|| {
            format!(
                "{}: the first line must be `// xtask-world: <world>`",
                source.display()
            )
        })?;
        let world = World::parse(world).map_err(|e| format!("{}: {e}", source.display()))?;
        let name = source
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        guests.push(Guest {
            name,
            source,
            world,
        });
    }
    guests.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(guests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worlds_are_named_with_or_without_the_vendored_version() {
        assert_eq!(World::parse("wasi:http/proxy").unwrap().wit, "p2");
        assert_eq!(
            World::parse("wasi:http/proxy@0.2.12").unwrap().stem,
            "proxy"
        );
        assert_eq!(World::parse("wasi:http/service").unwrap().wit, "p3");
        assert_eq!(
            World::parse("wasi:http/service@0.3.0").unwrap().name,
            "wasi:http/service@0.3.0"
        );
        let error = World::parse("wasi:http/proxy@0.2.0").unwrap_err();
        assert!(error.contains("wasi:http/proxy@0.2.12"), "{error}");
        assert!(World::parse("wasi:cli/command").is_err());
    }

    #[test]
    fn the_world_line_is_the_first_line() {
        assert_eq!(
            world_line("// xtask-world: wasi:http/proxy@0.2.12\nint x;\n"),
            Some("wasi:http/proxy@0.2.12")
        );
        assert_eq!(
            world_line("int x;\n// xtask-world: wasi:http/proxy\n"),
            None
        );
        assert_eq!(world_line("// xtask-world:  \n"), None);
    }

    #[test]
    fn the_fingerprint_names_every_pinned_crate_of_the_helper() {
        let pins = fingerprint_pins();
        for name in [
            "wit-bindgen-c",
            "wit-bindgen-core",
            "wit-component",
            "wasi-preview1-component-adapter-provider",
        ] {
            assert!(
                pins.iter().any(|line| line.starts_with(name)),
                "{name}: {pins:?}"
            );
        }
    }

    fn fingerprint_pins() -> Vec<&'static str> {
        include_str!("../Cargo.toml")
            .lines()
            .filter(|line| line.contains("optional = true"))
            .collect()
    }
}
