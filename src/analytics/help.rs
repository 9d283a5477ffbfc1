//! `GET /_sandbox/help`: a JSON page a partner can read to find its way
//! around its sandbox (its APIs and their operations, documentation links,
//! the `/_sandbox/*` endpoints). Asking for it is a usage signal
//! (`sandbox_help_requested`, `help_type: help_page`).

use serde_json::{Value, json};

use crate::sandbox::Sandbox;
use crate::tenants::Tenant;

/// Where the documentation lives.
pub const DOCS: &str = "https://docs.sandgate.dev/";

/// The help page of `tenant` (only the APIs its sandbox includes).
pub fn page(sandbox: &Sandbox, tenant: &Tenant) -> Value {
    let apis: Vec<Value> = sandbox
        .apis
        .iter()
        .filter(|a| {
            tenant
                .features_enabled
                .as_ref()
                .is_none_or(|f| f.iter().any(|n| **n == *a.name))
        })
        .map(|a| {
            let info = sandbox.analytics.settings.apis.iter().find(|i| i.name == a.name);
            let operations: Vec<Value> = a
                .contract
                .iter()
                .flat_map(|c| c.operations.iter().enumerate())
                .map(|(i, op)| {
                    let meta = info.and_then(|x| x.ops.get(i));
                    json!({
                        "operation_id": op.id,
                        "method": op.method.as_str(),
                        "path": format!("{}{}", if a.strip_prefix { a.prefix.as_str() } else { "" }, op.template),
                        "tag": meta.and_then(|m| m.tag.as_deref()),
                    })
                })
                .collect();
            json!({
                "name": &*a.name,
                "title": a.contract.as_ref().map(|c| c.title.as_str()),
                "base_url": format!("{}{}", sandbox.public_url, a.prefix),
                "mode": a.mode.as_str(),
                "operations": operations,
            })
        })
        .collect();
    json!({
        "sandbox_id": tenant.id,
        "apis": apis,
        "docs": {
            "home": DOCS,
            "problems": format!("{DOCS}problems/"),
            "test_cards": format!("{DOCS}test-cards/"),
        },
        "endpoints": [
            {"method": "GET", "path": "/_sandbox/help", "what": "this page"},
            {"method": "GET", "path": "/_sandbox/usage", "what": "your standing against your plan's limits and quotas"},
            {"method": "GET", "path": "/_sandbox/clock", "what": "your test clock"},
            {"method": "POST", "path": "/_sandbox/clock", "what": "freeze or advance your test clock: {\"frozen_time\": \"2027-01-01T00:00:00Z\"} or {\"advance\": \"30d\"}"},
            {"method": "DELETE", "path": "/_sandbox/clock", "what": "back to real time"},
            {"method": "POST", "path": "/_sandbox/reset", "what": "wipe your sandbox's data and load its sample data again"},
            {"method": "POST", "path": "/_sandbox/{resource}/{id}/{action}", "what": "a test helper action, e.g. payment_intents/pi_…/authenticate"},
        ],
        "hints": [
            "Every answer carries X-Request-Id; refusals are application/problem+json with a stable `code`, the `stage` that decided and a `hint`.",
            "Send `X-Dry-Run: true` on a write to check it without changing anything.",
        ],
    })
}
