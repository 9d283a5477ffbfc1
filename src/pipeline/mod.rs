//! The request path, in order. This file is the one place that lists the
//! stages; read [`run`] top to bottom to follow a request.
//!
//! ```text
//! edge         head limits, canonical path                (crate::edge)
//!              X-Dry-Run is true, false or absent (dry_run)
//! (issuer)     /oauth/token, /.well-known/*: the built-in token issuer
//! (tenant)     /_sandbox/*: the tenant's own endpoints (usage, clock)
//! route        Host + prefix → API; method + path → operation
//! identify     credentials → principal (JWT, API key, client certificate)
//! admit        tenant active and not expired; its sandbox includes the API;
//!              require_dry_run rules (dry_run); the tenant's clock (crate::clock)
//! limit        the tenant's plan: rate rules (GCRA)
//! validate     request against the contract: params, body
//! idempotency  check, then replay, refuse, or claim the Idempotency-Key
//! dispatch     facade answer or upstream proxy; a dry run is simulated
//!              unless the backend takes it (upstream::Permit)
//! ```
//!
//! Every stage returns `Result<_, Refusal>`; the first refusal ends the
//! request and is rendered by [`crate::refusal`]. Responding (request id,
//! metrics, access log) happens in [`crate::gateway`], around this function.

pub mod admit;
pub mod dispatch;
pub mod dry_run;
pub mod idempotency;
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
    /// The identified tenant.
    pub tenant: Option<std::sync::Arc<crate::tenants::Tenant>>,
    /// Where the tenant stands against its plan's rates (response headers).
    pub standing: Option<limit::Standing>,
    /// The tenant's in-flight slot, held until the response body ends.
    pub slot: Option<crate::limits::concurrency::Slot>,
    /// What `X-Dry-Run` asked for (the respond stage marks the answer).
    pub dry_run_asked: dry_run::Asked,
    /// This is a dry-run write: nothing may be committed (no backend side
    /// effect, no state, no idempotency record).
    pub dry_run: bool,
    /// The identified tenant's current time (its test clock, or real time),
    /// Unix seconds; set after admit.
    pub tenant_now: Option<u64>,
    /// Whether the tenant's test clock is set (then `tenant_now` is its
    /// frozen instant, forwarded to backends as `Sandgate-Clock`).
    pub clock_set: bool,
    /// The decision trace: what each stage decided, and why.
    pub trace: crate::trace::Recorder,
    /// The W3C trace this request belongs to (the caller's `traceparent`,
    /// or a new trace) and the gateway's span in it.
    pub trace_context: crate::trace_context::TraceContext,
    /// Time from sending the request to a backend to its response head,
    /// when the answer came from one.
    pub upstream_latency: Option<std::time::Duration>,
    /// How the identified caller proved who it is (analytics' login method).
    pub login_method: Option<identify::Via>,
    /// The stage that refused the request, when one did (set in the respond step).
    pub refused_stage: Option<&'static str>,
    /// State this request created, for analytics: (resource index in the
    /// API's `state`, objects created). Never set for a dry run.
    pub created: Option<(usize, u32)>,
}

