//! The facade: answers an API's requests from its contract, without any
//! backend. This first version answers with the operation's documented
//! example; scenario rules, fixtures, state and generated responses come with
//! the facade issue, in front of the example in order of precedence.

pub mod scenarios;

use http::{HeaderValue, Response, header};

use crate::body::{Body, empty, full};
use crate::contract::Operation;
use crate::refusal::Refusal;

/// Says which facade source produced an answer (`example`; later also
/// `scenario`, `fixture`, `state`, `generated`).
pub const SANDGATE_SOURCE: http::HeaderName = http::HeaderName::from_static("sandgate-source");

/// The response header naming the scenario rule that answered.
pub const SANDGATE_SCENARIO: http::HeaderName = http::HeaderName::from_static("sandgate-scenario");

/// A prepared response, marked with its source.
fn prepared(example: &crate::contract::PreparedResponse, source: &'static str) -> Response<Body> {
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
    h.insert(SANDGATE_SOURCE, HeaderValue::from_static(source));
    resp
}

/// The answer of scenario rule `rule`.
pub async fn scenario(
    api: &crate::sandbox::Api,
    rule: &str,
    answer: &scenarios::Answer,
) -> Result<Response<Body>, Refusal> {
    match answer {
        scenarios::Answer::Respond(r) => {
            let mut resp = prepared(r, "scenario");
            if let Ok(v) = HeaderValue::from_str(rule) {
                resp.headers_mut().insert(SANDGATE_SCENARIO, v);
            }
            Ok(resp)
        }
        scenarios::Answer::Timeout => {
            tokio::time::sleep(api.timeout).await;
            Err(Refusal::UpstreamTimeout {
                api: api.name.to_string(),
                after: humantime::format_duration(api.timeout).to_string(),
            })
        }
    }
}

/// The documented example of `op`, or `no_example`.
pub fn answer(api: &str, op: &Operation) -> Result<Response<Body>, Refusal> {
    let Some(example) = &op.example else {
        return Err(Refusal::NoExample {
            api: api.to_owned(),
            operation: op.id.clone(),
        });
    };
    Ok(prepared(example, "example"))
}
