//! `cargo xtask build-guests` and `cargo xtask cc`: the C guest toolchain.
//!
//! Every `*.c` file under `guests/` is one program, built into `<target>/guests/<stem>.wasm`.
//! Builds are incremental: an output newer than its source, every header under `guests/`, and
//! the toolchain fingerprint is left alone, so `cargo xtask test` stays fast.
//!
//! A guest that must be built without one of the standard flags (to test that the host refuses
//! it) says so in a line of its source: `// xtask-omit-flag: -Wl,--export=__stack_pointer`.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use crate::c_components;
use crate::toolchain::{self, Toolchain};
use crate::util::{Result, mtime, run_captured, target_dir, workspace_root};

/// Extra warnings the project's own guests must compile cleanly with.
const PROJECT_WARNING_FLAGS: &[&str] = &["-Wall", "-Wextra", "-Werror"];

/// Where built guests land: `<target>/guests`.
pub fn output_dir() -> PathBuf {
    target_dir().join("guests")
}

/// The C guests, then the component guests ([`crate::components`]).
pub fn build_all() -> Result {
    build_c()?;
    crate::components::build_all()
}

fn build_c() -> Result {
    let guests = workspace_root().join("guests");
    let sources = find_sources(&guests)?;
    if sources.is_empty() {
        return Err(format!("no C sources under {}", guests.display()));
    }
    let toolchain = toolchain::find_or_install()?;
    let out_dir = output_dir();
    fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;

    let mut fingerprint = toolchain.fingerprint();
    fingerprint.push('\n');
    fingerprint.push_str(&PROJECT_WARNING_FLAGS.join(" "));
    let stamp = out_dir.join(".toolchain");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(fingerprint.as_str()) {
        fs::write(&stamp, &fingerprint)
            .map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    }
    // A header change rebuilds everything: guests share `guests/include` and local headers.
    let newest_input = newest_mtime(&find_files(&guests, "h")?)?.max(mtime(&stamp)?);

    let mut stale = Vec::new();
    for source in &sources {
        let output = out_dir.join(wasm_name(source));
        let up_to_date = match fs::metadata(&output).and_then(|m| m.modified()) {
            Ok(built) => built >= newest_input.max(mtime(source)?),
            Err(_) => false,
        };
        if !up_to_date {
            stale.push((source.clone(), output));
        }
    }
    if stale.is_empty() {
        eprintln!(
            "xtask: {} guests up to date in {}",
            sources.len(),
            out_dir.display()
        );
        return Ok(());
    }
    eprintln!(
        "xtask: building {} of {} guests with {} into {}",
        stale.len(),
        sources.len(),
        toolchain.name,
        out_dir.display()
    );
    compile_in_parallel(&toolchain, &stale)
}

