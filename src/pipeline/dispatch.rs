//! Dispatch: produce the answer, by the API's mode.
//!
//! Invariant: a facade API never contacts a backend; an upstream API only
//! ever contacts its configured backend.
//!
//! Invariant: a dry-run write never reaches a backend that is not declared
//! `dry_run: forward`: the proxy needs an [`upstream::Permit`](Permit),
//! which a dry run only gets from such an API.

use std::sync::Arc;

use http::Response;
use http::request::Parts;

use super::RequestFacts;
use super::identify::Principal;
use super::route::Routed;
use crate::body::{Body, RequestBody};
use crate::config::{DryRunMode, Mode};
use crate::edge;
use crate::facade::scenarios::Matched;
use crate::refusal::Refusal;
use crate::server::ConnInfo;
use crate::upstream::{Forwarded, Permit};

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
    /// The tenant's stored state.
    State,
    /// The real sandbox backend.
    Upstream,
    /// A dry run on an API without a contract: what the gateway checked.
    Simulated,
    /// A stored answer replayed for a repeated `Idempotency-Key`.
    Replayed,
}

impl AnswerSource {
    /// Name used in logs and headers.
    pub const fn as_str(self) -> &'static str {
        match self {
            AnswerSource::Scenario => "scenario",
            AnswerSource::Fixture => "fixture",
            AnswerSource::Generated => "generated",
            AnswerSource::Example => "example",
            AnswerSource::State => "state",
            AnswerSource::Upstream => "upstream",
            AnswerSource::Simulated => "simulated",
            AnswerSource::Replayed => "replayed",
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
    state: Option<&crate::state::Ctx<'_>>,
    facts: &mut RequestFacts,
) -> Result<Response<Body>, Refusal> {
    let api = routed.api;
    edge::check_content_length(&parts.headers, api.max_body, &api.max_body_rule)?;
    // A dry-run write on an API with a backend: as the API declares. (A
    // facade API has no backend; its answer is already a simulation.)
    if facts.dry_run && api.mode.uses_upstream() {
        match api.dry_run {
            DryRunMode::Refuse => return Err(dry_run_unsupported(api)),
            DryRunMode::Simulate => return simulate(&routed, &parts, body, conn, facts).await,
            // `proxy` gets a dry-run permit and sends `X-Dry-Run: true`.
            DryRunMode::Forward => {}
        }
    }
    match api.mode {
        Mode::Facade => {
            // Read (within its limit) even when no rule looks at it, so an
            // oversized chunked upload is refused, not ignored.
            let bytes = read(api, body).await?;
            facts.trace.request_body(&bytes);
            facade(&routed, &parts, &bytes, conn, state, facts).await
        }
        Mode::Upstream => proxy(&routed, parts, body, conn, principal, facts).await,
        Mode::Hybrid => {
            let bytes = read(api, body).await?;
            facts.trace.request_body(&bytes);
            let typed = typed_body(&routed, &parts, &bytes);
            if let Some(answer) = rules(&routed, &parts, typed.as_ref(), conn, facts).await {
                return answer;
            }
            proxy(
                &routed,
                parts,
                RequestBody::Read(bytes),
                conn,
                principal,
                facts,
            )
            .await
        }
        Mode::Record => {
            let bytes = read(api, body).await?;
            facts.trace.request_body(&bytes);
            let typed = typed_body(&routed, &parts, &bytes);
            let method = parts.method.clone();
            let path = routed.api_path(parts.uri.path()).to_owned();
            let query = parts.uri.query().map(str::to_owned);
            let resp = proxy(
                &routed,
                parts,
                RequestBody::Read(bytes),
                conn,
                principal,
                facts,
            )
            .await?;
            // A forwarded dry run's answer is not a real exchange.
            let Some(recorder) = api.recorder.as_ref().filter(|_| !facts.dry_run) else {
                return Ok(resp);
            };
            let (head, body) = resp.into_parts();
            let peeked = peek(api, body, recorder.max_body).await?;
            match &peeked.complete {
                None => recorder.skipped("too_large"),
                Some(bytes) => match response_json(&head.headers, bytes) {
                    Err(why) => recorder.skipped(why),
                    Ok(response_body) => recorder.record(&crate::facade::record::Exchange {
                        operation: operation(&routed).map(|op| op.id.as_str()),
                        method: &method,
                        path: &path,
                        query: query.as_deref(),
                        request_body: typed,
                        status: head.status,
                        headers: &head.headers,
                        response_body,
                    }),
                },
            }
            Ok(Response::from_parts(head, peeked.body))
        }
    }
}

/// Reads the request body within the API's limit.
async fn read(api: &crate::sandbox::Api, body: RequestBody) -> Result<bytes::Bytes, Refusal> {
    match body {
        RequestBody::Streaming(body) => {
            edge::read_body(body, api.max_body, &api.max_body_rule).await
        }
        RequestBody::Read(bytes) => Ok(bytes),
    }
}

/// The routed operation, when the API has a contract.
fn operation<'a>(routed: &Routed<'a>) -> Option<&'a crate::contract::Operation> {
    routed
        .api
        .contract
        .as_ref()
        .zip(routed.operation)
        .map(|(c, i)| &c.operations[i])
}

