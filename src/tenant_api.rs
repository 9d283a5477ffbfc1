//! The tenant's own endpoints on the public listener, under `/_sandbox/`:
//! a partner asks about its own sandbox with its own sandbox credentials.
//!
//! ```text
//! GET /_sandbox/usage    the tenant's standing against its plan
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
}

/// The tenant endpoint at `path`, if it is one (and the sandbox has tenants).
pub fn endpoint(sandbox: &Sandbox, path: &str) -> Option<Endpoint> {
    sandbox.api_keys.as_ref()?;
    match path {
        "/_sandbox/usage" => Some(Endpoint::Usage),
        _ => None,
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
    if !matches!(req.method().as_str(), "GET" | "HEAD") {
        return Err(Refusal::MethodNotAllowed {
            api: "_sandbox".into(),
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            allow: vec!["GET".into(), "HEAD".into()],
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
    }
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
