//! The one body type every response (and proxied request) uses: a boxed,
//! streaming body, so facade answers, refusals and proxied backend bodies
//! share one `Response` type without buffering anything.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};

/// Errors a body can yield while streaming.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming HTTP body.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body of known bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A request body on its way to dispatch: still streaming from the client,
/// or already read whole (by the validate stage, within the body limit).
#[derive(Debug)]
pub enum RequestBody {
    /// Not read yet.
    Streaming(hyper::body::Incoming),
    /// Read.
    Read(Bytes),
}

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A response body read up to a size, for a look at it before it is sent
/// on (drift checks, recording).
pub struct Peeked {
    /// The whole body, when it ended within the size (trailers dropped).
    pub complete: Option<Bytes>,
    /// The body to send on: the bytes read so far, then whatever is left.
    pub body: Body,
}

/// Reads `body` until it ends or more than `max` bytes have arrived. A body
/// that ends within `max` is returned whole; a longer one comes back as the
/// bytes read so far chained with the rest, still streaming. Fails with the
/// body's own error.
pub async fn peek(mut body: Body, max: usize) -> Result<Peeked, BoxError> {
    use http_body::Body as _;
    let mut frames: Vec<http_body::Frame<Bytes>> = Vec::new();
    let mut read = 0usize;
    let mut trailers = false;
    loop {
        if body.is_end_stream() {
            break;
        }
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame?;
        if let Some(data) = frame.data_ref() {
            read = read.saturating_add(data.len());
        } else {
            trailers = true;
        }
        frames.push(frame);
        if read > max {
            let rest = Prefixed {
                frames: frames.into(),
                rest: Some(body),
            };
            return Ok(Peeked {
                complete: None,
                body: rest.boxed(),
            });
        }
    }
    let mut data = bytes::BytesMut::with_capacity(read);
    for f in &frames {
        if let Some(d) = f.data_ref() {
            data.extend_from_slice(d);
        }
    }
    let data = data.freeze();
    let body = if trailers {
        Prefixed {
            frames: frames.into(),
            rest: None,
        }
        .boxed()
    } else {
        full(data.clone())
    };
    Ok(Peeked {
        complete: Some(data),
        body,
    })
}

pin_project_lite::pin_project! {
    /// Frames already read, then the rest of the body.
    struct Prefixed {
        frames: std::collections::VecDeque<http_body::Frame<Bytes>>,
        #[pin]
        rest: Option<Body>,
    }
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(f) = this.frames.pop_front() {
            return std::task::Poll::Ready(Some(Ok(f)));
        }
        match this.rest.as_mut().as_pin_mut() {
            Some(rest) => rest.poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }
}