/// `cargo xtask cc FILE.c... [-o OUT.wasm] [extra clang flags]`: compiles with the standard
/// toolchain and flags. Without `-o`, the output is `<stem of the first C file>.wasm`.
///
/// With `--world WORLD` (or a first line `// xtask-world: WORLD` in the first C file), the
/// file is a `wasi:http` component instead ([`crate::c_components`]).
pub fn cc(args: &[String]) -> Result {
    let (world, args) = take_world(args)?;
    let usage = format!(
        "usage: cargo xtask cc FILE.c... [-o OUT.wasm] [extra clang flags]\n\
         \x20      cargo xtask cc --world wasi:http/proxy|wasi:http/service FILE.c... [-o OUT.wasm] \
         [extra clang flags]\n\
         standard flags of WASIX guests: {}\n\
         with --world (or a first line `// xtask-world: WORLD`), a wasi:http component: \
         wit-bindgen's C bindings of the world, a wasip1 reactor, the preview1 adapter",
        toolchain::standard_flags()
            .iter()
            .map(|f| f.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{usage}");
        return Ok(());
    }
    let world = match world {
        Some(world) => Some(world),
        None => match args.iter().find(|a| a.ends_with(".c")) {
            Some(first) => fs::read_to_string(first)
                .ok()
                .and_then(|text| c_components::world_line(&text).map(str::to_string)),
            None => None,
        },
    };
    if let Some(world) = world {
        return c_components::cc(c_components::World::parse(&world)?, &args);
    }
    if args.is_empty() {
        return Err(usage);
    }
    let has_output = args
        .iter()
        .any(|a| a == "-o" || (a.starts_with("-o") && a.len() > 2));
    let mut extra: Vec<OsString> = args.iter().map(OsString::from).collect();
    if !has_output {
        let first_c = args
            .iter()
            .find(|a| a.ends_with(".c"))
            .ok_or("cc: no .c file given")?;
        extra.push("-o".into());
        extra.push(wasm_name(Path::new(first_c)).into());
    }
    // The sources' own `// xtask-flag:` lines apply here too (an HTTP guest asks to be a
    // reactor), so a user's file builds as `cargo xtask build-guests` would build it.
    let mut directives = Vec::new();
    for source in args.iter().filter(|a| a.ends_with(".c")) {
        let text = fs::read_to_string(source).map_err(|e| format!("cannot read {source}: {e}"))?;
        directives.extend(extra_flags(&text));
    }
    let toolchain = toolchain::find_or_install()?;
    let mut cmd = toolchain.command();
    cmd.args(&directives).args(&extra);
    let output = run_captured(&mut cmd)?;
    if !output.is_empty() {
        eprint!("{output}");
    }
    Ok(())
}

/// Splits `--world WORLD` (or `--world=WORLD`) off the arguments of `cc`.
fn take_world(args: &[String]) -> Result<(Option<String>, Vec<String>)> {
    let mut world = None;
    let mut rest = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--world" {
            let name = args.next().ok_or("cc: --world needs a world name")?;
            world = Some(name.clone());
        } else if let Some(name) = arg.strip_prefix("--world=") {
            world = Some(name.to_string());
        } else {
            rest.push(arg.clone());
        }
    }
    Ok((world, rest))
}

fn compile_in_parallel(toolchain: &Toolchain, jobs: &[(PathBuf, PathBuf)]) -> Result {
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(jobs.len());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some((source, output)) = jobs.get(index) else {
                        break;
                    };
                    if let Err(e) = compile_one(toolchain, source, output) {
                        failures.lock().unwrap().push(e);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} guests failed to build:\n\n{}",
            failures.len(),
            jobs.len(),
            failures.join("\n")
        ))
    }
}

/// Compiles into a scratch folder, then moves the result into place, so an interrupted build
/// never leaves a fresh-looking broken output behind. The scratch file has the output's name,
/// since the linker records it as the module's name (shown in wasm backtraces).
fn compile_one(toolchain: &Toolchain, source: &Path, output: &Path) -> Result {
    let scratch = output.with_file_name(".partial");
    fs::create_dir_all(&scratch)
        .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let temporary = scratch.join(output.file_name().unwrap_or_default());
    let text =
        fs::read_to_string(source).map_err(|e| format!("cannot read {}: {e}", source.display()))?;
    let mut cmd = toolchain.command_omitting(&omitted_flags(&text));
    cmd.args(PROJECT_WARNING_FLAGS)
        .args(extra_flags(&text))
        .arg(source)
        .arg("-o")
        .arg(&temporary);
    let diagnostics = run_captured(&mut cmd);
    let diagnostics = match diagnostics {
        Ok(text) => text,
        Err(e) => {
            let _ = fs::remove_file(&temporary);
            return Err(e);
        }
    };
    fs::rename(&temporary, output)
        .map_err(|e| format!("cannot move {} into place: {e}", temporary.display()))?;
    eprintln!("  built {}", output.display());
    if !diagnostics.is_empty() {
        eprint!("{diagnostics}");
    }
    Ok(())
}

