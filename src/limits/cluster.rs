//! Cluster-wide limit decisions: with the Redis store, a request's whole
//! limit decision (every rate rule and every quota that applies) is one Lua
//! script in Redis, one round trip, so N replicas enforce the same limits
//! as one process.
//!
//! - Rates: GCRA over every rule that applies, on Redis's own clock
//!   (`TIME`), never the replicas'; the first rule without room refuses.
//! - Quotas: then every quota of the plan; the first one used up refuses.
//! - Only when nothing refuses is the request counted: each rule's
//!   theoretical arrival time moves on and each quota counter goes up.
//!   A refused request is counted against nothing.
//!
//! A tenant's keys share its hash tag, so the scripts work on Redis Cluster.

use std::time::Duration;

use crate::store::{RedisStore, StoreError, redis_key};

use super::quota::{Period, Quota, Usage};
use super::rate::Rate;

/// One decision, one read (`MGET`) and one write per key: KEYS are the
/// rate rules' keys, then the quotas' keys;
/// ARGV[1] is the number of rate rules, then (T, tau) in microseconds per
/// rule, then (limit, ttl in ms, 0: none) per quota. Answers
/// `{0, remaining, reset, ...}` (counted against everything),
/// `{1, rule, wait}` (a rate refuses; nothing counted) or
/// `{2, quota, used, remaining, reset, ...}` (a quota refuses; nothing
/// counted; the rules' standing as it is).
const DECIDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nr = tonumber(ARGV[1])
local stored = redis.call('MGET', unpack(KEYS))
local tats = {}
for i = 1, nr do
  local T = tonumber(ARGV[2 * i])
  local tau = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(stored[i] or '0')
  if tat < now then tat = now end
  if now < tat - tau then
    return {1, i, tat - tau - now}
  end
  tats[i] = tat + T
