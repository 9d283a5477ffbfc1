//! The response tee: the answer's body streams on untouched while its
//! first `traces.max_body` bytes are copied into the pending trace, which
//! is queued as soon as the body ends, fails, or is dropped (a client that
//! went away still leaves a trace). Nothing waits for the whole body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;

use super::{Pending, Sink};
use crate::body::{Body, BoxError};
use crate::limits::concurrency::Slot;

/// Queues the pending trace once (on end, error or drop).
struct Submit {
    pending: Option<Box<Pending>>,
    sink: Sink,
}

impl Submit {
    fn data(&mut self, data: &Bytes) {
        if let Some(p) = self.pending.as_mut() {
            p.response_total = p.response_total.saturating_add(data.len());
            let room = p.max_body.saturating_sub(p.response_kept);
            if room > 0 && !data.is_empty() {
                // A shared slice of the frame: no copy.
                let n = data.len().min(room);
                p.response_body.push(data.slice(..n));
                p.response_kept += n;
            }
        }
    }

    fn done(&mut self, complete: bool) {
        if let Some(mut p) = self.pending.take() {
            p.response_complete = complete;
            self.sink.submit(p);
        }
    }
}

impl Drop for Submit {
    fn drop(&mut self) {
        self.done(false);
    }
}

pin_project_lite::pin_project! {
    /// A response body that copies its first bytes into a trace, and holds
    /// the request's in-flight slot (if its plan caps concurrency) until
    /// it ends: one wrapper for both.
    struct Tee {
        #[pin]
        inner: Body,
        submit: Submit,
        slot: Option<Slot>,
    }
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.submit.data(data);
                }
                // The last frame: queue the trace before the client can
                // see the end (and look the trace up).
                if this.inner.is_end_stream() {
                    this.submit.done(true);
                    this.slot.take();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.submit.done(false);
                this.slot.take();
            }
            Poll::Ready(None) => {
                this.submit.done(true);
                this.slot.take();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `resp` with its body teed into `pending`, holding `slot` until it ends.
/// A body that has already ended (empty) queues the trace, and gives the
/// slot back, at once.
pub(super) fn wrap(
    sink: Sink,
    pending: Pending,
    resp: Response<Body>,
    slot: Option<Slot>,
) -> Response<Body> {
    let mut submit = Submit {
        pending: Some(Box::new(pending)),
        sink,
    };
    if resp.body().is_end_stream() {
        submit.done(true);
        return resp;
    }
    resp.map(|inner| {
        Tee {
            inner,
            submit,
            slot,
        }
        .boxed()
    })
}
