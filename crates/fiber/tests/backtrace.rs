//! A backtrace taken inside a fiber continues into its resumer's frames,
//! through the CFI of the fiber's first frame.

use weft_fiber::{Fiber, Suspender};

#[inline(never)]
fn resumer_marker_frame_for_backtrace(fiber: &mut Fiber<(), String, ()>) -> String {
    let trace = fiber.resume(()).into_yield().unwrap();
    std::hint::black_box(trace)
}

#[inline(never)]
fn deep_inside_the_fiber(s: &Suspender<(), String>) {
    let trace = std::backtrace::Backtrace::force_capture().to_string();
    s.suspend(trace);
}

#[test]
fn backtrace_inside_a_fiber_names_the_resumer() {
    let mut fiber = Fiber::new(|s: &Suspender<(), String>, ()| deep_inside_the_fiber(s));
    let trace = resumer_marker_frame_for_backtrace(&mut fiber);
    assert!(
        trace.contains("deep_inside_the_fiber"),
        "the fiber's own frames: {trace}"
    );
    assert!(
        trace.contains("resumer_marker_frame_for_backtrace"),
        "the backtrace stops at the fiber boundary:\n{trace}"
    );
    assert!(
        trace.contains("backtrace_inside_a_fiber_names_the_resumer"),
        "the backtrace does not reach the test function:\n{trace}"
    );
}
