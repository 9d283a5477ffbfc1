//! The provisioning API: create, list, inspect, extend, deactivate and reset
//! sandboxes (tenants). Every call needs `Authorization: Bearer <service
//! token>`; the token lives in the environment variable named by
//! `admin.token_env` and is compared by its SHA-256 hash.
//!
//! ```text
//! POST   /internal/sandboxes                 create, issue credentials (shown once)
//! GET    /internal/sandboxes                 list
//! GET    /internal/sandboxes/{id}/status     status, days remaining
//! POST   /internal/sandboxes/{id}/extend     {"additional_days": 7}
//! PATCH  /internal/sandboxes/{id}            {"plan": "growth"}: change the plan
//! DELETE /internal/sandboxes/{id}            deactivate, archive, free data
//! POST   /internal/sandboxes/{id}/reset      wipe the sandbox's data, keep credentials
//! POST   /internal/sandboxes/{id}/usage/reset  forget its quota counts
//! GET    /internal/sandboxes/{id}/engagement   engagement score, tier, breakdown
//! GET    /internal/engagement                  every sandbox's engagement, highest first
//! GET    /internal/sandboxes/{id}/requests   its request log (crate::trace::api)
//! GET    /internal/sandboxes/{id}/requests/{request_id}  one decision trace
//! ```

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::body::{Body, full};
use crate::gateway::Gateway;
use crate::refusal::{Refusal, Stage};
use crate::sandbox::Sandbox;
use crate::store::StoreError;
use crate::tenants::{self, DAY, Status, Tenant};

/// Largest accepted admin request body.
const MAX_BODY: u64 = 64 * 1024;

/// The prefix of sandbox API keys when `auth.api_keys.prefix` is not set.
pub const API_KEY_PREFIX: &str = "sk_sandbox_";

fn store_err(e: StoreError) -> Refusal {
    tracing::error!(error = %e, "store failed during a provisioning call");
    Refusal::StoreUnavailable {
        stage: crate::refusal::Stage::Admin,
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// Checks the service token.
fn authorize(sandbox: &Sandbox, req: &Request<Incoming>) -> Result<(), Refusal> {
    let Some(expected) = &sandbox.admin_token_sha256 else {
        return Err(Refusal::AdminTokenUnset {
            env: sandbox.admin_token_env.clone(),
        });
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| tenants::sha256_hex(t.trim()));
    // Hashes of equal length: comparing them leaks nothing about the token.
    match given {
        Some(g) if &g == expected => Ok(()),
        _ => Err(Refusal::AdminUnauthorized),
    }
}

/// Reads and parses a JSON body; every problem is an `invalid_body` error.
async fn json_body<T: serde::de::DeserializeOwned>(body: Incoming) -> Result<T, Refusal> {
    let bytes: Bytes = crate::edge::read_body(body, MAX_BODY, "")
        .await
        .map_err(|r| match r {
            Refusal::PayloadTooLarge { .. } => Refusal::InvalidBody {
                errors: vec![(
                    String::new(),
                    format!("the body is larger than {MAX_BODY} bytes"),
                )],
            },
            other => other,
        })?;
    let bytes = if bytes.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        bytes
    };
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let pointer = if path == "." {
            String::new()
        } else {
            format!("/{}", path.replace('.', "/"))
        };
        let message = e.inner().to_string();
        let message = message
            .split(" at line")
            .next()
            .unwrap_or(&message)
            .to_owned();
        Refusal::InvalidBody {
            errors: vec![(pointer, message)],
        }
    })
}

