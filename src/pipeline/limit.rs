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
use crate::limits::TenantState;
use crate::limits::cluster::Outcome;
use crate::limits::per_tenant::Handle;
use crate::limits::quota::Decision as QuotaDecision;
use crate::limits::rate::Decision;
use crate::refusal::Refusal;

/// A refusal of this stage, boxed. The stage's result moves through the
/// request path on every tenant request; as `Result<(), Refusal>` each move
/// copies a whole refusal's room (up to 128 bytes) even when it is `Ok`,
/// as a box, one word.
pub type Refused = Box<Refusal>;
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
) -> Result<(), Refused> {
    let plans = &sandbox.plans;
    if plans.plans.is_empty() {
        return Ok(());
    }
    let tenant = &principal.tenant;
    let Some(plan) = plans
        .get(&tenant.plan)
        .or_else(|| plans.get(&plans.default_plan))
    else {
        return Ok(());
    };
    let ask = Ask {
        registry,
        routed,
        principal,
        tenant,
        plan,
        now,
    };
    let decided = match registry.store().as_redis() {
        Some(redis) => cluster(sandbox, redis, &ask, standing_out, slot_out).await,
        // In memory the decision is synchronous, unless the tenant's quota
        // counters are not in memory yet (the first request of a window,
        // or after a restart): then they are read from the store first.
        None => match in_memory(&ask, standing_out, slot_out) {
            Ok(decided) => decided,
            Err(NotLoaded) => match registry
                .quotas()
                .decide(&tenant.id, &plan.quotas, now)
                .await
            {
                Ok(QuotaDecision::Allowed) => Ok(()),
                Ok(QuotaDecision::Exhausted(usage)) => Err(exhausted(&ask, usage)),
                Err(e) => store_failed(sandbox, registry, &e),
            },
        },
    };
    crate::telemetry::LimitDecided(decided.as_ref().err().map(|r| &**r)).emit();
    decided
}

/// One request's limit decision: whose, under which plan, and when.
struct Ask<'a> {
    registry: &'a crate::tenants::Registry,
    routed: &'a Routed<'a>,
    principal: &'a Principal,
    tenant: &'a crate::tenants::Tenant,
    plan: &'a Arc<crate::limits::Plan>,
    now: u64,
}

impl Ask<'_> {
    /// The operation id, when the API has a contract and it matched one.
    fn operation(&self) -> Option<&str> {
        self.routed
            .api
            .contract
            .as_ref()
            .zip(self.routed.operation)
            .map(|(c, i)| c.operations[i].id.as_str())
    }

    /// A slot, when the plan caps requests in flight; `state` is the
    /// tenant's (the slot keeps it).
    fn concurrency(
        &self,
        state: &mut Option<Handle<TenantState>>,
        slot_out: &mut Option<crate::limits::concurrency::Slot>,
    ) -> Result<(), Refused> {
        let Some(max) = self.plan.concurrency else {
            return Ok(());
        };
        let Some(held) = state.take() else {
            return Ok(());
        };
        match crate::limits::concurrency::InFlight::acquire_on(held, max) {
            Ok(slot) => {
                *slot_out = Some(slot);
                Ok(())
            }
            Err(_) => Err(Box::new(Refusal::TooManyInFlight {
                tenant: self.tenant.id.clone(),
                plan: self.plan.name.clone(),
                max,
            })),
        }
    }
}

/// 429 `rate_limited` by `rule`.
#[cold]
fn limited(ask: &Ask<'_>, rule: &crate::limits::Rule, retry_after: Duration) -> Refused {
    let rate = rule.limiter.rate;
    Box::new(Refusal::RateLimited {
        tenant: ask.tenant.id.clone(),
        plan: ask.plan.name.clone(),
        scope: rule.scope,
        rule: rule.path.clone(),
        requests: rate.requests.get(),
        per: rate.per,
        burst: rate.burst.get(),
        retry_after: seconds_up(retry_after).max(1),
    })
}

