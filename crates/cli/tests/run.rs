//! `weft run` end to end, with WAT guests (the C guests are exercised in `tests/`).

use std::path::PathBuf;
use std::process::{Command, Output};

use weft_cli::run::{EXIT_ENTRYPOINT_RETURNED, EXIT_TRAP, RunOptions};

/// A command guest using the context API: `$body` is the body of `_start`; `$ctx` is the
/// entrypoint at table slot 1.
fn guest(name: &str, ctx: &str, start: &str) -> PathBuf {
    let wat = format!(
        r#"(module
        (import "wasix_32v1" "context_create" (func $create (param i32 i32) (result i32)))
        (import "wasix_32v1" "context_switch" (func $switch (param i64) (result i32)))
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (global (export "__stack_pointer") (mut i32) (i32.const 65536))
        (table (export "__indirect_function_table") 2 funcref)
        (elem (i32.const 1) $ctx)
        (data (i32.const 100) "hello from a context\n")
        (func $say (i32.store (i32.const 16) (i32.const 100)) (i32.store (i32.const 20) (i32.const 21))
            (drop (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24))))
        (func $ctx {ctx})
        (func (export "_start")
            (drop (call $create (i32.const 0) (i32.const 1)))
            (drop (call $switch (i64.load (i32.const 0))))
            {start}))"#
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("weft-cli-guests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wat::parse_str(&wat).unwrap()).unwrap();
    path
}

fn weft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("run")
        .args(args)
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn output_and_exit_code_come_from_the_guest_even_inside_a_context() {
    let path = guest("exit7", "(call $say) (call $exit (i32.const 7))", "");
    let output = weft(&[path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(7), "{}", stderr(&output));
    assert_eq!(output.stdout, b"hello from a context\n");
}

#[test]
fn a_returning_entrypoint_exits_129() {
    let path = guest("returns", "(call $say)", "");
    let output = weft(&[path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(EXIT_ENTRYPOINT_RETURNED));
    assert!(stderr(&output).contains("returned from its entrypoint"));
}

#[test]
fn a_trap_prints_its_wasm_backtrace_and_exits_134() {
    let path = guest("traps", "(unreachable)", "");
    let output = weft(&[path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(EXIT_TRAP));
    let text = stderr(&output);
    assert!(text.contains("wasm backtrace"), "{text}");
    assert!(text.contains("unreachable"), "{text}");
    assert!(
        !text.contains("Stack backtrace"),
        "no host backtrace: {text}"
    );
}

#[test]
fn load_errors_exit_1_and_name_the_problem() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("weft-cli-guests");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    };
    let component = write("component.wasm", &wat::parse_str("(component)").unwrap());
    let unknown = write(
        "unknown.wasm",
        &wat::parse_str(r#"(module (import "env" "mystery" (func)) (func (export "_start")))"#)
            .unwrap(),
    );
    let no_sp = write(
        "no_sp.wasm",
        &wat::parse_str(
            r#"(module (import "wasix_32v1" "context_switch" (func (param i64) (result i32)))
               (memory (export "memory") 1) (table (export "__indirect_function_table") 1 funcref)
               (func (export "_start")))"#,
        )
        .unwrap(),
    );
    let text = write("text.wasm", b"hello, world");
    let missing = dir.join("missing.wasm").to_str().unwrap().to_string();
    for (path, expected) in [
        (missing, "No such file"),
        (text, "not a WebAssembly file"),
        (component, "component"),
        (unknown, "`env.mystery`"),
        (no_sp, "`__stack_pointer`"),
    ] {
        let output = weft(&[&path]);
        assert_eq!(output.status.code(), Some(1), "{path}");
        assert!(output.stdout.is_empty());
        assert!(stderr(&output).contains(expected), "{}", stderr(&output));
    }
}

#[test]
fn args_and_env_reach_the_guest() {
    // `_start` exits with argc * 10 + the number of environment variables.
    let wat = r#"(module
        (import "wasi_snapshot_preview1" "args_sizes_get" (func $args (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "environ_sizes_get" (func $envs (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (memory (export "memory") 1)
        (func (export "_start")
            (drop (call $args (i32.const 0) (i32.const 4)))
            (drop (call $envs (i32.const 8) (i32.const 12)))
            (call $exit (i32.add (i32.mul (i32.load (i32.const 0)) (i32.const 10))
                                 (i32.load (i32.const 8))))))"#;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("weft-cli-guests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("argc.wat");
    std::fs::write(&path, wat).unwrap();
    let path = path.to_str().unwrap();
    let output = weft(&["--env", "A=1", "--env", "B=2", path, "--", "x", "--y"]);
    assert_eq!(output.status.code(), Some(32), "{}", stderr(&output));
}

#[test]
fn the_library_runs_a_guest_in_process_with_captured_output() {
    let path = guest(
        "captured",
        "(call $say) (drop (call $switch (i64.const 0)))",
        "(call $say)",
    );
    let outcome = RunOptions::new(path).capture_output(true).run().unwrap();
    assert_eq!(outcome.exit_code, 0);
    assert_eq!(
        outcome.stdout,
        b"hello from a context\nhello from a context\n"
    );
    assert!(outcome.error.is_none());
}

#[test]
fn size_flags_out_of_range_are_refused_with_exit_2() {
    for (flag, value) in [
        ("--context-stack-size", "18446744073709551615"),
        ("--context-stack-size", "1024"),
        ("--shadow-stack-size", "0"),
        ("--shadow-stack-size", "18446744073709551615"),
        ("--max-contexts", "0"),
        ("--max-live-contexts", "0"),
        ("--max-live-contexts", "18446744073709551615"),
    ] {
        let output = weft(&[flag, value, "guest.wasm"]);
        assert_eq!(output.status.code(), Some(2), "{flag} {value}");
        let stderr = stderr(&output);
        assert!(
            stderr.contains(flag) && stderr.contains(value),
            "{flag} {value}: {stderr}"
        );
    }
    for (flag, value) in [
        ("--request-timeout", "0"),
        ("--shutdown-timeout", "nan"),
        ("--max-instance-memory", "18446744073709551615"),
        ("--max-response-body", "1099511627777"),
        ("--response-buffer", "0"),
        ("--max-live-contexts", "0"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["serve", flag, value, "guest.wasm"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{flag} {value}");
        assert!(stderr(&output).contains(flag), "{flag} {value}");
    }
}