/// The request body as rules and fixtures see it: typed by the contract, or
/// parsed as JSON when there is no contract to type it.
fn typed_body(routed: &Routed<'_>, parts: &Parts, bytes: &[u8]) -> Option<serde_json::Value> {
    if bytes.is_empty() {
        return None;
    }
    match operation(routed) {
        Some(op) => op.request.typed_body(&parts.headers, bytes),
        None => serde_json::from_slice(bytes).ok(),
    }
}

/// Scenario rules, then fixtures: the answer of the first that matches.
async fn rules(
    routed: &Routed<'_>,
    parts: &Parts,
    typed: Option<&serde_json::Value>,
    conn: &ConnInfo,
    facts: &mut RequestFacts,
) -> Option<Result<Response<Body>, Refusal>> {
    let api = routed.api;
    // 1. Scenario rules, keyed on a value of the (typed) body.
    if let Some(index) = routed.operation
        && let Some(scenarios) = api.scenarios.as_ref().filter(|s| s.applies_to(index))
        && let Some(value) = typed
    {
        let now = facts.tenant_now.unwrap_or_else(crate::tenants::now_secs);
        match scenarios.find(index, value, now) {
            Matched::Answer { rule, answer, .. } => {
                facts.source = Some(AnswerSource::Scenario);
                return Some(crate::facade::scenario(api, rule, answer).await);
            }
            Matched::RealCard { pointer } => {
                return Some(Err(Refusal::RealCardNumber {
                    api: api.name.to_string(),
                    pointer: pointer.to_owned(),
                }));
            }
            Matched::None => {}
        }
    }
    // 2. Fixtures.
    if let Some(fixtures) = &api.fixtures
        && let Some(answer) = fixtures
            .answer(&crate::facade::fixtures::Request {
                method: &parts.method,
                path: routed.api_path(parts.uri.path()),
                query: parts.uri.query(),
                headers: &parts.headers,
                body: typed,
                now: facts.tenant_now,
            })
            .await
    {
        facts.source = Some(AnswerSource::Fixture);
        return Some(fixture_answer(api, conn, answer).await);
    }
    None
}

