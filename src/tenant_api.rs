//! The tenant's own endpoints on the public listener, under `/_sandbox/`:
//! a partner asks about its own sandbox with its own sandbox credentials.
//!
//! ```text
//! GET    /_sandbox/usage    the tenant's standing against its plan
//! GET    /_sandbox/clock    the tenant's test clock
//! POST   /_sandbox/clock    {"frozen_time": "2027-01-01T00:00:00Z"} or {"advance": "30d"}
//! DELETE /_sandbox/clock    back to real time
//! ```
//!
//! A clock change with `X-Dry-Run: true` answers what the clock would
//! show and changes nothing.
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
    /// `GET`, `POST`, `DELETE /_sandbox/clock`.
    Clock,
}

impl Endpoint {
    /// The methods it answers.
    const fn methods(self) -> &'static [&'static str] {
        match self {
            Endpoint::Usage => &["GET", "HEAD"],
            Endpoint::Clock => &["GET", "HEAD", "POST", "DELETE"],
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
        _ => None,
    }
}

/// Answers a tenant endpoint: identifies the caller, then answers about
/// its own sandbox only. `dry_run`: a change is computed, not made.
pub async fn serve(
    endpoint: Endpoint,
    sandbox: &Sandbox,
    registry: &Registry,
    req: Request<Incoming>,
    conn: &Arc<ConnInfo>,
    dry_run: bool,
) -> Result<Response<Body>, Refusal> {
    if !endpoint.methods().contains(&req.method().as_str()) {
        return Err(Refusal::MethodNotAllowed {
            api: "_sandbox".into(),
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            allow: endpoint.methods().iter().map(|m| (*m).to_owned()).collect(),
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
        Endpoint::Clock => clock(registry, &principal.tenant.id, req, dry_run).await,
    }
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
