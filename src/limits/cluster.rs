//! Cluster-wide limit decisions: with the Redis store, a request's whole
//! limit decision (every rate rule and every quota that applies) is one Lua
//! script in Redis, one round trip, so N replicas enforce the same limits
//! as one process.
//!
//! - Rates: GCRA over every rule that applies, on Redis's own clock
//!   (`TIME`), never the replicas'; the first rule without room refuses.
//! - Quotas: then every quota of the plan; the first one used up refuses.
//! - Only admitted requests are counted: each rule's theoretical arrival
//!   time moves on and each quota counter goes up. A refused request is
//!   counted against nothing.
//!
//! **Coalescing.** One script call may decide a *batch*: the requests of
//! one tenant, against the same rules, that arrived on one worker while
//! the calls for them already in flight (at most [`MAX_IN_FLIGHT`]) were
//! out ([`Coalescer`]). The script
//! admits the first `k` of the batch's `n` requests that fit, exactly as
//! `n` calls one after another would, and says which rule or quota stopped
//! the rest; each request gets its own standing back. A request on its own
//! pays one round trip as before; under load a replica pays one per batch
//! instead of one per request, and limits stay exact across replicas,
//! because every decision is still made in Redis, atomically. Two calls
//! in flight rather than one keep a worker busy while one batch travels:
//! with one, a worker whose requests all wait on the same round trip
//! sits idle (measured in BENCHMARKS.md, session 15).
//!
//! A tenant's keys share its hash tag, so the scripts work on Redis Cluster.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::store::{RedisStore, StoreError, redis_key};

use super::quota::{Period, Quota, Usage};
use super::rate::Rate;

/// One decision for `n` requests, one read (`MGET`) and one write per key:
/// KEYS are the rate rules' keys, then the quotas' keys; ARGV[1] is the
/// number of rate rules, ARGV[2] the number of requests `n`, then (T, tau)
/// in nanoseconds per rule, then (limit, ttl in ms, 0: none) per quota.
///
/// Points in time are microseconds since [`EPOCH`] (on Redis `TIME`), not
/// since 1970: at that size a Lua number (a double) keeps better than
/// ten nanoseconds, where microseconds since 1970 keep only a quarter of
/// one; intervals are whole nanoseconds. So an interval that is not a
/// whole number of microseconds (700,000 a second: 1,428 ns) is kept,
/// not truncated (to 1 µs, which let 1,000,000 a second through). Rooms
/// are counted from differences of times, in nanoseconds, so a fresh
/// rule's room is exactly its burst. A stored time written by an older
/// build, in microseconds since 1970, is read as such.
///
/// The first `k` requests that fit are admitted and counted; `k` is the
/// smallest room of any rule or quota (rules first, most specific first,
/// then quotas, on ties). Answers `{k, why, which, detail, standing...}`:
/// `why` 0 when all `n` fit, 1 when rate rule `which` stopped the rest
/// (`detail`: microseconds until one more fits), 2 when quota `which` did
/// (`detail`: its count); then per rule, after the `k` admitted ones,
/// (requests left, microseconds until whole).
const DECIDE: &str = r"
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1767225600) * 1000000 + tonumber(t[2])
local nr = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local stored = redis.call('MGET', unpack(KEYS))
local k, why, which = n, 0, 0
local tats = {}
for i = 1, nr do
  local T = tonumber(ARGV[1 + 2 * i])
  local tau = tonumber(ARGV[2 + 2 * i])
  local tat = tonumber(stored[i] or '0')
  if tat > 1e15 then tat = tat - 1767225600000000 end
  if tat < now then tat = now end
  tats[i] = tat
  local room = math.floor(((now - tat) * 1000 + tau) / T) + 1
  if room < 0 then room = 0 end
  if room < k then k, why, which = room, 1, i end
end
local used = {}
for q = 1, #KEYS - nr do
  used[q] = tonumber(stored[nr + q] or '0')
  local room = tonumber(ARGV[1 + 2 * nr + 2 * q]) - used[q]
  if room < 0 then room = 0 end
  if room < k then k, why, which = room, 2, q end
