//! What the `weft serve` process tests share: starting the binary and reading its ready line.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The first line `weft serve` prints on stdout, before the address it listens on.
pub const READY_PREFIX: &str = "weft serve: listening on http://";

/// Starts `command` (a `weft serve`) with stdout and stderr piped and returns it with the
/// address of its ready line; a server that prints anything else is killed and its stderr
/// shown.
pub fn start_serve(command: &mut Command) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut ready = String::new();
    stdout.read_line(&mut ready).unwrap();
    match ready.trim().strip_prefix(READY_PREFIX) {
        Some(addr) => (child, addr.to_string()),
        None => {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "unexpected ready line {ready:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}
