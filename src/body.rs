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