/// The facade: Prefer, the tenant's state (which applies scenario rules
/// to stored objects itself), scenario rules, fixtures, the documented
/// example, a generated response.
async fn facade(
    routed: &Routed<'_>,
    parts: &Parts,
    bytes: &bytes::Bytes,
    conn: &ConnInfo,
    state: Option<&crate::state::Ctx<'_>>,
    facts: &mut RequestFacts,
) -> Result<Response<Body>, Refusal> {
    let api = routed.api;
    let (Some(contract), Some(op)) = (api.contract.as_ref(), operation(routed)) else {
        return Err(Refusal::Internal);
    };
    // Generated answers are the same for the same request. The seed is a
    // digest of the whole request, computed only for an answer that needs it.
    let seed = || {
        crate::facade::generate::seed_of(&[
            parts.method.as_str().as_bytes(),
            parts.uri.path().as_bytes(),
            parts.uri.query().unwrap_or("").as_bytes(),
            bytes,
        ])
    };
    // 0. An explicit `Prefer` picks a documented response.
    if let Some(answer) = crate::facade::preferred(&api.name, contract, op, &parts.headers, seed) {
        facts.source = Some(AnswerSource::Example);
        return answer;
    }
    // 0b. The tenant's state answers the operations of its resources.
    if let (Some(ctx), Some(compiled), Some(index)) = (state, &api.state, routed.operation) {
        let typed = typed_body(routed, parts, bytes);
        let req = crate::state::Request {
            op: index,
            path: routed.api_path(parts.uri.path()),
            query: parts.uri.query(),
            body: typed.as_ref(),
        };
        if let Some(answer) = crate::state::answer(api, compiled, req, ctx).await {
            facts.source = Some(AnswerSource::State);
            // analytics: a committed creation is the tenant's own data.
            if let (true, Ok(resp), Some(Some((resource, crate::state::Role::Create)))) =
                (ctx.commit, &answer, compiled.roles.get(index))
                && resp.status().is_success()
            {
                facts.created = Some((*resource, 1));
            }
            return answer;
        }
    }
    let wants_body = routed
        .operation
        .is_some_and(|i| api.scenarios.as_ref().is_some_and(|s| s.applies_to(i)))
        || api.fixtures.as_ref().is_some_and(|f| !f.is_empty());
    let typed = if wants_body {
        typed_body(routed, parts, bytes)
    } else {
        None
    };
    // 1. Scenario rules and 2. fixtures.
    if let Some(answer) = rules(routed, parts, typed.as_ref(), conn, facts).await {
        return answer;
    }
    // 3. The contract's documented example, else 4. a response generated
    // from its schema.
    if op.example.is_none()
        && let Some(resp) = crate::facade::generated(contract, op, seed(), None)
    {
        facts.source = Some(AnswerSource::Generated);
        return Ok(resp);
    }
    facts.source = Some(AnswerSource::Example);
    crate::facade::answer(&api.name, op)
}

/// Forwards to the API's backend, checking the response for drift.
async fn proxy(
    routed: &Routed<'_>,
    parts: Parts,
    body: RequestBody,
    conn: &ConnInfo,
    principal: Option<&Principal>,
    facts: &mut RequestFacts,
) -> Result<Response<Body>, Refusal> {
    let api = routed.api;
    let Some(upstream) = &api.upstream else {
        return Err(Refusal::Internal);
    };
    // The dry-run invariant: no permit, no request to the backend.
    let Some(permit) = Permit::for_request(facts.dry_run, api.dry_run) else {
        return Err(dry_run_unsupported(api));
    };
    facts.source = Some(AnswerSource::Upstream);
    let fwd = Forwarded {
        client_ip: conn.forwarded_for().clone(),
        proto: if conn.tls { "https" } else { "http" },
        host: parts.headers.get(http::header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
        }),
        request_id: &facts.request_id,
        tenant: principal.map(|p| p.tenant.id.as_str()),
        clock: facts.tenant_now.filter(|_| facts.clock_set),
        capture: facts.trace.capture(&body),
        trace: &facts.trace_context,
    };
    let sent = std::time::Instant::now();
    let resp = upstream
        .forward(
            permit,
            parts,
            body,
            routed.strip,
            api.max_body,
            &api.max_body_rule,
            fwd,
        )
        .await;
    facts.upstream_latency = Some(sent.elapsed());
    let resp = resp?;
    match (&api.drift, api.contract.as_ref(), routed.operation) {
        (Some(checker), Some(contract), Some(op)) if checker.sampled() => {
            check_drift(api, checker, contract, op, resp).await
        }
        _ => Ok(resp),
    }
}

/// A dry-run write the API refuses (or that would otherwise reach a
/// backend that did not declare it understands `X-Dry-Run`).
fn dry_run_unsupported(api: &crate::sandbox::Api) -> Refusal {
    Refusal::DryRunUnsupported {
        api: api.name.to_string(),
        mode: api.dry_run.as_str(),
    }
}

