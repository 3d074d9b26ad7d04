//! Loading a guest file the way every weft front end does (`weft run`, `weft serve`): telling a
//! core module (binary or WAT text) from a component or from something that is not wasm, and
//! naming the first import a linker does not provide. Nothing a user passes crashes the host:
//! each case is a clear error.

use std::path::{Path, PathBuf};

use wasmtime::{AsContextMut, ExternType, Linker, Module};

/// Why a file is not a core WebAssembly module weft can load.
#[derive(Debug, thiserror::Error)]
pub enum GuestFileError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{0}` is not a WebAssembly file (no `\\0asm` header, and not WAT text)")]
    NotWasm(PathBuf),
    #[error(
        "`{0}` is a WebAssembly component; weft runs core modules (WASI preview 1 / WASIX guests)"
    )]
    Component(PathBuf),
    #[error("`{path}` is not a valid WebAssembly module: {message}")]
    Invalid { path: PathBuf, message: String },
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

/// An import of a module that a linker does not define.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingImport {
    pub module: String,
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
