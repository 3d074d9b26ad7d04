//! The response body type: either whole (a guest's finished draft, the server's own answers)
//! or streamed ([`BodyStream`]: a guest writing more than the host buffers for it). Both are
//! counted while hyper still holds them, so a shutdown waits until responses are written.
//!
//! The streaming protocol, between a guest's instance (the writer) and the connection's task
//! (hyper, the reader), through one mutex:
//! - The writer appends chunks while fewer than `capacity` bytes are unread, taking at most
//!   what fits: the host never holds more than `capacity` bytes of one response body.
//! - When the reader has taken enough that unread bytes fall to half the capacity, it calls
//!   the writer's "writable" notification (set when a guest waits for room), once.
//! - The writer ends the stream with [`BodyStream::finish`]; a writer dropped unfinished (a
//!   trap, a deadline, a dropped instance) aborts it, and the client sees the body cut short
//!   (no final chunk), never a short body presented as complete.
//! - The reader gone (the client hung up, or the connection failed) discards what is unread
//!   and makes every later write fail with `EPIPE`; a waiting guest is notified.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use weft_wasix_context::Errno;

/// A response body; the server counts it as "being written" until hyper drops it.
pub struct ResponseBody {
    kind: Kind,
    open: Arc<AtomicUsize>,
}

enum Kind {
    Whole { data: Option<Bytes>, len: u64 },
    Stream(Arc<BodyStream>),
}

/// A streamed response body ended before its writer finished it (the guest trapped or ran
/// out of time): the client must see the body as cut short.
#[derive(Debug, thiserror::Error)]
#[error("the response body was cut short: its guest did not finish it")]
pub struct BodyAborted;

impl ResponseBody {
    pub(crate) fn new(data: Bytes, open: Arc<AtomicUsize>) -> Self {
        let len = data.len() as u64;
        Self::counted(
            Kind::Whole {
                data: (!data.is_empty()).then_some(data),
                len,
            },
            open,
        )
    }

    /// The reading side of `stream`.
    pub(crate) fn streamed(stream: Arc<BodyStream>, open: Arc<AtomicUsize>) -> Self {
        Self::counted(Kind::Stream(stream), open)
    }

