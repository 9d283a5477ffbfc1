//! Quotas: requests per calendar period (UTC minute, hour, day, month) or
//! per lifetime, counted per tenant.
//!
//! One node counts in memory, each tenant's counters under a lock of their
//! own, so a decision over all of a plan's quotas is atomic (every quota
//! has room, then every counter is bumped, or nothing is). The workers
//! reach a tenant's counters through caches of their own (see
//! [`PerTenant`]). The counts are written behind to the store every second
//! and at shutdown, so they survive a restart with the `file` store. A
//! counter not in memory yet is read from the store first.
//!
//! Keys: `t/<tenant>/quota/<period>/<window start, Unix seconds>`; each
//! expires with its window (lifetime counters never do).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;

use super::{TenantState, TenantStates};
use crate::store::{SharedStore, StoreError, keys};

/// The period a quota counts over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// A UTC minute.
    Minute,
    /// A UTC hour.
    Hour,
    /// A UTC day.
    Day,
    /// A UTC calendar month.
    Month,
    /// The tenant's whole life.
    Lifetime,
}

impl Period {
    /// The name used in configuration and answers.
    pub const fn as_str(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
            Period::Lifetime => "lifetime",
        }
    }

    /// The window containing `now` (Unix seconds): (start, end); a
    /// lifetime window is (0, `u64::MAX`).
    pub fn window(self, now: u64) -> (u64, u64) {
        let fixed = |len: u64| {
            let start = now - now % len;
            (start, start + len)
        };
        match self {
            Period::Minute => fixed(60),
            Period::Hour => fixed(3600),
            Period::Day => fixed(86_400),
            Period::Month => {
                let (y, m) = year_month(now / 86_400);
                let start = days_from_civil(y, m, 1) * 86_400;
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (start, days_from_civil(ny, nm, 1) * 86_400)
            }
            Period::Lifetime => (0, u64::MAX),
        }
    }
}

/// (year, month) of day `days` since 1970-01-01 (Howard Hinnant's civil
/// calendar algorithm).
fn year_month(days: u64) -> (u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m)
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A quota of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Requests allowed per period.
    pub requests: u64,
    /// The period.
    pub period: Period,
    /// The config path, e.g. `plans.trial.quotas[0]`.
    pub path: String,
}

/// How a tenant stands against one quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    /// The quota.
    pub quota: Quota,
    /// Requests counted in the current window.
    pub used: u64,
    /// When the window ends (Unix seconds; `None` for lifetime).
    pub resets_at: Option<u64>,
}

/// The outcome of a quota decision.
#[derive(Debug)]
pub enum Decision {
    /// Counted against every quota.
    Allowed,
    /// Not counted: this quota has no room left.
    Exhausted(Usage),
}

#[derive(Debug)]
struct Counter {
    count: u64,
    persisted: u64,
    /// End of its window (Unix seconds), for the key's expiry.
    ends: u64,
}

/// A tenant's counters: inline for a plan's usual one or two quotas, so the
/// lock and the counts a decision touches share the tenant's cache lines.
pub(crate) type Slots = smallvec::SmallVec<[Slot; 2]>;

/// One counter: a quota's period and the start of its current window.
#[derive(Debug)]
pub(crate) struct Slot {
    period: Period,
    start: u64,
    counter: Counter,
}