end
if k > 0 then
  for i = 1, nr do
    local T = tonumber(ARGV[1 + 2 * i])
    tats[i] = tats[i] + k * T / 1000
    local ttl = math.ceil((tats[i] - now) / 1000) + 1000
    redis.call('SET', KEYS[i], string.format('%.3f', tats[i]), 'PX', ttl)
  end
  for q = 1, #KEYS - nr do
    local ttl = tonumber(ARGV[2 + 2 * nr + 2 * q])
    if stored[nr + q] then
      redis.call('INCRBY', KEYS[nr + q], k)
    elseif ttl > 0 then
      redis.call('SET', KEYS[nr + q], k, 'PX', ttl)
    else
      redis.call('SET', KEYS[nr + q], k)
    end
    used[q] = used[q] + k
  end
end
local detail = 0
if why == 1 then
  detail = ((tats[which] - now) * 1000 - tonumber(ARGV[2 + 2 * which])) / 1000
elseif why == 2 then
  detail = used[which]
end
local out = {k, why, which, detail}
for i = 1, nr do
  local T = tonumber(ARGV[1 + 2 * i])
  local tau = tonumber(ARGV[2 + 2 * i])
  local remaining = math.floor(((now - tats[i]) * 1000 + tau) / T) + 1
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = tats[i] - now
end
return out
";

/// The origin of the decision script's clock: 2026-01-01T00:00:00Z, in
/// seconds since 1970 (written into [`DECIDE`] as a literal).
pub const EPOCH: u64 = 1_767_225_600;

/// The outcome of a cluster limit decision for one request.
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

/// What one request's limits are: its tenant, the rate rules that apply
/// to it (config path and rate, most specific first) and its plan's quotas.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The tenant's id.
    pub tenant: String,
    /// (rule path, rate) per rule that applies.
    pub rules: Vec<(String, Rate)>,
    /// The plan's quotas.
    pub quotas: Vec<Quota>,
}

/// The answer of the script for a batch of `n` requests.
#[derive(Debug)]
struct Batch {
    /// How many of the batch, from the first, were admitted.
    admitted: usize,
    /// Why the rest were not: 1 a rate rule, 2 a quota.
    why: i64,
    /// Which rule or quota (1-based).
    which: usize,
    /// Microseconds until one more fits (rate), or the quota's count.
    detail: i64,
    /// Per rule, after the admitted ones: (requests left, µs until whole).
    standing: Vec<(i64, i64)>,
}

