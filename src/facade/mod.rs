//! The facade: answers an API's requests from its contract, without any
//! backend. This first version answers with the operation's documented
//! example; scenario rules, fixtures, state and generated responses come with
//! the facade issue, in front of the example in order of precedence.

use http::{HeaderValue, Response, header};

use crate::body::{Body, empty, full};
use crate::contract::Operation;
use crate::refusal::Refusal;

/// Says which facade source produced an answer (`example`; later also
/// `scenario`, `fixture`, `state`, `generated`).
pub const SANDGATE_SOURCE: http::HeaderName = http::HeaderName::from_static("sandgate-source");

/// The documented example of `op`, or `no_example`.
pub fn answer(api: &str, op: &Operation) -> Result<Response<Body>, Refusal> {
    let Some(example) = &op.example else {
        return Err(Refusal::NoExample {
            api: api.to_owned(),
            operation: op.id.clone(),
        });
    };
    let body = if example.body.is_empty() {
        empty()
    } else {
        full(example.body.clone())
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = example.status;
    let h = resp.headers_mut();
    if !example.body.is_empty() {
        h.insert(header::CONTENT_TYPE, example.content_type.clone());
    }
    h.insert(SANDGATE_SOURCE, HeaderValue::from_static("example"));
    Ok(resp)
}