/// Every tenant's quota counters on this node.
///
/// By tenant (reached through the workers' caches), then by (period,
/// window start): a decision looks its counters up without building a key
/// or allocating, under the tenant's own lock. The store keys are built
/// only to read a counter the first time and to write it behind.
pub struct Counters {
    store: SharedStore,
    /// Each tenant's state; its `quotas` are the counters.
    counts: Arc<TenantStates>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

/// The store key of `tenant`'s counter of `period` for the window starting at `start`.
fn key(tenant: &str, period: Period, start: u64) -> String {
    keys::tenant_key(tenant, &format!("quota/{}/{start}", period.as_str()))
}

/// Where the counter of `period`'s window starting at `start` is, if in memory.
fn find(slots: &[Slot], period: Period, start: u64) -> Option<usize> {
    slots
        .iter()
        .position(|s| s.period == period && s.start == start)
}

/// Where the counter of `period`'s window that holds `now` is, if in
/// memory: [`find`] without working the window out (a month's takes a
/// calendar), as a counter knows where its window ends.
fn current(slots: &[Slot], period: Period, now: u64) -> Option<usize> {
    slots
        .iter()
        .position(|s| s.period == period && s.start <= now && now < s.counter.ends)
}

/// A tenant's counters, locked.
pub(crate) fn lock(slots: &Mutex<Slots>) -> MutexGuard<'_, Slots> {
    slots.lock().unwrap_or_else(|p| p.into_inner())
}

/// Most quotas a plan has: one per period.
const MAX_QUOTAS: usize = 5;

impl Counters {
    /// Counters kept in `store`.
    pub fn new(store: SharedStore) -> Counters {
        Counters::on(store, Arc::default())
    }

    /// Counters kept in `store`, in memory in `states` (shared with the
    /// node's in-flight counts).
    pub fn on(store: SharedStore, states: Arc<TenantStates>) -> Counters {
        Counters {
            store,
            counts: states,
        }
    }

    /// Runs `f` on `tenant`'s counters, locked.
    fn with<R>(&self, tenant: &str, f: impl FnOnce(&mut Slots) -> R) -> R {
        self.counts
            .with(tenant, |state| f(&mut lock(&state.quotas)))
    }

    /// Whether every counter of `tenant`'s `quotas` at `now` is in memory.
    fn loaded(&self, tenant: &str, quotas: &[Quota], now: u64) -> bool {
        self.with(tenant, |slots| {
            quotas.iter().all(|q| {
                let (start, _) = q.period.window(now);
                find(slots, q.period, start).is_some()
            })
        })
    }

