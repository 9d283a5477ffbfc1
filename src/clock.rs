//! The tenant's test clock: each sandbox can freeze its own time at a
//! chosen instant and move it forward (never back), or follow real time.
//!
//! Stored per tenant at `t/<tenant>/clock` (so replicas sharing the store
//! share it, and a reset of the tenant's data returns it to real time) as
//! `{"frozen_time": <Unix seconds>}`; absent means real time. A frozen
//! clock stands still until it is moved (`advance` or a later
//! `frozen_time`), like Stripe's test clocks.
//!
//! The pipeline asks [`tenant_now`] once per identified request, after
//! admit. That is the hot path, so the stored value is cached per thread
//! (no shared cache line, no key built) for [`CACHE_TTL`], and every change
//! made through this process invalidates every thread's cache; another
//! replica sees a change within [`CACHE_TTL`]. The tenant's time drives fixture templates (`now`), is
//! forwarded to backends as `Sandgate-Clock` (only while the clock is set)
//! and is handed to later stages as `RequestFacts::tenant_now`.
//!
//! The gateway's own decisions (token and sandbox expiry, rate limits,
//! quotas, idempotency records) keep real time: a test clock cannot extend
//! a sandbox's life or refill a quota.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::refusal::Refusal;
use crate::store::{StoreError, keys};
use crate::tenants::Registry;

/// How long a tenant's stored clock is trusted by this process.
pub const CACHE_TTL: Duration = Duration::from_secs(1);

/// The latest instant a clock can show (9999-12-31T23:59:59Z).
pub const MAX_TIME: u64 = 253_402_300_799;

/// The stored clock.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    /// The frozen instant, Unix seconds.
    frozen_time: u64,
}

/// A tenant's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantTime {
    /// Unix seconds.
    pub now: u64,
    /// Whether the tenant's test clock is set (frozen), rather than real.
    pub set: bool,
}

/// A change asked of the clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Freeze at this instant (Unix seconds); later than the current one
    /// once the clock is set.
    FreezeAt(u64),
    /// Move forward by this much, from the frozen instant, or from real
    /// time when the clock is not set.
    Advance(Duration),
}

/// Bumped by every change of any tenant's clock through this process:
/// each thread's cache drops what it read before.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A clock read into a thread's cache.
struct Cached {
    registry: u64,
    frozen: Option<u64>,
    read_at: std::time::Instant,
    generation: u64,
}

thread_local! {
    /// Each thread's own cache of stored clocks, by tenant: the lookup on
    /// every identified request touches no shared cache line and builds no
    /// key (like the identify stage's per-worker credential cache).
    static CACHE: std::cell::RefCell<
        std::collections::HashMap<String, Cached, foldhash::fast::RandomState>,
    > = std::cell::RefCell::new(std::collections::HashMap::default());
}

/// Most tenants a thread's cache holds; past it, the cache starts over.
const CACHE_MAX: usize = 100_000;

fn store_key(tenant: &str) -> String {
    keys::tenant_key(tenant, "clock")
}

/// The tenant's frozen instant, read from the store (no cache).
pub async fn frozen_time(registry: &Registry, tenant: &str) -> Result<Option<u64>, StoreError> {
    let Some(raw) = registry.store().get(&store_key(tenant)).await? else {
        return Ok(None);
    };
    serde_json::from_slice::<Stored>(&raw)
        .map(|s| Some(s.frozen_time))
        .map_err(|e| StoreError::Corrupt(format!("clock of {tenant}: {e}")))
}

