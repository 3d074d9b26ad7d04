//! The response body type: the whole body at once, counted while hyper still holds it so a
//! shutdown waits until responses are written.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// A complete response body; the server counts it as "being written" until hyper drops it.
pub struct ResponseBody {
    data: Option<Bytes>,
    len: u64,
    open: Arc<AtomicUsize>,
}

impl ResponseBody {
    pub(crate) fn new(data: Bytes, open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        let len = data.len() as u64;
        ResponseBody {
            data: (!data.is_empty()).then_some(data),
            len,
            open,
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.data.take().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}
