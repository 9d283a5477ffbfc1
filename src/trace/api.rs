//! The request log's endpoints: the tenant's own (on the public listener,
//! with its own credentials, through `tenant_api`) and the operators'
//! (on the admin listener, through `admin::sandboxes`).
//!
//! ```text
//! GET /_sandbox/requests?limit=&status=&operation=&code=   newest first
//! GET /_sandbox/requests/{request_id}                      one trace
//! GET /internal/sandboxes/{id}/requests?…                  the same, for operators
//! GET /internal/sandboxes/{id}/requests/{request_id}
//! ```
//!
//! A lookup reads only keys under the caller's own tenant prefix, so
//! another tenant's request id is simply absent: it answers exactly like an
//! id that never existed (404 `request_not_found`). Lookups are not traced
//! themselves (reading the log never pushes real requests out of it).

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use super::{Filter, LOOKUP_PREFIX};
use crate::body::{Body, full};
use crate::refusal::{Refusal, Stage};
use crate::sandbox::Sandbox;
use crate::tenants::Registry;

/// How long a lookup waits for traces still in the queue (requests that
/// ended just before it), at most.
const SETTLE: Duration = Duration::from_millis(500);

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

fn unavailable(stage: Stage) -> impl Fn(crate::store::StoreError) -> Refusal {
    move |e| {
        tracing::warn!(error = %e, "store failed reading the request log");
        Refusal::StoreUnavailable { stage }
    }
}

/// `GET …/requests`: the tenant's log, newest first, filtered by the
/// query (`limit` 1–100, default 20; `status` 429 or 4xx; `operation`;
/// `code`). A bad parameter is a 400 `invalid_request` pointing at it.
pub async fn list(
    sandbox: &Sandbox,
    registry: &Registry,
    tenant: &str,
    query: Option<&str>,
    stage: Stage,
) -> Result<Response<Body>, Refusal> {
    let filter = Filter::parse(query).map_err(|(pointer, message)| Refusal::InvalidRequest {
        api: crate::tenant_api::API_NAME.into(),
        operation: "listRequests".into(),
        errors: vec![crate::contract::schema::Violation {
            pointer,
            message,
            keyword: "parameter".into(),
        }],
    })?;
    registry.traces().settle(SETTLE).await;
    let rows = super::list(&**registry.store(), &sandbox.traces, tenant, &filter)
        .await
        .map_err(unavailable(stage))?;
    let items: Vec<Value> = rows
        .into_iter()
        .map(|s| {
            let link = format!("{LOOKUP_PREFIX}{}", s.request_id);
            let mut v = serde_json::to_value(s).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.remove("at_ms");
                o.insert("trace".into(), json!(link));
            }
            v
        })
        .collect();
    Ok(json_response(&json!({
        "sandbox_id": tenant,
        "enabled": sandbox.traces.enabled,
        "limit": filter.limit,
        "requests": items,
    })))
}

/// `GET …/requests/{request_id}`: one trace of the tenant's, or 404
/// `request_not_found` (for an unknown id and another tenant's alike).
pub async fn get(
    registry: &Registry,
    tenant: &str,
    request_id: &str,
    stage: Stage,
    viewed: impl FnOnce(&serde_json::Value),
) -> Result<Response<Body>, Refusal> {
    let not_found = || Refusal::RequestNotFound {
        request_id: request_id.chars().take(128).collect(),
    };
    if !super::ring::valid_request_id(request_id) {
        return Err(not_found());
    }
    let store = &**registry.store();
    let mut found = super::lookup(store, tenant, request_id)
        .await
        .map_err(unavailable(stage))?;
    if found.is_none() {
        // It may still be on its way to the store.
        registry.traces().settle(SETTLE).await;
        found = super::lookup(store, tenant, request_id)
            .await
            .map_err(unavailable(stage))?;
    }
    let found = found.ok_or_else(not_found)?;
    viewed(&found);
    Ok(json_response(&found))
}