/// The tenant's current time, through this thread's cache. One store read
/// per tenant per thread per [`CACHE_TTL`] at most.
pub async fn tenant_now(registry: &Registry, tenant: &str) -> Result<TenantTime, StoreError> {
    use std::sync::atomic::Ordering;
    let generation = GENERATION.load(Ordering::Acquire);
    let hit = CACHE.with_borrow(|cache| {
        cache
            .get(tenant)
            .filter(|c| {
                c.registry == registry.id()
                    && c.generation == generation
                    && c.read_at.elapsed() < CACHE_TTL
            })
            .map(|c| c.frozen)
    });
    let frozen = match hit {
        Some(f) => f,
        None => {
            let f = frozen_time(registry, tenant).await?;
            CACHE.with_borrow_mut(|cache| {
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(
                    tenant.to_owned(),
                    Cached {
                        registry: registry.id(),
                        frozen: f,
                        read_at: std::time::Instant::now(),
                        generation,
                    },
                );
            });
            f
        }
    };
    Ok(match frozen {
        Some(now) => TenantTime { now, set: true },
        None => TenantTime {
            now: crate::tenants::now_secs(),
            set: false,
        },
    })
}

/// Forgets this process's cached clocks (after a change of `tenant`'s, or
/// a wipe of its data): every thread reads the store again.
pub fn invalidate(_registry: &Registry, _tenant: &str) {
    GENERATION.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
}

/// The frozen instant after `change`, from the `current` one (`None`: real
/// time, which is `real_now`). Refuses a move backwards.
pub fn apply(current: Option<u64>, change: Change, real_now: u64) -> Result<u64, Refusal> {
    let next = match change {
        Change::FreezeAt(at) => {
            if let Some(cur) = current
                && at < cur
            {
                return Err(Refusal::ClockBackwards {
                    now: rfc3339(cur),
                    asked: rfc3339(at),
                });
            }
            at
        }
        Change::Advance(by) => current.unwrap_or(real_now).saturating_add(by.as_secs()),
    };
    if next > MAX_TIME {
        return Err(Refusal::InvalidClockRequest {
            why: "would move the clock past the year 9999".into(),
        });
    }
    Ok(next)
}

/// Freezes the tenant's clock at `at` (Unix seconds).
pub async fn set(registry: &Registry, tenant: &str, at: u64) -> Result<(), StoreError> {
    let value = serde_json::to_vec(&Stored { frozen_time: at })
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let result = registry.store().put(&store_key(tenant), value, None).await;
    invalidate(registry, tenant);
    result
}

/// Returns the tenant to real time.
pub async fn clear(registry: &Registry, tenant: &str) -> Result<(), StoreError> {
    let result = registry
        .store()
        .delete(&store_key(tenant))
        .await
        .map(|_| ());
    invalidate(registry, tenant);
    result
}

/// Unix seconds as RFC 3339 (UTC, seconds).
pub fn rfc3339(at: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(at.min(MAX_TIME)))
        .to_string()
}

/// Parses an RFC 3339 UTC instant (`2027-01-01T00:00:00Z`) to Unix seconds.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    humantime::parse_rfc3339(text)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAN_2027: u64 = 1_798_761_600;

    #[test]
    fn the_clock_moves_forward_only_once_set() {
        let real = 1_700_000_000;
        let day = Duration::from_secs(86_400);
        // Not set: anywhere, and advancing starts from real time.
        assert_eq!(apply(None, Change::FreezeAt(5), real), Ok(5));
        assert_eq!(apply(None, Change::Advance(day), real), Ok(real + 86_400));
        // Set: forward (or standing still) only.
        assert_eq!(
            apply(Some(JAN_2027), Change::Advance(day * 30), real),
            Ok(JAN_2027 + 30 * 86_400)
        );
        assert_eq!(
            apply(Some(JAN_2027), Change::FreezeAt(JAN_2027), real),
            Ok(JAN_2027)
        );
        let back = apply(Some(JAN_2027), Change::FreezeAt(JAN_2027 - 1), real);
        assert_eq!(back.map_err(|r| r.code()), Err("clock_backwards"));
        let far = apply(Some(JAN_2027), Change::Advance(Duration::MAX), real);
        assert_eq!(far.map_err(|r| r.code()), Err("invalid_clock_request"));
    }

    #[test]
    fn instants_are_rfc3339_utc() {
        assert_eq!(parse_rfc3339("2027-01-01T00:00:00Z"), Some(JAN_2027));
        assert_eq!(rfc3339(JAN_2027), "2027-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339("tomorrow"), None);
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), None);
    }
}
