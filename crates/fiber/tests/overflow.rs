//! Running off a fiber's stack is diagnosed, in a child process (the
//! diagnosis aborts). Faults elsewhere still reach the handlers that were
//! installed before weft-fiber's.

mod support;

use support::{recurse, run_child};
use weft_fiber::{Fiber, Stack, Suspender};

const CHILD_ENV: &str = "WEFT_FIBER_OVERFLOW_CHILD";

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

#[test]
fn fiber_stack_overflow_is_diagnosed() {
    let out = run_child(CHILD_ENV, "fiber-overflow");
    let stderr = &out.stderr;
    assert!(stderr.contains("fiber stack overflow"), "stderr: {stderr}");
    assert!(
        stderr.contains("(64 KiB)"),
        "the stack range is named: {stderr}"
    );
    assert_eq!(out.signal, Some(libc::SIGABRT), "{stderr}");
}

#[test]
fn thread_stack_overflow_still_reaches_rusts_handler() {
    let out = run_child(CHILD_ENV, "thread-overflow");
    let stderr = &out.stderr;
    assert!(!stderr.contains("fiber stack overflow"), "stderr: {stderr}");
    assert!(
        stderr.contains("has overflowed its stack"),
        "stderr: {stderr}"
    );
    assert_eq!(out.signal, Some(libc::SIGABRT), "{stderr}");
}

#[test]
fn other_faults_get_the_previous_disposition() {
    let out = run_child(CHILD_ENV, "null-deref");
    let stderr = &out.stderr;
    assert!(!stderr.contains("fiber stack overflow"), "stderr: {stderr}");
    assert_eq!(out.signal, Some(libc::SIGSEGV), "{stderr}");
}
