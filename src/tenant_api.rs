//! The tenant's own endpoints on the public listener, under `/_sandbox/`:
//! a partner asks about its own sandbox with its own sandbox credentials.
//!
//! ```text
//! GET    /_sandbox/usage    the tenant's standing against its plan
//! GET    /_sandbox/help     its APIs, documentation links and these endpoints
//!                           (`?feature=<operationId>` names what it is about)
//! GET    /_sandbox/clock    the tenant's test clock
//! POST   /_sandbox/clock    {"frozen_time": "2027-01-01T00:00:00Z"} or {"advance": "30d"}
//! DELETE /_sandbox/clock    back to real time
//! POST   /_sandbox/reset    wipe its state, idempotency records and clock,
//!                           then load its seed profile again
//! GET    /_sandbox/requests  the request log, newest first (crate::trace)
//! GET    /_sandbox/requests/{request_id}
//!                           one request's decision trace
//! POST   /_sandbox/{resource}/{id}/{action}
//!                           a scenario file's test helper action,
//!                           e.g. payment_intents/pi_…/authenticate
//! ```
//!
//! With `X-Dry-Run: true`, a clock change answers what the clock would
//! show, an action the object it would leave, and a reset only that it
//! would happen; none of them changes anything.
//!
//! They exist only when the sandbox has tenants (`auth.api_keys` is
//! configured); otherwise the path is an unknown API like any other.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::body::{Body, full};
use crate::refusal::{Refusal, Stage};
use crate::sandbox::Sandbox;
use crate::server::ConnInfo;
use crate::tenants::Registry;

/// The path prefix of the tenant endpoints.
pub const PREFIX: &str = "/_sandbox/";

/// The name refusals give the tenant endpoints where they name an API.
pub const API_NAME: &str = "_sandbox";

/// One tenant endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /_sandbox/usage`.
    Usage,
    /// `GET`, `POST`, `DELETE /_sandbox/clock`.
    Clock,
    /// `POST /_sandbox/reset`.
    Reset,
    /// `POST /_sandbox/{resource}/{id}/{action}`.
    Action,
    /// `GET /_sandbox/help` (analytics: `sandbox_help_requested`).
    Help,
    /// `GET /_sandbox/requests`.
    Requests,
    /// `GET /_sandbox/requests/{request_id}`.
    Request,
}

impl Endpoint {
    /// The methods it answers.
    const fn methods(self) -> &'static [&'static str] {
        match self {
            Endpoint::Usage | Endpoint::Help | Endpoint::Requests | Endpoint::Request => {
                &["GET", "HEAD"]
            }
            Endpoint::Clock => &["GET", "HEAD", "POST", "DELETE"],
            Endpoint::Reset | Endpoint::Action => &["POST"],
        }
    }
}

/// Largest body of a tenant endpoint request.
const MAX_BODY: u64 = 4096;

/// The tenant endpoint at `path`, if it is one (and the sandbox has tenants).
pub fn endpoint(sandbox: &Sandbox, path: &str) -> Option<Endpoint> {
    sandbox.api_keys.as_ref()?;
    match path {
        "/_sandbox/usage" => Some(Endpoint::Usage),
        "/_sandbox/clock" => Some(Endpoint::Clock),
        "/_sandbox/reset" => Some(Endpoint::Reset),
        "/_sandbox/help" => Some(Endpoint::Help),
        "/_sandbox/requests" => Some(Endpoint::Requests),
        _ => {
            let rest = path.strip_prefix(PREFIX)?;
            if rest
                .strip_prefix("requests/")
                .is_some_and(|id| !id.is_empty() && !id.contains('/'))
            {
                return Some(Endpoint::Request);
            }
            (rest.split('/').count() == 3 && rest.split('/').all(|s| !s.is_empty()))
                .then_some(Endpoint::Action)
        }
    }
}

