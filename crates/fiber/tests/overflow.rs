//! Running off a fiber's stack is diagnosed, in a child process (the
//! diagnosis aborts). Faults elsewhere still reach the handlers that were
//! installed before weft-fiber's.

use std::process::Command;

use weft_fiber::{Fiber, Stack, Suspender};

const CHILD_ENV: &str = "WEFT_FIBER_OVERFLOW_CHILD";

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    if depth == u64::MAX {
        return 0;
    }
    frame[depth as usize % 64] + recurse(depth + 1) + std::hint::black_box(1)
}

fn run_child(mode: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .output()
        .unwrap()
}

/// Does nothing in a normal run; in a child started by the tests below it
/// performs the faulting action named by the environment variable.
#[test]
fn child_process_entry() {
    match std::env::var(CHILD_ENV).as_deref() {
        Ok("fiber-overflow") => {
            let stack = Stack::new(64 * 1024).unwrap();
            let mut fiber = Fiber::with_stack(stack, |_: &Suspender, ()| recurse(0));
            fiber.resume(());
        }
        Ok("thread-overflow") => {
            // A fiber exists (the handler is installed), but the overflow
            // happens on an ordinary thread: Rust's own handler must report it.
            let _fiber = Fiber::new(|_: &Suspender, ()| ());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(|| recurse(0))
                .unwrap()
                .join()
                .unwrap();
        }
        Ok("null-deref") => {
            let _fiber = Fiber::new(|_: &Suspender, ()| ());
            let null: *const u8 = std::hint::black_box(std::ptr::null());
            // SAFETY: deliberately faults; the test checks how it is reported.
            let _ = unsafe { std::ptr::read_volatile(null) };
        }
        _ => {}
    }
}

#[cfg(unix)]
fn signal_of(status: std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

#[test]
fn fiber_stack_overflow_is_diagnosed() {
    let out = run_child("fiber-overflow");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fiber stack overflow"), "stderr: {stderr}");
    assert!(
        stderr.contains("(64 KiB)"),
        "the stack range is named: {stderr}"
    );
    assert_eq!(signal_of(out.status), Some(libc::SIGABRT), "{stderr}");
}

#[test]
fn thread_stack_overflow_still_reaches_rusts_handler() {
    let out = run_child("thread-overflow");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("fiber stack overflow"), "stderr: {stderr}");
    assert!(
        stderr.contains("has overflowed its stack"),
        "stderr: {stderr}"
    );
    assert_eq!(signal_of(out.status), Some(libc::SIGABRT), "{stderr}");
}

#[test]
fn other_faults_get_the_previous_disposition() {
    let out = run_child("null-deref");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("fiber stack overflow"), "stderr: {stderr}");
    assert_eq!(signal_of(out.status), Some(libc::SIGSEGV), "{stderr}");
}