end
local function standing(out, counted)
  for i = 1, nr do
    local T = tonumber(ARGV[2 * i])
    local tau = tonumber(ARGV[2 * i + 1])
    local tat = tats[i]
    if not counted then tat = tat - T end
    local remaining = math.floor((now + tau - tat) / T) + 1
    if remaining < 0 then remaining = 0 end
    out[#out + 1] = remaining
    out[#out + 1] = tat - now
  end
  return out
end
for q = 1, #KEYS - nr do
  local used = tonumber(stored[nr + q] or '0')
  if used >= tonumber(ARGV[2 * nr + 2 * q]) then
    return standing({2, q, used}, false)
  end
end
for i = 1, nr do
  local ttl = math.ceil((tats[i] - now) / 1000) + 1000
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
end
for q = 1, #KEYS - nr do
  local ttl = tonumber(ARGV[2 * nr + 2 * q + 1])
  if stored[nr + q] then
    redis.call('INCR', KEYS[nr + q])
  elseif ttl > 0 then
    redis.call('SET', KEYS[nr + q], '1', 'PX', ttl)
  else
    redis.call('SET', KEYS[nr + q], '1')
  end
end
return standing({0}, true)
";

/// The outcome of a cluster limit decision.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Counted against every rule and quota: per rule (in the order
    /// given), requests left and time until the burst is whole again.
    Allowed(Vec<(u32, Duration)>),
    /// Refused by rate rule `index`; nothing was counted.
    Limited {
        /// Which rule (index into the rules given).
        index: usize,
        /// Time until one more request is allowed.
        retry_after: Duration,
    },
    /// Refused by a quota; nothing was counted.
    Exhausted {
        /// The quota and its use.
        usage: Usage,
        /// Per rule, its standing (requests left, time until whole).
        rates: Vec<(u32, Duration)>,
    },
}

/// The Redis key of a tenant's rate rule.
fn rate_key(tenant: &str, path: &str) -> String {
    redis_key(&crate::store::keys::tenant_key(
        tenant,
        &format!("rate/{path}"),
    ))
}

/// The Redis key of a tenant's quota counter for the window starting at `start`.
fn quota_key(tenant: &str, q: &Quota, start: u64) -> String {
    redis_key(&crate::store::keys::tenant_key(
        tenant,
        &format!("quota/{}/{start}", q.period.as_str()),
    ))
}

/// (requests left, time until whole) pairs from the script's answer.
fn standings(flat: &[i64]) -> Vec<(u32, Duration)> {
    flat.chunks(2)
        .map(|c| {
            (
                u32::try_from(c[0]).unwrap_or(0),
                Duration::from_micros(u64::try_from(c.get(1).copied().unwrap_or(0)).unwrap_or(0)),
            )
        })
        .collect()
}

/// Decides one request of `tenant` against its rate `rules` (rule path,
/// rate) and `quotas`, in one script and one round trip: counted against
/// all of them, or against none. Quota windows are UTC calendar periods at
/// `now` (Unix seconds); rates run on Redis's clock.
pub async fn decide(
    redis: &RedisStore,
    tenant: &str,
    rules: &[(&str, Rate)],
    quotas: &[Quota],
    now: u64,
) -> Result<Outcome, StoreError> {
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(DECIDE));
    let mut inv = SCRIPT.prepare_invoke();
    inv.arg(rules.len());
    for (path, rate) in rules {
        let t = rate.interval().as_micros() as u64;
        inv.key(rate_key(tenant, path));
        inv.arg(t).arg(t * u64::from(rate.burst.get() - 1));
    }
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
    // Measured like the store's own operations (`store::Measured`), under
    // op `limit_decision`: this script is the one Redis call on the hot path.
    static DURATION: std::sync::LazyLock<metrics::Histogram> = std::sync::LazyLock::new(
        || metrics::histogram!("sandgate_store_duration_seconds", "store" => "redis", "op" => "limit_decision"),
    );
    static ERRORS: std::sync::LazyLock<metrics::Counter> = std::sync::LazyLock::new(
        || metrics::counter!("sandgate_store_errors_total", "store" => "redis", "op" => "limit_decision"),
    );
    let started = std::time::Instant::now();
    let out: Result<Vec<i64>, StoreError> = async {
        let mut conn = redis.connection().await?;
        redis.bounded(inv.invoke_async(&mut conn)).await
    }
    .await;
    DURATION.record(started.elapsed().as_secs_f64());
    let out = out.inspect_err(|_| ERRORS.increment(1))?;
    match out.as_slice() {
        [0, rest @ ..] => Ok(Outcome::Allowed(standings(rest))),
        [1, index, wait] => Ok(Outcome::Limited {
            index: usize::try_from(*index).unwrap_or(1).saturating_sub(1),
            retry_after: Duration::from_micros(u64::try_from(*wait).unwrap_or(0)),
        }),
        [2, index, used, rest @ ..] => {
            let q = usize::try_from(*index)
                .ok()
                .and_then(|i| quotas.get(i.saturating_sub(1)))
                .ok_or_else(|| StoreError::Corrupt("quota script index".into()))?;
            let (_, end) = q.period.window(now);
            Ok(Outcome::Exhausted {
                usage: Usage {
                    quota: q.clone(),
                    used: u64::try_from(*used).unwrap_or(0),
                    resets_at: (q.period != Period::Lifetime).then_some(end),
                },
                rates: standings(rest),
            })
        }
        other => Err(StoreError::Corrupt(format!(
            "limit script answered {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::store::tests::TestRedis;

    fn rate(requests: u32, burst: u32) -> Rate {
        Rate {
            requests: NonZeroU32::new(requests).expect("nonzero"),
            per: Duration::from_secs(60),
            burst: NonZeroU32::new(burst).expect("nonzero"),
        }
    }

    fn quota(requests: u64, period: Period) -> Quota {
        Quota {
            requests,
            period,
            path: format!("plans.t.quotas.{}", period.as_str()),
        }
    }

    #[tokio::test]
    async fn a_refused_request_is_counted_against_nothing() {
        let redis = TestRedis::start().await;
        let store = RedisStore::connect(&redis.url, Duration::from_secs(1))
            .await
            .expect("connect");
        let now = crate::tenants::now_secs();
        let rules = [("plans.t.rate", rate(3, 3))];
        let quotas = [quota(2, Period::Day), quota(100, Period::Lifetime)];
        // Two fit the rate (3) and the day's quota (2).
        for left in [2, 1] {
            match decide(&store, "t1", &rules, &quotas, now).await {
                Ok(Outcome::Allowed(each)) => assert_eq!(each[0].0, left),
                other => panic!("{other:?}"),
            }
        }
        // The third fits the rate but not the quota: refused, and neither
        // the rate nor the lifetime quota counts it.
        for _ in 0..2 {
            match decide(&store, "t1", &rules, &quotas, now).await {
                Ok(Outcome::Exhausted { usage, rates }) => {
                    assert_eq!(usage.quota.period, Period::Day);
                    assert_eq!(usage.used, 2);
                    assert_eq!(rates[0].0, 1, "the rule's standing, uncounted");
                }
                other => panic!("{other:?}"),
            }
        }
        // Without the day's quota, the rate still has exactly one left,
        // and the lifetime quota counted exactly the two admitted.
        let lifetime = [quota(3, Period::Lifetime)];
        assert!(matches!(
            decide(&store, "t1", &rules, &lifetime, now).await,
            Ok(Outcome::Allowed(_))
        ));
        match decide(&store, "t1", &rules, &[], now).await {
            Ok(Outcome::Limited {
                index: 0,
                retry_after,
            }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(20));
            }
            other => panic!("{other:?}"),
        }
        // The lifetime quota (3) counted the three admitted requests and
        // none of the four refused ones: used up exactly now.
        let fresh = [("plans.t.other", rate(10, 10))];
        assert!(matches!(
            decide(&store, "t1", &fresh, &lifetime, now).await,
            Ok(Outcome::Exhausted { .. })
        ));
    }
}
