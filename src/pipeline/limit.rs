//! Limit: the tenant's plan decides whether this request fits its rates.
//!
//! Every rate rule that applies (the operation's, the API's, the plan's,
//! most specific first) is checked; the first one exhausted refuses the
//! request (429 `rate_limited`, with `Retry-After`). Every tenant answer,
//! refused or not, carries `RateLimit-Policy` and `RateLimit` (IETF httpapi
//! rate-limit headers draft, structured-field form) for the rule closest to
//! its limit.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use super::identify::Principal;
use super::route::Routed;
use crate::limits::cluster::Outcome;
use crate::limits::quota::Decision as QuotaDecision;
use crate::limits::rate::Decision;
use crate::refusal::Refusal;
use crate::sandbox::Sandbox;

/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// Where the tenant stands, for the response headers.
#[derive(Clone, Debug)]
pub struct Standing {
    /// `RateLimit-Policy` value.
    pub policy: HeaderValue,
    /// `RateLimit` value.
    pub limit: HeaderValue,
}

fn seconds_up(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 { s + 1 } else { s }
}

/// Checks `principal`'s plan for a request of `routed` at `now` (Unix
/// seconds, real time: quota windows), and puts where the tenant stands
/// (allowed or refused) in `standing`; it stays `None` when the tenant's
/// plan sets no rate for the request. Every decision is counted
/// (`sandgate_limit_decisions_total{outcome}`).
pub async fn limit(
    sandbox: &Sandbox,
    registry: &crate::tenants::Registry,
    routed: &Routed<'_>,
    principal: &Principal,
    now: u64,
    standing_out: &mut Option<Standing>,
    slot_out: &mut Option<crate::limits::concurrency::Slot>,
) -> Result<(), Refusal> {
    if sandbox.plans.plans.is_empty() {
        return Ok(());
    }
    let decided = decide(
        sandbox,
        registry,
        routed,
        principal,
        now,
        standing_out,
        slot_out,
    )
    .await;
    crate::telemetry::LimitDecided(decided.as_ref().err()).emit();
    decided
}

async fn decide(
    sandbox: &Sandbox,
    registry: &crate::tenants::Registry,
    routed: &Routed<'_>,
    principal: &Principal,
    now: u64,
    standing_out: &mut Option<Standing>,
    slot_out: &mut Option<crate::limits::concurrency::Slot>,
) -> Result<(), Refusal> {
    let plans = &sandbox.plans;
    let tenant = &principal.tenant;
    let Some(plan) = plans
        .get(&tenant.plan)
        .or_else(|| plans.get(&plans.default_plan))
    else {
        return Ok(());
    };
    let operation = routed
        .api
        .contract
        .as_ref()
        .zip(routed.operation)
        .map(|(c, i)| c.operations[i].id.as_str());
    let redis = registry.store().as_redis();
    // The tenant's in-flight count and (in process) quota counters, found
    // once; a slot keeps them.
    let mut state = (plan.concurrency.is_some() || (redis.is_none() && !plan.quotas.is_empty()))
        .then(|| registry.in_flight().state(&tenant.id));
    // Concurrency first: a request with no slot spends no allowance.
    if let Some(max) = plan.concurrency
        && let Some(held) = state.take()
    {
        match crate::limits::concurrency::InFlight::acquire_on(held, max) {
            Ok(slot) => *slot_out = Some(slot),
            Err(_) => {
                return Err(Refusal::TooManyInFlight {
                    tenant: tenant.id.clone(),
                    plan: plan.name.clone(),
                    max,
                });
            }
        }
    }
    let limited = |rule: &crate::limits::Rule, retry_after: Duration| {
        let rate = rule.limiter.rate;
        Refusal::RateLimited {
            tenant: tenant.id.clone(),
            plan: plan.name.clone(),
            scope: rule.scope,
            rule: rule.path.clone(),
            requests: rate.requests.get(),
            per: rate.per,
            burst: rate.burst.get(),
            retry_after: seconds_up(retry_after).max(1),
        }
    };
    let exhausted = |usage: crate::limits::quota::Usage| Refusal::QuotaExhausted {
        tenant: tenant.id.clone(),
        plan: plan.name.clone(),
        rule: usage.quota.path.clone(),
        requests: usage.quota.requests,
        period: usage.quota.period,
        resets_at: usage.resets_at,
    };
    // With the Redis store: rates and quotas in one script, one round trip.
    if let Some(redis) = redis {
        let rules: Vec<&crate::limits::Rule> = plan.rules(&routed.api.name, operation).collect();
        if rules.is_empty() && plan.quotas.is_empty() {
            return Ok(());
        }
        // Requests of this tenant against these rules are decided in
        // batches while a decision for them is in flight. The key names
        // the rules (the most specific one's path implies the others) of
        // this very plan: a reload makes new plans, so a batch never mixes
        // a rule's old rate with its new one.
        let key = format!(
            "{}\0{}@{:p}\0{}",
            tenant.id,
            plan.name,
            Arc::as_ptr(plan),
            rules.first().map_or("", |r| r.path.as_str())
        );
        let spec = || crate::limits::cluster::Spec {
            tenant: tenant.id.clone(),
            rules: rules
                .iter()
                .map(|r| (r.path.clone(), r.limiter.rate))
                .collect(),
            quotas: plan.quotas.clone(),
        };
        return match registry.limit_batches().decide(redis, &key, spec).await {
            Ok(Outcome::Allowed(each)) => {
                *standing_out = closest(rules.iter().copied().zip(each));
                Ok(())
            }
            Ok(Outcome::Limited { index, retry_after }) => {
                let Some(rule) = rules.get(index) else {
                    return Err(Refusal::Internal);
                };
                *standing_out = Some(standing(rule, 0, retry_after));
                Err(limited(rule, retry_after))
            }
            Ok(Outcome::Exhausted { usage, rates }) => {
                *standing_out = closest(rules.iter().copied().zip(rates));
                Err(exhausted(usage))
            }
            Err(e) => store_failed(sandbox, registry, &e),
        };
    }
    // In process: rates, the standing after this request of the rule
    // closest to its limit, or the refusal.
    let mut nearest: Option<(&crate::limits::Rule, (u32, Duration))> = None;
    for rule in plan.rules(&routed.api.name, operation) {
        // Keyed by the tenant's own id: no key is built per request.
        match rule.limiter.check(&tenant.id) {
            Decision::Allowed { remaining, reset } => {
                nearest = closer(nearest, (rule, (remaining, reset)));
            }
            Decision::Limited { retry_after } => {
                *standing_out = Some(standing(rule, 0, retry_after));
                return Err(limited(rule, retry_after));
            }
        }
    }
    *standing_out = nearest.map(|(rule, (remaining, reset))| standing(rule, remaining, reset));
    // Quotas, after the rates: a request refused for its rate is not counted.
    if plan.quotas.is_empty() {
        return Ok(());
    }
    let held = slot_out
        .as_ref()
        .map(crate::limits::concurrency::Slot::state)
        .or(state.as_deref().map(|s| &s.0));
    let decided = match held {
        Some(state) => {
            registry
                .quotas()
                .decide_on(state, &tenant.id, &plan.quotas, now)
                .await
        }
        None => {
            registry
                .quotas()
                .decide(&tenant.id, &plan.quotas, now)
                .await
        }
    };
    match decided {
        Ok(QuotaDecision::Allowed) => Ok(()),
        Ok(QuotaDecision::Exhausted(usage)) => Err(exhausted(usage)),
        Err(e) => store_failed(sandbox, registry, &e),
    }
}

