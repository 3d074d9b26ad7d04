//! `cargo xtask bench <name>`: side-by-side benchmarks that print
//! `bench <name>.<metric> weft=... <peer>=... ratio=...` lines.

use crate::util::{self, Result, cargo};

/// Benchmark name -> (package, bench target). Each bench target is a
/// `harness = false` binary that measures weft and its peer in one process.
const BENCHES: &[(&str, &str, &str)] = &[
    ("fiber", "weft-fiber", "fiber"),
    ("sched", "weft-sched", "sched"),
    ("wasix", "weft-wasix-context", "wasix"),
];

pub fn run(args: &[String]) -> Result {
    let names: Vec<&str> = BENCHES.iter().map(|(name, _, _)| *name).collect();
    let Some(wanted) = args.first() else {
        return Err(format!("usage: cargo xtask bench <{}>", names.join("|")));
    };
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
