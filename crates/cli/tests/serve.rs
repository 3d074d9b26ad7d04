//! `weft serve` as a process: the ready line, a request, SIGINT draining, load errors.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;

mod support;
use support::start_serve;

const HELLO: &str = r#"(module
  (import "weft_http_v1" "response_write" (func $write (param i32 i32) (result i32)))
  (import "weft_http_v1" "response_finish" (func $finish (result i32)))
  (memory (export "memory") 1)
  (global (export "__stack_pointer") (mut i32) (i32.const 65536))
  (table (export "__indirect_function_table") 1 funcref)
  (data (i32.const 16) "hello\n")
  (func (export "weft_http_handle")
    (drop (call $write (i32.const 16) (i32.const 6)))
    (drop (call $finish))))"#;

fn write_guest(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("weft-serve-guests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn serves_until_sigint_then_drains_and_exits_0() {
    let guest = write_guest("hello.wat", HELLO);
    let (child, addr) = start_serve(
        Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["serve", "--listen", "127.0.0.1:0", "--workers", "2"])
            .arg(&guest),
    );
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .write_all(b"GET /hi HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
    assert!(response.ends_with("hello\n"), "{response:?}");
    // SAFETY: `kill` on the pid of our own child process; no memory is involved.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("path=/hi status=200"), "{stderr}");
    assert!(stderr.contains("outcome=completed"), "{stderr}");
    assert!(stderr.contains("drained, 1 requests served"), "{stderr}");
}

#[test]
fn a_guest_without_a_handler_is_a_load_error() {
    let guest = write_guest("nohandler.wat", "(module (memory (export \"memory\") 1))");
    let output = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg(&guest)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("weft_http_handle"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}
