//! `cargo xtask bench <name>`: side-by-side benchmarks that print
//! `bench <name>.<metric> weft=... <peer>=... ratio=...` lines.

use crate::util::{self, Result, cargo};

// `serve` is not a cargo bench target: it drives the `weft` binary from outside (see there).
#[path = "serve_bench.rs"]
mod serve_bench;

/// Benchmark name -> (package, bench target). Each bench target is a
/// `harness = false` binary that measures weft and its peer in one process.
const BENCHES: &[(&str, &str, &str)] = &[
    ("fiber", "weft-fiber", "fiber"),
    ("sched", "weft-sched", "sched"),
    ("wasix", "weft-wasix-context", "wasix"),
];

pub fn run(args: &[String]) -> Result {
    let mut names: Vec<&str> = BENCHES.iter().map(|(name, _, _)| *name).collect();
    names.push("serve");
    let Some(wanted) = args.first() else {
        return Err(format!("usage: cargo xtask bench <{}>", names.join("|")));
    };
    if wanted == "serve" {
        return serve_bench::run(&args[1..]);
    }
    let Some((_, package, target)) = BENCHES.iter().find(|(name, _, _)| name == wanted) else {
        return Err(format!(
            "unknown benchmark `{wanted}`; known: {}",
            names.join(", ")
        ));
    };
    util::run(
        cargo()
            .args(["bench", "--package", package, "--bench", target, "--"])
            .args(&args[1..]),
    )
}
