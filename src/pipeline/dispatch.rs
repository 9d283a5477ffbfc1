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
use crate::facade::scenarios::Matched;
use crate::refusal::Refusal;
use crate::server::ConnInfo;
use crate::upstream::Forwarded;

/// Where an answer came from (for the access log and, later, the trace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerSource {
    /// A scenario rule.
    Scenario,
    /// A fixture.
    Fixture,
    /// Generated from the contract's schema.
    Generated,
    /// The contract's documented example.
    Example,
    /// The real sandbox backend.
    Upstream,
}

impl AnswerSource {
    /// Name used in logs and headers.
    pub const fn as_str(self) -> &'static str {
        match self {
            AnswerSource::Scenario => "scenario",
            AnswerSource::Fixture => "fixture",
            AnswerSource::Generated => "generated",
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
            let bytes = match body {
                RequestBody::Streaming(body) => {
                    edge::read_body(body, api.max_body, &api.max_body_rule).await?
                }
                RequestBody::Read(bytes) => bytes,
            };
            let Some((index, op)) = api
                .contract
                .as_ref()
                .zip(routed.operation)
                .map(|(c, i)| (i, &c.operations[i]))
            else {
                return Err(Refusal::Internal);
            };
            let Some(contract) = api.contract.as_ref() else {
                return Err(Refusal::Internal);
            };
            // Generated answers are the same for the same request.
            let seed = crate::facade::generate::seed_of(&[
                parts.method.as_str().as_bytes(),
                parts.uri.path().as_bytes(),
                parts.uri.query().unwrap_or("").as_bytes(),
                &bytes,
            ]);
            // 0. An explicit `Prefer` picks a documented response.
            if let Some(answer) =
                crate::facade::preferred(&api.name, contract, op, &parts.headers, seed)
            {
                facts.source = Some(AnswerSource::Example);
                return answer;
            }
            let wants_body = api.scenarios.as_ref().is_some_and(|s| s.applies_to(index))
                || api.fixtures.as_ref().is_some_and(|f| !f.is_empty());
            let typed = if wants_body && !bytes.is_empty() {
                op.request.typed_body(&parts.headers, &bytes)
            } else {
                None
            };
            // 1. Scenario rules, keyed on a value of the (typed) body.
            if let Some(scenarios) = api.scenarios.as_ref().filter(|s| s.applies_to(index))
                && let Some(value) = &typed
            {
                match scenarios.find(index, value) {
                    Matched::Answer { rule, answer } => {
                        facts.source = Some(AnswerSource::Scenario);
                        return crate::facade::scenario(api, rule, answer).await;
                    }
                    Matched::RealCard { pointer } => {
                        return Err(Refusal::RealCardNumber {
                            api: api.name.to_string(),
                            pointer: pointer.to_owned(),
                        });
                    }
                    Matched::None => {}
                }
            }
            // 2. Fixtures.
            if let Some(fixtures) = &api.fixtures
                && let Some(resp) = fixtures
                    .answer(&crate::facade::fixtures::Request {
                        method: &parts.method,
                        path: routed.api_path(parts.uri.path()),
                        query: parts.uri.query(),
                        headers: &parts.headers,
                        body: typed.as_ref(),
                    })
                    .await
            {
                facts.source = Some(AnswerSource::Fixture);
                return Ok(resp);
            }
            // 3. The contract's documented example, else 4. a response
            // generated from its schema.
            if op.example.is_none()
                && let Some(resp) = crate::facade::generated(contract, op, seed, None)
            {
                facts.source = Some(AnswerSource::Generated);
                return Ok(resp);
            }
            facts.source = Some(AnswerSource::Example);
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