    /// Makes sure the counters of `tenant`'s `quotas` at `now` are in
    /// memory, reading them from the store when they are not.
    async fn load(&self, tenant: &str, quotas: &[Quota], now: u64) -> Result<(), StoreError> {
        if self.loaded(tenant, quotas, now) {
            return Ok(());
        }
        for q in quotas {
            let (start, end) = q.period.window(now);
            let present = self.with(tenant, |slots| find(slots, q.period, start).is_some());
            if present {
                continue;
            }
            let k = key(tenant, q.period, start);
            let stored = match self.store.get(&k).await? {
                Some(raw) => std::str::from_utf8(&raw)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| StoreError::Corrupt(format!("quota counter `{k}`")))?,
                None => 0,
            };
            self.with(tenant, |slots| {
                if find(slots, q.period, start).is_none() {
                    slots.push(Slot {
                        period: q.period,
                        start,
                        counter: Counter {
                            count: stored,
                            persisted: stored,
                            ends: end,
                        },
                    });
                }
            });
        }
        Ok(())
    }

    /// Counts one request of `tenant` against every quota, or none when one
    /// of them is full. `now` is Unix seconds.
    pub async fn decide(
        &self,
        tenant: &str,
        quotas: &[Quota],
        now: u64,
    ) -> Result<Decision, StoreError> {
        // Almost always the counters are in memory: one lock, no await.
        let decided = self
            .counts
            .with(tenant, |state| decide_loaded(state, quotas, now));
        if let Some(decided) = decided {
            return Ok(decided);
        }
        self.load(tenant, quotas, now).await?;
        self.counts
            .with(tenant, |state| decide_loaded(state, quotas, now))
            .ok_or_else(|| StoreError::Corrupt(format!("quota counters of `{tenant}` vanished")))
    }

    /// [`Counters::decide`] for the tenant whose state (from
    /// [`super::concurrency::InFlight::state`]) is `state`, when every
    /// counter it needs is in memory: no lookup, no await. `None` (nothing
    /// counted) when one is not; [`Counters::decide`] reads it.
    pub fn decide_in_memory(state: &TenantState, quotas: &[Quota], now: u64) -> Option<Decision> {
        decide_loaded(state, quotas, now)
    }

    /// `tenant`'s standing against `quotas` at `now`, counting nothing.
    pub async fn usage(
        &self,
        tenant: &str,
        quotas: &[Quota],
        now: u64,
    ) -> Result<Vec<Usage>, StoreError> {
        if self.store.as_redis().is_some() {
            // Cluster mode: the counts live in Redis only (see `limits::cluster`).
            let mut out = Vec::with_capacity(quotas.len());
            for q in quotas {
                let (start, end) = q.period.window(now);
                let used = match self.store.get(&key(tenant, q.period, start)).await? {
                    Some(raw) => std::str::from_utf8(&raw)
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .unwrap_or(0),
                    None => 0,
                };
                out.push(Usage {
                    quota: q.clone(),
                    used,
                    resets_at: (q.period != Period::Lifetime).then_some(end),
                });
            }
            return Ok(out);
        }
        self.load(tenant, quotas, now).await?;
        Ok(self.with(tenant, |slots| {
            quotas
                .iter()
                .map(|q| {
                    let (start, end) = q.period.window(now);
                    Usage {
                        quota: q.clone(),
                        used: find(slots, q.period, start).map_or(0, |i| slots[i].counter.count),
                        resets_at: (q.period != Period::Lifetime).then_some(end),
                    }
                })
                .collect()
        }))
    }

    /// Forgets every quota count of `tenant` (memory and store).
    pub async fn reset(&self, tenant: &str) -> Result<u64, StoreError> {
        // Emptied, not removed: the workers' caches keep counting on it.
        self.with(tenant, |slots| slots.clear());
        self.store
            .delete_prefix(&keys::tenant_key(tenant, "quota/"))
            .await
    }

    /// Writes every changed count to the store, and forgets counters of
    /// windows that have ended. `now` is Unix seconds.
    pub async fn flush(&self, now: u64) -> Result<(), StoreError> {
        type Dirty = (String, Period, u64, u64, u64);
        let mut dirty: Vec<Dirty> = Vec::new();
        self.counts.for_each(|tenant, state| {
            let mut slots = lock(&state.quotas);
            slots.retain(|s| s.counter.ends > now || s.counter.count != s.counter.persisted);
            slots.shrink_to_fit();
            dirty.extend(
                slots
                    .iter()
                    .filter(|s| s.counter.count != s.counter.persisted)
                    .map(|s| {
                        (
                            tenant.to_owned(),
                            s.period,
                            s.start,
                            s.counter.count,
                            s.counter.ends,
                        )
                    }),
            );
        });
        for (tenant, period, start, count, ends) in dirty {
            let ttl =
                (ends != u64::MAX).then(|| Duration::from_secs(ends.saturating_sub(now) + 60));
            self.store
                .put(
                    &key(&tenant, period, start),
                    count.to_string().into_bytes(),
                    ttl,
                )
                .await?;
            self.with(&tenant, |slots| {
                if let Some(i) = find(slots, period, start) {
                    let s = &mut slots[i].counter;
                    s.persisted = s.persisted.max(count);
                }
                if ends <= now {
                    slots.retain(|s| !(s.period == period && s.start == start));
                }
            });
        }
        Ok(())
    }
}