/// Runs the stages in order.
pub async fn run(
    sandbox: &Sandbox,
    registry: &Registry,
    req: Request<Incoming>,
    conn: &Arc<ConnInfo>,
    facts: &mut RequestFacts,
) -> Result<Response<Body>, Refusal> {
    // Every stage opens its entry in the decision trace (`facts.trace`)
    // before it runs; a refusal closes the open one as `refused`.
    // edge: refuse oversized or non-canonical heads before any routing work.
    facts.trace.enter("edge");
    crate::edge::check_head(&sandbox.limits, &req)?;
    facts
        .trace
        .note("request head within the edge limits; canonical path");
    // X-Dry-Run: a bad value is refused before any work (the decision to
    // simulate is dispatch's).
    facts.trace.enter("dry_run");
    facts.dry_run_asked = dry_run::parse(req.method(), req.headers())?;
    facts.dry_run = facts.dry_run_asked == dry_run::Asked::Write;
    facts
        .trace
        .note(crate::trace::reasons::dry_run(facts.dry_run_asked));
    // sandbox endpoints: the built-in token issuer answers its own paths
    // (on this sandbox's hosts) before any API is considered.
    if let Some(endpoint) = crate::issuer::endpoint(sandbox, req.uri().path()) {
        facts.trace.enter("route");
        route::check_host(sandbox, &req)?;
        facts.trace.enter("sandbox");
        return crate::issuer::serve(endpoint, sandbox, registry, req).await;
    }
    // The tenant's own endpoints (/_sandbox/usage), with its credentials.
    if let Some(endpoint) = crate::tenant_api::endpoint(sandbox, req.uri().path()) {
        facts.trace.enter("route");
        route::check_host(sandbox, &req)?;
        facts.trace.note("a sandbox endpoint (/_sandbox/…)");
        return crate::tenant_api::serve(endpoint, sandbox, registry, req, conn, facts).await;
    }
    // route: the API and operation decide every later stage's rules.
    facts.trace.enter("route");
    let routed = route::route(sandbox, &req)?;
    facts.api = Some(routed.api_index);
    facts.operation = routed.operation;
    facts.trace.note_route();
    // identify: who is calling, from sandbox credentials only (the API
    // decides whether credentials are needed, so this follows route).
    facts.trace.enter("identify");
    let principal = identify::identify(
        routed.api,
        sandbox,
        req.headers(),
        conn.peer_certificates.as_deref(),
        registry,
    )
    .await?;
    match &principal {
        Some(p) => facts.trace.identified(p, &req, registry.traces()),
        None => facts.trace.anonymous(),
    }
    // Real time (Unix seconds), read once for the stages that need it:
    // admit (expiry) and limit (quota windows).
    let now = principal.as_ref().map(|_| crate::tenants::now_secs());
    // admit: the tenant's sandbox is active and includes this API.
    facts.trace.enter("admit");
    if let Some(p) = &principal {
        admit::admit(routed.api, p, now.unwrap_or_default())?;
        facts.tenant = Some(p.tenant.clone());
        facts.login_method = Some(p.via);
        facts.trace.note_admitted();
    } else {
        facts.trace.skipped("anonymous caller");
    }
    // require_dry_run: a policy may allow some writes only as dry runs
    // (it looks at the caller's scopes, so it follows identify).
    facts.trace.enter("require_dry_run");
    dry_run::require(
        routed.api,
        req.method(),
        routed.operation,
        principal.as_ref(),
        facts.dry_run_asked,
    )?;
    facts
        .trace
        .note("no require_dry_run rule stops this request");
    // The tenant's clock, once per request (cached): what later stages
    // and the backend take as "now".
    if let Some(p) = &principal {
        facts.trace.enter("clock");
        let time = tenant_time(sandbox, registry, &p.tenant.id).await?;
        facts.tenant_now = Some(time.now);
        facts.clock_set = time.set;
        facts.trace.note_clock();
    }
    // limit: the tenant's plan (rates); its standing goes on every answer.
    facts.trace.enter("limit");
    if let Some(p) = &principal {
        limit::limit(
            sandbox,
            registry,
            &routed,
            p,
            now.unwrap_or_default(),
            &mut facts.standing,
            &mut facts.slot,
        )
        .await
        .map_err(|refused| *refused)?;
        facts.trace.note_limit(facts.standing.as_ref());
    } else {
        facts.trace.skipped("anonymous caller: no plan");
    }
    // validate: the request against the contract (reads a documented body).
    facts.trace.enter("validate");
    let (parts, body) = req.into_parts();
    let (body, report) = validate::validate(
        &routed,
        &parts,
        crate::body::RequestBody::Streaming(body),
        &mut facts.trace,
    )
    .await?;
    crate::trace::reasons::validated(&mut facts.trace, &routed, report.as_ref(), &body);
    // idempotency: a repeated key replays the stored answer; a key in use
    // or reused is refused; otherwise this request claims it. After every
    // refusal that can happen before dispatch, so those are never stored.
    facts.trace.enter("idempotency");
    let (claim, body) = match idempotency::begin(
        registry.store(),
        &routed,
        &parts,
        body,
        facts.tenant.as_ref().map(|t| t.id.as_str()),
        facts.dry_run,
    )
    .await?
    {
        idempotency::Outcome::Replay(resp) => {
            facts.source = Some(dispatch::AnswerSource::Replayed);
            facts
                .trace
                .noted(|| "replayed the answer stored for this Idempotency-Key".into());
            return Ok(resp);
        }
        idempotency::Outcome::Proceed { claim, body } => (claim, body),
    };
    if claim.is_some() {
        facts
            .trace
            .note("claimed the Idempotency-Key for this request");
    } else {
        facts.trace.skipped("no Idempotency-Key to honour");
    }
    // The tenant's state, for a stateful facade API: its store, plan
    // storage, its clock's time, and whether writes commit (not in a dry run).
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
            now: facts.tenant_now.unwrap_or_else(crate::tenants::now_secs),
            commit: !facts.dry_run,
        });
    // dispatch: answer from the facade or forward to the backend.
    facts.trace.enter("dispatch");
    facts.trace.note_dispatch();
    let answer = dispatch::dispatch(
        routed,
        parts,
        body,
        conn,
        principal.as_ref(),
        state.as_ref(),
        facts,
    )
    .await;
    let mut resp = match claim {
        Some(claim) => claim.finish(answer).await?,
        None => answer?,
    };
    if let Some(report) = report {
        resp.headers_mut()
            .insert(validate::SANDGATE_VALIDATION, report);
    }
    Ok(resp)
}

/// The tenant's time; a store failure follows `store.on_error` (real time
/// with `fail_open`, 503 `store_unavailable` with `fail_closed`).
async fn tenant_time(
    sandbox: &Sandbox,
    registry: &Registry,
    tenant: &str,
) -> Result<crate::clock::TenantTime, Refusal> {
    match crate::clock::tenant_now(registry, tenant).await {
        Ok(t) => Ok(t),
        Err(e) => {
            tracing::warn!(error = %e, "store failed reading the tenant's clock");
            match sandbox.store.on_error {
                crate::config::OnStoreError::FailOpen => Ok(crate::clock::TenantTime {
                    now: crate::tenants::now_secs(),
                    set: false,
                }),
                crate::config::OnStoreError::FailClosed => Err(Refusal::StoreUnavailable {
                    stage: crate::refusal::Stage::Admit,
                }),
            }
        }
    }
}
