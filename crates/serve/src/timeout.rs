//! A deadline for any future, on weft-sched's timers.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

/// `None` if `duration` passes before `future` completes.
pub(crate) async fn with_timeout<F: Future>(future: F, duration: Duration) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut timer = pin!(weft_sched::Sleep::new(duration));
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}
