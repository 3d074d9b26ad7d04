//! Helpers shared by the child-process tests.

use std::process::Command;

/// Recurses until the stack runs out (the depth check only defeats the
/// "cannot return" lint and tail-call elimination).
#[inline(never)]
pub fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    if depth == u64::MAX {
        return 0;
    }
    frame[depth as usize % 64] + recurse(depth + 1) + std::hint::black_box(1)
}

/// What a child run of this test binary printed and the signal that ended it.
// Each test binary compiles this module on its own and reads only some fields.
#[allow(dead_code)]
pub struct ChildOutcome {
    pub stdout: String,
    pub stderr: String,
    pub signal: Option<i32>,
}

/// Runs this test binary's `child_process_entry` test in a child process
/// with `env_var=mode`.
pub fn run_child(env_var: &str, mode: &str) -> ChildOutcome {
    use std::os::unix::process::ExitStatusExt;
    // Under an emulator (`cargo xtask test-aarch64` runs these under qemu-user) the child must
    // be started through it too: the binary is not native.
    let runner = std::env::var("WEFT_TEST_CHILD_RUNNER").unwrap_or_default();
    let mut runner = runner.split_whitespace();
    let mut command = match runner.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(runner).arg(std::env::current_exe().unwrap());
            command
        }
        None => Command::new(std::env::current_exe().unwrap()),
    };
    let out = command
        .args([
            "--exact",
            "child_process_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(env_var, mode)
        .output()
        .unwrap();
    ChildOutcome {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        signal: out.status.signal(),
    }
}