    fn counted(kind: Kind, open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        ResponseBody { kind, open }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Kind::Stream(stream) = &self.kind {
            stream.reader_gone();
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyAborted;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.kind {
            Kind::Whole { data, .. } => Poll::Ready(data.take().map(|data| Ok(Frame::data(data)))),
            Kind::Stream(stream) => stream.poll_read(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Whole { data, .. } => data.is_none(),
            Kind::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Whole { len, .. } => SizeHint::with_exact(*len),
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}

/// Called (once) when a stream a guest waits on has room again, or can never have.
pub(crate) type Notify = Box<dyn FnOnce() + Send>;

/// The shared state of a streamed response body (see the module's protocol).
pub(crate) struct BodyStream {
    inner: Mutex<StreamState>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum End {
    Open,
    Finished,
    Aborted,
}

struct StreamState {
    chunks: VecDeque<Bytes>,
    unread: usize,
    capacity: usize,
    end: End,
    reader_gone: bool,
    reader: Option<Waker>,
    writable: Option<Notify>,
}

impl BodyStream {
    /// A stream holding at most `capacity` unread bytes (at least 1).
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(BodyStream {
            inner: Mutex::new(StreamState {
                chunks: VecDeque::new(),
                unread: 0,
                capacity: capacity.max(1),
                end: End::Open,
                reader_gone: false,
                reader: None,
                writable: None,
            }),
        })
    }

    /// Appends what fits of `bytes`; returns how many were taken (`0` only for empty input).
    /// `EAGAIN` when nothing fits, `EPIPE` once the client is gone.
    pub(crate) fn write(&self, bytes: &[u8]) -> Result<usize, Errno> {
        let (waker, taken) = {
            let mut state = self.inner.lock().unwrap();
            if state.reader_gone {
                return Err(Errno::Pipe);
            }
            debug_assert_eq!(state.end, End::Open, "written after its end");
            let room = state.capacity.saturating_sub(state.unread);
            if bytes.is_empty() {
                return Ok(0);
            }
            if room == 0 {
                return Err(Errno::Again);
            }
            let taken = room.min(bytes.len());
            state
                .chunks
                .push_back(Bytes::copy_from_slice(&bytes[..taken]));
            state.unread += taken;
            (state.reader.take(), taken)
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(taken)
    }

    /// Calls `notify` once the stream has room (half its capacity free) or the client is gone:
    /// at once if that is already so. Replaces an earlier notification not yet called.
    pub(crate) fn on_writable(&self, notify: Notify) {
        let now = {
            let mut state = self.inner.lock().unwrap();
            if state.reader_gone || state.unread <= state.capacity / 2 {
                Some(notify)
            } else {
                state.writable = Some(notify);
                None
            }
        };
        if let Some(notify) = now {
            notify();
        }
    }

    /// The body is complete: the client gets what is unread, then its end.
    pub(crate) fn finish(&self) {
        self.end(End::Finished);
    }

    /// The body ends unfinished: the client sees it cut short.
    pub(crate) fn abort(&self) {
        self.end(End::Aborted);
    }

    fn end(&self, end: End) {
        let waker = {
            let mut state = self.inner.lock().unwrap();
            if state.end != End::Open {
                return;
            }
            state.end = end;
            state.writable = None;
            state.reader.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn reader_gone(&self) {
        let notify = {
            let mut state = self.inner.lock().unwrap();
            state.reader_gone = true;
            state.chunks.clear();
            state.unread = 0;
            state.writable.take()
        };
        if let Some(notify) = notify {
            notify();
        }
    }

    fn poll_read(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyAborted>>> {
        let (result, notify) = {
            let mut state = self.inner.lock().unwrap();
            match state.chunks.pop_front() {
                Some(chunk) => {
                    state.unread -= chunk.len();
                    let notify = if state.unread <= state.capacity / 2 {
                        state.writable.take()
                    } else {
                        None
                    };
                    (Poll::Ready(Some(Ok(Frame::data(chunk)))), notify)
                }
                None => match state.end {
                    End::Finished => (Poll::Ready(None), None),
                    End::Aborted => (Poll::Ready(Some(Err(BodyAborted))), None),
                    End::Open => {
                        state.reader = Some(cx.waker().clone());
                        (Poll::Pending, None)
                    }
                },
            }
        };
        // Outside the lock: the notification sends to the instance's inbox.
        if let Some(notify) = notify {
            notify();
        }
        result
    }
}

/// The writing end of a [`BodyStream`], held by the request's draft. Dropped unfinished (a
/// trap, a deadline, a dropped instance), it aborts the stream: the client sees the body cut
/// short.
pub(crate) struct StreamWriter(Arc<BodyStream>);

impl StreamWriter {
    pub(crate) fn new(stream: Arc<BodyStream>) -> Self {
        StreamWriter(stream)
    }

    pub(crate) fn stream(&self) -> &Arc<BodyStream> {
        &self.0
    }

    /// Ends the body complete.
    pub(crate) fn finish(self) {
        self.0.finish();
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        // Does nothing after `finish`.
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::task::Waker;

    use super::*;

    fn body(stream: &Arc<BodyStream>) -> ResponseBody {
        ResponseBody::streamed(stream.clone(), Arc::new(AtomicUsize::new(0)))
    }

    fn poll(body: &mut ResponseBody) -> Poll<Option<Result<Frame<Bytes>, BodyAborted>>> {
        Pin::new(body).poll_frame(&mut Context::from_waker(Waker::noop()))
    }

    fn data(poll: Poll<Option<Result<Frame<Bytes>, BodyAborted>>>) -> usize {
        match poll {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap().len(),
            other => panic!("not data: {other:?}"),
        }
    }

    fn flag() -> (Arc<AtomicBool>, Notify) {
        let flag = Arc::new(AtomicBool::new(false));
        let set = flag.clone();
        (flag, Box::new(move || set.store(true, Ordering::SeqCst)))
    }

    #[test]
    fn a_writer_takes_what_fits_and_is_told_when_half_is_free() {
        let stream = BodyStream::new(10);
        let mut reader = body(&stream);
        assert_eq!(stream.write(&[0; 6]), Ok(6));
        assert_eq!(stream.write(&[0; 6]), Ok(4), "only what fits");
        assert_eq!(stream.write(&[0; 1]), Err(Errno::Again));
        let (notified, notify) = flag();
        stream.on_writable(notify);
        assert_eq!(data(poll(&mut reader)), 6);
        assert!(notified.load(Ordering::SeqCst), "4 unread of 10");
        assert_eq!(stream.write(&[0; 9]), Ok(6));
        assert_eq!(data(poll(&mut reader)), 4);
        assert_eq!(data(poll(&mut reader)), 6);
        assert!(poll(&mut reader).is_pending());
        stream.finish();
        assert!(matches!(poll(&mut reader), Poll::Ready(None)));
    }

    #[test]
    fn a_dropped_writer_cuts_the_body_short_after_what_was_written() {
        let stream = BodyStream::new(10);
        let mut reader = body(&stream);
        let writer = StreamWriter::new(stream.clone());
        assert_eq!(writer.stream().write(b"abc"), Ok(3));
        drop(writer);
        assert_eq!(data(poll(&mut reader)), 3);
        assert!(matches!(
            poll(&mut reader),
            Poll::Ready(Some(Err(BodyAborted)))
        ));
    }

    #[test]
    fn a_finished_writer_is_not_an_abort() {
        let stream = BodyStream::new(10);
        let mut reader = body(&stream);
        StreamWriter::new(stream.clone()).finish();
        assert!(matches!(poll(&mut reader), Poll::Ready(None)));
    }

    #[test]
    fn a_gone_reader_makes_writes_fail_and_wakes_a_waiting_writer() {
        let stream = BodyStream::new(4);
        let reader = body(&stream);
        assert_eq!(stream.write(&[0; 4]), Ok(4));
        let (notified, notify) = flag();
        stream.on_writable(notify);
        assert!(!notified.load(Ordering::SeqCst));
        drop(reader);
        assert!(notified.load(Ordering::SeqCst));
        assert_eq!(stream.write(&[0; 1]), Err(Errno::Pipe));
        let (now, notify) = flag();
        stream.on_writable(notify);
        assert!(
            now.load(Ordering::SeqCst),
            "told at once: the next write says why"
        );
    }
}