/// Routes one `/internal/sandboxes…` request.
pub async fn handle(
    gw: &Gateway,
    sandbox: &Sandbox,
    req: Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    authorize(sandbox, &req)?;
    let path = req.uri().path().to_owned();
    let rest = path
        .trim_start_matches("/internal/sandboxes")
        .trim_start_matches('/');
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    let not_found = || Refusal::AdminNotFound { path: path.clone() };
    if path == "/internal/engagement" {
        return match method {
            Method::GET => Ok(json_response(
                StatusCode::OK,
                &crate::analytics::engagement::all(gw.registry())
                    .await
                    .map_err(store_err)?,
            )),
            _ => Err(not_found()),
        };
    }
    match (method, segments.as_slice()) {
        (Method::GET, [id, "engagement"]) => {
            match crate::analytics::engagement::of_tenant(gw.registry(), id)
                .await
                .map_err(store_err)?
            {
                Some(v) => Ok(json_response(StatusCode::OK, &v)),
                None => Err(Refusal::SandboxNotFound {
                    id: (*id).to_owned(),
                }),
            }
        }
        (Method::POST, []) => create(gw, sandbox, req.into_body()).await,
        (Method::GET, []) => list(gw).await,
        (Method::GET, [id, "status"]) => status(gw, sandbox, id).await,
        (Method::POST, [id, "usage", "reset"]) => usage_reset(gw, sandbox, id).await,
        (Method::POST, [id, "extend"]) => extend(gw, sandbox, id, req.into_body()).await,
        (Method::PATCH, [id]) => update(gw, sandbox, id, req.into_body()).await,
        (Method::DELETE, [id]) => deactivate(gw, id).await,
        (Method::POST, [id, "reset"]) => reset(gw, sandbox, id).await,
        // The request log (decision traces).
        (Method::GET, [id, "requests"]) => {
            let t = load(gw, id).await?;
            let query = req.uri().query();
            crate::trace::api::list(sandbox, gw.registry(), &t.id, query, Stage::Admin).await
        }
        (Method::GET, [id, "requests", request_id]) => {
            let t = load(gw, id).await?;
            crate::trace::api::get(gw.registry(), &t.id, request_id, Stage::Admin, |_| {}).await
        }
        _ => Err(not_found()),
    }
}

/// The body of `POST /internal/sandboxes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    prospect_company: String,
    prospect_email: String,
    deal_id: Option<String>,
    industry: Option<String>,
    persona: Option<String>,
    expiry_days: Option<u32>,
    features_enabled: Option<Vec<String>>,
    sample_data_persona: Option<String>,
    plan: Option<String>,
    #[serde(default)]
    mtls_identities: Vec<String>,
}