/// 429 `quota_exhausted`, for `usage`.
#[cold]
fn exhausted(ask: &Ask<'_>, usage: crate::limits::quota::Usage) -> Refused {
    Box::new(Refusal::QuotaExhausted {
        tenant: ask.tenant.id.clone(),
        plan: ask.plan.name.clone(),
        rule: usage.quota.path.clone(),
        requests: usage.quota.requests,
        period: usage.quota.period,
        resets_at: usage.resets_at,
    })
}

/// The tenant's quota counters are not in memory: read them, then decide
/// the quotas (the rates and the slot are decided already).
struct NotLoaded;

/// The decision in this process: the slot, the rates (the standing of the
/// rule closest to its limit, or the refusal), then the quotas.
fn in_memory(
    ask: &Ask<'_>,
    standing_out: &mut Option<Standing>,
    slot_out: &mut Option<crate::limits::concurrency::Slot>,
) -> Result<Result<(), Refused>, NotLoaded> {
    let plan = ask.plan;
    // The tenant's in-flight count, GCRA cells and quota counters, found
    // once (or held already by the worker's credential cache); a slot
    // keeps them.
    let mut state = Some(
        ask.principal
            .limit_state
            .clone()
            .unwrap_or_else(|| ask.registry.in_flight().state(&ask.tenant.id)),
    );
    // Concurrency first: a request with no slot spends no allowance.
    if let Err(refused) = ask.concurrency(&mut state, slot_out) {
        return Ok(Err(refused));
    }
    let held = match (slot_out.as_ref(), state.as_ref()) {
        (Some(slot), _) => slot.state(),
        (None, Some(state)) => state,
        (None, None) => return Ok(Err(Box::new(Refusal::Internal))),
    };
    let mut nearest: Option<(&crate::limits::Rule, (u32, Duration))> = None;
    for rule in plan.rules(&ask.routed.api.name, ask.operation()) {
        match rule.limiter.check(held) {
            Decision::Allowed { remaining, reset } => {
                nearest = closer(nearest, (rule, (remaining, reset)));
            }
            Decision::Limited { retry_after } => {
                *standing_out = Some(standing(rule, 0, retry_after));
                return Ok(Err(limited(ask, rule, retry_after)));
            }
        }
    }
    *standing_out = nearest.map(|(rule, (remaining, reset))| standing(rule, remaining, reset));
    // Quotas, after the rates: a request refused for its rate is not counted.
    if plan.quotas.is_empty() {
        return Ok(Ok(()));
    }
    match crate::limits::quota::Counters::decide_in_memory(held, &plan.quotas, ask.now) {
        Some(QuotaDecision::Allowed) => Ok(Ok(())),
        Some(QuotaDecision::Exhausted(usage)) => Ok(Err(exhausted(ask, usage))),
        None => Err(NotLoaded),
    }
}

