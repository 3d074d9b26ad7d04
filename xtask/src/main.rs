//! `cargo xtask`: the project's build, test, bench and demo entry points.
//!
//! Run `cargo xtask help` for the list of subcommands.

mod aarch64;
mod bench;
mod c_components;
mod components;
mod demo;
mod guests;
mod toolchain;
mod util;

use std::process::ExitCode;
use util::{Result, cargo, run};

const HELP: &str = "\
cargo xtask <command>

  demo                 run the main demo
  test                 fmt check, clippy -D warnings, cargo test --workspace, the loom
                       model checks of weft-sched, test-aarch64
  test-aarch64         test the aarch64 context switch under qemu (C harness; crate tests
                       too when the Rust aarch64 target is installed)
  bench <name>         run a side-by-side benchmark: fiber, sched, wasix, serve
                       (`serve wasix` or `serve components` runs one half; `serve --help`)
  soak [SECS]          mixed innocent and hostile traffic against `weft serve` for SECS
                       seconds (default 60; `test` runs the same soak for 3 s)
  build-guests         build the C guests in guests/ into target/guests/, and the Python and
                       C wasi:http components in guests/components/ into
                       target/guests/components/
  cc FILE.c -o OUT.wasm  compile a C file with the project's wasm toolchain and flags
  cc --world wasi:http/proxy|wasi:http/service FILE.c -o OUT.wasm
                       build a C file into a wasi:http component (0.2 proxy or 0.3 service)
                       with wit-bindgen's C bindings and the preview1 reactor adapter
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("test-aarch64") => aarch64::test(),
        Some("bench") => bench::run(&args[1..]),
        Some("demo") => demo::run(),
        Some("soak") => soak(args.get(1).map_or("60", String::as_str)),
        Some("build-guests") => guests::build_all(),
        Some("cc") => guests::cc(&args[1..]),
        None | Some("help" | "-h" | "--help") => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command `{other}`\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The soak test of `tests/tests/serve_hostile.rs`, run longer than `test` runs it.
fn soak(secs: &str) -> Result {
    if secs.parse::<u64>().map_or(true, |s| s == 0) {
        return Err(format!("soak: `{secs}` is not a number of seconds above 0"));
    }
    guests::build_all()?;
    let weft = util::target_dir().join("debug").join("weft");
    run(cargo().args(["build", "-p", "weft-cli"]))?;
    run(cargo()
        .args(["test", "-p", "weft-e2e", "--test", "serve_hostile", "soak"])
        .args(["--", "--nocapture"])
        .env("WEFT_SOAK_SECS", secs)
        .env("WEFT_BIN", weft))
}

fn test() -> Result {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The end-to-end tests in tests/ run the C guests, so they must be built (incrementally) first.
    guests::build_all()?;
    // `cargo test --workspace` builds the `weft` binary (weft-cli has integration tests) with
    // the same features as everything else before it runs any test. Pointing the end-to-end
    // tests at it spares them their own `cargo build -p weft-cli`, whose different feature set
    // would compile wasmtime a second time.
    let weft = util::target_dir().join("debug").join("weft");
    run(cargo().args(["test", "--workspace"]).env("WEFT_BIN", weft))?;
    loom()?;
    aarch64::test()
}

/// Model-checks weft-sched's lock-free protocols (idle/park and wake-up, the timer hand-off to
/// the driver, `JoinCell`) with loom. `--cfg loom` changes how every crate is compiled, so the
/// build gets its own target directory and leaves the normal cache alone; the preemption bound
/// keeps the exploration to seconds.
fn loom() -> Result {
    let target = util::target_dir().join("loom");
    // `run` echoes the command line only; say which environment reproduces it.
    eprintln!(
        "xtask: loom step: RUSTFLAGS=\"--cfg loom\" LOOM_MAX_PREEMPTIONS=3 CARGO_TARGET_DIR={}",
        target.display()
    );
    run(cargo()
        .args(["test", "-p", "weft-sched", "--release", "--lib", "loom"])
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", "--cfg loom")
        .env("CARGO_TARGET_DIR", target)
        .env("LOOM_MAX_PREEMPTIONS", "3"))
}
