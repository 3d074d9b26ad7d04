//! `weft run` as a command: arguments, environment, exit status, limits, and clear errors for
//! guests it cannot run.

use std::process::Command;

use weft_e2e::{guest, run, run_guest, weft};

/// `weft run`'s exit status when it cannot load or link a guest.
const LOAD_ERROR_EXIT_CODE: i32 = 1;

fn weft_run(options: &[&str], wasm: &std::path::Path, args: &[&str]) -> weft_e2e::Outcome {
    let mut cmd = Command::new(weft());
    cmd.arg("run").args(options).arg(wasm);
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    run(cmd)
}

#[test]
fn plain_wasi_guest_gets_its_arguments_and_exit_status() {
    run_guest("plain_wasi", &["one", "two words", "--three"])
        .assert_exit_code(3)
        .assert_stdout(
            "argc 4\narg 1: one\narg 2: two words\narg 3: --three\nWEFT_GREETING=(unset)\n",
        );
}

#[test]
fn env_option_reaches_the_guest() {
    weft_run(&["--env", "WEFT_GREETING=hello"], &guest("plain_wasi"), &[])
        .assert_exit_code(0)
        .assert_stdout("argc 1\nWEFT_GREETING=hello\n");
}

fn limits_with(max_contexts: usize) {
    weft_run(
        &["--max-contexts", &max_contexts.to_string()],
        &guest("limits"),
        &[],
    )
    .assert_exit_code(0)
    .assert_stdout(&format!(
        "ok {max_contexts} live contexts fit; the next create -> EAGAIN
ok wasix_context_create at the limit -> -1, errno EAGAIN
ok destroy(one of them) -> SUCCESS
ok create(in the room it made) -> SUCCESS
ok create(past the limit again) -> EAGAIN
ok create(after destroying all) -> SUCCESS
"
    ));
}

#[test]
fn creating_past_the_context_limit_is_eagain() {
    limits_with(5);
}

#[test]
fn a_limit_of_one_context_still_works() {
    limits_with(1);
}

fn assert_refused(outcome: &weft_e2e::Outcome, needles: &[&str]) {
    outcome
        .assert_exit_code(LOAD_ERROR_EXIT_CODE)
        .assert_stdout("")
        .assert_stderr_contains(needles);
}

#[test]
fn guest_without_an_exported_stack_pointer_is_refused_by_name() {
    assert_refused(
        &run_guest("missing_stack_pointer", &[]),
        &["__stack_pointer", "--export=__stack_pointer"],
    );
}

#[test]
fn guest_without_an_exported_table_is_refused_by_name() {
    assert_refused(
        &run_guest("missing_table", &[]),
        &["__indirect_function_table", "--export-table"],
    );
}

#[test]
fn missing_file_is_a_clear_error() {
    let missing = std::env::temp_dir().join("weft-e2e-no-such-guest.wasm");
    assert_refused(
        &weft_run(&[], &missing, &[]),
        &[&missing.display().to_string()],
    );
}

fn scratch_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write a scratch file");
    path
}

#[test]
fn a_file_that_is_not_wasm_is_a_clear_error() {
    let path = scratch_file("not-wasm.wasm", b"#!/bin/sh\necho this is not wasm\n");
    assert_refused(
        &weft_run(&[], &path, &[]),
        &["not-wasm.wasm", "not a WebAssembly file"],
    );
}

#[test]
fn a_component_is_a_clear_error() {
    // The smallest component: the component-model preamble (version 0xd, layer 1).
    let path = scratch_file("component.wasm", b"\0asm\x0d\0\x01\0");
    assert_refused(&weft_run(&[], &path, &[]), &["is a WebAssembly component"]);
}

#[test]
fn an_import_weft_does_not_provide_is_a_clear_error() {
    // (module (import "env" "not_provided" (func)) (memory (export "memory") 1)
    //         (func (export "_start")))
    let module = [
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type section: [] -> []
        0x02, 0x14, 0x01, 0x03, b'e', b'n', b'v', 0x0c, b'n', b'o', b't', b'_', b'p', b'r', b'o',
        b'v', b'i', b'd', b'e', b'd', 0x00, 0x00, // import env.not_provided: func type 0
        0x03, 0x02, 0x01, 0x00, // function section: one func of type 0
        0x05, 0x03, 0x01, 0x00, 0x01, // memory section: one memory, min 1 page
        0x07, 0x13, 0x02, 0x06, b'm', b'e', b'm', b'o', b'r', b'y', 0x02, 0x00, 0x06, b'_', b's',
        b't', b'a', b'r', b't', 0x00, 0x01, // exports: memory, _start = func 1
        0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code: empty body
    ];
    let path = scratch_file("unknown-import.wasm", &module);
    assert_refused(
        &weft_run(&[], &path, &[]),
        &["env.not_provided", "does not provide"],
    );
}

#[test]
fn contexts_use_wasi_files_in_a_preopened_directory() {
    let dir = std::env::temp_dir().join(format!("weft-e2e-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    let mapping = format!("{}::/data", dir.display());
    let mut expected = String::new();
    for writer in 0..2 {
        for line in 0..5 {
            expected.push_str(&format!(
                "/data/writer-{writer}.txt: writer {writer} line {line}\n"
            ));
        }
    }
    weft_run(&["--dir", &mapping], &guest("files_in_contexts"), &[])
        .assert_exit_code(0)
        .assert_stdout(&expected);
    let on_host = std::fs::read_to_string(dir.join("writer-1.txt")).expect("the guest's file");
    assert!(on_host.starts_with("writer 1 line 0\n"), "{on_host}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn contexts_keep_large_stack_frames_within_the_default_shadow_stack() {
    run_guest("big_frames", &["32"])
        .assert_exit_code(0)
        .assert_stdout("ok two contexts kept 32 KiB stack frames intact across 10 switches\n");
}

#[test]
fn shadow_stack_size_option_makes_room_for_larger_frames() {
    weft_run(
        &["--shadow-stack-size", "1048576"],
        &guest("big_frames"),
        &["600"],
    )
    .assert_exit_code(0)
    .assert_stdout("ok two contexts kept 600 KiB stack frames intact across 10 switches\n");
}