/// The decision with the Redis store: the slot in this process, then the
/// rates and quotas in one script, one round trip.
async fn cluster(
    sandbox: &Sandbox,
    redis: &crate::store::RedisStore,
    ask: &Ask<'_>,
    standing_out: &mut Option<Standing>,
    slot_out: &mut Option<crate::limits::concurrency::Slot>,
) -> Result<(), Refused> {
    let (registry, tenant, plan) = (ask.registry, ask.tenant, ask.plan);
    let mut state = plan.concurrency.map(|_| {
        ask.principal
            .limit_state
            .clone()
            .unwrap_or_else(|| registry.in_flight().state(&tenant.id))
    });
    ask.concurrency(&mut state, slot_out)?;
    let rules: Vec<&crate::limits::Rule> =
        plan.rules(&ask.routed.api.name, ask.operation()).collect();
    if rules.is_empty() && plan.quotas.is_empty() {
        return Ok(());
    }
    // Requests of this tenant against these rules are decided in batches
    // while a decision for them is in flight.
    let key = crate::limits::cluster::BatchKey::new(&tenant.id, plan, rules.first().copied());
    let spec = || crate::limits::cluster::Spec {
        tenant: tenant.id.clone(),
        rules: rules
            .iter()
            .map(|r| (r.path.clone(), r.limiter.rate))
            .collect(),
        quotas: plan.quotas.clone(),
    };
    match registry.limit_batches().decide(redis, key, spec).await {
        Ok(Outcome::Allowed(each)) => {
            *standing_out = closest(rules.iter().copied().zip(each));
            Ok(())
        }
        Ok(Outcome::Limited { index, retry_after }) => {
            let Some(rule) = rules.get(index) else {
                return Err(Box::new(Refusal::Internal));
            };
            *standing_out = Some(standing(rule, 0, retry_after));
            Err(limited(ask, rule, retry_after))
        }
        Ok(Outcome::Exhausted { usage, rates }) => {
            *standing_out = closest(rules.iter().copied().zip(rates));
            Err(exhausted(ask, usage))
        }
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
) -> Result<(), Refused> {
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
            Err(Box::new(Refusal::LimitsUnavailable { store }))
        }
    }
}

fn standing(rule: &crate::limits::Rule, remaining: u32, reset: Duration) -> Standing {
    Standing {
        policy: rule.policy.clone(),
        limit: rate_limit_value(rule.scope, remaining, seconds_up(reset)),
    }
}

/// The `RateLimit` value `"<scope>";r=<remaining>;t=<seconds>`.
///
/// A tenant well under its limits gets the same value answer after answer
/// (its burst stays whole but for the request itself), so each worker keeps
/// the last value it made for each scope and hands that one out again: a
/// clone counts on the worker's own allocation, where writing and
/// allocating a new value is most of what the limit stage costs a request.
fn rate_limit_value(scope: crate::limits::Scope, remaining: u32, t: u64) -> HeaderValue {
    type Last = [Option<(u32, u64, HeaderValue)>; 3];
    thread_local! {
        static LAST: std::cell::RefCell<Last> = const { std::cell::RefCell::new([None, None, None]) };
    }
    let made = || {
        // Without `format!`: this is on every tenant answer whose standing
        // changed.
        let mut out = Text {
            buf: [0u8; 64],
            len: 0,
        };
        let (mut r, mut s) = (itoa::Buffer::new(), itoa::Buffer::new());
        out.put(b"\"");
        out.put(scope.as_str().as_bytes());
        out.put(b"\";r=");
        out.put(r.format(remaining).as_bytes());
        out.put(b";t=");
        out.put(s.format(t).as_bytes());
        // Owned by one allocation that clones share (the decision trace
        // copies the answer's headers): a plain copy would be copied, then
        // promoted to a shared buffer by that first clone.
        HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(out))
            .unwrap_or_else(|_| HeaderValue::from_static("\"plan\""))
    };
    let i = scope as usize;
    LAST.try_with(|last| {
        let Ok(mut last) = last.try_borrow_mut() else {
            return made();
        };
        let Some(entry) = last.get_mut(i) else {
            return made();
        };
        match entry {
            Some((r, s, value)) if *r == remaining && *s == t => value.clone(),
            _ => {
                let value = made();
                *entry = Some((remaining, t, value.clone()));
                value
            }
        }
    })
    .unwrap_or_else(|_| made())
}

/// A `RateLimit` value being written: at most 64 bytes (the scope, a `u32`
/// and a `u64` with their separators take under 50).
struct Text {
    buf: [u8; 64],
    len: usize,
}

impl Text {
    fn put(&mut self, part: &[u8]) {
        if let Some(room) = self.buf.get_mut(self.len..self.len + part.len()) {
            room.copy_from_slice(part);
            self.len += part.len();
        }
    }
}

impl AsRef<[u8]> for Text {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}
