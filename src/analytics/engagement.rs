//! The engagement score of a sandbox, computed on read from per-tenant
//! counters the worker keeps in the store (`incr`, so replicas add up):
//! `t/<tenant>/analytics/count/<signal>`.
//!
//! | signal | points | cap |
//! |---|---|---|
//! | first login within 24 h of provisioning | 10 | 10 |
//! | each session after the first | 5 | 25 |
//! | each unique feature (operation) | 3 | 30 |
//! | each differentiator feature | 5 | 15 |
//! | each workflow completed | 8 | 24 |
//! | own data uploaded | 15 | 15 |
//! | each milestone | 10 | 30 |
//! | help requested | 2 | 6 |
//! | each error | −3 | −15 |
//!
//! Tiers: 0–30 Cold, 31–60 Warm, 61–90 Hot, 91+ Champion. The score never
//! goes below 0.

use serde::Serialize;

use crate::store::{SharedStore, StoreError, keys};

/// The counters, by signal name (`count/<name>` in the store).
pub mod counter {
    /// 1 when the first login came within 24 h of provisioning.
    pub const FIRST_LOGIN_24H: &str = "first_login_24h";
    /// Sessions started (the first included).
    pub const SESSIONS: &str = "sessions";
    /// Unique operations used.
    pub const FEATURES: &str = "features";
    /// Unique differentiator operations used.
    pub const DIFFERENTIATORS: &str = "differentiators";
    /// Workflows completed.
    pub const WORKFLOWS: &str = "workflows";
    /// Writes that created state.
    pub const DATA_UPLOADS: &str = "data_uploads";
    /// Milestones achieved.
    pub const MILESTONES: &str = "milestones";
    /// Help requests.
    pub const HELP: &str = "help";
    /// Errors encountered.
    pub const ERRORS: &str = "errors";
}

/// A tenant's signal counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// 1 when the first login came within 24 h of provisioning.
    pub first_login_24h: u64,
    /// Sessions started, the first included.
    pub sessions: u64,
    /// Unique operations used.
    pub features: u64,
    /// Unique differentiator operations used.
    pub differentiators: u64,
    /// Workflows completed.
    pub workflows: u64,
    /// Writes that created state.
    pub data_uploads: u64,
    /// Milestones achieved.
    pub milestones: u64,
    /// Help requests.
    pub help: u64,
    /// Errors encountered.
    pub errors: u64,
}

/// One line of the breakdown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Line {
    /// The signal.
    pub signal: &'static str,
    /// How many times it counted.
    pub count: u64,
    /// Points per occurrence (negative for errors).
    pub per: i64,
    /// Points it gives, within its cap.
    pub points: i64,
    /// The cap (a floor, for errors).
    pub cap: i64,
}

/// A tenant's engagement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Engagement {
    /// The score, at least 0.
    pub score: i64,
    /// `Cold`, `Warm`, `Hot` or `Champion`.
    pub tier: &'static str,
    /// Per signal.
    pub breakdown: Vec<Line>,
}

/// The signal table: (name, points each, cap).
pub const TABLE: [(&str, i64, i64); 9] = [
    ("first_login_within_24h", 10, 10),
    ("sessions_after_first", 5, 25),
    ("unique_features", 3, 30),
    ("differentiator_features", 5, 15),
    ("workflows_completed", 8, 24),
    ("data_uploaded", 15, 15),
    ("milestones", 10, 30),
    ("help_requested", 2, 6),
    ("errors", -3, -15),
];

/// The tier of `score`.
pub const fn tier(score: i64) -> &'static str {
    match score {
        i64::MIN..=30 => "Cold",
        31..=60 => "Warm",
        61..=90 => "Hot",
        _ => "Champion",
    }
}

/// Scores `c` by [`TABLE`].
pub fn score(c: &Counts) -> Engagement {
    let counts = [
        c.first_login_24h.min(1),
        c.sessions.saturating_sub(1),
        c.features,
        c.differentiators,
        c.workflows,
        c.data_uploads,
        c.milestones,
        c.help,
        c.errors,
    ];
    let breakdown: Vec<Line> = TABLE
        .iter()
        .zip(counts)
        .map(|(&(signal, per, cap), count)| {
            let raw = per.saturating_mul(i64::try_from(count).unwrap_or(i64::MAX));
            let points = if per >= 0 { raw.min(cap) } else { raw.max(cap) };
            Line {
                signal,
                count,
                per,
                points,
                cap,
            }
        })
        .collect();
    let score = breakdown.iter().map(|l| l.points).sum::<i64>().max(0);
    Engagement {
        score,
        tier: tier(score),
        breakdown,
    }
}

/// The store prefix of a tenant's counters.
pub fn prefix(tenant: &str) -> String {
    keys::tenant_key(tenant, &format!("{}count/", keys::ANALYTICS))
}

/// The key of one counter.
pub fn key(tenant: &str, counter: &str) -> String {
    format!("{}{counter}", prefix(tenant))
}

/// Reads a tenant's counters.
pub async fn counts(store: &SharedStore, tenant: &str) -> Result<Counts, StoreError> {
    let prefix = prefix(tenant);
    let mut c = Counts::default();
    for (k, v) in store.scan(&prefix, None, 64).await? {
        let n = std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0)
            .max(0) as u64;
        let slot = match &k[prefix.len()..] {
            counter::FIRST_LOGIN_24H => &mut c.first_login_24h,
            counter::SESSIONS => &mut c.sessions,
            counter::FEATURES => &mut c.features,
            counter::DIFFERENTIATORS => &mut c.differentiators,
            counter::WORKFLOWS => &mut c.workflows,
            counter::DATA_UPLOADS => &mut c.data_uploads,
            counter::MILESTONES => &mut c.milestones,
            counter::HELP => &mut c.help,
            counter::ERRORS => &mut c.errors,
            _ => continue,
        };
        *slot = n;
    }
    Ok(c)
}

/// The engagement JSON of one tenant (admin API).
pub fn to_json(tenant: &crate::tenants::Tenant, c: &Counts) -> serde_json::Value {
    let e = score(c);
    serde_json::json!({
        "sandbox_id": tenant.id,
        "prospect_company": tenant.prospect_company,
        "deal_id": tenant.deal_id,
        "score": e.score,
        "tier": e.tier,
        "breakdown": e.breakdown,
        "counts": c,
    })
}

/// `GET /internal/sandboxes/{id}/engagement`: the tenant's score, tier and
/// breakdown; `None` when there is no such tenant.
pub async fn of_tenant(
    registry: &crate::tenants::Registry,
    id: &str,
) -> Result<Option<serde_json::Value>, StoreError> {
    let Some(t) = registry.get(id).await? else {
        return Ok(None);
    };
    let c = counts(registry.store(), &t.id).await?;
    Ok(Some(to_json(&t, &c)))
}

/// `GET /internal/engagement`: every tenant, highest score first.
pub async fn all(registry: &crate::tenants::Registry) -> Result<serde_json::Value, StoreError> {
    let mut rows = Vec::new();
    for t in registry.list().await? {
        let c = counts(registry.store(), &t.id).await?;
        let score = score(&c).score;
        rows.push((score, to_json(&t, &c)));
    }
    // Stable: equal scores keep the oldest sandbox first.
    rows.sort_by_key(|(score, _)| std::cmp::Reverse(*score));
    Ok(serde_json::json!({
        "sandboxes": rows.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    }))
}