/// Answers a tenant endpoint: identifies the caller, then answers about
/// its own sandbox only. With `facts.dry_run` a change is computed, not
/// made. The caller's identity goes into the decision trace; lookups of
/// the request log are not traced themselves.
pub async fn serve(
    endpoint: Endpoint,
    sandbox: &Sandbox,
    registry: &Registry,
    req: Request<Incoming>,
    conn: &Arc<ConnInfo>,
    facts: &mut crate::pipeline::RequestFacts,
) -> Result<Response<Body>, Refusal> {
    let dry_run = facts.dry_run;
    if matches!(endpoint, Endpoint::Requests | Endpoint::Request) {
        facts.trace.unkept();
    }
    if !endpoint.methods().contains(&req.method().as_str()) {
        return Err(Refusal::MethodNotAllowed {
            api: API_NAME.into(),
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            allow: endpoint.methods().iter().map(|m| (*m).to_owned()).collect(),
        });
    }
    facts.trace.enter("identify");
    let principal = crate::pipeline::identify::caller(
        API_NAME,
        sandbox,
        req.headers(),
        conn.peer_certificates.as_deref(),
        registry,
    )
    .await?;
    facts.trace.identified(&principal, &req, registry.traces());
    facts.trace.enter("sandbox");
    match endpoint {
        Endpoint::Requests => {
            crate::trace::api::list(
                sandbox,
                registry,
                &principal.tenant.id,
                req.uri().query(),
                Stage::Sandbox,
            )
            .await
        }
        Endpoint::Request => {
            let id = req
                .uri()
                .path()
                .strip_prefix(crate::trace::LOOKUP_PREFIX)
                .unwrap_or_default();
            // A partner reading why a request went as it did is asking for
            // help (analytics: sandbox_help_requested, about that operation).
            crate::trace::api::get(registry, &principal.tenant.id, id, Stage::Sandbox, |t| {
                crate::analytics::help_requested(
                    sandbox,
                    &principal.tenant.id,
                    "trace_lookup",
                    t["operation"].as_str(),
                );
            })
            .await
        }
        Endpoint::Usage => {
            let usage = crate::limits::usage(&sandbox.plans, registry, &principal.tenant)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "store failed while reading usage");
                    Refusal::StoreUnavailable {
                        stage: Stage::Limit,
                    }
                })?;
            Ok(json_response(&json!({
                "sandbox_id": principal.tenant.id,
                "usage": usage,
            })))
        }
        Endpoint::Clock => clock(registry, &principal.tenant.id, req, dry_run).await,
        Endpoint::Help => {
            let feature = req.uri().query().and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "feature")
                    .map(|(_, v)| v.into_owned())
            });
            crate::analytics::help_requested(
                sandbox,
                &principal.tenant.id,
                "help_page",
                feature.as_deref(),
            );
            Ok(json_response(&crate::analytics::help::page(
                sandbox,
                &principal.tenant,
            )))
        }
        Endpoint::Reset if dry_run => Ok(json_response(&json!({
            "sandbox_id": principal.tenant.id,
            "reset": false,
            "simulated": true,
        }))),
        Endpoint::Reset => {
            let (removed, sample_data) =
                crate::state::seed::reset(sandbox, registry, &principal.tenant)
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e, "sandbox reset failed");
                        match e {
                            crate::state::seed::SeedError::Store(_) => Refusal::StoreUnavailable {
                                stage: Stage::Dispatch,
                            },
                            _ => Refusal::Internal,
                        }
                    })?;
            tracing::info!(sandbox_id = %principal.tenant.id, removed, "sandbox reset by its tenant");
            Ok(json_response(&json!({
                "sandbox_id": principal.tenant.id,
                "reset": true,
                "removed": removed,
                "sample_data": sample_data,
            })))
        }
        Endpoint::Action => {
            let path = req.uri().path().to_owned();
            let mut parts = path.trim_start_matches(PREFIX).split('/');
            let (Some(resource), Some(id), Some(action)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(Refusal::Internal);
            };
            let at = ActionAt {
                resource,
                id,
                action,
                path: &path,
            };
            action_helper(sandbox, registry, &principal, at, dry_run).await
        }
    }
}

/// Where a test helper action applies: `/_sandbox/{resource}/{id}/{action}`.
struct ActionAt<'a> {
    resource: &'a str,
    id: &'a str,
    action: &'a str,
    path: &'a str,
}

