//! `cargo xtask demo`: the main demo.

use crate::guests;
use crate::util::{Result, cargo};

/// The demo guests of `guests/demos/`, run through `weft run` in this order.
const DEMO_GUESTS: &[(&str, &str)] = &[
    (
        "ping_pong",
        "main and one context hit a ball back and forth",
    ),
    (
        "generator",
        "generators, one yielding from deep inside a tree walk",
    ),
    (
        "greenlets",
        "a greenlet-like library on the raw context API",
    ),
    (
        "producer_consumer",
        "producers and consumers on a bounded queue, scheduled cooperatively",
    ),
];

pub fn run() -> Result {
    eprintln!("== weft-fiber: generators, ping-pong, and panics crossing a fiber boundary ==");
    crate::util::run(cargo().args([
        "run",
        "--quiet",
        "--release",
        "--package",
        "weft-fiber",
        "--example",
        "demo",
    ]))?;

    guests::build_all()?;
    // The debug build of weft is the one the tests share; a release build of wasmtime would
    // cost minutes for guests that run in milliseconds.
    crate::util::run(cargo().args(["build", "--quiet", "--package", "weft-cli", "--bin", "weft"]))?;
    let weft = crate::util::target_dir().join("debug").join("weft");
    for (name, what) in DEMO_GUESTS {
        eprintln!("\n== weft run {name}.wasm: {what} ==");
        let guest = guests::output_dir().join(format!("{name}.wasm"));
        crate::util::run(std::process::Command::new(&weft).arg("run").arg(guest))?;
    }
    Ok(())
}