impl Batch {
    /// The outcome of the `j`-th request (0-based) of the batch.
    fn outcome(&self, j: usize, spec: &Spec, now: u64) -> Result<Outcome, StoreError> {
        let standing = |later: usize| -> Vec<(u32, Duration)> {
            // Request j of k admitted saw `later` more admissions after it.
            self.standing
                .iter()
                .zip(&spec.rules)
                .map(|(&(left, reset), (_, rate))| {
                    let later = u32::try_from(later).unwrap_or(u32::MAX);
                    let sooner = rate.interval().saturating_mul(later).as_micros();
                    let left = left.saturating_add(i64::from(later));
                    let reset = reset.saturating_sub(i64::try_from(sooner).unwrap_or(i64::MAX));
                    (
                        u32::try_from(left.max(0)).unwrap_or(u32::MAX),
                        Duration::from_micros(u64::try_from(reset.max(0)).unwrap_or(0)),
                    )
                })
                .collect()
        };
        if j < self.admitted {
            return Ok(Outcome::Allowed(standing(self.admitted - 1 - j)));
        }
        match self.why {
            1 => Ok(Outcome::Limited {
                index: self.which.saturating_sub(1),
                retry_after: Duration::from_micros(u64::try_from(self.detail).unwrap_or(0)),
            }),
            2 => {
                let q = spec
                    .quotas
                    .get(self.which.saturating_sub(1))
                    .ok_or_else(|| StoreError::Corrupt("quota script index".into()))?;
                let (_, end) = q.period.window(now);
                Ok(Outcome::Exhausted {
                    usage: Usage {
                        quota: q.clone(),
                        used: u64::try_from(self.detail).unwrap_or(0),
                        resets_at: (q.period != Period::Lifetime).then_some(end),
                    },
                    rates: standing(0),
                })
            }
            other => Err(StoreError::Corrupt(format!(
                "limit script: {} of {j}+ admitted, reason {other}",
                self.admitted
            ))),
        }
    }
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

/// Decides `n` requests of `spec` in one script and one round trip: the
/// first ones that fit are admitted and counted against every rule and
/// quota, the rest against nothing. Quota windows are UTC calendar
/// periods at `now` (Unix seconds); rates run on Redis's clock.
async fn decide_batch(
    redis: &RedisStore,
    spec: &Spec,
    n: usize,
    now: u64,
) -> Result<Batch, StoreError> {
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(DECIDE));
    let mut inv = SCRIPT.prepare_invoke();
    inv.arg(spec.rules.len()).arg(n);
    for (path, rate) in &spec.rules {
        // Whole nanoseconds; tau as a float, since a slow rule with a big
        // burst (one a day, a million at once) is past u64 nanoseconds.
        let t = u64::try_from(rate.interval().as_nanos()).unwrap_or(u64::MAX);
        let tau = t as f64 * f64::from(rate.burst.get() - 1);
        inv.key(rate_key(&spec.tenant, path));
        inv.arg(t).arg(tau);
    }
    for q in &spec.quotas {
        let (start, end) = q.period.window(now);
        inv.key(quota_key(&spec.tenant, q, start));
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
    static BATCH: std::sync::LazyLock<metrics::Histogram> =
        std::sync::LazyLock::new(|| metrics::histogram!(crate::telemetry::BATCH_SIZE));
    BATCH.record(n as f64);
    let started = std::time::Instant::now();
    let out: Result<Vec<i64>, StoreError> = async {
        let mut conn = redis.connection().await?;
        redis.bounded(inv.invoke_async(&mut conn)).await
    }
    .await;
    DURATION.record(started.elapsed().as_secs_f64());
    let out = out.inspect_err(|_| ERRORS.increment(1))?;
    match out.as_slice() {
        [k, why, which, detail, rest @ ..]
            if rest.len() == 2 * spec.rules.len() && (0..=n as i64).contains(k) =>
        {
            Ok(Batch {
                admitted: usize::try_from(*k).unwrap_or(0),
                why: *why,
                which: usize::try_from(*which).unwrap_or(0),
                detail: *detail,
                standing: rest.chunks(2).map(|c| (c[0], c[1])).collect(),
            })
        }
        other => Err(StoreError::Corrupt(format!(
            "limit script answered {other:?}"
        ))),
    }
}

/// Decides one request of `spec` on its own, in one script and one round
/// trip: counted against all of its rules and quotas, or against none.
pub async fn decide(redis: &RedisStore, spec: &Spec, now: u64) -> Result<Outcome, StoreError> {
    decide_batch(redis, spec, 1, now)
        .await?
        .outcome(0, spec, now)
}

/// The most requests one script call decides.
const MAX_BATCH: usize = 512;

/// The most script calls in flight at once for one batch key.
pub const MAX_IN_FLIGHT: usize = 2;

/// A request waiting for its decision: where to send it, and by when.
struct Answer {
    tx: oneshot::Sender<Result<Outcome, StoreError>>,
    /// `store.timeout` after the request asked: it is answered by then.
    deadline: tokio::time::Instant,
}

/// Names a batch: requests with equal keys are decided together, so they
/// must have equal [`Spec`]s. The plan and the most specific rule are
/// named by address (the rule implies the others): a reload makes new
/// plans, so a batch never mixes a rule's old rate with its new one, and
/// a plan cannot be freed (and its address reused) while one of its
/// requests waits, since the request holds it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BatchKey {
    /// The worker the requests came on (its own connection to Redis).
    worker: usize,
    tenant: String,
    plan: usize,
    rule: usize,
}

