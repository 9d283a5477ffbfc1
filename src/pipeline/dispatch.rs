//! Dispatch: produce the answer, by the API's mode.
//!
//! Invariant: a facade API never contacts a backend; an upstream API only
//! ever contacts its configured backend.

use std::sync::Arc;

use http::Response;
use http::request::Parts;

use super::RequestFacts;
use super::identify::Principal;
use super::route::Routed;
use crate::body::{Body, RequestBody};
use crate::config::Mode;
use crate::edge;
use crate::refusal::Refusal;
use crate::server::ConnInfo;
use crate::upstream::Forwarded;

/// Where an answer came from (for the access log and, later, the trace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerSource {
    /// The contract's documented example.
    Example,
    /// The real sandbox backend.
    Upstream,
}

impl AnswerSource {
    /// Name used in logs and headers.
    pub const fn as_str(self) -> &'static str {
        match self {
            AnswerSource::Example => "example",
            AnswerSource::Upstream => "upstream",
        }
    }
}

/// Answers a routed request.
pub async fn dispatch(
    routed: Routed<'_>,
    parts: Parts,
    body: RequestBody,
    conn: &Arc<ConnInfo>,
    principal: Option<&Principal>,
    facts: &mut RequestFacts,
) -> Result<Response<Body>, Refusal> {
    let api = routed.api;
    edge::check_content_length(&parts.headers, api.max_body, &api.max_body_rule)?;
    match api.mode {
        Mode::Facade => {
            // The body is read (within its limit) even though examples don't
            // use it yet, so an oversized chunked upload is refused, not ignored.
            if let RequestBody::Streaming(body) = body {
                edge::read_body(body, api.max_body, &api.max_body_rule).await?;
            }
            facts.source = Some(AnswerSource::Example);
            let Some(op) = api
                .contract
                .as_ref()
                .zip(routed.operation)
                .map(|(c, i)| &c.operations[i])
            else {
                return Err(Refusal::Internal);
            };
            crate::facade::answer(&api.name, op)
        }
        Mode::Upstream => {
            let Some(upstream) = &api.upstream else {
                return Err(Refusal::Internal);
            };
            facts.source = Some(AnswerSource::Upstream);
            let fwd = Forwarded {
                client_ip: conn.remote.ip(),
                proto: if conn.tls { "https" } else { "http" },
                host: parts.headers.get(http::header::HOST).cloned().or_else(|| {
                    parts
                        .uri
                        .authority()
                        .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
                }),
                request_id: &facts.request_id,
                tenant: principal.map(|p| p.tenant.id.as_str()),
            };
            upstream
                .forward(
                    parts,
                    body,
                    routed.strip,
                    api.max_body,
                    &api.max_body_rule,
                    fwd,
                )
                .await
        }
    }
}
