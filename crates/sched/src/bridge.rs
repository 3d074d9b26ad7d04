//! `block_on`: drive a future from blocking-style code. Inside a green thread only the fiber
//! parks while the future is pending (the worker runs other tasks); elsewhere the OS thread
//! blocks.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use crate::task::{Suspend, current_task_waker_ref, suspend_current};

/// Runs `future` to completion and returns its output.
///
/// Inside a green thread, the fiber parks until the future's waker fires, then polls it again
/// (this is how a wasmtime `call_async` future is driven from a green thread). Outside, the
/// calling thread blocks; futures that need a runtime (`Sleep`, the I/O types) then need one
/// entered (see [`Runtime::block_on`](crate::Runtime::block_on)).
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    if let Some(waker) = current_task_waker_ref() {
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            suspend_current(Suspend::Park);
        }
    }
    let notify = Arc::new(ThreadNotify {
        thread: thread::current(),
        notified: AtomicBool::new(false),
    });
    let waker = Waker::from(notify.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        while !notify.notified.swap(false, Ordering::Acquire) {
            thread::park();
        }
    }
}

struct ThreadNotify {
    thread: Thread,
    notified: AtomicBool,
}

impl Wake for ThreadNotify {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.notified.store(true, Ordering::Release);
        self.thread.unpark();
    }
}
