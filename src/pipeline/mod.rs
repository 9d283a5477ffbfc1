//! The request path, in order. This file is the one place that lists the
//! stages; read [`run`] top to bottom to follow a request.
//!
//! ```text
//! edge      head limits, canonical path                (crate::edge)
//! (issuer)  /oauth/token, /.well-known/*: the built-in token issuer
//! (tenant)  /_sandbox/*: the tenant's own endpoints (usage)
//! route     Host + prefix → API; method + path → operation
//! identify  credentials → principal (JWT, API key, client certificate)
//! admit     tenant active and not expired; its sandbox includes the API
//! limit     the tenant's plan: rate rules (GCRA)
//! validate  request against the contract: params, body
//! dispatch  facade answer or upstream proxy
//! ```
//!
//! Every stage returns `Result<_, Refusal>`; the first refusal ends the
//! request and is rendered by [`crate::refusal`]. Responding (request id,
//! metrics, access log) happens in [`crate::gateway`], around this function.

pub mod admit;
pub mod dispatch;
pub mod identify;
pub mod limit;
pub mod route;
pub mod validate;

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::Body;
use crate::refusal::Refusal;
use crate::sandbox::Sandbox;
use crate::server::ConnInfo;
use crate::tenants::Registry;

/// What the pipeline learned about a request, for the response stage, the
/// access log and metrics.
#[derive(Debug, Default)]
pub struct RequestFacts {
    /// The request id.
    pub request_id: String,
    /// Index of the API in [`Sandbox::apis`], once routed.
    pub api: Option<usize>,
    /// Index of the operation in the API's contract, once resolved.
    pub operation: Option<usize>,
    /// Where the answer came from.
    pub source: Option<dispatch::AnswerSource>,
    /// The identified tenant's id.
    pub tenant: Option<String>,
    /// Where the tenant stands against its plan's rates (response headers).
    pub standing: Option<limit::Standing>,
    /// The tenant's in-flight slot, held until the response body ends.
    pub slot: Option<crate::limits::concurrency::Slot>,
}

/// Runs the stages in order.
pub async fn run(
    sandbox: &Sandbox,
    registry: &Registry,
    req: Request<Incoming>,
    conn: &Arc<ConnInfo>,
    facts: &mut RequestFacts,
) -> Result<Response<Body>, Refusal> {
    // edge: refuse oversized or non-canonical heads before any routing work.
    crate::edge::check_head(&sandbox.limits, &req)?;
    // sandbox endpoints: the built-in token issuer answers its own paths
    // (on this sandbox's hosts) before any API is considered.
    if let Some(endpoint) = crate::issuer::endpoint(sandbox, req.uri().path()) {
        route::check_host(sandbox, &req)?;
        return crate::issuer::serve(endpoint, sandbox, registry, req).await;
    }
    // The tenant's own endpoints (/_sandbox/usage), with its credentials.
    if let Some(endpoint) = crate::tenant_api::endpoint(sandbox, req.uri().path()) {
        route::check_host(sandbox, &req)?;
        return crate::tenant_api::serve(endpoint, sandbox, registry, req, conn).await;
    }
    // route: the API and operation decide every later stage's rules.
    let routed = route::route(sandbox, &req)?;
    facts.api = Some(routed.api_index);
    facts.operation = routed.operation;
    // identify: who is calling, from sandbox credentials only (the API
    // decides whether credentials are needed, so this follows route).
    let principal = identify::identify(
        routed.api,
        sandbox,
        req.headers(),
        conn.peer_certificates.as_deref(),
        registry,
    )
    .await?;
    // admit: the tenant's sandbox is active and includes this API.
    if let Some(p) = &principal {
        admit::admit(routed.api, p, crate::tenants::now_secs())?;
        facts.tenant = Some(p.tenant.id.clone());
    }
    // limit: the tenant's plan (rates); its standing goes on every answer.
    if let Some(p) = &principal {
        limit::limit(
            sandbox,
            registry,
            &routed,
            p,
            &mut facts.standing,
            &mut facts.slot,
        )
        .await?;
    }
    // validate: the request against the contract (reads a documented body).
    let (parts, body) = req.into_parts();
    let (body, report) =
        validate::validate(&routed, &parts, crate::body::RequestBody::Streaming(body)).await?;
    // The tenant's state, for a stateful facade API: its store, plan
    // storage, clock and whether writes commit.
    // Seams: `now` becomes the tenant's test clock, `commit` false for a
    // dry run (X-Dry-Run).
    let state = principal
        .as_ref()
        .filter(|_| routed.api.state.is_some())
        .map(|p| crate::state::Ctx {
            store: registry.store(),
            tenant: &p.tenant.id,
            plan: &p.tenant.plan,
            storage: sandbox
                .plans
                .get(&p.tenant.plan)
                .or_else(|| sandbox.plans.get(&sandbox.plans.default_plan))
                .and_then(|plan| plan.storage),
            now: crate::tenants::now_secs(),
            commit: true,
        });
    // dispatch: answer from the facade or forward to the backend.
    let mut resp = dispatch::dispatch(
        routed,
        parts,
        body,
        conn,
        principal.as_ref(),
        state.as_ref(),
        facts,
    )
    .await?;
    if let Some(report) = report {
        resp.headers_mut()
            .insert(validate::SANDGATE_VALIDATION, report);
    }
    Ok(resp)
}