/// The standard flags a guest's source asks to leave out (`// xtask-omit-flag: FLAG` lines).
fn omitted_flags(source_text: &str) -> Vec<String> {
    source_text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("// xtask-omit-flag:"))
        .map(|flag| flag.trim().to_string())
        .collect()
}

/// Flags a guest's source adds to the standard ones (`// xtask-flag: FLAG` lines), e.g.
/// `-mexec-model=reactor` for an HTTP guest, whose exports the host calls without `_start`.
fn extra_flags(source_text: &str) -> Vec<String> {
    source_text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("// xtask-flag:"))
        .map(|flag| flag.trim().to_string())
        .collect()
}

/// Every C source under `guests/` but `guests/components/` (whose C files are components,
/// built by [`crate::c_components`]), refusing two with the same stem (they would share an
/// output).
fn find_sources(guests: &Path) -> Result<Vec<PathBuf>> {
    let components = guests.join("components");
    let mut sources = find_files(guests, "c")?;
    sources.retain(|source| !source.starts_with(&components));
    let mut seen: Vec<(PathBuf, &Path)> = Vec::new();
    for source in &sources {
        let name = stem(source);
        if let Some((_, first)) = seen.iter().find(|(seen_name, _)| *seen_name == name) {
            return Err(format!(
                "{} and {} would both build {}.wasm: rename one",
                first.display(),
                source.display(),
                name.display()
            ));
        }
        seen.push((name, source));
    }
    Ok(sources)
}

/// Files under `dir` (recursively) whose extension is `ext`, sorted.
fn find_files(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry
                .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == ext) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// `dir/name.c` -> `name.wasm`.
fn wasm_name(source: &Path) -> PathBuf {
    let mut name = source.file_stem().unwrap_or_default().to_os_string();
    name.push(".wasm");
    PathBuf::from(name)
}

fn stem(path: &Path) -> PathBuf {
    PathBuf::from(path.file_stem().unwrap_or_default())
}

fn newest_mtime(paths: &[PathBuf]) -> Result<SystemTime> {
    paths
        .iter()
        .try_fold(SystemTime::UNIX_EPOCH, |newest, path| {
            Ok(newest.max(mtime(path)?))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-guests-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn omit_flag_lines_are_collected() {
        let text = "/* x */\n// xtask-omit-flag: -Wl,--export-table\nint x;\n  // xtask-omit-flag:  -O2 \n";
        assert_eq!(omitted_flags(text), ["-Wl,--export-table", "-O2"]);
        assert!(omitted_flags("// xtask-omit-flag is not a directive\n").is_empty());
        assert_eq!(
            extra_flags("// xtask-flag: -mexec-model=reactor\nint x;\n"),
            ["-mexec-model=reactor"]
        );
    }

    #[test]
    fn sources_are_found_recursively_and_headers_are_not_programs() {
        let dir = scratch("find");
        fs::create_dir_all(dir.join("a/b")).unwrap();
        for file in ["one.c", "a/two.c", "a/b/three.c", "a/helper.h", "notes.txt"] {
            fs::write(dir.join(file), "").unwrap();
        }
        let stems: Vec<PathBuf> = find_sources(&dir)
            .unwrap()
            .iter()
            .map(|p| stem(p))
            .collect();
        assert_eq!(stems.len(), 3);
        for name in ["one", "two", "three"] {
            assert!(stems.contains(&PathBuf::from(name)), "{name} in {stems:?}");
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn two_sources_with_one_stem_are_refused() {
        let dir = scratch("duplicate");
        fs::create_dir_all(dir.join("bench")).unwrap();
        fs::write(dir.join("ring.c"), "").unwrap();
        fs::write(dir.join("bench/ring.c"), "").unwrap();
        let error = find_sources(&dir).unwrap_err();
        assert!(error.contains("ring.wasm"), "{error}");
        let _ = fs::remove_dir_all(&dir);
    }
}
