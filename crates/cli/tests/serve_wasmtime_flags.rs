//! `weft serve` with `wasmtime serve`'s flag names, `-S`, `--env` and `--dir`: a command line
//! written for `wasmtime serve` works unchanged where it means what weft does, and the guest
//! sees the environment and directories it is given. The guest is the C guest
//! `guests/http/http_env_dir.c`, built by `cargo xtask build-guests`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

mod support;
use support::start_serve as start;

/// A C guest built by `cargo xtask build-guests`; fails (never skips) when it is missing.
fn guest(name: &str) -> PathBuf {
    let dir = std::env::var_os("WEFT_GUESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // `<target>/tmp`: the guests are in `<target>/guests`, whatever the target is.
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .expect("the tmp directory is inside the target directory")
                .join("guests")
        });
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "guest {} is missing: run `cargo xtask build-guests` first",
        path.display()
    );
    path
}

/// A fresh directory of this test process (the tests of one file run in one process).
fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("weft-serve-flags-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn weft() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weft"))
}

fn get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// SIGINT, then the drained server's output; it must exit 0.
fn stop(child: Child) -> Output {
    // SAFETY: `kill` on the pid of our own child process; no memory is involved.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn wasmtime_flag_names_env_and_dir_reach_a_served_guest() {
    let dir = scratch_dir("data");
    std::fs::write(dir.join("in.txt"), "from the host\n").unwrap();
    let mut command = weft();
    command
        .args(["serve", "--addr", "127.0.0.1:0", "--workers", "1"])
        .args(["--max-instance-reuse-count", "4"])
        .args(["--max-instance-concurrent-reuse-count", "2"])
        .args(["-S", "cli", "-Shttp=y", "-S", "cli,http"])
        .args(["--env", "A=1"])
        .arg("--dir")
        .arg(format!("{}::/data", dir.display()))
        .arg(guest("http_env_dir"));
    let (child, addr) = start(&mut command);
    // More requests than an instance serves: every new instance gets them too.
    for _ in 0..6 {
        let response = get(&addr, "/");
        assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
        assert!(
            response.ends_with("\r\n\r\nA=1\nfile=from the host\n"),
            "{response:?}"
        );
    }
    // The directory is writable.
    assert_eq!(std::fs::read_to_string(dir.join("out.txt")).unwrap(), "1");
    let output = stop(child);
    assert!(stderr(&output).contains("drained, 6 requests served"));
}

#[test]
fn env_name_alone_passes_the_hosts_value() {
    let dir = scratch_dir("name-alone");
    let mut command = weft();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1"])
        .args(["--env", "A"])
        .env("A", "from the host env")
        .arg("--dir")
        .arg(format!("{}::/data", dir.display()))
        .arg(guest("http_env_dir"));
    let (child, addr) = start(&mut command);
    let response = get(&addr, "/");
    assert!(
        response.ends_with("A=from the host env\nfile=(none)\n"),
        "{response:?}"
    );
    stop(child);

    let output = weft()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--env",
            "WEFT_TEST_UNSET_VAR",
        ])
        .env_remove("WEFT_TEST_UNSET_VAR")
        .arg(guest("http_env_dir"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(
        stderr(&output),
        "error: `--env WEFT_TEST_UNSET_VAR`: the host has no variable `WEFT_TEST_UNSET_VAR` to \
         pass on\n"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn a_dir_that_cannot_be_opened_is_a_load_error_naming_it() {
    let missing = scratch_dir("missing").join("no-such-dir");
    let output = weft()
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(format!("{}::/data", missing.display()))
        .arg(guest("http_env_dir"))
        .output()
        .unwrap();
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.starts_with(&format!(
            "error: cannot preopen directory `{}`: ",
            missing.display()
        )),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(output.stdout.is_empty());
}

#[test]
fn refused_wasi_options_exit_2_with_one_line() {
    let cases = [
        (
            &["-S", "cli=n"][..],
            "`-S cli=n`: weft serve always provides wasi:cli",
        ),
        (
            &["-Shttp=no"],
            "`-S http=no`: weft serve always provides wasi:http",
        ),
        (&["-S", "http=false"], "always provides wasi:http"),
        (
            &["-S", "inherit-env"],
            "`-S inherit-env`: unsupported WASI option `inherit-env`; weft serve accepts only \
             `-S cli` and `-S http`",
        ),
        (&["-S", "cli,tcp=y"], "unsupported WASI option `tcp`"),
        (
            &["-S", "cli=maybe"],
            "`maybe` is not y, yes, true, n, no or false",
        ),
    ];
    for (flags, expected) in cases {
        // Refused before the guest is looked at: a usage error, not a load error.
        let output = weft()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(flags)
            .arg("no-such-guest.wasm")
            .output()
            .unwrap();
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{flags:?}: {text}");
        assert!(
            text.starts_with("error: ") && text.contains(expected),
            "{flags:?}: {text}"
        );
        assert_eq!(text.lines().count(), 1, "{flags:?}: {text}");
        assert!(output.stdout.is_empty());
    }
}

#[test]
fn help_shows_the_wasmtime_names() {
    let output = weft().args(["serve", "--help"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for name in [
        "--addr",
        "--max-instance-reuse-count",
        "--max-instance-concurrent-reuse-count",
        "-S <OPTION[=VALUE]>",
        "--env <NAME[=VALUE]>",
        "--dir <HOST[::GUEST]>",
    ] {
        assert!(help.contains(name), "{name} missing from:\n{help}");
    }
}
