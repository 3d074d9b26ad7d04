//! Loading a guest file the way every weft front end does (`weft run`, `weft serve`): telling a
//! core module (binary or WAT text) from a component or from something that is not wasm, and
//! naming the first import a linker does not provide. Nothing a user passes crashes the host:
//! each case is a clear error.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use wasmtime::{AsContextMut, Engine, ExternType, Linker, Module};

use crate::IncompatibleGuest;

/// Why a file is not a core WebAssembly module weft can load.
#[derive(Debug, thiserror::Error)]
pub enum GuestFileError {
    /// The file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// The guest file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// Neither a wasm binary nor WAT text.
    #[error("`{0}` is not a WebAssembly file (no `\\0asm` header, and not WAT text)")]
    NotWasm(PathBuf),
    /// A component, not a core module.
    #[error(
        "`{0}` is a WebAssembly component; weft runs core modules (WASI preview 1 / WASIX guests)"
    )]
    Component(PathBuf),
    /// Wasm (or WAT) that does not parse or validate.
    #[error("`{path}` is not a valid WebAssembly module: {message}")]
    Invalid {
        /// The guest file.
        path: PathBuf,
        /// The parser's or validator's message.
        message: String,
    },
}

/// Reads `path` as a core module: wasm binary as is, WAT text compiled to binary.
pub fn read_core_module(path: &Path) -> Result<Vec<u8>, GuestFileError> {
    let bytes = std::fs::read(path).map_err(|source| GuestFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if let Some(header) = bytes.strip_prefix(b"\0asm") {
        // Core modules have version 1 and layer 0; components have layer 1.
        return match header.get(..4) {
            Some([_, _, 1, 0]) => Err(GuestFileError::Component(path.to_path_buf())),
            _ => Ok(bytes),
        };
    }
    let looks_like_wat = std::str::from_utf8(&bytes)
        .map(|text| {
            let text = text.trim_start();
            text.starts_with('(') || text.starts_with(";;")
        })
        .unwrap_or(false);
    if !looks_like_wat {
        return Err(GuestFileError::NotWasm(path.to_path_buf()));
    }
    match wat::parse_bytes(&bytes) {
        Ok(binary) if binary.get(6..8) == Some(&[1, 0]) => {
            Err(GuestFileError::Component(path.to_path_buf()))
        }
        Ok(binary) => Ok(binary.into_owned()),
        Err(e) => Err(GuestFileError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

/// Why a guest could not be loaded: nothing of it ran. The one load error of every weft front
/// end (`weft run`, `weft serve`), so a file is refused with the same words by both.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file is missing, not wasm, a component where a core module is needed, or invalid.
    #[error(transparent)]
    File(#[from] GuestFileError),
    /// The guest imports something the host does not provide.
    #[error(
        "`{path}` imports `{module}.{name}` ({kind}), which weft does not provide (it provides \
         {provided})"
    )]
    UnknownImport {
        /// The guest file.
        path: PathBuf,
        /// The import's module.
        module: String,
        /// The import's name.
        name: String,
        /// "function", "global", "table", "memory" or "tag".
        kind: &'static str,
        /// What the host does provide, for the message.
        provided: &'static str,
    },
    /// The guest imports the context API but lacks the exports it needs.
    #[error("`{path}` cannot use WASIX contexts: {source}")]
    Incompatible {
        /// The guest file.
        path: PathBuf,
        /// What is missing.
        source: IncompatibleGuest,
    },
    /// The guest lacks the export the front end enters it by.
    #[error("`{path}` exports no `{export}` function of type [] -> []: it is not {what}")]
    MissingEntry {
        /// The guest file.
        path: PathBuf,
        /// The export looked for (`_start`, `weft_http_handle`).
        export: &'static str,
        /// What a guest with that export is ("a WASI command", "an HTTP guest").
        what: &'static str,
    },
    /// Instantiation failed (a start function trapped, a data segment does not fit...).
    #[error("cannot instantiate `{path}`: {message}")]
    Instantiate {
        /// The guest file.
        path: PathBuf,
        /// Wasmtime's error, with its causes.
        message: String,
    },
    /// The host could not set itself up (engine, linker, directories, threads).
    #[error("{0}")]
    Setup(String),
}

/// Reads, compiles and checks the core module at `path` for `engine`: the first step of every
/// front end. Guests that import the context API must export what it needs ([`check_module`](crate::check_module)).
/// Guests that switch contexts are compiled [rewritten](crate::rewrite_guest) to save their
/// own `__stack_pointer`, which the linker of [`add_to_linker`](crate::add_to_linker) serves.
pub fn load_core_module(engine: &Engine, path: &Path) -> Result<Module, LoadError> {
    let bytes = read_core_module(path)?;
    let invalid = |e: wasmtime::Error| GuestFileError::Invalid {
        path: path.to_path_buf(),
        message: format!("{e:#}"),
    };
    let module = match crate::rewrite_guest(&bytes) {
        // A module that does not validate is reported as the user wrote it, not as rewritten.
        Cow::Owned(rewritten) => {
            Module::new(engine, &rewritten).or_else(|_| Module::new(engine, &bytes))
        }
        Cow::Borrowed(_) => Module::new(engine, &bytes),
    }
    .map_err(invalid)?;
    crate::check_module(&module).map_err(|source| LoadError::Incompatible {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(module)
}

/// `Ok` when `linker` provides every import of `module`; else the first it lacks, with
/// `provided` (what the host does provide) in the message.
pub fn check_imports<T: 'static>(
    linker: &Linker<T>,
    store: impl AsContextMut<Data = T>,
    module: &Module,
    path: &Path,
    provided: &'static str,
) -> Result<(), LoadError> {
    match first_missing_import(linker, store, module) {
        None => Ok(()),
        Some(missing) => Err(LoadError::UnknownImport {
            path: path.to_path_buf(),
            module: missing.module,
            name: missing.name,
            kind: missing.kind,
            provided,
        }),
    }
}

/// `Ok` when `module` exports a function `export` of type `[] -> []`.
pub fn check_entry(
    module: &Module,
    path: &Path,
    export: &'static str,
    what: &'static str,
) -> Result<(), LoadError> {
    let found = module.exports().any(|e| {
        e.name() == export
            && matches!(e.ty(), ExternType::Func(f) if f.params().len() == 0 && f.results().len() == 0)
    });
    if found {
        Ok(())
    } else {
        Err(LoadError::MissingEntry {
            path: path.to_path_buf(),
            export,
            what,
        })
    }
}

/// An import of a module that a linker does not define.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingImport {
    /// The import's module.
    pub module: String,
    /// The import's name.
    pub name: String,
    /// "function", "global", "table", "memory" or "tag".
    pub kind: &'static str,
}

/// The first import of `module` that `linker` does not provide, if any.
pub fn first_missing_import<T: 'static>(
    linker: &Linker<T>,
    mut store: impl AsContextMut<Data = T>,
    module: &Module,
) -> Option<MissingImport> {
    module
        .imports()
        .find(|import| linker.get_by_import(&mut store, import).is_none())
        .map(|import| MissingImport {
            module: import.module().to_string(),
            name: import.name().to_string(),
            kind: match import.ty() {
                ExternType::Func(_) => "function",
                ExternType::Global(_) => "global",
                ExternType::Table(_) => "table",
                ExternType::Memory(_) => "memory",
                ExternType::Tag(_) => "tag",
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weft-guest-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn tells_modules_components_and_other_files_apart() {
        let binary = wat::parse_str("(module)").unwrap();
        assert_eq!(
            read_core_module(&scratch("m.wasm", &binary)).unwrap(),
            binary
        );
        assert_eq!(
            read_core_module(&scratch("m.wat", b";; text\n(module)")).unwrap(),
            binary
        );
        let component = wat::parse_str("(component)").unwrap();
        for path in [
            scratch("c.wasm", &component),
            scratch("c.wat", b"(component)"),
        ] {
            assert!(matches!(
                read_core_module(&path),
                Err(GuestFileError::Component(_))
            ));
        }
        assert!(matches!(
            read_core_module(&scratch("x.txt", b"hello")),
            Err(GuestFileError::NotWasm(_))
        ));
        assert!(matches!(
            read_core_module(&scratch("bad.wat", b"(module (func (bogus)))")),
            Err(GuestFileError::Invalid { .. })
        ));
        assert!(matches!(
            read_core_module(Path::new("/nonexistent/weft/guest.wasm")),
            Err(GuestFileError::Read { .. })
        ));
    }

    #[test]
    fn names_the_first_import_a_linker_lacks() {
        let engine = wasmtime::Engine::default();
        let module = Module::new(
            &engine,
            r#"(module (import "env" "present" (func)) (import "env" "absent" (global i32)))"#,
        )
        .unwrap();
        let mut linker = Linker::<()>::new(&engine);
        linker.func_wrap("env", "present", || {}).unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        assert_eq!(
            first_missing_import(&linker, &mut store, &module),
            Some(MissingImport {
                module: "env".into(),
                name: "absent".into(),
                kind: "global",
            })
        );
    }
}
