//! `xtask-wit`: the component half of the C component toolchain, run by `cargo xtask` (never
//! by hand). It lives in its own binary behind the `c-components` feature so that the crates
//! it needs are compiled only when a C component is asked for.
//!
//! ```text
//! xtask-wit bindgen WIT_DIR WORLD OUT_DIR     wit-bindgen's C bindings of WORLD into OUT_DIR
//! xtask-wit component CORE.wasm OUT.wasm      the core module, adapted from wasip1, as a component
//! ```

use std::path::Path;
use std::process::ExitCode;

use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wit_bindgen_core::Files;
use wit_bindgen_core::wit_parser::Resolve;
use wit_component::ComponentEncoder;

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["bindgen", wit, world, out] => bindgen(Path::new(wit), world, Path::new(out)),
        ["component", core, out] => component(Path::new(core), Path::new(out)),
        _ => Err(
            "usage: xtask-wit bindgen WIT_DIR WORLD OUT_DIR | component CORE.wasm OUT.wasm".into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask-wit: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `<world>.h`, `<world>.c` and `<world>_component_type.o` (the custom section that
/// tells `component new` the world's types) into `out`.
fn bindgen(wit: &Path, world: &str, out: &Path) -> Result {
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_dir(wit)
        .map_err(|e| format!("cannot read the WIT in {}: {e:#}", wit.display()))?;
    let world = resolve
        .select_world(&[package], Some(world))
        .map_err(|e| format!("no world `{world}` in {}: {e:#}", wit.display()))?;
    let mut files = Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .map_err(|e| format!("wit-bindgen-c: {e:#}"))?;
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    for (name, contents) in files.iter() {
        let path = out.join(name);
        std::fs::write(&path, contents)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// `component new --adapt wasi_snapshot_preview1=<reactor adapter>`, validated: wasi-libc's
/// imports become wasi 0.2 imports, the world's own imports and exports come from the
/// component-type section the bindings linked in.
fn component(core: &Path, out: &Path) -> Result {
    let module = std::fs::read(core).map_err(|e| format!("cannot read {}: {e}", core.display()))?;
    let bytes = ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .and_then(|encoder| {
            encoder.adapter(
                WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .and_then(|mut encoder| encoder.encode())
        .map_err(|e| format!("cannot make a component of {}: {e:#}", core.display()))?;
    std::fs::write(out, bytes).map_err(|e| format!("cannot write {}: {e}", out.display()))
}