/// The standing of the rule closest to its limit (fewest requests left for
/// the size of its burst), from each rule's (requests left, time until
/// whole).
fn closest<'a>(
    each: impl IntoIterator<Item = (&'a crate::limits::Rule, (u32, Duration))>,
) -> Option<Standing> {
    each.into_iter()
        .fold(None, closer)
        .map(|(rule, (remaining, reset))| standing(rule, remaining, reset))
}

/// Of the rule standing `best` so far and `next`, the one closer to its
/// limit (the first on a tie).
fn closer<'a>(
    best: Option<(&'a crate::limits::Rule, (u32, Duration))>,
    next: (&'a crate::limits::Rule, (u32, Duration)),
) -> Option<(&'a crate::limits::Rule, (u32, Duration))> {
    let ratio = |(r, (left, _)): &(&crate::limits::Rule, (u32, Duration))| {
        f64::from(*left) / f64::from(r.limiter.rate.burst.get())
    };
    match best {
        Some(b) if ratio(&b) <= ratio(&next) => Some(b),
        _ => Some(next),
    }
}

/// A limit decision the store could not make: allowed or refused as
/// `store.on_error` says, logged and counted either way.
fn store_failed(
    sandbox: &Sandbox,
    registry: &crate::tenants::Registry,
    e: &crate::store::StoreError,
) -> Result<(), Refusal> {
    let store = registry.store().kind();
    match sandbox.store.on_error {
        crate::config::OnStoreError::FailOpen => {
            metrics::counter!("sandgate_limit_store_failures_total", "on_error" => "fail_open")
                .increment(1);
            tracing::warn!(error = %e, store, "limit counters unavailable; allowing (store.on_error: fail_open)");
            Ok(())
        }
        crate::config::OnStoreError::FailClosed => {
            metrics::counter!("sandgate_limit_store_failures_total", "on_error" => "fail_closed")
                .increment(1);
            tracing::warn!(error = %e, store, "limit counters unavailable; refusing (store.on_error: fail_closed)");
            Err(Refusal::LimitsUnavailable { store })
        }
    }
}

fn standing(rule: &crate::limits::Rule, remaining: u32, reset: Duration) -> Standing {
    // `"<scope>";r=<remaining>;t=<seconds>`, without `format!`: this is on
    // every tenant answer.
    let mut out = [0u8; 64];
    let mut len = 0;
    let mut put = |part: &[u8]| {
        out[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    };
    let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
    put(b"\"");
    put(rule.scope.as_str().as_bytes());
    put(b"\";r=");
    put(r.format(remaining).as_bytes());
    put(b";t=");
    put(t.format(seconds_up(reset)).as_bytes());
    Standing {
        policy: rule.policy.clone(),
        limit: HeaderValue::from_bytes(&out[..len])
            .unwrap_or_else(|_| HeaderValue::from_static("\"plan\"")),
    }
}