/// [`Counters::decide`] when every counter it needs is in `state`'s
/// memory; `None` (nothing counted) when one is not.
fn decide_loaded(state: &TenantState, quotas: &[Quota], now: u64) -> Option<Decision> {
    let mut slots = lock(&state.quotas);
    // Every quota first (nothing counted unless all have room)...
    let mut at = [0usize; MAX_QUOTAS];
    for (i, q) in quotas.iter().enumerate() {
        let slot = current(&slots, q.period, now)?;
        let used = slots[slot].counter.count;
        if used >= q.requests {
            return Some(Decision::Exhausted(Usage {
                quota: q.clone(),
                used,
                resets_at: (q.period != Period::Lifetime).then_some(slots[slot].counter.ends),
            }));
        }
        if let Some(a) = at.get_mut(i) {
            *a = slot;
        }
    }
    // ...then each counted (a plan has at most one quota per period, so
    // `at` holds them all; a longer list is looked up again).
    for (i, q) in quotas.iter().enumerate() {
        let slot = match at.get(i) {
            Some(&slot) => slot,
            None => current(&slots, q.period, now)?,
        };
        slots[slot].counter.count += 1;
    }
    Some(Decision::Allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_utc_calendar_periods() {
        // 2026-11-23T09:15:42Z
        let now = 1_795_425_342;
        assert_eq!(Period::Minute.window(now), (1_795_425_300, 1_795_425_360));
        assert_eq!(Period::Hour.window(now), (1_795_424_400, 1_795_428_000));
        assert_eq!(Period::Day.window(now), (1_795_392_000, 1_795_478_400));
        // 2026-11-01 .. 2026-12-01
        assert_eq!(Period::Month.window(now), (1_793_491_200, 1_796_083_200));
        // December rolls into January.
        let dec = 1_796_083_200 + 5;
        assert_eq!(Period::Month.window(dec), (1_796_083_200, 1_798_761_600));
        assert_eq!(Period::Lifetime.window(now), (0, u64::MAX));
    }

    #[tokio::test]
    async fn exact_atomic_and_persisted() {
        let store: SharedStore = std::sync::Arc::new(crate::store::MemoryStore::new());
        let c = Counters::new(store.clone());
        let quotas = vec![
            Quota {
                requests: 3,
                period: Period::Day,
                path: "plans.t.quotas[0]".into(),
            },
            Quota {
                requests: 5,
                period: Period::Lifetime,
                path: "plans.t.quotas[1]".into(),
            },
        ];
        let now = 1_795_425_342;
        for i in 1..=3 {
            match c.decide("sbx_a", &quotas, now).await.expect("decide") {
                Decision::Allowed => {
                    let u = c.usage("sbx_a", &quotas, now).await.expect("usage");
                    assert_eq!((u[0].used, u[1].used), (i, i));
                }
                d => panic!("{d:?}"),
            }
        }
        match c.decide("sbx_a", &quotas, now).await.expect("decide") {
            Decision::Exhausted(u) => {
                assert_eq!(u.quota.path, "plans.t.quotas[0]");
                assert_eq!(u.resets_at, Some(1_795_478_400));
            }
            d => panic!("{d:?}"),
        }
        // The refused request counted against nothing: lifetime is at 3.
        let u = c.usage("sbx_a", &quotas, now).await.expect("usage");
        assert_eq!(u[1].used, 3);
        // The next day: the day quota has room, the lifetime one has 2.
        let tomorrow = now + 86_400;
        for _ in 0..2 {
            assert!(matches!(
                c.decide("sbx_a", &quotas, tomorrow).await.expect("decide"),
                Decision::Allowed
            ));
        }
        match c.decide("sbx_a", &quotas, tomorrow).await.expect("decide") {
            Decision::Exhausted(u) => assert_eq!(u.quota.path, "plans.t.quotas[1]"),
            d => panic!("{d:?}"),
        }
        // Written behind, and read back by a fresh node.
        c.flush(tomorrow).await.expect("flush");
        let again = Counters::new(store.clone());
        let u = again
            .usage("sbx_a", &quotas, tomorrow)
            .await
            .expect("usage");
        assert_eq!((u[0].used, u[1].used), (2, 5));
        // Another tenant is untouched; a reset forgets everything.
        let other = again
            .usage("sbx_b", &quotas, tomorrow)
            .await
            .expect("usage");
        assert_eq!((other[0].used, other[1].used), (0, 0));
        again.reset("sbx_a").await.expect("reset");
        let u = again
            .usage("sbx_a", &quotas, tomorrow)
            .await
            .expect("usage");
        assert_eq!((u[0].used, u[1].used), (0, 0));
    }
}
