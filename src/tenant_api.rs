//! The tenant's own endpoints on the public listener, under `/_sandbox/`:
//! a partner asks about its own sandbox with its own sandbox credentials.
//!
//! ```text
//! GET  /_sandbox/usage                      the tenant's standing against its plan
//! POST /_sandbox/reset                      wipe its state, idempotency records and
//!                                           clock, then load its seed profile again
//! POST /_sandbox/{resource}/{id}/{action}   a scenario file's test helper action,
//!                                           e.g. payment_intents/pi_…/authenticate
//! ```
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

/// One tenant endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /_sandbox/usage`.
    Usage,
    /// `POST /_sandbox/reset`.
    Reset,
    /// `POST /_sandbox/{resource}/{id}/{action}`.
    Action,
}

/// The tenant endpoint at `path`, if it is one (and the sandbox has tenants).
pub fn endpoint(sandbox: &Sandbox, path: &str) -> Option<Endpoint> {
    sandbox.api_keys.as_ref()?;
    match path {
        "/_sandbox/usage" => Some(Endpoint::Usage),
        "/_sandbox/reset" => Some(Endpoint::Reset),
        _ => {
            let rest = path.strip_prefix(PREFIX)?;
            (rest.split('/').count() == 3 && rest.split('/').all(|s| !s.is_empty()))
                .then_some(Endpoint::Action)
        }
    }
}

/// Answers a tenant endpoint: identifies the caller, then answers about
/// its own sandbox only.
pub async fn serve(
    endpoint: Endpoint,
    sandbox: &Sandbox,
    registry: &Registry,
    req: Request<Incoming>,
    conn: &Arc<ConnInfo>,
) -> Result<Response<Body>, Refusal> {
    let allow: &[&str] = match endpoint {
        Endpoint::Usage => &["GET", "HEAD"],
        Endpoint::Reset | Endpoint::Action => &["POST"],
    };
    if !allow.contains(&req.method().as_str()) {
        return Err(Refusal::MethodNotAllowed {
            api: "_sandbox".into(),
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            allow: allow.iter().map(|m| (*m).to_owned()).collect(),
        });
    }
    let principal = crate::pipeline::identify::caller(
        "_sandbox",
        sandbox,
        req.headers(),
        conn.peer_certificates.as_deref(),
        registry,
    )
    .await?;
    match endpoint {
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
            action_helper(sandbox, registry, &principal, resource, id, action, &path).await
        }
    }
}

/// Runs a test helper action of the first stateful API (enabled for the
/// tenant) whose scenario file defines `action` for `resource`.
async fn action_helper(
    sandbox: &Sandbox,
    registry: &Registry,
    principal: &crate::pipeline::identify::Principal,
    resource: &str,
    id: &str,
    action: &str,
    path: &str,
) -> Result<Response<Body>, Refusal> {
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
    let ctx = crate::state::Ctx {
        store: registry.store(),
        tenant: &tenant.id,
        plan: &tenant.plan,
        storage: sandbox
            .plans
            .get(&tenant.plan)
            .or_else(|| sandbox.plans.get(&sandbox.plans.default_plan))
            .and_then(|p| p.storage),
        now: crate::tenants::now_secs(),
        commit: true,
    };
    crate::state::helper(api, state, a, action, id, &ctx).await
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
