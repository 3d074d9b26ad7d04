//! Shared helpers of the end-to-end tests in `tests/tests/`: find (and build) the `weft`
//! binary and the C guests, run a guest through `weft run`, and compare what it printed.
//!
//! The guests are built by `cargo xtask build-guests` into `<target>/guests/`; the `weft` binary
//! is built on first use with `cargo build -p weft-cli` into the same target directory and
//! profile as the running test. `WEFT_BIN` and `WEFT_GUESTS_DIR` override either location.
//! [`serve`] runs `weft serve` as a child process for the serve tests.

pub mod serve;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A guest that runs longer than this is taken to hang (a bug, reported as a failure). It is a
/// guard against hanging CI, far above any guest's running time, not a timing assertion.
const HANG_TIMEOUT: Duration = Duration::from_secs(300);

/// What a finished `weft run` left behind.
#[derive(Debug)]
pub struct Outcome {
    /// What the command ran, for failure messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// The exit code; fails the test when weft was killed by a signal (a host crash).
    pub fn code(&self) -> i32 {
        match self.status.code() {
            Some(code) => code,
            None => panic!(
                "`{}` did not exit normally ({}): the host crashed\n{}",
                self.command,
                self.status,
                self.dump()
            ),
        }
    }

    pub fn assert_exit_code(&self, expected: i32) -> &Self {
        let code = self.code();
        assert_eq!(
            code,
            expected,
            "`{}` exited with {code}, expected {expected}\n{}",
            self.command,
            self.dump()
        );
        self
    }

    /// Exactly this stdout (lines compared one by one, so a failure points at the first
    /// difference).
    pub fn assert_stdout(&self, expected: &str) -> &Self {
        if self.stdout != expected {
            let first_difference = self
                .stdout
                .lines()
                .zip(expected.lines())
                .position(|(got, want)| got != want)
                .unwrap_or_else(|| self.stdout.lines().count().min(expected.lines().count()));
            panic!(
                "`{}`: stdout differs from line {}\n--- expected stdout ---\n{expected}\n{}",
                self.command,
                first_difference + 1,
                self.dump()
            );
        }
        self
    }

    /// stderr contains each of `needles` (case-insensitive).
    pub fn assert_stderr_contains(&self, needles: &[&str]) -> &Self {
        let haystack = self.stderr.to_lowercase();
        for needle in needles {
            assert!(
                haystack.contains(&needle.to_lowercase()),
                "`{}`: stderr does not mention {needle:?}\n{}",
                self.command,
                self.dump()
            );
        }
        self
    }

    pub fn dump(&self) -> String {
        format!(
            "--- exit status: {} ---\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// The directory of the running test executable's profile (`<target>/debug`, say).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    // <target>/<profile>/deps/<test binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test executables live in <target>/<profile>/deps")
        .to_path_buf()
}

/// The `weft` binary, built once per test process.
pub fn weft() -> &'static Path {
    static WEFT: OnceLock<PathBuf> = OnceLock::new();
    WEFT.get_or_init(|| {
        if let Some(path) = std::env::var_os("WEFT_BIN") {
            return PathBuf::from(path);
        }
        let profile_dir = profile_dir();
        let cargo = std::env::var_os("CARGO")
            .or_else(|| option_env!("CARGO").map(Into::into))
            .unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "--quiet",
            "--package",
            "weft-cli",
            "--bin",
            "weft",
        ]);
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some("release") => {
                build.arg("--release");
            }
            Some(profile) => {
                build.args(["--profile", profile]);
            }
            None => {}
        }
        // Build into the target directory this test runs from, whatever CARGO_TARGET_DIR says.
        if let Some(target) = profile_dir.parent() {
            build.env("CARGO_TARGET_DIR", target);
        }
        let status = build
            .status()
            .unwrap_or_else(|e| panic!("cannot run `cargo build -p weft-cli`: {e}"));
        assert!(
            status.success(),
            "`cargo build -p weft-cli` failed: {status}"
        );
        let weft = profile_dir.join(format!("weft{}", std::env::consts::EXE_SUFFIX));
        assert!(
            weft.is_file(),
            "cargo built weft-cli but {} is missing",
            weft.display()
        );
        weft
    })
}

/// Where `cargo xtask build-guests` puts the guests: `<target>/guests`.
pub fn guests_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEFT_GUESTS_DIR") {
        return PathBuf::from(dir);
    }
    let profile_dir = profile_dir();
    // <target>/<profile>, or <target>/<triple>/<profile> when cross-compiling.
    let candidates = profile_dir.ancestors().skip(1).take(2);
    candidates
        .map(|dir| dir.join("guests"))
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| profile_dir.parent().unwrap_or(&profile_dir).join("guests"))
}

/// The path of a built guest; fails (never skips) with the command that builds it.
pub fn guest(name: &str) -> PathBuf {
    let path = guests_dir().join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "guest {} is missing: run `cargo xtask build-guests` first \
         (`cargo xtask test` does it for you)",
        path.display()
    );
    path
}

/// Runs `weft run <guest> -- <args>` to completion and returns what it did.
pub fn run_guest(name: &str, args: &[&str]) -> Outcome {
    run_guest_with(&[], name, args)
}

/// Runs `weft run <options> <guest> -- <args>` to completion and returns what it did.
pub fn run_guest_with(options: &[&str], name: &str, args: &[&str]) -> Outcome {
    let mut cmd = Command::new(weft());
    cmd.arg("run").args(options).arg(guest(name));
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    run(cmd)
}

/// Runs a command to completion with its output captured, failing the test if it hangs.
pub fn run(mut cmd: Command) -> Outcome {
    let command = describe(&cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
    let stdout = reader(child.stdout.take().expect("stdout is piped"));
    let stderr = reader(child.stderr.take().expect("stderr is piped"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for weft") {
            break status;
        }
        if started.elapsed() > HANG_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{command}` hangs: no exit after {HANG_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Outcome {
        command,
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn reader(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}
