//! weft-fiber's fault handler and wasmtime's share the process: whichever
//! is installed first, a wasm out-of-bounds access still becomes a clean
//! wasmtime trap and a fiber overflow is still diagnosed. Each order runs in
//! its own child process (handlers are installed once per process).

mod support;

use support::{recurse, run_child};
use weft_fiber::{Fiber, Stack, Suspender};

const CHILD_ENV: &str = "WEFT_FIBER_WASMTIME_CHILD";

const OUT_OF_BOUNDS: &str = r#"
    (module
      (memory 1)
      (func (export "oob") (result i32)
        i32.const 0x7fff0000
        i32.load))
"#;

/// Runs wasm that faults on an unmapped guard region; wasmtime must turn it
/// into a trap. Returns the trap's text.
fn wasm_out_of_bounds_trap() -> String {
    let engine = wasmtime::Engine::default();
    let module = wasmtime::Module::new(&engine, OUT_OF_BOUNDS).unwrap();
    let mut store = wasmtime::Store::new(&engine, ());
    let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
    let oob = instance
        .get_typed_func::<(), i32>(&mut store, "oob")
        .unwrap();
    let error = oob.call(&mut store, ()).unwrap_err();
    format!("{error:?}")
}

fn overflow_a_fiber() {
    let mut fiber = Fiber::with_stack(Stack::new(64 * 1024).unwrap(), |_: &Suspender, ()| {
        recurse(0);
    });
    fiber.resume(());
}

#[test]
fn child_process_entry() {
    match std::env::var(CHILD_ENV).as_deref() {
        Ok("fiber-first") => {
            drop(Stack::new(Stack::MIN_SIZE).unwrap()); // installs weft-fiber's handler
            println!("trap: {}", wasm_out_of_bounds_trap());
            overflow_a_fiber();
        }
        Ok("wasmtime-first") => {
            println!("trap: {}", wasm_out_of_bounds_trap());
            drop(Stack::new(Stack::MIN_SIZE).unwrap());
            println!("trap: {}", wasm_out_of_bounds_trap());
            overflow_a_fiber();
        }
        _ => {}
    }
}

fn check(mode: &str, traps: usize) {
    let child = run_child(CHILD_ENV, mode);
    let (stdout, stderr, signal) = (child.stdout, child.stderr, child.signal);
    assert_eq!(
        stdout.matches("out of bounds memory access").count(),
        traps,
        "wasmtime trapped cleanly {traps} time(s):\n{stdout}\n{stderr}"
    );
    assert!(stderr.contains("fiber stack overflow"), "{stderr}");
    assert_eq!(signal, Some(libc::SIGABRT), "{stderr}");
}

#[test]
fn wasmtime_traps_work_when_weft_fiber_installed_its_handler_first() {
    check("fiber-first", 1);
}

#[test]
fn wasmtime_traps_work_when_wasmtime_installed_its_handler_first() {
    check("wasmtime-first", 2);
}