/// Runs a test helper action of the first stateful API (enabled for the
/// tenant) whose scenario file defines `action` for `resource`.
async fn action_helper(
    sandbox: &Sandbox,
    registry: &Registry,
    principal: &crate::pipeline::identify::Principal,
    at: ActionAt<'_>,
    dry_run: bool,
) -> Result<Response<Body>, Refusal> {
    let ActionAt {
        resource,
        id,
        action,
        path,
    } = at;
    let tenant = &principal.tenant;
    let found = sandbox.apis.iter().find_map(|api| {
        let state = api.state.as_ref()?;
        let a = api.scenarios.as_ref()?.actions.get(action)?;
        (a.resource == resource
            && tenant
                .features_enabled
                .as_ref()
                .is_none_or(|f| f.iter().any(|n| **n == *api.name)))
        .then_some((api, state, a))
    });
    let Some((api, state, a)) = found else {
        return Err(Refusal::UnknownApi {
            path: path.to_owned(),
            apis: sandbox.api_list.clone(),
        });
    };
    crate::pipeline::admit::admit(api, principal, crate::tenants::now_secs())?;
    let now = crate::clock::tenant_now(registry, &tenant.id)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "store failed reading the tenant's clock");
            Refusal::StoreUnavailable {
                stage: Stage::Sandbox,
            }
        })?
        .now;
    let ctx = crate::state::Ctx {
        store: registry.store(),
        tenant: &tenant.id,
        plan: &tenant.plan,
        storage: sandbox
            .plans
            .get(&tenant.plan)
            .or_else(|| sandbox.plans.get(&sandbox.plans.default_plan))
            .and_then(|p| p.storage),
        now,
        commit: !dry_run,
    };
    crate::state::helper(api, state, a, action, id, &ctx).await
}

/// The test clock: read, freeze or advance, or return to real time.
async fn clock(
    registry: &Registry,
    tenant: &str,
    req: Request<Incoming>,
    dry_run: bool,
) -> Result<Response<Body>, Refusal> {
    let unavailable = |e: crate::store::StoreError| {
        tracing::warn!(error = %e, "store failed on the test clock");
        Refusal::StoreUnavailable {
            stage: Stage::Sandbox,
        }
    };
    let current = crate::clock::frozen_time(registry, tenant)
        .await
        .map_err(unavailable)?;
    let frozen = match *req.method() {
        http::Method::POST => {
            let rule = "the /_sandbox/clock body limit (4 KiB)";
            crate::edge::check_content_length(req.headers(), MAX_BODY, rule)?;
            let body = crate::edge::read_body(req.into_body(), MAX_BODY, rule).await?;
            let change = clock_change(&body)?;
            let next = crate::clock::apply(current, change, crate::tenants::now_secs())?;
            if !dry_run {
                crate::clock::set(registry, tenant, next)
                    .await
                    .map_err(unavailable)?;
            }
            Some(next)
        }
        http::Method::DELETE => {
            if !dry_run {
                crate::clock::clear(registry, tenant)
                    .await
                    .map_err(unavailable)?;
            }
            None
        }
        _ => current,
    };
    let now = frozen.unwrap_or_else(crate::tenants::now_secs);
    Ok(json_response(&json!({
        "sandbox_id": tenant,
        "frozen": frozen.is_some(),
        "frozen_time": frozen.map(crate::clock::rfc3339),
        "now": crate::clock::rfc3339(now),
        "now_unix": now,
    })))
}

/// The change a `POST /_sandbox/clock` body asks for: exactly one of
/// `frozen_time` (RFC 3339, UTC) and `advance` (a duration like `30d`).
fn clock_change(body: &[u8]) -> Result<crate::clock::Change, Refusal> {
    let invalid = |why: &str| Refusal::InvalidClockRequest {
        why: why.to_owned(),
    };
    let value: Value =
        serde_json::from_slice(body).map_err(|_| invalid("body is not a JSON object"))?;
    let Some(obj) = value.as_object() else {
        return Err(invalid("body is not a JSON object"));
    };
    if obj.len() != 1 {
        return Err(invalid(
            "body must have exactly one of `frozen_time` and `advance`",
        ));
    }
    if let Some(v) = obj.get("frozen_time") {
        let at = v
            .as_str()
            .and_then(crate::clock::parse_rfc3339)
            .ok_or_else(|| {
                invalid("`frozen_time` is not an RFC 3339 UTC time such as 2027-01-01T00:00:00Z")
            })?;
        return Ok(crate::clock::Change::FreezeAt(at));
    }
    if let Some(v) = obj.get("advance") {
        let by = v
            .as_str()
            .and_then(|s| humantime::parse_duration(s).ok())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| invalid("`advance` is not a positive duration such as 30d or 2h"))?;
        return Ok(crate::clock::Change::Advance(by));
    }
    Err(invalid(
        "body must have exactly one of `frozen_time` and `advance`",
    ))
}

fn json_response(v: &Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
