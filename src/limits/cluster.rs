//! Cluster-wide limit decisions: with the Redis store, every rate and quota
//! decision is one Lua script in Redis, so N replicas enforce the same
//! limits as one process.
//!
//! - Rates: GCRA over every rule that applies, in one script, on Redis's
//!   own clock (`TIME`), never the replicas'; either every rule has room
//!   and each one's theoretical arrival time moves on, or the first rule
//!   without room refuses and nothing changes.
//! - Quotas: one script checks every quota of the plan and then counts the
//!   request against all of them, or against none.
//!
//! A tenant's keys share its hash tag, so the scripts work on Redis Cluster.

use std::time::Duration;

use crate::store::{RedisStore, StoreError, redis_key};

use super::quota::{Period, Quota, Usage};
use super::rate::Rate;

const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local tats = {}
for i = 1, n do
  local T = tonumber(ARGV[2 * i - 1])
  local tau = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  if now < tat - tau then
    return {0, i, tat - tau - now}
  end
  tats[i] = tat + T
end
local out = {1}
for i = 1, n do
  local T = tonumber(ARGV[2 * i - 1])
  local tau = tonumber(ARGV[2 * i])
  local ttl = math.ceil((tats[i] - now) / 1000) + 1000
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
  local remaining = math.floor((now + tau - tats[i]) / T) + 1
  if remaining < 0 then remaining = 0 end
  table.insert(out, remaining)
  table.insert(out, tats[i] - now)
end
return out
";

const QUOTA: &str = r"
for i = 1, #KEYS do
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  if used >= tonumber(ARGV[2 * i - 1]) then
    return {0, i, used}
  end
end
local out = {1}
for i = 1, #KEYS do
  local used = redis.call('INCR', KEYS[i])
  if used == 1 and tonumber(ARGV[2 * i]) > 0 then
    redis.call('PEXPIRE', KEYS[i], ARGV[2 * i])
  end
  table.insert(out, used)
end
return out
";

/// The outcome of a cluster rate decision.
#[derive(Debug, PartialEq, Eq)]
pub enum RateOutcome {
    /// Allowed: per rule (in the order given), requests left and time until
    /// the burst is whole again.
    Allowed(Vec<(u32, Duration)>),
    /// Refused by rule `index`; the next request fits after `retry_after`.
    Limited {
        /// Which rule (index into the rules given).
        index: usize,
        /// Time until one more request is allowed.
        retry_after: Duration,
    },
}

/// The Redis key of a tenant's rate rule.
fn rate_key(tenant: &str, path: &str) -> String {
    redis_key(&crate::store::keys::tenant_key(
        tenant,
        &format!("rate/{path}"),
    ))
}

/// Decides one request of `tenant` against `rules` (rule path, rate).
pub async fn rates(
    redis: &RedisStore,
    tenant: &str,
    rules: &[(&str, Rate)],
) -> Result<RateOutcome, StoreError> {
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(GCRA));
    let mut inv = SCRIPT.prepare_invoke();
    for (path, rate) in rules {
        let t = rate.interval().as_micros() as u64;
        inv.key(rate_key(tenant, path));
        inv.arg(t).arg(t * u64::from(rate.burst.get() - 1));
    }
    let mut conn = redis.connection();
    let out: Vec<i64> = bounded(redis, inv.invoke_async(&mut conn)).await?;
    match out.as_slice() {
        [0, index, wait] => Ok(RateOutcome::Limited {
            index: usize::try_from(*index).unwrap_or(1).saturating_sub(1),
            retry_after: Duration::from_micros(u64::try_from(*wait).unwrap_or(0)),
        }),
        [1, rest @ ..] => Ok(RateOutcome::Allowed(
            rest.chunks(2)
                .map(|c| {
                    (
                        u32::try_from(c[0]).unwrap_or(0),
                        Duration::from_micros(
                            u64::try_from(c.get(1).copied().unwrap_or(0)).unwrap_or(0),
                        ),
                    )
                })
                .collect(),
        )),
        other => Err(StoreError::Corrupt(format!(
            "rate script answered {other:?}"
        ))),
    }
}

/// The Redis key of a tenant's quota counter for the window starting at `start`.
fn quota_key(tenant: &str, q: &Quota, start: u64) -> String {
    redis_key(&crate::store::keys::tenant_key(
        tenant,
        &format!("quota/{}/{start}", q.period.as_str()),
    ))
}

/// The outcome of a cluster quota decision.
pub enum QuotaOutcome {
    /// Counted against every quota.
    Allowed,
    /// Not counted: this quota is used up.
    Exhausted(Usage),
}

/// Counts one request of `tenant` against every quota, or none. Windows
/// are UTC calendar periods at `now` (Unix seconds).
pub async fn quotas(
    redis: &RedisStore,
    tenant: &str,
    quotas: &[Quota],
    now: u64,
) -> Result<QuotaOutcome, StoreError> {
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(QUOTA));
    let mut inv = SCRIPT.prepare_invoke();
    for q in quotas {
        let (start, end) = q.period.window(now);
        inv.key(quota_key(tenant, q, start));
        let ttl_ms = if q.period == Period::Lifetime {
            0
        } else {
            (end.saturating_sub(now) + 60) * 1000
        };
        inv.arg(q.requests).arg(ttl_ms);
    }
    let mut conn = redis.connection();
    let out: Vec<i64> = bounded(redis, inv.invoke_async(&mut conn)).await?;
    match out.as_slice() {
        [0, index, used] => {
            let q = usize::try_from(*index)
                .ok()
                .and_then(|i| quotas.get(i.saturating_sub(1)))
                .ok_or_else(|| StoreError::Corrupt("quota script index".into()))?;
            let (_, end) = q.period.window(now);
            Ok(QuotaOutcome::Exhausted(Usage {
                quota: q.clone(),
                used: u64::try_from(*used).unwrap_or(0),
                resets_at: (q.period != Period::Lifetime).then_some(end),
            }))
        }
        [1, ..] => Ok(QuotaOutcome::Allowed),
        other => Err(StoreError::Corrupt(format!(
            "quota script answered {other:?}"
        ))),
    }
}

async fn bounded<T>(
    redis: &RedisStore,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(redis.timeout(), f).await {
        Ok(r) => r.map_err(|e| StoreError::Unavailable(e.to_string())),
        Err(_) => Err(StoreError::Unavailable(format!(
            "redis did not answer within {}",
            humantime::format_duration(redis.timeout())
        ))),
    }
}
