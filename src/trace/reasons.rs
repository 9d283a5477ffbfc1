//! The reasons stages give in a trace, kept out of the pipeline's listing
//! so it stays one line per stage. Each is formatted only when the trace is
//! kept (`Recorder::note_with`).

use http::HeaderValue;

use super::Recorder;
use crate::body::RequestBody;
use crate::config::ValidateMode;
use crate::pipeline::dry_run::Asked;
use crate::pipeline::route::Routed;
use crate::tenants::Tenant;

/// What `X-Dry-Run` asked for.
pub fn dry_run(asked: Asked) -> &'static str {
    match asked {
        Asked::No => "no dry run asked (X-Dry-Run absent or false)",
        Asked::Write => "X-Dry-Run: true on a write: simulated, nothing is committed",
        Asked::NotApplicable => "X-Dry-Run: true on a read: not applicable, served as usual",
    }
}

/// The sandbox that was admitted.
pub fn admitted(t: &Tenant, api: &str) -> String {
    format!(
        "sandbox {} is active until {}; plan {}; API {api} is enabled",
        t.id,
        crate::clock::rfc3339(t.expires_at),
        t.plan
    )
}

/// The tenant's clock.
pub fn clock(now: u64, set: bool) -> String {
    if set {
        format!("test clock set: now is {}", crate::clock::rfc3339(now))
    } else {
        "real time (no test clock set)".into()
    }
}

/// The plan's standing after the limit stage: its `RateLimit-Policy` and
/// `RateLimit` values, when a rate or quota applies.
pub fn limit(plan: &str, standing: Option<(&HeaderValue, &HeaderValue)>) -> String {
    let text = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    match standing {
        Some((policy, limit)) => format!(
            "plan {plan}: within its limits (RateLimit-Policy: {}; RateLimit: {})",
            text(policy),
            text(limit)
        ),
        None => format!("plan {plan}: no rate or quota applies to this request"),
    }
}

/// The validate stage's verdict, and the request body it read.
pub fn validated(
    rec: &mut Recorder,
    routed: &Routed<'_>,
    report: Option<&HeaderValue>,
    body: &RequestBody,
) {
    if let RequestBody::Read(b) = body {
        rec.request_body(b);
    }
    let api = routed.api;
    let Some((contract, op)) = api.contract.as_ref().zip(routed.operation) else {
        rec.skipped("the API has no contract");
        return;
    };
    if api.validate == ValidateMode::Off {
        rec.skipped("validation is off for this API");
        rec.rule(|| format!("apis.{}.validate", api.name));
        return;
    }
    match report {
        Some(r) => {
            rec.noted(|| {
                format!(
                    "does not match the contract, let through (report mode): {}",
                    String::from_utf8_lossy(r.as_bytes())
                )
            });
            rec.rule(|| format!("apis.{}.validate", api.name));
        }
        None => {
            let _ = (contract, op);
            rec.note_validated();
        }
    }
}