impl BatchKey {
    /// The key of a request of `tenant` on this worker under `plan`,
    /// whose most specific rule is `rule` (`None`: quotas only).
    pub fn new(tenant: &str, plan: &Arc<super::Plan>, rule: Option<&super::Rule>) -> BatchKey {
        BatchKey {
            worker: crate::server::worker_slot(),
            tenant: tenant.to_owned(),
            plan: Arc::as_ptr(plan).addr(),
            rule: rule.map_or(0, |r| std::ptr::from_ref(r).addr()),
        }
    }
}

/// The requests of one batch key waiting for their decision.
struct Waiting {
    spec: Arc<Spec>,
    answers: Vec<Answer>,
    /// Script calls in flight for this key (each with its own driver).
    in_flight: usize,
}

/// Coalesces concurrent limit decisions on this replica: requests with
/// the same [`BatchKey`] (one tenant, the same rules, the same worker)
/// that arrive while a script call for that key is in flight are decided
/// together, in the next call. Up to [`MAX_IN_FLIGHT`] calls per key run
/// at once, so a worker is not left idle waiting for one round trip; each
/// runs on a task of its own, so a request that goes away (its client
/// disconnected) never strands the others. Every request is answered
/// within `store.timeout` of asking, by the call that decides it or, when
/// Redis is too slow, with `Unavailable`: one timer per call, not one per
/// request.
#[derive(Default)]
pub struct Coalescer {
    waiting: Mutex<HashMap<BatchKey, Waiting, foldhash::fast::RandomState>>,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer").finish_non_exhaustive()
    }
}

/// The answer to a request that waited `store.timeout` for its decision.
fn too_late() -> StoreError {
    StoreError::Unavailable("no limit decision within store.timeout".into())
}

