//! `cargo xtask test-aarch64`: tests the aarch64 context switch on any
//! Linux machine with qemu user emulation.
//!
//! 1. Always: `crates/fiber/tests/aarch64/harness.c` is linked with the very
//!    `.S` file the crate includes (`crates/fiber/src/arch/aarch64.S`) by
//!    `aarch64-linux-gnu-gcc -static` and run under `qemu-aarch64`.
//! 2. When the Rust `aarch64-unknown-linux-gnu` target happens to be
//!    installed: weft-fiber's own tests, cross-compiled and run under qemu.

use std::process::Command;

use crate::util::{Result, cargo, ensure_packages, have, run, target_dir, workspace_root};

const PACKAGES: &[(&str, &str)] = &[
    ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    ("/usr/aarch64-linux-gnu/lib/libc.a", "libc6-dev-arm64-cross"),
    ("qemu-aarch64", "qemu-user"),
];

pub fn test() -> Result {
    if !cfg!(target_os = "linux") {
        return Err("test-aarch64 needs Linux (qemu user emulation)".into());
    }
    ensure_packages("test-aarch64", PACKAGES)?;
    let root = workspace_root();
    let out_dir = target_dir().join("aarch64-harness");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let harness = out_dir.join("switch-harness");
    run(Command::new("aarch64-linux-gnu-gcc")
        .args(["-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&harness)
        .arg(root.join("crates/fiber/tests/aarch64/harness.c"))
        .arg(root.join("crates/fiber/src/arch/aarch64.S")))?;
    run(Command::new("qemu-aarch64").arg(&harness))?;

    if rust_target_installed("aarch64-unknown-linux-gnu") {
        run(cargo()
            .args([
                "test",
                "--package",
                "weft-fiber",
                "--target",
                "aarch64-unknown-linux-gnu",
            ])
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
                "aarch64-linux-gnu-gcc",
            )
            .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER", QEMU)
            // Tests that re-run their own binary as a child start it through qemu as well.
            .env("WEFT_TEST_CHILD_RUNNER", QEMU))?;
    } else {
        eprintln!(
            "xtask: the Rust aarch64-unknown-linux-gnu target is not installed, so weft-fiber's \
             Rust tests were not run under qemu (the C harness above covers the switch). \
             To run them too: rustup target add aarch64-unknown-linux-gnu"
        );
    }
    Ok(())
}

/// How an aarch64 Linux binary runs here.
const QEMU: &str = "qemu-aarch64 -L /usr/aarch64-linux-gnu";

fn rust_target_installed(target: &str) -> bool {
    if !have("rustup") {
        return false;
    }
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.trim() == target)
        })
        .unwrap_or(false)
}