async fn create(
    gw: &Gateway,
    sandbox: &Sandbox,
    body: Incoming,
) -> Result<Response<Body>, Refusal> {
    let r: CreateRequest = json_body(body).await?;
    let cfg = &sandbox.tenants;
    let mut errors = Vec::new();
    if r.prospect_company.trim().is_empty() || r.prospect_company.len() > 200 {
        errors.push((
            "/prospect_company".into(),
            "must be 1 to 200 characters".into(),
        ));
    }
    let email_ok = r.prospect_email.len() <= 254
        && r.prospect_email
            .split_once('@')
            .is_some_and(|(a, d)| !a.is_empty() && d.contains('.') && !d.starts_with('.'));
    if !email_ok {
        errors.push(("/prospect_email".into(), "must be an email address".into()));
    }
    let expiry_days = r.expiry_days.unwrap_or(cfg.default_expiry_days);
    if expiry_days == 0 || expiry_days > cfg.max_lifetime_days {
        errors.push((
            "/expiry_days".into(),
            format!("must be between 1 and {}", cfg.max_lifetime_days),
        ));
    }
    if let Some(features) = &r.features_enabled {
        for (i, f) in features.iter().enumerate() {
            if !sandbox.apis.iter().any(|a| &*a.name == f) {
                let known: Vec<&str> = sandbox.apis.iter().map(|a| &*a.name).collect();
                errors.push((
                    format!("/features_enabled/{i}"),
                    format!("`{f}` is not an API of this sandbox ({})", known.join(", ")),
                ));
            }
        }
    }
    if let Some(plan) = &r.plan
        && let Some(error) = unknown_plan(sandbox, plan)
    {
        errors.push(error);
    }
    if let Some(p) = &r.sample_data_persona
        && !sandbox.seeds.profiles.contains_key(p)
    {
        let known: Vec<&str> = sandbox.seeds.profiles.keys().map(String::as_str).collect();
        errors.push((
            "/sample_data_persona".into(),
            format!(
                "`{p}` is not a seed profile of this sandbox ({})",
                if known.is_empty() {
                    "it has none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        ));
    }
    if !errors.is_empty() {
        return Err(Refusal::InvalidBody { errors });
    }
    let registry = gw.registry();
    let now = tenants::now_secs();
    let active = registry
        .list()
        .await
        .map_err(store_err)?
        .iter()
        .filter(|t| t.status(now) == Status::Active)
        .count();
    if active >= cfg.max_active_sandboxes {
        return Err(Refusal::CapacityReached {
            max: cfg.max_active_sandboxes,
        });
    }
    let prefix = sandbox
        .api_keys
        .as_ref()
        .map_or(API_KEY_PREFIX, |k| k.prefix.as_str());
    let life = tenants::days(u64::from(expiry_days));
    let (mut tenant, creds) =
        tenants::new_tenant(&r.prospect_company, &r.prospect_email, now, life, prefix)
            .map_err(store_err)?;
    tenant.deal_id = r.deal_id;
    tenant.industry = r.industry;
    tenant.persona = r.persona;
    tenant.plan = r.plan.unwrap_or_else(|| sandbox.plans.default_plan.clone());
    tenant.features_enabled = r.features_enabled;
    tenant.sample_data_persona = r.sample_data_persona;
    tenant.mtls_identities = r.mtls_identities;
    registry.put(&tenant).await.map_err(store_err)?;
    let sample_data = match &tenant.sample_data_persona {
        Some(p) => crate::state::seed::load(
            &sandbox.seeds,
            &sandbox.apis,
            registry.store(),
            &tenant.id,
            tenant.created_at,
            p,
        )
        .await
        .map_err(seed_err)?,
        None => Default::default(),
    };
    tracing::info!(sandbox_id = %tenant.id, deal_id = ?tenant.deal_id, "sandbox provisioned");
    crate::analytics::provisioned(sandbox, &tenant, sample_data.values().sum());
    let body = json!({
        "sandbox_id": tenant.id,
        "url": sandbox.public_url,
        "credentials": {
            "client_id": creds.client_id,
            "client_secret": creds.client_secret,
            "api_key": creds.api_key,
            // Only where the built-in issuer runs; otherwise tokens come
            // from the sandbox's own identity provider.
            "token_url": sandbox.builtin_issuer.as_ref().map(|b| format!(
                "{}{}",
                b.issuer.trim_end_matches('/'),
                crate::issuer::TOKEN_PATH
            )),
        },
        "expires_at": rfc3339(tenant.expires_at),
        "status": "ready",
        "plan": tenant.plan,
        "sample_data": sample_data,
    });
    let mut resp = json_response(StatusCode::CREATED, &body);
    if let Ok(v) = HeaderValue::from_str(&format!("/internal/sandboxes/{}/status", tenant.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

fn summary(t: &Tenant, now: u64) -> Value {
    let days_remaining = match t.status(now) {
        Status::Active => t.expires_at.saturating_sub(now).div_ceil(DAY),
        _ => 0,
    };
    json!({
        "sandbox_id": t.id,
        "prospect_company": t.prospect_company,
        "deal_id": t.deal_id,
        "plan": t.plan,
        "status": t.status(now),
        "created_at": rfc3339(t.created_at),
        "expires_at": rfc3339(t.expires_at),
        "days_remaining": days_remaining,
        "features_enabled": t.features_enabled,
    })
}

async fn load(gw: &Gateway, id: &str) -> Result<Tenant, Refusal> {
    gw.registry()
        .get(id)
        .await
        .map_err(store_err)?
        .ok_or_else(|| Refusal::SandboxNotFound { id: id.to_owned() })
}

async fn list(gw: &Gateway) -> Result<Response<Body>, Refusal> {
    let now = tenants::now_secs();
    let all = gw.registry().list().await.map_err(store_err)?;
    let items: Vec<Value> = all.iter().map(|t| summary(t, now)).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "sandboxes": items }),
    ))
}

async fn status(gw: &Gateway, sandbox: &Sandbox, id: &str) -> Result<Response<Body>, Refusal> {
    let t = load(gw, id).await?;
    let mut v = summary(&t, tenants::now_secs());
    v["usage"] = crate::limits::usage(&sandbox.plans, gw.registry(), &t)
        .await
        .map_err(store_err)?;
    Ok(json_response(StatusCode::OK, &v))
}

async fn usage_reset(gw: &Gateway, sandbox: &Sandbox, id: &str) -> Result<Response<Body>, Refusal> {
    let t = load(gw, id).await?;
    gw.registry()
        .quotas()
        .reset(&t.id)
        .await
        .map_err(store_err)?;
    tracing::info!(tenant = %t.id, "usage reset by the admin API");
    let usage = crate::limits::usage(&sandbox.plans, gw.registry(), &t)
        .await
        .map_err(store_err)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "sandbox_id": t.id, "usage": usage }),
    ))
}

/// The `/plan` error for a plan name the policies do not define (none when
/// the sandbox has no policies: every plan is then unlimited).
fn unknown_plan(sandbox: &Sandbox, plan: &str) -> Option<(String, String)> {
    if sandbox.plans.plans.is_empty() || sandbox.plans.get(plan).is_some() {
        return None;
    }
    let known: Vec<&str> = sandbox.plans.plans.keys().map(String::as_str).collect();
    Some((
        "/plan".into(),
        format!(
            "`{plan}` is not a plan of this sandbox ({})",
            known.join(", ")
        ),
    ))
}