impl Coalescer {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<BatchKey, Waiting, foldhash::fast::RandomState>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides one request: `key` names its batch, `spec` makes its spec
    /// when it is the first of a batch. The answer comes within the
    /// store's timeout, as `Unavailable` when Redis did not give it.
    pub async fn decide(
        self: &Arc<Self>,
        redis: &RedisStore,
        key: BatchKey,
        spec: impl FnOnce() -> Spec,
    ) -> Result<Outcome, StoreError> {
        let (tx, rx) = oneshot::channel();
        let now = tokio::time::Instant::now();
        let answer = Answer {
            tx,
            // A `store.timeout` of centuries is no deadline, not an overflow.
            deadline: now
                .checked_add(redis.timeout())
                .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400)),
        };
        let drive = {
            let mut waiting = self.lock();
            match waiting.get_mut(&key) {
                Some(w) => {
                    w.answers.push(answer);
                    let more = w.in_flight < MAX_IN_FLIGHT;
                    w.in_flight += usize::from(more);
                    more.then_some(key)
                }
                None => {
                    waiting.insert(
                        key.clone(),
                        Waiting {
                            spec: Arc::new(spec()),
                            answers: vec![answer],
                            in_flight: 1,
                        },
                    );
                    Some(key)
                }
            }
        };
        if let Some(key) = drive {
            tokio::spawn(Arc::clone(self).drive(redis.clone(), key));
        }
        // No timer here: the driver answers by the deadline.
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the limit decision was dropped".into(),
            ))
        })
    }

    /// Decides the batches of `key`, one call at a time, until nobody
    /// waits. Each call is bounded by the earliest deadline of its batch.
    async fn drive(self: Arc<Self>, redis: RedisStore, key: BatchKey) {
        loop {
            let started = tokio::time::Instant::now();
            let (spec, answers) = {
                let mut waiting = self.lock();
                let Some(w) = waiting.get_mut(&key) else {
                    return;
                };
                // Requests that gave up are not decided (nor counted);
                // those out of time are told so, and not counted either.
                for late in w
                    .answers
                    .extract_if(.., |a| a.tx.is_closed() || a.deadline <= started)
                {
                    let _ = late.tx.send(Err(too_late()));
                }
                if w.answers.is_empty() {
                    w.in_flight -= 1;
                    if w.in_flight == 0 {
                        waiting.remove(&key);
                    }
                    return;
                }
                let take = w.answers.len().min(MAX_BATCH);
                (
                    Arc::clone(&w.spec),
                    w.answers.drain(..take).collect::<Vec<_>>(),
                )
            };
            let deadline = answers.iter().map(|a| a.deadline).min().unwrap_or(started);
            let now = crate::tenants::now_secs();
            let decided =
                tokio::time::timeout_at(deadline, decide_batch(&redis, &spec, answers.len(), now))
                    .await
                    .unwrap_or_else(|_| Err(too_late()));
            match decided {
                Ok(batch) => {
                    for (j, a) in answers.into_iter().enumerate() {
                        let _ = a.tx.send(batch.outcome(j, &spec, now));
                    }
                }
                Err(e) => {
                    for a in answers {
                        let _ = a.tx.send(Err(e.clone()));
                    }
                }
            }
        }
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

    fn spec(tenant: &str, rules: &[(&str, Rate)], quotas: &[Quota]) -> Spec {
        Spec {
            tenant: tenant.to_owned(),
            rules: rules.iter().map(|(p, r)| ((*p).to_owned(), *r)).collect(),
            quotas: quotas.to_vec(),
        }
    }

    async fn connect(redis: &TestRedis) -> RedisStore {
        RedisStore::connect(&redis.url, Duration::from_secs(1))
            .await
            .expect("connect")
    }

    #[tokio::test]
    async fn a_refused_request_is_counted_against_nothing() {
        let redis = TestRedis::start().await;
        let store = connect(&redis).await;
        let now = crate::tenants::now_secs();
        let rules = [("plans.t.rate", rate(3, 3))];
        let quotas = [quota(2, Period::Day), quota(100, Period::Lifetime)];
        let both = spec("t1", &rules, &quotas);
        // Two fit the rate (3) and the day's quota (2).
        for left in [2, 1] {
            match decide(&store, &both, now).await {
                Ok(Outcome::Allowed(each)) => assert_eq!(each[0].0, left),
                other => panic!("{other:?}"),
            }
        }
        // The third fits the rate but not the quota: refused, and neither
        // the rate nor the lifetime quota counts it.
        for _ in 0..2 {
            match decide(&store, &both, now).await {
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
            decide(&store, &spec("t1", &rules, &lifetime), now).await,
            Ok(Outcome::Allowed(_))
        ));
        match decide(&store, &spec("t1", &rules, &[]), now).await {
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
            decide(&store, &spec("t1", &fresh, &lifetime), now).await,
            Ok(Outcome::Exhausted { .. })
        ));
    }

    /// A batch of n is decided as n requests one after another would be:
    /// the first ones that fit are admitted, each with its own standing,
    /// and the rest are refused by the rule or quota that ran out.
    #[tokio::test]
    async fn a_batch_is_decided_as_its_requests_one_by_one() {
        let redis = TestRedis::start().await;
        let store = connect(&redis).await;
        let now = crate::tenants::now_secs();
        // Burst 4 (the operation's), 10 (the plan's); 6 a day.
        let rules = [("op", rate(4, 4)), ("plan", rate(10, 10))];
        let quotas = [quota(6, Period::Day)];
        let s = spec("t2", &rules, &quotas);
        let batch = decide_batch(&store, &s, 7, now).await.expect("batch");
        assert_eq!((batch.admitted, batch.why, batch.which), (4, 1, 1));
        let outcomes: Vec<Outcome> = (0..7)
            .map(|j| batch.outcome(j, &s, now).expect("outcome"))
            .collect();
        for (j, o) in outcomes.iter().enumerate().take(4) {
            match o {
                Outcome::Allowed(each) => {
                    let left = u32::try_from(3 - j).expect("small");
                    assert_eq!(each[0].0, left, "request {j}, the operation's rule");
                    assert_eq!(each[1].0, left + 6, "request {j}, the plan's rule");
                    // The burst is whole again one interval (15 s) per
                    // request admitted so far.
                    let whole = each[0].1.as_secs_f64();
                    let expect = 15.0 * (j as f64 + 1.0);
                    assert!((whole - expect).abs() < 1.0, "request {j}: {whole} s");
                }
                other => panic!("request {j}: {other:?}"),
            }
        }
        for o in &outcomes[4..] {
            match o {
                Outcome::Limited { index, retry_after } => {
                    assert_eq!(*index, 0);
                    assert!(*retry_after > Duration::from_secs(13));
                    assert!(*retry_after <= Duration::from_secs(15));
                }
                other => panic!("{other:?}"),
            }
        }
        // The quota counted the four admitted: two more fit, then it refuses.
        let plan_only = spec("t2", &[("plan", rate(10, 10))], &quotas);
        let batch = decide_batch(&store, &plan_only, 5, now)
            .await
            .expect("batch");
        assert_eq!((batch.admitted, batch.why, batch.which), (2, 2, 1));
        match batch.outcome(4, &plan_only, now).expect("outcome") {
            Outcome::Exhausted { usage, rates } => {
                assert_eq!(usage.used, 6);
                assert_eq!(rates[0].0, 10 - 6, "the plan's rule counted six");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Many concurrent decisions through the coalescer: exactly the burst
    /// is admitted, and they take fewer script calls than requests.
    #[tokio::test]
    async fn the_coalescer_is_exact_and_batches() {
        let redis = TestRedis::start().await;
        let store = connect(&redis).await;
        let coalescer = Arc::new(Coalescer::default());
        let rules = [("plans.t.rate", rate(50, 50))];
        let quotas = [quota(1_000, Period::Lifetime)];
        let s = spec("t3", &rules, &quotas);
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (c, store, s) = (Arc::clone(&coalescer), store.clone(), s.clone());
                let key = BatchKey {
                    worker: 0,
                    tenant: "t3".into(),
                    plan: 1,
                    rule: 1,
                };
                tokio::spawn(async move { c.decide(&store, key, || s).await })
            })
            .collect();
        let (mut allowed, mut limited) = (0, 0);
        for t in tasks {
            match t.await.expect("task") {
                Ok(Outcome::Allowed(_)) => allowed += 1,
                Ok(Outcome::Limited { index: 0, .. }) => limited += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((allowed, limited), (50, 150));
        let mut conn = store.connection().await.expect("conn");
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .expect("info");
        let calls: u64 = stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .expect("evalsha stats");
        assert!(calls < 200, "{calls} script calls for 200 requests");
        // Nothing is left waiting.
        assert!(coalescer.lock().is_empty());
    }

    /// With Redis stalled (SIGSTOP), every request waiting in the
    /// coalescer, those behind a call in flight too, is answered
    /// `Unavailable` within `store.timeout` of asking, though no request
    /// has a timer of its own; and once Redis is back, decisions resume.
    #[tokio::test]
    async fn a_stalled_redis_answers_every_waiting_request_in_time() {
        let redis = TestRedis::start().await;
        let timeout = Duration::from_millis(300);
        let store = RedisStore::connect(&redis.url, timeout)
            .await
            .expect("connect");
        let coalescer = Arc::new(Coalescer::default());
        let s = spec("t4", &[("plans.t.rate", rate(1_000, 1_000))], &[]);
        let key = BatchKey {
            worker: 0,
            tenant: "t4".into(),
            plan: 1,
            rule: 1,
        };
        let ask = |c: &Arc<Coalescer>| {
            let (c, store, s, key) = (Arc::clone(c), store.clone(), s.clone(), key.clone());
            tokio::spawn(async move {
                let asked = tokio::time::Instant::now();
                let out = c.decide(&store, key, || s).await;
                (out, asked.elapsed())
            })
        };
        // Connected, and the script loaded, before the stall.
        assert!(matches!(
            ask(&coalescer).await.expect("task").0,
            Ok(Outcome::Allowed(_))
        ));
        redis.signal("STOP");
        // Asked in three waves, so some wait behind calls in flight.
        let mut tasks = Vec::new();
        for _ in 0..3 {
            tasks.extend((0..10).map(|_| ask(&coalescer)));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for t in tasks {
            let (out, took) = t.await.expect("task");
            assert!(matches!(out, Err(StoreError::Unavailable(_))), "{out:?}");
            assert!(
                took < timeout + Duration::from_millis(150),
                "answered after {took:?}"
            );
        }
        redis.signal("CONT");
        // Redis counts as down for one timeout after a timed-out call.
        tokio::time::sleep(timeout + Duration::from_millis(50)).await;
        assert!(matches!(
            ask(&coalescer).await.expect("task").0,
            Ok(Outcome::Allowed(_))
        ));
        assert!(coalescer.lock().is_empty(), "nothing left waiting");
    }

    /// A `store.timeout` too long to add to a clock reading is no
    /// deadline, not a panic.
    #[tokio::test]
    async fn a_timeout_of_centuries_is_no_deadline() {
        let redis = TestRedis::start().await;
        let store = RedisStore::connect(&redis.url, Duration::MAX)
            .await
            .expect("connect");
        let coalescer = Arc::new(Coalescer::default());
        let s = spec("t5", &[("plans.t.rate", rate(10, 10))], &[]);
        let key = BatchKey {
            worker: 0,
            tenant: "t5".into(),
            plan: 1,
            rule: 1,
        };
        assert!(matches!(
            coalescer.decide(&store, key, || s).await,
            Ok(Outcome::Allowed(_))
        ));
    }

    /// The script's clock starts at [`EPOCH`], and reads a stored time
    /// of an older build (microseconds since 1970) as such.
    #[test]
    fn the_script_counts_from_the_epoch() {
        assert!(DECIDE.contains(&format!("(tonumber(t[1]) - {EPOCH}) * 1000000")));
        assert!(DECIDE.contains(&format!("tat - {EPOCH}000000")));
    }

    /// An interval that is not a whole number of microseconds is kept:
    /// 700,000 a second (1.43 µs) is not enforced as 1,000,000 a second.
    #[tokio::test]
    async fn an_interval_under_a_microsecond_is_not_truncated() {
        let redis = TestRedis::start().await;
        let store = connect(&redis).await;
        let now = crate::tenants::now_secs();
        let fast = Rate {
            requests: NonZeroU32::new(700_000).expect("nonzero"),
            per: Duration::from_secs(1),
            burst: NonZeroU32::new(10_000).expect("nonzero"),
        };
        let s = spec("t6", &[("plans.t.rate", fast)], &[]);
        let batch = decide_batch(&store, &s, 10_000, now).await.expect("batch");
        assert_eq!((batch.admitted, batch.why), (10_000, 0));
        // 10,000 requests at 1.4286 µs each: the burst is whole again in
        // 14,286 µs (less the few µs of the script), not in 10,000.
        let (left, whole) = batch.standing[0];
        assert_eq!(left, 0);
        assert!((14_250..=14_286).contains(&whole), "{whole} µs");
        // Then only what the time since has made room for fits: a round
        // trip (well under the 1.4 ms a thousand take) later, not all of
        // a thousand more.
        let batch = decide_batch(&store, &s, 1_000, now).await.expect("batch");
        assert!(batch.admitted < 1_000, "{batch:?}");
        assert_eq!((batch.why, batch.which), (1, 1));
    }

    /// A rule's stored time written by an older build, in microseconds
    /// since 1970, still counts: a burst used up stays used up.
    #[tokio::test]
    async fn a_stored_time_since_1970_is_read_as_such() {
        let redis = TestRedis::start().await;
        let store = connect(&redis).await;
        let mut conn = store.connection().await.expect("conn");
        let (secs, micros_now): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .expect("time");
        // Three requests' worth ahead of now, with burst 3: used up.
        let tat = (secs * 1_000_000 + micros_now + 3 * 20_000_000).to_string();
        let _: () = redis::cmd("SET")
            .arg(rate_key("t7", "plans.t.rate"))
            .arg(&tat)
            .query_async(&mut conn)
            .await
            .expect("set");
        let s = spec("t7", &[("plans.t.rate", rate(3, 3))], &[]);
        let batch = decide_batch(&store, &s, 1, crate::tenants::now_secs())
            .await
            .expect("batch");
        assert_eq!((batch.admitted, batch.why), (0, 1), "{batch:?}");
    }
}
