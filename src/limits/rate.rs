//! In-process rate limiting: GCRA per (tenant, rule), with governor's keyed
//! limiters behind a small type whose clock is injected, so the decisions
//! are tested without sleeping.
//!
//! One [`RateLimiter`] per configured rate rule (a plan's `rate`, an API's
//! or an operation's), keyed by tenant id. governor does the GCRA; its
//! state, one cell per tenant, lives in a [`Cells`] store: a
//! [`PerTenant`] map that the workers reach through caches of their own, so
//! a decision touches the tenant's cell and no shared map or lock. Cells of
//! tenants that have been idle long enough to be full again are dropped by
//! [`RuleLimiter::retain_recent`], which the gateway calls periodically, so
//! memory stays bounded by the tenants active within one refill period
//! (and the workers' caches).

use std::num::{NonZeroU32, NonZeroU64};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, QuantaClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::per_tenant::PerTenant;

/// A configured rate: `requests` per `per`, with bursts up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per period.
    pub requests: NonZeroU32,
    /// The period.
    pub per: Duration,
    /// The largest burst (at least 1).
    pub burst: NonZeroU32,
}

impl Rate {
    /// The time one request's allowance takes to come back.
    pub fn interval(&self) -> Duration {
        self.per / self.requests.get()
    }

    fn quota(&self) -> Option<Quota> {
        Quota::with_period(self.interval()).map(|q| q.allow_burst(self.burst))
    }
}

/// A tenant's GCRA state for one rule: governor's theoretical arrival
/// time, in nanoseconds since the limiter started (0: never used).
#[derive(Debug, Default)]
pub struct Cell(AtomicU64);

/// The state store of one rule's limiter: a cell per tenant.
#[derive(Debug, Default)]
pub struct Cells(PerTenant<Cell>);

impl StateStore for Cells {
    type Key = String;

    fn measure_and_replace<T, F, E>(&self, key: &String, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.with(key, |cell| {
            // As governor's own in-memory state does: decide on the value
            // read, and write the new one only if nobody changed it since.
            let cell: &AtomicU64 = &cell.0.0;
            let mut prev = cell.load(Ordering::Acquire);
            loop {
                let (result, next) = f(NonZeroU64::new(prev).map(|n| Nanos::from(n.get())))?;
                match cell.compare_exchange_weak(
                    prev,
                    next.into(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Ok(result),
                    Err(now) => prev = now,
                }
            }
        })
    }
}

impl ShrinkableKeyedStateStore<String> for Cells {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = u64::from(drop_below);
        self.0
            .prune(|cell| cell.0.load(Ordering::Acquire) <= drop_below);
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

type Limiter<C> = RateLimiter<String, Cells, C, StateInformationMiddleware>;

/// One rule's limiter.
pub struct RuleLimiter<C: Clock = QuantaClock> {
    /// The rate it enforces.
    pub rate: Rate,
    limiter: Limiter<C>,
    clock: C,
}

/// The outcome of one rule for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; this many more requests fit in the burst now, and the
    /// burst is whole again after `reset`.
    Allowed {
        /// Requests left in the burst.
        remaining: u32,
        /// Time until the burst is whole again.
        reset: Duration,
    },
    /// Refused; the next request fits after `retry_after`.
    Limited {
        /// Time until one more request is allowed.
        retry_after: Duration,
    },
}

impl<C: Clock + Clone> RuleLimiter<C> {
    /// A limiter for `rate`, reading time from `clock`; `None` when the
    /// rate's interval rounds to zero.
    pub fn with_clock(rate: Rate, clock: C) -> Option<Self> {
        let quota = rate.quota()?;
        let limiter: Limiter<C> = RateLimiter::new(quota, Cells::default(), clock.clone());
        Some(RuleLimiter {
            rate,
            limiter,
            clock,
        })
    }

    /// Decides one request of `tenant`, counting it when allowed.
    pub fn check(&self, tenant: &String) -> Decision {
        match self.limiter.check_key(tenant) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = self.rate.burst.get().saturating_sub(remaining);
                Decision::Allowed {
                    remaining,
                    reset: self.rate.interval() * used,
                }
            }
            Err(not_until) => Decision::Limited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    /// Forgets tenants whose allowance is whole again.
    pub fn retain_recent(&self) {
        self.limiter.retain_recent();
    }