/// A dry-run write on an API with a backend, in `simulate` mode: the
/// facade's answer for the operation (scenario rules, fixtures, the
/// contract's example or a generated body), never the backend. Without a
/// contract the gateway cannot know the backend's answer, and says so.
async fn simulate(
    routed: &Routed<'_>,
    parts: &Parts,
    body: RequestBody,
    conn: &ConnInfo,
    facts: &mut RequestFacts,
) -> Result<Response<Body>, Refusal> {
    let api = routed.api;
    let bytes = read(api, body).await?;
    facts.trace.request_body(&bytes);
    if api.contract.is_some() && routed.operation.is_some() {
        return facade(routed, parts, &bytes, conn, None, facts).await;
    }
    let answer = serde_json::json!({
        "object": "dry_run",
        "simulated": true,
        "api": &*api.name,
        "method": parts.method.as_str(),
        "path": routed.api_path(parts.uri.path()),
        "forwarded": false,
        "detail": format!(
            "The request passed every check (identity, admission, limits, validation) and was not sent to API '{}': its backend does not take dry runs, and without a contract the gateway cannot say what it would have answered.",
            api.name
        ),
    });
    facts.source = Some(AnswerSource::Simulated);
    let mut resp = Response::new(crate::body::full(
        serde_json::to_vec(&answer).unwrap_or_default(),
    ));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Reads the response (up to `drift.max_body`) and checks it against the
/// contract: a mismatch is counted, logged and named in a header.
async fn check_drift(
    api: &crate::sandbox::Api,
    checker: &crate::drift::Checker,
    contract: &crate::contract::Contract,
    op: usize,
    resp: Response<Body>,
) -> Result<Response<Body>, Refusal> {
    let (mut head, body) = resp.into_parts();
    let peeked = peek(api, body, checker.max_body).await?;
    let Some(bytes) = &peeked.complete else {
        metrics::counter!("sandgate_contract_drift_unchecked_total", "api" => api.name.to_string(), "why" => "too_large").increment(1);
        return Ok(Response::from_parts(head, peeked.body));
    };
    let content_type = head
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let drifts = checker.check(contract, op, head.status, content_type, bytes);
    if !drifts.is_empty() {
        let operation = contract.operations[op].id.as_str();
        metrics::counter!("sandgate_contract_drift_total", "api" => api.name.to_string(), "operation" => operation.to_owned()).increment(1);
        for d in &drifts {
            tracing::warn!(api = %api.name, operation, status = head.status.as_u16(), at = %d.at, problem = %d.message, "contract drift: the backend's response does not match the contract");
        }
        head.headers.insert(
            crate::drift::SANDGATE_CONTRACT_DRIFT,
            crate::drift::header_value(&drifts),
        );
    }
    Ok(Response::from_parts(head, peeked.body))
}

/// Reads up to `max` bytes of a backend's response body, within the API's
/// timeout (the head arrived in time; a body that stalls is a timeout too).
async fn peek(
    api: &crate::sandbox::Api,
    body: Body,
    max: usize,
) -> Result<crate::body::Peeked, Refusal> {
    match tokio::time::timeout(api.timeout, crate::body::peek(body, max)).await {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(e)) => {
            tracing::warn!(api = %api.name, error = %e, "backend response body failed");
            Err(Refusal::UpstreamError {
                api: api.name.to_string(),
            })
        }
        Err(_) => Err(Refusal::UpstreamTimeout {
            api: api.name.to_string(),
            after: humantime::format_duration(api.timeout).to_string(),
        }),
    }
}

/// A backend's body as JSON for a recording, or why it is not recorded.
fn response_json(
    headers: &http::HeaderMap,
    bytes: &[u8],
) -> Result<Option<serde_json::Value>, &'static str> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || m.ends_with("+json")
        })
        .unwrap_or(false);
    if !json {
        return Err("not_json");
    }
    serde_json::from_slice(bytes)
        .map(Some)
        .map_err(|_| "invalid_json")
}

/// Turns a fixture's answer into the response, carrying out its fault.
async fn fixture_answer(
    api: &crate::sandbox::Api,
    conn: &ConnInfo,
    answer: crate::facade::fixtures::Answer,
) -> Result<Response<Body>, Refusal> {
    use crate::facade::fixtures::Answer;
    match answer {
        Answer::Respond(resp) => Ok(resp),
        Answer::Timeout => Err(crate::facade::timed_out(api).await),
        Answer::Reset { name } => {
            tracing::debug!(api = %api.name, fixture = %name, "fixture fault: resetting the connection");
            conn.reset.reset();
            // Never written: the connection is reset before the head goes out.
            let mut resp = Response::new(crate::body::empty());
            *resp.status_mut() = http::StatusCode::BAD_GATEWAY;
            resp.headers_mut().insert(
                crate::facade::fixtures::SANDGATE_FAULT,
                http::HeaderValue::from_static("reset"),
            );
            Ok(resp)
        }
    }
}
