//! Adapters to hyper's runtime traits (feature `hyper`), so hyper serves and requests HTTP on
//! weft-sched: `TcpStream` implements `hyper::rt::Read`/`Write` directly, [`HyperExecutor`]
//! runs hyper's background futures as green threads, and [`HyperTimer`] gives hyper timers from
//! the runtime's timer heap.
//!
//! Serving one connection from a green thread (the accept loop spawns one per connection):
//!
//! ```no_run
//! use weft_sched::hyper_rt::HyperTimer;
//! # fn serve(stream: weft_sched::TcpStream) {
//! let service = hyper::service::service_fn(|_req| async {
//!     Ok::<_, std::convert::Infallible>(hyper::Response::new(String::from("hello")))
//! });
//! let connection = hyper::server::conn::http1::Builder::new()
//!     .timer(HyperTimer::current())
//!     .serve_connection(stream, service);
//! let _ = weft_sched::block_on(connection);
//! # }
//! ```

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use crate::TcpStream;
use crate::runtime::Handle;
use crate::timer::Sleep;

impl hyper::rt::Read for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: `poll_read` hands the slice straight to mio's `read`, i.e. `read(2)`, so the
        // uninitialised bytes are only written by the kernel, never read; `advance` below
        // covers exactly the `n` bytes it reported as written (the contract of
        // `ReadBufCursor::as_mut` / `advance`).
        let n = unsafe {
            let unfilled: &mut [MaybeUninit<u8>] = buf.as_mut();
            let unfilled = &mut *(unfilled as *mut [MaybeUninit<u8>] as *mut [u8]);
            ready!(self.into_ref().get_ref().poll_read(cx, unfilled))?
        };
        // SAFETY: the read just initialised the first `n` bytes of the unfilled part
        // (`read(2)` returns at most the length it was given).
        unsafe { buf.advance(n) };
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.into_ref().get_ref().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(match self.shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.into_ref().get_ref().poll_write_vectored(cx, bufs)
    }
}

/// Runs each future hyper hands over (e.g. HTTP/2 stream tasks) on its own green thread.
#[derive(Clone, Debug)]
pub struct HyperExecutor {
    handle: Handle,
}

impl HyperExecutor {
    /// An executor spawning on the runtime of `handle`.
    pub fn new(handle: Handle) -> HyperExecutor {
        HyperExecutor { handle }
    }

    /// An executor for the current runtime.
    ///
    /// # Panics
    /// Outside a runtime.
    pub fn current() -> HyperExecutor {
        HyperExecutor::new(Handle::current())
    }
}

impl<F> hyper::rt::Executor<F> for HyperExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        drop(self.handle.spawn(move || crate::block_on(future)));
    }
}

/// hyper timers (header-read timeouts, keep-alive) from the runtime's timer heap.
#[derive(Clone, Debug)]
pub struct HyperTimer {
    handle: Handle,
}

impl HyperTimer {
    /// A timer on the runtime of `handle`.
    pub fn new(handle: Handle) -> HyperTimer {
        HyperTimer { handle }
    }

    /// A timer for the current runtime.
    ///
    /// # Panics
    /// Outside a runtime.
    pub fn current() -> HyperTimer {
        HyperTimer::new(Handle::current())
    }
}

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(crate::timer::instant_after(duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep::on(self.handle.shared().clone(), deadline))
    }
}

impl hyper::rt::Sleep for Sleep {}