    /// How many tenants this limiter holds state for.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

impl RuleLimiter<QuantaClock> {
    /// A limiter for `rate` on quanta's clock: monotonic, read from the
    /// CPU's time-stamp counter where it is steady (falling back to the
    /// OS's monotonic clock), so a decision reads the time in a few
    /// instructions rather than a `clock_gettime` call.
    pub fn new(rate: Rate) -> Option<Self> {
        Self::with_clock(rate, QuantaClock::default())
    }
}

impl<C: Clock> std::fmt::Debug for RuleLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleLimiter")
            .field("rate", &self.rate)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn rate(requests: u32, per_ms: u64, burst: u32) -> Rate {
        Rate {
            requests: NonZeroU32::new(requests).expect("nonzero"),
            per: Duration::from_millis(per_ms),
            burst: NonZeroU32::new(burst).expect("nonzero"),
        }
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        let clock = FakeRelativeClock::default();
        let l = RuleLimiter::with_clock(rate(10, 1000, 20), clock.clone()).expect("limiter");
        let t = String::from("sbx_a");
        for i in 0..20 {
            match l.check(&t) {
                Decision::Allowed { remaining, .. } => assert_eq!(remaining, 19 - i),
                d => panic!("request {i}: {d:?}"),
            }
        }
        match l.check(&t) {
            Decision::Limited { retry_after } => {
                assert_eq!(retry_after, Duration::from_millis(100))
            }
            d => panic!("{d:?}"),
        }
        // 100 ms later, exactly one more.
        clock.advance(Duration::from_millis(100));
        assert!(matches!(
            l.check(&t),
            Decision::Allowed { remaining: 0, .. }
        ));
        assert!(matches!(l.check(&t), Decision::Limited { .. }));
        // Over 10 s, the steady rate: 100 requests.
        let mut allowed = 0;
        for _ in 0..1000 {
            clock.advance(Duration::from_millis(10));
            if matches!(l.check(&t), Decision::Allowed { .. }) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 100);
    }

    #[test]
    fn tenants_are_independent_and_idle_ones_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let l = RuleLimiter::with_clock(rate(1, 1000, 1), clock.clone()).expect("limiter");
        let (a, b) = (String::from("a"), String::from("b"));
        assert!(matches!(l.check(&a), Decision::Allowed { .. }));
        assert!(matches!(l.check(&a), Decision::Limited { .. }));
        assert!(matches!(l.check(&b), Decision::Allowed { .. }));
        assert_eq!(l.len(), 2);
        clock.advance(Duration::from_secs(2));
        l.retain_recent();
        assert!(l.is_empty());
    }

    #[test]
    fn a_million_tenants_are_forgotten_once_idle() {
        // Memory stays bounded: a million distinct keys, each seen once,
        // are all dropped by the periodic sweep once their burst is whole.
        let clock = FakeRelativeClock::default();
        let l = RuleLimiter::with_clock(rate(10, 1000, 10), clock.clone()).expect("limiter");
        for i in 0..1_000_000u32 {
            let t = format!("sbx_{i}");
            assert!(matches!(l.check(&t), Decision::Allowed { .. }));
        }
        assert_eq!(l.len(), 1_000_000);
        // Not yet whole again: kept (their state still matters).
        clock.advance(Duration::from_millis(10));
        l.retain_recent();
        assert_eq!(l.len(), 1_000_000);
        clock.advance(Duration::from_secs(1));
        l.retain_recent();
        assert!(l.is_empty());
    }

    #[test]
    fn reset_is_when_the_burst_is_whole_again() {
        let clock = FakeRelativeClock::default();
        let l = RuleLimiter::with_clock(rate(5, 1000, 5), clock).expect("limiter");
        let t = String::from("t");
        let _ = l.check(&t);
        let _ = l.check(&t);
        assert_eq!(
            l.check(&t),
            Decision::Allowed {
                remaining: 2,
                reset: Duration::from_millis(600)
            }
        );
    }
}