/// The body of `PATCH /internal/sandboxes/{id}`: the fields that may change
/// after provisioning.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRequest {
    plan: Option<String>,
}

/// Changes a sandbox's plan. Rates and quotas follow at once on this
/// replica (other replicas within the tenant cache's TTL); quota counts are
/// kept, so a downgrade can leave a tenant already over its new quota.
async fn update(
    gw: &Gateway,
    sandbox: &Sandbox,
    id: &str,
    body: Incoming,
) -> Result<Response<Body>, Refusal> {
    let r: UpdateRequest = json_body(body).await?;
    let Some(plan) = r.plan else {
        return Err(Refusal::InvalidBody {
            errors: vec![(String::new(), "nothing to change: give `plan`".into())],
        });
    };
    if let Some(error) = unknown_plan(sandbox, &plan) {
        return Err(Refusal::InvalidBody {
            errors: vec![error],
        });
    }
    let mut t = load(gw, id).await?;
    if t.deactivated_at.is_some() {
        return Err(Refusal::SandboxDeactivated { id: t.id });
    }
    if t.plan != plan {
        tracing::info!(sandbox_id = %t.id, from = %t.plan, to = %plan, "plan changed by the admin API");
        t.plan = plan;
        gw.registry().put(&t).await.map_err(store_err)?;
    }
    Ok(json_response(
        StatusCode::OK,
        &summary(&t, tenants::now_secs()),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendRequest {
    additional_days: u32,
}

async fn extend(
    gw: &Gateway,
    sandbox: &Sandbox,
    id: &str,
    body: Incoming,
) -> Result<Response<Body>, Refusal> {
    let r: ExtendRequest = json_body(body).await?;
    if r.additional_days == 0 {
        return Err(Refusal::InvalidBody {
            errors: vec![("/additional_days".into(), "must be at least 1".into())],
        });
    }
    let mut t = load(gw, id).await?;
    if t.deactivated_at.is_some() {
        return Err(Refusal::SandboxDeactivated { id: t.id });
    }
    let max_days = sandbox.tenants.max_lifetime_days;
    let latest = t.created_at + u64::from(max_days) * DAY;
    let wanted = t.expires_at + u64::from(r.additional_days) * DAY;
    if wanted > latest {
        return Err(Refusal::ExtensionLimit {
            id: t.id,
            latest: rfc3339(latest),
            max_days,
        });
    }
    t.expires_at = wanted;
    if t.status(tenants::now_secs()) == tenants::Status::Active {
        t.expired_at = None;
    }
    gw.registry().put(&t).await.map_err(store_err)?;
    Ok(json_response(
        StatusCode::OK,
        &summary(&t, tenants::now_secs()),
    ))
}

async fn deactivate(gw: &Gateway, id: &str) -> Result<Response<Body>, Refusal> {
    let t = load(gw, id).await?;
    let now = tenants::now_secs();
    let t = if t.deactivated_at.is_none() {
        gw.registry().deactivate(t, now).await.map_err(store_err)?
    } else {
        t
    };
    tracing::info!(sandbox_id = %t.id, "sandbox deactivated and archived");
    let mut v = summary(&t, now);
    v["archived"] = json!(true);
    Ok(json_response(StatusCode::OK, &v))
}

async fn reset(gw: &Gateway, sandbox: &Sandbox, id: &str) -> Result<Response<Body>, Refusal> {
    let t = load(gw, id).await?;
    if t.deactivated_at.is_some() {
        return Err(Refusal::SandboxDeactivated { id: t.id });
    }
    let (removed, sample_data) = crate::state::seed::reset(sandbox, gw.registry(), &t)
        .await
        .map_err(seed_err)?;
    tracing::info!(sandbox_id = %t.id, removed, "sandbox reset by the admin API");
    Ok(json_response(
        StatusCode::OK,
        &json!({ "sandbox_id": t.id, "reset": true, "removed": removed, "sample_data": sample_data }),
    ))
}

/// A seed that cannot be loaded: the store failed, or the profile no
/// longer fits the loaded configuration (an operator's problem).
fn seed_err(e: crate::state::seed::SeedError) -> Refusal {
    match e {
        crate::state::seed::SeedError::Store(e) => store_err(e),
        other => {
            tracing::error!(error = %other, "seed profile could not be loaded");
            Refusal::Internal
        }
    }
}
